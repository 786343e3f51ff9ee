//! Bearer tokens for the HTTP API (`Authorization: Bearer <token>`).
//!
//! Two scopes: `read` (`GET`s: live queries, alerts, rules, campaigns,
//! samples, and `/metrics` with `[http] metrics_auth`) and `admin`
//! (every request that changes state, and the tokens API; admin implies
//! read). No request changes state without an admin token, from loopback
//! too; `/healthz` and HTTP ingest (its own `ingest_token`) are not
//! behind this.
//!
//! Tokens are 256 random bits from the OS (`eddy_` and 64 hex digits),
//! shown once and kept only as their SHA-256 in `DATA_DIR/tokens.json`
//! (mode 0600). At first start an admin token is written to
//! `DATA_DIR/admin.token` (mode 0600, never through a symlink), so the
//! `eddy` CLI on the same machine needs no set-up; delete the file and
//! restart for a new one.
//!
//! CSRF: a state change needs the `Authorization` header, which a
//! cross-site form cannot send, and a JSON or octet-stream body (or none);
//! there are no cookies.
//!
//! - `GET /api/tokens`: every token's name, scope and creation time.
//! - `POST /api/tokens` with `{"name": "grafana", "scope": "read"}`:
//!   `201` and `{"name", "scope", "token"}`; the token is not shown again.
//!   `409` when the name is taken.
//! - `DELETE /api/tokens/{name}`: `204`, or `404`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::live::{answer, error};

/// The admin token's file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The token hashes' file in the data directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// The name of the token made at first start.
pub const ADMIN_TOKEN_NAME: &str = "admin";
/// Tokens kept at most.
pub const MAX_TOKENS: usize = 1000;
/// Longest token name.
const MAX_NAME_LEN: usize = 64;

/// What a token may do; `Admin` implies `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// Why the token file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a token list: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error("`{0}` exists already")]
    Exists(String),
    #[error("name `{0}`: 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`")]
    BadName(String),
    #[error("the list is full; revoke one first")]
    Full,
}

/// One token as stored: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub scope: Scope,
    /// SHA-256 of the token, hex.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub sha256: String,
    pub created_ms: i64,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    tokens: RwLock<Vec<TokenInfo>>,
    /// Changes (and their file writes) happen one at a time.
    changing: Mutex<()>,
}

/// The gateway's tokens, shared by the HTTP guard and the tokens API.
#[derive(Debug, Clone)]
pub struct Tokens(Arc<Inner>);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// 1 to 64 letters, digits, `-`, `_` or `.`: a token's name, a device
/// id with credentials.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A new token: 256 bits from the OS's generator.
fn new_token() -> Result<String, AuthError> {
    Ok(format!("eddy_{}", hex(&random_bytes::<32>()?)))
}

/// `N` bytes from the OS's generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| AuthError::Io {
            path: PathBuf::from("OS random generator"),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain SHA-256 suffices for tokens of 256 random bits: there is no
/// dictionary to try, so a slow password hash would only slow every
/// request. Hex, as stored.
pub(crate) fn digest(token: &str) -> String {
    digest_bytes(token.as_bytes())
}

