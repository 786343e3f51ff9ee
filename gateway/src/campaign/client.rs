//! The CLI's side of the campaigns API: `eddy ota deploy` and
//! `eddy ota status` talk to a running gateway over HTTP (the store file
//! belongs to the gateway while it runs).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::api::{Detail, Summary};

/// Longest wait for one API call.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response read.
const MAX_RESPONSE: usize = 64 << 20;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gateway URL `{0}`: expected http://host:port")]
    BadUrl(String),
    #[error("cannot reach the gateway at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("gateway at {addr}: {message}")]
    Http { addr: String, message: String },
    #[error("gateway at {addr} did not answer within {TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("the gateway refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from the gateway: {0}")]
    BadAnswer(String),
}

/// A gateway's HTTP API (`http://127.0.0.1:8080` by default).
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`
    addr: String,
}

impl Client {
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        Ok(Self {
            addr: addr.to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http {
            addr: self.addr.clone(),
            message: e.to_string(),
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| http(&e))?;
            tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| http(&e))?;
            let response = sender.send_request(request).await.map_err(|e| http(&e))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| http(&e))?
                .to_bytes()
                .to_vec();
            Ok((status, body))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
            })?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let (status, body) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    /// Creates a campaign of `image` for the devices `selector` matches.
    pub async fn deploy(
        &self,
        image: Vec<u8>,
        selector: &str,
        canary: &str,
        stages: &str,
        max_failures: &str,
    ) -> Result<Detail, ClientError> {
        let path = format!(
            "/api/ota/campaigns?devices={}&canary={}&stages={}&max_failures={}",
            encode(selector),
            encode(canary),
            encode(stages),
            encode(max_failures)
        );
        self.json(Method::POST, &path, image).await
    }

    pub async fn campaigns(&self) -> Result<Vec<Summary>, ClientError> {
        self.json(Method::GET, "/api/ota/campaigns", Vec::new())
            .await
    }

    pub async fn campaign(&self, id: u32) -> Result<Detail, ClientError> {
        self.json(Method::GET, &format!("/api/ota/campaigns/{id}"), Vec::new())
            .await
    }

    pub async fn halt(&self, id: u32) -> Result<Detail, ClientError> {
        self.json(
            Method::POST,
            &format!("/api/ota/campaigns/{id}/halt"),
            Vec::new(),
        )
        .await
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
