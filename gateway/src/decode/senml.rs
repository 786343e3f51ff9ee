//! SenML packs (RFC 8428, JSON representation): an array of records whose
//! base fields (`bn`, `bt`, `bv`) apply to the records after them.
//!
//! Each record with a numeric (`v`) or boolean (`vb`) value becomes a
//! reading: value `bv + v`, time `bt + t` in seconds (below 2^28 relative
//! to the arrival time, as RFC 8428 section 4.5.3 says; otherwise Unix
//! seconds, which must fall in 2000..2100). The device comes from the
//! topic; the metric is the record's name `n` (the base name alone when
//! it has none), so a base name naming the device (`urn:dev:mac:…:`) does
//! not repeat in every metric. String and data values (`vs`, `vd`) and
//! sums are dropped, counted. Units are not kept.

use serde::Deserialize;

use super::time::{EARLIEST_MS, LATEST_MS};
use super::{DecodeError, Decoded, DropReason, Dropped, MAX_JSON_READINGS, Reading, valid_metric};

/// Times below this many seconds are relative to now (RFC 8428, 4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;

/// One SenML record; unknown fields are ignored, as the RFC allows for
/// fields without a trailing `_`.
#[derive(Debug, Default, Deserialize)]
struct Record {
    bn: Option<String>,
    bt: Option<f64>,
    bv: Option<f64>,
    n: Option<String>,
    t: Option<f64>,
    v: Option<f64>,
    vb: Option<bool>,
    vs: Option<String>,
    vd: Option<String>,
    s: Option<f64>,
}

/// Decodes a SenML pack published by `device`.
pub(super) fn decode(device: &str, payload: &[u8], now_ms: i64) -> Result<Decoded, DecodeError> {
    let records: Vec<Record> = serde_json::from_slice(payload).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            DecodeError::Json(format!("not a SenML pack (an array of records): {e}"))
        }
        _ => DecodeError::Json(e.to_string()),
    })?;
    let mut decoded = Decoded {
        device: device.to_string(),
        seq: None,
        readings: Vec::new(),
        dropped: Vec::new(),
        path: None,
    };
    let (mut base_name, mut base_time, mut base_value) = (String::new(), 0.0, 0.0);
    for (i, r) in records.into_iter().enumerate() {
        if let Some(bn) = r.bn {
            base_name = bn;
        }
        if let Some(bt) = r.bt {
            base_time = bt;
        }
        if let Some(bv) = r.bv {
            base_value = bv;
        }
        let name = match r.n {
            Some(n) if !n.is_empty() => n,
            _ => base_name.clone(),
        };
        let field = if name.is_empty() {
            format!("[{i}]")
        } else {
            name.clone()
        };
        let mut drop = |reason| {
            decoded.dropped.push(Dropped {
                field: field.chars().take(128).collect(),
                reason,
            })
        };
        let value = match (r.v, r.vb) {
            (Some(v), _) => base_value + v,
            (None, Some(b)) => f64::from(u8::from(b)),
            (None, None) => {
                // A record of base fields alone carries no measurement.
                if r.vs.is_some() || r.vd.is_some() || r.s.is_some() {
                    drop(DropReason::NotANumber);
                }
                continue;
            }
        };
        if !value.is_finite() {
            drop(DropReason::NotFinite);
            continue;
        }
        if let Err(reason) = valid_metric(&name) {
            drop(reason);
            continue;
        }
        let seconds = base_time + r.t.unwrap_or(0.0);
        let ts_ms = if seconds.abs() < RELATIVE_LIMIT {
            now_ms.saturating_add((seconds * 1000.0) as i64)
        } else {
            let ms = seconds * 1000.0;
            if !(ms >= EARLIEST_MS as f64 && ms < LATEST_MS as f64) {
                drop(DropReason::BadTimestamp);
                continue;
            }
            ms as i64
        };
        if decoded.readings.len() >= MAX_JSON_READINGS {
            drop(DropReason::TooManyFields);
            continue;
        }
        decoded.readings.push(Reading {
            metric: name,
            value,
            ts_ms,
        });
    }
    if decoded.readings.is_empty() {
        return Err(DecodeError::NoReadings);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senml(payload: &str) -> Result<Decoded, DecodeError> {
        decode("dev-1", payload.as_bytes(), 1_000_000)
    }

    #[test]
    fn the_rfc_8428_multiple_datapoints_example() {
        // RFC 8428, section 5.1.2, with the base time moved into 2000..2100.
        let d = senml(
            r#"[
              {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},
              {"u":"lon","v":24.30621},
              {"u":"lat","v":60.07965},
              {"t":60,"v":20.3},
              {"u":"lon","t":60,"v":24.30622},
              {"u":"lat","t":60,"v":60.07965},
              {"t":120,"v":20.7}
            ]"#,
        )
        .expect("decodes");
        assert_eq!(d.readings.len(), 7);
        // No `n`: the base name is the metric.
        assert_eq!(d.readings[0].metric, "urn:dev:ow:10e2073a01080063:");
        assert_eq!(d.readings[0].ts_ms, 1_320_067_464_000);
        assert_eq!(d.readings[3].ts_ms, 1_320_067_524_000);
        assert_eq!(d.readings[6].value, 20.7);
    }

    #[test]
    fn names_base_values_relative_times_and_dropped_kinds() {
        let d = senml(
            r#"[
              {"bn":"urn:dev:mac:0024befffe804ff1:","bv":100,"n":"power","v":5},
              {"n":"door","vb":true,"t":-10},
              {"n":"label","vs":"kitchen"},
              {"n":"bad/name","v":1},
              {"n":"late","v":1,"bt":12.5}
            ]"#,
        )
        .expect("decodes");
        let got: Vec<_> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str(), r.value, r.ts_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                ("power", 105.0, 1_000_000),
                ("door", 1.0, 990_000),
                ("late", 101.0, 1_012_500)
            ]
        );
        let dropped: Vec<_> = d
            .dropped
            .iter()
            .map(|x| (x.field.as_str(), x.reason))
            .collect();
        assert_eq!(
            dropped,
            vec![
                ("label", DropReason::NotANumber),
                ("bad/name", DropReason::BadName)
            ]
        );
    }

    #[test]
    fn what_is_not_a_pack_is_refused() {
        assert!(matches!(
            senml(r#"{"n":"t","v":1}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(senml("[1, 2]"), Err(DecodeError::Json(_))));
        assert_eq!(senml(r#"[{"bn":"x"}]"#), Err(DecodeError::NoReadings));
        assert!(matches!(senml("[{"), Err(DecodeError::Json(_))));
        // An absolute time outside 2000..2100 drops its record.
        let d = senml(r#"[{"n":"a","v":1,"t":5e9},{"n":"b","v":2}]"#).expect("b");
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.dropped[0].reason, DropReason::BadTimestamp);
    }
}
