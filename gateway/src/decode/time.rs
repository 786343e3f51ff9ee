//! Event times as devices write them: Unix epoch numbers in seconds,
//! milliseconds, microseconds or nanoseconds, and ISO 8601 / RFC 3339
//! strings with or without an offset.
//!
//! A number's unit is read from its magnitude, and only within the
//! plausible instants [`EARLIEST_MS`]..[`LATEST_MS`] (2000-01-01 to
//! 2100-01-01 UTC): the four units' ranges do not overlap there, so a
//! value is either one instant or refused, never reinterpreted. Strings
//! are parsed with `jiff`; one without an offset is a civil time in the
//! configured zone (the device's local time).

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

/// 2000-01-01T00:00:00Z in Unix milliseconds: earlier instants are refused.
pub const EARLIEST_MS: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z in Unix milliseconds: later instants are refused.
pub const LATEST_MS: i64 = 4_102_444_800_000;

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "{0} is not an instant between 2000 and 2100 in Unix seconds, milliseconds, microseconds or nanoseconds"
    )]
    Implausible(String),
    #[error("`{0}` is not an ISO 8601 time")]
    Unparsed(String),
    #[error("the time is not a number or a string")]
    NotATime,
}

/// An epoch number of unknown unit as Unix milliseconds.
///
/// Errors: the value is not finite, or is not between 2000 and 2100 in
/// any of the four units.
pub fn epoch_ms(value: f64) -> Result<i64, TimeError> {
    const UNITS_PER_MS: [f64; 4] = [1e-3, 1.0, 1e3, 1e6];
    let refused = || TimeError::Implausible(format!("{value}"));
    if !value.is_finite() {
        return Err(refused());
    }
    UNITS_PER_MS
        .iter()
        .find_map(|per_ms| {
            let ms = value / per_ms;
            (ms >= EARLIEST_MS as f64 && ms < LATEST_MS as f64).then_some(ms as i64)
        })
        .ok_or_else(refused)
}

/// A time written as text: an epoch number, an RFC 3339 instant
/// (`2024-03-01T12:00:00+01:00`, `...Z`), or a civil time without an
/// offset (`2024-03-01T12:00:00`, also with a space for the `T`) read in
/// `zone`.
pub fn text_ms(text: &str, zone: &TimeZone) -> Result<i64, TimeError> {
    let text = text.trim();
    if let Ok(n) = text.parse::<f64>() {
        return epoch_ms(n);
    }
    let unparsed = || TimeError::Unparsed(text.chars().take(64).collect());
    let instant = match text.parse::<Timestamp>() {
        Ok(t) => t,
        Err(_) => text
            .parse::<DateTime>()
            .map_err(|_| unparsed())?
            .to_zoned(zone.clone())
            .map_err(|_| unparsed())?
            .timestamp(),
    };
    let ms = instant.as_millisecond();
    if (EARLIEST_MS..LATEST_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(TimeError::Implausible(text.chars().take(64).collect()))
    }
}

/// A time zone by IANA name (`Europe/Berlin`, from the system's time
/// zone database), `UTC`, or a fixed offset (`+01:00`, `-0530`).
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    if let Some(sign) = name.chars().next().filter(|c| matches!(c, '+' | '-')) {
        let digits: String = name[1..].chars().filter(char::is_ascii_digit).collect();
        let parsed = match digits.len() {
            2 => digits.parse::<i32>().ok().map(|h| h * 3600),
            4 => {
                let (h, m) = digits.split_at(2);
                h.parse::<i32>()
                    .ok()
                    .zip(m.parse::<i32>().ok())
                    .map(|(h, m)| h * 3600 + m * 60)
            }
            _ => None,
        };
        let seconds = parsed
            .filter(|s| *s <= 18 * 3600)
            .ok_or_else(|| format!("`{name}`: expected an offset such as +01:00"))?;
        let seconds = if sign == '-' { -seconds } else { seconds };
        return jiff::tz::Offset::from_seconds(seconds)
            .map(TimeZone::fixed)
            .map_err(|e| format!("`{name}`: {e}"));
    }
    TimeZone::get(name).map_err(|e| format!("unknown time zone `{name}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_709_294_400_000; // 2024-03-01T12:00:00Z

    #[test]
    fn each_unit_is_read_from_its_magnitude() {
        assert_eq!(epoch_ms(1_709_294_400.0), Ok(MS));
        assert_eq!(epoch_ms(1_709_294_400.5), Ok(MS + 500));
        assert_eq!(epoch_ms(MS as f64), Ok(MS));
        assert_eq!(epoch_ms(MS as f64 * 1e3), Ok(MS));
        assert_eq!(epoch_ms(MS as f64 * 1e6), Ok(MS));
    }

    #[test]
    fn implausible_numbers_are_refused_not_reinterpreted() {
        for v in [
            0.0,
            12_345.0,
            -1.0,
            5e10,
            5e13,
            5e16,
            5e19,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert!(matches!(epoch_ms(v), Err(TimeError::Implausible(_))), "{v}");
        }
    }

    #[test]
    fn iso_strings_with_and_without_offsets() {
        let utc = TimeZone::UTC;
        assert_eq!(text_ms("2024-03-01T12:00:00Z", &utc), Ok(MS));
        assert_eq!(text_ms("2024-03-01T13:00:00+01:00", &utc), Ok(MS));
        assert_eq!(text_ms("2024-03-01T12:00:00", &utc), Ok(MS));
        assert_eq!(text_ms("2024-03-01 12:00:00.250", &utc), Ok(MS + 250));
        let plus_one = zone("+01:00").expect("offset");
        assert_eq!(text_ms("2024-03-01T13:00:00", &plus_one), Ok(MS));
        assert_eq!(text_ms(" 1709294400 ", &utc), Ok(MS));
        assert!(matches!(
            text_ms("yesterday", &utc),
            Err(TimeError::Unparsed(_))
        ));
        assert!(matches!(
            text_ms("1970-01-01T00:00:00Z", &utc),
            Err(TimeError::Implausible(_))
        ));
    }

    #[test]
    fn zones_by_offset_and_name() {
        assert_eq!(zone("UTC"), Ok(TimeZone::UTC));
        assert!(zone("-0530").is_ok());
        assert!(zone("+25:00").is_err());
        assert!(zone("Mars/Olympus").is_err());
    }
}
