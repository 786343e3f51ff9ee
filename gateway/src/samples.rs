//! `GET /api/samples`: the stored raw samples, streamed in the Arrow IPC
//! stream format, so a client (`eddy query`) reads them while the gateway
//! runs and holds the store file.
//!
//! Query parameters, all optional:
//!
//! - `from`, `to`: event times, RFC 3339 (`2024-03-01T12:00:00Z`) or Unix
//!   milliseconds; `from` inclusive, `to` exclusive.
//! - `device`, `metric`: comma-separated names; only those.
//!
//! The answer is `200` with `Content-Type:
//! application/vnd.apache.arrow.stream`: one schema, then record batches
//! of at most [`BATCH_ROWS`] rows in log order, columns
//!
//! | column | Arrow type |
//! |---|---|
//! | `device`, `metric` | `Utf8` |
//! | `ts_ms` | `Int64`, Unix milliseconds |
//! | `value` | `Float64` |
//! | `boot`, `seq` | `UInt32`, null for samples not from an Eddy frame |
//!
//! A bad or unknown parameter is `400` with `{"error": "..."}` naming it.
//! Like every `/api/...` route it needs a token, a `read` one does
//! (`crate::auth`, applied where `gateway.rs` merges the routers).
//! The samples are read in one redb read transaction on a blocking
//! thread (a consistent view: commits during the stream are not in it;
//! while it lasts, redb keeps the pages it reads, so retention frees
//! space only after it) and sent through a channel of [`CHANNEL_BATCHES`] batches, so the
//! gateway holds a few batches whatever the range; a client that goes
//! away stops the scan at its next batch. A failure mid-stream (a
//! damaged record) ends the response without the stream's end marker,
//! so the client sees an error, never a short answer.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::warn;

use crate::client::encode;
use crate::live::error;
use crate::store::{SampleFilter, Store, StoredSample};

/// The answer's media type.
pub const CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";
/// Rows per record batch, at most.
pub const BATCH_ROWS: usize = 8192;
/// Encoded batches waiting for the client, at most; the scan waits while
/// they do.
pub const CHANNEL_BATCHES: usize = 2;

/// The schema of the stream (see the module doc).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("boot", DataType::UInt32, true),
        Field::new("seq", DataType::UInt32, true),
    ]))
}

/// `samples` as one record batch of [`schema`].
pub fn record_batch(samples: &[StoredSample]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            samples.iter().map(|s| s.device.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            samples.iter().map(|s| s.metric.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            samples.iter().map(|s| s.ts_ms),
        )),
        Arc::new(Float64Array::from_iter_values(
            samples.iter().map(|s| s.value),
        )),
        Arc::new(UInt32Array::from_iter(
            samples.iter().map(|s| s.frame.map(|f| f.0)),
        )),
        Arc::new(UInt32Array::from_iter(
            samples.iter().map(|s| s.frame.map(|f| f.1)),
        )),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// A query parameter that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {reason}")]
pub struct ParamError {
    /// The parameter's name (`from`, `device`, ...).
    pub param: &'static str,
    pub reason: String,
}

/// The query parameters, as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub from: Option<String>,
    pub to: Option<String>,
    pub device: Option<String>,
    pub metric: Option<String>,
}

impl Params {
    /// The filter they describe.
    ///
    /// Errors: a time that is neither RFC 3339 nor Unix milliseconds,
    /// `from` not before `to`, an empty name in a list.
    pub fn filter(&self) -> Result<SampleFilter, ParamError> {
        let time = |param, text: &Option<String>| text.as_deref().map(|t| instant_ms(param, t));
        let from_ms = time("from", &self.from).transpose()?;
        let to_ms = time("to", &self.to).transpose()?;
        if let (Some(from), Some(to)) = (from_ms, to_ms)
            && from >= to
        {
            return Err(ParamError {
                param: "from",
                reason: format!("{from} is not before `to` ({to})"),
            });
        }
        Ok(SampleFilter {
            from_ms,
            to_ms,
            devices: names("device", &self.device)?,
            metrics: names("metric", &self.metric)?,
        })
    }

    /// The parameters as a query string (`from=...&device=...`; empty
    /// when none is set), as [`Params`] reads them back.
    pub fn to_query(&self) -> String {
        [
            ("from", &self.from),
            ("to", &self.to),
            ("device", &self.device),
            ("metric", &self.metric),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", encode(value.as_deref()?))))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// The instant `param` gives, as RFC 3339 text or Unix milliseconds.
fn instant_ms(param: &'static str, text: &str) -> Result<i64, ParamError> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| ParamError {
            param,
            reason: format!(
                "`{}` is neither an RFC 3339 time nor Unix milliseconds",
                text.chars().take(64).collect::<String>()
            ),
        })
}

/// A comma-separated list of names; none when absent.
fn names(param: &'static str, list: &Option<String>) -> Result<Vec<String>, ParamError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|name| match name.trim() {
            "" => Err(ParamError {
                param,
                reason: format!("empty name in `{list}`"),
            }),
            name => Ok(name.to_string()),
        })
        .collect()
}

/// The route, on `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/samples", get(samples))
        .with_state(store)
}

