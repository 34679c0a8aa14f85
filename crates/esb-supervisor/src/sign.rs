//! AWS Signature Version 4 for the log shipper's requests: a worker signs its records
//! with its function's own key pair (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), and the
//! box's log store stamps them with the function the key belongs to (docs/iam.md).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A key pair and the region of the credential scope.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Region of the scope.
    pub region: String,
}

impl Credentials {
    /// From the worker's environment (`None` when the pair is not set).
    pub fn from_env() -> Option<Credentials> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Credentials {
            access_key: get("AWS_ACCESS_KEY_ID")?,
            secret_key: get("AWS_SECRET_ACCESS_KEY")?,
            region: get("AWS_REGION")
                .or_else(|| get("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding of a query name or value (unreserved characters kept).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` of `secs` since the epoch.
fn amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The headers that sign a POST of `body` to `host` + `path_and_query` at `now` (seconds
/// since the epoch): `x-amz-date`, `x-amz-content-sha256` and `authorization`.
pub fn sign_post(
    c: &Credentials,
    host: &str,
    path_and_query: &str,
    body: &[u8],
    now: u64,
) -> [(&'static str, String); 3] {
    let date = amz_date(now);
    let day = &date[..8];
    let payload = hex(&Sha256::digest(body));
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(k), encode(v))
        })
        .collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "POST\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{date}\n\n{signed}\n{payload}"
    );
    let scope = format!("{day}/{}/logs/aws4_request", c.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", c.secret_key).as_bytes(), day.as_bytes());
    let k = hmac(&k, c.region.as_bytes());
    let k = hmac(&k, b"logs");
    let k = hmac(&k, b"aws4_request");
    let signature = hex(&hmac(&k, to_sign.as_bytes()));
    [
        ("x-amz-date", date),
        ("x-amz-content-sha256", payload),
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
                c.access_key
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_the_signature_shape() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_700_000_000), "20231114T221320Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        let c = Credentials {
            access_key: "AKID".into(),
            secret_key: "s".into(),
            region: "ap-northeast-1".into(),
        };
        let h = sign_post(&c, "10.88.0.1:9428", "/insert/jsonline?b=2&a=1", b"{}", 0);
        assert_eq!(h[0].1, "19700101T000000Z");
        assert!(h[2]
            .1
            .starts_with("AWS4-HMAC-SHA256 Credential=AKID/19700101/ap-northeast-1/logs/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="));
    }
}
