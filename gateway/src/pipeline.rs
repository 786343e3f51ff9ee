//! The ingest pipeline: batch -> decode -> engine -> one durable commit ->
//! acknowledge -> publish.
//!
//! Invariant: a message is acknowledged to the broker only after the redb
//! transaction holding its samples (and the outbox records they produced)
//! committed. A message the gateway cannot use (unknown topic, malformed,
//! oversized) is counted, logged and acknowledged, so it is never
//! redelivered forever; it never affects the other messages of its batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_analytics::{
    Aggregate, Aggregates, AlertEvent, AlertState, Engine, EngineConfig, Late, LiveQuery, Output,
    Sample, WindowResult,
};
use eddy_mqtt::Publish;
use eddy_proto::{Ack, CommandFrame, Frame};
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{
    EngineSection, FullPolicy, IngestConfig, PayloadFormat, TimeMode, TopicMapping,
};
use crate::decode::{self, DecodeError};
use crate::rules::actions::Webhooks;
use crate::rules::{Action, Compiled, Registry};
use crate::sequencer::{Sequencer, Verdict};
use crate::sinks::local::LocalPublisher;
use crate::sources::mqtt::Acker;
use crate::stats::{self, Stats};
use crate::store::{Batch, Limits, OutboxRecord, Store, StoreError, StoredSample};

/// How often the pipeline advances event time while no data arrives.
const IDLE_TICK: Duration = Duration::from_millis(200);
/// Late samples published per batch at most (all are counted).
const MAX_LATE_PUBLISHED: usize = 1000;

/// The pipeline could not continue.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("engine: {0}")]
    Engine(#[from] eddy_analytics::EngineError),
}

/// Which messages are telemetry, in which format, from which device.
#[derive(Debug, Clone)]
pub struct Router {
    prefix: String,
    mappings: Vec<(Vec<String>, PayloadFormat, usize, Vec<usize>)>,
}

impl Router {
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            prefix: config.topic_prefix.clone(),
            mappings: config
                .topics
                .iter()
                .map(
                    |TopicMapping {
                         filter,
                         format,
                         device_level,
                         path_levels,
                     }| {
                        (
                            filter.split('/').map(String::from).collect(),
                            *format,
                            *device_level,
                            path_levels.clone(),
                        )
                    },
                )
                .collect(),
        }
    }

    /// The device and payload format of a topic, if any mapping claims it.
    pub fn route<'t>(&self, topic: &'t str) -> Option<(&'t str, PayloadFormat)> {
        if let Some((device, leaf)) = eddy_proto::topic::split_device_topic(&self.prefix, topic)
            && leaf == eddy_proto::topic::TELEMETRY
        {
            return Some((device, PayloadFormat::Auto));
        }
        let levels: Vec<&str> = topic.split('/').collect();
        self.mappings
            .iter()
            .find_map(|(filter, format, device_level, _)| {
                matches(filter, &levels).then(|| Some((*levels.get(*device_level)?, *format)))?
            })
    }

    /// The hierarchy path a mapping with `path_levels` reads from a topic.
    pub fn path(&self, topic: &str) -> Option<String> {
        let levels: Vec<&str> = topic.split('/').collect();
        let (_, _, _, path) = self
            .mappings
            .iter()
            .find(|(filter, _, _, path)| !path.is_empty() && matches(filter, &levels))?;
        let parts: Option<Vec<&str>> = path.iter().map(|&i| levels.get(i).copied()).collect();
        Some(parts?.join("/"))
    }
}

fn matches(filter: &[String], levels: &[&str]) -> bool {
    for (i, f) in filter.iter().enumerate() {
        match f.as_str() {
            "#" => return true,
            "+" if i < levels.len() => {}
            f if levels.get(i) == Some(&f) => {}
            _ => return false,
        }
    }
    filter.len() == levels.len()
}

