//! The gateway's HTTP port: `GET /metrics` in Prometheus text format and
//! `GET /healthz`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::stats::Stats;
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

/// Binds `listen` and serves until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    stats: Arc<Stats>,
    store: Store,
    api: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), HttpError> {
    let err = |source| HttpError { listen, source };
    let listener = TcpListener::bind(listen).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState { stats, store })
        .merge(api);
    info!(%addr, "http listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "http server stopped");
        }
    });
    Ok((addr, task))
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
