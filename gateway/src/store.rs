//! The redb store: raw sample log, outbox with per-sink offsets.
//!
//! Durability is stated here: [`Store::commit_batch`] returns only after the
//! transaction is durable on disk (redb's immediate durability: fsync), and
//! the pipeline acknowledges a device's message only after that. Offsets
//! are append-only u64 keys, as in Kafka: the sample log and the outbox are
//! logs; a sink's offset is the first record it has not yet had
//! acknowledged upstream.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{DurabilityMode, FullPolicy};
use crate::sequencer::DeviceSeq;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tracing::{info, warn};

mod salvage;
pub use salvage::{Salvaged, TableSalvage};

const SAMPLES: TableDefinition<u64, &[u8]> = TableDefinition::new("samples");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const SINK_OFFSETS: TableDefinition<&str, u64> = TableDefinition::new("sink_offsets");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// OTA campaigns by id (JSON records, see `campaign`).
const CAMPAIGNS: TableDefinition<u32, &[u8]> = TableDefinition::new("ota_campaigns");
/// The signed image of each campaign.
const CAMPAIGN_IMAGES: TableDefinition<u32, &[u8]> = TableDefinition::new("ota_images");
/// Engine snapshots (one record, `engine`).
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const ENGINE_SNAPSHOT: &str = "engine";
/// Rules created through the HTTP API: name to the rule as JSON.
const API_RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("api_rules");
/// Alert notifications, oldest first (JSON), at most [`MAX_ALERT_HISTORY`].
const ALERT_HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("alert_history");
const ALERTS_NEXT: &str = "alert_history_next";
/// Counter of history records dropped to stay within the cap.
pub const ALERTS_DROPPED: &str = "alert_history_dropped";
/// Alert notifications the history keeps; older ones are dropped.
pub const MAX_ALERT_HISTORY: u64 = 10_000;
/// Next campaign id (ids start at 1; devices read 0 as "no campaign").
const CAMPAIGN_NEXT: &str = "ota_campaign_next";

/// Counter of outbox records dropped because the outbox was full.
pub const OUTBOX_DROPPED: &str = "outbox_dropped";
/// Counter of samples dropped from the log because it was full.
pub const SAMPLES_DROPPED: &str = "samples_dropped";
/// Counter of samples deleted because they were older than `max_age`.
pub const SAMPLES_EXPIRED: &str = "samples_expired";
/// Bytes of sample records in the log.
const SAMPLES_BYTES: &str = "samples_bytes";

/// Retention, caps and commit durability, applied on every commit: an
/// edge box must keep running on a full budget, in a declared way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Samples kept in the log.
    pub max_samples: u64,
    /// Bytes of sample records kept in the log.
    pub max_sample_bytes: u64,
    /// Samples with an event time older than this (relative to the wall
    /// clock) are deleted from the old end of the log.
    pub max_age_ms: Option<i64>,
    /// What a full sample log does.
    pub on_full: FullPolicy,
    pub durability: DurabilityMode,
    /// Outbox records kept; beyond it the oldest are dropped and counted.
    pub max_outbox: u64,
}

impl Limits {
    /// No caps, durable commits (tests and tools).
    pub const NONE: Limits = Limits {
        max_samples: u64::MAX,
        max_sample_bytes: u64::MAX,
        max_age_ms: None,
        on_full: FullPolicy::DropOldest,
        durability: DurabilityMode::Immediate,
        max_outbox: u64::MAX,
    };
}

/// A storage failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    /// The file exists but is damaged: not opened, never reset.
    #[error(
        "store {path} is damaged ({reason}); nothing was changed. Move it aside \
         (`mv {path} {path}.damaged`); then either start with an empty store, or \
         first copy what still reads into a new one with \
         `eddy salvage {path}.damaged {path}`"
    )]
    Damaged { path: PathBuf, reason: String },
    /// Another process has the file open: a running gateway (redb locks
    /// the file for its one writer). Its HTTP API serves the samples.
    #[error("store {path} is in use by another process (a running gateway?)")]
    InUse { path: PathBuf },
    /// `eddy salvage` found nothing it could read in the file.
    #[error("store {path} cannot be salvaged ({reason}); nothing was written")]
    Unsalvageable { path: PathBuf, reason: String },
}