/// SHA-256 of `bytes`, hex.
pub(crate) fn digest_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Equal in time independent of where the texts differ (they are hashes
/// of equal length; a length difference may show).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Creates `path` with mode 0600 and `text` in it. `create_new` (O_EXCL)
/// refuses any existing file, a symlink (dangling or not) included, so
/// nothing is written through a link someone planted.
fn write_new(path: &Path, text: &str) -> Result<(), AuthError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

pub(crate) fn now_ms() -> i64 {
    crate::campaign::now_ms()
}

impl Tokens {
    /// Reads `DATA_DIR/tokens.json`; at first start (no
    /// `DATA_DIR/admin.token`) makes the admin token and writes it there.
    pub fn open(data_dir: &Path) -> Result<Self, AuthError> {
        let path = data_dir.join(TOKENS_FILE);
        let tokens = read_json_list(&path)?;
        let tokens = Self(Arc::new(Inner {
            path,
            tokens: RwLock::new(tokens),
            changing: Mutex::new(()),
        }));
        let admin = data_dir.join(ADMIN_TOKEN_FILE);
        let present = std::fs::symlink_metadata(&admin);
        if present.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
            tracing::warn!(
                path = %admin.display(),
                "admin token path is a symlink: not written through it (remove it for a new token)"
            );
        }
        if present.is_err() {
            let token = new_token()?;
            tokens.change(|list| {
                list.retain(|t| t.name != ADMIN_TOKEN_NAME);
                list.push(TokenInfo {
                    name: ADMIN_TOKEN_NAME.into(),
                    scope: Scope::Admin,
                    sha256: digest(&token),
                    created_ms: now_ms(),
                });
                Ok(())
            })?;
            write_new(&admin, &format!("{token}\n"))?;
            tracing::info!(path = %admin.display(), "admin token written (owner-only)");
        }
        Ok(tokens)
    }

    /// The scope of `token`, if it is one of ours.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        let hash = digest(token);
        let tokens = self.0.tokens.read().unwrap_or_else(|e| e.into_inner());
        // Every entry is compared, so the time says nothing about which.
        tokens
            .iter()
            .filter(|t| same(&t.sha256, &hash))
            .map(|t| t.scope)
            .fold(None, |best, s| best.max(Some(s)))
    }

    /// Every token, without hashes.
    pub fn list(&self) -> Vec<TokenInfo> {
        let tokens = self.0.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .iter()
            .map(|t| TokenInfo {
                sha256: String::new(),
                ..t.clone()
            })
            .collect()
    }

    /// A new token named `name`; the only time it is seen.
    pub fn create(&self, name: &str, scope: Scope) -> Result<String, AuthError> {
        if !valid_name(name) {
            return Err(AuthError::BadName(name.to_string()));
        }
        let token = new_token()?;
        self.change(|list| {
            if list.iter().any(|t| t.name == name) {
                return Err(AuthError::Exists(name.to_string()));
            }
            if list.len() >= MAX_TOKENS {
                return Err(AuthError::Full);
            }
            list.push(TokenInfo {
                name: name.to_string(),
                scope,
                sha256: digest(&token),
                created_ms: now_ms(),
            });
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes the token named `name`; `false` if there is none.
    pub fn revoke(&self, name: &str) -> Result<bool, AuthError> {
        let mut found = false;
        self.change(|list| {
            let before = list.len();
            list.retain(|t| t.name != name);
            found = list.len() < before;
            Ok(())
        })?;
        Ok(found)
    }

    /// Applies `f` to a copy, writes it (temp file, fsync, rename), then
    /// installs it: the file and memory never disagree.
    fn change(
        &self,
        f: impl FnOnce(&mut Vec<TokenInfo>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let _one = self.0.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = self
            .0
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        f(&mut list)?;
        replace_json(&self.0.path, &list)?;
        *self.0.tokens.write().unwrap_or_else(|e| e.into_inner()) = list;
        Ok(())
    }
}

/// Replaces `path` with `value` as JSON, owner-only: a new temp file
/// (never through a symlink), fsync, rename. A crash leaves the old
/// file or the new one.
pub(crate) fn replace_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AuthError> {
    let temp = path.with_extension("json.tmp");
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&temp)(e)),
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| AuthError::Damaged {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_new(&temp, &text)?;
    std::fs::rename(&temp, path).map_err(io(path))
}

/// Reads the JSON list at `path`; empty when there is no file.
pub(crate) fn read_json_list<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<T>, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuthError::Damaged {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, token) = value.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Which scope a request needs.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// `read` for `GET`/`HEAD`, `admin` for the rest.
    ByMethod,
    Always(Scope),
}

/// A request guard on [`Tokens`] (see [`layer`]).
#[derive(Debug, Clone)]
pub struct Guard {
    tokens: Tokens,
    need: Need,
}

/// A body a browser form cannot send: JSON or octet-stream, or none (no
/// or an empty content type and no body). A form always names its type,
/// also with an empty body.
fn not_a_form(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE).filter(|v| !v.is_empty()) {
        Some(value) => {
            let media = value
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            media == "application/json" || media == "application/octet-stream"
        }
        None => {
            !headers.contains_key(header::TRANSFER_ENCODING)
                && headers
                    .get(header::CONTENT_LENGTH)
                    .is_none_or(|l| l.as_bytes() == b"0")
        }
    }
}

