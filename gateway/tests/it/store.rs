//! The redb store: logs, offsets, caps, and files that are not stores.

use eddy_gateway::config::{DurabilityMode, FullPolicy};
use eddy_gateway::sequencer::DeviceSeq;
use eddy_gateway::store::{
    Batch, Limits, OUTBOX_DROPPED, OutboxRecord, SAMPLES_DROPPED, SAMPLES_EXPIRED, Store,
    StoreError, StoredSample,
};

fn samples(samples: &[StoredSample]) -> Batch {
    Batch {
        samples: samples.to_vec(),
        ..Batch::default()
    }
}

fn outbox(records: &[OutboxRecord]) -> Batch {
    Batch {
        outbox: records.to_vec(),
        ..Batch::default()
    }
}

fn sample(device: &str, ts_ms: i64) -> StoredSample {
    StoredSample {
        device: device.into(),
        metric: "temperature".into(),
        ts_ms,
        value: ts_ms as f64 / 10.0,
        frame: (ts_ms % 2 == 0).then_some((7, ts_ms as u32)),
    }
}

fn record(i: u64) -> OutboxRecord {
    OutboxRecord {
        topic: format!("agg/d/{i}"),
        payload: format!("{{\"n\":{i}}}").into_bytes(),
    }
}

#[test]
fn samples_round_trip_in_order_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.redb");
    {
        let store = Store::open(&path).expect("opens");
        store
            .commit_batch(&samples(&[sample("a", 1), sample("b", -5)]), Limits::NONE)
            .expect("commits");
        store
            .commit_batch(&samples(&[sample("a", 2)]), Limits::NONE)
            .expect("commits");
    }
    let store = Store::open(&path).expect("reopens");
    let mut got = Vec::new();
    store
        .for_each_sample(|offset, s| got.push((offset, s)))
        .expect("reads");
    assert_eq!(
        got,
        vec![
            (0, sample("a", 1)),
            (1, sample("b", -5)),
            (2, sample("a", 2))
        ]
    );
}

#[test]
fn outbox_offsets_stay_monotonic_after_the_outbox_drains_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    store
        .commit_batch(&outbox(&[record(0), record(1)]), Limits::NONE)
        .expect("commits");
    store.advance_sink("up", 2).expect("advances");
    assert_eq!(
        store.outbox_pending(0).expect("reads"),
        0,
        "delivered records are trimmed"
    );
    // New records continue after the sink's offset, not from zero.
    store
        .commit_batch(&outbox(&[record(2)]), Limits::NONE)
        .expect("commits");
    let from = store.sink_offset("up").expect("reads");
    let pending = store.outbox_from(from, 10).expect("reads");
    assert_eq!(pending, vec![(2, record(2))]);
}

#[test]
fn a_sink_offset_never_moves_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    store.advance_sink("up", 5).expect("advances");
    store.advance_sink("up", 3).expect("ignored");
    assert_eq!(store.sink_offset("up").expect("reads"), 5);
}

#[test]
fn a_full_outbox_drops_the_oldest_and_moves_sinks_past_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    store.advance_sink("up", 0).expect("registers the sink");
    let records: Vec<_> = (0..5).map(record).collect();
    let c = store
        .commit_batch(
            &outbox(&records),
            Limits {
                max_outbox: 3,
                ..Limits::NONE
            },
        )
        .expect("commits");
    assert_eq!((c.outbox, c.outbox_dropped), (5, 2));
    assert_eq!(store.counter(OUTBOX_DROPPED).expect("reads"), 2);
    let from = store.sink_offset("up").expect("reads");
    assert_eq!(from, 2);
    let offsets: Vec<u64> = store
        .outbox_from(from, 10)
        .expect("reads")
        .iter()
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(offsets, vec![2, 3, 4]);
}

