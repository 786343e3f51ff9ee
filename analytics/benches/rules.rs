//! Rule evaluation cost: samples per second through the engine with 1, 10
//! and 100 alert rules on the same stream (10,000 series: 2,500 devices
//! with 4 metrics, one sample per series per second, batches of 10,000).
//! Each rule is a threshold on one metric with its own tumbling window
//! (10 s to 60 s) and aggregate, so a sample feeds a quarter of the rules'
//! views; a tenth of the rules are SQL rules grouped by site.
//!
//! `cargo bench -p eddy-analytics --bench rules`

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use eddy_analytics::{Aggregate, Condition, Engine, EngineConfig, Output, Rule, SeriesKey, sql};

mod common;

const DEVICES: usize = 2_500;
const METRICS: usize = 4;
const SECONDS: i64 = 30;
const BATCH: usize = 10_000;

fn main() {
    divan::main();
}

fn rules(n: usize) -> Vec<Rule> {
    let aggregates = [
        Aggregate::Mean,
        Aggregate::Max,
        Aggregate::Min,
        Aggregate::Sum,
    ];
    (0..n)
        .map(|i| {
            let metric = format!("m{}", i % METRICS);
            let window_ms = 10_000 * (1 + (i % 6) as u64);
            if i % 10 == 9 {
                let q = sql::parse(&format!(
                    "SELECT site, avg({metric}) FROM telemetry WHERE value > 0 \
                     GROUP BY site, TUMBLING(INTERVAL '{}' SECOND) HAVING avg({metric}) > {}",
                    window_ms / 1000,
                    40 + i % 20
                ))
                .expect("valid SQL");
                return Rule::from_query(&format!("sql-{i}"), q);
            }
            Rule::threshold(
                &format!("rule-{i}"),
                &metric,
                window_ms,
                aggregates[i % aggregates.len()],
                Condition::Above(40.0 + (i % 20) as f64),
            )
        })
        .collect()
}

fn engine(n: usize) -> (Engine, Vec<SeriesKey>) {
    let config = EngineConfig {
        window_ms: 10_000,
        allowed_lateness_ms: 0,
        max_series: DEVICES * METRICS,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(config, rules(n)).expect("valid rules");
    for d in 0..DEVICES {
        e.set_path(&common::device(d), &format!("site-{}/hall", d % 10));
    }
    let keys = common::admit(&mut e, DEVICES, METRICS);
    (e, keys)
}

#[divan::bench(args = [1, 10, 100], sample_count = 10)]
fn rules_on_one_stream(bencher: Bencher, n: usize) {
    let (_, keys) = engine(n);
    let samples = common::samples(&keys, SECONDS);
    bencher
        .counter(ItemsCount::new(samples.len()))
        .with_inputs(|| (engine(n).0, Output::default()))
        .bench_local_values(|(mut engine, mut out)| {
            let mut alerts = 0;
            for chunk in samples.chunks(BATCH) {
                engine.ingest(chunk, &mut out);
                alerts += out.alerts.len();
                out.clear();
            }
            black_box((engine, alerts))
        });
}
