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

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;

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
    /// Whether the file passed redb's integrity check (every page's
    /// checksum). When it did not, records on its damaged pages that
    /// still decode (names checked, values plausible) cannot be told
    /// apart from what was stored.
    pub intact: bool,
    pub tables: Vec<TableSalvage>,
}

impl Salvaged {
    /// Whether the file was intact and every table read whole.
    pub fn complete(&self) -> bool {
        self.intact && self.tables.iter().all(|t| t.unreadable.is_empty())
    }
}

/// Runs `f`, turning a panic inside redb into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a page does not decode".into()),
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

/// The parts of the gap `a..b` not already named: not in a `named`
/// range, not an `undecodable` offset.
fn unnamed(a: u64, b: u64, named: &[(u64, u64)], undecodable: &[u64]) -> Vec<(u64, u64)> {
    let mut known: Vec<(u64, u64)> = named
        .iter()
        .copied()
        .chain(undecodable.iter().map(|&k| (k, k + 1)))
        .filter(|&(x, y)| x < b && y > a)
        .collect();
    known.sort_unstable();
    let (mut out, mut at) = (Vec::new(), a);
    for (x, y) in known {
        if x > at {
            out.push((at, x.min(b)));
        }
        at = at.max(y);
    }
    if at < b {
        out.push((at, b));
    }
    out
}