#[test]
fn a_file_that_is_not_a_store_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("write");
    match Store::open(&path) {
        Err(e @ StoreError::Db { .. }) => assert!(e.to_string().contains("garbage.redb"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_truncated_store_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.redb");
    {
        let store = Store::open(&path).expect("opens");
        let many: Vec<_> = (0..2000).map(|i| sample("d", i)).collect();
        store
            .commit_batch(&samples(&many), Limits::NONE)
            .expect("commits");
    }
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    match Store::open(&path) {
        Err(e) => assert!(e.to_string().contains("t.redb"), "{e}"),
        Ok(_) => panic!("a store cut to a third opened as if whole"),
    }
}

/// A store of 20,000 samples, closed cleanly; its path and length.
fn written_store(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let path = dir.join("eddy.redb");
    let store = Store::open(&path).expect("opens");
    for chunk in 0..10 {
        let many: Vec<_> = (0..2000).map(|i| sample("d", chunk * 2000 + i)).collect();
        store
            .commit_batch(&samples(&many), Limits::NONE)
            .expect("commits");
    }
    drop(store);
    let len = std::fs::metadata(&path).expect("stat").len();
    (path, len)
}

/// Overwrites `bytes` at `at` in the file.
fn overwrite(path: &std::path::Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(bytes).expect("write");
}

#[test]
fn a_damaged_store_is_refused_at_open_never_reset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let expect_damaged = |path: &std::path::Path, case: &str| match Store::open(path) {
        Err(e @ StoreError::Damaged { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("eddy.redb") && text.contains("mv "),
                "{case}: {text}"
            );
        }
        Err(e) => panic!("{case}: expected Damaged, got {e}"),
        Ok(_) => panic!("{case}: a damaged store opened"),
    };
    // Flipped bytes in the middle.
    let (path, len) = written_store(dir.path());
    overwrite(&path, len / 2, &[0xa5; 16]);
    expect_damaged(&path, "flipped bytes");
    // A zeroed 4 KiB block.
    std::fs::remove_file(&path).expect("remove");
    let (path, len) = written_store(dir.path());
    overwrite(&path, (len / 3) & !4095, &[0; 4096]);
    expect_damaged(&path, "zeroed block");
    // Cut to nothing: not a new empty store.
    std::fs::write(&path, b"").expect("truncate");
    expect_damaged(&path, "empty file");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        0,
        "left as it was"
    );
    // An intact store still opens, with everything in it.
    std::fs::remove_file(&path).expect("remove");
    let (path, _) = written_store(dir.path());
    let store = Store::open(&path).expect("intact");
    let mut n = 0;
    store.for_each_sample(|_, _| n += 1).expect("readable");
    assert_eq!(n, 20_000);
}

#[test]
fn a_full_sample_log_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    let limits = Limits {
        max_samples: 5,
        ..Limits::NONE
    };
    let first: Vec<_> = (0..4).map(|i| sample("d", i)).collect();
    let c = store
        .commit_batch(&samples(&first), limits)
        .expect("commits");
    assert_eq!(c.samples_dropped, 0);
    let second: Vec<_> = (4..8).map(|i| sample("d", i)).collect();
    let c = store
        .commit_batch(&samples(&second), limits)
        .expect("commits");
    assert_eq!(c.samples_dropped, 3);
    assert_eq!(store.counter(SAMPLES_DROPPED).expect("reads"), 3);
    let mut kept = Vec::new();
    store
        .for_each_sample(|offset, s| kept.push((offset, s.ts_ms)))
        .expect("reads");
    assert_eq!(
        kept,
        vec![(3, 3), (4, 4), (5, 5), (6, 6), (7, 7)],
        "newest kept, offsets unchanged"
    );
}

#[test]
fn device_sequence_state_commits_with_the_samples_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.redb");
    let state = DeviceSeq {
        boot: 9,
        next: 41,
        previous_boot: 3,
    };
    {
        let store = Store::open(&path).expect("opens");
        let batch = Batch {
            devices: vec![("dev-1".into(), state)],
            ..samples(&[sample("dev-1", 40)])
        };
        store.commit_batch(&batch, Limits::NONE).expect("commits");
    }
    let store = Store::open(&path).expect("reopens");
    let devices = store.devices().expect("reads");
    assert_eq!(devices.get("dev-1"), Some(&state));
    assert_eq!(devices.len(), 1);
    let mut got = Vec::new();
    store
        .for_each_sample(|_, s| got.push(s.frame))
        .expect("reads");
    assert_eq!(got, vec![Some((7, 40))]);
}

