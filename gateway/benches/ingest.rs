//! JSON payload bytes to window aggregates on one thread: the pipeline's
//! per-message work (decode, series lookup by name, engine) without MQTT
//! and redb. 50,000 devices send `{"temperature": …, "humidity": …,
//! "ts": …}` (100,000 series) every second for 20 s; tumbling 10 s
//! windows with count, mean, min and max plus a p99 sketch, as in
//! `eddy-analytics`' engine bench.
//!
//! The `decode_*` benches time decoding alone, per payload format, on
//! 100,000 messages of each: JSON objects, JSON batches of 10 readings,
//! SenML packs of 10 records, plain values and Eddy frames (samples/s
//! from payload bytes).
//!
//! The `series_*` benches time resolving names to series in an engine
//! holding 20,000 live series: names it knows (the reference), 10,000
//! new names below the `max_series` cap (admitted), and the same at the
//! cap (refused and counted; idle eviction is tried at most every quarter
//! of the idle timeout, so a refusal costs a lookup, not a scan).
//!
//! `cargo bench -p eddy-gateway --bench ingest`

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use eddy_analytics::{Engine, EngineConfig, Output, Sample, ViewSpec, WindowKind};
use eddy_gateway::config::PayloadFormat;
use eddy_gateway::decode::{Decoder, LineSpec, decode};

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
                                ts_ms: r.ts_ms,
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

/// Messages per decode bench.
const DECODED: usize = 100_000;

/// Decodes every payload with `decoder`; the samples decoded.
fn decode_all(decoder: &Decoder, metric: Option<&str>, payloads: &[Vec<u8>]) -> usize {
    let mut out = Vec::with_capacity(4);
    let mut samples = 0;
    for p in payloads {
        out.clear();
        if decoder
            .decode_into("dev-00001", metric, p, T0, &mut out)
            .is_ok()
        {
            samples += out.iter().map(|d| d.readings.len()).sum::<usize>();
        }
    }
    samples
}

fn bench_decode(
    bencher: Bencher,
    format: PayloadFormat,
    metric: Option<&str>,
    payloads: Vec<Vec<u8>>,
) {
    let decoder = Decoder {
        line: LineSpec {
            device_tag: Some("host".into()),
            ..LineSpec::default()
        },
        ..Decoder::new(format)
    };
    let samples = decode_all(&decoder, metric, &payloads);
    assert!(samples >= payloads.len(), "every payload decodes");
    bencher
        .counter(ItemsCount::new(samples))
        .bench_local(|| black_box(decode_all(&decoder, metric, black_box(&payloads))));
}

#[divan::bench(sample_count = 10)]
fn decode_json_object(bencher: Bencher) {
    let payloads = (0..DECODED)
        .map(|i| {
            format!(
                r#"{{"temperature": {:.2}, "humidity": {:.1}, "ts": {}}}"#,
                20.0 + (i % 100) as f64 / 10.0,
                40.0 + (i % 37) as f64,
                T0 + i as i64
            )
            .into_bytes()
        })
        .collect();
    bench_decode(bencher, PayloadFormat::Json, None, payloads);
}

#[divan::bench(sample_count = 10)]
fn decode_json_batch(bencher: Bencher) {
    let payloads = (0..DECODED / 10)
        .map(|i| {
            let items: Vec<String> = (0..10)
                .map(|k| {
                    format!(
                        r#"{{"power": {:.1}, "ts": {}}}"#,
                        100.0 + k as f64,
                        T0 + (i * 10 + k) as i64
                    )
                })
                .collect();
            format!("[{}]", items.join(",")).into_bytes()
        })
        .collect();
    bench_decode(bencher, PayloadFormat::Json, None, payloads);
}

