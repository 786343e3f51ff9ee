//! What the engine benchmarks share: admitted series and their samples.

use eddy_analytics::{Engine, Sample, SeriesKey};

/// When the samples start (Unix ms).
pub const T0: i64 = 1_700_000_000_000;

/// The name of device `d`.
pub fn device(d: usize) -> String {
    format!("dev-{d:05}")
}

/// Admits `devices` x `metrics` series (`dev-NNNNN` / `mN`), device by
/// device.
pub fn admit(engine: &mut Engine, devices: usize, metrics: usize) -> Vec<SeriesKey> {
    (0..devices * metrics)
        .map(|i| {
            engine
                .series_key(&device(i / metrics), &format!("m{}", i % metrics))
                .expect("admitted")
        })
        .collect()
}

/// Second by second, every series once, spread over the second; values
/// wander within 20..60 (so threshold rules fire and resolve).
pub fn samples(keys: &[SeriesKey], seconds: i64) -> Vec<Sample> {
    let mut out = Vec::with_capacity(keys.len() * seconds as usize);
    for s in 0..seconds {
        for (i, &series) in keys.iter().enumerate() {
            out.push(Sample {
                series,
                ts_ms: T0 + s * 1000 + (i % 1000) as i64,
                value: 20.0 + ((i as i64 * 7 + s * 13) % 400) as f64 / 10.0,
            });
        }
    }
    out
}
