//! JSON payloads, streamed straight into readings with serde (no tree of
//! values is built).
//!
//! - An object of readings: numbers, booleans (1/0) and numbers written
//!   as strings (`"236.8"`); nested objects and arrays flatten with `.`
//!   (`ENERGY.Power.0`) down to [`MAX_JSON_DEPTH`] levels.
//! - An array of such objects (a batch), each with its own time.
//! - The event time is the member at the route's time key (`ts` unless
//!   configured), a number in any of four units or an ISO 8601 string
//!   ([`super::time`]); without one, the arrival time.
//!
//! A field that cannot be a reading (text that is not a number, `NaN`,
//! a name over the limit, too deep, one too many) is dropped alone and
//! reported in [`Decoded::dropped`]; its neighbours are kept.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::time::{self, TimeError};
use super::{
    DecodeError, Decoded, DropReason, Dropped, MAX_JSON_DEPTH, MAX_JSON_READINGS, Reading,
    TimeSpec, valid_metric,
};

/// Decodes a JSON object or array of objects published by `device`.
pub(super) fn decode(
    device: &str,
    payload: &[u8],
    time: &TimeSpec,
    now_ms: i64,
) -> Result<Decoded, DecodeError> {
    let mut sink = Sink {
        time,
        now_ms,
        object_ts: None,
        readings: Vec::new(),
        dropped: Vec::new(),
        bad_time: None,
    };
    let opens = payload.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(opens, Some(b'{' | b'[')) {
        // Valid JSON of another kind, or not JSON at all.
        return Err(match serde_json::from_slice::<IgnoredAny>(payload) {
            Ok(_) => DecodeError::NotAnObject,
            Err(e) => DecodeError::Json(e.to_string()),
        });
    }
    if let Err(e) = stream(payload, &mut sink) {
        // `NaN` and `Infinity` are not JSON, but Python's `json.dumps`
        // and others write them: read them as text, dropped as not
        // finite with the field's name, the neighbours kept.
        let quoted = quote_non_finite(payload).ok_or_else(|| DecodeError::Json(e.to_string()))?;
        sink.readings.clear();
        sink.dropped.clear();
        sink.object_ts = None;
        sink.bad_time = None;
        stream(&quoted, &mut sink).map_err(|_| DecodeError::Json(e.to_string()))?;
    }
    if sink.readings.is_empty() {
        return Err(match sink.bad_time {
            Some(e) => DecodeError::BadTimestamp(e.to_string()),
            None => DecodeError::NoReadings,
        });
    }
    Ok(Decoded {
        device: device.to_string(),
        seq: None,
        readings: sink.readings,
        dropped: sink.dropped,
        path: None,
    })
}

/// Streams `payload` into `sink`.
fn stream(payload: &[u8], sink: &mut Sink<'_>) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    Top { sink }.deserialize(&mut de).and_then(|()| de.end())
}

/// `payload` with the bare tokens `NaN`, `Infinity` and `-Infinity`
/// outside strings put in quotes; `None` when it has none.
fn quote_non_finite(payload: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out = Vec::with_capacity(payload.len() + 8);
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    let mut i = 0;
    while i < payload.len() {
        let b = payload[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if let Some(t) = TOKENS.iter().find(|t| payload[i..].starts_with(t)) {
            out.push(b'"');
            out.extend_from_slice(t);
            out.push(b'"');
            i += t.len();
            found = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    found.then_some(out)
}

/// What the streaming decoder collected.
struct Sink<'t> {
    time: &'t TimeSpec,
    now_ms: i64,
    /// The current object's event time, once its time member was read.
    object_ts: Option<Result<i64, TimeError>>,
    readings: Vec<Reading>,
    dropped: Vec<Dropped>,
    /// The first refused time, reported when nothing else was kept.
    bad_time: Option<TimeError>,
}

impl Sink<'_> {
    fn drop_field(&mut self, name: &str, reason: DropReason) {
        self.dropped.push(Dropped {
            field: name.chars().take(128).collect(),
            reason,
        });
    }

    /// A number or boolean becomes a reading, unless its name or value
    /// cannot be one.
    fn reading(&mut self, name: &str, value: f64) {
        if !value.is_finite() {
            return self.drop_field(name, DropReason::NotFinite);
        }
        if let Err(reason) = valid_metric(name) {
            return self.drop_field(name, reason);
        }
        if self.readings.len() >= MAX_JSON_READINGS {
            return self.drop_field(name, DropReason::TooManyFields);
        }
        self.readings.push(Reading {
            metric: name.to_string(),
            value,
            ts_ms: 0,
        });
    }

    /// Text: a number written as a string, or passed over (counted).
    fn text(&mut self, name: &str, text: &str) {
        match text.trim().parse::<f64>() {
            Ok(v) => self.reading(name, v),
            Err(_) => self.drop_field(name, DropReason::NotANumber),
        }
    }

    /// Ends the object whose readings start at `first`: stamps them with
    /// its time (or the arrival time), and keeps the last of a name given
    /// twice.
    fn end_object(&mut self, first: usize) {
        let ts_ms = match self.object_ts.take() {
            None => self.now_ms,
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                for r in self.readings.drain(first..).collect::<Vec<_>>() {
                    self.drop_field(&r.metric, DropReason::BadTimestamp);
                }
                self.bad_time.get_or_insert(e);
                return;
            }
        };
        for r in &mut self.readings[first..] {
            r.ts_ms = ts_ms;
        }
        // In name order; a name given twice keeps its last value. Only
        // this object's readings: a batch's objects may repeat names.
        if first == 0 {
            keep_last_of_each_name(&mut self.readings);
        } else {
            let mut object: Vec<Reading> = self.readings.drain(first..).collect();
            keep_last_of_each_name(&mut object);
            self.readings.extend(object);
        }
    }
}