impl StoreError {
    /// An I/O failure (a full disk, a failing device): the store reopens
    /// itself, and a write can succeed once the cause is gone.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            Self::Db {
                source: redb::Error::Io(_) | redb::Error::PreviousIo,
                ..
            }
        )
    }
}

/// How the store file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// redb's page cache, in bytes: the store's share of the gateway's
    /// memory, whatever the file's size.
    pub cache_bytes: usize,
    /// Verify every page's checksum at open (redb's integrity check; reads
    /// the whole file), so a file damaged outside redb is refused instead
    /// of trusted.
    pub verify: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 16 << 20,
            verify: true,
        }
    }
}

fn corrupt(table: &str, offset: u64) -> redb::Error {
    redb::Error::Corrupted(format!(
        "record {offset} of table `{table}` does not decode"
    ))
}

/// One stored sample.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub device: String,
    pub metric: String,
    pub ts_ms: i64,
    pub value: f64,
    /// (boot, seq) of the Eddy frame it came in; `None` for JSON.
    pub frame: Option<(u32, u32)>,
}

impl StoredSample {
    // Layout: ts i64 LE | value f64 LE | has frame u8 | [boot u32 LE |
    // seq u32 LE] | device len u8 | device | metric.
    fn encoded(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(26 + self.device.len() + self.metric.len());
        buf.extend_from_slice(&self.ts_ms.to_le_bytes());
        buf.extend_from_slice(&self.value.to_le_bytes());
        match self.frame {
            Some((boot, seq)) => {
                buf.push(1);
                buf.extend_from_slice(&boot.to_le_bytes());
                buf.extend_from_slice(&seq.to_le_bytes());
            }
            None => buf.push(0),
        }
        // Names are validated to at most 32 bytes before they get here.
        buf.push(self.device.len().min(255) as u8);
        buf.extend_from_slice(self.device.as_bytes());
        buf.extend_from_slice(self.metric.as_bytes());
        buf
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
        let ts_ms = i64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        let value = f64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let (frame, at) = match bytes.get(16)? {
            0 => (None, 17),
            1 => (Some((word(17)?, word(21)?)), 25),
            _ => return None,
        };
        let dlen = usize::from(*bytes.get(at)?);
        let device = std::str::from_utf8(bytes.get(at + 1..at + 1 + dlen)?).ok()?;
        let metric = std::str::from_utf8(bytes.get(at + 1 + dlen..)?).ok()?;
        Some(Self {
            device: device.to_string(),
            metric: metric.to_string(),
            ts_ms,
            value,
            frame,
        })
    }
}

/// Which stored samples a scan keeps ([`Store::scan_samples`]): event
/// times in `from_ms..to_ms` (Unix milliseconds, `to_ms` exclusive; an
/// open end when `None`) and, when a list is not empty, only the devices
/// and metrics it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub devices: Vec<String>,
    pub metrics: Vec<String>,
}

impl SampleFilter {
    /// Whether `sample` passes.
    pub fn keeps(&self, sample: &StoredSample) -> bool {
        self.from_ms.is_none_or(|from| sample.ts_ms >= from)
            && self.to_ms.is_none_or(|to| sample.ts_ms < to)
            && (self.devices.is_empty() || self.devices.contains(&sample.device))
            && (self.metrics.is_empty() || self.metrics.contains(&sample.metric))
    }
}

