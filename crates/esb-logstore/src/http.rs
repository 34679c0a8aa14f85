//! The HTTP API: VictoriaLogs' ingestion and `/select/logsql/*` endpoints.

// Handlers return early with a ready error response; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio::sync::{mpsc, watch};

use crate::ingest::{ingest, Format, IngestParams};
use crate::logsql::{self, Query};
use crate::query::{self, row_json};
use crate::store::{Order, Store};
use crate::time::{now_nanos, parse_duration, parse_time_arg};
use crate::Config;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<Store>,
    /// The CloudWatch Logs API (`POST /` with a `Logs_20140328.*` target).
    pub logs: crate::cloudwatch::Logs,
    pub config: Arc<Config>,
    pub shutdown: watch::Receiver<bool>,
    /// Bounds how many request bodies are held in memory at once.
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// Threads that parse and store ingested bodies.
    pub ingest_pool: Arc<WorkPool>,
}

type Job = Box<dyn FnOnce() + Send>;

/// A few long-lived threads for ingestion. Parsing allocates a lot of short-lived memory;
/// keeping it on the same few threads (rather than tokio's growing blocking pool) keeps
/// the allocator from spreading it over many per-thread arenas, so RSS stays low.
pub(crate) struct WorkPool {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

impl WorkPool {
    pub(crate) fn new(threads: usize) -> WorkPool {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("logstore-ingest-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap().recv() {
                        Ok(job) => job,
                        Err(_) => return, // the server is gone
                    };
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                })
                .expect("spawn an ingestion thread");
        }
        WorkPool {
            tx: std::sync::Mutex::new(tx),
        }
    }

    /// Runs `f` on the pool; `None` if it panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = otx.send(f());
        });
        self.tx.lock().unwrap().send(job).ok()?;
        orx.await.ok()
    }
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { "esb log store: VictoriaLogs-compatible HTTP API\n" }).post(
                |State(s): State<AppState>, req: Request| async move {
                    let keys = crate::cloudwatch::Keys::Box(s.config.box_key.as_ref());
                    crate::cloudwatch::post_root(&s.logs, keys, req).await
                },
            ),
        )
        .route("/health", get(|| async { "OK" }))
        .route("/insert/jsonline", any(insert_jsonline))
        .route("/insert/elasticsearch/_bulk", any(insert_bulk))
        .route("/insert/elasticsearch/{index}/_bulk", any(insert_bulk))
        .route("/insert/elasticsearch", any(es_info))
        .route("/insert/elasticsearch/", any(es_info))
        .route("/select/logsql/query", any(select_query))
        .route("/select/logsql/hits", any(select_hits))
        .route("/select/logsql/field_names", any(select_field_names))
        .route("/select/logsql/field_values", any(select_field_values))
        .route("/select/logsql/streams", any(select_streams))
        .route("/select/logsql/tail", any(select_tail))
        .route("/select/logsql/stats_query", any(select_stats_query))
        .route(
            "/select/logsql/stats_query_range",
            any(select_stats_query_range),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// A plain-text response; the message gets a trailing newline if it lacks one.
fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    if !m.ends_with('\n') {
        m.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

/// A 400 with `msg`.
fn bad_request(msg: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, msg)
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A 200 with a JSON body.
fn json_ok(v: &impl serde::Serialize) -> Response {
    json(StatusCode::OK, v)
}

/// A 200 whose body streams newline-delimited JSON rows.
fn json_lines_response(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/stream+json")
        .body(body)
        .unwrap()
}

/// Request arguments from the URL and, for form POSTs, the body.
struct Args(Vec<(String, String)>);

impl Args {
    /// The last value of `k`, unless it is empty.
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `k`, in request order.
    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The argument `name` read by `parse`; absent (or empty) is `None`. A value `parse`
    /// refuses is a 400 that names the argument, quotes the value and, when `want` is
    /// not empty, says what is expected.
    fn parse<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
        want: &str,
    ) -> Result<Option<T>, Response> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        parse(v).map(Some).ok_or_else(|| {
            let mut msg = format!("cannot parse {name} arg {v:?}");
            if !want.is_empty() {
                msg.push_str(": ");
                msg.push_str(want);
            }
            bad_request(msg)
        })
    }

    /// A point in time (RFC3339, a Unix timestamp, `now` or a duration back from `now`).
    fn time(&self, name: &str, now: i64, want: &str) -> Result<Option<i64>, Response> {
        self.parse(name, |v| parse_time_arg(v, now), want)
    }

    /// A duration such as `5m`.
    fn duration(&self, name: &str) -> Result<Option<i64>, Response> {
        self.parse(name, parse_duration, "")
    }

    /// The bucket width of `hits` and `stats_query_range`: a positive duration, one day
    /// by default; `example` shows one in the error message.
    fn step(&self, example: &str) -> Result<i64, Response> {
        let want = format!("want a positive duration such as {example}");
        let step = self.parse("step", |s| parse_duration(s).filter(|d| *d > 0), &want)?;
        Ok(step.unwrap_or(86_400_000_000_000))
    }

    /// A row limit; absent or 0 means no limit.
    fn limit(&self, name: &str) -> Result<Option<usize>, Response> {
        let n = self.parse(
            name,
            |v| v.parse::<usize>().ok(),
            "want a non-negative integer",
        )?;
        Ok(n.filter(|n| *n != 0))
    }
}