/// Sorts by name and keeps the last value of a name given twice.
fn keep_last_of_each_name(readings: &mut Vec<Reading>) {
    // A stable sort keeps a name's values in the order they came.
    readings.sort_by(|a, b| a.metric.cmp(&b.metric));
    readings.dedup_by(|later, earlier| {
        let same = later.metric == earlier.metric;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
}

/// The payload: an object, or an array of objects.
struct Top<'a, 't> {
    sink: &'a mut Sink<'t>,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of readings or an array of them")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let first = self.sink.readings.len();
        Members {
            sink: self.sink,
            prefix: None,
            depth: 1,
        }
        .visit_map(map)?;
        self.sink.end_object(first);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(()) = seq.next_element_seed(Element {
            sink: self.sink,
            index: i,
        })? {
            i += 1;
        }
        Ok(())
    }
}

/// One element of a batch: an object of readings with its own time.
struct Element<'a, 't> {
    sink: &'a mut Sink<'t>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of readings")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Top { sink: self.sink }.visit_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.not_an_object();
        IgnoredAny.visit_seq(seq).map(|_| ())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }
}

impl Element<'_, '_> {
    fn not_an_object(self) {
        self.sink
            .drop_field(&format!("[{}]", self.index), DropReason::NotAnObject);
    }
}

/// An object's members: the time member, readings, and nested values
/// flattened with `.`.
struct Members<'a, 't> {
    sink: &'a mut Sink<'t>,
    prefix: Option<&'a str>,
    depth: usize,
}

impl<'de> Visitor<'de> for Members<'_, '_> {
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
            if name.as_ref() == self.sink.time.key.as_str() {
                let ts = map.next_value_seed(TimeMember {
                    zone: &self.sink.time.zone,
                })?;
                self.sink.object_ts = Some(ts);
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
struct Member<'a, 't> {
    sink: &'a mut Sink<'t>,
    name: &'a str,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Member<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Member<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reading")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.reading(self.name, v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.reading(self.name, v as f64);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.reading(self.name, v as f64);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.sink.reading(self.name, f64::from(u8::from(v)));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.sink.text(self.name, v);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth + 1 > MAX_JSON_DEPTH {
            self.sink.drop_field(self.name, DropReason::TooDeep);
            return IgnoredAny.visit_seq(seq).map(|_| ());
        }
        let mut i = 0usize;
        loop {
            let name = format!("{}.{i}", self.name);
            let seed = Member {
                sink: &mut *self.sink,
                name: &name,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if self.depth + 1 > MAX_JSON_DEPTH {
            self.sink.drop_field(self.name, DropReason::TooDeep);
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

/// The time member's value as an instant.
struct TimeMember<'z> {
    zone: &'z jiff::tz::TimeZone,
}

impl<'de> DeserializeSeed<'de> for TimeMember<'_> {
    type Value = Result<i64, TimeError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TimeMember<'_> {
    type Value = Result<i64, TimeError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a time")
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(time::epoch_ms(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(time::epoch_ms(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(time::epoch_ms(v as f64))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(time::text_ms(v, self.zone))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(TimeError::NotATime))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(TimeError::NotATime))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Err(TimeError::NotATime))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Err(TimeError::NotATime))
    }
}
