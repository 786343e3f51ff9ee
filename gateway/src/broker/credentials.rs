//! Device credentials of the embedded broker: who may connect, as whom.
//!
//! A device connects with its id as the MQTT user name and the secret
//! `eddy device add ID` printed once as the password. The gateway keeps
//! only an argon2id hash of each secret (RFC 9106; parameters m = 7 MiB,
//! t = 5, p = 1, OWASP's low-memory choice) in `DATA_DIR/devices.json`
//! (mode 0600, replaced whole by rename, never written through a
//! symlink).
//!
//! Argon2 is slow by design: one verification takes tens of milliseconds
//! and 7 MiB. Verifications run one at a time on a blocking thread, so a
//! flood of wrong passwords costs one core and 7 MiB at most; a secret
//! that verified is remembered (as its SHA-256, per device, in memory)
//! so a device reconnecting after a network blip is let in at once.
//! Revoking a device forgets it and closes nothing already open: its
//! next CONNECT is refused (see [`super::access`] for the ACL).
//!
//! - `GET /api/credentials`: each device's id, role and creation time.
//! - `POST /api/credentials` with `{"device": "sensor-7", "role":
//!   "device"}` (role `device`, `observer` or `publisher`): `201` and `{"device",
//!   "role", "secret"}`; the secret is not shown again. `409` when the
//!   device has credentials.
//! - `DELETE /api/credentials/{device}`: `204`, or `404`.
//!
//! All three need an admin token.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{self, AuthError, Need, Scope, Tokens};
use crate::live::{answer, error};

/// The credentials' file in the data directory.
pub const DEVICES_FILE: &str = "devices.json";
/// Devices with credentials at most.
pub const MAX_CREDENTIALS: usize = 100_000;

/// What a client with credentials may do (see [`super::access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes its own telemetry, hello, status and OTA reports;
    /// subscribes to its own ack, command and OTA topics.
    Device,
    /// Subscribes to anything; publishes nothing (dashboards, local
    /// consumers of aggregates and alerts).
    Observer,
    /// Publishes on any ingest topic, for any device; subscribes to
    /// nothing (Telegraf agents, bridges speaking for several devices).
    Publisher,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Observer => "observer",
            Role::Publisher => "publisher",
        }
    }
}

/// One device's credentials as stored: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub device: String,
    pub role: Role,
    /// The secret's argon2id hash (PHC string format).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub argon2: String,
    pub created_ms: i64,
}

/// What a CONNECT's user name and password prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The device's secret: it is this device, with this role.
    Valid(Role),
    /// No credentials for that device id.
    Unknown,
    /// Credentials exist; this is not the secret.
    Wrong,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    list: RwLock<BTreeMap<String, Credential>>,
    /// Changes (and their file writes) happen one at a time.
    changing: Mutex<()>,
    /// Device -> SHA-256 of the secret that last verified.
    verified: Mutex<HashMap<String, String>>,
    /// One argon2 verification at a time.
    slow: tokio::sync::Semaphore,
}

/// The broker's device credentials, shared by its hooks and the API.
#[derive(Debug, Clone)]
pub struct Credentials(Arc<Inner>);

