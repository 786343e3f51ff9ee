//! HTTP ingest: readings `POST`ed to the gateway's HTTP port, with the
//! guarantees of the MQTT source.
//!
//! Endpoints:
//! - `POST /api/devices/{device}/telemetry`: one device's JSON
//!   (`Content-Type: application/json`, the default), SenML
//!   (`application/senml+json`) or line protocol (`text/plain`);
//!   `?format=json|senml|line_protocol` overrides the content type.
//! - `POST /api/telemetry`, `POST /write` (InfluxDB 1.x) and
//!   `POST /api/v2/write` (InfluxDB 2.x): line protocol whose lines name
//!   their devices by `http.device_tag`; `?precision=ns|us|ms|s`.
//!
//! A request is answered only after the redb transaction holding its
//! readings committed: `200` (`204` on the InfluxDB endpoints) when every
//! record was taken; `400` naming each line or record not taken
//! (`dropped`, with its reason), the others stored; `400` for a body
//! refused whole; `413` over `http.max_body_bytes`; `503` with
//! `Retry-After` when the pipeline's queue is full, the store refuses
//! under `on_full = "refuse"`, too many requests wait, or the commit
//! takes longer than 30 s (then it may still land: delivery is at least
//! once); `401` without the configured token. Every answer is counted.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::waiters::{COMMIT_TIMEOUT, Unstored, Waiters, WhenFull};
use super::{Acknowledger, Message, Outcome, Preset};
use crate::config::{HttpConfig, PayloadFormat};
use crate::decode::{DecodeError, Decoder, DropReason, LineSpec, Precision};
use crate::stats::{self, Stats};

/// The HTTP ingest source.
#[derive(Debug)]
pub struct HttpSource {
    /// Requests handed to the pipeline, awaiting their commit.
    waiters: Arc<Waiters>,
    /// Requests admitted at once (`http.max_pending_requests`).
    slots: Semaphore,
    token: Option<String>,
    max_body: usize,
    line: LineSpec,
    stats: Arc<Stats>,
}

impl HttpSource {
    /// A source feeding `tx`, number `source` of the pipeline's fanout;
    /// closes its end of the channel at `shutdown`.
    pub fn spawn(
        config: &HttpConfig,
        tx: mpsc::Sender<Message>,
        source: u8,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            waiters: Waiters::new(tx, source, shutdown),
            slots: Semaphore::new(config.max_pending_requests),
            token: config.ingest_token.clone(),
            max_body: config.max_body_bytes,
            line: LineSpec {
                device_tag: Some(config.device_tag.clone()),
                path_tags: config.path_tags.clone(),
                precision: Precision::Nanoseconds,
            },
            stats,
        })
    }

    /// Where the pipeline acknowledges this source's requests.
    pub fn acknowledger(&self) -> Acknowledger {
        self.waiters.clone()
    }

    /// The ingest endpoints.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/devices/{device}/telemetry", post(device_telemetry))
            .route("/api/telemetry", post(lines))
            .route("/write", post(lines))
            .route("/api/v2/write", post(lines))
            // The decoder refuses larger bodies too; this stops reading them.
            .layer(DefaultBodyLimit::max(self.max_body))
            .with_state(self.clone())
    }

    /// Hands one body to the pipeline and waits for its commit.
    async fn ingest(&self, preset: Preset, payload: Bytes) -> Result<Outcome, Refusal> {
        let Ok(_slot) = self.slots.try_acquire() else {
            return Err(Refusal::Busy(
                "too many requests wait for their commit".into(),
            ));
        };
        let topic = format!("http/{}", preset.device);
        let preset = Some(Arc::new(preset));
        let make = |ack| Message {
            topic,
            payload,
            retained: false,
            preset,
            ack,
        };
        let sent = self
            .waiters
            .submit(make, WhenFull::Refuse, true, COMMIT_TIMEOUT)
            .await;
        if !matches!(sent, Err(Unstored::QueueFull | Unstored::Closed)) {
            stats::add(&self.stats.messages_received, 1);
        }
        sent.map_err(|e| Refusal::Busy(e.to_string()))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("Token "))
            });
        // Compared in full whatever the prefix in common, so the time
        // taken does not tell how much of a guess was right.
        given.is_some_and(|g| {
            g.len() == want.len()
                && g.bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }
}

/// A request not handed to the pipeline.
enum Refusal {
    Busy(String),
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    format: Option<String>,
    precision: Option<String>,
}

async fn device_telemetry(
    State(source): State<Arc<HttpSource>>,
    Path(device): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let format = match params.format.as_deref() {
        Some("json") => PayloadFormat::Json,
        Some("senml") => PayloadFormat::Senml,
        Some("line_protocol") => PayloadFormat::LineProtocol,
        Some(other) => {
            return answer(
                &source,
                StatusCode::BAD_REQUEST,
                Reply::error(format!(
                    "format `{other}` is not one of json, senml, line_protocol"
                )),
            );
        }
        None if content_type.starts_with("application/senml+json") => PayloadFormat::Senml,
        None if content_type.starts_with("text/plain") => PayloadFormat::LineProtocol,
        None => PayloadFormat::Json,
    };
    handle(
        &source,
        device,
        format,
        &params,
        &headers,
        body,
        Dialect::Eddy,
    )
    .await
}

