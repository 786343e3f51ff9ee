//! Salvage: what still reads from a damaged store file, copied into a new
//! store. The damaged file is only read; the gateway refuses it at start
//! (redb's integrity check), and this is the way to keep its readable part.
//!
//! The logs (samples, outbox, alert history) are keyed by dense `u64`
//! offsets. A read that fails (a checksum, a page that does not decode,
//! or a panic inside redb on garbage) ends a run; the next readable offset
//! is found by probing `range(k..)` at doubling distances and then by
//! bisection, so one damaged page costs the records on it, not the rest
//! of the log. Small tables (offsets, counters, devices, campaigns, rules,
//! snapshots) are copied entry by entry until the first failure.
//!
//! redb verifies its page checksums only in the integrity check, not on
//! reads, so a damaged page can also read "successfully" with wrong
//! bytes. Every record is decoded before it is copied (samples, outbox
//! records, alert history, device states): one that does not decode is
//! left out and named. Damage that still decodes (a flipped bit inside a
//! value) cannot be told apart from the truth; it stays within the
//! damaged page's records.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    ALERT_HISTORY, ALERTS_NEXT, API_RULES, CAMPAIGN_IMAGES, CAMPAIGNS, COUNTERS, DEVICES, OUTBOX,
    OUTBOX_NEXT, OutboxRecord, SAMPLES, SAMPLES_BYTES, SAMPLES_NEXT, SINK_OFFSETS, SNAPSHOTS,
    Store, StoreError, StoredSample,
};
use crate::sequencer::DeviceSeq;

/// Records copied per write transaction into the new store.
const BATCH: usize = 10_000;

/// What [`Store::salvage`] copied from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSalvage {
    /// The table's name in the file.
    pub table: &'static str,
    /// Records copied.
    pub copied: u64,
    /// What could not be read: offset ranges of a log, or where a small
    /// table's copy stopped. Empty when the whole table read.
    pub unreadable: Vec<String>,
}

/// The outcome of a salvage, table by table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub tables: Vec<TableSalvage>,
}

impl Salvaged {
    /// Whether every table read whole.
    pub fn complete(&self) -> bool {
        self.tables.iter().all(|t| t.unreadable.is_empty())
    }
}

/// Runs `f`, turning a panic inside redb into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("redb panicked reading it".into()),
    }
}

type Log = TableDefinition<'static, u64, &'static [u8]>;

/// Whether a record's bytes decode as what its table holds.
type Decodes = fn(&[u8]) -> bool;

/// Whether the first record at or after `from` reads: `Some(key)` of it,
/// `None` when there is none; `Err` when the read fails.
fn first_from(db: &impl ReadableDatabase, log: Log, from: u64) -> Result<Option<u64>, String> {
    guarded(|| {
        let txn = db.begin_read()?;
        let table = txn.open_table(log)?;
        let mut range = table.range(from..)?;
        match range.next() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry?;
                let _ = v.value();
                Ok(Some(k.value()))
            }
        }
    })
}

/// The first offset after `failed` from which reading works again (and
/// the key it finds there), or `None` if nothing after it reads.
fn next_readable(db: &impl ReadableDatabase, log: Log, failed: u64) -> Option<(u64, Option<u64>)> {
    // Doubling distances find a start past the damage...
    let mut step = 1u64;
    let found = loop {
        let at = failed.checked_add(step)?;
        if let Ok(key) = first_from(db, log, at) {
            break (at, key);
        }
        step = step.checked_mul(2)?;
    };
    // ...and bisection the first such start.
    let (mut bad, mut good) = (failed + step / 2, found);
    while good.0 - bad > 1 {
        let mid = bad + (good.0 - bad) / 2;
        match first_from(db, log, mid) {
            Ok(key) => good = (mid, key),
            Err(_) => bad = mid,
        }
    }
    Some(good)
}