/// Everything a pipeline is built from, wired by `Gateway::start`. The
/// supervisor builds a fresh [`Pipeline`] from it after a failure, with
/// admission state reloaded from the store, so the restarted pipeline
/// knows exactly what was committed.
#[derive(Debug, Clone)]
pub struct PipelineParts {
    pub engine: EngineConfig,
    /// The running rules; a new version is applied between batches.
    pub rules: Registry,
    pub webhooks: Webhooks,
    /// Views, hierarchy paths, time mode, snapshot interval.
    pub engine_section: EngineSection,
    /// Requests from the HTTP API, answered between batches.
    pub requests: RequestInbox,
    pub store: Store,
    pub ingest: IngestConfig,
    /// Acknowledges ingest messages.
    pub acker: Acker,
    pub local: LocalPublisher,
    /// Whether results go to the outbox (an upstream sink exists).
    pub outbox: bool,
    pub limits: Limits,
    pub wake_upstream: Arc<Notify>,
    pub stats: Arc<Stats>,
}

/// A question from the HTTP API about the engine's state, and where the
/// answer goes.
#[derive(Debug)]
pub enum Request {
    /// Open windows.
    Live {
        query: LiveQuery,
        reply: oneshot::Sender<serde_json::Value>,
    },
    /// Pending and firing alerts.
    Alerts {
        reply: oneshot::Sender<serde_json::Value>,
    },
}

/// The request channel, shared by successive pipeline runs.
pub type RequestInbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>;

/// Samples fed to the engine at once while replaying the log.
const REPLAY_CHUNK: usize = 8192;

impl PipelineParts {
    /// A pipeline with the stored admission state and the engine resumed
    /// from its last snapshot plus the samples stored since (a fresh
    /// engine when there is none, or it was taken with other views).
    pub fn build(&self) -> Result<Pipeline, PipelineError> {
        let config = self.engine.clone();
        let rules_version = self.rules.version();
        let compiled = self.rules.compiled();
        let rules = compiled.rules.clone();
        let mut engine = match self.store.load_snapshot()? {
            Some((offset, bytes)) => match Engine::restore(config.clone(), rules.clone(), &bytes) {
                Ok(engine) => {
                    let mut engine = engine;
                    let replayed = self.replay(&mut engine, offset)?;
                    info!(
                        series = engine.series_count(),
                        replayed, "engine resumed from its snapshot"
                    );
                    engine
                }
                Err(e) => {
                    warn!(error = %e, "engine snapshot not used; open windows start empty");
                    Engine::new(config, rules)?
                }
            },
            None => Engine::new(config, rules)?,
        };
        for (device, path) in &self.engine_section.paths {
            engine.set_path(device, path);
        }
        Ok(Pipeline {
            engine,
            rules_version,
            compiled,
            command_id: 0,
            router: Router::new(&self.ingest),
            sequencer: Sequencer::new(self.store.devices()?, self.ingest.max_devices),
            full: false,
            parts: self.clone(),
        })
    }
}

impl PipelineParts {
    /// Feeds the samples stored from `offset` on to the engine; what they
    /// produce was published before the restart and is dropped.
    fn replay(&self, engine: &mut Engine, offset: u64) -> Result<u64, PipelineError> {
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        let mut out = Output::default();
        let mut replayed = 0u64;
        self.store.for_each_sample_from(offset, |_, s| {
            replayed += 1;
            if let Ok(series) = engine.series_key(&s.device, &s.metric) {
                chunk.push(Sample {
                    series,
                    ts_ms: s.ts_ms,
                    value: s.value,
                });
            }
            if chunk.len() >= REPLAY_CHUNK {
                engine.ingest(&chunk, &mut out);
                chunk.clear();
                out.clear();
            }
        })?;
        engine.ingest(&chunk, &mut out);
        Ok(replayed)
    }
}

/// The ingest pipeline's running state.
#[derive(Debug)]
pub struct Pipeline {
    engine: Engine,
    /// The rule set the engine runs, and its actions.
    rules_version: u64,
    compiled: Arc<Compiled>,
    /// Id of the last command sent by an action.
    command_id: u32,
    router: Router,
    /// Exactly-once admission of Eddy frames; loaded from the store.
    sequencer: Sequencer,
    /// The sample log was at a cap after the last commit.
    full: bool,
    parts: PipelineParts,
}

/// The channel from the ingest source, shared by successive pipeline
/// runs: a restarted pipeline continues where the failed one stopped.
pub type Inbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Publish>>>;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A rendered result: topic relative to the prefix, payload, retained?
type Rendered = (String, Vec<u8>, bool);

