//! The CloudWatch Logs API (JSON 1.1, `X-Amz-Target: Logs_20140328.<Op>`, `POST /`) on the
//! log store's own ports, beside VictoriaLogs' API. Events are ordinary records of the store
//! (`log_group`, `log_stream` fields), so LogsQL sees them and the records the supervisor
//! ships with those fields appear as groups and streams. See `docs/logstore.md`.
//!
//! Every request is SigV4-signed (service `logs`, any region), checked from its headers
//! before the body is read: on the main listener with the box's own key pair
//! ([`BoxKey`](crate::BoxKey)), on the workers' listener with a function's key, which may do
//! what `AWSLambdaBasicExecutionRole` allows (create groups and streams, put events) and what
//! its policy grants beyond that.

mod catalog;
mod events;
mod filter;
mod ops;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub(crate) use catalog::Catalog;

use crate::store::Store;
use crate::BoxKey;

/// The `X-Amz-Target` prefix of the CloudWatch Logs API.
const TARGET_PREFIX: &str = "Logs_20140328.";
/// Largest request body accepted (a full PutLogEvents batch is 1 MiB of messages; JSON
/// escaping can make it a few times larger).
const MAX_BODY: usize = 8 << 20;
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The account in ARNs for the box's own key.
const BOX_ACCOUNT: &str = "000000000000";

/// An error of the API, answered as AWS's JSON 1.1 errors (`__type`, `message`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CwError {
    /// `InvalidParameterException`.
    #[error("{0}")]
    InvalidParameter(String),
    /// `ResourceNotFoundException`.
    #[error("{0}")]
    ResourceNotFound(String),
    /// `ResourceAlreadyExistsException`.
    #[error("{0}")]
    ResourceAlreadyExists(String),
    /// `AccessDeniedException`.
    #[error("{0}")]
    AccessDenied(String),
    /// A SigV4 failure, with its AWS error code.
    #[error("{1}")]
    Auth(&'static str, String),
    /// `UnknownOperationException`.
    #[error("{0}")]
    UnknownOperation(String),
    /// `SerializationException`: the body is not the JSON the operation takes.
    #[error("{0}")]
    Serialization(String),
    /// `ServiceUnavailableException`: the store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for CwError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "CloudWatch Logs API: storage error");
        CwError::Internal(format!("storage error: {e}"))
    }
}

impl CwError {
    fn code(&self) -> &'static str {
        match self {
            CwError::InvalidParameter(_) => "InvalidParameterException",
            CwError::ResourceNotFound(_) => "ResourceNotFoundException",
            CwError::ResourceAlreadyExists(_) => "ResourceAlreadyExistsException",
            CwError::AccessDenied(_) => "AccessDeniedException",
            CwError::Auth(code, _) => code,
            CwError::UnknownOperation(_) => "UnknownOperationException",
            CwError::Serialization(_) => "SerializationException",
            CwError::Internal(_) => "ServiceUnavailableException",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            CwError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn into_response(self) -> Response {
        let body = serde_json::json!({"__type": self.code(), "message": self.to_string()});
        reply(self.status(), &body)
    }
}

fn reply(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    let id = format!(
        "{:016x}{:016x}",
        crate::time::now_nanos(),
        crate::record::hash64(&[body.to_string().as_bytes()])
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-amzn-RequestId", v);
    }
    r
}

/// The API as a listener serves it.
#[derive(Clone)]
pub(crate) struct Logs {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
}

/// Who may call, on one listener.
pub(crate) enum Keys<'a> {
    /// The main listener: the box's own key pair, if one is configured.
    Box(Option<&'a BoxKey>),
    /// The workers' listener: functions' keys.
    Functions(&'a esb_iam::CredentialStore),
}

/// The caller, once its key is known.
enum Caller {
    Box,
    Function(Arc<esb_iam::Principal>),
}

/// Whether a request is meant for this API (its `X-Amz-Target`).
pub(crate) fn is_cloudwatch(req: &Request) -> bool {
    req.headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(TARGET_PREFIX))
}

impl Logs {
    /// The API over `store`, with its catalogue.
    pub(crate) fn new(store: Arc<Store>, catalog: Arc<Catalog>) -> Logs {
        Logs { store, catalog }
    }

    /// Answers one request (`POST /` with a `Logs_20140328.*` target).
    pub(crate) async fn handle(&self, keys: Keys<'_>, req: Request) -> Response {
        match self.serve(keys, req).await {
            Ok(v) => reply(StatusCode::OK, &v),
            Err(e) => e.into_response(),
        }
    }

