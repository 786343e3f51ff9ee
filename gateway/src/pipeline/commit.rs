//! Commit: the only writer of the store on the ingest path.
//!
//! Input: a batch's stored samples, outbox records and alert history, and
//! the admission state the sequencer changed. Output: the store's
//! [`Committed`] counts, reflected in the counters and in whether the
//! store is full. All of it is one redb transaction, run off the async
//! runtime's threads.

use std::time::Duration;

use tracing::{info, warn};

use super::{Pipeline, PipelineError};
use crate::config::FullPolicy;
use crate::stats;
use crate::store::{Batch, Committed, OutboxRecord, StoredSample};

/// First wait before retrying a failed commit; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Pipeline {
    /// Writes one batch durably.
    pub(super) async fn commit(
        &mut self,
        samples: Vec<StoredSample>,
        outbox: Vec<OutboxRecord>,
        alerts: Vec<Vec<u8>>,
    ) -> Result<Committed, PipelineError> {
        let limits = self.parts.limits;
        let mut batch = Batch {
            samples,
            outbox,
            devices: self.sequencer.take_dirty(),
            alerts,
        };
        let mut backoff = RETRY_FIRST;
        let mut failures = 0u64;
        let committed = loop {
            let store = self.parts.store.clone();
            let (held, result) = tokio::task::spawn_blocking(move || {
                let result = store.commit_batch(&batch, limits);
                (batch, result)
            })
            .await?;
            match result {
                Ok(committed) => break committed,
                // A full disk or a failing device: hold the batch (its
                // messages stay unacknowledged, devices keep their data)
                // and retry on the reopened store until the cause is gone.
                Err(e) if e.is_io() && !self.parts.stop.is_cancelled() => {
                    stats::add(&self.parts.stats.store_write_failures, 1);
                    failures += 1;
                    if (failures - 1).is_multiple_of(20) {
                        warn!(
                            error = %e,
                            retry_in = ?backoff,
                            failures,
                            "store write failed: holding the batch and retrying (devices keep their data; /healthz degraded)"
                        );
                    }
                    batch = held;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.parts.stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e.into()),
            }
        };
        if failures > 0 {
            info!(failures, "store write succeeded again: batch committed");
        }
        let stats = &self.parts.stats;
        stats::add(&stats.samples_committed, committed.samples);
        stats::add(&stats.samples_expired, committed.samples_expired);
        if committed.full != self.full && limits.on_full == FullPolicy::Refuse {
            if committed.full {
                warn!("sample store full: refusing new samples (store.on_full = \"refuse\")");
            } else {
                info!("sample store has room again: admitting samples");
            }
        }
        self.full = committed.full;
        stats::add(&stats.batches_committed, 1);
        stats::add(&stats.outbox_appended, committed.outbox);
        if committed.samples_dropped > 0 {
            stats::add(&stats.samples_dropped, committed.samples_dropped);
            warn!(
                dropped = committed.samples_dropped,
                "sample log full: oldest samples dropped"
            );
        }
        if committed.outbox_dropped > 0 {
            stats::add(&stats.outbox_dropped, committed.outbox_dropped);
            warn!(
                dropped = committed.outbox_dropped,
                "outbox full: oldest records dropped"
            );
        }
        Ok(committed)
    }
}
