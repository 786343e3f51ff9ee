//! Payload decoders: an MQTT message -> readings of one device.
//!
//! Formats: Eddy frames (`eddy_proto`), JSON ([`json`]: objects of
//! readings, batches, numbers as strings, arrays, ISO or epoch times),
//! SenML packs ([`senml`], RFC 8428), InfluxDB line protocol ([`line`],
//! lines of any number of devices) and plain values (`21.5` on a topic
//! per metric). Every refused message
//! names what was wrong ([`DecodeError`]); a field that cannot be a
//! reading is dropped alone and reported ([`Dropped`]), its neighbours
//! kept; a refused message never affects the other messages of its batch.
//!
//! Names: device ids from topics and metric paths from payloads are
//! UTF-8, up to [`MAX_DEVICE_LEN`] and [`MAX_METRIC_LEN`] bytes, without
//! control characters or MQTT's `/`, `+` and `#` (both become topic
//! levels of the results). Eddy frames keep the tighter limits of the
//! wire contract.

use std::fmt;

use eddy_proto::Frame;
use jiff::tz::TimeZone;

use crate::config::PayloadFormat;
use crate::sequencer::FrameSeq;

mod json;
pub mod line;
mod senml;
pub mod time;

pub use line::{LineSpec, Precision};

use time::TimeError;

/// Most readings taken from one message; further fields are dropped
/// ([`DropReason::TooManyFields`]).
pub const MAX_JSON_READINGS: usize = 1024;
/// Most readings taken from one line protocol message (lines of many
/// devices, as over HTTP); further fields are dropped
/// ([`DropReason::TooManyFields`]).
pub const MAX_LINE_READINGS: usize = 65_536;
/// Deepest nesting followed in a JSON message (`{"ENERGY": {"Power": [5]}}`
/// is 3); deeper values are dropped ([`DropReason::TooDeep`]).
pub const MAX_JSON_DEPTH: usize = 8;
/// Longest device id, in bytes (a UUID is 36).
pub const MAX_DEVICE_LEN: usize = 128;
/// Longest metric path, in bytes (`ENERGY.Power.0`).
pub const MAX_METRIC_LEN: usize = 255;

/// One decoded reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub metric: String,
    pub value: f64,
    /// Event time in Unix milliseconds (the arrival time when the
    /// message carries none).
    pub ts_ms: i64,
}

/// The readings of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub device: String,
    /// Sequence fields, for Eddy frames; JSON carries none.
    pub seq: Option<FrameSeq>,
    pub readings: Vec<Reading>,
    /// Fields of the message that were not taken, and why.
    pub dropped: Vec<Dropped>,
    /// The device's hierarchy path when the payload names it (line
    /// protocol's path tags: `north/4`).
    pub path: Option<String>,
}

/// A field of a message that did not become a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Its path (`ENERGY.Power.0`; `[3]` for a batch element), at most
    /// 128 characters.
    pub field: String,
    pub reason: DropReason,
}

/// Why a field was dropped: the `reason` label of
/// `eddy_values_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Text that is not a number (status words, ids).
    NotANumber,
    /// `NaN` or an infinity.
    NotFinite,
    /// A name over [`MAX_METRIC_LEN`] bytes.
    NameTooLong,
    /// A name with a control character, `/`, `+` or `#`, or empty.
    BadName,
    /// Past [`MAX_JSON_READINGS`] readings in one message
    /// ([`MAX_LINE_READINGS`] for line protocol).
    TooManyFields,
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
    /// A batch element that is not an object.
    NotAnObject,
    /// Its object's or line's time was refused.
    BadTimestamp,
    /// A line of line protocol that does not parse.
    BadLine,
    /// A line of line protocol naming no valid device (no device tag,
    /// and no device in the topic).
    NoDevice,
}

