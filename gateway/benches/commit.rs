//! Samples committed durably into redb per second, by batch size.
//!
//! Each iteration is one pipeline commit: N samples (plus the admission
//! state of the devices they came from) in one transaction, fsynced
//! (`durability = "immediate"`) or not (`"none"`).
//!
//! `cargo bench -p eddy-gateway --bench commit`

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use eddy_gateway::config::DurabilityMode;
use eddy_gateway::sequencer::DeviceSeq;
use eddy_gateway::store::{Batch, Limits, Store, StoredSample};

fn main() {
    divan::main();
}

/// N samples from 100 devices, 3 metrics each, as the simulated fleet sends.
fn batch(n: usize) -> Batch {
    let metrics = ["temperature", "humidity", "outputs"];
    let samples: Vec<StoredSample> = (0..n)
        .map(|i| StoredSample {
            device: format!("sim-{:04}", (i / 3) % 100),
            metric: metrics[i % 3].to_string(),
            ts_ms: 1_764_000_000_000 + i as i64,
            value: i as f64 * 0.5,
            frame: Some((7, (i / 300) as u32)),
        })
        .collect();
    let devices = (0..n.div_ceil(3).min(100))
        .map(|d| {
            let state = DeviceSeq {
                boot: 7,
                next: n as u32,
                previous_boot: 7,
            };
            (format!("sim-{d:04}"), state)
        })
        .collect();
    Batch {
        samples,
        outbox: Vec::new(),
        devices,
        alerts: Vec::new(),
    }
}

fn commit(bencher: Bencher, n: usize, durability: DurabilityMode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("bench.redb")).expect("store");
    let batch = batch(n);
    let limits = Limits {
        durability,
        ..Limits::NONE
    };
    bencher
        .counter(ItemsCount::new(n))
        .bench_local(|| black_box(store.commit_batch(&batch, limits).expect("commits")));
}

#[divan::bench(args = [1, 100, 1_000, 10_000], sample_count = 20, sample_size = 5)]
fn durable(bencher: Bencher, n: usize) {
    commit(bencher, n, DurabilityMode::Immediate);
}

#[divan::bench(args = [1, 100, 1_000, 10_000], sample_count = 20, sample_size = 5)]
fn no_fsync(bencher: Bencher, n: usize) {
    commit(bencher, n, DurabilityMode::None);
}
