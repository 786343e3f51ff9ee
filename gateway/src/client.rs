//! A small HTTP/1 client: the CLI talks to a running gateway's API with
//! it (`eddy ota`, `eddy rules`), and webhook actions post alerts with it.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
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
    let http = |e: &dyn std::fmt::Display| ClientError::Http {
        addr: addr.to_string(),
        message: e.to_string(),
    };
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http(&e))?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(connection);
        let host = hyper::header::HeaderValue::from_str(addr).map_err(|e| http(&e))?;
        request.headers_mut().insert(hyper::header::HOST, host);
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes()
            .to_vec();
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

    /// One call; the status and the body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        exchange(
            &self.addr,
            method,
            path,
            "application/octet-stream",
            body,
            TIMEOUT,
        )
        .await
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
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}
