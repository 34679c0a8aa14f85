//! esb-dynamodb: an embedded DynamoDB-compatible store.
//!
//! It serves the DynamoDB JSON protocol (`POST /` with `X-Amz-Target:
//! DynamoDB_20120810.<Operation>`, `application/x-amz-json-1.0`), checks every request's
//! SigV4 signature against the box's single credential pair, and keeps its data in one
//! SQLite database (WAL, `synchronous=FULL`) under the data directory. See
//! `docs/dynamodb.md` for what is supported.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = esb_dynamodb::Config::new(
//!     "127.0.0.1:8000".parse()?,
//!     "/var/lib/esb/dynamodb".into(),
//!     "AKID",
//!     "secret",
//! );
//! esb_dynamodb::serve(config, std::future::pending()).await
//! # }
//! ```

pub mod error;
pub mod expr;
mod iam;
mod legacy;
mod ops;
pub mod store;
pub mod table;
pub mod value;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use error::DdbError;

/// Default region of the box.
pub const DEFAULT_REGION: &str = "ap-northeast-1";
/// Largest request body accepted (DynamoDB's 16 MB request limit plus envelope).
const MAX_BODY: usize = 17 * 1024 * 1024;
/// How often expired items are looked for.
const TTL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Where and how the store serves.
#[derive(Clone)]
pub struct Config {
    /// Listen address (default for `esb up`: 127.0.0.1:8000).
    pub listen: SocketAddr,
    /// Directory holding the database.
    pub data_dir: PathBuf,
    /// The box's access key id.
    pub access_key: String,
    /// The box's secret access key.
    pub secret_key: String,
    /// Region reported in ARNs (requests signed for any region are accepted).
    pub region: String,
    /// The box's credentials file of functions' keys and policies (`STATE/iam/
    /// credentials.json`); `None`: only the box's key is accepted.
    pub iam_file: Option<PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("region", &self.region)
            .field("iam_file", &self.iam_file)
            .finish()
    }
}

impl Config {
    /// A configuration in the default region (ap-northeast-1).
    pub fn new(
        listen: SocketAddr,
        data_dir: PathBuf,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Config {
        Config {
            listen,
            data_dir,
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: DEFAULT_REGION.to_owned(),
            iam_file: None,
        }
    }
}

/// Binds, then serves until `shutdown` resolves; in-flight requests finish and every
/// acknowledged write is on disk when it returns.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}

/// A bound server (bind to port 0 and read [`Server::local_addr`] in tests).
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
    limits: esb_serve::Limits,
}

struct State {
    db: Arc<store::Db>,
    verifier: esb_sigv4::Verifier,
    box_key: String,
    region: String,
    functions: Option<esb_iam::CredentialStore>,
    /// Verifiers of functions' keys by access key, with the secret each was made for.
    function_verifiers: std::sync::Mutex<FunctionVerifiers>,
}

type FunctionVerifiers = std::collections::HashMap<String, (String, Arc<esb_sigv4::Verifier>)>;

/// Most function verifiers kept (the cache starts over when full).
const MAX_CACHED_VERIFIERS: usize = 256;

impl State {
    /// The function principal the request is signed as and the verifier of its
    /// signature (`None`: the box's key, or a key nobody issued).
    fn caller(
        &self,
        key: &str,
    ) -> Option<Option<(Arc<esb_iam::Principal>, Arc<esb_sigv4::Verifier>)>> {
        if key == self.box_key {
            return Some(None);
        }
        let p = self.functions.as_ref()?.lookup(key)?;
        let v = function_verifier(&self.function_verifiers, &p);
        Some(Some((p, v)))
    }

    /// `Err(AccessDeniedException)` when the function's policy refuses the operation.
    fn authorize(
        &self,
        p: &esb_iam::Principal,
        op: &str,
        req: &serde_json::Value,
    ) -> Result<(), DdbError> {
        let Some(store) = &self.functions else {
            return Ok(());
        };
        for access in iam::accesses(op, req, &self.region, &store.account()) {
            store
                .check(p, &access)
                .map_err(|m| DdbError::new("AccessDeniedException", m))?;
        }
        Ok(())
    }
}

