//! GET requests to a gateway's HTTP listener, and values from its
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use eddy_gateway::client::{Answer, ClientError, exchange, send};

/// Longest wait for an answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// GET `path` from `addr`: the status code and the body as text.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ClientError> {
    let (status, body) = exchange(
        &addr.to_string(),
        hyper::Method::GET,
        path,
        "text/plain",
        Vec::new(),
        TIMEOUT,
    )
    .await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The admin token a gateway wrote into its `data_dir` at first start.
pub fn admin_token(data_dir: &Path) -> String {
    let path = data_dir.join(eddy_gateway::auth::ADMIN_TOKEN_FILE);
    eddy_gateway::auth::read_token_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `method path` with `body` (JSON) and `Authorization: Bearer token`, for
/// tests: the status and the body as text; panics when there is no answer.
pub async fn api_call(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    token: &str,
    body: impl Into<Vec<u8>>,
) -> (u16, String) {
    let authorization = format!("Bearer {token}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", authorization.as_str()),
    ];
    let answer = send(
        &addr.to_string(),
        method,
        path,
        &headers,
        body.into(),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    (
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

/// [`http_get`] with `Authorization: Bearer token`.
pub async fn http_get_as(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    api_call(addr, hyper::Method::GET, path, token, Vec::new()).await
}

/// [`get`], for tests: panics when there is no answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The value of the metric line `name` (unlabelled, or with its labels
/// spelled out: `eddy_sink_lag_records{sink="upstream"}`) in `/metrics`
/// text.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// [`metric`] `name` from the `/metrics` of the gateway at `addr`; `None`
/// if it did not answer or has no such line.
pub async fn scrape(addr: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = get(addr, "/metrics").await.ok()?;
    metric(&body, name)
}

/// POST `body` to `path` with `headers`, for tests: panics when there is
/// no answer.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> Answer {
    send(
        &addr.to_string(),
        hyper::Method::POST,
        path,
        headers,
        body.into(),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}
