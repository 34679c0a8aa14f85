//! The workers' listener: ingestion only, signed with a function's own key pair, each
//! record stamped with that function's name (`function_name`, `container_name`) and
//! `job=lambda` whatever the body says.
//! Queries are not served here: they need the main listener, which only the host reaches.
//! The CloudWatch Logs API (`POST /`) is, with the function's key and policy.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;

use crate::http::{do_ingest_stamped, AppState};
use crate::ingest::Format;

/// What the workers' listener needs beyond the store.
#[derive(Clone)]
pub(crate) struct WorkerState {
    pub app: AppState,
    pub keys: Arc<esb_iam::CredentialStore>,
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, format!("{}\n", msg.into())).into_response()
}

/// The function a request is signed as, and its body, or the refusal.
async fn authenticate(s: &WorkerState, req: Request) -> Result<(String, Request), Response> {
    let (parts, body) = req.into_parts();
    // Decided from the headers before the body is read: unsigned, malformed, unknown or
    // stale requests are refused without reading their body.
    let principal = esb_sigv4::precheck_headers(
        &parts.headers,
        |key| s.keys.lookup(key),
        esb_sigv4::DEFAULT_MAX_SKEW,
        std::time::SystemTime::now(),
    )
    .map_err(|e| {
        refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{}: {e} (workers' records must be signed with the function's key pair)",
                e.json_code()
            ),
        )
    })?;
    let body = esb_serve::read_body(
        body,
        s.app.config.max_request_bytes,
        esb_serve::BODY_IDLE_TIMEOUT,
    )
    .await
    .map_err(|e| match e {
        esb_serve::BodyError::TooLarge => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} bytes",
                s.app.config.max_request_bytes
            ),
        ),
        other => refuse(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    esb_sigv4::Verifier::new(principal.access_key.clone(), principal.secret_key.clone())
        .verify(&parts, &body)
        .map_err(|e| refuse(StatusCode::FORBIDDEN, format!("{}: {e}", e.json_code())))?;
    Ok((
        principal.function.clone(),
        Request::from_parts(parts, Body::from(body)),
    ))
}

async fn insert(State(s): State<WorkerState>, req: Request, format: Format) -> Response {
    let (function, req) = match authenticate(&s, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match do_ingest_stamped(s.app.clone(), req, format, Some(function)).await {
        Ok((report, _)) => {
            let status = if report.ingested == 0 && report.rejected > 0 {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            (
                status,
                [(http::header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&report).unwrap_or_default(),
            )
                .into_response()
        }
        Err(r) => r,
    }
}

/// The workers' router: `/health` and the ingestion endpoints, nothing else.
pub(crate) fn router(state: WorkerState) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route(
            "/",
            post(|State(s): State<WorkerState>, req: Request| async move {
                let keys = crate::cloudwatch::Keys::Functions(&s.keys);
                crate::cloudwatch::post_root(&s.app.logs, keys, req).await
            }),
        )
        .route(
            "/insert/jsonline",
            any(|s: State<WorkerState>, r: Request| insert(s, r, Format::JsonLine)),
        )
        .route(
            "/insert/elasticsearch/_bulk",
            any(|s: State<WorkerState>, r: Request| insert(s, r, Format::EsBulk)),
        )
        .fallback(|| async {
            refuse(
                StatusCode::FORBIDDEN,
                "workers may only ingest their own records here (queries: the box's host)",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