async fn select_args(req: Request, max: usize) -> Result<Args, Response> {
    let mut args: Vec<(String, String)> = url_args(&req);
    if req.method() == Method::POST {
        let body = axum::body::to_bytes(req.into_body(), max)
            .await
            .map_err(|e| {
                text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the request body: {e}"),
                )
            })?;
        args.extend(form_urlencoded::parse(&body).into_owned());
    }
    Ok(Args(args))
}

/// The arguments of the URL's query string.
fn url_args(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The parsed common arguments of the select endpoints.
struct Select {
    query: Query,
    start: i64,
    end: i64,
    now: i64,
}

fn parse_select(args: &Args) -> Result<Select, Response> {
    let now = now_nanos();
    let q = args.get("query").unwrap_or("*");
    let query = logsql::parse(q, now).map_err(|e| bad_request(e.to_string()))?;
    let want = "want RFC3339, a Unix timestamp, now or a duration";
    let start = args.time("start", now, want)?.unwrap_or(i64::MIN);
    let end = args.time("end", now, want)?.unwrap_or(i64::MAX);
    Ok(Select {
        query,
        start,
        end,
        now,
    })
}

/// Reads the arguments of a select endpoint and parses the common ones.
async fn select_request(state: &AppState, req: Request) -> Result<(Args, Select), Response> {
    let args = select_args(req, state.config.max_request_bytes).await?;
    let sel = parse_select(&args)?;
    Ok((args, sel))
}

fn io_error(e: std::io::Error) -> Response {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        return bad_request(e.to_string());
    }
    tracing::error!(error = %e, "log store I/O error");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("storage error: {e}"),
    )
}

fn join_error(e: tokio::task::JoinError) -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e}"),
    )
}

// ---------- ingestion ----------

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn ingest_params(req: &Request) -> IngestParams {
    let q = url_args(req);
    let headers = req.headers();
    // An argument comes from the URL, else from its VL-* header.
    let get = |arg: &str, hdr: &str| -> Option<String> {
        q.iter()
            .rev()
            .find(|(k, v)| k == arg && !v.is_empty())
            .map(|(_, v)| v.clone())
            .or_else(|| {
                headers
                    .get(hdr)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .filter(|v| !v.is_empty())
            })
    };
    let get_list = |arg: &str, hdr: &str| get(arg, hdr).map(|s| list(&s)).unwrap_or_default();
    IngestParams {
        msg_fields: get_list("_msg_field", "VL-Msg-Field"),
        time_field: get("_time_field", "VL-Time-Field"),
        stream_fields: get_list("_stream_fields", "VL-Stream-Fields"),
        ignore_fields: get_list("ignore_fields", "VL-Ignore-Fields"),
        extra_fields: get_list("extra_fields", "VL-Extra-Fields")
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect(),
    }
}

