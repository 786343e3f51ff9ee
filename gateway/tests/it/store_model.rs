//! The store against a model, with I/O failures injected through redb's
//! storage backend: commits, caps, outbox offsets, failing writes, full
//! disks that heal, crashes and restarts, in any order.
//!
//! The disk below the store keeps what was written (`live`) and what the
//! last successful sync made durable (`durable`); a crash restarts from
//! `durable`, as a power cut loses the page cache. A fault fails every
//! write, resize and sync after a number of successful writes (the way
//! redb's own crash tests inject them), so commits fail part-way.
//! Properties: a commit that returned `Ok` is in the store, after a crash
//! too; one that returned an error is in it entirely or not at all; once
//! the disk heals, the store writes again within two attempts (the first
//! may be spent reopening), and no fault ever leaves it unreadable.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use eddy_gateway::config::{DurabilityMode, FullPolicy};
use eddy_gateway::store::{Batch, Limits, OpenOptions, OutboxRecord, Store, StoredSample};
use proptest::prelude::*;

/// The storage under test: shared by every handle redb opens on it.
#[derive(Debug, Clone, Default)]
struct Disk(Arc<Mutex<DiskState>>);

#[derive(Debug, Default)]
struct DiskState {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes that still succeed before the fault; `None`: healthy.
    fault_after: Option<u32>,
}

impl Disk {
    fn state(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails when the fault is on (after its allowance of writes).
    fn io(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.state();
        match &mut state.fault_after {
            Some(0) => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            )),
            Some(n) => {
                *n -= 1;
                Ok(state)
            }
            None => Ok(state),
        }
    }
}

/// One handle redb holds on the disk.
#[derive(Debug)]
struct Backend(Disk);

impl redb::StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.state().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.0.state();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let bytes = state
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.0.io()?;
        state
            .live
            .resize(usize::try_from(len).map_err(io::Error::other)?, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.0.io()?;
        state.durable = state.live.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.0.io()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + data.len();
        if state.live.len() < end {
            state.live.resize(end, 0);
        }
        state.live[start..end].copy_from_slice(data);
        Ok(())
    }
}

const SINK: &str = "upstream";
const MAX_SAMPLES: u64 = 12;
const MAX_OUTBOX: u64 = 8;

fn limits() -> Limits {
    Limits {
        max_samples: MAX_SAMPLES,
        on_full: FullPolicy::DropOldest,
        durability: DurabilityMode::Immediate,
        max_outbox: MAX_OUTBOX,
        ..Limits::NONE
    }
}

/// What the store should hold.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    /// Sample ids, oldest first.
    samples: Vec<i64>,
    /// (offset, id) of outbox records, oldest first.
    outbox: Vec<(u64, i64)>,
    outbox_next: u64,
    /// `None` until the sink first advances.
    offset: Option<u64>,
}

impl Model {
    fn commit(&mut self, samples: &[i64], outbox: &[i64]) {
        self.samples.extend_from_slice(samples);
        let excess = self.samples.len().saturating_sub(MAX_SAMPLES as usize);
        self.samples.drain(..excess);
        for id in outbox {
            self.outbox.push((self.outbox_next, *id));
            self.outbox_next += 1;
        }
        let excess = self.outbox.len().saturating_sub(MAX_OUTBOX as usize);
        if !outbox.is_empty() && excess > 0 {
            self.outbox.drain(..excess);
            let first_kept = self.outbox.first().map_or(u64::MAX, |r| r.0);
            if let Some(o) = &mut self.offset {
                *o = (*o).max(first_kept);
            }
        }
    }

    fn advance(&mut self, to: u64) {
        if self.offset.is_none_or(|o| to > o) {
            self.offset = Some(to);
        }
        let lowest = self.offset.unwrap_or(0);
        self.outbox.retain(|r| r.0 >= lowest);
    }
}

