//! Any text as a recorded series (`timestamp,value` CSV): parsing never
//! panics; a parsed series is non-empty, strictly increasing in time,
//! finite, and can be sampled at any offset.
#![no_main]
use eddy_firmware_host::replay::Series;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(series) = Series::parse(text) {
        assert!(!series.points.is_empty());
        assert!(series.points.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(series.points.iter().all(|(_, v)| v.is_finite()));
        for offset in [i64::MIN, -1, 0, 1, series.span_ms(), i64::MAX] {
            assert!(series.value_at(offset).is_finite());
        }
    }
});
