//! The two HTTP endpoints: the invoke endpoint (Lambda's Invoke API shape, on :8080) and
//! the Runtime API (2018-06-01) served to the runtime client.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::supervisor::{ApiError, FnError, Invocation, Outcome, Refusal, Supervisor};
use crate::util;

/// Largest synchronous (RequestResponse) event: 6 MiB, as Lambda.
pub const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
/// Largest asynchronous (Event) event: 1 MiB, as Lambda.
pub const MAX_ASYNC_PAYLOAD: usize = 1024 * 1024;
/// Largest function response accepted from the runtime (Lambda's 6291556 bytes).
pub const MAX_RESPONSE_PAYLOAD: usize = 6_291_556;
/// Largest X-Amz-Client-Context header (base64), as Lambda.
pub const MAX_CLIENT_CONTEXT: usize = 3583;

type Resp = Response<Full<Bytes>>;

/// Counts open connections so shutdown can wait for responses to be written.
#[derive(Default)]
pub struct Conns {
    open: AtomicUsize,
    closed: Notify,
}

impl Conns {
    /// Waits until every tracked connection is closed or `deadline` passes.
    pub async fn wait_closed(&self, deadline: std::time::Instant) {
        loop {
            let closed = self.closed.notified();
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline.into(), closed)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

struct ConnGuard(Arc<Conns>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` turns true; then open connections finish
/// their current request and close (tracked in `conns` when given).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: Option<watch::Receiver<bool>>,
    conns: Option<Arc<Conns>>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("esb-supervisor: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(shutdown.clone()) => return,
        };
        let _ = stream.set_nodelay(true);
        let guard = conns.clone().map(|c| {
            c.open.fetch_add(1, Ordering::SeqCst);
            ConnGuard(c)
        });
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Resolves when the watch turns true (or its sender is gone); never without a watch.
async fn stopped(shutdown: Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(mut s) => {
            let _ = s.wait_for(|v| *v).await;
        }
        None => std::future::pending().await,
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A Lambda API error: `x-amzn-ErrorType` header and `{"Type", "message"}` body.
fn lambda_error(status: StatusCode, error_type: &'static str, message: &str) -> Resp {
    let kind = if status.is_server_error() {
        "Service"
    } else {
        "User"
    };
    let mut r = json_response(
        status,
        json!({ "Type": kind, "message": message }).to_string(),
    );
    r.headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
    r
}

/// A Runtime API error: `{"errorMessage", "errorType"}`.
fn runtime_error(e: ApiError) -> Resp {
    let status = StatusCode::from_u16(e.0).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(
        status,
        json!({ "errorMessage": e.2, "errorType": e.1 }).to_string(),
    )
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// The invoke endpoint: `POST /2015-03-31/functions/{name}/invocations` (and `GET /health`).
pub async fn invoke_endpoint(sup: Arc<Supervisor>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if path == "/health" && req.method() == Method::GET {
        return json_response(
            StatusCode::OK,
            json!({ "status": sup.status() }).to_string(),
        );
    }
    let name = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|r| r.strip_suffix("/invocations"))
        .filter(|n| !n.is_empty() && !n.contains('/'));
    if name.is_none() {
        return lambda_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!("Unknown operation: {} {path}", req.method()),
        );
    }
    if req.method() != Method::POST {
        return lambda_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnknownOperationException",
            "Invoke takes POST",
        );
    }

    let invocation_type = header(&req, "x-amz-invocation-type").unwrap_or("RequestResponse");
    let (is_event, is_dry_run) = match invocation_type {
        "RequestResponse" => (false, false),
        "Event" => (true, false),
        "DryRun" => (false, true),
        other => {
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!(
                    "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
                ),
            )
        }
    };

    let client_context = match header(&req, "x-amz-client-context") {
        None => None,
        Some(c) => {
            let decoded = (c.len() <= MAX_CLIENT_CONTEXT)
                .then(|| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .flatten()
                .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
            match decoded {
                // Re-serialised compactly: one header line, no raw newlines.
                Some(d) => Some(d.to_string()),
                None => {
                    return lambda_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContentException",
                        "Client context must be a valid Base64-encoded JSON object (at most 3583 bytes).",
                    )
                }
            }
        }
    };
    let log_tail = match header(&req, "x-amz-log-type") {
        None | Some("None") => false,
        Some("Tail") => !is_event,
        Some(other) => {
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
                &format!(
                    "1 validation error detected: Value '{other}' at 'logType' failed to satisfy constraint: Member must satisfy enum value set: [Tail, None]"
                ),
            )
        }
    };
    let cognito_identity = header(&req, "x-amz-cognito-identity")
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .map(|c| c.to_string());
    let trace_id = match req.headers().get("x-amzn-trace-id") {
        Some(v) if util::is_safe_header_text(v.as_bytes(), 2048) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => util::trace_id(std::time::SystemTime::now()),
    };

    let limit = if is_event {
        MAX_ASYNC_PAYLOAD
    } else {
        MAX_SYNC_PAYLOAD
    };
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return lambda_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!(
                    "Request must be smaller than {limit} bytes for the InvokeFunction operation"
                ),
            )
        }
        Err(BodyError::Read(e)) => {
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!("Could not read the request body: {e}"),
            )
        }
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!("Could not parse request body into json: Could not parse payload into json: {e}"),
            );
        }
        body
    };
    if is_dry_run {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    }

    let id = util::request_id();
    let mut inv = Invocation::new(
        id.clone(),
        trace_id.clone(),
        sup.config().timeout,
        client_context,
        cognito_identity,
        body,
    );
    inv.log_tail = log_tail;
    let accepted = match sup.accept(inv) {
        Ok(a) => a,
        Err(Refusal::Busy) => {
            let mut r = lambda_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "Rate Exceeded. This worker is already running an invocation (one at a time).",
            );
            // AWS puts the reason in the body too.
            *r.body_mut() = Full::new(Bytes::from(
                json!({
                    "Type": "User",
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                    "message": "Rate Exceeded. This worker is already running an invocation (one at a time)."
                })
                .to_string(),
            ));
            return r;
        }
        Err(Refusal::ShuttingDown) => {
            return lambda_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "The worker is shutting down.",
            )
        }
    };

    let (accepted, outcome) = accepted;
    // Driven by a task of its own: a caller that goes away does not cancel the deadline.
    tokio::spawn(sup.clone().complete(accepted));
    let mut r = if is_event {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::ACCEPTED;
        r
    } else {
        match outcome.await {
            Ok(answer) => {
                let mut r = match answer.outcome {
                    Outcome::Response(body) => json_response(StatusCode::OK, body),
                    Outcome::Error(e) => {
                        let mut r = json_response(StatusCode::OK, e.body);
                        let kind = if e.handled { "Handled" } else { "Unhandled" };
                        r.headers_mut()
                            .insert("X-Amz-Function-Error", HeaderValue::from_static(kind));
                        r
                    }
                };
                if let Some(tail) = answer.log_tail {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(tail);
                    if let Ok(v) = HeaderValue::from_str(&b64) {
                        r.headers_mut().insert("X-Amz-Log-Result", v);
                    }
                }
                r
            }
            Err(_) => lambda_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                "The invocation was lost.",
            ),
        }
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-amzn-RequestId", v);
    }
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
        h.insert("X-Amzn-Trace-Id", v);
    }
    if !is_event {
        if let Ok(v) = HeaderValue::from_str(&sup.config().function_version) {
            h.insert("X-Amz-Executed-Version", v);
        }
    }
    // For the gateway's status: log records this worker could not keep (buffer full).
    let dropped = sup.logs_dropped();
    if dropped > 0 {
        h.insert(LOGS_DROPPED_HEADER, HeaderValue::from(dropped));
    }
    r
}

/// Response header of an invocation: how many log records the worker has dropped so far
/// (its log buffer was full), when any.
pub const LOGS_DROPPED_HEADER: &str = "x-esb-logs-dropped";

/// The Runtime API (2018-06-01) for the runtime client.
pub async fn runtime_api(sup: Arc<Supervisor>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let not_found = || {
        runtime_error(ApiError(
            404,
            "NotFound",
            format!("Unknown Runtime API path: {path}"),
        ))
    };
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
        return not_found();
    };
    let method = req.method().clone();
    // The error response when the method is not `m`.
    let wrong_method = |m: Method| -> Option<Resp> {
        (method != m).then(|| {
            runtime_error(ApiError(
                405,
                "MethodNotAllowed",
                format!("{path} takes {m}, not {method}"),
            ))
        })
    };
    if rest == "invocation/next" {
        if let Some(r) = wrong_method(Method::GET) {
            return r;
        }
        return match sup.next().await {
            Ok(inv) => next_response(&sup, &inv),
            Err(e) => runtime_error(e),
        };
    }
    if rest == "init/error" {
        if let Some(r) = wrong_method(Method::POST) {
            return r;
        }
        let error_type = header(&req, "lambda-runtime-function-error-type").map(str::to_string);
        let body = match read_body(req, MAX_RESPONSE_PAYLOAD).await {
            Ok(b) => b,
            Err(_) => Bytes::from_static(b"{\"errorType\":\"Runtime.InitError\",\"errorMessage\":\"init error body unreadable\"}"),
        };
        return match sup.init_error(FnError::from_runtime(error_type.as_deref(), body)) {
            Ok(()) => accepted(),
            Err(e) => runtime_error(e),
        };
    }
    let Some(rest) = rest.strip_prefix("invocation/") else {
        return not_found();
    };
    let Some((id, action)) = rest.split_once('/') else {
        return not_found();
    };
    if id.is_empty() || (action != "response" && action != "error") {
        return not_found();
    }
    if let Some(r) = wrong_method(Method::POST) {
        return r;
    }
    let id = id.to_string();
    let error_type = header(&req, "lambda-runtime-function-error-type").map(str::to_string);
    let body = match read_body(req, MAX_RESPONSE_PAYLOAD).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return runtime_error(sup.response_too_large(&id, MAX_RESPONSE_PAYLOAD))
        }
        Err(BodyError::Read(e)) => {
            return runtime_error(ApiError(
                400,
                "InvalidRequest",
                format!("unreadable body: {e}"),
            ))
        }
    };
    let result = if action == "response" {
        sup.respond(&id, body)
    } else {
        sup.fail(&id, FnError::from_runtime(error_type.as_deref(), body))
    };
    match result {
        Ok(()) => {
            // Let the caller's response be written before this 202.
            tokio::task::yield_now().await;
            accepted()
        }
        Err(e) => runtime_error(e),
    }
}

fn accepted() -> Resp {
    json_response(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
}

fn next_response(sup: &Supervisor, inv: &Invocation) -> Resp {
    let mut r = json_response(StatusCode::OK, inv.body.clone());
    let h = r.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
            h.insert(name, v);
        }
    };
    set("Lambda-Runtime-Aws-Request-Id", &inv.id);
    set("Lambda-Runtime-Deadline-Ms", &inv.deadline_ms().to_string());
    set("Lambda-Runtime-Invoked-Function-Arn", sup.arn());
    set("Lambda-Runtime-Trace-Id", &inv.trace_id);
    if let Some(c) = &inv.client_context {
        set("Lambda-Runtime-Client-Context", c);
    }
    if let Some(c) = &inv.cognito_identity {
        set("Lambda-Runtime-Cognito-Identity", c);
    }
    r
}