#[divan::bench(sample_count = 10)]
fn decode_senml_pack(bencher: Bencher) {
    let payloads = (0..DECODED / 10)
        .map(|i| {
            let records: Vec<String> = (0..10)
                .map(|k| match k {
                    0 => format!(
                        r#"{{"bn": "urn:dev:mac:0024befffe804ff1:", "bt": {}, "n": "power", "u": "W", "v": {:.1}}}"#,
                        T0 / 1000 + i as i64,
                        100.0 + k as f64
                    ),
                    _ => format!(r#"{{"n": "power", "u": "W", "t": {k}, "v": {:.1}}}"#, 100.0 + k as f64),
                })
                .collect();
            format!("[{}]", records.join(",")).into_bytes()
        })
        .collect();
    bench_decode(bencher, PayloadFormat::Senml, None, payloads);
}

#[divan::bench(sample_count = 10)]
fn decode_line_protocol(bencher: Bencher) {
    // Telegraf-like: ten lines per message, two hosts, a tag, two fields.
    let payloads = (0..DECODED / 10)
        .map(|i| {
            let lines: Vec<String> = (0..10)
                .map(|k| {
                    format!(
                        "cpu,host=box-{},cpu=cpu{k} usage_user={:.2},usage_system={:.2} {}",
                        k % 2,
                        10.0 + (i % 50) as f64 / 10.0,
                        2.0 + k as f64 / 10.0,
                        (T0 + (i * 10 + k) as i64) * 1_000_000
                    )
                })
                .collect();
            lines.join("\n").into_bytes()
        })
        .collect();
    bench_decode(bencher, PayloadFormat::LineProtocol, None, payloads);
}

#[divan::bench(sample_count = 10)]
fn decode_plain_value(bencher: Bencher) {
    let payloads = (0..DECODED)
        .map(|i| format!("{:.2}", 20.0 + (i % 100) as f64 / 10.0).into_bytes())
        .collect();
    bench_decode(bencher, PayloadFormat::Value, Some("temperature"), payloads);
}

#[divan::bench(sample_count = 10)]
fn decode_eddy_frame(bencher: Bencher) {
    let payloads = (0..DECODED)
        .map(|i| {
            let frame = eddy_proto::Frame::Telemetry(eddy_proto::Telemetry {
                device: "dev-00001".try_into().expect("fits"),
                boot: 1,
                seq: i as u32,
                oldest: 0,
                timestamp_ms: T0 as u64 + i as u64,
                readings: ["temperature", "humidity"]
                    .iter()
                    .map(|m| eddy_proto::Reading {
                        metric: (*m).try_into().expect("fits"),
                        value: 20.0 + (i % 100) as f64,
                    })
                    .collect(),
            });
            let mut buf = [0u8; eddy_proto::MAX_FRAME_LEN];
            eddy_proto::encode(&frame, &mut buf)
                .expect("encodes")
                .to_vec()
        })
        .collect();
    bench_decode(bencher, PayloadFormat::Eddy, None, payloads);
}

/// Live series in the `series_*` benches.
const LIVE: usize = 20_000;
/// Names resolved per `series_*` iteration.
const NAMES: usize = 10_000;

/// An engine with [`LIVE`] series that each had a sample at `T0`, capped
/// at `max_series`.
fn engine_with_live_series(max_series: usize) -> Engine {
    let mut engine = Engine::new(
        EngineConfig {
            window_ms: 10_000,
            max_series,
            ..EngineConfig::default()
        },
        vec![],
    )
    .expect("valid");
    let samples: Vec<Sample> = (0..LIVE)
        .map(|i| Sample {
            series: engine
                .series_key(&format!("dev-{:05}", i / 4), &format!("m{}", i % 4))
                .expect("below the cap"),
            ts_ms: T0,
            value: 1.0,
        })
        .collect();
    engine.ingest(&samples, &mut Output::default());
    engine
}

/// Resolves `names` in a fresh engine per iteration; how many resolved.
fn bench_series(bencher: Bencher, max_series: usize, names: &[(String, String)]) {
    bencher
        .counter(ItemsCount::new(names.len()))
        .with_inputs(|| engine_with_live_series(max_series))
        .bench_local_values(|mut engine| {
            let resolved = names
                .iter()
                .filter(|(d, m)| engine.series_key(d, m).is_ok())
                .count();
            black_box((engine, resolved))
        });
}

/// Names of series the engine holds.
fn known_names() -> Vec<(String, String)> {
    (0..NAMES)
        .map(|i| (format!("dev-{:05}", i / 4), format!("m{}", i % 4)))
        .collect()
}

/// Metric names no series has: a device adding readings, or a trickle
/// of junk names.
fn new_names() -> Vec<(String, String)> {
    (0..NAMES)
        .map(|i| (format!("dev-{:05}", i / 4), format!("extra_{i}")))
        .collect()
}

#[divan::bench(sample_count = 10)]
fn series_known(bencher: Bencher) {
    bench_series(bencher, LIVE, &known_names());
}

#[divan::bench(sample_count = 10)]
fn series_new_below_cap(bencher: Bencher) {
    bench_series(bencher, LIVE + NAMES, &new_names());
}

#[divan::bench(sample_count = 10)]
fn series_new_at_cap(bencher: Bencher) {
    bench_series(bencher, LIVE, &new_names());
}