impl DropReason {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [DropReason; 10] = [
        Self::NotANumber,
        Self::NotFinite,
        Self::NameTooLong,
        Self::BadName,
        Self::TooManyFields,
        Self::TooDeep,
        Self::NotAnObject,
        Self::BadTimestamp,
        Self::BadLine,
        Self::NoDevice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NotANumber => "not_a_number",
            Self::NotFinite => "not_finite",
            Self::NameTooLong => "name_too_long",
            Self::BadName => "bad_name",
            Self::TooManyFields => "too_many_fields",
            Self::TooDeep => "too_deep",
            Self::NotAnObject => "not_an_object",
            Self::BadTimestamp => "bad_timestamp",
            Self::BadLine => "bad_line",
            Self::NoDevice => "no_device",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a message was refused.
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
    #[error("JSON payload must be an object of readings or an array of them")]
    NotAnObject,
    #[error("time: {0}")]
    BadTimestamp(String),
    #[error("message holds no numeric readings")]
    NoReadings,
    #[error("a plain value needs the metric from the topic (`metric_level`)")]
    NoMetric,
    #[error("device limit reached (ingest.max_devices); the device keeps its frames")]
    TooManyDevices,
    #[error("payload is not UTF-8 text: {0}")]
    NotUtf8(String),
    #[error("no line holds a reading ({} dropped)", .0.len())]
    NoLines(Vec<Dropped>),
    #[error("payload holds readings of several devices; decode it with `Decoder::decode_into`")]
    SeveralDevices,
}

impl DecodeError {
    /// Every reason, in the order `/metrics` lists them.
    pub const REASONS: [&'static str; 13] = [
        "oversized",
        "bad_device",
        "bad_frame",
        "not_telemetry",
        "device_mismatch",
        "bad_json",
        "not_an_object",
        "bad_timestamp",
        "no_readings",
        "no_metric",
        "device_cap",
        "not_utf8",
        "several_devices",
    ];

    /// The `reason` label of `eddy_messages_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::BadDevice { .. } => "bad_device",
            Self::Frame(_) => "bad_frame",
            Self::NotTelemetry(_) => "not_telemetry",
            Self::DeviceMismatch { .. } => "device_mismatch",
            Self::Json(_) => "bad_json",
            Self::NotAnObject => "not_an_object",
            Self::BadTimestamp(_) => "bad_timestamp",
            Self::NoReadings | Self::NoLines(_) => "no_readings",
            Self::NotUtf8(_) => "not_utf8",
            Self::SeveralDevices => "several_devices",
            Self::NoMetric => "no_metric",
            Self::TooManyDevices => "device_cap",
        }
    }
}

/// Where a route's payloads keep their event time.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSpec {
    /// The member's path (`ts`, `Time`, `meta.time`).
    pub key: String,
    /// The zone of times written without an offset.
    pub zone: TimeZone,
}

impl Default for TimeSpec {
    fn default() -> Self {
        Self {
            key: "ts".into(),
            zone: TimeZone::UTC,
        }
    }
}

/// How one route's messages are decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoder {
    pub format: PayloadFormat,
    pub time: TimeSpec,
    /// Where line protocol names the device, the path and its time unit.
    pub line: LineSpec,
    /// Larger payloads are refused.
    pub max_payload: usize,
}

impl Decoder {
    /// `format` with the default time key (`ts`, UTC) and a 64 KiB limit.
    pub fn new(format: PayloadFormat) -> Self {
        Self {
            format,
            time: TimeSpec::default(),
            line: LineSpec::default(),
            max_payload: 64 * 1024,
        }
    }