async fn do_ingest(
    state: AppState,
    req: Request,
    format: Format,
) -> Result<(crate::ingest::IngestReport, u128), Response> {
    do_ingest_stamped(state, req, format, None).await
}

/// Ingests a request's body; with `function`, every record's `function_name` is that
/// function's, as is `container_name` (upstream's name for it), and its `job` is `lambda`
/// (the workers' listener, where the caller's key says who it is: a worker cannot pass its
/// lines off as another function's or the gateway's).
pub(crate) async fn do_ingest_stamped(
    state: AppState,
    req: Request,
    format: Format,
    function: Option<String>,
) -> Result<(crate::ingest::IngestReport, u128), Response> {
    if req.method() != Method::POST && req.method() != Method::PUT {
        return Err(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST to ingest logs",
        ));
    }
    let started = Instant::now();
    let mut params = ingest_params(&req);
    if let Some(f) = function {
        params
            .extra_fields
            .retain(|(k, _)| !["function_name", "container_name", "job"].contains(&k.as_str()));
        params
            .extra_fields
            .push(("container_name".into(), f.clone()));
        params.extra_fields.push(("function_name".into(), f));
        params.extra_fields.push(("job".into(), "lambda".into()));
    }
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let gzip = match encoding.as_str() {
        "" | "identity" => false,
        "gzip" | "x-gzip" => true,
        other => {
            return Err(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {other:?}: send identity or gzip"),
            ))
        }
    };
    let body = esb_serve::read_body(
        req.into_body(),
        state.config.max_request_bytes,
        esb_serve::BODY_IDLE_TIMEOUT,
    )
    .await
    .map_err(|e| match e {
        esb_serve::BodyError::TooLarge => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} bytes: send smaller batches",
                state.config.max_request_bytes
            ),
        ),
        other => text(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    // An ingest slot only once the body is here: slow senders cannot hold the slots.
    let _slot = state
        .ingest_slots
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    let store = state.store.clone();
    let max_line = state.config.max_line_bytes;
    let max_decompressed = state.config.max_decompressed_bytes;
    let inflated = Arc::new(AtomicBool::new(false));
    let inflated2 = inflated.clone();
    let stored = Arc::new(AtomicUsize::new(0));
    let stored2 = stored.clone();
    let result = state
        .ingest_pool
        .run(move || {
            let reader: Box<dyn BufRead> = if gzip {
                // Decompressed bytes are counted as they come: a small body that inflates
                // past the bound (a gzip bomb) stops there.
                Box::new(std::io::BufReader::with_capacity(
                    256 << 10,
                    Bounded {
                        inner: flate2::read::MultiGzDecoder::new(&body[..]),
                        left: max_decompressed,
                        hit: inflated2,
                    },
                ))
            } else {
                Box::new(&body[..])
            };
            let mut store_err = None;
            let report = ingest(reader, format, &params, max_line, &mut |batch| {
                let n = batch.len();
                store
                    .append(batch)
                    .inspect_err(|e| store_err = Some(e.to_string()))?;
                stored2.fetch_add(n, Ordering::Relaxed);
                Ok(())
            });
            (report, store_err)
        })
        .await
        .ok_or_else(|| {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: the ingestion worker failed",
            )
        })?;
    match result {
        (Ok(report), _) => {
            if report.rejected > 0 {
                tracing::warn!(ingested = report.ingested, rejected = report.rejected, first = ?report.errors.first(), "some log lines were rejected");
            }
            Ok((report, started.elapsed().as_millis()))
        }
        (Err(e), Some(store_err)) => {
            let _ = e;
            Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cannot store logs: {store_err} ({} records of this request were stored)",
                    stored.load(Ordering::Relaxed)
                ),
            ))
        }
        (Err(_), None) if inflated.load(Ordering::Relaxed) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the gzip body inflates past {} bytes: send smaller batches ({} records \
                 before the bound were stored)",
                state.config.max_decompressed_bytes,
                stored.load(Ordering::Relaxed)
            ),
        )),
        (Err(e), None) => Err(bad_request(format!(
            "cannot read the request body{}: {e} ({} records before the error were stored)",
            if gzip { " (gzip)" } else { "" },
            stored.load(Ordering::Relaxed)
        ))),
    }
}

