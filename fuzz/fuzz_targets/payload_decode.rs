//! Any MQTT payload in any format: decoding never panics and what it
//! accepts obeys the limits.
#![no_main]
use eddy_gateway::config::PayloadFormat;
use eddy_gateway::decode::{Decoder, MAX_JSON_READINGS, valid_metric};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [
        PayloadFormat::Auto,
        PayloadFormat::Eddy,
        PayloadFormat::Json,
        PayloadFormat::Value,
        PayloadFormat::Senml,
    ] {
        if let Ok(d) = Decoder::new(format).decode("dev-1", Some("m"), data, 0) {
            assert!(!d.readings.is_empty());
            assert!(d.readings.len() <= MAX_JSON_READINGS);
            assert!(d.readings.iter().all(|r| r.value.is_finite() && valid_metric(&r.metric).is_ok()));
        }
    }
});