    /// Decodes one message of one device published on a topic of
    /// `device`; `metric` is the metric a topic names (plain values).
    /// `now_ms` stamps readings that carry no event time.
    ///
    /// Errors: as [`Decoder::decode_into`], and
    /// [`DecodeError::SeveralDevices`] for line protocol naming several.
    pub fn decode(
        &self,
        device: &str,
        metric: Option<&str>,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Decoded, DecodeError> {
        let mut out = Vec::with_capacity(1);
        self.decode_into(device, metric, payload, now_ms, &mut out)?;
        match (out.pop(), out.is_empty()) {
            (Some(one), true) => Ok(one),
            (Some(_), false) => Err(DecodeError::SeveralDevices),
            (None, _) => Err(DecodeError::NoReadings),
        }
    }

    /// Decodes one message and appends its readings to `out`: one
    /// [`Decoded`] per device (several only for line protocol, whose
    /// lines may name their devices; `device` is empty when the topic
    /// names none).
    ///
    /// Errors: the whole message is refused ([`DecodeError`]); a field
    /// or line that cannot be used is reported in [`Decoded::dropped`].
    pub fn decode_into(
        &self,
        device: &str,
        metric: Option<&str>,
        payload: &[u8],
        now_ms: i64,
        out: &mut Vec<Decoded>,
    ) -> Result<(), DecodeError> {
        if payload.len() > self.max_payload {
            return Err(DecodeError::Oversized {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let lines_name_devices = self.format == PayloadFormat::LineProtocol && device.is_empty();
        if !lines_name_devices {
            valid_device(device).map_err(|reason| DecodeError::BadDevice {
                device: device.chars().take(64).collect(),
                reason: reason.into(),
            })?;
        }
        // JSON opens with `{` or `[` after optional white space; an Eddy
        // frame opens with its version byte.
        let json = || {
            payload
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| matches!(b, b'{' | b'['))
        };
        let one = match self.format {
            PayloadFormat::Auto if json() => json::decode(device, payload, &self.time, now_ms),
            PayloadFormat::Json => json::decode(device, payload, &self.time, now_ms),
            PayloadFormat::Auto | PayloadFormat::Eddy => decode_frame(device, payload, now_ms),
            PayloadFormat::Value => decode_value(
                device,
                metric.ok_or(DecodeError::NoMetric)?,
                payload,
                now_ms,
            ),
            PayloadFormat::Senml => senml::decode(device, payload, now_ms),
            PayloadFormat::LineProtocol => {
                out.append(&mut line::decode(device, payload, &self.line, now_ms)?);
                return Ok(());
            }
        };
        out.push(one?);
        Ok(())
    }
}

/// Decodes one message of `format` with the default time key: the
/// shorthand of [`Decoder::decode`].
pub fn decode(
    format: PayloadFormat,
    device: &str,
    payload: &[u8],
    max_payload: usize,
    now_ms: i64,
) -> Result<Decoded, DecodeError> {
    Decoder {
        max_payload,
        ..Decoder::new(format)
    }
    .decode(device, None, payload, now_ms)
}

/// A device id from a topic: UTF-8 up to [`MAX_DEVICE_LEN`] bytes, no
/// control characters, `/`, `+` or `#`.
pub fn valid_device(device: &str) -> Result<(), &'static str> {
    match check_name(device, MAX_DEVICE_LEN) {
        Ok(()) => Ok(()),
        Err(DropReason::NameTooLong) => Err("is longer than 128 bytes"),
        Err(_) => Err("is empty or has a control character, `/`, `+` or `#`"),
    }
}

/// A metric path: UTF-8 up to [`MAX_METRIC_LEN`] bytes, no control
/// characters, `/`, `+` or `#`.
pub fn valid_metric(name: &str) -> Result<(), DropReason> {
    check_name(name, MAX_METRIC_LEN)
}

fn check_name(name: &str, max: usize) -> Result<(), DropReason> {
    if name.len() > max {
        return Err(DropReason::NameTooLong);
    }
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '+' | '#'))
    {
        return Err(DropReason::BadName);
    }
    Ok(())
}

