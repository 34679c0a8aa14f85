//! Verification of AWS Signature Version 4 requests signed in the `Authorization` header.
//!
//! The box has one credential pair (system.md §6); every AWS-compatible API it serves
//! (DynamoDB, the Lambda Invoke API, …) checks incoming requests against it with a
//! [`Verifier`]. The crate knows nothing of any HTTP server: give it the method, the raw
//! path and query, the headers and the body (or [`http::request::Parts`] and the body).
//!
//! Errors are [`AuthError`]s; each names the AWS error code a JSON-protocol service
//! (DynamoDB, Lambda) returns for it ([`AuthError::json_code`]) and the one S3 returns
//! ([`AuthError::s3_code`]).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// SHA-256 of the empty string, the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header at all.
    MissingAuthentication,
    /// The `Authorization` header is malformed or lacks a part (`Credential`, `SignedHeaders`,
    /// `Signature`), or a header it needs (`x-amz-date`, `host`) is absent.
    IncompleteSignature(String),
    /// The access key is not the box's.
    UnrecognizedClient,
    /// The signature does not match the one computed with the box's secret key.
    SignatureDoesNotMatch,
    /// The request's date is too far from the server's clock.
    RequestExpired(String),
    /// `x-amz-content-sha256` does not match the body.
    ContentSha256Mismatch,
    /// The credential scope names another region or service than the one this verifier
    /// accepts.
    InvalidScope(String),
    /// `x-amz-content-sha256` is `UNSIGNED-PAYLOAD` or a streaming mode, which only S3
    /// accepts (see [`Verifier::allow_unsigned_payload`]).
    UnsignedPayload,
}

impl AuthError {
    /// The error code of the AWS JSON protocols (DynamoDB, Lambda).
    pub fn json_code(&self) -> &'static str {
        match self {
            AuthError::MissingAuthentication => "MissingAuthenticationTokenException",
            AuthError::IncompleteSignature(_) => "IncompleteSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::SignatureDoesNotMatch => "InvalidSignatureException",
            AuthError::RequestExpired(_) => "InvalidSignatureException",
            AuthError::ContentSha256Mismatch => "InvalidSignatureException",
            AuthError::InvalidScope(_) => "InvalidSignatureException",
            AuthError::UnsignedPayload => "InvalidSignatureException",
        }
    }

    /// The error code S3 returns.
    pub fn s3_code(&self) -> &'static str {
        match self {
            AuthError::MissingAuthentication => "AccessDenied",
            AuthError::IncompleteSignature(_) => "AuthorizationHeaderMalformed",
            AuthError::UnrecognizedClient => "InvalidAccessKeyId",
            AuthError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            AuthError::RequestExpired(_) => "RequestTimeTooSkewed",
            AuthError::ContentSha256Mismatch => "XAmzContentSHA256Mismatch",
            AuthError::InvalidScope(_) => "AuthorizationHeaderMalformed",
            AuthError::UnsignedPayload => "InvalidRequest",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::MissingAuthentication => {
                f.write_str("Request is missing Authentication Token")
            }
            AuthError::IncompleteSignature(m) => f.write_str(m),
            AuthError::UnrecognizedClient => {
                f.write_str("The security token included in the request is invalid.")
            }
            AuthError::SignatureDoesNotMatch => f.write_str(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details.",
            ),
            AuthError::RequestExpired(m) => f.write_str(m),
            AuthError::ContentSha256Mismatch => f.write_str(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ),
            AuthError::InvalidScope(m) => f.write_str(m),
            AuthError::UnsignedPayload => f.write_str(
                "x-amz-content-sha256: an unsigned or streaming payload is accepted by S3 only; \
                 sign the payload's SHA-256.",
            ),
        }
    }
}

impl std::error::Error for AuthError {}

/// A derived signing key and the credential scope it belongs to.
type CachedKey = (String, Vec<u8>);