/// The verifier of a function's key pair, kept while the pair stays the same so that its
/// derived signing keys are reused (a rotated secret gets a new verifier).
fn function_verifier(
    cache: &std::sync::Mutex<FunctionVerifiers>,
    p: &esb_iam::Principal,
) -> Arc<esb_sigv4::Verifier> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((secret, v)) = cache.get(&p.access_key) {
        if *secret == p.secret_key {
            return v.clone();
        }
    }
    if cache.len() >= MAX_CACHED_VERIFIERS {
        cache.clear();
    }
    let v = Arc::new(esb_sigv4::Verifier::new(
        p.access_key.clone(),
        p.secret_key.clone(),
    ));
    cache.insert(p.access_key.clone(), (p.secret_key.clone(), v.clone()));
    v
}

impl Server {
    /// Opens the database and binds the listener.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let db = store::Db::open(&config.data_dir, &config.region)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let functions = match &config.iam_file {
            Some(path) => Some(
                esb_iam::CredentialStore::open(path)
                    .map_err(|e| anyhow::anyhow!("the credentials file: {e}"))?,
            ),
            None => None,
        };
        let box_key = config.access_key.clone();
        let verifier = esb_sigv4::Verifier::new(config.access_key, config.secret_key);
        let limits = esb_serve::Limits::from_env("dynamodb").map_err(anyhow::Error::msg)?;
        Ok(Server {
            listener,
            limits,
            state: Arc::new(State {
                db,
                verifier,
                box_key,
                region: config.region.clone(),
                functions,
                function_verifiers: Default::default(),
            }),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), sync = store::sync_mode(), "dynamodb listening");
        let sweeper = {
            let db = self.state.db.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TTL_SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = ops::sweep_ttl(&db, 1000).await {
                        tracing::warn!(error = %e, "TTL sweep failed");
                    }
                }
            })
        };
        let state = self.state.clone();
        esb_serve::serve(
            self.listener,
            self.limits,
            move |_peer| {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
                })
            },
            shutdown,
        )
        .await;
        sweeper.abort();
        let db = self.state.db.clone();
        tokio::task::spawn_blocking(move || db.close()).await?;
        Ok(())
    }
}

/// A unique request id: a random per-process prefix and a counter (cheaper than a UUID per
/// request).
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix =
        PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..20].to_uppercase());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    // `{:016X}` without the formatting machinery (this runs for every response).
    for shift in (0..16).rev() {
        id.push(char::from(
            b"0123456789ABCDEF"[((n >> (shift * 4)) & 15) as usize],
        ));
    }
    id
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&request_id()) {
        h.insert("x-amzn-requestid", v);
    }
    r
}

