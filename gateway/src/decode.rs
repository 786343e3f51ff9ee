//! Payload decoders: MQTT message -> samples of one device.
//!
//! Every error names what was wrong; a rejected message never affects the
//! other messages of its batch.

use std::borrow::Cow;
use std::fmt;

use eddy_proto::{Frame, MAX_DEVICE_ID_LEN, MAX_METRIC_LEN, valid_name};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
    let opens_object = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if !opens_object {
        // Valid JSON of another kind, or not JSON at all.
        return Err(match serde_json::from_slice::<IgnoredAny>(payload) {
            Ok(_) => DecodeError::NotAnObject,
            Err(e) => DecodeError::Json(e.to_string()),
        });
    }
    // Streamed straight into readings: no tree of values is built.
    let mut sink = JsonSink::default();
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed = Members {
        sink: &mut sink,
        prefix: None,
        depth: 1,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(rejected) = sink.rejected {
        return Err(rejected);
    }
    parsed.map_err(|e| DecodeError::Json(e.to_string()))?;
    let mut readings = sink.readings;
    if readings.is_empty() {
        return Err(DecodeError::NoReadings);
    }
    // In name order; a name given twice keeps its last value.
    readings.sort_by(|a, b| a.metric.cmp(&b.metric));
    readings.dedup_by(|later, kept| {
        let same = later.metric == kept.metric;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    let ts_ms = match sink.ts {
        None => now_ms,
        Some(t) if t < SECONDS_LIMIT => (t * 1000.0) as i64,
        Some(t) => t as i64,
    };
    Ok(Decoded {
        device: device.to_string(),
        seq: None,
        ts_ms,
        readings,
    })
}

/// What the streaming JSON decoder collected.
#[derive(Default)]
struct JsonSink {
    /// The top level's `ts`, as given.
    ts: Option<f64>,
    readings: Vec<Reading>,
    /// Why the message was refused, when it was for its content (the
    /// parser is stopped with a placeholder error).
    rejected: Option<DecodeError>,
}

impl JsonSink {
    fn reject<E: de::Error>(&mut self, why: DecodeError) -> E {
        self.rejected = Some(why);
        E::custom("rejected")
    }

    /// Numbers and booleans become readings.
    fn reading<E: de::Error>(&mut self, name: &str, value: f64) -> Result<(), E> {
        if !value.is_finite() {
            return Ok(());
        }
        if let Err(e) = valid_name(name, MAX_METRIC_LEN) {
            return Err(self.reject(DecodeError::BadMetric {
                key: name.chars().take(64).collect(),
                reason: e.to_string(),
            }));
        }
        if self.readings.len() >= MAX_JSON_READINGS {
            return Err(self.reject(DecodeError::TooManyReadings));
        }
        self.readings.push(Reading {
            metric: name.to_string(),
            value,
        });
        Ok(())
    }
}

/// An object's members: `ts` (top level only), readings, and nested
/// objects flattened with `.` (`ENERGY.Power`) down to
/// [`MAX_JSON_DEPTH`]; strings, nulls and arrays are passed over
/// (devices mix status text with measurements).
struct Members<'s> {
    sink: &'s mut JsonSink,
    prefix: Option<&'s str>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of readings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key)? {
            let name = match self.prefix {
                None => key,
                Some(p) => Cow::Owned(format!("{p}.{key}")),
            };
            if self.depth == 1 && name == "ts" {
                match map.next_value_seed(Number)? {
                    Some(t) if t.is_finite() && t >= 0.0 => self.sink.ts = Some(t),
                    _ => return Err(self.sink.reject(DecodeError::BadTimestamp)),
                }
                continue;
            }
            map.next_value_seed(Member {
                sink: self.sink,
                name: &name,
                depth: self.depth,
            })?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the payload unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// One member's value.
struct Member<'s> {
    sink: &'s mut JsonSink,
    name: &'s str,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Member<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reading")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.reading(self.name, v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.reading(self.name, v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.reading(self.name, v as f64)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.sink.reading(self.name, f64::from(u8::from(v)))
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if self.depth + 1 > MAX_JSON_DEPTH {
            return IgnoredAny.visit_map(map).map(|_| ());
        }
        Members {
            sink: self.sink,
            prefix: Some(self.name),
            depth: self.depth + 1,
        }
        .visit_map(map)
    }
}

/// A number, or `None` for any other value.
struct Number;