/// Checks requests against one credential pair.
#[derive(Clone)]
pub struct Verifier {
    access_key: String,
    secret_key: String,
    region: Option<String>,
    service: Option<String>,
    max_skew: Duration,
    double_encode_path: bool,
    unsigned_payload: bool,
    /// The last derived signing key, by credential scope (it changes once a day).
    key_cache: std::sync::Arc<std::sync::Mutex<Option<CachedKey>>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The parts of the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    /// Access key id of the credential.
    pub access_key: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// Region of the credential scope.
    pub region: String,
    /// Service of the credential scope.
    pub service: String,
    /// Lower-case names of the signed headers, in the order given.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

impl Verifier {
    /// A verifier accepting requests signed with this pair, for any region and service,
    /// with AWS's 15-minute clock skew and the path encoding of non-S3 services.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Verifier {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: None,
            service: None,
            max_skew: DEFAULT_MAX_SKEW,
            double_encode_path: true,
            unsigned_payload: false,
            key_cache: Default::default(),
        }
    }

    /// Only accept credential scopes naming this region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Only accept credential scopes naming this service (`dynamodb`, `lambda`, …).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The largest accepted difference between the request's date and the clock.
    pub fn max_skew(mut self, skew: Duration) -> Self {
        self.max_skew = skew;
        self
    }

    /// Accept `UNSIGNED-PAYLOAD` and streaming payload modes in `x-amz-content-sha256`
    /// (S3's; every other service signs the payload, the default).
    pub fn allow_unsigned_payload(mut self) -> Self {
        self.unsigned_payload = true;
        self
    }

    /// S3 signs the path as sent; other services URI-encode it once more (the default).
    pub fn s3_path_encoding(mut self) -> Self {
        self.double_encode_path = false;
        self
    }

    /// Verifies an [`http`] request (head and full body) against the current clock.
    pub fn verify(&self, parts: &http::request::Parts, body: &[u8]) -> Result<(), AuthError> {
        self.verify_at(parts, body, SystemTime::now())
    }

    /// [`Verifier::verify`] with an explicit clock.
    pub fn verify_at(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len() + 1);
        for (name, value) in parts.headers.iter() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers.push((name.as_str().to_owned(), value));
        }
        if !parts.headers.contains_key(http::header::HOST) {
            if let Some(authority) = parts.uri.authority() {
                headers.push(("host".to_owned(), authority.as_str().to_owned()));
            }
        }
        let request = Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &headers,
        };
        self.verify_request(&request, Payload::Body(body), now)
    }

    /// Verifies a request given as plain parts.
    pub fn verify_request(
        &self,
        request: &Request<'_>,
        payload: Payload<'_>,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let authorization = request
            .header("authorization")
            .ok_or(AuthError::MissingAuthentication)?;
        let auth = parse_authorization(authorization)?;
        if auth.access_key != self.access_key {
            return Err(AuthError::UnrecognizedClient);
        }
        if let Some(region) = &self.region {
            if &auth.region != region {
                return Err(AuthError::InvalidScope(format!(
                    "Credential should be scoped to a valid region, not '{}'. ",
                    auth.region
                )));
            }
        }
        if let Some(service) = &self.service {
            if &auth.service != service {
                return Err(AuthError::InvalidScope(format!(
                    "Credential should be scoped to correct service: '{service}'. "
                )));
            }
        }
        let amz_date = check_date(request.header("x-amz-date"), now, self.max_skew)?;
        if !amz_date.starts_with(&auth.date) {
            return Err(AuthError::SignatureDoesNotMatch);
        }

        let unsigned = |h: &str| h == "UNSIGNED-PAYLOAD" || h.starts_with("STREAMING-");
        let claimed = request.header("x-amz-content-sha256");
        if !self.unsigned_payload
            && (claimed.is_some_and(unsigned) || matches!(payload, Payload::Hash(h) if unsigned(h)))
        {
            return Err(AuthError::UnsignedPayload);
        }
        let payload_hash = match (payload, claimed) {
            (Payload::Body(body), Some(claimed)) => {
                if unsigned(claimed) {
                    claimed.to_owned()
                } else {
                    let actual = hex::encode(Sha256::digest(body));
                    if !claimed.eq_ignore_ascii_case(&actual) {
                        return Err(AuthError::ContentSha256Mismatch);
                    }
                    claimed.to_owned()
                }
            }
            (Payload::Body(body), None) => hex::encode(Sha256::digest(body)),
            (Payload::Hash(hash), _) => hash.to_owned(),
        };

        for name in &auth.signed_headers {
            if request.header(name).is_none() {
                return Err(AuthError::SignatureDoesNotMatch);
            }
        }
        if !auth.signed_headers.iter().any(|h| h == "host") {
            return Err(AuthError::IncompleteSignature(
                "'Host' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
            ));
        }

        let canonical = canonical_request(
            request,
            &auth.signed_headers,
            &payload_hash,
            self.double_encode_path,
        );
        let scope = format!(
            "{}/{}/{}/aws4_request",
            auth.date, auth.region, auth.service
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = self.cached_key(&scope, &auth);
        let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
        if constant_time_eq(
            expected.as_bytes(),
            auth.signature.to_ascii_lowercase().as_bytes(),
        ) {
            Ok(())
        } else {
            Err(AuthError::SignatureDoesNotMatch)
        }
    }
}