/// A message waiting in the outbox: a topic relative to the sink's prefix
/// (`agg/dev/metric`, `alerts/rule/dev`) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl OutboxRecord {
    // Layout: topic len u16 LE | topic | payload.
    fn encoded(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(2 + self.topic.len() + self.payload.len());
        let len = self.topic.len().min(usize::from(u16::MAX));
        buf.extend_from_slice(&(len as u16).to_le_bytes());
        buf.extend_from_slice(&self.topic.as_bytes()[..len]);
        buf.extend_from_slice(&self.payload);
        buf
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let len = usize::from(u16::from_le_bytes(bytes.get(0..2)?.try_into().ok()?));
        let topic = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
        Some(Self {
            topic: topic.to_string(),
            payload: bytes.get(2 + len..)?.to_vec(),
        })
    }
}

/// Everything one pipeline batch writes, committed atomically.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub samples: Vec<StoredSample>,
    pub outbox: Vec<OutboxRecord>,
    /// Devices whose admission state changed with these samples.
    pub devices: Vec<(String, DeviceSeq)>,
    /// Alert notifications these samples caused, for the history (JSON).
    pub alerts: Vec<Vec<u8>>,
}

/// The store's sizes, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    pub samples: u64,
    pub sample_bytes: u64,
    /// Outbox records not yet delivered by every sink.
    pub outbox: u64,
    /// Per sink: records appended to the outbox it has not had acknowledged.
    pub sink_lag: Vec<(String, u64)>,
    /// Devices with exactly-once admission state.
    pub devices: u64,
    pub file_bytes: u64,
}

/// What a committed batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub samples: u64,
    /// Samples dropped from the log to stay within the cap.
    pub samples_dropped: u64,
    /// Samples deleted for age.
    pub samples_expired: u64,
    /// The sample log is at a cap after this commit (with the `refuse`
    /// policy, the pipeline stops admitting until it is not).
    pub full: bool,
    pub outbox: u64,
    /// Outbox records dropped to stay within the cap.
    pub outbox_dropped: u64,
}

/// The gateway's store. Cheap to clone; one writer at a time (redb
/// serialises write transactions).
///
/// After an I/O error (a full disk, a failing device) redb refuses every
/// later operation on the same handle; the store then closes and reopens
/// the file (redb recovers it as after a crash: committed data is kept)
/// and reports itself degraded ([`Store::fault`]) until a write succeeds.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: Arc<PathBuf>,
    /// Opens the database anew (at start and after an I/O error).
    opener: Opener,
    options: OpenOptions,
    /// Why the last write failed, until one succeeds.
    fault: Arc<Mutex<Option<String>>>,
}

/// Opens the store's database: on its file, or on a storage backend.
#[derive(Clone)]
struct Opener(Arc<OpenFn>);

type OpenFn = dyn Fn(&redb::Builder) -> Result<Database, redb::DatabaseError> + Send + Sync;

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Opener")
    }
}

/// Longest a reopen waits for the old handle's readers to finish.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Next offset of the sample log. Offsets are kept here, not derived
/// from the last key, so they stay monotonic when a log is trimmed empty.
const SAMPLES_NEXT: &str = "samples_next";
/// Next offset of the outbox.
const OUTBOX_NEXT: &str = "outbox_next";