fn hasher() -> Argon2<'static> {
    let params = Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Credentials {
    /// Reads `DATA_DIR/devices.json` (none yet: no device has credentials).
    pub fn open(data_dir: &Path) -> Result<Self, AuthError> {
        let path = data_dir.join(DEVICES_FILE);
        let list: Vec<Credential> = auth::read_json_list(&path)?;
        let list = list.into_iter().map(|c| (c.device.clone(), c)).collect();
        Ok(Self(Arc::new(Inner {
            path,
            list: RwLock::new(list),
            changing: Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            slow: tokio::sync::Semaphore::new(1),
        })))
    }

    /// How many devices have credentials.
    pub fn len(&self) -> usize {
        self.0.list.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no device has credentials.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every device's credentials, without hashes, by device id.
    pub fn list(&self) -> Vec<Credential> {
        let list = self.0.list.read().unwrap_or_else(|e| e.into_inner());
        list.values()
            .map(|c| Credential {
                argon2: String::new(),
                ..c.clone()
            })
            .collect()
    }

    /// The role of `device`, if it has credentials.
    pub fn role(&self, device: &str) -> Option<Role> {
        let list = self.0.list.read().unwrap_or_else(|e| e.into_inner());
        list.get(device).map(|c| c.role)
    }

    /// New credentials for `device` (a valid device id); the only time
    /// the secret is seen. Blocks for one argon2 hash: call it off the
    /// async threads.
    pub fn add(&self, device: &str, role: Role) -> Result<String, AuthError> {
        if !auth::valid_name(device) {
            return Err(AuthError::BadName(device.to_string()));
        }
        let secret = auth::hex(&auth::random_bytes::<24>()?);
        let salt = SaltString::encode_b64(&auth::random_bytes::<16>()?).map_err(damaged)?;
        let hash = hasher()
            .hash_password(secret.as_bytes(), &salt)
            .map_err(damaged)?
            .to_string();
        self.change(|list| {
            if list.contains_key(device) {
                return Err(AuthError::Exists(device.to_string()));
            }
            if list.len() >= MAX_CREDENTIALS {
                return Err(AuthError::Full);
            }
            list.insert(
                device.to_string(),
                Credential {
                    device: device.to_string(),
                    role,
                    argon2: hash,
                    created_ms: auth::now_ms(),
                },
            );
            Ok(())
        })?;
        Ok(secret)
    }

    /// Removes `device`'s credentials; `false` if it had none.
    pub fn revoke(&self, device: &str) -> Result<bool, AuthError> {
        let mut found = false;
        self.change(|list| {
            found = list.remove(device).is_some();
            Ok(())
        })?;
        self.0
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
        Ok(found)
    }

    /// Checks `secret` against `device`'s credentials.
    pub async fn verify(&self, device: &str, secret: &[u8]) -> Verdict {
        let Some((role, hash)) = self
            .0
            .list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .map(|c| (c.role, c.argon2.clone()))
        else {
            return Verdict::Unknown;
        };
        let quick = auth::digest_bytes(secret);
        let known = self
            .0
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .is_some_and(|h| auth::same(h, &quick));
        if known {
            return Verdict::Valid(role);
        }
        let Ok(_one) = self.0.slow.acquire().await else {
            return Verdict::Wrong;
        };
        let secret = secret.to_vec();
        let valid = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| hasher().verify_password(&secret, &parsed).is_ok())
        })
        .await
        .unwrap_or(false);
        if !valid {
            return Verdict::Wrong;
        }
        // Still the same credentials (not revoked while hashing)?
        if self.role(device) != Some(role) {
            return Verdict::Unknown;
        }
        self.0
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.to_string(), quick);
        Verdict::Valid(role)
    }

    /// Applies `f` to a copy, writes it, then installs it.
    fn change(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Credential>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let _one = self.0.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = self
            .0
            .list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        f(&mut list)?;
        let rows: Vec<&Credential> = list.values().collect();
        auth::replace_json(&self.0.path, &rows)?;
        *self.0.list.write().unwrap_or_else(|e| e.into_inner()) = list;
        Ok(())
    }
}

fn damaged(e: impl std::fmt::Display) -> AuthError {
    AuthError::Damaged {
        path: PathBuf::from("argon2"),
        message: e.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    device: String,
    #[serde(default = "device_role")]
    role: Role,
}

fn device_role() -> Role {
    Role::Device
}

/// `/api/credentials`, admin only.
pub fn router(credentials: &Credentials, tokens: &Tokens) -> Router {
    let routes = Router::new()
        .route("/api/credentials", get(list).post(add))
        .route("/api/credentials/{device}", delete(revoke))
        .with_state(credentials.clone());
    auth::guard(routes, tokens, Need::Always(Scope::Admin))
}

async fn list(State(credentials): State<Credentials>) -> Response {
    answer(StatusCode::OK, &json!(credentials.list()))
}

async fn add(State(credentials): State<Credentials>, body: Bytes) -> Response {
    let body: AddBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
    };
    let made = tokio::task::spawn_blocking(move || {
        credentials
            .add(&body.device, body.role)
            .map(|secret| (body.device, body.role, secret))
    })
    .await;
    match made {
        Ok(Ok((device, role, secret))) => {
            tracing::info!(device = ?device, role = role.name(), "device credentials added");
            answer(
                StatusCode::CREATED,
                &json!({"device": device, "role": role, "secret": secret}),
            )
        }
        Ok(Err(e)) => auth::refused(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn revoke(
    State(credentials): State<Credentials>,
    UrlPath(device): UrlPath<String>,
) -> Response {
    match tokio::task::spawn_blocking(move || credentials.revoke(&device).map(|f| (f, device)))
        .await
    {
        Ok(Ok((true, device))) => {
            tracing::info!(device = ?device, "device credentials revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Ok((false, device))) => error(
            StatusCode::NOT_FOUND,
            &format!("device {device:?} has no credentials"),
        ),
        Ok(Err(e)) => auth::refused(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