async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let need = match guard.need {
        Need::Always(scope) => scope,
        Need::ByMethod if safe => Scope::Read,
        Need::ByMethod => Scope::Admin,
    };
    let unauthorized = |message: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, message);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    };
    let Some(token) = bearer(request.headers()) else {
        return unauthorized(
            "a token is needed: Authorization: Bearer <token> (the admin token is in DATA_DIR/admin.token)",
        );
    };
    let Some(scope) = guard.tokens.scope_of(token) else {
        return unauthorized("the token is not valid (revoked, or not this gateway's)");
    };
    if scope < need {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "this needs a token of scope `{}`; this one is `{}`",
                need.name(),
                scope.name()
            ),
        );
    }
    if !safe && !not_a_form(request.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a change needs Content-Type application/json or application/octet-stream",
        );
    }
    next.run(request).await
}

/// `router` with every route added so far refusing requests without a
/// token of the scope `need` asks for (routes merged later are not
/// guarded).
pub fn guard(router: Router, tokens: &Tokens, need: Need) -> Router {
    let guard = Guard {
        tokens: tokens.clone(),
        need,
    };
    router.route_layer(middleware::from_fn_with_state(guard, check))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    scope: Scope,
}

/// `/api/tokens`, admin only, guarded by itself.
pub fn router(tokens: &Tokens) -> Router {
    let routes = Router::new()
        .route("/api/tokens", get(list).post(create))
        .route("/api/tokens/{name}", delete(revoke))
        .with_state(tokens.clone());
    guard(routes, tokens, Need::Always(Scope::Admin))
}

async fn list(State(tokens): State<Tokens>) -> Response {
    answer(StatusCode::OK, &json!(tokens.list()))
}

pub(crate) fn refused(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Exists(_) => StatusCode::CONFLICT,
        AuthError::BadName(_) | AuthError::Full => StatusCode::BAD_REQUEST,
        AuthError::Io { .. } | AuthError::Damaged { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

async fn create(State(tokens): State<Tokens>, body: Bytes) -> Response {
    let body: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
    };
    let made = tokio::task::spawn_blocking(move || {
        tokens
            .create(&body.name, body.scope)
            .map(|t| (body.name, body.scope, t))
    })
    .await;
    match made {
        Ok(Ok((name, scope, token))) => answer(
            StatusCode::CREATED,
            &json!({ "name": name, "scope": scope, "token": token }),
        ),
        Ok(Err(e)) => refused(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn revoke(State(tokens): State<Tokens>, UrlPath(name): UrlPath<String>) -> Response {
    let name2 = name.clone();
    match tokio::task::spawn_blocking(move || tokens.revoke(&name2)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, &format!("no token `{name}`")),
        Ok(Err(e)) => refused(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Reads a token file (`admin.token`, `--token-file`): its first line.
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::other("the file holds no token"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_hash_and_scope() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let tokens = Tokens::open(dir.path()).expect("opens");
        let admin = read_token_file(&dir.path().join(ADMIN_TOKEN_FILE)).expect("admin token");
        assert_eq!(tokens.scope_of(&admin), Some(Scope::Admin));
        let read = tokens.create("grafana", Scope::Read).expect("created");
        assert_eq!(tokens.scope_of(&read), Some(Scope::Read));
        assert_eq!(tokens.scope_of("eddy_00"), None);
        assert!(matches!(
            tokens.create("grafana", Scope::Read),
            Err(AuthError::Exists(_))
        ));
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).expect("file");
        assert!(!stored.contains(&read) && !stored.contains(&admin));
        // A restart reads the same tokens and keeps the admin token.
        let again = Tokens::open(dir.path()).expect("reopens");
        assert_eq!(again.scope_of(&read), Some(Scope::Read));
        assert_eq!(again.scope_of(&admin), Some(Scope::Admin));
        assert!(again.revoke("grafana").expect("revoked"));
        assert_eq!(again.scope_of(&read), None);
    }

    #[test]
    fn the_admin_token_is_never_written_through_a_symlink() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.path().join(ADMIN_TOKEN_FILE)).expect("link");
        // A dangling link counts as present: nothing is written at all.
        Tokens::open(dir.path()).expect("opens");
        assert!(!target.exists());
    }
}
