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

/// Derived signing keys kept per verifier: a few credential scopes (a request may name
/// any region when the verifier does not restrict it; two dates around midnight).
const KEY_CACHE_ENTRIES: usize = 4;

/// A derived signing key and the credential scope (`date/region/service/aws4_request`)
/// it belongs to. The secret is the verifier's own, fixed for its lifetime.
type CachedKey = (Box<str>, [u8; 32]);

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
    /// The last derived signing keys, by credential scope (most recently used first; the
    /// scope's date changes once a day).
    key_cache: std::sync::Arc<std::sync::Mutex<Vec<CachedKey>>>,
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
        let headers = HttpHeaders::of(parts);
        let value = headers
            .first("authorization")
            .ok_or(AuthError::MissingAuthentication)?;
        let auth = parse_auth(&value)?;
        self.verify_parsed(
            &request_line(parts),
            &headers,
            &auth,
            Payload::Body(body),
            now,
        )
    }

    /// [`Verifier::verify_at`] for a request whose `Authorization` header [`precheck`]
    /// already parsed: `auth` must come from `parts.headers` (the header is not parsed a
    /// second time).
    pub fn verify_prechecked(
        &self,
        parts: &http::request::Parts,
        auth: &Authorization<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let headers = HttpHeaders::of(parts);
        self.verify_parsed(
            &request_line(parts),
            &headers,
            &auth.0,
            Payload::Body(body),
            now,
        )
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
        let auth = parse_auth(authorization)?;
        let line = RequestLine {
            method: request.method,
            path: request.path,
            query: request.query,
        };
        self.verify_parsed(&line, &SliceHeaders(request.headers), &auth, payload, now)
    }

    fn verify_parsed(
        &self,
        line: &RequestLine<'_>,
        headers: &impl Headers,
        auth: &Auth<'_>,
        payload: Payload<'_>,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        if auth.access_key != self.access_key {
            return Err(AuthError::UnrecognizedClient);
        }
        if let Some(region) = &self.region {
            if auth.region != region {
                return Err(AuthError::InvalidScope(format!(
                    "Credential should be scoped to a valid region, not '{}'. ",
                    auth.region
                )));
            }
        }
        if let Some(service) = &self.service {
            if auth.service != service {
                return Err(AuthError::InvalidScope(format!(
                    "Credential should be scoped to correct service: '{service}'. "
                )));
            }
        }
        let amz_date = headers.first("x-amz-date");
        let amz_date = check_date(amz_date.as_deref(), now, self.max_skew)?;
        if !amz_date.starts_with(auth.date) {
            return Err(AuthError::SignatureDoesNotMatch);
        }

        let unsigned = |h: &str| h == "UNSIGNED-PAYLOAD" || h.starts_with("STREAMING-");
        let claimed = headers.first("x-amz-content-sha256");
        let claimed = claimed.as_deref();
        if !self.unsigned_payload
            && (claimed.is_some_and(unsigned) || matches!(payload, Payload::Hash(h) if unsigned(h)))
        {
            return Err(AuthError::UnsignedPayload);
        }
        let mut body_hash = [0u8; 64];
        let payload_hash: &str = match (payload, claimed) {
            (Payload::Body(body), Some(claimed)) => {
                if !unsigned(claimed) {
                    let actual = hex_sha256(body, &mut body_hash);
                    if !claimed.eq_ignore_ascii_case(actual) {
                        return Err(AuthError::ContentSha256Mismatch);
                    }
                }
                claimed
            }
            (Payload::Body(body), None) => hex_sha256(body, &mut body_hash),
            (Payload::Hash(hash), _) => hash,
        };

        for name in &auth.signed_headers {
            if !headers.has(name) {
                return Err(AuthError::SignatureDoesNotMatch);
            }
        }
        if !auth.signed_headers.iter().any(|h| h == "host") {
            return Err(AuthError::IncompleteSignature(
                "'Host' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
            ));
        }

        let mut canonical = String::with_capacity(512);
        write_canonical_request(
            &mut canonical,
            line,
            headers,
            &auth.signed_headers,
            payload_hash,
            self.double_encode_path,
        );
        let mut string_to_sign = String::with_capacity(160);
        string_to_sign.push_str(ALGORITHM);
        string_to_sign.push('\n');
        string_to_sign.push_str(amz_date);
        string_to_sign.push('\n');
        let scope_start = string_to_sign.len();
        for part in [
            auth.date,
            "/",
            auth.region,
            "/",
            auth.service,
            "/aws4_request",
        ] {
            string_to_sign.push_str(part);
        }
        let scope_end = string_to_sign.len();
        string_to_sign.push('\n');
        let mut canonical_hash = [0u8; 64];
        string_to_sign.push_str(hex_sha256(canonical.as_bytes(), &mut canonical_hash));
        let key = self.cached_key(&string_to_sign[scope_start..scope_end], auth);
        let mut expected = [0u8; 64];
        hex_into(&hmac(&key, string_to_sign.as_bytes()), &mut expected);
        if constant_time_eq_lowercase(&expected, auth.signature.as_bytes()) {
            Ok(())
        } else {
            Err(AuthError::SignatureDoesNotMatch)
        }
    }
}