/// A reader that fails once more than `left` bytes came through it (and says so in
/// `hit`).
struct Bounded<R> {
    inner: R,
    left: u64,
    hit: Arc<AtomicBool>,
}

impl<R: std::io::Read> std::io::Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a body of exactly the bound from a larger one.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.hit.store(true, Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "decompressed body too large",
            ));
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

async fn insert_jsonline(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, Response> {
    let (report, _) = do_ingest(state, req, Format::JsonLine).await?;
    let status = if report.ingested == 0 && report.rejected > 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(json(status, &report))
}

async fn insert_bulk(State(state): State<AppState>, req: Request) -> Result<Response, Response> {
    let (report, took) = do_ingest(state, req, Format::EsBulk).await?;
    let items: Vec<serde_json::Value> = report
        .bulk_items
        .iter()
        .map(|(status, err)| match err {
            None => serde_json::json!({"create": {"status": status}}),
            Some(reason) => serde_json::json!({"create": {"status": status, "error": {"type": "mapper_parsing_exception", "reason": reason}}}),
        })
        .collect();
    let errors = report.bulk_items.iter().any(|(s, _)| *s >= 300) || report.rejected > 0;
    Ok(json_ok(
        &serde_json::json!({"took": took, "errors": errors, "items": items}),
    ))
}

async fn es_info() -> Response {
    let mut r = json_ok(&serde_json::json!({
        "name": "esb-logstore",
        "cluster_name": "esb",
        "version": {"number": "8.9.0", "build_flavor": "default"},
        "tagline": "You Know, for Search"
    }));
    r.headers_mut()
        .insert("X-Elastic-Product", "Elasticsearch".parse().unwrap());
    r
}

// ---------- querying ----------

fn streaming_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b, rx))
    }))
}

/// Appends `row` to `buf` as one JSON line.
fn push_json_line(buf: &mut String, row: &logsql::Row, keep_order: bool) {
    buf.push_str(&row_json(row, keep_order));
    buf.push('\n');
}

