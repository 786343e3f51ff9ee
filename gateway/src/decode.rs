//! Payload decoders: MQTT message -> samples of one device.
//!
//! Every error names what was wrong; a rejected message never affects the
//! other messages of its batch.

use eddy_proto::{Frame, MAX_DEVICE_ID_LEN, MAX_METRIC_LEN, valid_name};
use serde_json::Value;

use crate::config::PayloadFormat;
use crate::sequencer::FrameSeq;

/// Most readings taken from one JSON message.
pub const MAX_JSON_READINGS: usize = 64;
/// Deepest nesting followed in a JSON message (`{"ENERGY": {"Power": 5}}` is 2).
pub const MAX_JSON_DEPTH: usize = 4;

/// One decoded reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub metric: String,
    pub value: f64,
}

/// The readings of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub device: String,
    /// Sequence fields, for Eddy frames; JSON carries none.
    pub seq: Option<FrameSeq>,
    /// Event time in Unix milliseconds.
    pub ts_ms: i64,
    pub readings: Vec<Reading>,
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("device id `{device}` from the topic {reason}")]
    BadDevice { device: String, reason: String },
    #[error("eddy frame: {0}")]
    Frame(#[from] eddy_proto::DecodeError),
    #[error("eddy frame is a {0}, not telemetry")]
    NotTelemetry(&'static str),
    #[error("frame says device `{frame}` but was published on the topic of `{topic}`")]
    DeviceMismatch { topic: String, frame: String },
    #[error("JSON: {0}")]
    Json(String),
    #[error("JSON payload must be an object of readings")]
    NotAnObject,
    #[error("JSON `ts` must be a number of Unix seconds or milliseconds")]
    BadTimestamp,
    #[error("JSON key `{key}` is not a valid metric name: {reason}")]
    BadMetric { key: String, reason: String },
    #[error("JSON object has more than {MAX_JSON_READINGS} numeric readings")]
    TooManyReadings,
    #[error("message holds no numeric readings")]
    NoReadings,
    #[error("device limit reached (ingest.max_devices); the device keeps its frames")]
    TooManyDevices,
}

/// Decodes one message published on a topic of `device`.
///
/// `now_ms` stamps readings that carry no event time.
pub fn decode(
    format: PayloadFormat,
    device: &str,
    payload: &[u8],
    max_payload: usize,
    now_ms: i64,
) -> Result<Decoded, DecodeError> {
    if payload.len() > max_payload {
        return Err(DecodeError::Oversized {
            len: payload.len(),
            max: max_payload,
        });
    }
    valid_name(device, MAX_DEVICE_ID_LEN).map_err(|e| DecodeError::BadDevice {
        device: device.chars().take(64).collect(),
        reason: e.to_string(),
    })?;
    // JSON opens with `{` or `[` after optional white space; an Eddy frame
    // opens with its version byte.
    let json = || {
        payload
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['))
    };
    let format = match format {
        PayloadFormat::Auto if json() => PayloadFormat::Json,
        PayloadFormat::Auto => PayloadFormat::Eddy,
        other => other,
    };
    match format {
        PayloadFormat::Json => decode_json(device, payload, now_ms),
        _ => decode_frame(device, payload, now_ms),
    }
}

fn decode_frame(device: &str, payload: &[u8], now_ms: i64) -> Result<Decoded, DecodeError> {
    let telemetry = match eddy_proto::decode(payload)? {
        Frame::Telemetry(t) => t,
        Frame::Hello(_) => return Err(DecodeError::NotTelemetry("hello")),
        Frame::Ack(_) => return Err(DecodeError::NotTelemetry("ack")),
        Frame::Command(_) => return Err(DecodeError::NotTelemetry("command")),
        Frame::OtaOffer(_) | Frame::OtaChunk(_) | Frame::OtaStatus(_) => {
            return Err(DecodeError::NotTelemetry("OTA frame"));
        }
    };
    if telemetry.device != device {
        return Err(DecodeError::DeviceMismatch {
            topic: device.to_string(),
            frame: telemetry.device.to_string(),
        });
    }
    let ts_ms = match telemetry.timestamp_ms {
        0 => now_ms,
        t => i64::try_from(t).map_err(|_| DecodeError::BadTimestamp)?,
    };
    Ok(Decoded {
        device: device.to_string(),
        seq: Some(FrameSeq {
            boot: telemetry.boot,
            seq: telemetry.seq,
            oldest: telemetry.oldest,
        }),
        ts_ms,
        readings: telemetry
            .readings
            .iter()
            .map(|r| Reading {
                metric: r.metric.to_string(),
                value: r.value,
            })
            .collect(),
    })
}

/// Unix seconds below this are read as seconds, above as milliseconds
/// (1e11 s is the year 5138; 1e11 ms is 1973).
const SECONDS_LIMIT: f64 = 1e11;

fn decode_json(device: &str, payload: &[u8], now_ms: i64) -> Result<Decoded, DecodeError> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let mut ts_ms = now_ms;
    let mut readings = Vec::new();
    for (key, value) in &object {
        if key == "ts" {
            let t = value.as_f64().filter(|t| t.is_finite() && *t >= 0.0);
            let t = t.ok_or(DecodeError::BadTimestamp)?;
            ts_ms = if t < SECONDS_LIMIT { t * 1000.0 } else { t } as i64;
            continue;
        }
        flatten(key, value, 1, &mut readings)?;
    }
    if readings.is_empty() {
        return Err(DecodeError::NoReadings);
    }
    Ok(Decoded {
        device: device.to_string(),
        seq: None,
        ts_ms,
        readings,
    })
}

/// Numbers and booleans become readings; nested objects are flattened with
/// `.` (`ENERGY.Power`); strings, nulls and arrays are not readings and are
/// passed over (devices mix status text with measurements).
fn flatten(
    key: &str,
    value: &Value,
    depth: usize,
    out: &mut Vec<Reading>,
) -> Result<(), DecodeError> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Object(inner) if depth < MAX_JSON_DEPTH => {
            for (k, v) in inner {
                flatten(&format!("{key}.{k}"), v, depth + 1, out)?;
            }
            return Ok(());
        }
        _ => None,
    };
    let Some(number) = number.filter(|n| n.is_finite()) else {
        return Ok(());
    };
    valid_name(key, MAX_METRIC_LEN).map_err(|e| DecodeError::BadMetric {
        key: key.chars().take(64).collect(),
        reason: e.to_string(),
    })?;
    if out.len() >= MAX_JSON_READINGS {
        return Err(DecodeError::TooManyReadings);
    }
    out.push(Reading {
        metric: key.to_string(),
        value: number,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(payload: &str) -> Result<Decoded, DecodeError> {
        decode(PayloadFormat::Auto, "dev-1", payload.as_bytes(), 1024, 42)
    }

    #[test]
    fn flat_json_readings_with_and_without_ts() {
        let d = json(r#"{"temperature": 21.5, "humidity": 40}"#).expect("decodes");
        assert_eq!(d.ts_ms, 42);
        assert_eq!(d.readings.len(), 2);
        assert_eq!(
            json(r#"{"t": 1, "ts": 1700000000}"#).expect("s").ts_ms,
            1_700_000_000_000
        );
        assert_eq!(
            json(r#"{"t": 1, "ts": 1700000000123}"#).expect("ms").ts_ms,
            1_700_000_000_123
        );
    }

    #[test]
    fn nested_objects_flatten_and_text_is_passed_over() {
        let d = json(r#"{"Time": "2024-01-01T00:00:00", "ENERGY": {"Power": 5, "On": true}}"#)
            .expect("decodes");
        let names: Vec<_> = d.readings.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, vec!["ENERGY.On", "ENERGY.Power"]);
        assert_eq!(d.readings[0].value, 1.0);
    }

    #[test]
    fn bad_json_is_named() {
        assert!(matches!(json("{not json"), Err(DecodeError::Json(_))));
        assert_eq!(json("[1,2]"), Err(DecodeError::NotAnObject));
        assert_eq!(json(r#"{"status": "ok"}"#), Err(DecodeError::NoReadings));
        assert_eq!(
            json(r#"{"t": 1, "ts": "yesterday"}"#),
            Err(DecodeError::BadTimestamp)
        );
        assert!(matches!(
            json(r#"{"bad key": 1}"#),
            Err(DecodeError::BadMetric { .. })
        ));
        let many: String = (0..65)
            .map(|i| format!("\"m{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            json(&format!("{{{many}}}")),
            Err(DecodeError::TooManyReadings)
        );
    }

    #[test]
    fn oversized_and_bad_devices_are_refused_before_parsing() {
        assert_eq!(
            decode(PayloadFormat::Json, "d", &[b'{'; 2000], 1024, 0),
            Err(DecodeError::Oversized {
                len: 2000,
                max: 1024
            })
        );
        assert!(matches!(
            decode(PayloadFormat::Json, "a b", b"{\"t\":1}", 1024, 0),
            Err(DecodeError::BadDevice { .. })
        ));
    }

    #[test]
    fn frames_must_be_telemetry_from_the_topic_device() {
        let frame = Frame::Telemetry(eddy_proto::Telemetry {
            device: "dev-2".try_into().expect("fits"),
            boot: 9,
            seq: 3,
            oldest: 2,
            timestamp_ms: 0,
            readings: [eddy_proto::Reading {
                metric: "t".try_into().expect("fits"),
                value: 1.0,
            }]
            .into_iter()
            .collect(),
        });
        let mut buf = [0u8; eddy_proto::MAX_FRAME_LEN];
        let bytes = eddy_proto::encode(&frame, &mut buf)
            .expect("encodes")
            .to_vec();
        assert!(matches!(
            decode(PayloadFormat::Auto, "dev-1", &bytes, 1024, 0),
            Err(DecodeError::DeviceMismatch { .. })
        ));
        let d = decode(PayloadFormat::Auto, "dev-2", &bytes, 1024, 77).expect("decodes");
        assert_eq!(
            (d.seq, d.ts_ms),
            (
                Some(FrameSeq {
                    boot: 9,
                    seq: 3,
                    oldest: 2
                }),
                77
            ),
            "timestamp 0 means: stamp on arrival"
        );
    }
}