/// Drops the oldest records of `log` beyond `max`, adding their number to
/// `counter`. Returns (dropped, first offset kept).
fn trim(
    txn: &redb::WriteTransaction,
    log: TableDefinition<u64, &[u8]>,
    max: u64,
    counter: &str,
) -> Result<(u64, u64), redb::Error> {
    let mut table = txn.open_table(log)?;
    let len = table.len()?;
    if len <= max {
        return Ok((0, 0));
    }
    let excess = len - max;
    let first_kept = match table
        .iter()?
        .nth(usize::try_from(excess).unwrap_or(usize::MAX))
    {
        Some(entry) => entry?.0.value(),
        None => u64::MAX,
    };
    table.retain_in(..first_kept, |_, _| false)?;
    let mut counters = txn.open_table(COUNTERS)?;
    let dropped = counters.get(counter)?.map_or(0, |v| v.value());
    counters.insert(counter, dropped + excess)?;
    Ok((excess, first_kept))
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn bump(counters: &mut redb::Table<&str, u64>, name: &str, by: u64) -> Result<u64, redb::Error> {
    let value = counters
        .get(name)?
        .map_or(0, |v| v.value())
        .saturating_add(by);
    counters.insert(name, value)?;
    Ok(value)
}

/// Applies age retention and the caps to the sample log after `added`
/// bytes were appended.
fn retain_samples(
    txn: &redb::WriteTransaction,
    added: u64,
    limits: &Limits,
    committed: &mut Committed,
) -> Result<(), redb::Error> {
    let mut counters = txn.open_table(COUNTERS)?;
    let mut bytes = bump(&mut counters, SAMPLES_BYTES, added)?;
    let mut table = txn.open_table(SAMPLES)?;
    let mut len = table.len()?;
    let cutoff = limits.max_age_ms.map(|age| wall_ms().saturating_sub(age));
    let over = |len: u64, bytes: u64| len > limits.max_samples || bytes > limits.max_sample_bytes;
    let (mut expired, mut dropped, mut freed) = (0u64, 0u64, 0u64);
    loop {
        let Some((_, first)) = table.first()? else {
            break;
        };
        let value = first.value();
        let old = cutoff.is_some_and(|c| {
            value
                .get(0..8)
                .and_then(|b| b.try_into().ok())
                .is_some_and(|b| i64::from_le_bytes(b) < c)
        });
        let cap = limits.on_full == FullPolicy::DropOldest && over(len, bytes);
        if !old && !cap {
            break;
        }
        let size = value.len() as u64;
        drop(first);
        table.pop_first()?;
        len -= 1;
        bytes = bytes.saturating_sub(size);
        freed += size;
        if old {
            expired += 1;
        } else {
            dropped += 1;
        }
    }
    if freed > 0 {
        counters.insert(SAMPLES_BYTES, bytes)?;
    }
    if expired > 0 {
        bump(&mut counters, SAMPLES_EXPIRED, expired)?;
    }
    if dropped > 0 {
        bump(&mut counters, SAMPLES_DROPPED, dropped)?;
    }
    committed.samples_expired = expired;
    committed.samples_dropped = dropped;
    committed.full = len >= limits.max_samples || bytes >= limits.max_sample_bytes;
    Ok(())
}

/// Appends `values` to a log table at its persistent next offset.
fn append(
    txn: &redb::WriteTransaction,
    log: TableDefinition<u64, &[u8]>,
    next_counter: &str,
    values: impl Iterator<Item = Vec<u8>>,
) -> Result<(), redb::Error> {
    let mut counters = txn.open_table(COUNTERS)?;
    let mut key = counters.get(next_counter)?.map_or(0, |v| v.value());
    let mut table = txn.open_table(log)?;
    for v in values {
        table.insert(key, v.as_slice())?;
        key += 1;
    }
    counters.insert(next_counter, key)?;
    Ok(())
}

impl Store {
    /// Opens or creates the store file with the default [`OpenOptions`].
    ///
    /// Errors: [`StoreError::Damaged`] for an existing file that is empty,
    /// not a redb database or fails the integrity check;
    /// [`StoreError::InUse`] while another process (a running gateway)
    /// has the file open; [`StoreError::Db`] for I/O errors.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens or creates the store file: see [`Store::open`].
    pub fn open_with(path: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        // A file cut to nothing would otherwise become a new, empty store.
        if let Ok(meta) = std::fs::metadata(path)
            && meta.is_file()
            && meta.len() == 0
        {
            return Err(StoreError::Damaged {
                path: path.to_path_buf(),
                reason: "the file is empty (0 bytes)".into(),
            });
        }
        let file = path.to_path_buf();
        let opener = Opener(Arc::new(move |b: &redb::Builder| b.create(&file)));
        Self::open_by(path, opener, options)
    }

    /// Opens or creates a store on a redb storage backend (memory, a
    /// device without a file system, a backend that injects faults);
    /// `make` gives a fresh handle on the same storage at every open, and
    /// `name` names the store in errors. Errors as [`Store::open`].
    pub fn open_backend<B: redb::StorageBackend>(
        name: &str,
        make: impl Fn() -> B + Send + Sync + 'static,
        options: OpenOptions,
    ) -> Result<Self, StoreError> {
        let opener = Opener(Arc::new(move |b: &redb::Builder| {
            b.create_with_backend(make())
        }));
        Self::open_by(Path::new(name), opener, options)
    }

    fn open_by(path: &Path, opener: Opener, options: OpenOptions) -> Result<Self, StoreError> {
        let mut builder = redb::Builder::new();
        builder
            .set_cache_size(options.cache_bytes)
            .set_check_integrity_on_open(options.verify);
        let db = (opener.0)(&builder).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
                StoreError::Damaged {
                    path: path.to_path_buf(),
                    reason,
                }
            }
            e => StoreError::Db {
                path: path.to_path_buf(),
                source: e.into(),
            },
        })?;
        let store = Self {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path: Arc::new(path.to_path_buf()),
            opener,
            options,
            fault: Arc::new(Mutex::new(None)),
        };
        // Create the tables up front so readers never see them missing.
        store.write(|txn| {
            txn.open_table(SAMPLES)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(SINK_OFFSETS)?;
            txn.open_table(COUNTERS)?;
            txn.open_table(DEVICES)?;
            txn.open_table(CAMPAIGNS)?;
            txn.open_table(CAMPAIGN_IMAGES)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(API_RULES)?;
            txn.open_table(ALERT_HISTORY)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn db_err(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.to_path_buf(),
            source: source.into(),
        }
    }

    /// The open handle; an error while a reopen has not succeeded.
    fn handle(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| self.db_err(redb::Error::PreviousIo))
    }

    /// Why the store is degraded: the last write failed (and with what),
    /// until a write succeeds; `None` when healthy.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes the outcome of a write; after an I/O error, reopens the file
    /// so the next write can succeed once the cause is gone.
    fn after_write<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let io = match &result {
            Ok(_) => {
                let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
                if fault.take().is_some() {
                    info!(path = %self.path.display(), "store writable again");
                }
                return result;
            }
            Err(e) => e.is_io(),
        };
        if let Err(e) = &result {
            *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
        if io && let Err(e) = self.reopen() {
            warn!(error = %e, "store not reopened; retried at the next write");
        }
        result
    }

    /// Closes the file (once the old handle's readers finished) and opens
    /// it again, without the integrity check: redb recovers an interrupted
    /// commit as after a crash.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if Arc::strong_count(&old) > 1 {
                *slot = Some(old);
                return Err(self.db_err(redb::Error::PreviousIo));
            }
            drop(old);
        }
        let mut builder = redb::Builder::new();
        builder.set_cache_size(self.options.cache_bytes);
        let db = (self.opener.0)(&builder).map_err(|e| self.db_err(e))?;
        *slot = Some(Arc::new(db));
        info!(path = %self.path.display(), "store reopened after an I/O error");
        Ok(())
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.write_with(DurabilityMode::Immediate, f)
    }

    fn write_with<T>(
        &self,
        durability: DurabilityMode,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let written = (|| {
            let db = self.handle()?;
            let mut txn = db.begin_write().map_err(|e| self.db_err(e))?;
            if durability == DurabilityMode::None {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| self.db_err(redb::Error::from(e)))?;
            }
            let value = f(&txn).map_err(|e| self.db_err(e))?;
            txn.commit().map_err(|e| self.db_err(e))?;
            Ok(value)
        })();
        self.after_write(written)
    }

    /// Appends samples to the log and records to the outbox in one durable
    /// transaction. A log over its cap in `limits` drops its oldest records
    /// and counts them ([`SAMPLES_DROPPED`], [`OUTBOX_DROPPED`]); sinks'
    /// offsets move past dropped outbox records.
    pub fn commit_batch(&self, batch: &Batch, limits: Limits) -> Result<Committed, StoreError> {
        let Batch {
            samples,
            outbox,
            devices,
            alerts,
        } = batch;
        self.write_with(limits.durability, |txn| {
            if !devices.is_empty() {
                let mut table = txn.open_table(DEVICES)?;
                for (device, state) in devices {
                    table.insert(device.as_str(), state.encode().as_slice())?;
                }
            }
            let encoded: Vec<Vec<u8>> = samples.iter().map(StoredSample::encoded).collect();
            let bytes: u64 = encoded.iter().map(|e| e.len() as u64).sum();
            append(txn, SAMPLES, SAMPLES_NEXT, encoded.into_iter())?;
            let mut committed = Committed {
                samples: samples.len() as u64,
                ..Committed::default()
            };
            retain_samples(txn, bytes, &limits, &mut committed)?;
            if !alerts.is_empty() {
                append(txn, ALERT_HISTORY, ALERTS_NEXT, alerts.iter().cloned())?;
                trim(txn, ALERT_HISTORY, MAX_ALERT_HISTORY, ALERTS_DROPPED)?;
            }
            if outbox.is_empty() {
                return Ok(committed);
            }
            append(
                txn,
                OUTBOX,
                OUTBOX_NEXT,
                outbox.iter().map(OutboxRecord::encoded),
            )?;
            committed.outbox = outbox.len() as u64;
            let (dropped, first_kept) = trim(txn, OUTBOX, limits.max_outbox, OUTBOX_DROPPED)?;
            committed.outbox_dropped = dropped;
            if dropped > 0 {
                let mut offsets = txn.open_table(SINK_OFFSETS)?;
                let sinks: Vec<(String, u64)> = offsets
                    .iter()?
                    .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value())))
                    .collect::<Result<_, _>>()?;
                for (sink, offset) in sinks {
                    if offset < first_kept {
                        offsets.insert(sink.as_str(), first_kept)?;
                    }
                }
            }
            Ok(committed)
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let txn = self.handle()?.begin_read().map_err(|e| self.db_err(e))?;
        f(&txn).map_err(|e| self.db_err(e))
    }

    /// Up to `max` outbox records from `from` on, in order.
    pub fn outbox_from(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, OutboxRecord)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for entry in table.range(from..)?.take(max) {
                let (k, v) = entry?;
                let record =
                    OutboxRecord::decode(v.value()).ok_or_else(|| corrupt("outbox", k.value()))?;
                out.push((k.value(), record));
            }
            Ok(out)
        })
    }

    /// Records in the outbox at or after `from`.
    pub fn outbox_pending(&self, from: u64) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(OUTBOX)?;
            let mut n = 0;
            for entry in table.range(from..)? {
                entry?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// The first outbox offset `sink` has not had acknowledged.
    pub fn sink_offset(&self, sink: &str) -> Result<u64, StoreError> {
        self.read(|txn| {
            Ok(txn
                .open_table(SINK_OFFSETS)?
                .get(sink)?
                .map_or(0, |v| v.value()))
        })
    }

    /// Durably moves `sink`'s offset forward (never back) and removes
    /// outbox records every sink has passed.
    pub fn advance_sink(&self, sink: &str, offset: u64) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut offsets = txn.open_table(SINK_OFFSETS)?;
            let current = offsets.get(sink)?.map(|v| v.value());
            if current.is_none_or(|c| offset > c) {
                offsets.insert(sink, offset)?;
            }
            let mut lowest = u64::MAX;
            for entry in offsets.iter()? {
                lowest = lowest.min(entry?.1.value());
            }
            let mut outbox = txn.open_table(OUTBOX)?;
            outbox.retain_in(..lowest, |_, _| false)?;
            Ok(())
        })
    }

    /// Stores a new campaign and its image in one transaction: `record`
    /// makes the record from the id it gets.
    pub fn create_campaign(
        &self,
        image: &[u8],
        record: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<u32, StoreError> {
        self.write(|txn| {
            let mut counters = txn.open_table(COUNTERS)?;
            let id = counters.get(CAMPAIGN_NEXT)?.map_or(1, |v| v.value()).max(1);
            counters.insert(CAMPAIGN_NEXT, id + 1)?;
            let id = u32::try_from(id)
                .map_err(|_| redb::Error::Corrupted("campaign ids exhausted".into()))?;
            txn.open_table(CAMPAIGN_IMAGES)?.insert(id, image)?;
            txn.open_table(CAMPAIGNS)?
                .insert(id, record(id).as_slice())?;
            Ok(id)
        })
    }

    /// Replaces the records of existing campaigns, in one transaction.
    pub fn save_campaigns<'a>(
        &self,
        records: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(CAMPAIGNS)?;
            for (id, record) in records {
                table.insert(id, record)?;
            }
            Ok(())
        })
    }

    /// Every campaign record, oldest first.
    pub fn campaign_records(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(CAMPAIGNS)?.iter()? {
                let (k, v) = entry?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// One campaign's record.
    pub fn campaign_record(&self, id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.campaign_table(CAMPAIGNS, id)
    }

    /// One campaign's signed image.
    pub fn campaign_image(&self, id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.campaign_table(CAMPAIGN_IMAGES, id)
    }

    fn campaign_table(
        &self,
        table: TableDefinition<u32, &[u8]>,
        id: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| Ok(txn.open_table(table)?.get(id)?.map(|v| v.value().to_vec())))
    }

    /// Saves the engine's snapshot, taken when the sample log's next
    /// offset was `offset`: a restart restores it and replays the samples
    /// from `offset` on.
    pub fn save_snapshot(&self, offset: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut value = Vec::with_capacity(8 + snapshot.len());
            value.extend_from_slice(&offset.to_le_bytes());
            value.extend_from_slice(snapshot);
            txn.open_table(SNAPSHOTS)?
                .insert(ENGINE_SNAPSHOT, value.as_slice())?;
            Ok(())
        })
    }

    /// The engine's last snapshot and the log offset it was taken at.
    pub fn load_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let Some(v) = txn.open_table(SNAPSHOTS)?.get(ENGINE_SNAPSHOT)? else {
                return Ok(None);
            };
            let bytes = v.value();
            let offset = bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| redb::Error::Corrupted("engine snapshot record".into()))?;
            Ok(Some((offset, bytes[8..].to_vec())))
        })
    }

    /// Rules created through the HTTP API, as JSON by name.
    pub fn api_rules(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            txn.open_table(API_RULES)?
                .iter()?
                .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
                .collect::<Result<_, _>>()
                .map_err(Into::into)
        })
    }

    pub fn put_api_rule(&self, name: &str, json: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(API_RULES)?.insert(name, json)?;
            Ok(())
        })
    }

    pub fn delete_api_rule(&self, name: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(API_RULES)?.remove(name)?;
            Ok(())
        })
    }

    /// The newest `limit` alert notifications, newest first.
    pub fn alert_history(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|txn| {
            txn.open_table(ALERT_HISTORY)?
                .iter()?
                .rev()
                .take(limit)
                .map(|r| r.map(|(_, v)| v.value().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(Into::into)
        })
    }

    /// The offset the next stored sample gets.
    pub fn samples_next(&self) -> Result<u64, StoreError> {
        self.counter(SAMPLES_NEXT)
    }

    /// The admission state of every device (see `sequencer`).
    pub fn devices(&self) -> Result<HashMap<String, DeviceSeq>, StoreError> {
        self.read(|txn| {
            let mut out = HashMap::new();
            for entry in txn.open_table(DEVICES)?.iter()? {
                let (k, v) = entry?;
                let state = DeviceSeq::decode(v.value()).ok_or_else(|| {
                    redb::Error::Corrupted(format!("device `{}` state does not decode", k.value()))
                })?;
                out.insert(k.value().to_string(), state);
            }
            Ok(out)
        })
    }

    /// A persistent counter (see the constants of this module).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        self.read(|txn| {
            Ok(txn
                .open_table(COUNTERS)?
                .get(name)?
                .map_or(0, |v| v.value()))
        })
    }

    /// Sizes for monitoring, read in one transaction.
    pub fn gauges(&self) -> Result<StoreGauges, StoreError> {
        let file_bytes = std::fs::metadata(self.path.as_path()).map_or(0, |m| m.len());
        self.read(|txn| {
            let counters = txn.open_table(COUNTERS)?;
            let counter = |name: &str| -> Result<u64, redb::Error> {
                Ok(counters.get(name)?.map_or(0, |v| v.value()))
            };
            let outbox_next = counter(OUTBOX_NEXT)?;
            let offsets = txn.open_table(SINK_OFFSETS)?;
            let mut sinks = Vec::new();
            for entry in offsets.iter()? {
                let (k, v) = entry?;
                sinks.push((k.value().to_string(), outbox_next.saturating_sub(v.value())));
            }
            Ok(StoreGauges {
                samples: txn.open_table(SAMPLES)?.len()?,
                sample_bytes: counter(SAMPLES_BYTES)?,
                outbox: txn.open_table(OUTBOX)?.len()?,
                sink_lag: sinks,
                devices: txn.open_table(DEVICES)?.len()?,
                file_bytes,
            })
        })
    }

    /// Bytes of sample records in the log.
    pub fn sample_bytes(&self) -> Result<u64, StoreError> {
        self.counter(SAMPLES_BYTES)
    }

    /// Number of samples in the log.
    pub fn sample_count(&self) -> Result<u64, StoreError> {
        self.read(|txn| Ok(txn.open_table(SAMPLES)?.len()?))
    }

    /// Calls `f` for every stored sample, oldest first.
    pub fn for_each_sample(&self, f: impl FnMut(u64, StoredSample)) -> Result<(), StoreError> {
        self.for_each_sample_from(0, f)
    }

    /// The stored samples `filter` keeps, in log order (not event-time
    /// order: the log is scanned whole), handed to `chunk` in vectors of
    /// at most `max_chunk` samples, so memory holds one chunk whatever
    /// the log's size. One read transaction: the scan sees the log as it
    /// was when it began, and commits meanwhile are not seen. `chunk`
    /// returns [`ControlFlow::Break`] to stop the scan early (its
    /// consumer is gone).
    ///
    /// Errors: [`StoreError::Db`] for I/O errors and records that do not
    /// decode.
    pub fn scan_samples(
        &self,
        filter: &SampleFilter,
        max_chunk: usize,
        mut chunk: impl FnMut(Vec<StoredSample>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let max_chunk = max_chunk.max(1);
        self.read(|txn| {
            let mut samples = Vec::with_capacity(max_chunk);
            for entry in txn.open_table(SAMPLES)?.iter()? {
                let (k, v) = entry?;
                let sample =
                    StoredSample::decode(v.value()).ok_or_else(|| corrupt("samples", k.value()))?;
                if !filter.keeps(&sample) {
                    continue;
                }
                samples.push(sample);
                if samples.len() == max_chunk {
                    let full = std::mem::replace(&mut samples, Vec::with_capacity(max_chunk));
                    if chunk(full).is_break() {
                        return Ok(());
                    }
                }
            }
            if !samples.is_empty() {
                let _ = chunk(samples);
            }
            Ok(())
        })
    }

    /// Every stored sample from offset `from` on, in log order.
    pub fn for_each_sample_from(
        &self,
        from: u64,
        mut f: impl FnMut(u64, StoredSample),
    ) -> Result<(), StoreError> {
        self.read(|txn| {
            for entry in txn.open_table(SAMPLES)?.range(from..)? {
                let (k, v) = entry?;
                let sample =
                    StoredSample::decode(v.value()).ok_or_else(|| corrupt("samples", k.value()))?;
                f(k.value(), sample);
            }
            Ok(())
        })
    }
}
