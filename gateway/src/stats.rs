//! Counters of what the gateway did, shared by every task.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[doc = $doc:literal] $name:ident),* $(,)?) => {
        /// Monotonic counters, readable while the gateway runs.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// Restarts per supervised task.
            restarts: PerTask,
            /// Panics per task (supervised or not).
            panics: PerTask,
            /// Refused messages by reason.
            refused: PerTask,
            /// Dropped fields by reason.
            dropped: PerTask,
        }

        /// A point-in-time copy of [`Stats`]' counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Snapshot {
            /// The counters in Prometheus text format, as `eddy_{name}_total`.
            pub fn prometheus(&self, out: &mut String) {
                $(
                    let name = concat!("eddy_", stringify!($name), "_total");
                    let _ = writeln!(out, "# HELP {name} {}", $doc.trim());
                    let _ = writeln!(out, "# TYPE {name} counter");
                    let _ = writeln!(out, "{name} {}", self.$name);
                )*
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

impl Stats {
    /// Counts a restart of supervised task `task`; returns its total.
    pub fn task_restarted(&self, task: &'static str) -> u64 {
        bump(&self.restarts, task)
    }

    /// Restarts per supervised task (tasks never restarted are absent).
    pub fn task_restarts(&self) -> BTreeMap<&'static str, u64> {
        read(&self.restarts)
    }

    /// Counts a panic of task `task`; returns its total.
    pub fn task_panicked(&self, task: &'static str) -> u64 {
        bump(&self.panics, task)
    }

    /// Panics per task (tasks that never panicked are absent).
    pub fn task_panics(&self) -> BTreeMap<&'static str, u64> {
        read(&self.panics)
    }

    /// Counts `n` messages refused for `reason`.
    pub fn messages_refused(&self, reason: &'static str, n: u64) {
        add_to(&self.refused, reason, n);
    }

    /// Refused messages by reason (reasons never seen are absent).
    pub fn refused_by_reason(&self) -> BTreeMap<&'static str, u64> {
        read(&self.refused)
    }

    /// Counts `n` fields dropped for `reason`.
    pub fn values_dropped(&self, reason: &'static str, n: u64) {
        add_to(&self.dropped, reason, n);
    }

    /// Dropped fields by reason (reasons never seen are absent).
    pub fn dropped_by_reason(&self) -> BTreeMap<&'static str, u64> {
        read(&self.dropped)
    }
}

type PerTask = Mutex<BTreeMap<&'static str, u64>>;

fn bump(counts: &PerTask, task: &'static str) -> u64 {
    add_to(counts, task, 1)
}

fn add_to(counts: &PerTask, key: &'static str, n: u64) -> u64 {
    let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
    let total = map.entry(key).or_insert(0);
    *total += n;
    *total
}

fn read(counts: &PerTask) -> BTreeMap<&'static str, u64> {
    counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

