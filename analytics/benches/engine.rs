//! Samples per second through the engine on one thread: 100,000 series,
//! one sample per series per second, tumbling 10 s windows with count,
//! mean, min and max (the default view) plus a p99 sketch (a second
//! view on the same windows, so they share one state), samples already
//! decoded, fed in batches of 10,000 as the
//! gateway's pipeline does. The same job through polars'
//! `group_by_dynamic` runs in the same process, for the ratio: its kernel
//! alone over a frame built and sorted beforehand, and from the same
//! samples (frame and sort timed). Also: a live query by device prefix
//! against that state.
//!
//! `cargo bench -p eddy-analytics --bench engine`

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use eddy_analytics::{Engine, EngineConfig, Output, Sample, SeriesKey, ViewSpec, WindowKind};
use polars::prelude::*;

mod common;

const SERIES: usize = 100_000;
const SECONDS: i64 = 20;
const BATCH: usize = 10_000;

fn main() {
    let (mut engine, keys) = engine();
    let mut out = Output::default();
    for chunk in samples(&keys).chunks(BATCH) {
        engine.ingest(chunk, &mut out);
    }
    println!(
        "engine state: {} bytes per live series ({} series, two views, one open window each)",
        engine.heap_bytes() / SERIES,
        engine.series_count()
    );
    divan::main();
}

fn config() -> EngineConfig {
    EngineConfig {
        window_ms: 10_000,
        allowed_lateness_ms: 0,
        max_series: SERIES,
        views: vec![ViewSpec {
            quantiles: true,
            ..ViewSpec::new("p99", WindowKind::Tumbling { size_ms: 10_000 })
        }],
        ..EngineConfig::default()
    }
}

fn engine() -> (Engine, Vec<SeriesKey>) {
    let mut e = Engine::new(config(), vec![]).expect("valid");
    let keys = common::admit(&mut e, SERIES / 4, 4);
    (e, keys)
}

fn samples(keys: &[SeriesKey]) -> Vec<Sample> {
    common::samples(keys, SECONDS)
}

#[divan::bench(sample_count = 10)]
fn engine_decoded(bencher: Bencher) {
    let (_, keys) = engine();
    let samples = samples(&keys);
    bencher
        .counter(ItemsCount::new(samples.len()))
        .with_inputs(|| (engine().0, Output::default()))
        .bench_local_values(|(mut engine, mut out)| {
            for chunk in samples.chunks(BATCH) {
                engine.ingest(chunk, &mut out);
                out.clear();
            }
            black_box(engine)
        });
}

/// The samples as a frame: series, event time, value (arrival order).
fn frame(samples: &[Sample]) -> LazyFrame {
    df!(
        "series" => samples.iter().map(|s| s.series.0).collect::<Vec<u32>>(),
        "ts" => samples.iter().map(|s| s.ts_ms).collect::<Vec<i64>>(),
        "value" => samples.iter().map(|s| s.value).collect::<Vec<f64>>(),
    )
    .expect("frame")
    .lazy()
    .with_column(col("ts").cast(DataType::Datetime(TimeUnit::Milliseconds, None)))
}

/// The engine's windows and aggregates in batch, over a frame sorted by
/// series and time (as `group_by_dynamic` needs).
fn windows(sorted: LazyFrame) -> DataFrame {
    sorted
        .group_by_dynamic(
            col("ts"),
            [col("series")],
            DynamicGroupOptions {
                every: Duration::parse("10s"),
                period: Duration::parse("10s"),
                offset: Duration::parse("0s"),
                ..DynamicGroupOptions::default()
            },
        )
        .agg([
            col("value").count().alias("count"),
            col("value").mean().alias("mean"),
            col("value").min().alias("min"),
            col("value").max().alias("max"),
            col("value")
                .quantile(lit(0.99), QuantileMethod::Nearest)
                .alias("p99"),
        ])
        .collect()
        .expect("windows")
}

/// polars' windowing kernel alone: `group_by_dynamic` over a frame
/// already built and sorted (neither timed).
#[divan::bench(sample_count = 10)]
fn polars_group_by_dynamic(bencher: Bencher) {
    let (_, keys) = engine();
    let samples = samples(&keys);
    let sorted = frame(&samples)
        .sort(["series", "ts"], SortMultipleOptions::default())
        .collect()
        .expect("sorted");
    bencher
        .counter(ItemsCount::new(samples.len()))
        .bench_local(|| black_box(windows(sorted.clone().lazy())));
}

/// The same job from the engine's input: the samples as they arrived,
/// made into a frame and sorted, then windowed.
#[divan::bench(sample_count = 10)]
fn polars_from_samples(bencher: Bencher) {
    let (_, keys) = engine();
    let samples = samples(&keys);
    bencher
        .counter(ItemsCount::new(samples.len()))
        .bench_local(|| {
            black_box(windows(
                frame(&samples).sort(["series", "ts"], SortMultipleOptions::default()),
            ))
        });
}

/// A live query while 100,000 series have open windows: the groups of
/// one device prefix (`dev-012`: 100 devices, 400 series) in every published view.
#[divan::bench(sample_count = 20)]
fn live_query_by_prefix(bencher: Bencher) {
    let (mut engine, keys) = engine();
    let mut out = Output::default();
    for chunk in samples(&keys).chunks(BATCH) {
        engine.ingest(chunk, &mut out);
        out.clear();
    }
    let query = eddy_analytics::LiveQuery {
        view: None,
        prefix: "dev-012".into(),
        metric: None,
        limit: 10_000,
    };
    bencher.bench_local(|| black_box(engine.live(&query)));
}