impl Verifier {
    /// The signing key of a credential scope, derived (four HMACs) only when it is not
    /// among the last few used. Keyed by the whole scope; the secret is this verifier's.
    fn cached_key(&self, scope: &str, auth: &Auth<'_>) -> [u8; 32] {
        let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cache.iter().position(|(s, _)| &**s == scope) {
            let key = cache[i].1;
            if i > 0 {
                let entry = cache.remove(i);
                cache.insert(0, entry);
            }
            return key;
        }
        let key = derive_key(&self.secret_key, auth.date, auth.region, auth.service);
        cache.truncate(KEY_CACHE_ENTRIES - 1);
        cache.insert(0, (scope.into(), key));
        key
    }
}

/// Method, raw path and raw query of a request.
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
}

fn request_line(parts: &http::request::Parts) -> RequestLine<'_> {
    RequestLine {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
    }
}

/// Where the verifier reads headers from: a plain list or an [`http::HeaderMap`]. Names
/// asked for are lower-case.
trait Headers {
    /// The first value of a header.
    fn first(&self, name: &str) -> Option<std::borrow::Cow<'_, str>>;
    /// Whether the header is present.
    fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }
    /// Calls `f` with every value of a header, in order.
    fn each(&self, name: &str, f: &mut dyn FnMut(&str));
}

struct SliceHeaders<'a>(&'a [(String, String)]);

impl Headers for SliceHeaders<'_> {
    fn first(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| std::borrow::Cow::Borrowed(v.as_str()))
    }

    fn each(&self, name: &str, f: &mut dyn FnMut(&str)) {
        for (n, v) in self.0 {
            if n.eq_ignore_ascii_case(name) {
                f(v);
            }
        }
    }
}

/// The headers of an [`http`] request; `host` falls back to the URI's authority (HTTP/2
/// sends `:authority` instead). Values that are not UTF-8 are read lossily.
struct HttpHeaders<'a> {
    map: &'a http::HeaderMap,
    authority: Option<&'a str>,
}

impl<'a> HttpHeaders<'a> {
    fn of(parts: &'a http::request::Parts) -> Self {
        let authority = if parts.headers.contains_key(http::header::HOST) {
            None
        } else {
            parts.uri.authority().map(|a| a.as_str())
        };
        HttpHeaders {
            map: &parts.headers,
            authority,
        }
    }
}

fn header_str(v: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

/// The headers every SigV4 request names, without parsing their names at each lookup.
fn known_header(name: &str) -> Option<&'static http::HeaderName> {
    static X_AMZ_DATE: http::HeaderName = http::HeaderName::from_static("x-amz-date");
    static X_AMZ_TARGET: http::HeaderName = http::HeaderName::from_static("x-amz-target");
    static X_AMZ_CONTENT_SHA256: http::HeaderName =
        http::HeaderName::from_static("x-amz-content-sha256");
    Some(match name {
        "host" => &http::header::HOST,
        "authorization" => &http::header::AUTHORIZATION,
        "content-type" => &http::header::CONTENT_TYPE,
        "x-amz-date" => &X_AMZ_DATE,
        "x-amz-target" => &X_AMZ_TARGET,
        "x-amz-content-sha256" => &X_AMZ_CONTENT_SHA256,
        _ => return None,
    })
}

impl HttpHeaders<'_> {
    fn get(&self, name: &str) -> Option<&http::HeaderValue> {
        match known_header(name) {
            Some(h) => self.map.get(h),
            None => self.map.get(name),
        }
    }

    fn get_all(&self, name: &str) -> http::header::GetAll<'_, http::HeaderValue> {
        match known_header(name) {
            Some(h) => self.map.get_all(h),
            None => self.map.get_all(name),
        }
    }
}

impl Headers for HttpHeaders<'_> {
    fn first(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.get(name) {
            Some(v) => Some(header_str(v)),
            None if name == "host" => self.authority.map(std::borrow::Cow::Borrowed),
            None => None,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some() || (name == "host" && self.authority.is_some())
    }

    fn each(&self, name: &str, f: &mut dyn FnMut(&str)) {
        let mut any = false;
        for v in self.get_all(name) {
            any = true;
            f(&header_str(v));
        }
        if !any && name == "host" {
            if let Some(a) = self.authority {
                f(a);
            }
        }
    }
}