impl<'de> DeserializeSeed<'de> for Number {
    type Value = Option<f64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Number {
    type Value = Option<f64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v as f64))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| None)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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
    fn json_edge_cases_read_as_a_tree_would() {
        // A key given twice keeps its last value; escaped keys decode.
        let d = json(r#"{"t": 1, "t": 2, "h\u0075m": 3}"#).expect("decodes");
        let got: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect();
        assert_eq!(got, vec![("hum", 3.0), ("t", 2.0)]);
        // Arrays, strings and null are passed over; large integers and
        // exponents are numbers.
        let d = json(r#"{"a": [1, {"b": 2}], "s": "x", "n": null, "big": 18446744073709551615, "e": -1.5e3}"#)
            .expect("decodes");
        let got: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect();
        assert_eq!(got, vec![("big", u64::MAX as f64), ("e", -1500.0)]);
        // Objects nested deeper than the limit are passed over whole.
        let d = json(r#"{"a": {"b": {"c": {"d": 1, "e": {"f": 2}}}}, "x": 0}"#).expect("decodes");
        let names: Vec<_> = d.readings.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, vec!["a.b.c.d", "x"]);
        // `ts` counts at the top level only.
        let d = json(r#"{"a": {"ts": 5}, "ts": 1700000000}"#).expect("decodes");
        assert_eq!(d.ts_ms, 1_700_000_000_000);
        assert_eq!(d.readings[0].metric, "a.ts");
        // Trailing bytes and a truncated object are JSON errors, found
        // even after readings were read.
        assert!(matches!(json(r#"{"t": 1} x"#), Err(DecodeError::Json(_))));
        assert!(matches!(
            json(r#"{"t": 1, "h": "#),
            Err(DecodeError::Json(_))
        ));
        let as_json = |p: &str| decode(PayloadFormat::Json, "dev-1", p.as_bytes(), 1024, 42);
        assert_eq!(as_json(r#"  "text""#), Err(DecodeError::NotAnObject));
        assert!(matches!(as_json("  [1, "), Err(DecodeError::Json(_))));
    }

    type Named = (String, f64);

    /// The tree-building decoder this module used to have: the reference
    /// for the streaming one.
    fn reference(payload: &[u8]) -> Option<(Option<f64>, Vec<Named>)> {
        fn walk(key: &str, v: &serde_json::Value, depth: usize, out: &mut Vec<Named>) {
            match v {
                serde_json::Value::Number(n) => {
                    out.push((key.to_string(), n.as_f64().unwrap_or(f64::NAN)))
                }
                serde_json::Value::Bool(b) => out.push((key.to_string(), f64::from(u8::from(*b)))),
                serde_json::Value::Object(o) if depth < MAX_JSON_DEPTH => {
                    for (k, v) in o {
                        walk(&format!("{key}.{k}"), v, depth + 1, out);
                    }
                }
                _ => {}
            }
        }
        let serde_json::Value::Object(o) = serde_json::from_slice(payload).ok()? else {
            return None;
        };
        let mut out = Vec::new();
        let mut ts = None;
        for (k, v) in &o {
            if k == "ts" {
                ts = v.as_f64();
                continue;
            }
            walk(k, v, 1, &mut out);
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some((ts, out))
    }

    fn arb_value(depth: u32) -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            any::<i32>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            "[a-z ]{0,6}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        leaf.prop_recursive(depth, 24, 4, |inner| {
            prop_oneof![
                prop::collection::btree_map("[a-z]{1,3}", inner.clone(), 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                prop::collection::vec(inner, 0..3).prop_map(serde_json::Value::Array),
            ]
        })
    }

    proptest! {
        #[test]
        fn streaming_json_reads_what_the_tree_reads(
            members in prop::collection::btree_map("[a-z]{1,3}|ts", arb_value(5), 1..8)
        ) {
            let payload = serde_json::to_vec(&serde_json::Value::Object(members.into_iter().collect()))
                .expect("encodes");
            let Some((ts, want)) = reference(&payload) else {
                return Err(TestCaseError::fail("the reference reads objects"));
            };
            match decode(PayloadFormat::Json, "dev-1", &payload, 1 << 20, 42) {
                Ok(d) => {
                    let got: Vec<_> = d.readings.iter().map(|r| (r.metric.clone(), r.value)).collect();
                    prop_assert_eq!(got, want);
                    let ts_ms = ts.map_or(42, |t| if t < SECONDS_LIMIT { (t * 1000.0) as i64 } else { t as i64 });
                    prop_assert_eq!(d.ts_ms, ts_ms);
                }
                Err(DecodeError::NoReadings) => prop_assert!(want.is_empty()),
                Err(DecodeError::BadTimestamp) => {
                    prop_assert!(ts.is_none_or(|t| t < 0.0));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
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