#[test]
fn samples_older_than_max_age_are_deleted_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let limits = Limits {
        max_age_ms: Some(3_600_000),
        ..Limits::NONE
    };
    // Two samples from two hours ago, two from a minute ago.
    let batch = [
        sample("d", now - 7_200_000),
        sample("d", now - 7_100_000),
        sample("d", now - 60_000),
        sample("d", now - 59_000),
    ];
    let c = store
        .commit_batch(&samples(&batch), limits)
        .expect("commits");
    assert_eq!((c.samples, c.samples_expired, c.full), (4, 2, false));
    assert_eq!(store.counter(SAMPLES_EXPIRED).expect("reads"), 2);
    assert_eq!(store.sample_count().expect("reads"), 2);
}

#[test]
fn the_byte_cap_drops_the_oldest_under_drop_oldest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    // Each test sample record is 17 + 9 (frame) + 1 + 11 bytes or so; a
    // budget of 10 records' bytes keeps at most 10.
    let one = {
        let c = store
            .commit_batch(&samples(&[sample("d", 0)]), Limits::NONE)
            .expect("commits");
        assert_eq!(c.samples, 1);
        store.sample_bytes().expect("reads")
    };
    let limits = Limits {
        max_sample_bytes: one * 10,
        ..Limits::NONE
    };
    let many: Vec<_> = (2..42).step_by(2).map(|i| sample("d", i)).collect();
    let c = store
        .commit_batch(&samples(&many), limits)
        .expect("commits");
    assert_eq!(c.samples_dropped, 11);
    assert!(c.full, "at the cap after trimming to it");
    assert_eq!(store.sample_count().expect("reads"), 10);
    assert_eq!(store.sample_bytes().expect("reads"), one * 10);
    let mut oldest = None;
    store
        .for_each_sample(|_, s| {
            oldest.get_or_insert(s.ts_ms);
        })
        .expect("reads");
    assert_eq!(oldest, Some(22), "the newest ten are kept");
}

#[test]
fn under_refuse_a_full_log_keeps_everything_and_reports_full() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("s.redb")).expect("opens");
    let limits = Limits {
        max_samples: 3,
        on_full: FullPolicy::Refuse,
        ..Limits::NONE
    };
    let c = store
        .commit_batch(&samples(&[sample("d", 0), sample("d", 2)]), limits)
        .expect("commits");
    assert!(!c.full);
    let c = store
        .commit_batch(&samples(&[sample("d", 4)]), limits)
        .expect("commits");
    assert!(c.full);
    assert_eq!(
        (c.samples_dropped, store.sample_count().expect("reads")),
        (0, 3)
    );
}

#[test]
fn commits_without_fsync_are_readable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.redb");
    let limits = Limits {
        durability: DurabilityMode::None,
        ..Limits::NONE
    };
    let store = Store::open(&path).expect("opens");
    store
        .commit_batch(&samples(&[sample("d", 0)]), limits)
        .expect("commits");
    assert_eq!(store.sample_count().expect("reads"), 1);
}

