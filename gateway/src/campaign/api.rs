//! The campaigns' HTTP API, served on the gateway's HTTP port:
//!
//! - `POST /api/ota/campaigns?devices=SEL&canary=5%&stages=25%,100%&max_failures=10%`
//!   with the signed image as the body: creates and starts a campaign
//!   (`201` and the campaign; `400` with the reason for a bad image, plan
//!   or selector; `413` for an image over `ota.max_image_bytes`; `409`
//!   without `[ota] public_key`). Before anything is stored or sent, the
//!   image must verify against `[ota] public_key` (a zeroed or foreign
//!   signature, an edited header or payload are refused), and every
//!   selected device must have said (its `Hello`) that it is the image's
//!   board and runs an older version (anti-rollback): else `400` naming
//!   the device.
//! - `GET /api/ota/campaigns`: every campaign, without the device list.
//! - `GET /api/ota/campaigns/{id}`: one campaign with every device's state.
//! - `POST /api/ota/campaigns/{id}/halt`: stops starting devices.
//!
//! Errors are JSON objects `{"error": "..."}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use eddy_ota::KEY_LEN;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::fleet::Fleet;
use super::runner::{Control, check_image};
use super::{Campaign, Counts, Plan, Status, select};
use crate::store::Store;

/// What the API needs.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub control: mpsc::Sender<Control>,
    pub public_key: Option<[u8; KEY_LEN]>,
    pub max_image_bytes: usize,
    /// Boards and versions devices reported.
    pub fleet: Fleet,
}

/// The routes, with their state applied.
pub fn router(state: ApiState) -> Router {
    let limit = state.max_image_bytes;
    Router::new()
        .route("/api/ota/campaigns", get(list).post(create))
        .route("/api/ota/campaigns/{id}", get(show))
        .route("/api/ota/campaigns/{id}/halt", post(halt))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(state))
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl std::fmt::Display) -> Self {
        Self(StatusCode::BAD_REQUEST, message.to_string())
    }

    fn internal(message: impl std::fmt::Display) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(self.0, &serde_json::json!({ "error": self.1 }))
    }
}

/// A campaign without its device list, plus its counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub id: u32,
    pub board: String,
    pub version: String,
    pub selector: String,
    #[serde(flatten)]
    pub status: Status,
    pub stage: usize,
    pub stages: usize,
    pub counts: Counts,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl From<&Campaign> for Summary {
    fn from(c: &Campaign) -> Self {
        Self {
            id: c.id,
            board: c.board.clone(),
            version: c.version.clone(),
            selector: c.selector.clone(),
            status: c.status.clone(),
            stage: c.stage,
            stages: c.boundaries.len(),
            counts: c.counts(),
            created_ms: c.created_ms,
            updated_ms: c.updated_ms,
        }
    }
}

/// A campaign with its counts, as `GET /api/ota/campaigns/{id}` serves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detail {
    #[serde(flatten)]
    pub campaign: Campaign,
    pub counts: Counts,
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    devices: String,
    #[serde(default = "default_canary")]
    canary: String,
    #[serde(default = "default_stages")]
    stages: String,
    #[serde(default = "default_max_failures")]
    max_failures: String,
}

fn default_canary() -> String {
    "5%".into()
}
fn default_stages() -> String {
    "100%".into()
}
fn default_max_failures() -> String {
    "10%".into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

fn decode(id: u32, record: &[u8]) -> Result<Campaign, ApiError> {
    Campaign::from_json(record)
        .map_err(|e| ApiError::internal(format!("campaign {id} record: {e}")))
}

fn detail(campaign: Campaign, status: StatusCode) -> Response {
    let counts = campaign.counts();
    json(status, &Detail { campaign, counts })
}

async fn create(
    State(api): State<Arc<ApiState>>,
    query: Result<Query<CreateQuery>, axum::extract::rejection::QueryRejection>,
    image: Bytes,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let key = api.public_key.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "campaigns need [ota] public_key in the gateway's config (the key images are \
             signed with, `eddy ota keygen`): without it no image can be verified"
                .into(),
        )
    })?;
    let header = check_image(&image, key).map_err(|e| ApiError::bad(format!("image: {e}")))?;
    let plan = Plan::parse(&q.canary, &q.stages, &q.max_failures).map_err(ApiError::bad)?;
    let store = api.store.clone();
    let known: Vec<String> = blocking(move || store.devices())
        .await?
        .into_keys()
        .collect();
    let devices = select(&q.devices, &known).map_err(ApiError::bad)?;
    api.fleet
        .check(&header, &devices)
        .map_err(|e| ApiError::bad(format!("image {} {}: {e}", header.board, header.version)))?;
    let store = api.store.clone();
    let now = crate::campaign::now_ms();
    let made = blocking(move || {
        let mut made = None;
        store.create_campaign(&image, |id| {
            let c = Campaign::new(id, &header, &q.devices, plan, devices, now);
            let record = c.to_json();
            made = Some(c);
            record
        })?;
        Ok(made)
    })
    .await?;
    let campaign = made.ok_or_else(|| ApiError::internal("campaign not made"))?;
    if api
        .control
        .send(Control::Created(campaign.id))
        .await
        .is_err()
    {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the campaign runner is not running; the campaign starts with the gateway".into(),
        ));
    }
    Ok(detail(campaign, StatusCode::CREATED))
}

async fn list(State(api): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let store = api.store.clone();
    let records = blocking(move || store.campaign_records()).await?;
    let out = records
        .iter()
        .map(|(id, record)| decode(*id, record).map(|c| Summary::from(&c)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json(StatusCode::OK, &out))
}

async fn show(State(api): State<Arc<ApiState>>, Path(id): Path<u32>) -> Result<Response, ApiError> {
    let store = api.store.clone();
    let record = blocking(move || store.campaign_record(id))
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no campaign {id}")))?;
    Ok(detail(decode(id, &record)?, StatusCode::OK))
}

async fn halt(State(api): State<Arc<ApiState>>, Path(id): Path<u32>) -> Result<Response, ApiError> {
    let unavailable = |what: &str| ApiError(StatusCode::SERVICE_UNAVAILABLE, what.to_string());
    let (tx, rx) = oneshot::channel();
    if api.control.send(Control::Halt(id, tx)).await.is_err() {
        return Err(unavailable("the campaign runner is not running"));
    }
    match rx.await {
        Ok(Some(campaign)) => Ok(detail(campaign, StatusCode::OK)),
        Ok(None) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("campaign {id} is not running"),
        )),
        Err(_) => Err(unavailable("the campaign runner restarted")),
    }
}