impl Verifier {
    fn cached_key(&self, scope: &str, auth: &ParsedAuthorization) -> Vec<u8> {
        let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, k)) = cache.as_ref() {
            if s == scope {
                return k.clone();
            }
        }
        let key = signing_key(&self.secret_key, &auth.date, &auth.region, &auth.service);
        *cache = Some((scope.to_owned(), key.clone()));
        key
    }
}

/// How the payload takes part in the signature.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The full body: hashed, and checked against `x-amz-content-sha256` when present.
    Body(&'a [u8]),
    /// A payload hash already known (e.g. `UNSIGNED-PAYLOAD`, or a streamed body's header).
    Hash(&'a str),
}

/// A request as plain strings: method, raw (percent-encoded) path and query, and headers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent on the wire.
    pub path: &'a str,
    /// The query string as sent on the wire, without `?`.
    pub query: &'a str,
    /// Header names (any case) and values; a name may repeat.
    pub headers: &'a [(String, String)],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What can be decided about a SigV4 request from its headers alone, before a body is
/// read: an `Authorization` header of the right shape, an access key `known` accepts, and
/// an `x-amz-date` within `max_skew` of `now`. `known` looks the access key up; what it
/// found (the caller's credentials, say) is returned, so that nothing is parsed or looked up
/// twice. Servers call it first, so that an unsigned, malformed, unknown or stale request is
/// refused without reading its body; the signature itself needs the body
/// ([`Verifier::verify`]).
pub fn precheck_headers<T>(
    headers: &http::HeaderMap,
    known: impl FnOnce(&str) -> Option<T>,
    max_skew: Duration,
    now: SystemTime,
) -> Result<T, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingAuthentication)?;
    let auth = parse_authorization(value.to_str().unwrap_or_default())?;
    let found = known(&auth.access_key).ok_or(AuthError::UnrecognizedClient)?;
    check_date(
        headers.get("x-amz-date").and_then(|v| v.to_str().ok()),
        now,
        max_skew,
    )?;
    Ok(found)
}

/// Checks an `x-amz-date` value: present, in ISO-8601 basic format, within `max_skew` of
/// `now`. Returns it.
fn check_date(
    amz_date: Option<&str>,
    now: SystemTime,
    max_skew: Duration,
) -> Result<&str, AuthError> {
    let amz_date = amz_date.ok_or_else(|| {
        AuthError::IncompleteSignature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
             header."
                .to_owned(),
        )
    })?;
    let request_time = parse_amz_date(amz_date).ok_or_else(|| {
        AuthError::IncompleteSignature(format!(
            "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See \
             http://en.wikipedia.org/wiki/ISO_8601"
        ))
    })?;
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    if (now_secs - request_time).unsigned_abs() > max_skew.as_secs() {
        return Err(AuthError::RequestExpired(format!(
            "Signature expired: {amz_date} is now earlier or later than the allowed {} \
             minutes of skew from the server time.",
            max_skew.as_secs() / 60
        )));
    }
    Ok(amz_date)
}

