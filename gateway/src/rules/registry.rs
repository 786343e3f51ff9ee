//! The running rule set: rules from `eddy.toml`, from the rules directory
//! and from the HTTP API, compiled together.
//!
//! Invariant: the set only ever changes whole and valid. A change (a file
//! edited, an API call) is compiled with every other rule and checked by
//! the engine first; a set with any error is refused with its errors and
//! the running set stays. The pipeline picks up a new set by its version
//! number between batches, and keeps the windows and alerts of the rules
//! that did not change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use eddy_analytics::{Engine, EngineConfig, Rule};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    Action, RuleConfig, RuleErrors, WebhookAllow, compile_placed, compile_unplaced, config_errors,
    dir_files, parse_file, read_text,
};
use crate::config::{Config, Document, Placed, PlacedErrors};
use crate::stats::{self, Stats};
use crate::store::{Store, StoreError};

/// Where a rule is defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[rules]]` in the configuration file.
    Config(String),
    /// A file of the rules directory.
    File(String),
    /// `PUT /api/rules/{name}`, kept in the store.
    Api,
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::Config(f) | Origin::File(f) => f.clone(),
            Origin::Api => "api".into(),
        }
    }
}

/// One rule as written, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub origin: Origin,
    pub rule: RuleConfig,
}

/// The set compiled: what the engine runs and what each rule does.
#[derive(Debug, Default)]
pub struct Compiled {
    pub rules: Vec<Rule>,
    pub actions: HashMap<Arc<str>, Vec<Action>>,
}

/// Why an API change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(RuleErrors),
    #[error("rule `{name}` is defined in {origin}; change it there")]
    NotApi { name: String, origin: String },
    #[error("no rule `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rules at start were refused (a wrapper that names every error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RulesRefused(pub RuleErrors);

/// Modification stamps of the watched files.
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

#[derive(Debug)]
struct Current {
    entries: Vec<Entry>,
    compiled: Arc<Compiled>,
    stamp: Stamp,
    /// A stamp whose files were refused (logged once, not every poll).
    refused: Option<Stamp>,
}

#[derive(Debug)]
struct Inner {
    engine: EngineConfig,
    /// Rules of the configuration; re-read from `config_file` on reload.
    config_rules: Vec<RuleConfig>,
    config_file: Option<PathBuf>,
    dir: Option<PathBuf>,
    /// `[alerts] webhook_allow` of the running configuration.
    webhook_allow: Vec<String>,
    store: Store,
    current: RwLock<Current>,
    version: AtomicU64,
    /// Changes happen one at a time.
    changing: Mutex<()>,
}

/// The rule set, shared by the pipeline, the API and the file watcher.
#[derive(Debug, Clone)]
pub struct Registry(Arc<Inner>);

fn error(source: &str, rule: Option<&str>, message: impl Into<String>) -> Placed {
    Placed::unplaced(source, rule, message)
}

/// The rule set a configuration runs at start, checked as the gateway
/// checks it (its `[[rules]]` and its rules directory; API rules live in
/// the store and are not counted): the number of rules. `eddy check` and
/// `eddy rules check` call this; [`Registry::open`] does the same.
pub fn check(config: &Config) -> Result<usize, RuleErrors> {
    let (engine, _) = config.engine();
    let allow = config.alerts.allow();
    let entries = load_files(
        &config.rules,
        config.path.as_deref(),
        config.alerts.rules_dir.as_deref(),
        allow,
    )?;
    build(&engine, &entries, allow).map(|c| c.rules.len())
}

/// The rules of the configuration (re-read from its file when there is
/// one) and of the rules directory, each error placed in its file.
fn load_files(
    config_rules: &[RuleConfig],
    config_file: Option<&std::path::Path>,
    dir: Option<&std::path::Path>,
    allow: WebhookAllow<'_>,
) -> Result<Vec<Entry>, RuleErrors> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    match config_file {
        // The file is read and checked whole, as at start: a change to
        // any part of it that makes it invalid is refused.
        Some(path) => {
            let config = Config::load(path).map_err(config_errors)?;
            let origin = Origin::Config(path.display().to_string());
            entries.extend(config.rules.into_iter().map(|rule| Entry {
                origin: origin.clone(),
                rule,
            }));
        }
        None => {
            let (_, errs) = compile_unplaced("config", config_rules, allow);
            errors.extend(errs);
            entries.extend(config_rules.iter().map(|rule| Entry {
                origin: Origin::Config("config".into()),
                rule: rule.clone(),
            }));
        }
    }
    if let Some(dir) = dir {
        let paths = dir_files(dir).map_err(|e| {
            PlacedErrors(vec![error(
                &dir.display().to_string(),
                None,
                format!("cannot read the rules directory: {e}"),
            )])
        })?;
        for path in paths {
            let source = path.display().to_string();
            let text = read_text(&path)?;
            match parse_file(&source, &text) {
                Ok(rules) => {
                    let (_, errs) = compile_placed(&Document::new(&source, &text), &rules, allow);
                    errors.extend(errs);
                    entries.extend(rules.into_iter().map(|rule| Entry {
                        origin: Origin::File(source.clone()),
                        rule,
                    }));
                }
                Err(e) => errors.extend(e.0),
            }
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(PlacedErrors(errors))
    }
}