/// The lower-case hex SHA-256 of `data`, written into `out`.
fn hex_sha256<'a>(data: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    hex_into(&Sha256::digest(data), out)
}

/// Lower-case hex of 32 bytes, written into `out`.
fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    hex::encode_to_slice(bytes, &mut out[..]).expect("32 bytes make 64 hex digits");
    std::str::from_utf8(out).expect("hex is ASCII")
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
/// ([`Verifier::verify`]). [`precheck`] also returns the parsed header.
pub fn precheck_headers<T>(
    headers: &http::HeaderMap,
    known: impl FnOnce(&str) -> Option<T>,
    max_skew: Duration,
    now: SystemTime,
) -> Result<T, AuthError> {
    precheck(headers, known, max_skew, now).map(|(found, _)| found)
}

/// A request's `Authorization` header as [`precheck`] parsed it, for
/// [`Verifier::verify_prechecked`] (which then does not parse it again).
#[derive(Debug, Clone)]
pub struct Authorization<'h>(Auth<'h>);

impl Authorization<'_> {
    /// The access key id of the credential.
    pub fn access_key(&self) -> &str {
        self.0.access_key
    }
}

/// [`precheck_headers`], returning the parsed `Authorization` header as well.
pub fn precheck<'h, T>(
    headers: &'h http::HeaderMap,
    known: impl FnOnce(&str) -> Option<T>,
    max_skew: Duration,
    now: SystemTime,
) -> Result<(T, Authorization<'h>), AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingAuthentication)?;
    let auth = parse_auth(value.to_str().unwrap_or_default())?;
    let found = known(auth.access_key).ok_or(AuthError::UnrecognizedClient)?;
    check_date(
        headers.get("x-amz-date").and_then(|v| v.to_str().ok()),
        now,
        max_skew,
    )?;
    Ok((found, Authorization(auth)))
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
    let auth = parse_auth(value)?;
    Ok(ParsedAuthorization {
        access_key: auth.access_key.to_owned(),
        date: auth.date.to_owned(),
        region: auth.region.to_owned(),
        service: auth.service.to_owned(),
        signed_headers: auth.signed_headers.into_iter().map(Into::into).collect(),
        signature: auth.signature.to_owned(),
    })
}

/// [`ParsedAuthorization`] borrowing from the header.
#[derive(Debug, Clone)]
struct Auth<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<std::borrow::Cow<'a, str>>,
    signature: &'a str,
}

