//! Duration and size literals as written in the config file.
//!
//! Durations are strings `<digits><unit>` with unit `ms`, `s`, `m` or `h` (`"250ms"`, `"5s"`), never
//! negative, at most [`MAX_DURATION`] (so `Instant + duration` can never overflow on a worker).
//! Sizes are integers (bytes) or strings `<digits><unit>` with unit `k`, `m` or `g` (powers of 1024,
//! case-insensitive), checked for `u64` overflow. Both parsers are pure and never panic; their error
//! strings are complete sentences the loader shows as-is.

use std::time::Duration;

/// The longest duration accepted anywhere in the config: one day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// What the user is told a duration looks like.
pub const DURATION_HINT: &str =
    "a duration string with a unit: ms, s, m or h (e.g. \"250ms\", \"5s\")";

/// What the user is told a size looks like.
pub const SIZE_HINT: &str =
    "a size: an integer number of bytes or a string with a unit k, m or g (e.g. \"512k\", \"1m\")";

/// Splits `"250ms"` into `(250, "ms")`; the number must be plain ASCII digits (no sign, no spaces).
fn split_number(s: &str) -> Result<(u64, &str), String> {
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative; it must be zero or more"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("{s:?} does not start with a number"));
    }
    let (num, unit) = s.split_at(digits);
    // Digits only, so the only possible failure is overflow.
    let n = num
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is too large"))?;
    Ok((n, unit))
}

/// Parses a duration string such as `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(s)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("{s:?} has no unit; expected {DURATION_HINT}")),
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?}; expected {DURATION_HINT}"
            ))
        }
    };
    let too_long = || format!("{s:?} is too long; durations are at most 24h");
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let d = Duration::from_millis(millis);
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// Parses a size string such as `"512k"`, `"1m"`, `"1G"` (powers of 1024). Plain byte counts are
/// written as TOML integers, not strings.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = split_number(s)?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "" => {
            return Err(format!(
                "{s:?} has no unit; write a byte count as a plain integer, or use a unit k, m or g"
            ))
        }
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?}; expected {SIZE_HINT}"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Checks a size given as a TOML integer.
pub fn size_from_int(n: i64) -> Result<u64, String> {
    u64::try_from(n).map_err(|_| format!("{n} is negative; sizes must be zero or more"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "",
            "5",
            "-5s",
            "+5s",
            " 5s",
            "5 s",
            "5S",
            "5sec",
            "s",
            "1.5s",
            "25h",
            "99999999999999999999s",
            "18446744073709551615h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("0k"), Ok(0));
        assert_eq!(size_from_int(4096), Ok(4096));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            "",
            "512",
            "-1k",
            "1kb",
            "1t",
            "k",
            "1.5m",
            "99999999999999999999g",
            "17179869184g",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(size_from_int(-1).is_err());
    }
}
