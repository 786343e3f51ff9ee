//! Samples from a running gateway: `GET /api/samples` read as it streams
//! in, decoded batch by batch (arrow-ipc's `StreamReader`) into the
//! spool. The HTTP body arrives on a runtime thread and is handed to the
//! decoder through a bounded channel, so memory holds a few pieces of
//! the stream, whatever its length.

use std::io::Read;

use arrow_ipc::reader::StreamReader;
use eddy_gateway::client::{Client, ClientError};
use eddy_gateway::samples::{CONTENT_TYPE, Params, schema};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use tokio::sync::mpsc;

use crate::{QueryError, Spool};

/// Pieces of the body waiting for the decoder, at most.
const PIECES: usize = 8;

/// Spools the samples the gateway at `url` (`http://host:port`) answers
/// for `params`, asked with the API token `token` (a read token does);
/// the number spooled.
///
/// Errors: the gateway cannot be reached or refuses ([`QueryError::Gateway`],
/// with its reason for a bad parameter); the stream is not the samples
/// stream or breaks off ([`QueryError::Stream`]).
pub fn spool_remote(
    url: &str,
    token: Option<String>,
    params: &Params,
    spool: &mut Spool,
) -> Result<u64, QueryError> {
    let client = Client::new(url)?.with_token(token);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| QueryError::Io {
            path: "a runtime for HTTP".into(),
            source,
        })?;
    let query = params.to_query();
    let path = match query.is_empty() {
        true => "/api/samples".to_string(),
        false => format!("/api/samples?{query}"),
    };
    let body = runtime.block_on(client.stream(&path))?;
    let (tx, rx) = mpsc::channel(PIECES);
    runtime.spawn(forward(body, tx));
    let broke = |message: String| QueryError::Stream {
        url: url.to_string(),
        message,
    };
    let mut reader = StreamReader::try_new(
        BodyReader {
            pieces: rx,
            piece: Bytes::new(),
            tail: Vec::with_capacity(2 * END.len()),
        },
        None,
    )
    .map_err(|e| {
        broke(format!(
            "{e} (is {url} an Eddy gateway answering {CONTENT_TYPE}?)"
        ))
    })?;
    if reader.schema().fields() != schema().fields() {
        return Err(broke(format!(
            "unexpected columns {:?}",
            reader.schema().fields()
        )));
    }
    let before = spool.rows();
    for batch in reader.by_ref() {
        spool.push(&batch.map_err(|e| broke(e.to_string()))?)?;
    }
    // The reader takes a stream cut between two batches for a whole one.
    if !reader.get_ref().tail.ends_with(&END) {
        return Err(broke("it ended before its end marker".into()));
    }
    Ok(spool.rows() - before)
}

/// Hands the body's data to the decoder until it ends, fails or the
/// decoder is gone.
async fn forward(mut body: Incoming, tx: mpsc::Sender<Result<Bytes, ClientError>>) {
    while let Some(frame) = body.frame().await {
        let piece = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue, // trailers
            },
            Err(e) => Err(ClientError::BadAnswer(e.to_string())),
        };
        let failed = piece.is_err();
        if tx.send(piece).await.is_err() || failed {
            return;
        }
    }
}

/// The end-of-stream marker of the Arrow IPC stream format.
const END: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// The body as a blocking reader, for the decoder.
struct BodyReader {
    pieces: mpsc::Receiver<Result<Bytes, ClientError>>,
    piece: Bytes,
    /// The last bytes read (up to 16), to see the end marker.
    tail: Vec<u8>,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.piece.is_empty() {
            match self.pieces.blocking_recv() {
                Some(Ok(piece)) => self.piece = piece,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece.split_to(n));
        let read = &buf[n.saturating_sub(END.len())..n];
        if self.tail.len() + read.len() > 2 * END.len() {
            self.tail.drain(..self.tail.len().saturating_sub(END.len()));
        }
        self.tail.extend_from_slice(read);
        Ok(n)
    }
}
