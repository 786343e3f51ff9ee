//! Commit: the only writer of the store on the ingest path.
//!
//! Input: a batch's stored samples, outbox records and alert history, and
//! the admission state the sequencer changed. Output: the store's
//! [`Committed`] counts, reflected in the counters and in whether the
//! store is full. All of it is one redb transaction, run off the async
//! runtime's threads.

use tracing::{info, warn};

use super::{Pipeline, PipelineError};
use crate::config::FullPolicy;
use crate::stats;
use crate::store::{Batch, Committed, OutboxRecord, StoredSample};

impl Pipeline {
    /// Writes one batch durably.
    pub(super) async fn commit(
        &mut self,
        samples: Vec<StoredSample>,
        outbox: Vec<OutboxRecord>,
        alerts: Vec<Vec<u8>>,
    ) -> Result<Committed, PipelineError> {
        let limits = self.parts.limits;
        let store = self.parts.store.clone();
        let batch = Batch {
            samples,
            outbox,
            devices: self.sequencer.take_dirty(),
            alerts,
        };
        let committed =
            tokio::task::spawn_blocking(move || store.commit_batch(&batch, limits)).await??;
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
