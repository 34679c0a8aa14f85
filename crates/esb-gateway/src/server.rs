//! The HTTPS front: listeners, TLS, and the request handler (built-in endpoints, the
//! Lambda Invoke API, template routes).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::auth::{Auth, Login, AUTHORIZED_HEADER};
use crate::config::Config;
use crate::events::{self, EventRequest};
use crate::gateway::{
    FunctionSet, FunctionSpec, Gateway, Outcome, ReloadReport, Served, WorkerAnswer,
};
use crate::ids;
use crate::logs::Logger;
use crate::metrics::{FnLabel, FnStatus, Metrics};
use crate::routes::Match;

type Resp = Response<Full<Bytes>>;

/// Lambda's payload limits.
const MAX_SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
const MAX_ASYNC_PAYLOAD: usize = 256 * 1024;
const INVOKE_PREFIX: &str = "/2015-03-31/functions/";
/// Concurrent async invocations being run (they still go through the pools).
const ASYNC_RUNNERS: usize = 64;

struct Front {
    gw: Arc<Gateway>,
    auth: Auth,
    verifier: esb_sigv4::Verifier,
    /// Functions' keys and policies (`ESB_IAM_FILE`).
    functions: Option<esb_iam::CredentialStore>,
    /// The box's access key id.
    box_key: String,
    dash: Arc<str>,
}

/// A function's principal and the verifier of its signature; `None` for the box's key.
type Caller = Option<(Arc<esb_iam::Principal>, esb_sigv4::Verifier)>;

impl Front {
    /// What the Invoke API can decide from the headers alone: a SigV4 `Authorization`
    /// of the right shape, by the box's key or a function's, dated within the skew (the
    /// signature itself needs the body: [`esb_sigv4::Verifier::verify`] after it is read).
    /// Returns the caller ([`Front::caller`]).
    fn precheck(&self, headers: &http::HeaderMap) -> Result<Caller, esb_sigv4::AuthError> {
        esb_sigv4::precheck_headers(
            headers,
            |key| self.caller(key),
            esb_sigv4::DEFAULT_MAX_SKEW,
            std::time::SystemTime::now(),
        )
    }

    /// Who signs with `key`: `Some(None)` the box, `Some(Some(..))` a function (its
    /// principal and the verifier of its signature), `None` nobody.
    fn caller(&self, key: &str) -> Option<Caller> {
        if key == self.box_key {
            return Some(None);
        }
        let p = self.functions.as_ref()?.lookup(key)?;
        let v =
            esb_sigv4::Verifier::new(p.access_key.clone(), p.secret_key.clone()).service("lambda");
        Some(Some((p, v)))
    }
}

/// A bound gateway, ready to run: [`Server::bind`] then [`Server::run`].
pub struct Server {
    front: Arc<Front>,
    listener: TcpListener,
    internal: Option<TcpListener>,
    tls: TlsAcceptor,
    ca: Option<PathBuf>,
    log_task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    queue_rx: mpsc::Receiver<crate::gateway::AsyncJob>,
    admin: Option<crate::admin::AdminSocket>,
}

/// Replaces the functions of a running gateway (see [`Reloader::reload`]). Cheap to
/// clone; it does not keep the gateway alive.
#[derive(Clone)]
pub struct Reloader {
    gw: Weak<Gateway>,
}

impl Reloader {
    /// Serves `functions` from now on, without failing requests.
    ///
    /// The list is validated as [`Server::bind`] validates it (names, routes, concurrency);
    /// on error nothing changes and the error names the function or route. Functions
    /// whose spec is equal in every field (revision included) keep their pool, idle
    /// workers and breaker. New and changed functions get a fresh pool, whose provisioned
    /// workers are started before it takes traffic. Then the routes and the Invoke API's
    /// names switch at once: every request that starts after this returns uses the new
    /// set. Requests in flight finish on their old workers; the old pools of changed and
    /// removed functions are closed (idle workers destroyed now, busy ones when their
    /// request ends). Requests still waiting for a worker of a changed function move to
    /// its new pool; queued `Event` invocations run on the new version, or fail (logged)
    /// when their function was removed.
    pub async fn reload(&self, functions: Vec<FunctionSpec>) -> anyhow::Result<ReloadReport> {
        let gw = self
            .gw
            .upgrade()
            .context("the gateway has stopped; nothing to reload")?;
        gw.reload(functions).await
    }