/// Line protocol naming its devices: Eddy's endpoint and InfluxDB's.
async fn lines(
    State(source): State<Arc<HttpSource>>,
    uri: Uri,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let dialect = match uri.path() {
        "/api/telemetry" => Dialect::Eddy,
        _ => Dialect::Influx,
    };
    let format = PayloadFormat::LineProtocol;
    let device = String::new();
    handle(&source, device, format, &params, &headers, body, dialect).await
}

/// How success is answered: Eddy's endpoints say what was stored,
/// InfluxDB's clients expect `204 No Content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Eddy,
    Influx,
}

async fn handle(
    source: &HttpSource,
    device: String,
    format: PayloadFormat,
    params: &Params,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    dialect: Dialect,
) -> Response {
    if !source.authorized(headers) {
        stats::add(&source.stats.http_ingest_unauthorized, 1);
        let mut r = answer(
            source,
            StatusCode::UNAUTHORIZED,
            Reply::error("a valid `Authorization: Bearer <http.ingest_token>` is required".into()),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            let status = e.status();
            return answer(source, status, Reply::error(e.body_text()));
        }
    };
    let precision = match params.precision.as_deref().map(Precision::parse) {
        None => Precision::Nanoseconds,
        Some(Some(p)) => p,
        Some(None) => {
            return answer(
                source,
                StatusCode::BAD_REQUEST,
                Reply::error("precision must be one of ns, us, ms, s".into()),
            );
        }
    };
    let preset = Preset {
        device,
        decoder: Decoder {
            line: LineSpec {
                precision,
                ..source.line.clone()
            },
            max_payload: source.max_body,
            ..Decoder::new(format)
        },
    };
    let outcome = match source.ingest(preset, body.clone()).await {
        Ok(outcome) => outcome,
        Err(Refusal::Busy(why)) => {
            stats::add(&source.stats.http_ingest_busy, 1);
            debug!(%why, "http ingest refused for now");
            let mut r = answer(
                source,
                StatusCode::SERVICE_UNAVAILABLE,
                Reply::error(format!("{why}; retry later")),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
    };
    respond(source, outcome, &body, dialect)
}

/// The answer to a committed request.
fn respond(source: &HttpSource, outcome: Outcome, body: &[u8], dialect: Dialect) -> Response {
    let mut reply = Reply {
        stored: outcome.stored,
        future_refused: outcome.future,
        ..Reply::default()
    };
    let mut dropped = outcome.dropped;
    if let Some(DecodeError::NoLines(lines)) = &outcome.refused {
        dropped.extend(lines.iter().cloned());
    }
    reply.dropped = dropped
        .iter()
        .map(|d| DroppedReply {
            field: d.field.clone(),
            reason: d.reason.name(),
            text: line_text(body, &d.field),
        })
        .collect();
    let record_refused = dropped.iter().any(|d| {
        matches!(
            d.reason,
            DropReason::BadLine
                | DropReason::NoDevice
                | DropReason::NotAnObject
                | DropReason::BadTimestamp
        )
    });
    let status = match &outcome.refused {
        Some(DecodeError::Oversized { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(_) => StatusCode::BAD_REQUEST,
        None if outcome.full > 0 => StatusCode::SERVICE_UNAVAILABLE,
        None if record_refused || outcome.future > 0 => StatusCode::BAD_REQUEST,
        None if dialect == Dialect::Influx => StatusCode::NO_CONTENT,
        None => StatusCode::OK,
    };
    reply.error = match (&outcome.refused, status) {
        (Some(e), _) => Some(e.to_string()),
        (None, StatusCode::SERVICE_UNAVAILABLE) => {
            Some("the store is full (on_full = \"refuse\"); nothing stored, retry later".into())
        }
        (None, StatusCode::BAD_REQUEST) => Some(format!(
            "partial write: {} stored; the records in `dropped` were not",
            outcome.stored
        )),
        _ => None,
    };
    let mut r = answer(source, status, reply);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

/// Line `N`'s text when `field` is `line N...`, cut to 120 bytes.
fn line_text(body: &[u8], field: &str) -> Option<String> {
    let rest = field.strip_prefix("line ")?;
    let n: usize = rest.split(':').next()?.parse().ok()?;
    let text = std::str::from_utf8(body).ok()?;
    let line = influxdb_line_protocol::split_lines(text).nth(n.checked_sub(1)?)?;
    let mut end = line.len().min(120);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(line[..end].to_string())
}

#[derive(Debug, Default, serde::Serialize)]
struct Reply {
    stored: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dropped: Vec<DroppedReply>,
    #[serde(skip_serializing_if = "is_zero")]
    future_refused: u64,
    /// InfluxDB 1.x clients read `error`, 2.x clients `message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Reply {
    fn error(text: String) -> Self {
        Self {
            error: Some(text),
            ..Self::default()
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct DroppedReply {
    field: String,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// Counts the answer by status class and renders it as JSON.
fn answer(source: &HttpSource, status: StatusCode, mut reply: Reply) -> Response {
    let counter = match status.as_u16() {
        200..=299 => &source.stats.http_ingest_ok,
        400..=499 => &source.stats.http_ingest_bad,
        _ => &source.stats.http_ingest_failed,
    };
    stats::add(counter, 1);
    if status == StatusCode::NO_CONTENT {
        return status.into_response();
    }
    reply.message.clone_from(&reply.error);
    match serde_json::to_vec(&reply) {
        Ok(json) => (status, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            warn!(error = %e, "http ingest reply not rendered");
            status.into_response()
        }
    }
}
