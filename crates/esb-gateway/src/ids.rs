//! Request ids, X-Ray style trace ids and the time formats of API Gateway events.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// A request id shaped like AWS's (a v4 UUID).
pub fn request_id() -> String {
    let v = fastrand::u128(..);
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A new trace header value `Root=1-{8 hex epoch}-{24 hex};Sampled=1`.
pub fn new_trace(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as u32;
    let r = fastrand::u128(..) & ((1u128 << 96) - 1);
    format!("Root=1-{secs:08x}-{r:024x};Sampled=1")
}

/// Whether `root` is `1-{8 hex}-{24 hex}`.
pub fn valid_root(root: &str) -> bool {
    let b = root.as_bytes();
    b.len() == 35
        && b.starts_with(b"1-")
        && b[10] == b'-'
        && b[2..10].iter().all(u8::is_ascii_hexdigit)
        && b[11..].iter().all(u8::is_ascii_hexdigit)
}

/// Normalises an incoming `X-Amzn-Trace-Id`: keeps it when it carries a valid `Root`
/// (other fields such as `Parent` kept, `Sampled=1` added when absent), otherwise makes
/// a new one.
pub fn trace_from_header(value: Option<&[u8]>, now: SystemTime) -> String {
    let Some(v) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return new_trace(now);
    };
    if v.len() > 512 || v.bytes().any(|c| !(0x20..0x7f).contains(&c)) {
        return new_trace(now);
    }
    let mut root = None;
    let mut sampled = false;
    for part in v.split(';') {
        let part = part.trim();
        if let Some(r) = part.strip_prefix("Root=") {
            root = Some(r);
        } else if part.starts_with("Sampled=") {
            sampled = true;
        }
    }
    match root {
        Some(r) if valid_root(r) => {
            let mut s = v.trim().to_string();
            if !sampled {
                s.push_str(";Sampled=1");
            }
            s
        }
        _ => new_trace(now),
    }
}

/// The `Root` part of a trace header value.
pub fn trace_root(trace: &str) -> &str {
    trace
        .split(';')
        .find_map(|p| p.trim().strip_prefix("Root="))
        .unwrap_or(trace)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `09/Apr/2015:12:34:56 +0000`, the `requestTime` of API Gateway events.
pub fn request_time(epoch_ms: u64) -> String {
    let secs = (epoch_ms / 1000) as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = String::with_capacity(26);
    let _ = write!(
        s,
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    s
}

/// `2015-04-09T12:34:56.789Z` for logs.
pub fn rfc3339(epoch_ms: u64) -> String {
    let secs = (epoch_ms / 1000) as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        epoch_ms % 1000
    )
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, request_id());
    }

    #[test]
    fn traces() {
        let now = UNIX_EPOCH + Duration::from_secs(0x5f00_0000);
        let t = new_trace(now);
        assert!(t.starts_with("Root=1-5f000000-"), "{t}");
        assert!(t.ends_with(";Sampled=1"));
        assert!(valid_root(trace_root(&t)));
        let given = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8";
        assert_eq!(
            trace_from_header(Some(given.as_bytes()), now),
            format!("{given};Sampled=1")
        );
        assert_eq!(
            trace_root(&trace_from_header(Some(given.as_bytes()), now)),
            "1-5759e988-bd862e3fe1be46a994272793"
        );
        let bad = trace_from_header(Some(b"Root=nonsense"), now);
        assert!(bad.starts_with("Root=1-5f000000-"));
        assert!(
            trace_from_header(Some(b"Root=1-5759e988-bd862e3fe1be46a994272793\n"), now)
                .starts_with("Root=1-5f000000-")
        );
    }

    #[test]
    fn times() {
        assert_eq!(
            request_time(1_428_582_896_000),
            "09/Apr/2015:12:34:56 +0000"
        );
        assert_eq!(rfc3339(1_583_348_638_390), "2020-03-04T19:03:58.390Z");
        assert_eq!(request_time(0), "01/Jan/1970:00:00:00 +0000");
    }
}