fn batch(samples: &[i64], outbox: &[i64]) -> Batch {
    Batch {
        samples: samples
            .iter()
            .map(|&id| StoredSample {
                device: format!("d{}", id % 3),
                metric: "m".into(),
                ts_ms: id,
                value: id as f64,
                frame: None,
            })
            .collect(),
        outbox: outbox
            .iter()
            .map(|&id| OutboxRecord {
                topic: format!("agg/{id}"),
                payload: id.to_le_bytes().to_vec(),
            })
            .collect(),
        ..Batch::default()
    }
}

/// What the store holds, in the model's terms; `None` while unreadable.
fn observe(store: &Store) -> Option<Model> {
    let mut samples = Vec::new();
    store
        .for_each_sample(|_, s| samples.push(s.value as i64))
        .ok()?;
    let outbox = store
        .outbox_from(0, usize::MAX)
        .ok()?
        .into_iter()
        .map(|(offset, r)| {
            let id = i64::from_le_bytes(r.payload.as_slice().try_into().expect("8 bytes"));
            (offset, id)
        })
        .collect();
    let offset = store.sink_offset(SINK).ok()?;
    Some(Model {
        samples,
        outbox,
        outbox_next: 0,
        offset: Some(offset),
    })
}

/// Whether `seen` is what `model` says (an absent offset reads as 0).
fn agrees(model: &Model, seen: &Model) -> bool {
    model.samples == seen.samples
        && model.outbox == seen.outbox
        && model.offset.unwrap_or(0) == seen.offset.unwrap_or(0)
}

#[derive(Debug, Clone)]
enum Op {
    Commit { samples: u8, outbox: u8 },
    Advance { by: u8 },
    Fault { after: u8 },
    Heal,
    Restart { crash: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..5, 0u8..4).prop_map(|(samples, outbox)| Op::Commit { samples, outbox }),
        2 => (0u8..4).prop_map(|by| Op::Advance { by }),
        1 => (0u8..40).prop_map(|after| Op::Fault { after }),
        2 => Just(Op::Heal),
        1 => any::<bool>().prop_map(|crash| Op::Restart { crash }),
    ]
}

fn open(disk: &Disk) -> Result<Store, eddy_gateway::store::StoreError> {
    let d = disk.clone();
    let options = OpenOptions {
        cache_bytes: 1 << 20,
        verify: true,
    };
    Store::open_backend("model.redb", move || Backend(d.clone()), options)
}

/// A write that must succeed on a healthy disk within two attempts.
fn commit_healthy(store: &Store, samples: &[i64], outbox: &[i64]) {
    let first = store.commit_batch(&batch(samples, outbox), limits());
    if let Err(e) = first {
        assert!(e.is_io(), "only an I/O error may need a retry: {e}");
        store
            .commit_batch(&batch(samples, outbox), limits())
            .unwrap_or_else(|e| panic!("the healed store did not write again: {e}"));
    }
}

/// Every state the store may be in: a failed write may have landed.
#[derive(Debug)]
struct Candidates(Vec<Model>);

impl Candidates {
    fn apply(&mut self, f: impl Fn(&mut Model)) {
        self.0.iter_mut().for_each(f);
    }

    /// A write that failed: applied or not.
    fn branch(&mut self, f: impl Fn(&mut Model)) {
        let mut landed = self.0.clone();
        landed.iter_mut().for_each(f);
        for m in landed {
            if !self.0.contains(&m) {
                self.0.push(m);
            }
        }
    }

    /// Keeps the states the store agrees with; there must be one.
    fn observe(&mut self, seen: &Model) {
        self.0.retain(|m| agrees(m, seen));
        assert!(
            !self.0.is_empty(),
            "store {seen:?} differs from every state the model allows"
        );
    }
}