#[test]
fn salvage_copies_what_reads_from_a_damaged_store_and_names_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, len) = written_store(dir.path());
    let original: Vec<StoredSample> = {
        let store = Store::open(&path).expect("intact");
        store
            .commit_batch(
                &outbox(&(0..50).map(record).collect::<Vec<_>>()),
                Limits::NONE,
            )
            .expect("commits");
        let mut all = Vec::new();
        store.for_each_sample(|_, s| all.push(s)).expect("readable");
        all
    };
    overwrite(&path, (len / 2) & !4095, &[0; 4096]);
    assert!(Store::open(&path).is_err(), "the damage is detected");

    let into = dir.path().join("salvaged.redb");
    let damaged = std::fs::read(&path).expect("read");
    let salvaged = Store::salvage(&path, &into).expect("salvage runs");
    eprintln!("{salvaged:#?}");
    assert!(
        std::fs::read(&path).expect("read") == damaged,
        "the damaged file is left as it was"
    );
    let log = salvaged
        .tables
        .iter()
        .find(|t| t.table == "samples")
        .expect("the sample log");
    // The new store passes the integrity check and holds only records
    // that were stored, each at its offset.
    let store = Store::open(&into).expect("the salvaged store is whole");
    let mut copied = Vec::new();
    store
        .for_each_sample(|offset, s| copied.push((offset, s)))
        .expect("readable");
    assert_eq!(copied.len() as u64, log.copied);
    for (offset, s) in &copied {
        assert_eq!(&original[*offset as usize], s, "offset {offset}");
    }
    assert!(
        !log.unreadable.is_empty() && log.copied < original.len() as u64,
        "the zeroed block held samples: {salvaged:?}"
    );
    assert!(
        log.copied > original.len() as u64 / 2,
        "one damaged page costs the records on it, not the rest: {salvaged:?}"
    );
    assert!(
        !salvaged.intact && !salvaged.complete(),
        "the file fails the integrity check: {salvaged:?}"
    );
    // Each lost offset is named once.
    assert_eq!(log.unreadable.len(), 1, "{salvaged:?}");
    // Appends go after the copied offsets.
    store
        .commit_batch(&samples(&[sample("d", 99_999)]), Limits::NONE)
        .expect("commits");
    let mut last = None;
    store
        .for_each_sample(|offset, s| last = Some((offset, s.ts_ms)))
        .expect("readable");
    assert_eq!(last, Some((original.len() as u64, 99_999)));
    // A second salvage never overwrites a store.
    assert!(Store::salvage(&path, &into).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..Default::default()
    })]

    /// Whatever block is damaged, and however: salvage never fails on a
    /// file redb can open, the new store passes the integrity check and
    /// every record in it decodes; records differing from the ones stored
    /// at their offsets (damage that still decodes: redb checks page
    /// checksums only in its integrity check) are no more than the damaged
    /// pages held (a 4 KiB page holds fewer than 100 samples here).
    #[test]
    fn salvage_of_any_damaged_block_keeps_only_true_records(
        at in 0.0f64..1.0,
        len in 1usize..8192,
        byte in proptest::prelude::any::<u8>(),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, size) = written_store(dir.path());
        let original: Vec<StoredSample> = {
            let mut all = Vec::new();
            Store::open(&path).expect("intact").for_each_sample(|_, s| all.push(s)).expect("readable");
            all
        };
        overwrite(&path, ((size as f64 * at) as u64).max(4096), &vec![byte; len]);
        let into = dir.path().join("salvaged.redb");
        match Store::salvage(&path, &into) {
            // The header and the roots are beyond reach: a clear error.
            Err(StoreError::Unsalvageable { reason, .. }) => {
                proptest::prop_assert!(reason.contains("redb"), "{reason}");
            }
            Err(e) => proptest::prop_assert!(false, "{e}"),
            Ok(salvaged) => {
                let store = Store::open(&into).expect("the salvaged store is whole");
                let mut n = 0u64;
                let mut wrong = Vec::new();
                store
                    .for_each_sample(|offset, s| {
                        n += 1;
                        if original.get(offset as usize) != Some(&s) {
                            wrong.push(offset);
                        }
                    })
                    .expect("readable");
                proptest::prop_assert!(wrong.len() <= (len / 4096 + 2) * 100, "{wrong:?}");
                let log = &salvaged.tables[0];
                proptest::prop_assert_eq!(log.table, "samples");
                proptest::prop_assert_eq!(n, log.copied);
                if n < original.len() as u64 {
                    proptest::prop_assert!(!log.unreadable.is_empty(), "{salvaged:?}");
                }
            }
        }
    }
}

#[test]
fn salvage_of_an_intact_store_is_complete_and_of_one_cut_short_pads_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, len) = written_store(dir.path());
    let whole = Store::salvage(&path, &dir.path().join("a.redb")).expect("salvage runs");
    assert!(whole.intact && whole.complete(), "{whole:?}");
    assert_eq!(whole.tables[0].copied, 20_000);
    // Cut 100 bytes short: `eddy run` refuses it; salvage reads it as if
    // padded with zeros, and leaves the file as it is.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len - 100).expect("truncate");
    drop(f);
    assert!(Store::open(&path).is_err());
    let short = Store::salvage(&path, &dir.path().join("b.redb")).expect("salvage runs");
    assert!(!short.intact, "{short:?}");
    // The records in the last 100 bytes are zeros now, and named.
    let log = &short.tables[0];
    assert!(log.copied >= 19_990, "{short:?}");
    assert_eq!(log.copied < 20_000, !log.unreadable.is_empty(), "{short:?}");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), len - 100);
    // Nothing to read: a clear error, nothing written.
    let missing = Store::salvage(&dir.path().join("none.redb"), &dir.path().join("c.redb"));
    assert!(
        matches!(missing, Err(StoreError::Unsalvageable { .. })),
        "{missing:?}"
    );
    assert!(!dir.path().join("c.redb").exists());
}
