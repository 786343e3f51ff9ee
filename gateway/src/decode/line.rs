//! InfluxDB line protocol
//! (<https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/>),
//! parsed with InfluxData's own parser (`influxdb-line-protocol`).
//!
//! `weather,device=st-4,site=north,sensor=a temp=21.5,ok=true 1709294400000000000`
//! becomes, for device `st-4` (the [`LineSpec::device_tag`]) on hierarchy
//! path `north` (the [`LineSpec::path_tags`]), the readings
//! `weather.a.temp` = 21.5 and `weather.a.ok` = 1. The metric path is the
//! measurement, the values of the other tags in the order of their keys,
//! then the field: the Graphite template `measurement.tags.field` that
//! Telegraf uses, so `cpu,cpu=cpu0` and `cpu,cpu=cpu1` stay two series.
//!
//! Field values: floats, integers (`5i`), unsigned integers (`5u`),
//! booleans (1/0) and strings holding a number; other strings are
//! dropped, counted. The timestamp is an integer in the route's
//! [`Precision`] (nanoseconds unless configured, as InfluxDB reads it)
//! and must fall in 2000..2100; a line without one is stamped with the
//! arrival time.
//!
//! One message holds any number of lines, each possibly of another
//! device: the result is one [`Decoded`] per device, in order of first
//! appearance. A line that does not parse, names no device or carries an
//! implausible time is dropped alone (`line N`), counted; its neighbours
//! are kept.

use influxdb_line_protocol::{FieldValue, ParsedLine};
use serde::Deserialize;

use super::time::{EARLIEST_MS, LATEST_MS};
use super::{
    DecodeError, Decoded, DropReason, Dropped, MAX_LINE_READINGS, Reading, valid_device,
    valid_metric,
};

/// The unit of line protocol timestamps (InfluxDB's `precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Precision {
    #[default]
    #[serde(rename = "ns", alias = "n")]
    Nanoseconds,
    #[serde(rename = "us", alias = "u")]
    Microseconds,
    #[serde(rename = "ms")]
    Milliseconds,
    #[serde(rename = "s")]
    Seconds,
}

impl Precision {
    /// InfluxDB's names: `ns`, `us`, `ms`, `s` (v2) and `n`, `u` (v1).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ns" | "n" => Self::Nanoseconds,
            "us" | "u" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            _ => return None,
        })
    }

    /// A timestamp in this unit as Unix milliseconds, if it is an instant
    /// in 2000..2100.
    fn ms(self, ts: i64) -> Option<i64> {
        let ms = match self {
            Self::Nanoseconds => ts / 1_000_000,
            Self::Microseconds => ts / 1_000,
            Self::Milliseconds => ts,
            Self::Seconds => ts.checked_mul(1000)?,
        };
        (EARLIEST_MS..LATEST_MS).contains(&ms).then_some(ms)
    }
}

/// Where line protocol keeps what Eddy needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LineSpec {
    /// The tag naming the device; a line without it belongs to the
    /// route's device (from the topic), or is dropped when there is none.
    pub device_tag: Option<String>,
    /// Tags whose values make the device's hierarchy path, outermost
    /// first (`["site", "line"]` -> `north/4`).
    pub path_tags: Vec<String>,
    pub precision: Precision,
}

