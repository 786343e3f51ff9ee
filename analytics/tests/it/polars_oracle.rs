//! polars as the oracle: random sample streams, out of order within the
//! allowed lateness and cut into random batches, go through the engine;
//! the same samples go through polars in batch (`group_by_dynamic` for
//! tumbling and hopping windows, `rolling` for sliding ones). Every
//! window the engine closed must equal polars' row for it: count, sum,
//! mean, min, max and standard deviation.

use std::collections::BTreeMap;

use eddy_analytics::{
    Aggregate, Engine, EngineConfig, GroupBy, Output, Sample, ViewSpec, WindowKind,
};
use polars::prelude::*;
use proptest::prelude::*;

const LATENESS: i64 = 20;

/// (series index, window start, window end) -> count, sum, mean, min, max, std.
type Windows = BTreeMap<(u32, i64, i64), [f64; 6]>;

fn streaming(kind: WindowKind, samples: &[(u32, i64, f64)], batch: usize) -> Windows {
    let cfg = EngineConfig {
        window_ms: 1_000_000,
        allowed_lateness_ms: LATENESS as u64,
        max_series: 100,
        views: vec![ViewSpec {
            name: "v".into(),
            window: kind,
            group_by: GroupBy::SERIES,
            metric: None,
            quantiles: false,
            allowed_lateness_ms: LATENESS as u64,
            publish: true,
            filter: Default::default(),
        }],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, vec![]).expect("valid");
    let keys: Vec<_> = (0..3)
        .map(|d| e.series_key(&format!("{d}"), "m").expect("admitted"))
        .collect();
    let samples: Vec<Sample> = samples
        .iter()
        .map(|&(s, ts_ms, value)| Sample {
            series: keys[s as usize],
            ts_ms,
            value,
        })
        .collect();
    let mut out = Output::default();
    for chunk in samples.chunks(batch) {
        e.ingest(chunk, &mut out);
    }
    e.advance_to(i64::MAX / 2, &mut out);
    assert!(out.late.is_empty());
    let mut windows = Windows::new();
    for w in out.windows.iter().filter(|w| w.view == 1) {
        let series: u32 = e.label(w.key).parse().expect("index");
        let a = &w.aggregates;
        let row = [
            a.count as f64,
            a.sum,
            a.mean(),
            a.min,
            a.max,
            a.get(Aggregate::Stddev),
        ];
        // Sliding windows of samples at the same instant are one row in polars.
        windows.insert((series, w.start_ms, w.end_ms), row);
    }
    windows
}

