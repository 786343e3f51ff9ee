//! Sinks: where results leave the gateway.
//!
//! Two kinds, one seam each; the pipeline knows neither transport:
//!
//! - **Outbox sinks** ([`Sink`]) forward the durable outbox upstream. A
//!   sink opens a [`Session`] (connects), takes records in outbox order and
//!   reports each offset its peer durably accepted; [`forward`] does the
//!   rest for every sink alike: reads the outbox from the sink's stored
//!   offset, keeps the in-flight window, moves the offset only over an
//!   accepted prefix, and resends from it after a failure (at-least-once,
//!   in order). The pipeline only announces that the outbox grew
//!   ([`OutboxHead`]). A new upstream (NATS JetStream, Kafka) is a module
//!   implementing [`Sink`] and a config section read by [`spawn`].
//! - **Live sinks** ([`Publish`]) take results as each batch commits, best
//!   effort: the local broker ([`local::LocalPublisher`]).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::render::Rendered;
use crate::stats::Stats;
use crate::store::{OutboxRecord, Store, StoreError};
use crate::supervisor::{RestartPolicy, supervise};
use crate::tls::TlsError;

pub mod forward;
pub mod local;
pub mod upstream;

/// The backoff of reconnects and restarts: the MQTT transport's.
pub use eddy_mqtt::backoff;

/// Why a sink session ended or could not start; its supervisor restarts
/// it with backoff, and the next session resends from the stored offset.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink} {url}: {reason}")]
    Connection {
        sink: &'static str,
        url: String,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{sink} TLS: {source}")]
    Tls {
        sink: &'static str,
        source: TlsError,
    },
}

/// A destination of the outbox (an upstream broker or stream).
pub trait Sink: Send + Sync + 'static {
    type Session: Session;

    /// The sink's name: the key of its offset in the store, its task's
    /// name in logs and metrics.
    fn name(&self) -> &'static str;

    /// Connects. Resolves once records can be sent; a session that cannot
    /// be opened is an error (the supervisor retries with backoff).
    /// `stop` is cancelled when the session must end.
    fn open(
        &self,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<Self::Session, SinkError>> + Send;
}

/// One connection of a [`Sink`].
pub trait Session: Send {
    /// Records that may be in flight at once.
    fn max_inflight(&self) -> usize;

    /// Queues the record at `offset` (offsets come in increasing order).
    /// `false`: the session cannot take it now; it is offered again once
    /// the session reported progress.
    fn send(&mut self, offset: u64, record: &OutboxRecord) -> bool;

    /// The next offset the peer durably accepted, in any order; an error
    /// ends the session. Must be cancel-safe (it runs in a `select!`).
    fn accepted(&mut self) -> impl Future<Output = Result<u64, SinkError>> + Send;
}

/// The outbox's head, announced by the pipeline after each commit that
/// appended to it; every outbox sink watches it.
#[derive(Debug, Clone)]
pub struct OutboxHead(watch::Sender<()>);

impl Default for OutboxHead {
    fn default() -> Self {
        Self(watch::channel(()).0)
    }
}

impl OutboxHead {
    /// Records were appended: wakes every idle sink.
    pub fn grew(&self) {
        self.0.send_replace(());
    }

    /// A watcher for one sink session.
    pub fn watch(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }
}

/// Starts the configured outbox sinks, each supervised; a task finishes
/// at `shutdown`.
pub fn spawn(
    config: &Config,
    store: &Store,
    head: &OutboxHead,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, SinkError> {
    let mut tasks = Vec::new();
    if let Some(up) = &config.upstream {
        let sink = upstream::MqttSink::new(up.clone())?;
        tasks.push(supervised(sink, store, head, stats, shutdown));
    }
    Ok(tasks)
}

/// Whether any outbox sink is configured (else nothing is put in the
/// outbox).
pub fn any(config: &Config) -> bool {
    config.upstream.is_some()
}

fn supervised<S: Sink>(
    sink: S,
    store: &Store,
    head: &OutboxHead,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let sink = Arc::new(sink);
    let (store, head, task_stats, token) =
        (store.clone(), head.clone(), stats.clone(), shutdown.clone());
    supervise(
        sink.name(),
        RestartPolicy::default(),
        stats.clone(),
        shutdown.clone(),
        move || {
            let (sink, store, head, stats, token) = (
                sink.clone(),
                store.clone(),
                head.watch(),
                task_stats.clone(),
                token.clone(),
            );
            async move { forward::run(&*sink, &store, head, &stats, &token).await }
        },
    )
}

/// How hard a live sink tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Sent once (cumulative device acks: the next one makes good a lost one).
    AtMostOnce,
    /// Resent until the broker acknowledged it (results, commands).
    AtLeastOnce,
}

/// A boxed future, for a dyn-compatible [`Publish`].
pub type Publishing<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// A live sink: takes a rendered result (topic relative to the sink's
/// prefix) once its batch committed. Resolves to whether the sink took
/// it; waits while the sink's bounded queue is full, which slows the
/// pipeline down rather than dropping.
pub trait Publish: Send + Sync + Debug {
    fn publish(&self, message: Rendered, guarantee: Guarantee) -> Publishing<'_>;
}

/// The pipeline's handle on its live sink.
pub type Publisher = Arc<dyn Publish>;
