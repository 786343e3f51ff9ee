//! The gateway's HTTP port: `GET /metrics` in Prometheus text format and
//! `GET /healthz`, and the routers merged into it (the API, HTTP ingest).
//!
//! Served by an accept loop of its own so every connection is bounded: at
//! most `http.max_connections` at once (beyond, a new connection is
//! closed at once, counted and logged at most every 10 s), a request head
//! within `http.header_timeout` (hyper's header read timeout, which also
//! runs between requests of a kept-alive connection), and no more than
//! `http.idle_timeout` without a byte moving either way. So idle
//! connections cost at most the cap in descriptors and leave room for
//! devices on the broker.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{Need, Scope, Tokens};
use crate::config::HttpConfig;
use crate::stats::{self, LogEvery, Stats};
use crate::store::Store;

/// The HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("http listener {listen}: {source}")]
pub struct HttpError {
    pub listen: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug, Clone)]
struct AppState {
    stats: Arc<Stats>,
    store: Store,
}

/// What bounds each connection (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(c: &HttpConfig) -> Self {
        Self {
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// Open connections finish their request within this after shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Binds `listen` and serves until `shutdown`; returns the bound address.
/// With `metrics_tokens`, `/metrics` needs a token of scope `read`.
pub async fn serve(
    listen: SocketAddr,
    limits: Limits,
    stats: Arc<Stats>,
    store: Store,
    api: Router,
    metrics_tokens: Option<&Tokens>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), HttpError> {
    let err = |source| HttpError { listen, source };
    let listener = TcpListener::bind(listen).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let state = AppState {
        stats: stats.clone(),
        store,
    };
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    let metrics = match metrics_tokens {
        Some(tokens) => crate::auth::guard(metrics, tokens, Need::Always(Scope::Read)),
        None => metrics,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
        .merge(metrics)
        .merge(api);
    info!(%addr, max_connections = limits.max_connections, "http listening");
    let task = tokio::spawn(accept(listener, app, limits, stats, shutdown));
    Ok((addr, task))
}

async fn accept(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut logs = LogEvery::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: wait, do not spin.
                    if let Some(skipped) = logs.due("accept") {
                        warn!(error = %e, skipped, "http accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats::add(&stats.http_connections_refused, 1);
            if let Some(skipped) = logs.due("cap") {
                warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    skipped,
                    "http connection closed: at the connection cap"
                );
            }
            drop(stream);
            continue;
        };
        let (app, stats, shutdown) = (app.clone(), stats.clone(), shutdown.clone());
        connections.spawn(async move {
            connection(stream, app, limits, &stats, shutdown).await;
            drop(slot);
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        warn!("http connections still open at shutdown were dropped");
    }
}

/// Serves one connection until it closes, times out or the gateway stops.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    stats: &Stats,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    let moved = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        start,
        moved: moved.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let served = builder.serve_connection(io, hyper_util::service::TowerToHyperService::new(app));
    tokio::pin!(served);
    let mut check = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(10)));
    let mut closing = false;
    loop {
        tokio::select! {
            done = served.as_mut() => {
                if let Err(e) = done {
                    if e.is_timeout() {
                        stats::add(&stats.http_connections_timed_out, 1);
                    }
                    debug!(error = %e, "http connection ended");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = check.tick() => {
                let last = Duration::from_millis(moved.load(Ordering::Relaxed));
                if start.elapsed().saturating_sub(last) >= limits.idle_timeout {
                    stats::add(&stats.http_connections_timed_out, 1);
                    debug!("http connection idle: closed");
                    return;
                }
            }
        }
    }
}

/// A stream that notes when a byte last moved (milliseconds since
/// `start`), for the idle timeout.
#[derive(Debug)]
struct Watched {
    inner: TcpStream,
    start: Instant,
    moved: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `200 ok`, or `503 degraded: ...` with the reason while the store
/// cannot write (a full disk): a load balancer or watchdog sees it.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.fault() {
        None => "ok\n".into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: store cannot write: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.gauges()).await {
        Ok(Ok(gauges)) => {
            let mut out = String::with_capacity(8192);
            state.stats.snapshot().prometheus(&mut out);
            render_restarts(&state.stats, &mut out);
            render_reasons(&state.stats, &mut out);
            let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
                let _ = writeln!(out, "# HELP eddy_{name} {help}");
                let _ = writeln!(out, "# TYPE eddy_{name} gauge");
                let _ = writeln!(out, "eddy_{name} {value}");
            };
            gauge(
                &mut out,
                "store_samples",
                "Samples in the raw log.",
                gauges.samples,
            );
            gauge(
                &mut out,
                "store_sample_bytes",
                "Bytes of sample records in the raw log.",
                gauges.sample_bytes,
            );
            gauge(
                &mut out,
                "store_file_bytes",
                "Size of the redb file.",
                gauges.file_bytes,
            );
            gauge(
                &mut out,
                "outbox_depth",
                "Outbox records not yet delivered by every sink.",
                gauges.outbox,
            );
            gauge(
                &mut out,
                "store_degraded",
                "1 while the store cannot write (its last write failed: a full disk), else 0.",
                u64::from(state.store.fault().is_some()),
            );
            gauge(
                &mut out,
                "devices_tracked",
                "Devices with exactly-once admission state.",
                gauges.devices,
            );
            let _ = writeln!(
                out,
                "# HELP eddy_sink_lag_records Outbox records a sink has not had acknowledged.\n\
                 # TYPE eddy_sink_lag_records gauge"
            );
            for (sink, lag) in &gauges.sink_lag {
                let _ = writeln!(out, "eddy_sink_lag_records{{sink=\"{sink}\"}} {lag}");
            }
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn render_restarts(stats: &Stats, out: &mut String) {
    for (name, help, mut counts) in [
        (
            "eddy_task_restarts_total",
            "Restarts of a supervised task after it failed.",
            stats.task_restarts(),
        ),
        (
            "eddy_task_panics_total",
            "Panics of a task (a supervised one is restarted).",
            stats.task_panics(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for task in crate::supervisor::TASKS {
            counts.entry(task).or_insert(0);
        }
        for (task, n) in counts {
            let _ = writeln!(out, "{name}{{task=\"{task}\"}} {n}");
        }
    }
}

/// Refused messages and dropped fields by reason; every reason is
/// listed, also at 0, so a rate over it is defined from the start.
fn render_reasons(stats: &Stats, out: &mut String) {
    let dropped_reasons = crate::decode::DropReason::ALL.map(|r| r.name());
    for (name, help, reasons, mut counts) in [
        (
            "eddy_messages_refused_total",
            "Messages refused whole, by reason.",
            &crate::decode::DecodeError::REASONS[..],
            stats.refused_by_reason(),
        ),
        (
            "eddy_values_dropped_total",
            "Fields of accepted messages that did not become readings, by reason.",
            &dropped_reasons[..],
            stats.dropped_by_reason(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for reason in reasons {
            counts.entry(reason).or_insert(0);
        }
        for (reason, n) in counts {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
        }
    }
}
