//! Counters of what the gateway did, shared by every task.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters, readable while the gateway runs.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl fmt::Display for Snapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $(writeln!(f, "{:<28}{:>12}", stringify!($name), self.$name)?;)*
                Ok(())
            }
        }
    };
}

counters! {
    /// MQTT messages received on ingest topics.
    messages_received,
    /// Messages whose samples were committed and then acknowledged.
    messages_accepted,
    /// Messages rejected as malformed (bad frame, bad JSON, bad names).
    messages_malformed,
    /// Messages rejected for exceeding the payload limit.
    messages_oversized,
    /// Messages on topics no mapping claims.
    messages_unknown_topic,
    /// Eddy frames already stored (retransmissions, redeliveries): dropped.
    frames_duplicate,
    /// Eddy frames refused because an earlier one is missing; the device resends.
    frames_gap,
    /// Eddy frames their device declared lost (its backlog overflowed).
    frames_lost,
    /// Eddy frames refused because `ingest.max_devices` devices are tracked.
    frames_device_cap,
    /// End-to-end acknowledgements sent to devices after a commit.
    acks_sent,
    /// Samples durably committed to the store.
    samples_committed,
    /// Samples dropped from the store's log at its cap (oldest first).
    samples_dropped,
    /// Redb transactions committed by the ingest pipeline.
    batches_committed,
    /// Samples older than the watermark (not analysed; still stored).
    samples_late,
    /// Samples of new series refused by the engine's series cap (still stored).
    samples_series_refused,
    /// Windows closed and published.
    windows_closed,
    /// Alerts that started firing.
    alerts_fired,
    /// Alerts that resolved.
    alerts_resolved,
    /// Messages published to the local broker.
    local_published,
    /// Records added to the outbox.
    outbox_appended,
    /// Outbox records dropped because the outbox was full.
    outbox_dropped,
    /// Messages published upstream.
    upstream_sent,
    /// Upstream publishes acknowledged (PUBACK) and committed as the sink offset.
    upstream_acked,
    /// Upstream connection attempts that failed or connections that dropped.
    upstream_disconnects,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
