//! The rules and alerts API, on the gateway's HTTP port:
//!
//! - `GET /api/rules`: every rule with its origin (`config`, `file`, `api`).
//! - `GET /api/rules/{name}`: one rule.
//! - `PUT /api/rules/{name}` with the rule as JSON (the same fields as a
//!   `[[rules]]` table; `name` may be left out): creates (`201`) or
//!   replaces (`200`) an API rule, kept in the store across restarts. The
//!   whole set is validated first: `400` with `{"error", "errors": [...]}`
//!   for an invalid rule, `409` for a rule defined in a file.
//! - `DELETE /api/rules/{name}`: `204`; `404`, or `409` for a file's rule.
//! - `GET /api/alerts`: pending and firing alerts, from the engine.
//! - `GET /api/alerts/history?limit=N`: the newest notifications first
//!   (default 100), from the store.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::RuleConfig;
use super::registry::{ChangeError, Registry};
use crate::config::Placed;
use crate::live::{answer, ask, error};
use crate::pipeline::Request;
use crate::store::{MAX_ALERT_HISTORY, Store};

/// What the API needs.
#[derive(Debug, Clone)]
pub struct RulesApi {
    pub registry: Registry,
    pub store: Store,
    pub pipeline: mpsc::Sender<Request>,
}

pub fn router(state: RulesApi) -> Router {
    Router::new()
        .route("/api/rules", get(list))
        .route("/api/rules/{name}", get(show).put(put).delete(delete))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/history", get(history))
        .with_state(state)
}

fn entry_json(e: &super::registry::Entry) -> Value {
    json!({ "name": e.rule.name, "origin": e.origin, "rule": e.rule })
}

async fn list(State(api): State<RulesApi>) -> Response {
    let rules: Vec<Value> = api.registry.entries().iter().map(entry_json).collect();
    answer(StatusCode::OK, &json!(rules))
}

async fn show(State(api): State<RulesApi>, Path(name): Path<String>) -> Response {
    match api.registry.entries().iter().find(|e| e.rule.name == name) {
        Some(e) => answer(StatusCode::OK, &entry_json(e)),
        None => error(StatusCode::NOT_FOUND, &format!("no rule `{name}`")),
    }
}

fn refused(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid(errors) => answer(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": errors.to_string(),
                "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        e @ ChangeError::NotApi { .. } => error(StatusCode::CONFLICT, &e.to_string()),
        e @ ChangeError::NotFound(_) => error(StatusCode::NOT_FOUND, &e.to_string()),
        e @ ChangeError::Store(_) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A JSON error of the body, placed in it: `api:1:9: unknown field ...`.
fn body_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text);
    Placed {
        line: e.line(),
        column: e.column(),
        ..Placed::unplaced("api", None, message)
    }
    .to_string()
}

/// The rule of a `PUT` body, named by the path. Unknown fields are refused
/// with their place in the body, as in a rules file.
fn parse_body(name: &str, body: &[u8]) -> Result<RuleConfig, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| body_error(&e))?;
    let Some(object) = value.as_object_mut() else {
        return Err("body: expected a JSON object with the rule's fields".into());
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), json!(name));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(format!(
                "body: name {other} differs from `{name}` in the path"
            ));
        }
    }
    // Placed in the body itself, not in the value rebuilt from it.
    serde_json::from_value::<RuleConfig>(value).map_err(|e| {
        match serde_json::from_slice::<RuleConfig>(body) {
            Err(placed) if !placed.to_string().contains("missing field `name`") => {
                body_error(&placed)
            }
            _ => format!("api: {e}"),
        }
    })
}

async fn put(State(api): State<RulesApi>, Path(name): Path<String>, body: Bytes) -> Response {
    let rule = match parse_body(&name, &body) {
        Ok(r) => r,
        Err(message) => {
            return answer(
                StatusCode::BAD_REQUEST,
                &json!({ "error": message, "errors": [message] }),
            );
        }
    };
    let registry = api.registry.clone();
    let result = tokio::task::spawn_blocking(move || {
        let created = registry.put(rule)?;
        Ok::<_, ChangeError>((created, registry))
    })
    .await;
    match result {
        Ok(Ok((created, registry))) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            match registry.entries().iter().find(|e| e.rule.name == name) {
                Some(e) => answer(status, &entry_json(e)),
                None => status.into_response(),
            }
        }
        Ok(Err(e)) => refused(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn delete(State(api): State<RulesApi>, Path(name): Path<String>) -> Response {
    let registry = api.registry.clone();
    match tokio::task::spawn_blocking(move || registry.delete(&name)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn alerts(State(api): State<RulesApi>) -> Response {
    ask(&api.pipeline, |reply| Request::Alerts { reply }).await
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    limit: Option<usize>,
}

async fn history(
    State(api): State<RulesApi>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match params {
        Ok(Query(p)) => p.limit.unwrap_or(100),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    if limit == 0 || limit as u64 > MAX_ALERT_HISTORY {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit must be in 1..={MAX_ALERT_HISTORY}"),
        );
    }
    let store = api.store.clone();
    match tokio::task::spawn_blocking(move || store.alert_history(limit)).await {
        Ok(Ok(records)) => {
            let rows: Vec<Value> = records
                .iter()
                .filter_map(|r| serde_json::from_slice(r).ok())
                .collect();
            answer(StatusCode::OK, &json!(rows))
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