/// Copies the readable records of `log` that `decodes` into `into`;
/// returns the report, the last offset read and the bytes copied.
fn copy_log(
    db: &impl ReadableDatabase,
    into: &Store,
    log: Log,
    name: &'static str,
    decodes: Decodes,
) -> Result<(TableSalvage, Option<u64>, u64), StoreError> {
    let mut report = TableSalvage {
        table: name,
        copied: 0,
        unreadable: Vec::new(),
    };
    let mut last = None::<u64>;
    let mut undecodable = Vec::new();
    let mut from = 0u64;
    loop {
        // One run: records from `from` on, until the end or a failure.
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
        let run = guarded(|| {
            let txn = db.begin_read()?;
            let table = txn.open_table(log)?;
            for entry in table.range(from..)? {
                let (k, v) = entry?;
                batch.push((k.value(), v.value().to_vec()));
                if batch.len() == BATCH {
                    break;
                }
            }
            Ok(())
        });
        let (read, before) = (batch.len(), from);
        if let Some(&(k, _)) = batch.last() {
            last = last.max(Some(k));
            from = from.max(k + 1);
        }
        // Garbage keys that do not move forward end the run like a failure.
        let run = match run {
            Ok(()) if read == BATCH && from == before => Err("keys out of order".to_string()),
            run => run,
        };
        batch.retain(|(k, v)| {
            let ok = decodes(v);
            if !ok {
                undecodable.push(*k);
            }
            ok
        });
        into.write(|txn| {
            let mut table = txn.open_table(log)?;
            for (k, v) in &batch {
                table.insert(*k, v.as_slice())?;
            }
            Ok(())
        })?;
        match run {
            Ok(()) if read == BATCH => continue,
            Ok(()) => break,
            Err(reason) => match next_readable(db, log, from) {
                Some((start, Some(key))) => {
                    report
                        .unreadable
                        .push(format!("offsets {from}..{key} ({reason})"));
                    from = key.max(start);
                }
                Some((_, None)) | None => {
                    report
                        .unreadable
                        .push(format!("offsets {from} and after ({reason})"));
                    break;
                }
            },
        }
    }
    // A damaged page can repeat keys or hide records without an error:
    // count what the new log holds, and name its gaps (a log is trimmed
    // only at its old end, so its offsets are contiguous).
    let (gaps, bytes) = into.read(|txn| {
        let table = txn.open_table(log)?;
        report.copied = table.len()?;
        let (mut gaps, mut bytes) = (Vec::new(), 0u64);
        let mut expected = None::<u64>;
        for entry in table.iter()? {
            let (k, v) = entry?;
            let k = k.value();
            bytes += v.value().len() as u64;
            if let Some(e) = expected
                && k > e
            {
                gaps.push((e, k));
            }
            expected = Some(k + 1);
        }
        Ok((gaps, bytes))
    })?;
    let missing: u64 = gaps.iter().map(|(a, b)| b - a).sum();
    if !gaps.is_empty() {
        let shown: Vec<String> = gaps
            .iter()
            .take(10)
            .map(|(a, b)| format!("{a}..{b}"))
            .collect();
        report.unreadable.push(format!(
            "{missing} records missing without a read error (offsets {}{})",
            shown.join(", "),
            if gaps.len() > 10 { ", ..." } else { "" }
        ));
    }
    if !undecodable.is_empty() {
        let shown: Vec<String> = undecodable.iter().take(10).map(u64::to_string).collect();
        report.unreadable.push(format!(
            "{} records that do not decode (offsets {}{})",
            undecodable.len(),
            shown.join(", "),
            if undecodable.len() > 10 { ", ..." } else { "" }
        ));
    }
    Ok((report, last, bytes))
}

/// An owned key or value read from a table, lent back for an insert.
trait Lend {
    type Lent<'a>
    where
        Self: 'a;
    fn lend(&self) -> Self::Lent<'_>;
}

impl Lend for String {
    type Lent<'a> = &'a str;
    fn lend(&self) -> &str {
        self
    }
}

impl Lend for Vec<u8> {
    type Lent<'a> = &'a [u8];
    fn lend(&self) -> &[u8] {
        self
    }
}

impl Lend for u64 {
    type Lent<'a> = u64;
    fn lend(&self) -> u64 {
        *self
    }
}

impl Lend for u32 {
    type Lent<'a> = u32;
    fn lend(&self) -> u32 {
        *self
    }
}

/// Copies a small table entry by entry until the first failure.
macro_rules! copy_table {
    ($db:expr, $into:expr, $def:expr, $name:literal) => {
        copy_table!($db, $into, $def, $name, |_| true)
    };
    ($db:expr, $into:expr, $def:expr, $name:literal, $decodes:expr) => {{
        let mut entries = Vec::new();
        let mut undecodable = 0usize;
        let read = guarded(|| {
            let txn = $db.begin_read()?;
            let table = txn.open_table($def)?;
            for entry in table.iter()? {
                let (k, v) = entry?;
                if $decodes(&v.value()) {
                    entries.push((k.value().to_owned(), v.value().to_owned()));
                } else {
                    undecodable += 1;
                }
            }
            Ok(())
        });
        $into.write(|txn| {
            let mut table = txn.open_table($def)?;
            for (k, v) in &entries {
                table.insert(k.lend(), v.lend())?;
            }
            Ok(())
        })?;
        TableSalvage {
            table: $name,
            copied: entries.len() as u64,
            unreadable: match read {
                Ok(()) => vec![],
                Err(reason) => vec![format!("after {} entries ({reason})", entries.len())],
            }
            .into_iter()
            .chain((undecodable > 0).then(|| format!("{undecodable} entries that do not decode")))
            .collect(),
        }
    }};
}