    /// Replaces the agents with `agents` (node ids unique, at least one), without
    /// moving a worker: `esb gateway` calls it on SIGHUP with [`Config::agent_list`]
    /// (`ESB_AGENTS` plus the lines of `ESB_AGENTS_FILE`).
    ///
    /// Agents are matched by node id. A new node id is appended (new workers may go there
    /// at once). A node id no longer listed is marked removed: no new worker goes there,
    /// its idle workers leave the pools and are destroyed (best effort: the node may be
    /// gone), busy ones are destroyed when their request ends; `GET /status` keeps
    /// showing it with `"removed": true`. A node id listed with another spec (endpoint,
    /// namespace, limits, TLS files) counts as both: the old entry is removed, a new one
    /// appended. Every new entry is set up (TLS files read) before anything changes: on
    /// error nothing changes. Serialised with [`Reloader::reload`].
    pub async fn reload_agents(
        &self,
        agents: Vec<crate::config::AgentAddr>,
    ) -> anyhow::Result<crate::agents::AgentReloadReport> {
        let gw = self
            .gw
            .upgrade()
            .context("the gateway has stopped; nothing to reload")?;
        gw.reload_agents(agents).await
    }
}

impl Server {
    /// Validates the configuration, prepares certificates and binds the listeners.
    pub async fn bind(config: Config, functions: Vec<FunctionSpec>) -> anyhow::Result<Server> {
        config.validate()?;
        let (set, _) = FunctionSet::build(&config, functions, None)?;
        let (cert, key, ca) = match (&config.cert_path, &config.key_path) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), None),
            _ => {
                let sans = crate::tls::default_sans(&config.extra_sans);
                let (c, k) = crate::tls::ensure_box_certs(&config.data_dir, &sans)?;
                (c, k, Some(crate::tls::ca_path(&config.data_dir)))
            }
        };
        let tls = TlsAcceptor::from(crate::tls::server_config(&cert, &key)?);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let internal = match config.internal_listen {
            None => None,
            Some(addr) => {
                let bind = move || -> std::io::Result<std::net::TcpListener> {
                    let l = std::net::TcpListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                };
                let std_l = match &config.internal_netns {
                    None => bind(),
                    Some(ns) => esb_netns::NetNs::open(ns)
                        .with_context(|| format!("internal listener: netns {ns}"))?
                        .run(bind)
                        .map_err(anyhow::Error::from)?,
                }
                .with_context(|| format!("internal listener on {addr}"))?;
                Some(TcpListener::from_std(std_l)?)
            }
        };
        let admin = match &config.admin_socket {
            Some(p) => Some(crate::admin::AdminSocket::bind(p)?),
            None => None,
        };
        let metrics = Metrics::new();
        let stderr = config.log_stderr;
        let (logger, log_task) = Logger::new(
            config.victorialogs_url.clone(),
            stderr,
            metrics.logs_dropped.clone(),
        );
        let (qtx, qrx) = mpsc::channel(config.event_queue_len);
        let auth = Auth::new(
            &config.jwt_secret,
            &config.api_key,
            &config.auth_user,
            &config.auth_pass,
            config.jwt_expires,
        );
        let verifier =
            esb_sigv4::Verifier::new(&config.access_key, &config.secret_key).service("lambda");
        let functions = match &config.iam_file {
            Some(path) => Some(
                esb_iam::CredentialStore::open(path)
                    .map_err(|e| anyhow::anyhow!("ESB_IAM_FILE: {e}"))?,
            ),
            None => None,
        };
        let box_key = config.access_key.clone();
        let gw = Arc::new(Gateway::new(config, set, logger, metrics, qtx)?);
        Ok(Server {
            front: Arc::new(Front {
                gw,
                auth,
                verifier,
                functions,
                box_key,
                dash: Arc::from("-"),
            }),
            listener,
            internal,
            tls,
            ca,
            log_task: Box::pin(log_task),
            queue_rx: qrx,
            admin,
        })
    }

    /// A handle that replaces the served functions while the gateway runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            gw: Arc::downgrade(&self.front.gw),
        }
    }

    /// Path of the admin socket, if any.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin.as_ref().map(|a| a.path())
    }

    /// Address of the client listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Address of the internal listener, if any.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The CA certificate clients should trust (`None` with SSL_CERT_PATH).
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.ca.clone()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests (up to the
    /// drain timeout) and destroys the gateway's workers.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            front,
            listener,
            internal,
            tls,
            log_task,
            mut queue_rx,
            admin,
            ..
        } = self;
        let gw = front.gw.clone();
        let log_handle = tokio::spawn(log_task);
        gw.logger.log(
            "info",
            "gateway starting",
            [
                (
                    "listen".to_string(),
                    json!(listener.local_addr()?.to_string()),
                ),
                (
                    "functions".to_string(),
                    json!(gw.set.load().functions.len()),
                ),
            ]
            .into_iter()
            .collect(),
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        // The admin API answers from the start (cleaning leftovers can take a while).
        let admin = admin.map(|a| a.serve(gw.clone(), stop_rx.clone()));
        // Leftovers of an earlier run, then provisioned workers, then the janitor.
        gw.clean_leftovers().await;
        gw.set_running();
        gw.watch_agents();
        gw.provision();
        let janitor = {
            let gw = gw.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(gw.config.heartbeat);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => gw.janitor_round().await,
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let dispatcher = {
            let gw = gw.clone();
            tokio::spawn(async move {
                let runners = Arc::new(Semaphore::new(ASYNC_RUNNERS));
                while let Some(job) = queue_rx.recv().await {
                    let Ok(permit) = runners.clone().acquire_owned().await else {
                        return;
                    };
                    let gw = gw.clone();
                    tokio::spawn(async move {
                        gw.run_async(job).await;
                        drop(permit);
                    });
                }
            })
        };

        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let (conn_tx, mut conn_rx) = mpsc::channel::<Accepted>(64);
        let mut accepts = vec![spawn_accept(
            listener,
            Listener::Public,
            conn_tx.clone(),
            stop_rx.clone(),
        )];
        if let Some(l) = internal {
            accepts.push(spawn_accept(
                l,
                Listener::Workers,
                conn_tx.clone(),
                stop_rx.clone(),
            ));
        }
        drop(conn_tx);
        let builder = Arc::new(esb_serve::builder(&gw.config.http_limits));
        let gate = esb_serve::Gate::new(&gw.config.http_limits);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                c = conn_rx.recv() => {
                    let Some((stream, remote, listener)) = c else { break };
                    // Past the cap the connection is closed before its TLS handshake.
                    let Some(permit) = gate.admit(remote) else { continue };
                    let front = front.clone();
                    let tls = tls.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let Ok(Ok(tls_stream)) =
                            tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                        else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |req| {
                            let front = front.clone();
                            async move {
                                Ok::<_, Infallible>(handle(front, req, remote, listener).await)
                            }
                        });
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                        drop(permit);
                    });
                }
            }
        }
        let _ = stop_tx.send(true);
        for a in accepts {
            let _ = a.await;
        }
        gw.logger.log("info", "gateway draining", Map::new());
        let _ = tokio::time::timeout(gw.config.drain_timeout, graceful.shutdown()).await;
        janitor.abort();
        dispatcher.abort();
        gw.shutdown_workers().await;
        if let Some(a) = admin {
            a.stop().await;
        }
        gw.logger.log("info", "gateway stopped", Map::new());
        drop(front);
        // Give the log task a moment to ship the last lines.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while Arc::strong_count(&gw) > 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        drop(gw);
        let _ = tokio::time::timeout(Duration::from_secs(3), log_handle).await;
        Ok(())
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The clients' listener (`ESB_GATEWAY_LISTEN`).
    Public,
    /// The workers' internal listener (`GATEWAY_INTERNAL_URL`): the Invoke API there takes
    /// only SigV4 with a function's own key or the box's, never an IdToken.
    Workers,
}