fn run(ops: Vec<Op>) {
    let disk = Disk::default();
    let mut store = open(&disk).expect("a new store opens");
    let mut states = Candidates(vec![Model::default()]);
    let mut next_id = 0i64;
    let mut ids = |n: u8| -> Vec<i64> {
        (0..n)
            .map(|_| {
                next_id += 1;
                next_id
            })
            .collect()
    };
    for op in ops {
        let healthy = disk.state().fault_after.is_none();
        match op {
            Op::Commit { samples, outbox } => {
                let (s, o) = (ids(samples), ids(outbox));
                let commit = |m: &mut Model| m.commit(&s, &o);
                if healthy {
                    commit_healthy(&store, &s, &o);
                    states.apply(commit);
                } else {
                    match store.commit_batch(&batch(&s, &o), limits()) {
                        Ok(_) => states.apply(commit),
                        Err(e) => {
                            assert!(e.is_io(), "a failing disk gives I/O errors: {e}");
                            states.branch(commit);
                        }
                    }
                }
            }
            Op::Advance { by } => {
                let first = &states.0[0];
                let to = (first.offset.unwrap_or(0) + u64::from(by)).min(first.outbox_next);
                // A first offset of 0 reads as no offset at all.
                if to == 0 {
                    continue;
                }
                let advance = |m: &mut Model| m.advance(to);
                match store.advance_sink(SINK, to) {
                    Ok(()) => states.apply(advance),
                    Err(e) => {
                        assert!(e.is_io(), "only I/O errors: {e}");
                        if healthy {
                            // The store reopened; the next attempt writes.
                            store
                                .advance_sink(SINK, to)
                                .unwrap_or_else(|e| panic!("healed store refuses: {e}"));
                            states.apply(advance);
                        } else {
                            states.branch(advance);
                        }
                    }
                }
            }
            Op::Fault { after } => disk.state().fault_after = Some(u32::from(after)),
            Op::Heal => disk.state().fault_after = None,
            Op::Restart { crash } => {
                drop(store);
                let mut state = disk.state();
                state.fault_after = None;
                if crash {
                    state.live = state.durable.clone();
                }
                drop(state);
                store = open(&disk).expect("the store opens after a restart");
            }
        }
        if disk.state().fault_after.is_none()
            && let Some(seen) = observe(&store)
        {
            states.observe(&seen);
        }
    }
    // Healed at the end: the store writes and holds what the model says.
    disk.state().fault_after = None;
    commit_healthy(&store, &[], &[]);
    let seen = observe(&store).expect("readable once healed");
    states.observe(&seen);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_matches_its_model_through_faults_and_crashes(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run(ops);
    }
}

/// A fault in the middle of every commit of a run, then a crash: what
/// was acknowledged is there, byte for byte.
#[test]
fn acknowledged_commits_survive_a_crash_after_a_failing_disk() {
    for after in 0..30 {
        let ops = vec![
            Op::Commit {
                samples: 3,
                outbox: 2,
            },
            Op::Fault { after },
            Op::Commit {
                samples: 2,
                outbox: 1,
            },
            Op::Commit {
                samples: 1,
                outbox: 0,
            },
            Op::Restart { crash: true },
            Op::Commit {
                samples: 1,
                outbox: 1,
            },
        ];
        run(ops);
    }
}

/// The injected fault reaches the store as an I/O error, the store
/// reports itself degraded, and heals once the disk does.
#[test]
fn an_injected_fault_fails_the_commit_then_the_store_heals() {
    let disk = Disk::default();
    let store = open(&disk).expect("opens");
    store
        .commit_batch(&batch(&[1, 2], &[]), limits())
        .expect("commits");
    disk.state().fault_after = Some(0);
    let e = store
        .commit_batch(&batch(&[3], &[]), limits())
        .expect_err("a full disk fails the commit");
    assert!(e.is_io(), "{e}");
    assert!(store.fault().is_some(), "degraded while the disk fails");
    disk.state().fault_after = None;
    commit_healthy(&store, &[4], &[]);
    assert_eq!(store.fault(), None, "healthy again");
    let seen = observe(&store).expect("readable");
    assert_eq!(seen.samples, vec![1, 2, 4]);
}