/// A plain value: a number as text (`21.5`), or `true`/`false`,
/// `ON`/`OFF` as 1/0, for the metric the topic names.
fn decode_value(
    device: &str,
    metric: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Decoded, DecodeError> {
    let text = std::str::from_utf8(payload).unwrap_or("").trim();
    let value = match text.to_ascii_lowercase().as_str() {
        "true" | "on" => Some(1.0),
        "false" | "off" => Some(0.0),
        t => t.parse::<f64>().ok(),
    };
    let mut decoded = Decoded {
        device: device.to_string(),
        seq: None,
        readings: Vec::new(),
        dropped: Vec::new(),
        path: None,
    };
    let reason = match value {
        None => Some(DropReason::NotANumber),
        Some(v) if !v.is_finite() => Some(DropReason::NotFinite),
        Some(_) => valid_metric(metric).err(),
    };
    match (reason, value) {
        (None, Some(value)) => decoded.readings.push(Reading {
            metric: metric.to_string(),
            value,
            ts_ms: now_ms,
        }),
        (reason, _) => {
            decoded.dropped.push(Dropped {
                field: metric.chars().take(128).collect(),
                reason: reason.unwrap_or(DropReason::NotANumber),
            });
            return Err(DecodeError::NoReadings);
        }
    }
    Ok(decoded)
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
    // 0: the device has no clock; otherwise Unix milliseconds.
    let ts_ms = match telemetry.timestamp_ms {
        0 => now_ms,
        t => match i64::try_from(t) {
            Ok(ms) if (time::EARLIEST_MS..time::LATEST_MS).contains(&ms) => ms,
            _ => {
                return Err(DecodeError::BadTimestamp(
                    TimeError::Implausible(format!("{t} ms")).to_string(),
                ));
            }
        },
    };
    Ok(Decoded {
        device: device.to_string(),
        seq: Some(FrameSeq {
            boot: telemetry.boot,
            seq: telemetry.seq,
            oldest: telemetry.oldest,
        }),
        readings: telemetry
            .readings
            .iter()
            .map(|r| Reading {
                metric: r.metric.to_string(),
                value: r.value,
                ts_ms,
            })
            .collect(),
        dropped: Vec::new(),
        path: None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2024-03-01T12:00:00Z.
    const T: i64 = 1_709_294_400_000;

    fn json(payload: &str) -> Result<Decoded, DecodeError> {
        decode(
            PayloadFormat::Auto,
            "dev-1",
            payload.as_bytes(),
            1 << 20,
            42,
        )
    }

    fn values(d: &Decoded) -> Vec<(&str, f64)> {
        d.readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect()
    }

    fn dropped(d: &Decoded) -> Vec<(&str, DropReason)> {
        d.dropped
            .iter()
            .map(|x| (x.field.as_str(), x.reason))
            .collect()
    }

    #[test]
    fn flat_json_readings_with_and_without_ts() {
        let d = json(r#"{"temperature": 21.5, "humidity": 40}"#).expect("decodes");
        assert_eq!(d.readings.len(), 2);
        assert!(d.readings.iter().all(|r| r.ts_ms == 42));
        for (ts, unit) in [
            ("1709294400", "s"),
            ("1709294400000", "ms"),
            ("1709294400000000", "us"),
            ("1709294400000000000", "ns"),
            ("\"2024-03-01T13:00:00+01:00\"", "ISO"),
        ] {
            let d = json(&format!(r#"{{"t": 1, "ts": {ts}}}"#)).expect(unit);
            assert_eq!(d.readings[0].ts_ms, T, "{unit}");
        }
    }

    #[test]
    fn nested_objects_and_arrays_flatten_and_text_is_counted() {
        let d = json(r#"{"Time": "2024-01-01T00:00:00", "ENERGY": {"Total": 1.25, "Power": [120, 35], "On": true}}"#)
            .expect("decodes");
        assert_eq!(
            values(&d),
            vec![
                ("ENERGY.On", 1.0),
                ("ENERGY.Power.0", 120.0),
                ("ENERGY.Power.1", 35.0),
                ("ENERGY.Total", 1.25)
            ]
        );
        assert_eq!(dropped(&d), vec![("Time", DropReason::NotANumber)]);
    }

    #[test]
    fn numbers_written_as_strings_are_numbers() {
        let d = json(r#"{"voltage": "236.8", "temperature": 13.9, "state": "ON", "bad": "NaN"}"#)
            .expect("decodes");
        assert_eq!(values(&d), vec![("temperature", 13.9), ("voltage", 236.8)]);
        assert_eq!(
            dropped(&d),
            vec![
                ("state", DropReason::NotANumber),
                ("bad", DropReason::NotFinite)
            ]
        );
        let d = json(r#"{"voltage": " 236.8 ", "current": "0.5"}"#).expect("strings alone");
        assert_eq!(values(&d), vec![("current", 0.5), ("voltage", 236.8)]);
    }

    #[test]
    fn bare_nan_and_infinity_as_python_writes_them_drop_alone() {
        let d = json(r#"{"temperature": 21.5, "n": NaN, "hi": Infinity, "lo": -Infinity, "note": "NaN, Infinity\" x"}"#)
            .expect("decodes");
        assert_eq!(values(&d), vec![("temperature", 21.5)]);
        assert_eq!(
            dropped(&d),
            vec![
                ("n", DropReason::NotFinite),
                ("hi", DropReason::NotFinite),
                ("lo", DropReason::NotFinite),
                ("note", DropReason::NotANumber)
            ]
        );
        // Still not JSON: the parser's error, not a guess.
        assert!(json(r#"{"a": NaNx}"#).is_err());
        assert!(json(r#"{"a": nan}"#).is_err());
    }

    #[test]
    fn one_bad_field_never_takes_its_neighbours() {
        let long = "x".repeat(MAX_METRIC_LEN + 1);
        let d = json(&format!(
            r#"{{"total_energy_consumption_at_date_kwh": 7, "{long}": 1, "a/b": 2, "c": 3}}"#
        ))
        .expect("decodes");
        assert_eq!(
            values(&d),
            vec![("c", 3.0), ("total_energy_consumption_at_date_kwh", 7.0)]
        );
        assert_eq!(d.dropped[0].reason, DropReason::NameTooLong);
        assert_eq!(
            d.dropped[1],
            Dropped {
                field: "a/b".into(),
                reason: DropReason::BadName
            }
        );
        let many: String = (0..MAX_JSON_READINGS + 6)
            .map(|i| format!("\"m{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let d = json(&format!("{{{many}}}")).expect("decodes");
        assert_eq!(d.readings.len(), MAX_JSON_READINGS);
        assert_eq!(d.dropped.len(), 6);
        assert!(
            d.dropped
                .iter()
                .all(|x| x.reason == DropReason::TooManyFields)
        );
    }

    #[test]
    fn a_batch_is_an_array_of_objects_each_with_its_time() {
        let d = json(r#"[{"t": 1, "ts": 1709294400}, {"t": 2, "ts": 1709294401}, 5, {"t": 3}]"#)
            .expect("decodes");
        let got: Vec<_> = d.readings.iter().map(|r| (r.value, r.ts_ms)).collect();
        assert_eq!(got, vec![(1.0, T), (2.0, T + 1000), (3.0, 42)]);
        assert_eq!(dropped(&d), vec![("[2]", DropReason::NotAnObject)]);
        // One element's bad time drops that element alone.
        let d = json(r#"[{"t": 1, "ts": 12}, {"t": 2}]"#).expect("decodes");
        assert_eq!(values(&d), vec![("t", 2.0)]);
        assert_eq!(dropped(&d), vec![("t", DropReason::BadTimestamp)]);
    }

    #[test]
    fn bad_json_is_named() {
        assert!(matches!(json("{not json"), Err(DecodeError::Json(_))));
        assert_eq!(json("[1,2]"), Err(DecodeError::NoReadings));
        assert_eq!(json(r#"{"status": "ok"}"#), Err(DecodeError::NoReadings));
        assert!(matches!(
            json(r#"{"t": 1, "ts": "yesterday"}"#),
            Err(DecodeError::BadTimestamp(_))
        ));
        // Microseconds read as milliseconds would be the year 56000.
        assert!(json(r#"{"t": 1, "ts": 1709294400000000}"#).is_ok());
        assert!(matches!(
            json(r#"{"t": 1, "ts": 17092944000000}"#),
            Err(DecodeError::BadTimestamp(_))
        ));
    }

    #[test]
    fn json_edge_cases() {
        // A key given twice keeps its last value; escaped keys decode.
        let d = json(r#"{"t": 1, "t": 2, "h\u0075m": 3}"#).expect("decodes");
        assert_eq!(values(&d), vec![("hum", 3.0), ("t", 2.0)]);
        let d =
            json(r#"{"a": [1, {"b": 2}], "n": null, "big": 18446744073709551615, "e": -1.5e3}"#)
                .expect("decodes");
        assert_eq!(
            values(&d),
            vec![
                ("a.0", 1.0),
                ("a.1.b", 2.0),
                ("big", u64::MAX as f64),
                ("e", -1500.0)
            ]
        );
        // Values nested deeper than the limit are dropped, counted.
        let deep = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_JSON_DEPTH + 1),
            "}".repeat(MAX_JSON_DEPTH + 1)
        );
        let deep = deep.replacen("{\"a\":", "{\"x\": 0, \"a\":", 1);
        let d = json(&deep).expect("decodes");
        assert_eq!(values(&d), vec![("x", 0.0)]);
        assert_eq!(d.dropped[0].reason, DropReason::TooDeep);
        // `ts` counts at the top level only.
        let d = json(r#"{"a": {"ts": 5}, "ts": 1709294400}"#).expect("decodes");
        assert_eq!(
            (d.readings[0].metric.as_str(), d.readings[0].ts_ms),
            ("a.ts", T)
        );
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

    #[test]
    fn the_time_key_and_zone_come_from_the_route() {
        let decoder = Decoder {
            time: TimeSpec {
                key: "Time".into(),
                zone: time::zone("+01:00").expect("offset"),
            },
            ..Decoder::new(PayloadFormat::Json)
        };
        let d = decoder
            .decode(
                "plug-1",
                None,
                br#"{"Time": "2024-03-01T13:00:00", "t": 21}"#,
                42,
            )
            .expect("decodes");
        assert_eq!(d.readings[0].ts_ms, T);
        let d = decoder
            .decode(
                "plug-1",
                None,
                br#"{"Time": "2024-03-01T12:00:00Z", "ts": 5, "t": 21}"#,
                42,
            )
            .expect("decodes");
        assert_eq!(values(&d), vec![("t", 21.0), ("ts", 5.0)]);
        assert_eq!(d.readings[0].ts_ms, T);
    }

    #[test]
    fn plain_values_take_the_metric_from_the_topic() {
        let decoder = Decoder::new(PayloadFormat::Value);
        let d = decoder
            .decode("kitchen", Some("temperature"), b" 21.5\n", 42)
            .expect("decodes");
        assert_eq!(values(&d), vec![("temperature", 21.5)]);
        let on = decoder
            .decode("kitchen", Some("light"), b"ON", 42)
            .expect("on");
        assert_eq!(values(&on), vec![("light", 1.0)]);
        assert_eq!(
            decoder.decode("kitchen", Some("t"), b"unavailable", 42),
            Err(DecodeError::NoReadings)
        );
        assert_eq!(
            decoder.decode("kitchen", None, b"1", 42),
            Err(DecodeError::NoMetric)
        );
    }

    type Named = (String, f64);

    /// A tree-walking reading of the same rules: the reference for the
    /// streaming decoder.
    fn reference(payload: &[u8]) -> Option<(Option<serde_json::Value>, Vec<Named>)> {
        fn walk(key: &str, v: &serde_json::Value, depth: usize, out: &mut Vec<Named>) {
            match v {
                serde_json::Value::Number(n) => {
                    out.push((key.to_string(), n.as_f64().unwrap_or(f64::NAN)))
                }
                serde_json::Value::Bool(b) => out.push((key.to_string(), f64::from(u8::from(*b)))),
                serde_json::Value::String(s) => {
                    if let Ok(v) = s
                        .trim()
                        .parse::<f64>()
                        .map_err(drop)
                        .and_then(|v| v.is_finite().then_some(v).ok_or(()))
                    {
                        out.push((key.to_string(), v));
                    }
                }
                serde_json::Value::Object(o) if depth < MAX_JSON_DEPTH => {
                    for (k, v) in o {
                        walk(&format!("{key}.{k}"), v, depth + 1, out);
                    }
                }
                serde_json::Value::Array(a) if depth < MAX_JSON_DEPTH => {
                    for (i, v) in a.iter().enumerate() {
                        walk(&format!("{key}.{i}"), v, depth + 1, out);
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
                ts = Some(v.clone());
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
            (0.9e9f64..4.2e9).prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            "[a-z ]{0,6}".prop_map(serde_json::Value::from),
            "-?[0-9]{1,4}(\\.[0-9]{1,3})?".prop_map(serde_json::Value::from),
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
            let ts_ms = match &ts {
                None => Ok(42),
                Some(serde_json::Value::Number(n)) => time::epoch_ms(n.as_f64().unwrap_or(f64::NAN)),
                Some(serde_json::Value::String(s)) => time::text_ms(s, &TimeZone::UTC),
                Some(_) => Err(TimeError::NotATime),
            };
            match decode(PayloadFormat::Json, "dev-1", &payload, 1 << 20, 42) {
                Ok(d) => {
                    let got: Vec<_> = d.readings.iter().map(|r| (r.metric.clone(), r.value)).collect();
                    prop_assert_eq!(got, want);
                    prop_assert!(d.readings.iter().all(|r| Ok(r.ts_ms) == ts_ms));
                }
                Err(DecodeError::NoReadings) => prop_assert!(want.is_empty()),
                Err(DecodeError::BadTimestamp(_)) => prop_assert!(ts_ms.is_err()),
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
            decode(PayloadFormat::Json, "a/b", b"{\"t\":1}", 1024, 0),
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
            (d.seq, d.readings[0].ts_ms),
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