/// Compiles a whole set and has the engine check it. Rules from files
/// were compiled with their places by [`load_files`]; what is new here
/// are names used in two places, API rules (placed inside their SQL) and
/// the engine's check of the set.
fn build(
    engine: &EngineConfig,
    entries: &[Entry],
    allow: WebhookAllow<'_>,
) -> Result<Compiled, RuleErrors> {
    let mut errors = Vec::new();
    let mut compiled = Compiled::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(first) = entries[..i].iter().find(|o| o.rule.name == e.rule.name) {
            if first.origin != e.origin {
                errors.push(error(
                    &e.origin.describe(),
                    Some(&e.rule.name),
                    format!("the name is already used in {}", first.origin.describe()),
                ));
            }
            continue;
        }
        let (ok, errs) =
            compile_unplaced(&e.origin.describe(), std::slice::from_ref(&e.rule), allow);
        errors.extend(errs);
        for (rule, actions) in ok {
            compiled.actions.insert(rule.name.clone(), actions);
            compiled.rules.push(rule);
        }
    }
    if !errors.is_empty() {
        return Err(PlacedErrors(errors));
    }
    if let Err(e) = Engine::new(engine.clone(), compiled.rules.clone()) {
        return Err(PlacedErrors(vec![error("rules", None, e.to_string())]));
    }
    Ok(compiled)
}

impl Registry {
    /// Loads every rule; any error refuses the start with all of them.
    pub fn open(
        engine: EngineConfig,
        config_rules: Vec<RuleConfig>,
        config_file: Option<PathBuf>,
        dir: Option<PathBuf>,
        webhook_allow: Vec<String>,
        store: Store,
    ) -> Result<Self, RuleErrors> {
        let inner = Inner {
            engine,
            config_rules,
            config_file,
            dir,
            webhook_allow,
            store,
            current: RwLock::new(Current {
                entries: Vec::new(),
                compiled: Arc::default(),
                stamp: Vec::new(),
                refused: None,
            }),
            version: AtomicU64::new(0),
            changing: Mutex::new(()),
        };
        let registry = Self(Arc::new(inner));
        let stamp = registry.stamp();
        let mut entries = registry.load_files()?;
        entries.extend(registry.api_entries()?);
        let compiled = registry.build(&entries)?;
        registry.install(entries, compiled, Some(stamp));
        Ok(registry)
    }

    /// Increases with every change of the set.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }

    pub fn compiled(&self) -> Arc<Compiled> {
        self.read().compiled.clone()
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.read().entries.clone()
    }

