//! Timestamps: nanoseconds since the Unix epoch (UTC), RFC 3339 in and out, LogsQL durations.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The current time in nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// Days since 1970-01-01 for a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats as RFC 3339 in UTC with nine fractional digits, as VictoriaLogs prints `_time`.
pub fn format_rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(NANOS_PER_SEC);
    let frac = nanos.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Formats with millisecond precision (for the human-readable `esb logs` output).
pub fn format_short(nanos: i64) -> String {
    let full = format_rfc3339(nanos);
    // 2024-01-01T00:00:00.123456789Z -> 2024-01-01T00:00:00.123Z
    format!("{}Z", &full[..23])
}

fn digits(s: &[u8], n: usize) -> Option<i64> {
    if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        s[..n]
            .iter()
            .fold(0i64, |a, b| a * 10 + i64::from(b - b'0')),
    )
}

/// Parses an RFC 3339 / ISO 8601 timestamp. Accepts a `T` or a space between date and time,
/// optional seconds and fraction, and `Z` or `±hh:mm`; a missing zone means UTC. A bare date
/// (`2024-01-02`) or a date with hours and minutes is accepted too (missing parts are zero).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let y = digits(b, 4)?;
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let mo = digits(&b[5..], 2)?;
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let d = digits(&b[8..], 2)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut i = 10;
    let (mut hh, mut mm, mut ss, mut frac) = (0, 0, 0, 0i64);
    if i < b.len() && (b[i] == b'T' || b[i] == b' ') {
        i += 1;
        hh = digits(&b[i..], 2)?;
        if b.get(i + 2) != Some(&b':') {
            return None;
        }
        mm = digits(&b[i + 3..], 2)?;
        i += 5;
        if b.get(i) == Some(&b':') {
            ss = digits(&b[i + 1..], 2)?;
            i += 3;
            if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
                i += 1;
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start {
                    return None;
                }
                let mut f = 0i64;
                for (k, c) in b[start..i].iter().enumerate() {
                    if k < 9 {
                        f = f * 10 + i64::from(c - b'0');
                    }
                }
                for _ in (i - start)..9 {
                    f *= 10;
                }
                frac = f;
            }
        }
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
    }
    let mut offset = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' if i + 1 == b.len() => {}
            b'+' | b'-' => {
                let sign = if b[i] == b'+' { 1 } else { -1 };
                let oh = digits(&b[i + 1..], 2)?;
                let rest = &b[i + 3..];
                let om = match rest {
                    [] => 0,
                    [b':', ..] if rest.len() == 3 => digits(&rest[1..], 2)?,
                    _ if rest.len() == 2 => digits(rest, 2)?,
                    _ => return None,
                };
                offset = sign * (oh * 3600 + om * 60);
            }
            _ => return None,
        }
    }
    let secs = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mm * 60 + ss - offset;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(frac)
}

/// Parses a Unix timestamp: seconds (with an optional fraction), or integer milliseconds,
/// microseconds or nanoseconds told apart by their number of digits, as VictoriaLogs does.
pub fn parse_unix(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some((int, frac)) = s.split_once('.') {
        let secs: i64 = int.parse().ok()?;
        if frac.is_empty() || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut f = 0i64;
        for (k, c) in frac.bytes().enumerate() {
            if k < 9 {
                f = f * 10 + i64::from(c - b'0');
            }
        }
        for _ in frac.len()..9 {
            f *= 10;
        }
        let sign = if secs < 0 || int.starts_with('-') {
            -1
        } else {
            1
        };
        return secs.checked_mul(NANOS_PER_SEC)?.checked_add(sign * f);
    }
    let n: i64 = s.parse().ok()?;
    let digits = s.trim_start_matches('-').len();
    Some(match digits {
        0..=10 => n.checked_mul(NANOS_PER_SEC)?,
        11..=13 => n.checked_mul(1_000_000)?,
        14..=16 => n.checked_mul(1_000)?,
        _ => n,
    })
}

/// Parses a timestamp in any accepted form (RFC 3339 or Unix).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    parse_rfc3339(s).or_else(|| parse_unix(s))
}

/// Parses a LogsQL duration such as `5m`, `1h30m`, `1.5s`, `2d`, `1w`, `500ms` into nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            "w" => 7.0 * 86400e9,
            "y" => 365.0 * 86400e9,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    Some(if neg { -(total as i64) } else { total as i64 })
}

/// Parses a `start`/`end` query argument: a timestamp, `now`, `now-5m`, or a bare duration
/// (`5m` meaning five minutes ago), like VictoriaLogs' query args.
pub fn parse_time_arg(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if s == "now" {
        return Some(now);
    }
    if let Some(rest) = s.strip_prefix("now-") {
        return parse_duration(rest).map(|d| now - d);
    }
    if let Some(rest) = s.strip_prefix("now+") {
        return parse_duration(rest).map(|d| now + d);
    }
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    if let Some(d) = parse_duration(s) {
        if s.bytes().any(|c| c.is_ascii_alphabetic()) {
            return Some(now - d.abs());
        }
    }
    parse_unix(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2023-06-20T15:32:10.123456789Z").unwrap();
        assert_eq!(format_rfc3339(t), "2023-06-20T15:32:10.123456789Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-06-20 15:32:10.5+02:00"),
            parse_rfc3339("2023-06-20T13:32:10.5Z")
        );
        assert_eq!(
            parse_rfc3339("2024-01-02"),
            parse_rfc3339("2024-01-02T00:00:00Z")
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
        assert!(parse_rfc3339("2024-13-01").is_none());
        assert!(parse_rfc3339("hello").is_none());
        assert_eq!(format_short(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn unix_forms() {
        let s = 1_686_026_893i64 * NANOS_PER_SEC;
        assert_eq!(parse_unix("1686026893"), Some(s));
        assert_eq!(parse_unix("1686026893735"), Some(s + 735_000_000));
        assert_eq!(parse_unix("1686026893735321"), Some(s + 735_321_000));
        assert_eq!(parse_unix("1686026893735321123"), Some(s + 735_321_123));
        assert_eq!(parse_unix("1686026893.5"), Some(s + 500_000_000));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Some(300 * NANOS_PER_SEC));
        assert_eq!(parse_duration("1h30m"), Some(5400 * NANOS_PER_SEC));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert!(parse_duration("5x").is_none());
        assert!(parse_duration("").is_none());
        assert_eq!(
            parse_time_arg("5m", 1000 * NANOS_PER_SEC),
            Some(700 * NANOS_PER_SEC)
        );
        assert_eq!(parse_time_arg("now", 7), Some(7));
    }
}
