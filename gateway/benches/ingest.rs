//! JSON payload bytes to window aggregates on one thread: the pipeline's
//! per-message work (decode, series lookup by name, engine) without MQTT
//! and redb. 50,000 devices send `{"temperature": …, "humidity": …,
//! "ts": …}` (100,000 series) every second for 20 s; tumbling 10 s
//! windows with count, mean, min and max plus a p99 sketch, as in
//! `eddy-analytics`' engine bench.
//!
//! `cargo bench -p eddy-gateway --bench ingest`

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use eddy_analytics::{Engine, EngineConfig, Output, Sample, ViewSpec, WindowKind};
use eddy_gateway::config::PayloadFormat;
use eddy_gateway::decode::decode;

const DEVICES: usize = 50_000;
const SECONDS: i64 = 20;
const T0: i64 = 1_700_000_000_000;

fn main() {
    divan::main();
}

fn engine() -> Engine {
    let config = EngineConfig {
        window_ms: 10_000,
        allowed_lateness_ms: 0,
        max_series: 2 * DEVICES,
        views: vec![ViewSpec {
            quantiles: true,
            ..ViewSpec::new("p99", WindowKind::Tumbling { size_ms: 10_000 })
        }],
        ..EngineConfig::default()
    };
    Engine::new(config, vec![]).expect("valid")
}

/// (device id, payload) per message, second by second.
fn messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(DEVICES * SECONDS as usize);
    for s in 0..SECONDS {
        for d in 0..DEVICES {
            let payload = format!(
                r#"{{"temperature": {:.2}, "humidity": {:.1}, "ts": {}}}"#,
                20.0 + (d % 100) as f64 / 10.0 + s as f64 * 0.01,
                40.0 + (d % 37) as f64,
                T0 + s * 1000 + (d % 1000) as i64
            );
            out.push((format!("dev-{d:05}"), payload.into_bytes()));
        }
    }
    out
}

#[divan::bench(sample_count = 10)]
fn json_decode_and_aggregate(bencher: Bencher) {
    let messages = messages();
    bencher
        .counter(ItemsCount::new(messages.len() * 2))
        .with_inputs(|| (engine(), Output::default(), Vec::with_capacity(20_000)))
        .bench_local_values(|(mut engine, mut out, mut samples)| {
            for chunk in messages.chunks(10_000) {
                samples.clear();
                for (device, payload) in chunk {
                    let Ok(decoded) = decode(PayloadFormat::Auto, device, payload, 65_536, T0)
                    else {
                        continue;
                    };
                    for r in &decoded.readings {
                        if let Ok(series) = engine.series_key(&decoded.device, &r.metric) {
                            samples.push(Sample {
                                series,
                                ts_ms: decoded.ts_ms,
                                value: r.value,
                            });
                        }
                    }
                }
                engine.ingest(&samples, &mut out);
                out.clear();
            }
            black_box(engine)
        });
}