    pub fn engine_config(&self) -> &EngineConfig {
        &self.0.engine
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.0.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn install(&self, entries: Vec<Entry>, compiled: Compiled, stamp: Option<Stamp>) {
        let mut current = self.0.current.write().unwrap_or_else(|e| e.into_inner());
        current.entries = entries;
        current.compiled = Arc::new(compiled);
        if let Some(s) = stamp {
            current.stamp = s;
            current.refused = None;
        }
        self.0.version.fetch_add(1, Ordering::AcqRel);
    }

    fn watched(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.0.config_file.iter().cloned().collect();
        if let Some(dir) = &self.0.dir {
            files.push(dir.clone());
            files.extend(dir_files(dir).unwrap_or_default());
        }
        files
    }

    fn stamp(&self) -> Stamp {
        self.watched()
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                (p, meta)
            })
            .collect()
    }

    fn load_files(&self) -> Result<Vec<Entry>, RuleErrors> {
        load_files(
            &self.0.config_rules,
            self.0.config_file.as_deref(),
            self.0.dir.as_deref(),
            self.allow(),
        )
    }

    fn api_entries(&self) -> Result<Vec<Entry>, RuleErrors> {
        let stored = self
            .0
            .store
            .api_rules()
            .map_err(|e| PlacedErrors(vec![error("store", None, e.to_string())]))?;
        stored
            .into_iter()
            .map(|(name, bytes)| {
                serde_json::from_slice::<RuleConfig>(&bytes)
                    .map(|rule| Entry {
                        origin: Origin::Api,
                        rule,
                    })
                    .map_err(|e| {
                        PlacedErrors(vec![error(
                            "store",
                            Some(&name),
                            format!("stored rule does not decode: {e}"),
                        )])
                    })
            })
            .collect()
    }

    fn build(&self, entries: &[Entry]) -> Result<Compiled, RuleErrors> {
        build(&self.0.engine, entries, self.allow())
    }

    fn allow(&self) -> WebhookAllow<'_> {
        WebhookAllow::Prefixes(&self.0.webhook_allow)
    }

    /// Re-reads the files if they changed. `Ok(true)` when a new set
    /// runs; on error the old set stays (and the same files are not
    /// reported again until they change).
    pub fn reload(&self) -> Result<bool, RuleErrors> {
        let _one = self.0.changing.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = self.stamp();
        {
            let current = self.read();
            if current.stamp == stamp || current.refused.as_ref() == Some(&stamp) {
                return Ok(false);
            }
        }
        let result = self.load_files().and_then(|mut entries| {
            let api: Vec<Entry> = self
                .read()
                .entries
                .iter()
                .filter(|e| e.origin == Origin::Api)
                .cloned()
                .collect();
            entries.extend(api);
            let compiled = self.build(&entries)?;
            Ok((entries, compiled))
        });
        match result {
            Ok((entries, compiled)) => {
                self.install(entries, compiled, Some(stamp));
                Ok(true)
            }
            Err(e) => {
                let mut current = self.0.current.write().unwrap_or_else(|e| e.into_inner());
                current.refused = Some(stamp);
                Err(e)
            }
        }
    }

    /// Creates or replaces an API rule; `Ok(true)` when created.
    pub fn put(&self, rule: RuleConfig) -> Result<bool, ChangeError> {
        let _one = self.0.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries = self.entries();
        let existing = entries.iter().position(|e| e.rule.name == rule.name);
        if let Some(i) = existing
            && entries[i].origin != Origin::Api
        {
            return Err(ChangeError::NotApi {
                name: rule.name,
                origin: entries[i].origin.describe(),
            });
        }
        let entry = Entry {
            origin: Origin::Api,
            rule: rule.clone(),
        };
        match existing {
            Some(i) => entries[i] = entry,
            None => entries.push(entry),
        }
        let compiled = self.build(&entries).map_err(ChangeError::Invalid)?;
        let bytes = serde_json::to_vec(&rule).unwrap_or_default();
        self.0.store.put_api_rule(&rule.name, &bytes)?;
        self.install(entries, compiled, None);
        Ok(existing.is_none())
    }

    /// Deletes an API rule.
    pub fn delete(&self, name: &str) -> Result<(), ChangeError> {
        let _one = self.0.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries = self.entries();
        let i = entries
            .iter()
            .position(|e| e.rule.name == name)
            .ok_or_else(|| ChangeError::NotFound(name.to_string()))?;
        if entries[i].origin != Origin::Api {
            return Err(ChangeError::NotApi {
                name: name.to_string(),
                origin: entries[i].origin.describe(),
            });
        }
        entries.remove(i);
        let compiled = self.build(&entries).map_err(ChangeError::Invalid)?;
        self.0.store.delete_api_rule(name)?;
        self.install(entries, compiled, None);
        Ok(())
    }

    /// Polls the files every `every` and reloads them when they change.
    pub fn watch(
        &self,
        every: Duration,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let r = registry.clone();
                let result = tokio::task::spawn_blocking(move || r.reload()).await;
                match result {
                    Ok(Ok(true)) => {
                        stats::add(&stats.rules_reloaded, 1);
                        info!(rules = registry.read().entries.len(), "rules reloaded");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(errors)) => {
                        stats::add(&stats.rules_refused, 1);
                        for e in &errors.0 {
                            warn!(error = %e, "rule change refused; the running rules stay");
                        }
                    }
                    Err(e) => warn!(error = %e, "rules reload task failed"),
                }
            }
        })
    }
}