fn error_response(e: &DdbError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = respond(status, serde_json::to_vec(&e.body()).unwrap_or_default());
    if let Ok(v) = http::HeaderValue::from_str(e.kind) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::GET && parts.uri.path() == "/" {
        return respond(StatusCode::OK, b"healthy: esb-dynamodb".to_vec());
    }
    // The health check the seed's troubleshooting can use (the API itself is POST /).
    if parts.method == http::Method::GET && parts.uri.path() == "/health" {
        let mut r = respond(
            StatusCode::OK,
            br#"{"status":"ok","service":"esb-dynamodb"}"#.to_vec(),
        );
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    if parts.method != http::Method::POST {
        return error_response(&DdbError::serialization("Only POST requests are accepted"));
    }
    // Decided from the headers before the body is read: an unsigned, malformed, unknown or
    // stale request is refused without reading up to 16 MiB.
    let now = std::time::SystemTime::now();
    let (caller, authorization) = match esb_sigv4::precheck(
        &parts.headers,
        |key| state.caller(key),
        esb_sigv4::DEFAULT_MAX_SKEW,
        now,
    ) {
        Ok(c) => c,
        Err(e) => {
            let code = e.json_code();
            let mut err = DdbError::new(code, e.to_string());
            if code == "MissingAuthenticationTokenException" {
                err.status = 400;
            }
            return error_response(&err);
        }
    };
    let body = match esb_serve::read_body(body, MAX_BODY, esb_serve::BODY_IDLE_TIMEOUT).await {
        Ok(b) => b,
        Err(esb_serve::BodyError::Stalled | esb_serve::BodyError::Read(_)) => {
            let mut e = DdbError::serialization("The request body could not be read in time");
            e.status = 400;
            return error_response(&e);
        }
        Err(esb_serve::BodyError::TooLarge) => {
            let mut e = DdbError::new(
                "RequestEntityTooLarge",
                "Request size exceeded 16777216 bytes",
            );
            e.status = 413;
            return error_response(&e);
        }
    };
    let (principal, function_verifier) = caller.unzip();
    if let Err(e) = function_verifier
        .as_ref()
        .map_or(&state.verifier, |v| &**v)
        .verify_prechecked(&parts, &authorization, &body, now)
    {
        let code = e.json_code();
        let mut err = DdbError::new(code, e.to_string());
        if code == "MissingAuthenticationTokenException" {
            err.status = 400;
        }
        return error_response(&err);
    }
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(op) = target.strip_prefix("DynamoDB_20120810.") else {
        return error_response(&DdbError::new("UnknownOperationException", ""));
    };
    let json: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(j) => j,
            Err(_) => {
                return error_response(&DdbError::serialization(
                    "Start of structure or map found where not expected",
                ))
            }
        }
    };
    if let Some(p) = &principal {
        if let Err(e) = state.authorize(p, op, &json) {
            return error_response(&e);
        }
    }
    match ops::dispatch(&state.db, op, json).await {
        Ok(ops::Reply::Json(out)) => {
            respond(StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default())
        }
        Ok(ops::Reply::Raw(bytes)) => respond(StatusCode::OK, bytes),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(op, error = %e, "request failed");
            }
            error_response(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(key: &str, secret: &str) -> esb_iam::Principal {
        esb_iam::Principal {
            access_key: key.into(),
            secret_key: secret.into(),
            function: "f".into(),
            revision: "1".into(),
            has_policy: true,
            policy: Default::default(),
            expires_at: None,
        }
    }

    fn signed(key: &str, secret: &str) -> http::request::Parts {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let headers = vec![
            ("host".to_owned(), "127.0.0.1".to_owned()),
            ("x-amz-date".to_owned(), esb_sigv4::format_amz_date(now)),
        ];
        let req = esb_sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
        };
        let auth = esb_sigv4::sign(key, secret, "r", "dynamodb", &req, esb_sigv4::EMPTY_SHA256);
        let mut b = http::Request::post("/");
        for (n, v) in &headers {
            b = b.header(n, v);
        }
        b.header("authorization", auth)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn request_ids_are_a_prefix_and_a_hex_counter() {
        let (a, b) = (request_id(), request_id());
        assert_eq!(a.len(), 36);
        assert_eq!(a[..20], b[..20]);
        let n = |id: &str| u64::from_str_radix(&id[20..], 16).unwrap();
        assert!(n(&b) > n(&a));
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    }

    #[test]
    fn function_verifiers_are_reused_until_the_secret_changes() {
        let cache = std::sync::Mutex::new(FunctionVerifiers::new());
        let a = function_verifier(&cache, &principal("ESBFA", "s1"));
        assert!(Arc::ptr_eq(
            &a,
            &function_verifier(&cache, &principal("ESBFA", "s1"))
        ));
        a.verify(&signed("ESBFA", "s1"), b"").unwrap();
        // The same key id with a rotated secret: a new verifier, of the new secret only.
        let b = function_verifier(&cache, &principal("ESBFA", "s2"));
        assert!(!Arc::ptr_eq(&a, &b));
        b.verify(&signed("ESBFA", "s2"), b"").unwrap();
        assert!(b.verify(&signed("ESBFA", "s1"), b"").is_err());
        // Bounded: past the limit the cache starts over.
        for i in 0..MAX_CACHED_VERIFIERS + 1 {
            function_verifier(&cache, &principal(&format!("ESBF{i}"), "s"));
        }
        assert!(cache.lock().unwrap().len() <= MAX_CACHED_VERIFIERS);
    }
}