fn batch(kind: WindowKind, samples: &[(u32, i64, f64)]) -> Windows {
    let frame = df!(
        "series" => samples.iter().map(|s| s.0).collect::<Vec<u32>>(),
        "ts" => samples.iter().map(|s| s.1).collect::<Vec<i64>>(),
        "value" => samples.iter().map(|s| s.2).collect::<Vec<f64>>(),
    )
    .expect("frame")
    .lazy()
    .with_column(col("ts").cast(DataType::Datetime(TimeUnit::Milliseconds, None)))
    .sort(
        ["series", "ts"],
        SortMultipleOptions::default().with_maintain_order(true),
    );
    let aggs = [
        col("value").count().cast(DataType::Float64).alias("count"),
        col("value").sum().alias("sum"),
        col("value").mean().alias("mean"),
        col("value").min().alias("min"),
        col("value").max().alias("max"),
        col("value").std(1).alias("std"),
    ];
    let ms = |v: u64| Duration::parse(&format!("{v}ms"));
    let (result, size) = match kind {
        WindowKind::Tumbling { size_ms } => (
            frame.group_by_dynamic(
                col("ts"),
                [col("series")],
                DynamicGroupOptions {
                    every: ms(size_ms),
                    period: ms(size_ms),
                    offset: ms(0),
                    include_boundaries: false,
                    closed_window: ClosedWindow::Left,
                    start_by: StartBy::WindowBound,
                    ..DynamicGroupOptions::default()
                },
            ),
            size_ms,
        ),
        WindowKind::Hopping { size_ms, hop_ms } => (
            frame.group_by_dynamic(
                col("ts"),
                [col("series")],
                DynamicGroupOptions {
                    every: ms(hop_ms),
                    period: ms(size_ms),
                    // Start early enough that the first sample is in every
                    // window covering it, as in the engine.
                    offset: Duration::parse(&format!("-{}ms", size_ms - hop_ms)),
                    closed_window: ClosedWindow::Left,
                    start_by: StartBy::WindowBound,
                    ..DynamicGroupOptions::default()
                },
            ),
            size_ms,
        ),
        WindowKind::Sliding { size_ms } => (
            frame.rolling(
                col("ts"),
                [col("series")],
                RollingGroupOptions {
                    index_column: "ts".into(),
                    period: ms(size_ms),
                    offset: Duration::parse(&format!("-{size_ms}ms")),
                    closed_window: ClosedWindow::Right,
                },
            ),
            size_ms,
        ),
        other => unreachable!("{other:?} has no polars counterpart"),
    };
    let df = result
        .agg(aggs)
        .with_column(col("ts").cast(DataType::Int64))
        .collect()
        .expect("polars");
    let col_f64 = |name: &str| -> Vec<Option<f64>> {
        df.column(name)
            .expect("column")
            .f64()
            .expect("f64")
            .iter()
            .collect()
    };
    let series: Vec<u32> = df
        .column("series")
        .expect("series")
        .u32()
        .expect("u32")
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect();
    let ts: Vec<i64> = df
        .column("ts")
        .expect("ts")
        .i64()
        .expect("i64")
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect();
    let cols: Vec<Vec<Option<f64>>> = ["count", "sum", "mean", "min", "max", "std"]
        .iter()
        .map(|c| col_f64(c))
        .collect();
    let size = size as i64;
    let mut windows = Windows::new();
    for i in 0..df.height() {
        // group_by_dynamic labels a window by its start, rolling by the
        // row's own time (the window's inclusive end).
        let (start, end) = match kind {
            WindowKind::Sliding { .. } => (ts[i] - size + 1, ts[i] + 1),
            _ => (ts[i], ts[i] + size),
        };
        let row: Vec<f64> = cols.iter().map(|c| c[i].unwrap_or(f64::NAN)).collect();
        if row[0] == 0.0 {
            continue;
        }
        windows.insert(
            (series[i], start, end),
            [row[0], row[1], row[2], row[3], row[4], row[5]],
        );
    }
    windows
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn kinds() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        (1u64..60).prop_map(|size_ms| WindowKind::Tumbling { size_ms }),
        (1u64..20, 1u64..4).prop_map(|(hop, k)| WindowKind::Hopping {
            size_ms: hop * k,
            hop_ms: hop
        }),
        (1u64..60).prop_map(|size_ms| WindowKind::Sliding { size_ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn streaming_windows_equal_polars_over_the_same_samples(
        raw in proptest::collection::vec((0u32..3, 0i64..15, 0i64..20, -50.0f64..50.0), 1..200),
        kind in kinds(),
        batch_size in 1usize..50,
    ) {
        let mut clock = [1_000i64; 3];
        let samples: Vec<(u32, i64, f64)> = raw
            .into_iter()
            .map(|(s, step, back, v)| {
                let c = &mut clock[s as usize];
                *c += step;
                (s, *c - back.min(LATENESS - 1), v)
            })
            .collect();
        let got = streaming(kind, &samples, batch_size);
        let want = batch(kind, &samples);
        prop_assert!(!want.is_empty(), "polars found no window");
        prop_assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "windows differ for {:?}", kind
        );
        for (k, w) in &want {
            let g = &got[k];
            for (i, name) in ["count", "sum", "mean", "min", "max", "std"].iter().enumerate() {
                prop_assert!(close(g[i], w[i]), "{:?} {:?} {}: {} vs polars {}", kind, k, name, g[i], w[i]);
            }
        }
    }
}