    async fn serve(&self, keys: Keys<'_>, req: Request) -> Result<Value, CwError> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let Some(op) = target.strip_prefix(TARGET_PREFIX).map(str::to_string) else {
            return Err(CwError::UnknownOperation(format!(
                "X-Amz-Target {target:?}: this endpoint serves the CloudWatch Logs API (Logs_20140328.*)"
            )));
        };
        let (parts, body) = req.into_parts();
        // Decided from the headers before the body is read.
        let found = esb_sigv4::precheck_headers(
            &parts.headers,
            |ak| match &keys {
                Keys::Box(k) => k
                    .filter(|k| k.access_key == ak)
                    .map(|k| (k.access_key.clone(), k.secret_key.clone(), Caller::Box)),
                Keys::Functions(store) => store.lookup(ak).map(|p| {
                    (
                        p.access_key.clone(),
                        p.secret_key.clone(),
                        Caller::Function(p),
                    )
                }),
            },
            esb_sigv4::DEFAULT_MAX_SKEW,
            std::time::SystemTime::now(),
        );
        let (ak, sk, caller) = found.map_err(auth_error)?;
        let region = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| esb_sigv4::parse_authorization(v).ok())
            .map(|a| a.region)
            .unwrap_or_default();
        let body = esb_serve::read_body(body, MAX_BODY, esb_serve::BODY_IDLE_TIMEOUT)
            .await
            .map_err(|e| match e {
                esb_serve::BodyError::TooLarge => CwError::InvalidParameter(format!(
                    "the request body is larger than {MAX_BODY} bytes"
                )),
                other => CwError::Serialization(other.to_string()),
            })?;
        esb_sigv4::Verifier::new(ak, sk)
            .service("logs")
            .verify(&parts, &body)
            .map_err(auth_error)?;
        if !ops::known(&op) {
            return Err(CwError::UnknownOperation(format!(
                "{target} is not supported by esb's log store"
            )));
        }
        let input: Value = if body.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| CwError::Serialization(format!("the body is not JSON: {e}")))?
        };
        if !input.is_object() {
            return Err(CwError::Serialization(
                "the body must be a JSON object".into(),
            ));
        }
        let (account, function) = match (&caller, &keys) {
            (Caller::Function(p), Keys::Functions(store)) => {
                let account = store.account();
                authorize(store, p, &op, &input, &region, &account)?;
                (account, Some(p.function.clone()))
            }
            _ => (BOX_ACCOUNT.to_string(), None),
        };
        let store = self.store.clone();
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || {
            let ctx = ops::Ctx {
                store: &store,
                catalog: &catalog,
                region,
                account,
                function,
            };
            ops::dispatch(&ctx, &op, &input)
        })
        .await
        .map_err(|e| CwError::Internal(format!("internal error: {e}")))?
    }
}

fn auth_error(e: esb_sigv4::AuthError) -> CwError {
    CwError::Auth(e.json_code(), e.to_string())
}

/// What `AWSLambdaBasicExecutionRole` lets every function do.
const BASIC_EXECUTION: &[&str] = &["CreateLogGroup", "CreateLogStream", "PutLogEvents"];

/// Checks a function's request against its policy (`logs:<Op>` on the group's or stream's
/// ARN); the basic execution actions are always allowed, as every Lambda function's role
/// grants them on AWS.
fn authorize(
    keys: &esb_iam::CredentialStore,
    p: &esb_iam::Principal,
    op: &str,
    input: &Value,
    region: &str,
    account: &str,
) -> Result<(), CwError> {
    if BASIC_EXECUTION.contains(&op) {
        return Ok(());
    }
    let s = |k: &str| input.get(k).and_then(Value::as_str);
    let group = s("logGroupName").map(str::to_string).or_else(|| {
        s("logGroupIdentifier").map(|i| {
            i.split_once(":log-group:")
                .map_or(i, |(_, g)| g.strip_suffix(":*").unwrap_or(g))
                .to_string()
        })
    });
    let base = format!("arn:aws:logs:{region}:{account}:log-group:");
    let resource = match (group, s("logStreamName")) {
        (Some(g), Some(st)) => format!("{base}{g}:log-stream:{st}"),
        (Some(g), None) => format!("{base}{g}:*"),
        (None, _) => format!("{base}*"),
    };
    keys.check(p, &esb_iam::Access::new(format!("logs:{op}"), resource))
        .map_err(CwError::AccessDenied)
}

/// The answer to `POST /` on a listener: the CloudWatch Logs API when the target says so,
/// else an error in the same JSON shape.
pub(crate) async fn post_root(logs: &Logs, keys: Keys<'_>, req: Request) -> Response {
    if !is_cloudwatch(&req) {
        return CwError::UnknownOperation(
            "POST / serves the CloudWatch Logs API only (X-Amz-Target: Logs_20140328.<Operation>); \
             VictoriaLogs' API is under /insert and /select"
                .into(),
        )
        .into_response();
    }
    logs.handle(keys, req).await
}