fn parse_auth(value: &str) -> Result<Auth<'_>, AuthError> {
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
    let mut scope = credential.split('/');
    let parts: [Option<&str>; 6] = std::array::from_fn(|_| scope.next());
    let [Some(access_key), Some(date), Some(region), Some(service), Some("aws4_request"), None] =
        parts
    else {
        return Err(bad_credential(credential));
    };
    if [access_key, date, region, service]
        .iter()
        .any(|s| s.is_empty())
    {
        return Err(bad_credential(credential));
    }
    if signature.is_empty() || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::IncompleteSignature(
            "Signature must be a hexadecimal string.".to_owned(),
        ));
    }
    let signed_headers: Vec<std::borrow::Cow<'_, str>> = signed_headers
        .split(';')
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(h.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(h)
            }
        })
        .collect();
    if signed_headers.is_empty() {
        return Err(missing("SignedHeaders"));
    }
    Ok(Auth {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

fn bad_credential(credential: &str) -> AuthError {
    AuthError::IncompleteSignature(format!(
        "Credential should be of the form \
         'ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request', got '{credential}'."
    ))
}

/// The canonical request of SigV4 (step 1 of signing).
pub fn canonical_request(
    request: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    double_encode_path: bool,
) -> String {
    let line = RequestLine {
        method: request.method,
        path: request.path,
        query: request.query,
    };
    let mut out = String::with_capacity(256);
    write_canonical_request(
        &mut out,
        &line,
        &SliceHeaders(request.headers),
        signed_headers,
        payload_hash,
        double_encode_path,
    );
    out
}

/// [`canonical_request`] written into `out`, the headers read from any [`Headers`].
fn write_canonical_request<S: AsRef<str>>(
    out: &mut String,
    line: &RequestLine<'_>,
    headers: &impl Headers,
    signed_headers: &[S],
    payload_hash: &str,
    double_encode_path: bool,
) {
    let path = if line.path.is_empty() { "/" } else { line.path };
    out.push_str(line.method);
    out.push('\n');
    if double_encode_path {
        uri_encode_into(out, path, false);
    } else {
        out.push_str(path);
    }
    out.push('\n');
    if !line.query.is_empty() {
        out.push_str(&canonical_query(line.query));
    }
    out.push('\n');
    for name in signed_headers {
        let name = name.as_ref();
        out.push_str(name);
        out.push(':');
        let mut first = true;
        headers.each(name, &mut |v| {
            if !first {
                out.push(',');
            }
            first = false;
            // Sequences of whitespace collapse to one space; ends are trimmed.
            for (i, word) in v.split_whitespace().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(word);
            }
        });
        out.push('\n');
    }
    out.push('\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name.as_ref());
    }
    out.push('\n');
    out.push_str(payload_hash);
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
    uri_encode_into(&mut out, input, encode_slash);
    out
}

fn uri_encode_into(out: &mut String, input: &str, encode_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in input.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
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
    derive_key(secret, date, region, service).to_vec()
}

/// [`signing_key`] as an array: four HMAC-SHA256s.
fn derive_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Compares the expected lower-case hex signature with the one given (hex digits of
/// either case) in time independent of where they differ.
fn constant_time_eq_lowercase(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y.to_ascii_lowercase()))
        == 0
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

    fn signed_parts(region: &str, secret: &str, date: &str, body: &[u8]) -> http::request::Parts {
        let hash = hex::encode(Sha256::digest(body));
        let plain = vec![
            ("host".to_owned(), "127.0.0.1:8000".to_owned()),
            ("x-amz-date".to_owned(), date.to_owned()),
        ];
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &plain,
        };
        let auth = sign("AK", secret, region, "dynamodb", &req, &hash);
        let request = http::Request::post("http://127.0.0.1:8000/")
            .header("host", "127.0.0.1:8000")
            .header("x-amz-date", date)
            .header("authorization", auth)
            .body(())
            .unwrap();
        request.into_parts().0
    }

    #[test]
    fn cached_signing_keys_follow_scope_and_secret() {
        let body = b"{}";
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let today = format_amz_date(secs);
        // Just before midnight, from yesterday's scope: a different date, so another key.
        let v = Verifier::new("AK", "SK").max_skew(Duration::from_secs(2 * 86_400));
        let yesterday = format_amz_date(secs - 86_400);
        // More scopes than the cache holds, twice over: every one verifies each time.
        let regions = ["r1", "r2", "r3", "r4", "r5", "r6"];
        for _ in 0..2 {
            for r in regions {
                for date in [&today, &yesterday] {
                    let parts = signed_parts(r, "SK", date, body);
                    v.verify_at(&parts, body, now).unwrap();
                    // The same scope signed with another secret never matches a cached key.
                    let forged = signed_parts(r, "other", date, body);
                    assert_eq!(
                        v.verify_at(&forged, body, now).unwrap_err(),
                        AuthError::SignatureDoesNotMatch
                    );
                }
            }
        }
        // A verifier of the rotated secret refuses what the old one accepted.
        let parts = signed_parts("r1", "SK", &today, body);
        assert_eq!(
            Verifier::new("AK", "SK2")
                .verify_at(&parts, body, now)
                .unwrap_err(),
            AuthError::SignatureDoesNotMatch
        );
    }

    #[test]
    fn prechecked_verification_matches_verify() {
        let body = br#"{"TableName":"t"}"#;
        let now = SystemTime::now();
        let date = format_amz_date(now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64);
        let mut parts = signed_parts("ap-northeast-1", "SK", &date, body);
        let v = Verifier::new("AK", "SK");
        let (found, auth) = precheck(
            &parts.headers,
            |k| Some(k.to_owned()),
            DEFAULT_MAX_SKEW,
            now,
        )
        .unwrap();
        assert_eq!(found, "AK");
        assert_eq!(auth.access_key(), "AK");
        v.verify_prechecked(&parts, &auth, body, now).unwrap();
        assert_eq!(
            v.verify_prechecked(&parts, &auth, b"{}", now).unwrap_err(),
            AuthError::SignatureDoesNotMatch
        );
        assert_eq!(
            Verifier::new("AK", "other")
                .verify_prechecked(&parts, &auth, body, now)
                .unwrap_err(),
            AuthError::SignatureDoesNotMatch
        );
        assert_eq!(
            precheck(&parts.headers, |_| None::<()>, DEFAULT_MAX_SKEW, now).unwrap_err(),
            AuthError::UnrecognizedClient
        );
        // Upper-case hex in the signature is accepted, as before.
        let value = parts.headers["authorization"].to_str().unwrap().to_owned();
        let (head, sig) = value.rsplit_once("Signature=").unwrap();
        let upper = format!("{head}Signature={}", sig.to_ascii_uppercase());
        parts.headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&upper).unwrap(),
        );
        v.verify_at(&parts, body, now).unwrap();
        // Without a Host header (HTTP/2), the URI's authority stands in for it.
        parts.headers.remove(http::header::HOST);
        v.verify_at(&parts, body, now).unwrap();
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