impl Pipeline {
    /// Runs until the source closes the channel; everything received is
    /// committed and acknowledged before returning.
    pub async fn run(mut self, inbox: Inbox) -> Result<(), PipelineError> {
        let mut rx = inbox.lock().await;
        let requests = self.parts.requests.clone();
        let mut requests = requests.lock().await;
        let mut snapshots = tokio::time::interval(self.parts.engine_section.snapshot_every);
        snapshots.tick().await;
        let mut batch: Vec<Publish> = Vec::with_capacity(self.parts.ingest.batch_size);
        let mut deadline: Option<Instant> = None;
        let mut last_arrival = Instant::now();
        let mut idle = tokio::time::interval(IDLE_TICK);
        let mut out = Output::default();
        loop {
            self.apply_rules();
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    batch.push(msg);
                    last_arrival = Instant::now();
                    deadline.get_or_insert(last_arrival + self.parts.ingest.batch_delay);
                    // Take what is already queued without waiting.
                    while batch.len() < self.parts.ingest.batch_size {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if batch.len() >= self.parts.ingest.batch_size {
                        self.flush(&mut batch, &mut out).await?;
                        deadline = None;
                    }
                }
                () = sleep_until(deadline) => {
                    self.flush(&mut batch, &mut out).await?;
                    deadline = None;
                }
                Some(request) = requests.recv() => match request {
                    Request::Live { query, reply } => {
                        let _ = reply.send(self.live(&query));
                    }
                    Request::Alerts { reply } => {
                        let _ = reply.send(self.alerts());
                    }
                },
                _ = snapshots.tick() => {
                    self.flush(&mut batch, &mut out).await?;
                    deadline = None;
                    self.snapshot().await;
                }
                _ = idle.tick() => {
                    // Event time moves on with the wall clock while the
                    // fleet is silent, so the last windows close. Not while
                    // data flows: then each device's own watermark rules
                    // (a lagging clock within max_source_skew is analysed).
                    if let Some(max) = self.engine.max_event_ms()
                        && last_arrival.elapsed() >= IDLE_TICK
                    {
                        let silent = i64::try_from(last_arrival.elapsed().as_millis()).unwrap_or(i64::MAX);
                        let lateness = i64::try_from(self.engine.config().allowed_lateness_ms).unwrap_or(i64::MAX);
                        out.clear();
                        self.engine.advance_to(max.saturating_add(silent).saturating_sub(lateness), &mut out);
                        if !out.is_empty() {
                            self.commit_and_publish(Vec::new(), &mut Vec::new(), &out).await?;
                        }
                    }
                }
            }
        }
        self.flush(&mut batch, &mut out).await?;
        self.snapshot().await;
        Ok(())
    }

    /// Saves the engine's state with the log offset it covers. A failure
    /// costs only replay time at the next start: logged, not fatal.
    async fn snapshot(&self) {
        let bytes = match self.engine.snapshot() {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "engine snapshot failed");
                return;
            }
        };
        let store = self.parts.store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let offset = store.samples_next()?;
            store.save_snapshot(offset, &bytes).map(|()| bytes.len())
        })
        .await;
        match saved {
            Ok(Ok(len)) => debug!(bytes = len, "engine snapshot saved"),
            Ok(Err(e)) => warn!(error = %e, "engine snapshot not saved"),
            Err(e) => warn!(error = %e, "engine snapshot task failed"),
        }
    }

    /// Runs the registry's rule set if it changed: unchanged rules keep
    /// their windows and alerts. The registry checked the set against the
    /// engine; should it still fail, the running rules stay.
    fn apply_rules(&mut self) {
        let version = self.parts.rules.version();
        if version == self.rules_version {
            return;
        }
        let compiled = self.parts.rules.compiled();
        match self.engine.set_rules(compiled.rules.clone()) {
            Ok(()) => {
                info!(rules = compiled.rules.len(), "rule set applied");
                self.compiled = compiled;
            }
            Err(e) => warn!(error = %e, "rule set not applied; the running rules stay"),
        }
        self.rules_version = version;
    }

    /// Pending and firing alerts.
    fn alerts(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .engine
            .alerts()
            .iter()
            .map(|a| {
                json!({
                    "rule": &*a.rule, "group": a.label, "metric": a.metric,
                    "state": a.phase.name(), "since": a.since_ms, "value": finite(a.value),
                    "severity": a.severity.name(), "flapping": a.flapping,
                })
            })
            .collect();
        json!(rows)
    }

    /// Answers a live query from the engine's open windows.
    fn live(&self, query: &LiveQuery) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .engine
            .live(query)
            .iter()
            .map(|row| {
                let mut v = json!({
                    "view": &*row.view, "group": row.label, "metric": row.metric,
                    "start": row.start_ms, "end": row.end_ms,
                });
                self.put_aggregates(&mut v, &row.view, &row.aggregates);
                v
            })
            .collect();
        json!({ "watermark": self.engine.watermark_ms(), "windows": rows })
    }

    /// The aggregates a view publishes, into a JSON object.
    fn put_aggregates(&self, v: &mut serde_json::Value, view: &str, a: &Aggregates) {
        let configured = self
            .parts
            .engine_section
            .views
            .iter()
            .find(|c| c.name == view)
            .map(|c| c.aggregates.as_slice());
        let standard = [
            Aggregate::Count,
            Aggregate::Mean,
            Aggregate::Min,
            Aggregate::Max,
        ];
        if let Some(obj) = v.as_object_mut() {
            for agg in configured.unwrap_or(&standard) {
                let value = a.get(*agg);
                obj.insert(agg.name(), json!(value));
            }
        }
    }

    async fn flush(
        &mut self,
        batch: &mut Vec<Publish>,
        out: &mut Output,
    ) -> Result<(), PipelineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let now_ms = wall_ms();
        let mut stored = Vec::with_capacity(batch.len() * 2);
        let mut samples = Vec::with_capacity(batch.len() * 2);
        let mut rejected = Rejections::default();
        let mut acks: HashSet<String> = HashSet::new();
        for msg in batch.iter() {
            let Some((device, format)) = self.router.route(&msg.topic) else {
                stats::add(&self.parts.stats.messages_unknown_topic, 1);
                debug!(topic = %msg.topic, "message on an unmapped topic");
                continue;
            };
            if let Some(path) = self.router.path(&msg.topic) {
                self.engine.set_path(device, &path);
            }
            let decoded = match decode::decode(
                format,
                device,
                &msg.payload,
                self.parts.ingest.max_payload_bytes,
                now_ms,
            ) {
                Ok(d) => d,
                Err(e) => {
                    let counter = match e {
                        DecodeError::Oversized { .. } => &self.parts.stats.messages_oversized,
                        _ => &self.parts.stats.messages_malformed,
                    };
                    stats::add(counter, 1);
                    rejected.note(&msg.topic, e);
                    continue;
                }
            };
            if self.refusing() {
                // The store is full and the policy keeps what it has: Eddy
                // devices are not acknowledged and keep their frames.
                let counter = match decoded.seq {
                    Some(_) => &self.parts.stats.frames_refused_full,
                    None => &self.parts.stats.samples_refused,
                };
                stats::add(counter, decoded.readings.len() as u64);
                continue;
            }
            if let Some(frame) = decoded.seq {
                let counter = match self.sequencer.admit(&decoded.device, frame) {
                    Verdict::Admit { lost } => {
                        if lost > 0 {
                            stats::add(&self.parts.stats.frames_lost, u64::from(lost));
                            warn!(device = %decoded.device, lost, "device dropped unacknowledged frames");
                        }
                        None
                    }
                    Verdict::Duplicate => Some(&self.parts.stats.frames_duplicate),
                    Verdict::Gap => Some(&self.parts.stats.frames_gap),
                    Verdict::TooManyDevices => {
                        rejected.note(&msg.topic, DecodeError::TooManyDevices);
                        stats::add(&self.parts.stats.frames_device_cap, 1);
                        continue;
                    }
                };
                acks.insert(decoded.device.clone());
                if let Some(counter) = counter {
                    stats::add(counter, 1);
                    continue;
                }
            }
            let frame = decoded.seq.map(|f| (f.boot, f.seq));
            let ts_ms = match self.parts.engine_section.time {
                TimeMode::Event => decoded.ts_ms,
                TimeMode::Processing => now_ms,
            };
            for r in &decoded.readings {
                match self.engine.series_key(&decoded.device, &r.metric) {
                    Ok(series) => samples.push(Sample {
                        series,
                        ts_ms,
                        value: r.value,
                    }),
                    Err(_) => stats::add(&self.parts.stats.samples_series_refused, 1),
                }
                stored.push(StoredSample {
                    device: decoded.device.clone(),
                    metric: r.metric.clone(),
                    ts_ms,
                    value: r.value,
                    frame,
                });
            }
            stats::add(&self.parts.stats.messages_accepted, 1);
        }
        rejected.log();
        out.clear();
        self.engine.ingest(&samples, out);
        stats::add(&self.parts.stats.samples_late, out.late.len() as u64);
        let late = self.render_late(&out.late);
        self.commit_and_publish(stored, batch, out).await?;
        for (topic, payload) in late {
            self.parts.local.publish_once(topic, payload).await;
        }
        for device in acks {
            self.send_ack(device).await;
        }
        Ok(())
    }

    /// True while the store is at a cap under the `refuse` policy.
    fn refusing(&self) -> bool {
        self.full && self.parts.limits.on_full == FullPolicy::Refuse
    }

    /// Tells `device` which of its frames are durably stored. Acks are
    /// cumulative and QoS 0: a lost one is made good by the next.
    async fn send_ack(&self, device: String) {
        let Some(state) = self.sequencer.get(&device) else {
            return;
        };
        let Ok(id) = eddy_proto::DeviceId::try_from(device.as_str()) else {
            return;
        };
        let frame = Frame::Ack(Ack {
            device: id,
            boot: state.boot,
            seq: state.acked(),
        });
        let mut buf = [0u8; 64];
        let Ok(bytes) = eddy_proto::encode(&frame, &mut buf) else {
            return;
        };
        let topic = format!(
            "{}/{device}/{}",
            self.parts.ingest.topic_prefix,
            eddy_proto::topic::ACK
        );
        if self.parts.local.publish_once(topic, bytes.to_vec()).await {
            stats::add(&self.parts.stats.acks_sent, 1);
        }
    }

    /// Commits samples and outbox records in one transaction, then
    /// acknowledges `acks` and publishes the results locally.
    async fn commit_and_publish(
        &mut self,
        stored: Vec<StoredSample>,
        acks: &mut Vec<Publish>,
        out: &Output,
    ) -> Result<(), PipelineError> {
        let mut rendered: Vec<Rendered> =
            out.windows.iter().map(|w| self.render_window(w)).collect();
        let mut outbox: Vec<OutboxRecord> = if self.parts.outbox {
            rendered
                .iter()
                .map(|(topic, payload, _)| OutboxRecord {
                    topic: topic.clone(),
                    payload: payload.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut history = Vec::with_capacity(out.alerts.len());
        let mut effects = Vec::new();
        for a in &out.alerts {
            let (topic, payload, retain) = self.render_alert(a);
            history.push(payload.clone());
            let default = [Action::Mqtt, Action::Upstream];
            let actions = self
                .compiled
                .actions
                .get(&a.rule)
                .map_or(&default[..], Vec::as_slice);
            for action in actions {
                match action {
                    Action::Mqtt => rendered.push((topic.clone(), payload.clone(), retain)),
                    Action::Upstream if self.parts.outbox => outbox.push(OutboxRecord {
                        topic: topic.clone(),
                        payload: payload.clone(),
                    }),
                    Action::Upstream => {}
                    Action::Webhook { url, when } if when.matches(a.state, a.repeat) => {
                        effects.push(Effect::Webhook(url.clone(), payload.clone()));
                    }
                    Action::Command {
                        command,
                        device,
                        when,
                    } if when.matches(a.state, a.repeat) => {
                        let target = device
                            .clone()
                            .unwrap_or_else(|| self.engine.label(a.key).to_string());
                        effects.push(Effect::Command(target, *command, a.rule.clone()));
                    }
                    Action::Webhook { .. } | Action::Command { .. } => {}
                }
            }
        }
        let limits = self.parts.limits;
        let store = self.parts.store.clone();
        let batch = Batch {
            samples: stored,
            outbox,
            devices: self.sequencer.take_dirty(),
            alerts: history,
        };
        let committed =
            tokio::task::spawn_blocking(move || store.commit_batch(&batch, limits)).await??;
        stats::add(&self.parts.stats.samples_committed, committed.samples);
        stats::add(&self.parts.stats.samples_expired, committed.samples_expired);
        if committed.full != self.full && self.parts.limits.on_full == FullPolicy::Refuse {
            if committed.full {
                warn!("sample store full: refusing new samples (store.on_full = \"refuse\")");
            } else {
                info!("sample store has room again: admitting samples");
            }
        }
        self.full = committed.full;
        stats::add(&self.parts.stats.batches_committed, 1);
        stats::add(&self.parts.stats.outbox_appended, committed.outbox);
        if committed.samples_dropped > 0 {
            stats::add(&self.parts.stats.samples_dropped, committed.samples_dropped);
            warn!(
                dropped = committed.samples_dropped,
                "sample log full: oldest samples dropped"
            );
        }
        if committed.outbox_dropped > 0 {
            stats::add(&self.parts.stats.outbox_dropped, committed.outbox_dropped);
            warn!(
                dropped = committed.outbox_dropped,
                "outbox full: oldest records dropped"
            );
        }
        let unacked = acks
            .drain(..)
            .filter(|m| self.parts.acker.ack(m).is_err())
            .count();
        if unacked > 0 {
            warn!(
                unacked,
                "acknowledgements not sent; the broker will redeliver"
            );
        }
        stats::add(&self.parts.stats.windows_closed, out.windows.len() as u64);
        for a in &out.alerts {
            let counter = match a.state {
                AlertState::Firing if !a.repeat => &self.parts.stats.alerts_fired,
                AlertState::Resolved => &self.parts.stats.alerts_resolved,
                _ => &self.parts.stats.alerts_other,
            };
            stats::add(counter, 1);
        }
        for (topic, payload, retain) in rendered {
            self.parts
                .local
                .publish(
                    format!("{}/{topic}", self.parts.ingest.topic_prefix),
                    payload,
                    retain,
                )
                .await;
        }
        if committed.outbox > 0 {
            self.parts.wake_upstream.notify_one();
        }
        for effect in effects {
            match effect {
                Effect::Webhook(url, payload) => self.parts.webhooks.post(url, payload),
                Effect::Command(device, command, rule) => {
                    self.send_command(&device, command, &rule).await;
                }
            }
        }
        Ok(())
    }

    /// Publishes a command frame to `{prefix}/{device}/cmd` (QoS 1).
    async fn send_command(&mut self, device: &str, command: eddy_proto::Command, rule: &str) {
        let Ok(id) = eddy_proto::DeviceId::try_from(device) else {
            warn!(
                rule,
                group = device,
                "command action: the alert's group is not a device"
            );
            return;
        };
        self.command_id = self.command_id.wrapping_add(1);
        let frame = Frame::Command(CommandFrame {
            device: id,
            id: self.command_id,
            command,
        });
        let mut buf = [0u8; 128];
        let Ok(bytes) = eddy_proto::encode(&frame, &mut buf) else {
            return;
        };
        let topic = format!(
            "{}/{device}/{}",
            self.parts.ingest.topic_prefix,
            eddy_proto::topic::COMMAND
        );
        self.parts.local.publish(topic, bytes.to_vec(), false).await;
        stats::add(&self.parts.stats.commands_sent, 1);
        info!(rule, device, ?command, "command sent");
    }

    fn render_window(&self, w: &WindowResult) -> Rendered {
        let label = self.engine.label(w.key);
        let metric = self.engine.group_metric(w.key);
        if w.view == 0 {
            let a = &w.aggregates;
            let metric = metric.unwrap_or("*");
            let payload = json!({
                "device": label, "metric": metric,
                "start": w.start_ms, "end": w.end_ms,
                "count": a.count, "mean": a.mean(), "min": a.min, "max": a.max,
            });
            return (
                format!("agg/{label}/{metric}"),
                payload.to_string().into_bytes(),
                false,
            );
        }
        let view = &*self.engine.views()[w.view].name;
        let mut payload = json!({
            "view": view, "group": label, "metric": metric,
            "start": w.start_ms, "end": w.end_ms,
        });
        self.put_aggregates(&mut payload, view, &w.aggregates);
        (
            format!("view/{view}/{label}/{}", metric.unwrap_or("all")),
            payload.to_string().into_bytes(),
            false,
        )
    }

    /// The late output: each sample older than a view's watermark, on
    /// `{prefix}/late/{device}/{metric}` (QoS 0; the sample itself is in
    /// the store). At most `MAX_LATE_PUBLISHED` a batch; all are counted.
    fn render_late(&self, late: &[Late]) -> Vec<(String, Vec<u8>)> {
        if late.len() > MAX_LATE_PUBLISHED {
            warn!(
                late = late.len(),
                published = MAX_LATE_PUBLISHED,
                "many late samples in one batch; the rest are counted, not published"
            );
        }
        late.iter()
            .take(MAX_LATE_PUBLISHED)
            .map(|l| {
                let device = self.engine.device_name(l.sample.series);
                let metric = self.engine.metric_name(l.sample.series);
                let payload = json!({
                    "device": device, "metric": metric, "ts": l.sample.ts_ms,
                    "value": l.sample.value, "view": &*self.engine.views()[l.view].name,
                });
                (
                    format!("{}/late/{device}/{metric}", self.parts.ingest.topic_prefix),
                    payload.to_string().into_bytes(),
                )
            })
            .collect()
    }

    fn render_alert(&self, a: &AlertEvent) -> Rendered {
        let device = self.engine.label(a.key);
        let payload = json!({
            "rule": &*a.rule, "device": device, "metric": self.engine.group_metric(a.key),
            "state": a.state.name(), "repeat": a.repeat, "severity": a.severity.name(),
            "value": finite(a.value), "threshold": a.threshold,
            "since": a.since_ms, "window_start": a.window_start_ms, "window_end": a.window_end_ms,
            "at": wall_ms(),
        });
        (
            format!("alerts/{}/{device}", a.rule),
            payload.to_string().into_bytes(),
            true,
        )
    }
}

/// What an alert's actions do once its batch is committed.
#[derive(Debug)]
enum Effect {
    Webhook(Arc<str>, Vec<u8>),
    /// Device, command, rule.
    Command(String, eddy_proto::Command, Arc<str>),
}

/// A number for JSON: NaN and infinities become null.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Rejected messages of one batch, logged once per batch, not per message.
#[derive(Debug, Default)]
struct Rejections {
    count: usize,
    first: Option<(String, DecodeError)>,
}

impl Rejections {
    fn note(&mut self, topic: &str, error: DecodeError) {
        self.count += 1;
        self.first.get_or_insert_with(|| (topic.to_string(), error));
    }

    fn log(&self) {
        if let Some((topic, error)) = &self.first {
            warn!(rejected = self.count, first_topic = %topic, first_error = %error, "messages rejected");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn routes_eddy_topics_and_configured_mappings() {
        let config = Config::parse(
            r#"
            [[ingest.topics]]
            filter = "tele/+/SENSOR"
            format = "json"
            device_level = 1
            [[ingest.topics]]
            filter = "zigbee2mqtt/+/#"
            format = "json"
            device_level = 1
            "#,
        )
        .expect("valid");
        let router = Router::new(&config.ingest);
        assert_eq!(
            router.route("eddy/v1/d1/telemetry"),
            Some(("d1", PayloadFormat::Auto))
        );
        assert_eq!(
            router.route("tele/plug-3/SENSOR"),
            Some(("plug-3", PayloadFormat::Json))
        );
        assert_eq!(
            router.route("zigbee2mqtt/bulb/state/x"),
            Some(("bulb", PayloadFormat::Json))
        );
        assert_eq!(router.route("eddy/v1/d1/status"), None);
        assert_eq!(router.route("tele/plug-3/STATE"), None);
        assert_eq!(router.route("tele/plug-3/SENSOR/extra"), None);
        assert_eq!(router.path("tele/plug-3/SENSOR"), None);
        let config = Config::parse(
            r#"
            [[ingest.topics]]
            filter = "factory/+/+/+/data"
            format = "json"
            device_level = 3
            path_levels = [1, 2]
            "#,
        )
        .expect("valid");
        let router = Router::new(&config.ingest);
        assert_eq!(
            router.route("factory/plant-1/line-4/press-2/data"),
            Some(("press-2", PayloadFormat::Json))
        );
        assert_eq!(
            router
                .path("factory/plant-1/line-4/press-2/data")
                .as_deref(),
            Some("plant-1/line-4")
        );
    }
}
