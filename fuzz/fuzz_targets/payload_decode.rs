//! Any MQTT payload in any format: decoding never panics and what it
//! accepts obeys the limits.
#![no_main]
use eddy_gateway::config::PayloadFormat;
use eddy_gateway::decode::{Decoder, LineSpec, MAX_JSON_READINGS, MAX_LINE_READINGS, valid_device, valid_metric};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [
        PayloadFormat::Auto,
        PayloadFormat::Eddy,
        PayloadFormat::Json,
        PayloadFormat::Value,
        PayloadFormat::Senml,
        PayloadFormat::LineProtocol,
    ] {
        let decoder = Decoder {
            line: LineSpec {
                device_tag: Some("host".into()),
                path_tags: vec!["site".into()],
                ..LineSpec::default()
            },
            ..Decoder::new(format)
        };
        // Line protocol both with a topic device and naming its own.
        for device in ["dev-1", ""] {
            let mut out = Vec::new();
            if decoder.decode_into(device, Some("m"), data, 0, &mut out).is_ok() {
                assert!(out.iter().any(|d| !d.readings.is_empty()));
                for d in &out {
                    assert!(valid_device(&d.device).is_ok());
                    assert!(d.readings.len() <= MAX_JSON_READINGS.max(MAX_LINE_READINGS));
                    assert!(d.readings.iter().all(|r| r.value.is_finite() && valid_metric(&r.metric).is_ok()));
                }
            }
        }
    }
});
