//! `eddy-query`, run as `eddy query`: SQL over the gateway's stored raw
//! samples with polars, kept out of the daemon's package so the gateway
//! builds without polars.
//!
//! The samples come from the store file ([`spool_store`]) or, while a
//! gateway runs and holds that file, from its `GET /api/samples` Arrow
//! stream ([`remote::spool_remote`]). Either way they are spooled batch
//! by batch into a temporary Parquet file ([`spool::Spool`]) and the SQL
//! runs on polars' lazy scan of it with the streaming engine
//! ([`query::run`]), so neither side holds every sample in memory.

#![forbid(unsafe_code)]

use std::ops::ControlFlow;

use eddy_gateway::samples::{BATCH_ROWS, record_batch};
use eddy_gateway::store::{SampleFilter, Store};

pub mod query;
pub mod remote;
pub mod spool;

pub use query::{Format, QueryError};
pub use spool::{Spool, Spooled};

/// Spools the samples of `store` that `filter` keeps, a chunk of at most
/// [`BATCH_ROWS`] at a time, in one read transaction.
pub fn spool_store(
    store: &Store,
    filter: &SampleFilter,
    spool: &mut Spool,
) -> Result<(), QueryError> {
    let mut failed = None;
    store.scan_samples(filter, BATCH_ROWS, |chunk| {
        match record_batch(&chunk)
            .map_err(QueryError::from)
            .and_then(|batch| spool.push(&batch))
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    failed.map_or(Ok(()), Err)
}
