//! A small HTTP/1 client: the CLI talks to a running gateway's API with
//! it (`eddy ota`, `eddy rules`, `eddy query`'s stream of samples), and
//! webhook actions post alerts with it.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// Longest wait for one API call.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response read.
const MAX_RESPONSE: usize = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("URL `{0}`: expected http://host:port")]
    BadUrl(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {message}")]
    Http { addr: String, message: String },
    #[error("{addr} did not answer in time")]
    Timeout { addr: String },
    #[error("the gateway refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from the gateway: {0}")]
    BadAnswer(String),
}

/// Splits `http://host:port/path` into `host:port` and `/path`.
pub fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if addr.is_empty() || !addr.contains(':') {
        return Err(ClientError::BadUrl(url.to_string()));
    }
    Ok((addr.to_string(), path.to_string()))
}

/// One request on a fresh connection: the status and the body.
pub async fn exchange(
    addr: &str,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let headers = [(hyper::header::CONTENT_TYPE.as_str(), content_type)];
    let answer = send(addr, method, path, &headers, body, timeout).await?;
    Ok((answer.status, answer.body))
}

/// What a server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

/// One request with `headers` (`Host` is added) on a fresh connection
/// to `addr` (`host:port`); an answer over 64 MiB is an error.
pub async fn send(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let exchange = async {
        let response = open(addr, method, path, headers, body).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = read_body(addr, response.into_body()).await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_string(),
        })?
}

/// One request with `headers` (`Host` is added) on a fresh connection
/// to `addr` (`host:port`): the answer once its head arrived, its body
/// left for the caller to read as it streams in (the connection lives as
/// long as the body). No timeout: the caller sets its own.
pub async fn open(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<hyper::Response<Incoming>, ClientError> {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http_error(addr, &e))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_error(addr, &e))?;
    tokio::spawn(connection);
    let host = hyper::header::HeaderValue::from_str(addr).map_err(|e| http_error(addr, &e))?;
    request.headers_mut().insert(hyper::header::HOST, host);
    sender
        .send_request(request)
        .await
        .map_err(|e| http_error(addr, &e))
}

fn http_error(addr: &str, e: &dyn std::fmt::Display) -> ClientError {
    ClientError::Http {
        addr: addr.to_string(),
        message: e.to_string(),
    }
}

/// A whole body, at most 64 MiB.
async fn read_body(addr: &str, body: Incoming) -> Result<Vec<u8>, ClientError> {
    Ok(http_body_util::Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| http_error(addr, &e))?
        .to_bytes()
        .to_vec())
}

/// An error answer: the gateway's `{"error": ...}`, else the body.
fn refused(status: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    ClientError::Refused { status, message }
}

/// A gateway's HTTP API (`http://127.0.0.1:8080` by default).
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`
    addr: String,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
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
            token: None,
        })
    }

    /// Calls with `Authorization: Bearer <token>` (the API's tokens).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// `Authorization` when there is a token.
    fn authorization(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// One call with an octet-stream body; the status and the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let authorization = self.authorization();
        let mut headers = vec![(
            hyper::header::CONTENT_TYPE.as_str(),
            "application/octet-stream",
        )];
        if let Some(a) = &authorization {
            headers.push((hyper::header::AUTHORIZATION.as_str(), a.as_str()));
        }
        let answer = send(&self.addr, method, path, &headers, body, TIMEOUT).await?;
        Ok((answer.status, answer.body))
    }

    /// A call answered with JSON; an error status is [`ClientError::Refused`].
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let (status, body) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(refused(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    /// A `GET` whose answer streams: its body, unread, once a `2xx` head
    /// arrived within [`TIMEOUT`] (the body itself has no deadline). An
    /// error status is [`ClientError::Refused`].
    pub async fn stream(&self, path: &str) -> Result<Incoming, ClientError> {
        let authorization = self.authorization();
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| (hyper::header::AUTHORIZATION.as_str(), a.as_str()))
            .collect();
        let head = async {
            let response = open(&self.addr, Method::GET, path, &headers, Vec::new()).await?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                let body = read_body(&self.addr, response.into_body()).await?;
                return Err(refused(status, &body));
            }
            Ok(response.into_body())
        };
        tokio::time::timeout(TIMEOUT, head)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
            })?
    }
}

/// Percent-encodes a query value: every byte but ASCII letters, digits
/// and `-_.~`.
pub fn encode(value: &str) -> String {
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