impl Store {
    /// Copies what still reads from the damaged store file `damaged` into
    /// a new store at `into` (which must not exist), and reports per table
    /// what was copied and what could not be read. `damaged` is opened
    /// read-only in effect (no integrity check, nothing written).
    ///
    /// The logs' next offsets are kept past every copied record, so a
    /// gateway started on the new store appends after them and its sinks
    /// resume from their stored offsets.
    ///
    /// Errors: [`StoreError::Damaged`] when redb cannot open `damaged` at
    /// all (its header is gone: nothing can be salvaged);
    /// [`StoreError::Db`] when `into` exists or cannot be written.
    pub fn salvage(damaged: &Path, into: &Path) -> Result<Salvaged, StoreError> {
        if into.exists() {
            return Err(StoreError::Db {
                path: into.to_path_buf(),
                source: redb::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the salvage target exists; give a new path",
                )),
            });
        }
        let damaged_err = |reason: String| StoreError::Damaged {
            path: PathBuf::from(damaged),
            reason,
        };
        let mut builder = redb::Builder::new();
        builder.set_check_integrity_on_open(false);
        // Read-only: nothing is written to the damaged file, not even at
        // close. A file that needs redb's crash recovery first is copied,
        // and the copy recovered and read (then removed).
        match catch_unwind(AssertUnwindSafe(|| builder.open_read_only(damaged))) {
            Ok(Ok(db)) => copy_all(&db, into),
            _ => {
                let work = into.with_extension("salvage-work");
                std::fs::copy(damaged, &work).map_err(|e| StoreError::Db {
                    path: work.clone(),
                    source: e.into(),
                })?;
                let salvaged = match catch_unwind(AssertUnwindSafe(|| builder.open(&work))) {
                    Err(_) => Err(damaged_err("redb panicked opening it".into())),
                    Ok(Err(e)) => Err(damaged_err(format!("redb cannot open it: {e}"))),
                    Ok(Ok(db)) => {
                        let salvaged = copy_all(&db, into);
                        // Closing commits to the copy, which may panic on
                        // its damage; the copy is discarded either way.
                        let _ = catch_unwind(AssertUnwindSafe(|| drop(db)));
                        salvaged
                    }
                };
                let _ = std::fs::remove_file(&work);
                salvaged
            }
        }
    }
}

/// Copies every table of `db` into a new store at `into`.
fn copy_all(db: &impl ReadableDatabase, into: &Path) -> Result<Salvaged, StoreError> {
    let store = Store::open(into)?;
    let mut tables = Vec::new();
    let mut nexts = Vec::new();
    let mut sample_bytes = 0;
    let logs: [(Log, &str, &str, Decodes); 3] = [
        (SAMPLES, "samples", SAMPLES_NEXT, |v| {
            StoredSample::decode(v).is_some()
        }),
        (OUTBOX, "outbox", OUTBOX_NEXT, |v| {
            OutboxRecord::decode(v).is_some()
        }),
        (ALERT_HISTORY, "alert_history", ALERTS_NEXT, |v| {
            serde_json::from_slice::<serde_json::Value>(v).is_ok()
        }),
    ];
    for (log, name, next, decodes) in logs {
        let (report, last, bytes) = copy_log(db, &store, log, name, decodes)?;
        if name == "samples" {
            sample_bytes = bytes;
        }
        tables.push(report);
        nexts.push((next, last.map_or(0, |l| l + 1)));
    }
    tables.push(copy_table!(db, store, COUNTERS, "counters"));
    tables.push(copy_table!(db, store, SINK_OFFSETS, "sink_offsets"));
    tables.push(copy_table!(db, store, DEVICES, "devices", |v: &&[u8]| {
        DeviceSeq::decode(v).is_some()
    }));
    tables.push(copy_table!(db, store, CAMPAIGNS, "ota_campaigns"));
    tables.push(copy_table!(db, store, CAMPAIGN_IMAGES, "ota_images"));
    tables.push(copy_table!(db, store, SNAPSHOTS, "snapshots"));
    tables.push(copy_table!(db, store, API_RULES, "api_rules"));
    // Counters that describe the logs follow what was copied.
    let tails = store.write(|txn| {
        let mut counters = txn.open_table(COUNTERS)?;
        let mut tails = Vec::new();
        for (i, (name, past_last)) in nexts.iter().enumerate() {
            let kept = counters.get(*name)?.map_or(0, |v| v.value());
            if kept > *past_last {
                tails.push((i, *past_last, kept));
            }
            counters.insert(*name, kept.max(*past_last))?;
        }
        counters.insert(SAMPLES_BYTES, sample_bytes)?;
        Ok(tails)
    })?;
    // Records the log's next offset says were written after the last
    // one read.
    for (i, from, next) in tails {
        tables[i].unreadable.push(format!(
            "{} records at the end missing (offsets {from}..{next})",
            next - from
        ));
    }
    Ok(Salvaged { tables })
}
