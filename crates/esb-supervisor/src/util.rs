//! Small helpers: time formatting, request and trace ids, process status text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// RFC 3339 UTC timestamp with microseconds, e.g. `2024-05-01T12:00:00.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Fills `buf` from the kernel's random source.
fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // getrandom(2) only fails on ancient kernels; fall back to time-derived bytes so
            // ids stay unique enough rather than aborting an invocation.
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos();
            for (i, b) in buf[filled..].iter_mut().enumerate() {
                *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
            }
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Fast non-cryptographic random bytes (xoshiro256**, seeded once from the kernel): ids
/// must be unique, not secret, and this saves a syscall per id on the hot path.
fn fast_random(buf: &mut [u8]) {
    use std::sync::Mutex;
    static STATE: Mutex<Option<[u64; 4]>> = Mutex::new(None);
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let s = guard.get_or_insert_with(|| {
        let mut seed = [0u8; 32];
        random_bytes(&mut seed);
        let mut s = [0u64; 4];
        for (i, w) in s.iter_mut().enumerate() {
            *w = u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().unwrap()) | 1;
        }
        s
    });
    for chunk in buf.chunks_mut(8) {
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        chunk.copy_from_slice(&out.to_le_bytes()[..chunk.len()]);
    }
}

/// This worker's CloudWatch Logs stream name, in Lambda's form
/// `YYYY/MM/DD/[$LATEST]{32 hex}` (the date of its start); the same for the whole process.
pub fn log_stream_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut b = [0u8; 16];
        fast_random(&mut b);
        let days = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
            / 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        format!("{y:04}/{m:02}/{d:02}/[$LATEST]{}", hex(&b))
    })
}

/// A random version-4 UUID, the shape of Lambda request ids.
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    fast_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A new X-Ray style trace header: `Root=1-{8 hex epoch}-{24 hex};Parent={16 hex};Sampled=0`.
pub fn trace_id(now: SystemTime) -> String {
    let mut b = [0u8; 20];
    fast_random(&mut b);
    let secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        secs as u32,
        hex(&b[..12]),
        hex(&b[12..])
    )
}

/// Whether a caller-supplied header value can be handed on as is (visible ASCII, bounded).
pub fn is_safe_header_text(v: &[u8], max: usize) -> bool {
    !v.is_empty() && v.len() <= max && v.iter().all(|&c| (0x20..0x7f).contains(&c))
}

/// Describes a wait(2) status the way Lambda does (`exit status 1`, `signal: killed`).
pub fn describe_wait_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            libc::SIGKILL => "killed",
            libc::SIGTERM => "terminated",
            libc::SIGSEGV => "segmentation fault",
            libc::SIGABRT => "aborted",
            libc::SIGBUS => "bus error",
            libc::SIGILL => "illegal instruction",
            libc::SIGFPE => "floating point exception",
            libc::SIGINT => "interrupt",
            libc::SIGHUP => "hangup",
            libc::SIGPIPE => "broken pipe",
            _ => return format!("signal: {sig}"),
        };
        format!("signal: {name}")
    } else {
        format!("wait status {status}")
    }
}

/// Peak resident memory (VmHWM) in bytes from an open `/proc/<pid>/status` (one pread).
pub fn peak_rss_bytes(status: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let n = status.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn ids_have_lambda_shapes() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(id, request_id());
        let t = trace_id(UNIX_EPOCH + Duration::from_secs(0x5f00_0000));
        assert!(t.starts_with("Root=1-5f000000-"), "{t}");
        assert_eq!(
            t.split(';').next().unwrap().len(),
            "Root=1-".len() + 8 + 1 + 24
        );
    }

    #[test]
    fn wait_status_text() {
        assert_eq!(describe_wait_status(1 << 8), "exit status 1");
        assert_eq!(describe_wait_status(libc::SIGKILL), "signal: killed");
    }
}