/// Whether a sample read from a damaged file could be one the gateway
/// stored: names it would accept, a finite value, a time between 1970
/// and 2200.
fn plausible(s: &StoredSample) -> bool {
    crate::decode::valid_device(&s.device).is_ok()
        && crate::decode::valid_metric(&s.metric).is_ok()
        && s.value.is_finite()
        && (0..7_258_118_400_000).contains(&s.ts_ms)
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
    // Offsets already named as unreadable, so the gap scan does not name
    // them again.
    let mut named: Vec<(u64, u64)> = Vec::new();
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
                    named.push((from, key));
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
                gaps.extend(unnamed(e, k, &named, &undecodable));
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
            "{missing} records missing without a read error (offsets {}{}): the damaged file does not list them",
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

/// Bytes per page of the overlay.
const PAGE: u64 = 4096;

/// The damaged file as a redb storage backend: reads come from the file
/// (zeros past its end, up to the length redb is told), and writes (redb's
/// repair at open, its commit at close) go to pages held in memory. The
/// file itself is never written.
#[derive(Debug)]
struct Overlay {
    file: std::fs::File,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    /// The length redb sees.
    len: u64,
    /// How much of that the file backs (the rest reads as zeros).
    file_len: u64,
    pages: HashMap<u64, Vec<u8>>,
}

impl Overlay {
    /// The file at `path`, seen as `len` bytes long (its own length when
    /// `None`; a longer one pads a file cut short with zeros).
    fn open(path: &Path, len: Option<u64>) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        Ok(Self {
            file,
            state: Mutex::new(OverlayState {
                len: len.unwrap_or(file_len).max(file_len),
                file_len,
                pages: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OverlayState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Page `n` as the file (or zeros) has it.
    fn file_page(&self, state: &OverlayState, n: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut page = vec![0u8; PAGE as usize];
        let start = n * PAGE;
        if start < state.file_len {
            let len = (state.file_len - start).min(PAGE) as usize;
            self.file.read_exact_at(&mut page[..len], start)?;
        }
        Ok(page)
    }
}

impl redb::StorageBackend for Overlay {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let state = self.state();
        if offset + out.len() as u64 > state.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let (n, within) = (at / PAGE, (at % PAGE) as usize);
            let take = (PAGE as usize - within).min(out.len() - done);
            match state.pages.get(&n) {
                Some(page) => out[done..done + take].copy_from_slice(&page[within..within + take]),
                None => {
                    let page = self.file_page(&state, n)?;
                    out[done..done + take].copy_from_slice(&page[within..within + take]);
                }
            }
            done += take;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut state = self.state();
        if len < state.len {
            // What lies past the new end reads as zeros if it grows again.
            state.pages.retain(|&n, _| n * PAGE < len);
            if let Some(page) = state.pages.get_mut(&(len / PAGE)) {
                page[(len % PAGE) as usize..].fill(0);
            }
            if len < state.file_len {
                let n = len / PAGE;
                if !len.is_multiple_of(PAGE) && !state.pages.contains_key(&n) {
                    let mut page = self.file_page(&state, n)?;
                    page[(len % PAGE) as usize..].fill(0);
                    state.pages.insert(n, page);
                }
                state.file_len = len;
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut state = self.state();
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (n, within) = (at / PAGE, (at % PAGE) as usize);
            let take = (PAGE as usize - within).min(data.len() - done);
            if !state.pages.contains_key(&n) {
                let page = self.file_page(&state, n)?;
                state.pages.insert(n, page);
            }
            if let Some(page) = state.pages.get_mut(&n) {
                page[within..within + take].copy_from_slice(&data[done..done + take]);
            }
            done += take;
        }
        state.len = state.len.max(offset + data.len() as u64);
        Ok(())
    }
}

/// Opens `path` through an [`Overlay`] of `len`; redb's error or panic as
/// text.
fn open_overlay(path: &Path, len: Option<u64>, verify: bool) -> Result<redb::Database, String> {
    let overlay = Overlay::open(path, len).map_err(|e| e.to_string())?;
    let mut builder = redb::Builder::new();
    builder.set_check_integrity_on_open(verify);
    match catch_unwind(AssertUnwindSafe(|| builder.create_with_backend(overlay))) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a page redb reads at open does not decode".into()),
    }
}

/// The length redb expects from a file cut short, from its error
/// (`... layout_len=N`).
fn layout_len(error: &str) -> Option<u64> {
    let tail = error.split("layout_len=").nth(1)?;
    tail.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Closes a database opened on an [`Overlay`]; its closing commit goes
/// to memory and may trip over the damage, which changes nothing.
fn close(db: redb::Database) {
    let _ = catch_unwind(AssertUnwindSafe(|| drop(db)));
}

impl Store {
    /// Copies what still reads from the damaged store file `damaged` into
    /// a new store at `into` (which must not exist), and reports per table
    /// what was copied and what could not be read.
    ///
    /// `damaged` is never written: redb sees it through an overlay that
    /// keeps its writes (crash recovery at open, the commit at close) in
    /// memory. It is first opened with redb's integrity check
    /// ([`Salvaged::intact`] tells whether it passed), then without. A
    /// file cut short is read as if padded with zeros to the length its
    /// header records.
    ///
    /// The logs' next offsets are kept past every copied record, so a
    /// gateway started on the new store appends after them and its sinks
    /// resume from their stored offsets.
    ///
    /// Errors: [`StoreError::Unsalvageable`] when `damaged` cannot be read
    /// or redb cannot open it at all (its header or allocator state is
    /// gone); [`StoreError::Db`] when `into` exists or cannot be written.
    pub fn salvage(damaged: &Path, into: &Path) -> Result<Salvaged, StoreError> {
        let unsalvageable = |reason: String| StoreError::Unsalvageable {
            path: damaged.to_path_buf(),
            reason,
        };
        match std::fs::metadata(damaged) {
            Err(e) => return Err(unsalvageable(e.to_string())),
            Ok(m) if m.len() == 0 => return Err(unsalvageable("the file is empty".into())),
            Ok(_) => {}
        }
        if into.exists() {
            return Err(StoreError::Db {
                path: into.to_path_buf(),
                source: redb::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists already; salvage writes a new store",
                )),
            });
        }
        if let Ok(db) = open_overlay(damaged, None, true) {
            let salvaged = copy_all(&db, into, true);
            close(db);
            return salvaged;
        }
        let db = match open_overlay(damaged, None, false) {
            Ok(db) => db,
            Err(e) => match layout_len(&e) {
                Some(len) => open_overlay(damaged, Some(len), false)
                    .map_err(|e| unsalvageable(format!("redb cannot open it: {e}")))?,
                None => return Err(unsalvageable(format!("redb cannot open it: {e}"))),
            },
        };
        let salvaged = copy_all(&db, into, false);
        close(db);
        salvaged
    }
}

/// Copies every table of `db` into a new store at `into`.
fn copy_all(db: &impl ReadableDatabase, into: &Path, intact: bool) -> Result<Salvaged, StoreError> {
    let store = Store::open(into)?;
    let mut tables = Vec::new();
    let mut nexts = Vec::new();
    let mut sample_bytes = 0;
    let logs: [(Log, &str, &str, Decodes); 3] = [
        (SAMPLES, "samples", SAMPLES_NEXT, |v| {
            StoredSample::decode(v).is_some_and(|s| plausible(&s))
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
    Ok(Salvaged { intact, tables })
}
