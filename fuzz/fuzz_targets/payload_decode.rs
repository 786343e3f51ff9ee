//! Any MQTT payload in any format: decoding never panics and what it
//! accepts obeys the limits.
#![no_main]
use eddy_gateway::config::PayloadFormat;
use eddy_gateway::decode::{MAX_JSON_READINGS, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [PayloadFormat::Auto, PayloadFormat::Eddy, PayloadFormat::Json] {
        if let Ok(d) = decode(format, "dev-1", data, 64 * 1024, 0) {
            assert!(!d.readings.is_empty());
            assert!(d.readings.len() <= MAX_JSON_READINGS);
            assert!(d.readings.iter().all(|r| r.value.is_finite() && !r.metric.is_empty()));
        }
    }
});