async fn samples(
    State(store): State<Store>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let filter = match params
        .map_err(|e| e.body_text())
        .and_then(|Query(p)| p.filter().map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
    let producer = tokio::task::spawn_blocking(move || {
        if let Err(e) = stream(&store, &filter, &tx) {
            warn!(error = %e, "GET /api/samples failed mid-stream");
            // Ends the body without its last chunk: the client sees an error.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    tokio::spawn(async move {
        if producer.await.is_err() {
            warn!("GET /api/samples: the scan panicked; the stream lacks its end marker");
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Why a stream ended early.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("encoding: {0}")]
    Arrow(#[from] ArrowError),
}

/// Encoded pieces of the stream on their way to the client.
type Pieces = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// How far a stream got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streamed {
    /// Record batches encoded.
    batches: usize,
    /// Every batch and the end marker reached the channel (the client
    /// did not leave).
    complete: bool,
}

/// Writes the samples `filter` keeps to `tx` as an Arrow IPC stream:
/// the schema, a batch per chunk of the scan, the end marker. Returns
/// early, without error, once the receiver is gone (the client left).
/// Blocking: for a blocking thread.
fn stream(store: &Store, filter: &SampleFilter, tx: &Pieces) -> Result<Streamed, StreamError> {
    let mut writer = StreamWriter::try_new(Vec::new(), &schema())?;
    let send = |writer: &mut StreamWriter<Vec<u8>>| {
        let piece = std::mem::take(writer.get_mut());
        tx.blocking_send(Ok(Bytes::from(piece))).is_ok()
    };
    let mut streamed = Streamed {
        batches: 0,
        complete: send(&mut writer),
    };
    if !streamed.complete {
        return Ok(streamed);
    }
    let mut failed = None;
    store.scan_samples(filter, BATCH_ROWS, |chunk| {
        if let Err(e) = record_batch(&chunk).and_then(|batch| writer.write(&batch)) {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        streamed.batches += 1;
        streamed.complete = send(&mut writer);
        match streamed.complete {
            true => ControlFlow::Continue(()),
            false => ControlFlow::Break(()),
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if streamed.complete {
        writer.finish()?;
        streamed.complete = send(&mut writer);
    }
    Ok(streamed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, Limits};

    fn params(from: Option<&str>, to: Option<&str>, device: Option<&str>) -> Params {
        Params {
            from: from.map(Into::into),
            to: to.map(Into::into),
            device: device.map(Into::into),
            metric: None,
        }
    }

    #[test]
    fn parameters_parse_to_a_filter_or_name_the_bad_one() {
        let f = params(
            Some("2024-03-01T12:00:00Z"),
            Some("1709294400001"),
            Some("a, b"),
        )
        .filter()
        .expect("valid");
        assert_eq!(f.from_ms, Some(1_709_294_400_000));
        assert_eq!(f.to_ms, Some(1_709_294_400_001));
        assert_eq!(f.devices, ["a", "b"]);
        assert!(f.metrics.is_empty());
        for (p, param) in [
            (params(Some("yesterday"), None, None), "from"),
            (params(None, Some("12:00"), None), "to"),
            (params(Some("10"), Some("10"), None), "from"),
            (params(None, None, Some("a,,b")), "device"),
        ] {
            assert_eq!(p.filter().expect_err("refused").param, param, "{p:?}");
        }
    }

    fn store_of(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        let samples = (0..n)
            .map(|i| StoredSample {
                device: format!("d{}", i % 3),
                metric: "m".into(),
                ts_ms: i as i64,
                value: i as f64,
                frame: None,
            })
            .collect();
        let batch = Batch {
            samples,
            ..Batch::default()
        };
        store.commit_batch(&batch, Limits::NONE).expect("commit");
        (dir, store)
    }

    #[test]
    fn a_client_that_leaves_stops_the_scan() {
        let (_dir, store) = store_of(10 * BATCH_ROWS);
        let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
        let producer = std::thread::spawn(move || stream(&store, &SampleFilter::default(), &tx));
        // The schema and one batch, then the client is gone.
        for _ in 0..2 {
            rx.blocking_recv().expect("a piece").expect("not an error");
        }
        drop(rx);
        let streamed = producer
            .join()
            .expect("no panic")
            .expect("stopping is not an error");
        assert!(!streamed.complete);
        // One received, two in the channel, one whose send failed.
        assert!(streamed.batches <= 4, "{streamed:?}");
    }

    #[test]
    fn a_whole_stream_is_the_schema_the_batches_and_the_end() {
        let (_dir, store) = store_of(2 * BATCH_ROWS + 5);
        let (tx, mut rx) = mpsc::channel(CHANNEL_BATCHES);
        let filter = SampleFilter {
            devices: vec!["d1".into()],
            ..SampleFilter::default()
        };
        let producer = std::thread::spawn(move || stream(&store, &filter, &tx));
        let mut bytes = Vec::new();
        while let Some(piece) = rx.blocking_recv() {
            bytes.extend_from_slice(&piece.expect("not an error"));
        }
        let streamed = producer.join().expect("no panic").expect("streamed");
        assert!(streamed.complete);
        let reader =
            arrow_ipc::reader::StreamReader::try_new(bytes.as_slice(), None).expect("a stream");
        let rows: usize = reader.map(|b| b.expect("a batch").num_rows()).sum();
        assert_eq!(rows, (2 * BATCH_ROWS + 5).div_ceil(3));
    }
}