/// The skew [`Verifier`] allows by default (15 minutes, as AWS).
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Parses `AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/service/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=…`.
pub fn parse_authorization(value: &str) -> Result<ParsedAuthorization, AuthError> {
    let value = value.trim();
    let rest = value.strip_prefix(ALGORITHM).ok_or_else(|| {
        let algorithm = value.split_whitespace().next().unwrap_or("");
        AuthError::IncompleteSignature(format!(
            "Authorization header requires '{ALGORITHM}' algorithm, got '{algorithm}'."
        ))
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, val) = part.split_once('=').ok_or_else(|| {
            AuthError::IncompleteSignature(format!(
                "Authorization header requires each component to be of the form key=value: \
                 '{part}'."
            ))
        })?;
        match key.trim() {
            "Credential" => credential = Some(val.trim()),
            "SignedHeaders" => signed_headers = Some(val.trim()),
            "Signature" => signature = Some(val.trim()),
            _ => {}
        }
    }
    let missing = |what: &str| {
        AuthError::IncompleteSignature(format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" || scope.iter().any(|s| s.is_empty()) {
        return Err(AuthError::IncompleteSignature(format!(
            "Credential should be of the form \
             'ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request', got '{credential}'."
        )));
    }
    if signature.is_empty() || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::IncompleteSignature(
            "Signature must be a hexadecimal string.".to_owned(),
        ));
    }
    let signed_headers: Vec<String> = signed_headers
        .split(';')
        .filter(|h| !h.is_empty())
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if signed_headers.is_empty() {
        return Err(missing("SignedHeaders"));
    }
    Ok(ParsedAuthorization {
        access_key: scope[0].to_owned(),
        date: scope[1].to_owned(),
        region: scope[2].to_owned(),
        service: scope[3].to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// The canonical request of SigV4 (step 1 of signing).
pub fn canonical_request(
    request: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    double_encode_path: bool,
) -> String {
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    let canonical_path = if double_encode_path {
        uri_encode(path, false)
    } else {
        path.to_owned()
    };
    let mut out = String::with_capacity(256);
    out.push_str(request.method);
    out.push('\n');
    out.push_str(&canonical_path);
    out.push('\n');
    out.push_str(&canonical_query(request.query));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    out
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// AWS URI encoding: everything but `A-Za-z0-9-_.~` as `%XX` (upper-case hex); `/` too when
/// `encode_slash`.
pub fn uri_encode(input: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The SigV4 signing key for a date (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses `YYYYMMDDTHHMMSSZ` into seconds since the Unix epoch.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Formats seconds since the Unix epoch as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Signs a request: returns the `Authorization` header value. Meant for tests and for
/// clients inside the box; `headers` must already hold `host` and `x-amz-date`.
pub fn sign(
    access_key: &str,
    secret_key: &str,
    region: &str,
    service: &str,
    request: &Request<'_>,
    payload_hash: &str,
) -> String {
    let amz_date = request.header("x-amz-date").unwrap_or_default();
    let date = amz_date.get(..8).unwrap_or_default();
    let mut signed: Vec<String> = request
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| n != "authorization")
        .collect();
    signed.sort();
    signed.dedup();
    let canonical = canonical_request(request, &signed, payload_hash, service != "s3");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret_key, date, region, service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The credentials, scope and clock of AWS's published SigV4 test suite.
    const AK: &str = "AKIDEXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn at_suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date(DATE).unwrap() as u64)
    }

    fn headers(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = vec![
            ("Host".to_owned(), "example.amazonaws.com".to_owned()),
            ("X-Amz-Date".to_owned(), DATE.to_owned()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    }

    fn authorization(signed: &str, signature: &str) -> (String, String) {
        (
            "Authorization".to_owned(),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders={signed}, Signature={signature}"
            ),
        )
    }

    fn check(method: &str, path: &str, query: &str, body: &[u8], sig: &str) {
        let mut h = headers(&[]);
        h.push(authorization("host;x-amz-date", sig));
        let req = Request {
            method,
            path,
            query,
            headers: &h,
        };
        Verifier::new(AK, SK)
            .verify_request(&req, Payload::Body(body), at_suite_time())
            .unwrap_or_else(|e| panic!("{method} {path}?{query}: {e:?}"));
        // And the signer agrees with the published signature.
        let unsigned = headers(&[]);
        let req = Request {
            method,
            path,
            query,
            headers: &unsigned,
        };
        let hash = hex::encode(Sha256::digest(body));
        assert!(sign(AK, SK, "us-east-1", "service", &req, &hash).ends_with(sig));
    }

    #[test]
    fn aws_suite_get_vanilla() {
        check(
            "GET",
            "/",
            "",
            b"",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
    }

    #[test]
    fn aws_suite_get_vanilla_query_order_key_case() {
        check(
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            b"",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        );
    }

    #[test]
    fn aws_suite_post_vanilla() {
        check(
            "POST",
            "/",
            "",
            b"",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
    }

    #[test]
    fn aws_suite_get_utf8() {
        check(
            "GET",
            "/ሴ",
            "",
            b"",
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        );
    }

    #[test]
    fn aws_documented_signing_key() {
        // The derived key of AWS's "derive a signing key" example (iam, us-east-1, 20150830).
        let key = signing_key(SK, "20150830", "us-east-1", "iam");
        assert_eq!(
            hex::encode(key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn wrong_secret_is_signature_mismatch() {
        let mut h = headers(&[]);
        h.push(authorization(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ));
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let err = Verifier::new(AK, "other")
            .verify_request(&req, Payload::Body(b""), at_suite_time())
            .unwrap_err();
        assert_eq!(err, AuthError::SignatureDoesNotMatch);
        assert_eq!(err.json_code(), "InvalidSignatureException");
        assert_eq!(err.s3_code(), "SignatureDoesNotMatch");
    }

    #[test]
    fn tampered_body_is_signature_mismatch() {
        let mut h = headers(&[]);
        h.push(authorization(
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ));
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
        };
        let err = Verifier::new(AK, SK)
            .verify_request(&req, Payload::Body(b"x"), at_suite_time())
            .unwrap_err();
        assert_eq!(err, AuthError::SignatureDoesNotMatch);
    }

    #[test]
    fn unknown_access_key() {
        let mut h = headers(&[]);
        h.push(authorization("host;x-amz-date", "00"));
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let err = Verifier::new("OTHER", SK)
            .verify_request(&req, Payload::Body(b""), at_suite_time())
            .unwrap_err();
        assert_eq!(err.json_code(), "UnrecognizedClientException");
    }

    #[test]
    fn missing_and_malformed_headers() {
        let h = headers(&[]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let v = Verifier::new(AK, SK);
        let err = v
            .verify_request(&req, Payload::Body(b""), at_suite_time())
            .unwrap_err();
        assert_eq!(err.json_code(), "MissingAuthenticationTokenException");

        for bad in [
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=zz",
        ] {
            let err = parse_authorization(bad).unwrap_err();
            assert_eq!(err.json_code(), "IncompleteSignatureException", "{bad}");
        }
    }

    #[test]
    fn expired_request() {
        let mut h = headers(&[]);
        h.push(authorization(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ));
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let later = at_suite_time() + Duration::from_secs(3600);
        let err = Verifier::new(AK, SK)
            .verify_request(&req, Payload::Body(b""), later)
            .unwrap_err();
        assert!(matches!(err, AuthError::RequestExpired(_)), "{err:?}");
    }

    #[test]
    fn scope_restrictions() {
        let mut h = headers(&[]);
        h.push(authorization(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ));
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        let v = Verifier::new(AK, SK).region("ap-northeast-1");
        let err = v
            .verify_request(&req, Payload::Body(b""), at_suite_time())
            .unwrap_err();
        assert!(matches!(err, AuthError::InvalidScope(_)));
        let v = Verifier::new(AK, SK).region("us-east-1").service("service");
        v.verify_request(&req, Payload::Body(b""), at_suite_time())
            .unwrap();
    }

    #[test]
    fn content_sha256_header_is_checked() {
        let body = b"{}";
        let hash = hex::encode(Sha256::digest(body));
        let mut h = headers(&[("x-amz-content-sha256", &hash)]);
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
        };
        let auth = sign(AK, SK, "us-east-1", "service", &req, &hash);
        h.push(("Authorization".to_owned(), auth));
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
        };
        let v = Verifier::new(AK, SK);
        v.verify_request(&req, Payload::Body(body), at_suite_time())
            .unwrap();
        let err = v
            .verify_request(&req, Payload::Body(b"{ }"), at_suite_time())
            .unwrap_err();
        assert_eq!(err, AuthError::ContentSha256Mismatch);
    }

    #[test]
    fn unsigned_payload_only_when_allowed() {
        for claimed in ["UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"] {
            let mut h = headers(&[("x-amz-content-sha256", claimed)]);
            let req = Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &h,
            };
            let auth = sign(AK, SK, "us-east-1", "service", &req, claimed);
            h.push(("Authorization".to_owned(), auth));
            let req = Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &h,
            };
            let err = Verifier::new(AK, SK)
                .verify_request(&req, Payload::Body(b"{}"), at_suite_time())
                .unwrap_err();
            assert_eq!(err, AuthError::UnsignedPayload, "{claimed}");
            assert_eq!(err.json_code(), "InvalidSignatureException");
            let err = Verifier::new(AK, SK)
                .verify_request(&req, Payload::Hash(claimed), at_suite_time())
                .unwrap_err();
            assert_eq!(err, AuthError::UnsignedPayload, "{claimed}");
            if claimed == "UNSIGNED-PAYLOAD" {
                Verifier::new(AK, SK)
                    .allow_unsigned_payload()
                    .verify_request(&req, Payload::Body(b"{}"), at_suite_time())
                    .unwrap();
            }
        }
    }

    #[test]
    fn http_parts_roundtrip() {
        let body = br#"{"TableName":"t"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let now = SystemTime::now();
        let date = format_amz_date(now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64);
        let plain = vec![
            ("host".to_owned(), "127.0.0.1:8000".to_owned()),
            ("x-amz-date".to_owned(), date.clone()),
            (
                "x-amz-target".to_owned(),
                "DynamoDB_20120810.GetItem".to_owned(),
            ),
        ];
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &plain,
        };
        let auth = sign("AK", "SK", "ap-northeast-1", "dynamodb", &req, &hash);
        let request = http::Request::post("http://127.0.0.1:8000/")
            .header("host", "127.0.0.1:8000")
            .header("x-amz-date", date)
            .header("x-amz-target", "DynamoDB_20120810.GetItem")
            .header("authorization", auth)
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        Verifier::new("AK", "SK").verify(&parts, body).unwrap();
        assert_eq!(
            Verifier::new("AK", "SK").verify(&parts, b"{}").unwrap_err(),
            AuthError::SignatureDoesNotMatch
        );
    }

    #[test]
    fn dates_roundtrip() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        let t = parse_amz_date(DATE).unwrap();
        assert_eq!(format_amz_date(t), DATE);
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn query_canonicalisation() {
        assert_eq!(canonical_query("b=2&a=1&A=0"), "A=0&a=1&b=2");
        assert_eq!(canonical_query("k"), "k=");
        assert_eq!(canonical_query("a=%20b+c"), "a=%20b%2Bc");
    }
}
