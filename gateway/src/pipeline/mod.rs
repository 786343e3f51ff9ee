//! The ingest pipeline, in stages, each a module with a named input and
//! output: route ([`route`]: topic -> device, format) and decode and
//! admit ([`admit`]: messages -> `Admitted`), the engine (samples ->
//! `Output`), render ([`render`]: outputs -> `Rendered`), commit
//! ([`commit`]: the only writer of the store), acknowledge and publish
//! ([`publish`]). This module batches messages and runs the stages.
//!
//! Invariant: a message is acknowledged to the broker only after the redb
//! transaction holding its samples (and the outbox records they produced)
//! committed. A message the gateway cannot use (unknown topic, malformed,
//! oversized) is counted, logged and acknowledged, so it is never
//! redelivered forever; it never affects the other messages of its batch.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_analytics::{Engine, EngineConfig, LiveQuery, Output, Sample};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{EngineSection, IngestConfig};
use crate::rules::actions::{Dispatch, Webhooks};
use crate::rules::{Compiled, Registry};
use crate::sequencer::Sequencer;
use crate::sinks::{OutboxHead, Publisher};
use crate::sources::{Acknowledger, Message};
use crate::stats::{self, Stats};
use crate::store::{Limits, OutboxRecord, Store, StoreError, StoredSample};

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

mod admit;
mod commit;
mod publish;
pub mod render;

use admit::Diagnostics;
pub(crate) mod route;

pub use render::Rendered;
pub use route::Router;

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
    /// The source's acknowledging end.
    pub acker: Acknowledger,
    /// The live sink (the local broker).
    pub local: Publisher,
    /// Whether results go to the outbox (an outbox sink exists).
    pub outbox: bool,
    pub limits: Limits,
    /// Announces outbox growth to the outbox sinks.
    pub outbox_head: OutboxHead,
    pub stats: Arc<Stats>,
    /// The gateway's shutdown: a commit held by a failing store stops
    /// retrying (its messages stay unacknowledged, redelivered later).
    pub stop: tokio_util::sync::CancellationToken,
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
    /// [`PipelineParts::build`] on a blocking thread: restoring a snapshot
    /// and replaying the log are redb reads and CPU work that must not
    /// hold a runtime thread.
    pub async fn build_off_runtime(&self) -> Result<Pipeline, PipelineError> {
        let parts = self.clone();
        tokio::task::spawn_blocking(move || parts.build()).await?
    }

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
                // Taken after a device clock ahead had moved event time
                // past the horizon: its windows would never close.
                Ok(engine) if engine.max_event_ms() > Some(self.horizon_ms()) => {
                    warn!(
                        event_time_ms = engine.max_event_ms(),
                        horizon_ms = self.horizon_ms(),
                        "engine snapshot is ahead of ingest.future_horizon; open windows start empty"
                    );
                    Engine::new(config, rules)?
                }
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
            diagnostics: Diagnostics::default(),
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
        let mut ahead = 0u64;
        let horizon_ms = self.horizon_ms();
        self.store.for_each_sample_from(offset, |_, s| {
            replayed += 1;
            // Stored before the horizon applied: not fed to the engine.
            if s.ts_ms > horizon_ms {
                ahead += 1;
                return;
            }
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
        if ahead > 0 {
            warn!(
                ahead,
                "stored samples beyond ingest.future_horizon not replayed into open windows"
            );
        }
        Ok(replayed)
    }

    /// The latest event time admitted now: the wall clock plus
    /// `ingest.future_horizon`, in Unix milliseconds.
    fn horizon_ms(&self) -> i64 {
        let horizon = i64::try_from(self.ingest.future_horizon.as_millis()).unwrap_or(i64::MAX);
        wall_ms().saturating_add(horizon)
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
    /// Rate-limited logs of refused and dropped input.
    diagnostics: Diagnostics,
    parts: PipelineParts,
}

/// The channel from the ingest source, shared by successive pipeline
/// runs: a restarted pipeline continues where the failed one stopped.
pub type Inbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Pipeline {
    /// Runs until the source closes the channel; everything received is
    /// committed and acknowledged before returning.
    pub async fn run(mut self, inbox: Inbox) -> Result<(), PipelineError> {
        let mut rx = inbox.lock().await;
        let requests = self.parts.requests.clone();
        let mut requests = requests.lock().await;
        let mut snapshots = tokio::time::interval(self.parts.engine_section.snapshot_every);
        snapshots.tick().await;
        let mut batch: Vec<Message> = Vec::with_capacity(self.parts.ingest.batch_size);
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
                    // Take what is already queued without waiting: under
                    // group commit, what arrived during the last commit.
                    while batch.len() < self.parts.ingest.batch_size {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if batch.len() >= self.parts.ingest.batch_size
                        || self.parts.ingest.batch_delay.is_zero()
                    {
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

    /// One batch through every stage: admit, engine, render, commit,
    /// acknowledge and publish.
    async fn flush(
        &mut self,
        batch: &mut Vec<Message>,
        out: &mut Output,
    ) -> Result<(), PipelineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let admitted = self.admit(batch, wall_ms());
        out.clear();
        let late_before = self.engine.stats().late;
        self.engine.ingest(&admitted.samples, out);
        // Once per sample, however many views it was late for.
        let late = self.engine.stats().late.saturating_sub(late_before);
        stats::add(&self.parts.stats.samples_late, late);
        let late = self.render_late(&out.late);
        self.commit_and_publish(admitted.stored, batch, out).await?;
        self.publish_late(late).await;
        for device in admitted.ack_devices {
            self.send_ack(device).await;
        }
        Ok(())
    }

    /// Renders the engine's outputs, commits them with `stored` in one
    /// transaction, then acknowledges `messages` and publishes.
    async fn commit_and_publish(
        &mut self,
        stored: Vec<StoredSample>,
        messages: &mut Vec<Message>,
        out: &Output,
    ) -> Result<(), PipelineError> {
        let windows: Vec<Rendered> = out.windows.iter().map(|w| self.render_window(w)).collect();
        let mut outbox: Vec<OutboxRecord> = if self.parts.outbox {
            windows
                .iter()
                .map(|r| OutboxRecord {
                    topic: r.topic.clone(),
                    payload: r.payload.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut history = Vec::with_capacity(out.alerts.len());
        let mut dispatch = Dispatch::default();
        for a in &out.alerts {
            let rendered = self.render_alert(a);
            let actions = self.compiled.actions.get(&a.rule).map(Vec::as_slice);
            let group = self.engine.label(a.key);
            dispatch.add(actions, a, &rendered, group, self.parts.outbox);
            history.push(rendered.payload);
        }
        outbox.append(&mut dispatch.outbox);
        let committed = self.commit(stored, outbox, history).await?;
        self.acknowledge(messages);
        self.publish(out, windows, dispatch, committed.outbox > 0)
            .await;
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