async fn select_query(State(state): State<AppState>, req: Request) -> Result<Response, Response> {
    let (args, sel) = select_request(&state, req).await?;
    let limit = args.limit("limit")?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let store = state.store.clone();
    let keep_order = sel.query.explicit_field_order();
    tokio::task::spawn_blocking(move || {
        const CHUNK: usize = 64 << 10;
        let mut buf = String::with_capacity(CHUNK);
        let mut open = true;
        let res = query::run(&store, &sel.query, sel.start, sel.end, limit, &mut |row| {
            push_json_line(&mut buf, &row, keep_order);
            if buf.len() >= CHUNK {
                open = tx
                    .blocking_send(Ok(Bytes::from(std::mem::take(&mut buf))))
                    .is_ok();
            }
            open
        });
        match res {
            Ok(()) if !buf.is_empty() => {
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            Ok(()) => {}
            Err(e) => {
                if e.kind() != std::io::ErrorKind::InvalidInput {
                    tracing::error!(error = %e, "query failed while streaming");
                }
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    // Wait for the first chunk, so an error before any output gets a proper status.
    let mut rx = rx;
    let first = match rx.recv().await {
        None => Bytes::new(),
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(io_error(e)),
    };
    let rest = streaming_body(rx).into_data_stream();
    let body = futures::StreamExt::chain(
        futures::stream::once(async move { Ok::<_, axum::Error>(first) }),
        rest,
    );
    Ok(json_lines_response(Body::from_stream(body)))
}

/// Runs a store call off the async workers; its errors become responses.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(join_error)?
        .map_err(io_error)
}

async fn select_hits(State(state): State<AppState>, req: Request) -> Result<Response, Response> {
    let (args, sel) = select_request(&state, req).await?;
    let step = args.step("1h")?;
    let offset = args.duration("offset")?.unwrap_or(0);
    let fields_limit = args.limit("fields_limit")?;
    let group_by = args.all("field");
    let store = state.store.clone();
    let hits = blocking(move || {
        query::hits(
            &store,
            &sel.query,
            sel.start,
            sel.end,
            step,
            offset,
            &group_by,
            fields_limit,
        )
    })
    .await?;
    Ok(json_ok(&serde_json::json!({ "hits": hits })))
}

async fn select_field_names(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, Response> {
    let (args, sel) = select_request(&state, req).await?;
    let filter = args.get("filter").map(str::to_string);
    let store = state.store.clone();
    let values = blocking(move || {
        query::field_names(&store, &sel.query, sel.start, sel.end, filter.as_deref())
    })
    .await?;
    Ok(json_ok(&serde_json::json!({ "values": values })))
}

/// `field_values`, or `streams` when `fixed_field` is `_stream`.
async fn values_endpoint(
    state: AppState,
    req: Request,
    fixed_field: Option<&'static str>,
) -> Result<Response, Response> {
    let (args, sel) = select_request(&state, req).await?;
    let field = fixed_field
        .or_else(|| args.get("field"))
        .map(str::to_string)
        .ok_or_else(|| bad_request("missing field arg"))?;
    let limit = args.limit("limit")?;
    let filter = args.get("filter").map(str::to_string);
    let store = state.store.clone();
    let values = blocking(move || {
        query::field_values(
            &store,
            &sel.query,
            sel.start,
            sel.end,
            &field,
            limit,
            filter.as_deref(),
        )
    })
    .await?;
    Ok(json_ok(&serde_json::json!({ "values": values })))
}

async fn select_field_values(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, Response> {
    values_endpoint(state, req, None).await
}

async fn select_streams(State(state): State<AppState>, req: Request) -> Result<Response, Response> {
    values_endpoint(state, req, Some("_stream")).await
}

/// A Prometheus-style query answer.
fn prom(result_type: &str, result: Vec<query::Series>) -> Response {
    json_ok(
        &serde_json::json!({"status": "success", "data": {"resultType": result_type, "result": result}}),
    )
}

async fn select_stats_query(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, Response> {
    let args = select_args(req, state.config.max_request_bytes).await?;
    let now = now_nanos();
    let time = args.time("time", now, "")?.unwrap_or(now);
    // Relative times in the query (`_time:1h`) count back from `time`.
    let query = logsql::parse(args.get("query").unwrap_or("*"), time)
        .map_err(|e| bad_request(e.to_string()))?;
    let start = args.time("start", now, "")?.unwrap_or(i64::MIN);
    let store = state.store.clone();
    let series =
        blocking(move || query::stats_query(&store, &query, start, time.saturating_add(1))).await?;
    Ok(prom("vector", series))
}

async fn select_stats_query_range(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, Response> {
    let (args, sel) = select_request(&state, req).await?;
    let step = args.step("1m")?;
    let end = if sel.end == i64::MAX {
        sel.now.saturating_add(1)
    } else {
        sel.end
    };
    let store = state.store.clone();
    let series =
        blocking(move || query::stats_query_range(&store, &sel.query, sel.start, end, step))
            .await?;
    Ok(prom("matrix", series))
}

async fn select_tail(State(state): State<AppState>, req: Request) -> Result<Response, Response> {
    let (args, sel) = select_request(&state, req).await?;
    if !sel.query.is_streamable() {
        return Err(bad_request(
            "live tailing does not support stats, sort, limit and other pipes that aggregate or reorder logs; only fields and filter pipes",
        ));
    }
    let start_offset = args.duration("start_offset")?;
    let keep_order = sel.query.explicit_field_order();
    let mut sub = state.store.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let store = state.store.clone();
    let mut shutdown = state.shutdown.clone();
    let q = Arc::new(sel.query);
    let query_text = args.get("query").unwrap_or("*").to_string();
    tokio::spawn(async move {
        // History first (oldest first), remembering the last batch it saw.
        let mut seen_seq = 0u64;
        if let Some(d) = start_offset {
            let q2 = q.clone();
            let store2 = store.clone();
            let from = sel.now - d;
            let hist = tokio::task::spawn_blocking(move || {
                let mut rows = Vec::new();
                let mut pipeline = query::Pipeline::new(&q2.pipes);
                let seq = store2.scan(
                    &q2.filter,
                    from,
                    i64::MAX,
                    Order::OldestFirst,
                    &mut |rec: crate::record::StoredRecord| {
                        let t = rec.time;
                        pipeline.push(rec.to_row(), &mut |r| {
                            rows.push((t, r));
                            true
                        });
                        true
                    },
                );
                rows.sort_by_key(|(t, _)| *t);
                seq.map(|s| (s, rows))
            })
            .await;
            match hist {
                Ok(Ok((seq, rows))) => {
                    seen_seq = seq;
                    let mut buf = String::new();
                    for (_, r) in rows {
                        push_json_line(&mut buf, &r, keep_order);
                    }
                    if !buf.is_empty() && tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        } else {
            // Tail from now on: make sure the response headers go out at once.
            if tx.send(Ok(Bytes::new())).await.is_err() {
                return;
            }
        }
        let mut pipeline = query::Pipeline::new(&q.pipes);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
                msg = sub.recv() => match msg {
                    Ok(batch) => {
                        let (seq, recs) = &*batch;
                        if *seq <= seen_seq {
                            continue;
                        }
                        let mut buf = String::new();
                        // Relative times (`_time:10m`) count back from each batch's arrival,
                        // so a tail of "the last ten minutes" keeps showing new records.
                        let live = logsql::parse(&query_text, now_nanos()).map(|q| q.filter).unwrap_or_else(|_| q.filter.clone());
                        for rec in recs {
                            if rec.time < sel.start || rec.time >= sel.end || !live.matches(rec) {
                                continue;
                            }
                            pipeline.push(rec.to_row(), &mut |r| {
                                push_json_line(&mut buf, &r, keep_order);
                                true
                            });
                        }
                        if !buf.is_empty() && tx.send(Ok(Bytes::from(buf))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(batches = n, "live tail fell behind; some batches were skipped");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    let mut response = json_lines_response(streaming_body(rx));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Args {
        Args(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    async fn refusal(r: Result<impl std::fmt::Debug, Response>) -> (StatusCode, String) {
        let r = r.expect_err("the argument should be refused");
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn bad_arguments_are_named_with_what_is_wanted() {
        let a = args(&[("step", "0"), ("limit", "x"), ("offset", "?")]);
        assert_eq!(
            refusal(a.step("1h")).await,
            (
                StatusCode::BAD_REQUEST,
                "cannot parse step arg \"0\": want a positive duration such as 1h\n".into()
            )
        );
        assert_eq!(
            refusal(a.limit("limit")).await.1,
            "cannot parse limit arg \"x\": want a non-negative integer\n"
        );
        assert_eq!(
            refusal(a.duration("offset")).await.1,
            "cannot parse offset arg \"?\"\n"
        );
    }

    #[test]
    fn absent_empty_and_zero_arguments_take_the_defaults() {
        let a = args(&[("limit", "5"), ("limit", "0"), ("step", "")]);
        assert_eq!(a.limit("limit").unwrap(), None);
        assert_eq!(a.step("1h").unwrap(), 86_400_000_000_000);
        assert_eq!(a.duration("offset").unwrap(), None);
        assert_eq!(args(&[("step", "5m")]).step("1h").unwrap(), 300_000_000_000);
    }
}