/// Decodes line protocol; `device` is the route's device (empty when the
/// lines must name theirs).
pub(super) fn decode(
    device: &str,
    payload: &[u8],
    spec: &LineSpec,
    now_ms: i64,
) -> Result<Vec<Decoded>, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    let mut out: Vec<Decoded> = Vec::new();
    let mut readings = 0usize;
    // Dropped lines that name no device are reported on the first
    // device's result (or on the refusal).
    let mut orphans: Vec<Dropped> = Vec::new();
    for (i, line) in influxdb_line_protocol::split_lines(text).enumerate() {
        let line_no = i + 1;
        let dropped_line = |reason| Dropped {
            field: format!("line {line_no}"),
            reason,
        };
        let parsed = match influxdb_line_protocol::parse_lines(line).next() {
            None => continue,
            Some(Ok(parsed)) => parsed,
            Some(Err(_)) => {
                orphans.push(dropped_line(DropReason::BadLine));
                continue;
            }
        };
        let tag = |key: &str| -> Option<&str> {
            parsed
                .series
                .tag_set
                .as_ref()?
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.as_str())
        };
        let named = spec.device_tag.as_deref().and_then(tag);
        let line_device = match named {
            Some(d) => d,
            None if !device.is_empty() => device,
            None => {
                orphans.push(dropped_line(DropReason::NoDevice));
                continue;
            }
        };
        if valid_device(line_device).is_err() {
            orphans.push(dropped_line(DropReason::NoDevice));
            continue;
        }
        let path = match spec.path_tags.is_empty() {
            true => None,
            false => {
                let parts: Vec<&str> = spec.path_tags.iter().filter_map(|t| tag(t)).collect();
                (parts.len() == spec.path_tags.len()).then(|| parts.join("/"))
            }
        };
        let at = match out.iter().position(|d| d.device == line_device) {
            Some(at) => at,
            None => {
                out.push(Decoded {
                    device: line_device.to_string(),
                    seq: None,
                    readings: Vec::new(),
                    dropped: Vec::new(),
                    path: None,
                });
                out.len() - 1
            }
        };
        let decoded = &mut out[at];
        if path.is_some() {
            decoded.path = path;
        }
        let ts_ms = match parsed.timestamp {
            None => now_ms,
            Some(ts) => match spec.precision.ms(ts) {
                Some(ms) => ms,
                None => {
                    decoded.dropped.push(dropped_line(DropReason::BadTimestamp));
                    continue;
                }
            },
        };
        let prefix = metric_prefix(&parsed, spec);
        for (field, value) in &parsed.field_set {
            let metric = format!("{prefix}.{}", field.as_str());
            let drop = |reason| Dropped {
                field: format!(
                    "line {line_no}: {}",
                    metric.chars().take(100).collect::<String>()
                ),
                reason,
            };
            let value = match value {
                FieldValue::F64(v) => *v,
                FieldValue::I64(v) => *v as f64,
                FieldValue::U64(v) => *v as f64,
                FieldValue::Boolean(b) => f64::from(u8::from(*b)),
                FieldValue::String(s) => match s.trim().parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => {
                        decoded.dropped.push(drop(DropReason::NotANumber));
                        continue;
                    }
                },
            };
            let reason = match () {
                () if !value.is_finite() => Some(DropReason::NotFinite),
                () if readings >= MAX_LINE_READINGS => Some(DropReason::TooManyFields),
                () => valid_metric(&metric).err(),
            };
            if let Some(reason) = reason {
                decoded.dropped.push(drop(reason));
                continue;
            }
            readings += 1;
            decoded.readings.push(Reading {
                metric,
                value,
                ts_ms,
            });
        }
    }
    out.retain(|d| !d.readings.is_empty() || !d.dropped.is_empty());
    if readings == 0 {
        return Err(match orphans.is_empty() && out.is_empty() {
            true => DecodeError::NoReadings,
            false => DecodeError::NoLines(
                orphans
                    .into_iter()
                    .chain(out.into_iter().flat_map(|d| d.dropped))
                    .collect(),
            ),
        });
    }
    if let Some(first) = out.first_mut() {
        orphans.append(&mut first.dropped);
        first.dropped = orphans;
    }
    Ok(out)
}

