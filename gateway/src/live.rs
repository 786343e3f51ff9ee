//! `GET /api/live?view=NAME&prefix=PREFIX&metric=METRIC&limit=N`: the
//! open windows of the engine, answered from memory while ingest goes on
//! (the pipeline answers between batches). Without `view`, every
//! published view; `prefix` matches group labels (device ids, hierarchy
//! paths such as `plant-1/hall-a`). Answers
//! `{"watermark": ms, "windows": [{"view", "group", "metric", "start",
//! "end", aggregates...}]}`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use eddy_analytics::LiveQuery;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::pipeline::Request;

/// Rows returned when `limit` is not given, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;
/// Longest wait for the pipeline (a batch in progress).
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct Params {
    view: Option<String>,
    #[serde(default)]
    prefix: String,
    metric: Option<String>,
    limit: Option<usize>,
}

pub fn router(pipeline: mpsc::Sender<Request>) -> Router {
    Router::new()
        .route("/api/live", get(live))
        .with_state(pipeline)
}

pub(crate) fn answer(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn live(
    State(pipeline): State<mpsc::Sender<Request>>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return error(StatusCode::BAD_REQUEST, "limit must be in 1..=100000");
    }
    let query = LiveQuery {
        view: p.view,
        prefix: p.prefix,
        metric: p.metric,
        limit,
    };
    ask(&pipeline, |reply| Request::Live { query, reply }).await
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    answer(status, &serde_json::json!({ "error": message }))
}

/// Sends the pipeline a request and answers with its reply.
pub(crate) async fn ask(
    pipeline: &mpsc::Sender<Request>,
    request: impl FnOnce(oneshot::Sender<serde_json::Value>) -> Request,
) -> Response {
    let (reply, rx) = oneshot::channel();
    if pipeline.send(request(reply)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is not running",
        );
    }
    match tokio::time::timeout(TIMEOUT, rx).await {
        Ok(Ok(body)) => answer(StatusCode::OK, &body),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the pipeline restarted"),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline did not answer in time",
        ),
    }
}