counters! {
    /// Messages received: MQTT messages on ingest topics and HTTP ingest requests handed to the pipeline.
    messages_received,
    /// Store writes that failed with an I/O error (a full disk); the batch is held and retried.
    store_write_failures,
    /// HTTP ingest requests answered 2xx (every record stored).
    http_ingest_ok,
    /// HTTP ingest requests answered 4xx (refused, partly stored, unauthorized, too large).
    http_ingest_bad,
    /// HTTP ingest requests answered 5xx (busy, store full, commit too slow).
    http_ingest_failed,
    /// HTTP ingest requests refused with 503 before reaching the pipeline (queue full, too many waiting, shutting down).
    http_ingest_busy,
    /// HTTP ingest requests without the configured token.
    http_ingest_unauthorized,
    /// HTTP connections closed at once because `http.max_connections` were open.
    http_connections_refused,
    /// HTTP connections closed because a request head took longer than `http.header_timeout` or nothing moved for `http.idle_timeout`.
    http_connections_timed_out,
    /// QoS 1/2 publishes on ingest topics the embedded broker did not acknowledge because they could not be committed (queue full, shutting down, commit too slow); the device's connection is closed and it sends them again. By reason in `eddy_messages_refused_total`.
    broker_publishes_unstored,
    /// Connections the embedded broker refused at CONNECT (no or bad credentials, the gateway's client id) or at accept (`broker.max_connections`).
    broker_connects_refused,
    /// Publishes the embedded broker refused (outside the client's topics, a topic with a wildcard or NUL).
    broker_publishes_denied,
    /// Subscriptions the embedded broker refused (outside the client's topics, shared subscriptions).
    broker_subscribes_denied,
    /// Publishes the embedded broker held back because their client sent faster than `broker.max_publish_rate` (slowed, not dropped).
    broker_publishes_slowed,
    /// TLS handshakes on the embedded broker's TLS listener that failed or timed out.
    broker_tls_handshakes_failed,
    /// Messages whose samples were committed and then acknowledged.
    messages_accepted,
    /// Messages rejected as malformed (bad frame, bad JSON, bad names).
    messages_malformed,
    /// Messages rejected for exceeding the payload limit.
    messages_oversized,
    /// Messages on topics no mapping claims.
    messages_unknown_topic,
    /// Retained messages delivered at subscription, skipped as old readings (`ingest.skip_retained`).
    messages_retained_skipped,
    /// Readings timed beyond `ingest.future_horizon`, refused (`on_future = "refuse"`).
    samples_future_refused,
    /// Readings timed beyond `ingest.future_horizon`, stamped with their arrival time (`on_future = "arrival_time"`).
    samples_future_stamped,
    /// Eddy frames already stored (retransmissions, redeliveries): dropped.
    frames_duplicate,
    /// Eddy frames refused because an earlier one is missing; the device resends.
    frames_gap,
    /// Eddy frames their device declared lost (its backlog overflowed).
    frames_lost,
    /// Eddy frames refused because `ingest.max_devices` devices are tracked.
    frames_device_cap,
    /// Eddy frames refused because the store is full (`on_full = "refuse"`); devices keep them.
    frames_refused_full,
    /// JSON samples refused because the store is full (`on_full = "refuse"`).
    samples_refused,
    /// Samples deleted from the store for age (`store.max_age`).
    samples_expired,
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
    /// Repeat, flapping and other notifications beyond fired and resolved.
    alerts_other,
    /// Rule sets replaced after a file changed.
    rules_reloaded,
    /// Rule file changes refused (the running rules stayed).
    rules_refused,
    /// Webhook posts delivered.
    webhooks_sent,
    /// Webhook posts retried after a failure.
    webhooks_retried,
    /// Webhook posts given up (refused, or out of attempts).
    webhooks_failed,
    /// Webhook posts dropped because the queue was full.
    webhooks_dropped,
    /// Device commands sent by rule actions.
    commands_sent,
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
    /// OTA offers and chunks sent to devices.
    ota_frames_sent,
    /// Bytes of those frames (encoded).
    ota_bytes_sent,
    /// OTA chunks sent again (damaged, lost, or after a silence).
    ota_chunks_resent,
    /// OTA reports (`OtaStatus`) received from devices.
    ota_reports,
    /// Messages on OTA report topics that were not a report of that device.
    ota_bad_reports,
    /// `Hello` frames recorded: a device's board and firmware version, checked before a campaign.
    ota_hellos,
    /// Serial ports opened (first open and every reopen).
    serial_opens,
    /// Serial ports that failed or vanished while open.
    serial_port_errors,
    /// Frames from serial ports forwarded to ingest.
    serial_frames,
    /// Serial byte runs that were not a valid frame (COBS, CRC, contents, size).
    serial_bad_frames,
    /// Serial frames not forwarded because the bridge's queue was full; devices resend.
    serial_uplink_dropped,
    /// Acks and commands written to serial ports.
    serial_downlink,
    /// Acks and commands not written (port away, undecodable).
    serial_downlink_dropped,
    /// Ingest connection attempts that failed or connections that dropped.
    ingest_disconnects,
    /// Upstream connection attempts that failed or connections that dropped.
    upstream_disconnects,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Rate-limited log lines: per reason at most one line per interval, with
/// how many were not logged since (the counters count every one).
#[derive(Debug)]
pub struct LogEvery {
    every: std::time::Duration,
    /// Reason -> (last line, occurrences not logged since).
    last: std::collections::HashMap<&'static str, (std::time::Instant, u64)>,
}

impl LogEvery {
    /// At most one line per `every` for each reason.
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            last: std::collections::HashMap::new(),
        }
    }

    /// `Some(not logged since the last line)` when a line of `reason` is
    /// due; `None` (and one more not logged) otherwise.
    pub fn due(&mut self, reason: &'static str) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last.get_mut(reason) {
            Some((at, skipped)) if now.duration_since(*at) < self.every => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                *at = now;
                Some(std::mem::take(skipped))
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}