/// The measurement and the values of the tags that are neither the
/// device's nor the path's, in the order of their keys, joined with `.`.
fn metric_prefix(parsed: &ParsedLine<'_>, spec: &LineSpec) -> String {
    let mut prefix = parsed.series.measurement.as_str().to_string();
    let Some(tags) = &parsed.series.tag_set else {
        return prefix;
    };
    let mut rest: Vec<_> = tags
        .iter()
        .filter(|(k, _)| {
            spec.device_tag.as_deref() != Some(k.as_str())
                && !spec.path_tags.iter().any(|p| p == k.as_str())
        })
        .collect();
    rest.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (_, v) in rest {
        prefix.push('.');
        prefix.push_str(v.as_str());
    }
    prefix
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2024-03-01T12:00:00Z.
    const T: i64 = 1_709_294_400_000;

    fn spec() -> LineSpec {
        LineSpec {
            device_tag: Some("device".into()),
            path_tags: vec!["site".into()],
            precision: Precision::Nanoseconds,
        }
    }

    fn values(d: &Decoded) -> Vec<(&str, f64, i64)> {
        d.readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value, r.ts_ms))
            .collect()
    }

    #[test]
    fn lines_of_several_devices_with_tags_fields_and_times() {
        let payload = "weather,device=st-4,site=north,sensor=a temp=21.5,ok=true,n=3i,u=4u 1709294400000000000\n\
                       \n\
                       # a comment\n\
                       weather,device=st-5,site=south temp=19,label=\"x\",num=\"2.5\"\n\
                       cpu,cpu=cpu1,device=st-4 usage=0.5 1709294401000000000\n";
        let got = decode("", payload.as_bytes(), &spec(), 42).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].device, "st-4");
        assert_eq!(got[0].path.as_deref(), Some("north"));
        assert_eq!(
            values(&got[0]),
            vec![
                ("weather.a.temp", 21.5, T),
                ("weather.a.ok", 1.0, T),
                ("weather.a.n", 3.0, T),
                ("weather.a.u", 4.0, T),
                ("cpu.cpu1.usage", 0.5, T + 1000),
            ]
        );
        assert_eq!(got[1].device, "st-5");
        assert_eq!(got[1].path.as_deref(), Some("south"));
        assert_eq!(
            values(&got[1]),
            vec![("weather.temp", 19.0, 42), ("weather.num", 2.5, 42)]
        );
        assert_eq!(
            got[1].dropped,
            vec![Dropped {
                field: "line 4: weather.label".into(),
                reason: DropReason::NotANumber
            }]
        );
    }

    #[test]
    fn a_bad_line_is_dropped_alone_and_named() {
        let payload =
            "m,device=a v=1 1709294400\nm,device=a v=\nm v=3\nm,device=a v=4 12\nm,device=b v=5";
        let spec = LineSpec {
            precision: Precision::Seconds,
            ..spec()
        };
        let got = decode("", payload.as_bytes(), &spec, 42).expect("decodes");
        assert_eq!(values(&got[0]), vec![("m.v", 1.0, T)]);
        assert_eq!(values(&got[1]), vec![("m.v", 5.0, 42)]);
        let dropped: Vec<_> = got[0]
            .dropped
            .iter()
            .map(|d| (d.field.as_str(), d.reason))
            .collect();
        assert_eq!(
            dropped,
            vec![
                ("line 2", DropReason::BadLine),
                ("line 3", DropReason::NoDevice),
                ("line 4", DropReason::BadTimestamp),
            ]
        );
        // The topic's device serves lines without the tag.
        let got = decode("meter-1", b"m v=3", &spec, 42).expect("decodes");
        assert_eq!(got[0].device, "meter-1");
    }

    #[test]
    fn precisions_and_refusals() {
        for (precision, ts) in [
            (Precision::Nanoseconds, "1709294400000000000"),
            (Precision::Microseconds, "1709294400000000"),
            (Precision::Milliseconds, "1709294400000"),
            (Precision::Seconds, "1709294400"),
        ] {
            let spec = LineSpec {
                precision,
                ..spec()
            };
            let got = decode("d", format!("m v=1 {ts}").as_bytes(), &spec, 0).expect("decodes");
            assert_eq!(got[0].readings[0].ts_ms, T, "{precision:?}");
        }
        assert_eq!(Precision::parse("u"), Some(Precision::Microseconds));
        assert_eq!(Precision::parse("h"), None);
        assert_eq!(
            decode("d", b"\n\n", &spec(), 0),
            Err(DecodeError::NoReadings)
        );
        assert!(matches!(
            decode("", b"m v=1\nm,device=x v=\"on\"", &spec(), 0),
            Err(DecodeError::NoLines(d)) if d.len() == 2
        ));
        assert!(matches!(
            decode("d", &[0xff, 0xfe], &spec(), 0),
            Err(DecodeError::NotUtf8(_))
        ));
        // NaN is not a line protocol float; `inf` neither.
        let got = decode("d", b"m a=1,b=NaN\nm c=2", &spec(), 0).expect("decodes");
        assert_eq!(values(&got[0]), vec![("m.c", 2.0, 0)]);
    }

    proptest! {
        /// Text of line protocol's own characters, in any order: never a
        /// panic, and every reading is a finite value of a valid device
        /// and metric.
        #[test]
        fn any_text_decodes_or_is_refused(text in "[a-z0-9,= \"\\\\.#\n-]{0,120}") {
            for device in ["", "dev-1"] {
                if let Ok(decoded) = decode(device, text.as_bytes(), &spec(), 0) {
                    prop_assert!(decoded.iter().any(|d| !d.readings.is_empty()));
                    for d in decoded {
                        prop_assert!(valid_device(&d.device).is_ok());
                        prop_assert!(d.readings.iter().all(|r| r.value.is_finite() && valid_metric(&r.metric).is_ok()));
                    }
                }
            }
        }
    }
}