/// An accepted connection, its peer and its listener.
type Accepted = (tokio::net::TcpStream, SocketAddr, Listener);

fn spawn_accept(
    listener: TcpListener,
    which: Listener,
    tx: mpsc::Sender<Accepted>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        if tx.send((stream, peer, which)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                _ = stop.changed() => return,
            }
        }
    })
}

/// Serves the gateway until `shutdown` completes (see [`Server::run`]).
pub async fn serve(
    config: Config,
    functions: Vec<FunctionSpec>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::bind(config, functions).await?.run(shutdown).await
}

fn json_resp(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An API Gateway style error: `{"message": ...}`.
fn apigw_error(status: StatusCode, message: &str) -> Resp {
    let mut r = json_resp(status, json!({ "message": message }).to_string());
    if let Ok(v) = HeaderValue::from_str(match status.as_u16() {
        401 | 403 => "UnauthorizedException",
        404 => "NotFoundException",
        413 => "RequestTooLargeException",
        429 => "TooManyRequestsException",
        _ => "InternalServerErrorException",
    }) {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

/// A Lambda API error: `x-amzn-ErrorType` header and `{"Type","message"}` body.
fn lambda_error(status: StatusCode, code: &str, message: &str) -> Resp {
    let kind = if status.is_server_error() {
        "Service"
    } else {
        "User"
    };
    let mut r = json_resp(
        status,
        json!({ "Type": kind, "message": message }).to_string(),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    use hyper::body::Body as _;
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(BodyError::TooLarge);
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    loop {
        // A body that stops arriving is given up (the connection cap and header timeout
        // bound the rest).
        let frame = match tokio::time::timeout(esb_serve::BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(BodyError::Read(format!(
                    "no byte for {} s",
                    esb_serve::BODY_IDLE_TIMEOUT.as_secs()
                )))
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame,
        };
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards the rest of a refused body (bounded in bytes and time), so that
/// the client, still sending, gets the error response instead of a connection reset, and
/// the connection stays usable for its next request.
async fn drain(mut body: Incoming) {
    const MAX_DRAIN: usize = 32 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len();
                if seen > MAX_DRAIN {
                    return;
                }
            }
        }
    })
    .await;
}

/// What the handler reports for the access log.
struct Handled {
    resp: Resp,
    function: Option<Arc<str>>,
    served: Served,
}

impl From<Resp> for Handled {
    fn from(resp: Resp) -> Self {
        Handled {
            resp,
            function: None,
            served: Served::default(),
        }
    }
}

async fn handle(
    front: Arc<Front>,
    req: Request<Incoming>,
    remote: SocketAddr,
    listener: Listener,
) -> Resp {
    let start = Instant::now();
    let request_id = ids::request_id();
    let trace = ids::trace_from_header(
        req.headers().get("x-amzn-trace-id").map(|v| v.as_bytes()),
        SystemTime::now(),
    );
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let h = route(&front, req, remote, listener, &request_id, &trace).await;
    let mut resp = h.resp;
    let status = resp.status();
    {
        let hs = resp.headers_mut();
        // The Invoke API answers with the invocation's own request id (the function's
        // `context.aws_request_id`), as Lambda does; API routes with the gateway's.
        let answer_id = match &h.served.aws_request_id {
            Some(id) if path.starts_with(INVOKE_PREFIX) => id.as_str(),
            _ => request_id.as_str(),
        };
        if let Ok(v) = HeaderValue::from_str(answer_id) {
            hs.insert("x-amzn-RequestId", v);
        }
        if let Ok(v) = HeaderValue::from_str(&trace) {
            hs.insert("X-Amzn-Trace-Id", v);
        }
    }
    let gw = &front.gw;
    let label = h.function.clone().unwrap_or_else(|| front.dash.clone());
    let elapsed = start.elapsed();
    gw.metrics
        .requests
        .get_or_create(&FnStatus {
            function: label.clone(),
            status: status.as_u16(),
        })
        .inc();
    gw.metrics
        .latency
        .get_or_create(&FnLabel { function: label })
        .observe(elapsed.as_secs_f64());
    let mut m = Map::with_capacity(12);
    m.insert("kind".into(), "access".into());
    m.insert("request_id".into(), request_id.into());
    // Upstream ESB's field: the whole X-Amzn-Trace-Id value (the functions' records carry
    // the same value, so one query finds every record of a chained request).
    m.insert("trace_id".into(), trace.clone().into());
    m.insert("method".into(), method.as_str().into());
    m.insert("path".into(), path.into());
    m.insert("status".into(), status.as_u16().into());
    m.insert(
        "duration_ms".into(),
        json!((elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
    );
    m.insert("remote".into(), remote.ip().to_string().into());
    if let Some(f) = &h.function {
        m.insert("function".into(), f.as_ref().into());
        m.insert("cold".into(), h.served.cold.into());
        if let Some(node) = h.served.node {
            m.insert("node".into(), node.into());
        }
        if let Some(worker) = h.served.worker {
            m.insert("worker".into(), worker.into());
        }
        if h.served.redelivered > 0 {
            m.insert("redelivered".into(), h.served.redelivered.into());
        }
        if h.served.resumed {
            m.insert("resumed".into(), true.into());
        }
        if let Some(id) = h.served.aws_request_id {
            m.insert("aws_request_id".into(), id.into());
        }
    }
    let level = if status.is_server_error() {
        "error"
    } else {
        "info"
    };
    gw.logger.log(level, "request", m);
    resp
}

async fn route(
    front: &Arc<Front>,
    req: Request<Incoming>,
    remote: SocketAddr,
    listener: Listener,
    request_id: &str,
    trace: &str,
) -> Handled {
    let gw = &front.gw;
    let path = req.uri().path();
    let method = req.method();
    if path == "/health" && (method == Method::GET || method == Method::HEAD) {
        return json_resp(StatusCode::OK, r#"{"status":"healthy"}"#).into();
    }
    if path == "/metrics" && method == Method::GET {
        let mut r = Response::new(Full::new(Bytes::from(gw.render_metrics())));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        return r.into();
    }
    if path == "/metrics/containers" && method == Method::GET {
        if front
            .auth
            .check_bearer(
                req.headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
            .is_none()
        {
            return apigw_error(StatusCode::UNAUTHORIZED, "Unauthorized").into();
        }
        return json_resp(StatusCode::OK, gw.containers().await.to_string()).into();
    }
    if path.starts_with(crate::cluster::PREFIX) {
        if let Some(socket) = gw.config.cluster_socket.clone() {
            return crate::cluster::forward(&socket, req, remote).await.into();
        }
    }
    if gw.config.auth_paths.iter().any(|p| p == path) {
        if method != Method::POST {
            return method_not_allowed(&["POST".to_string()]).into();
        }
        return login(front, req).await.into();
    }
    if path.starts_with(INVOKE_PREFIX) {
        return invoke_api(front, req, listener, trace, request_id).await;
    }
    api_route(front, req, remote, request_id, trace).await
}

fn method_not_allowed(allowed: &[String]) -> Resp {
    let mut r = apigw_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
}

fn declared_len(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn login(front: &Front, req: Request<Incoming>) -> Resp {
    let key = req.headers().get("x-api-key").cloned();
    let declared = declared_len(&req);
    let body = match read_body(req.into_body(), declared, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return apigw_error(StatusCode::BAD_REQUEST, "Bad Request"),
    };
    let now = ids::now_ms() / 1000;
    match front
        .auth
        .login(key.as_ref().map(|k| k.as_bytes()), &body, now)
    {
        // Past the API key check, both answers say so with upstream's header.
        Login::Ok(v) => user_authorized(json_resp(StatusCode::OK, v.to_string())),
        Login::BadApiKey => apigw_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Login::BadUser => user_authorized(apigw_error(StatusCode::UNAUTHORIZED, "Unauthorized")),
        Login::BadRequest(m) => apigw_error(StatusCode::BAD_REQUEST, &m),
    }
}

/// Adds `PADMA_USER_AUTHORIZED: true` (the API key was right).
fn user_authorized(mut r: Resp) -> Resp {
    r.headers_mut().insert(
        HeaderName::from_static("padma_user_authorized"),
        HeaderValue::from_static("true"),
    );
    debug_assert_eq!(
        AUTHORIZED_HEADER.to_ascii_lowercase(),
        "padma_user_authorized"
    );
    r
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

async fn api_route(
    front: &Arc<Front>,
    req: Request<Incoming>,
    remote: SocketAddr,
    request_id: &str,
    trace: &str,
) -> Handled {
    let gw = &front.gw;
    // This request keeps the set it started with, even if a reload swaps it meanwhile.
    let set = gw.set.load_full();
    let (route, params) = match set.router.find(req.method().as_str(), req.uri().path()) {
        Match::Found(r, p) => (r, p),
        Match::MethodNotAllowed(m) => {
            drain(req.into_body()).await;
            return method_not_allowed(&m).into();
        }
        Match::NotFound => {
            drain(req.into_body()).await;
            return apigw_error(StatusCode::NOT_FOUND, "Not Found").into();
        }
    };
    let f = &set.functions[route.function];
    let label = Some(f.label.clone());
    let claims = if route.auth {
        match front.auth.check_bearer(
            req.headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ) {
            Some(c) => Some(c),
            None => {
                // The client may still be sending: read the body away first, so that it
                // gets the 401 rather than a reset connection.
                drain(req.into_body()).await;
                return Handled {
                    resp: apigw_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
                    function: label,
                    served: Served::default(),
                };
            }
        }
    } else {
        None
    };
    let declared = declared_len(&req);
    let (mut parts, body) = req.into_parts();
    let body = match read_body(body, declared, gw.config.max_body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Handled {
                resp: apigw_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long"),
                function: label,
                served: Served::default(),
            }
        }
        Err(BodyError::Read(_)) => {
            return Handled {
                resp: apigw_error(StatusCode::BAD_REQUEST, "Bad Request"),
                function: label,
                served: Served::default(),
            }
        }
    };
    if !parts.headers.contains_key(HOST) {
        if let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, a);
        }
    }
    // Clients' own trace header is replaced by the normalised one.
    if let Ok(v) = HeaderValue::from_str(trace) {
        parts.headers.insert("x-amzn-trace-id", v);
    }
    let source_ip = remote.ip().to_string();
    let route_key = route.route_key();
    let ereq = EventRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
        source_ip: &source_ip,
        request_id,
        now_ms: ids::now_ms(),
        resource: &route.path,
        route_key: &route_key,
        path_params: &params,
        claims: claims.as_ref(),
        stage: &gw.config.stage,
        account_id: &gw.config.account_id,
        protocol: protocol(parts.version),
    };
    let v2 = route.kind == esb_template::EventKind::HttpApi;
    let event = if v2 {
        events::v2_event(&ereq)
    } else {
        events::v1_event(&ereq)
    };
    let payload = Bytes::from(serde_json::to_vec(&event).expect("JSON value"));
    let (outcome, mut served) = gw.invoke(f, payload, trace, None).await;
    served.aws_request_id = outcome.aws_request_id().map(str::to_string);
    let resp = match outcome {
        Outcome::Answer(a) => answer_to_http(gw, f, a, v2, request_id),
        Outcome::BreakerOpen => apigw_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        Outcome::Throttled => apigw_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        Outcome::AgentDown(e) => {
            gw.error(
                "no worker",
                &[
                    ("function", json!(f.spec.name)),
                    ("error", json!(e)),
                    ("request_id", json!(request_id)),
                ],
            );
            apigw_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
        Outcome::ShuttingDown => {
            apigw_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
        }
        Outcome::Gone => apigw_error(StatusCode::NOT_FOUND, "Not Found"),
        Outcome::WorkerFailed(e) => {
            gw.error(
                "worker failed",
                &[
                    ("function", json!(f.spec.name)),
                    ("error", json!(e)),
                    ("request_id", json!(request_id)),
                ],
            );
            apigw_error(StatusCode::BAD_GATEWAY, "Internal server error")
        }
        Outcome::TimedOut(_) => {
            apigw_error(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out")
        }
    };
    Handled {
        resp,
        function: label,
        served,
    }
}

fn answer_to_http(
    gw: &Gateway,
    f: &crate::gateway::Function,
    a: WorkerAnswer,
    v2: bool,
    request_id: &str,
) -> Resp {
    if a.function_error.is_some() || a.status != StatusCode::OK {
        if a.status == StatusCode::PAYLOAD_TOO_LARGE {
            return apigw_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long");
        }
        gw.error(
            "function error",
            &[
                ("function", json!(f.spec.name)),
                ("request_id", json!(request_id)),
                ("status", json!(a.status.as_u16())),
                (
                    "body",
                    json!(String::from_utf8_lossy(&a.body[..a.body.len().min(1024)])),
                ),
            ],
        );
        return apigw_error(StatusCode::BAD_GATEWAY, "Internal server error");
    }
    match events::proxy_response(&a.body, v2) {
        Ok(p) => {
            let mut r = Response::new(Full::new(p.body));
            *r.status_mut() = p.status;
            let hs = r.headers_mut();
            for (k, v) in p.headers {
                hs.append(k, v);
            }
            r
        }
        Err(m) => {
            gw.error(
                "malformed Lambda proxy response",
                &[
                    ("function", json!(f.spec.name)),
                    ("request_id", json!(request_id)),
                    ("error", json!(m.0)),
                ],
            );
            apigw_error(StatusCode::BAD_GATEWAY, "Internal server error")
        }
    }
}

/// `name`, `name:qualifier`, or a function ARN -> the function name.
fn function_name(raw: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    let name = match decoded.strip_prefix("arn:") {
        Some(_) => decoded
            .split_once(":function:")
            .map(|(_, n)| n.to_string())
            .unwrap_or(decoded.clone()),
        None => decoded,
    };
    match name.split_once(':') {
        Some((n, _qualifier)) => n.to_string(),
        None => name,
    }
}

async fn invoke_api(
    front: &Arc<Front>,
    req: Request<Incoming>,
    listener: Listener,
    trace: &str,
    request_id: &str,
) -> Handled {
    let gw = &front.gw;
    let path = req.uri().path().to_string();
    let Some(raw_name) = path
        .strip_prefix(INVOKE_PREFIX)
        .and_then(|r| r.strip_suffix("/invocations"))
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return lambda_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!("Unknown operation {} {path}", req.method()),
        )
        .into();
    };
    if req.method() != Method::POST {
        return lambda_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            &format!("Unknown operation {} {path}", req.method()),
        )
        .into();
    }
    // Decided from the headers before any of the body is read: an unsigned request, a
    // malformed signature, a key nobody issued or a bad IdToken is refused without
    // reading up to 6 MiB.
    let id_token = listener == Listener::Public
        && req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| crate::auth::bearer_token(v.as_bytes()))
            .is_some();
    let caller = if id_token {
        // A client's IdToken (upstream ESB's scripts call the Invoke API with it): the
        // caller is the box's user, as with the box's key.
        if front
            .auth
            .check_bearer(
                req.headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
            .is_none()
        {
            return lambda_error(
                StatusCode::FORBIDDEN,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
            .into();
        }
        None
    } else {
        match front.precheck(req.headers()) {
            Ok(c) => Some(c),
            Err(e) => {
                let status = match e {
                    esb_sigv4::AuthError::IncompleteSignature(_) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::FORBIDDEN,
                };
                return lambda_error(status, e.json_code(), &e.to_string()).into();
            }
        }
    };
    let declared = declared_len(&req);
    let (parts, body) = req.into_parts();
    let body = match read_body(body, declared, MAX_SYNC_PAYLOAD + 1).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return lambda_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                &format!("Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the InvokeFunction operation"),
            )
            .into()
        }
        Err(BodyError::Read(e)) => {
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &format!("Could not read the request body: {e}"),
            )
            .into()
        }
    };
    let sigv4 = caller.is_some();
    let (principal, function_verifier) = caller.flatten().unzip();
    let signed = if sigv4 {
        function_verifier
            .as_ref()
            .unwrap_or(&front.verifier)
            .verify(&parts, &body)
    } else {
        Ok(())
    };
    if let Err(e) = signed {
        let status = match e {
            esb_sigv4::AuthError::MissingAuthentication => StatusCode::FORBIDDEN,
            esb_sigv4::AuthError::IncompleteSignature(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        };
        return lambda_error(status, e.json_code(), &e.to_string()).into();
    }
    let name = function_name(raw_name);
    let Some(f) = gw.set.load().get(&name).cloned() else {
        return lambda_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!(
                "Function not found: arn:aws:lambda:{}:{}:function:{name}",
                gw.config.region, gw.config.account_id
            ),
        )
        .into();
    };
    let f = &f;
    let label = Some(f.label.clone());
    let err = |r: Resp| Handled {
        resp: r,
        function: label.clone(),
        served: Served::default(),
    };
    if let (Some(p), Some(store)) = (&principal, &front.functions) {
        let access = esb_iam::Access::new(
            "lambda:InvokeFunction",
            format!(
                "arn:aws:lambda:{}:{}:function:{}",
                gw.config.region,
                store.account(),
                f.spec.name
            ),
        );
        if let Err(m) = store.check(p, &access) {
            return err(lambda_error(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                &m,
            ));
        }
    }
    let itype = parts
        .headers
        .get("x-amz-invocation-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "RequestResponse".into());
    if !matches!(itype.as_str(), "RequestResponse" | "Event" | "DryRun") {
        return err(lambda_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("1 validation error detected: Value '{itype}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"),
        ));
    }
    if itype == "Event" && body.len() > MAX_ASYNC_PAYLOAD {
        return err(lambda_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &format!("Request must be smaller than {MAX_ASYNC_PAYLOAD} bytes for the InvokeFunction operation"),
        ));
    }
    if body.len() > MAX_SYNC_PAYLOAD {
        return err(lambda_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            &format!("Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the InvokeFunction operation"),
        ));
    }
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return err(lambda_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            &format!(
                "Could not parse request body into json: Could not parse payload into json: {e}"
            ),
        ));
    } else {
        body
    };
    let client_context = parts.headers.get("x-amz-client-context").cloned();
    if let Some(c) = &client_context {
        let ok = c.len() <= 3583
            && base64::engine::general_purpose::STANDARD
                .decode(c.as_bytes())
                .ok()
                .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                .is_some_and(|v| v.is_object());
        if !ok {
            return err(lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                "Client context must be a valid Base64-encoded JSON object.",
            ));
        }
    }
    match itype.as_str() {
        "DryRun" => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            err(r)
        }
        "Event" => {
            match gw.enqueue(
                f,
                payload,
                trace.to_string(),
                request_id.to_string(),
                client_context,
            ) {
                Ok(()) => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::ACCEPTED;
                    err(r)
                }
                Err(()) => err(throttled("The async invocation queue is full.")),
            }
        }
        _ => {
            let (outcome, mut served) = gw.invoke(f, payload, trace, client_context.as_ref()).await;
            served.aws_request_id = outcome.aws_request_id().map(str::to_string);
            let resp = match outcome {
                Outcome::Answer(a) | Outcome::TimedOut(Some(a)) => invoke_answer(a),
                Outcome::TimedOut(None) => {
                    let secs = f.spec.timeout.min(gw.config.invoke_timeout).as_secs_f64();
                    let mut r = json_resp(
                        StatusCode::OK,
                        json!({
                            "errorType": "Sandbox.Timedout",
                            "errorMessage": format!("RequestId: {request_id} Error: Task timed out after {secs:.2} seconds"),
                        })
                        .to_string(),
                    );
                    r.headers_mut().insert(
                        "X-Amz-Function-Error",
                        HeaderValue::from_static("Unhandled"),
                    );
                    r.headers_mut().insert(
                        "X-Amz-Executed-Version",
                        HeaderValue::from_static("$LATEST"),
                    );
                    r
                }
                Outcome::Throttled => throttled("Rate Exceeded."),
                Outcome::BreakerOpen => lambda_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceException",
                    "The function is failing repeatedly (circuit open); try again later.",
                ),
                Outcome::AgentDown(e) => {
                    gw.error(
                        "no worker",
                        &[
                            ("function", json!(f.spec.name)),
                            ("error", json!(e)),
                            ("request_id", json!(request_id)),
                        ],
                    );
                    lambda_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceException",
                        "No compute node could start the function.",
                    )
                }
                Outcome::ShuttingDown => lambda_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceException",
                    "The gateway is shutting down.",
                ),
                Outcome::Gone => lambda_error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFoundException",
                    &format!(
                        "Function not found: arn:aws:lambda:{}:{}:function:{}",
                        gw.config.region, gw.config.account_id, f.spec.name
                    ),
                ),
                Outcome::WorkerFailed(e) => {
                    gw.error(
                        "worker failed",
                        &[
                            ("function", json!(f.spec.name)),
                            ("error", json!(e)),
                            ("request_id", json!(request_id)),
                        ],
                    );
                    lambda_error(
                        StatusCode::BAD_GATEWAY,
                        "ServiceException",
                        "The function's worker failed.",
                    )
                }
            };
            Handled {
                resp,
                function: label,
                served,
            }
        }
    }
}

fn throttled(msg: &str) -> Resp {
    let mut r = json_resp(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "Type": "User",
            "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
            "message": msg,
        })
        .to_string(),
    );
    r.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static("TooManyRequestsException"),
    );
    r
}

fn invoke_answer(a: WorkerAnswer) -> Resp {
    let mut r = json_resp(a.status, a.body);
    let h = r.headers_mut();
    if let Some(fe) = a.function_error {
        h.insert("X-Amz-Function-Error", fe);
    }
    if let Some(t) = a.amz_error_type {
        h.insert("x-amzn-ErrorType", t);
    }
    if a.status.is_success() {
        h.insert(
            "X-Amz-Executed-Version",
            HeaderValue::from_static("$LATEST"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        assert_eq!(function_name("echo"), "echo");
        assert_eq!(function_name("echo:$LATEST"), "echo");
        assert_eq!(
            function_name("arn%3Aaws%3Alambda%3Aap-northeast-1%3A000000000000%3Afunction%3Aecho"),
            "echo"
        );
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:1:function:echo:live"),
            "echo"
        );
    }
}
