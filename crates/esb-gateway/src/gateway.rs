//! The gateway's state: functions with their pools and breakers, agents, the invoke path,
//! the async queue and the janitor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use esb_agent_api::v1::{
    ContainerState, DestroyContainerRequest, EnsureContainerRequest, GetContainerMetricsRequest,
    ListContainersRequest, PauseContainerRequest, ResumeContainerRequest, WatchWorkersRequest,
};
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::agents::{self, Agent, AgentReloadReport};
use crate::breaker::{Breaker, Permit};
use crate::config::{AgentAddr, Config};
use crate::logs::Logger;
use crate::metrics::{FnLabel, Metrics, NodeLabel, PoolLabel};
use crate::pool::{AcquireError, Grant, PoolCore};
use crate::routes::{Route, Router};

/// Path of the worker contract's invoke endpoint.
pub const WORKER_INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";
/// Largest answer read from a worker (Lambda's sync limit is 6 MB; some room for headers).
const MAX_WORKER_RESPONSE: usize = 7 << 20;
/// Extra time given to the supervisor over the function's timeout, so that it answers
/// with its own timeout error before the gateway gives up.
const TIMEOUT_GRACE: Duration = Duration::from_secs(3);
/// Agents tried for one new worker: a node that fails does not fail the request while
/// another one has room.
const CREATE_ATTEMPTS: usize = 2;

/// How long connecting to a worker may take: on the bridge or over WireGuard a connection
/// is made in milliseconds; one that takes longer goes to a worker that is gone (its
/// address removed), and the request is sent to another one.
const WORKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Delivery attempts of one request at most (each on another worker; see
/// [`CallError::NotDelivered`]), within its deadline.
const DELIVERY_ATTEMPTS: usize = 8;

/// Pauses between attempts to follow an agent's worker events.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(10);

/// How long a worker whose destruction began is not taken for an orphan (a heartbeat's
/// list sent before the agent removed it may still show it).
const DESTROYED_MEMORY: Duration = Duration::from_secs(60);

/// The least heartbeat deadline of a node reached over a tunnel (`https://` agents).
const REMOTE_HEARTBEAT_FLOOR: Duration = Duration::from_secs(10);

/// How long a heartbeat that timed out waits for a connection to the agent's endpoint:
/// an interval, from 1 to 5 s (a connection over a userspace tunnel on a busy machine may
/// take a while; one that does not come in that time is a node gone).
fn probe_time(heartbeat: Duration) -> Duration {
    heartbeat.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// A function the gateway serves: what `esb` hands over from the template and the build.
///
/// Two specs are the same function version when they are equal in every field; a reload
/// keeps the pool and workers of such a function and starts fresh ones for any other.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Function name (`FunctionName` or the logical id); also the Invoke API name.
    pub name: String,
    /// Logical id in the template (also accepted by the Invoke API).
    pub logical_id: String,
    /// Image reference the agent runs.
    pub image: String,
    /// Opaque version of the code (the CLI puts the image's manifest digest here): the
    /// image reference stays the same when code changes, the revision tells a change.
    /// Empty when unknown.
    pub revision: String,
    /// Environment for the worker (the agent adds the box's own).
    pub env: Vec<(String, String)>,
    /// Function timeout.
    pub timeout: Duration,
    /// Memory size in MiB.
    pub memory_mb: u32,
    /// `ReservedConcurrentExecutions`: pool capacity (`None` = the configured default).
    pub reserved: Option<u32>,
    /// `ProvisionedConcurrencyConfig`: workers started at boot and kept.
    pub provisioned: u32,
    /// API events (routes).
    pub events: Vec<esb_template::Event>,
}

impl FunctionSpec {
    /// From a template function and the image built for it.
    pub fn from_template(f: &esb_template::Function, image: impl Into<String>) -> FunctionSpec {
        FunctionSpec {
            name: f.name.clone(),
            logical_id: f.logical_id.clone(),
            image: image.into(),
            revision: String::new(),
            env: function_env(f),
            timeout: Duration::from_secs(f.timeout.max(1) as u64),
            memory_mb: f.memory_size,
            reserved: f.reserved_concurrency,
            provisioned: f.provisioned_concurrency.unwrap_or(0),
            events: f.events.clone(),
        }
    }
}

/// A function's own environment plus what its `LoggingConfig` sets, as Lambda names it:
/// `AWS_LAMBDA_LOG_FORMAT` (`Text` or `JSON`), `AWS_LAMBDA_LOG_LEVEL` (the application
/// level), `AWS_LAMBDA_LOG_GROUP_NAME`, and the system level for the supervisor
/// (`ESB_SYSTEM_LOG_LEVEL`). The function's own variables win.
fn function_env(f: &esb_template::Function) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = f
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let l = &f.logging;
    let format = if l.json { "JSON" } else { "Text" };
    let extra = [
        ("AWS_LAMBDA_LOG_FORMAT", Some(format.to_string())),
        ("AWS_LAMBDA_LOG_LEVEL", l.application_log_level.clone()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", l.log_group.clone()),
        ("ESB_SYSTEM_LOG_LEVEL", l.system_log_level.clone()),
    ];
    for (k, v) in extra {
        if let Some(v) = v {
            if !f.environment.contains_key(k) {
                env.push((k.to_string(), v));
            }
        }
    }
    env
}

/// The environment a worker of a function with environment `env` is started with: `env`,
/// plus the box's `LOG_LEVEL` (upstream ESB's setting) when the function sets none, and
/// that level as `AWS_LAMBDA_LOG_LEVEL` when no `ApplicationLogLevel` says otherwise, so
/// that awslambdaric and esb's Node.js client apply it.
pub(crate) fn worker_env(
    env: &[(String, String)],
    box_log_level: Option<&str>,
) -> std::collections::HashMap<String, String> {
    let mut out: std::collections::HashMap<String, String> = env.iter().cloned().collect();
    if let Some(level) = box_log_level {
        out.entry("LOG_LEVEL".into())
            .or_insert_with(|| level.to_string());
    }
    if !out.contains_key("AWS_LAMBDA_LOG_LEVEL") {
        if let Some(level) = out
            .get("LOG_LEVEL")
            .and_then(|l| crate::config::log_level(l).ok())
        {
            out.insert("AWS_LAMBDA_LOG_LEVEL".into(), level);
        }
    }
    out
}

/// A worker held by the gateway.
pub(crate) struct Worker {
    pub id: String,
    pub agent: usize,
    pub addr: SocketAddr,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// Log records the worker said it dropped so far (`x-esb-logs-dropped`).
    logs_dropped: u64,
    /// Frozen by its agent (`ESB_CONTAINER_PAUSE`): resumed before a request is sent.
    paused: bool,
}

/// The state of a worker as `GET /status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WorkerState {
    /// Warm, in the pool.
    Idle,
    /// Warm, in the pool, frozen (`ESB_CONTAINER_PAUSE`).
    Paused,
    /// Being frozen: out of the pool until its agent answers.
    Pausing,
    /// Serving an invocation.
    Busy,
    /// Being created by an agent (no id yet).
    Starting,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Paused => "paused",
            WorkerState::Pausing => "pausing",
            WorkerState::Busy => "busy",
            WorkerState::Starting => "starting",
        }
    }
}

/// One version of a function at run time: a reload that changes its spec makes a new one
/// (new pool, new breaker) and retires this one.
pub(crate) struct Function {
    pub spec: FunctionSpec,
    pub label: Arc<str>,
    pub pool: PoolCore<Worker>,
    pub breaker: Breaker,
    /// Route keys of its events, in template order.
    pub routes: Vec<String>,
    /// Leased workers: id -> agent index.
    busy: Mutex<HashMap<String, usize>>,
    /// Workers being created: creation number -> agent index.
    starting: Mutex<HashMap<u64, usize>>,
    /// Idle workers being paused (out of the pool meanwhile): id -> agent index.
    pausing: Mutex<HashMap<String, usize>>,
    /// Held while a node is chosen for a new worker and the worker counted there, so that
    /// concurrent creations see each other (spreading over nodes).
    placing: Mutex<()>,
    /// Why the last worker could not be created (cleared by the next success), with when
    /// (Unix seconds): what `esb status` shows of a pool that cannot grow.
    last_error: Mutex<Option<(String, u64)>>,
    /// The last worker lost (exited, or found unreachable before a request reached it) and
    /// why, with when (Unix seconds); and how many were lost.
    last_replacement: Mutex<Option<(String, u64)>>,
    replacements: AtomicU64,
    /// Log records its workers dropped (their log buffer full: the log store was away
    /// too long), as they reported them.
    logs_dropped: AtomicU64,
}

impl Function {
    fn new(spec: FunctionSpec, routes: Vec<String>, config: &Config) -> Function {
        let capacity = spec.reserved.unwrap_or(config.default_concurrency).max(1) as usize;
        Function {
            label: Arc::from(spec.name.as_str()),
            pool: PoolCore::new(capacity),
            breaker: Breaker::new(config.breaker_threshold, config.breaker_recovery),
            routes,
            busy: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            pausing: Mutex::new(HashMap::new()),
            placing: Mutex::new(()),
            last_error: Mutex::new(None),
            last_replacement: Mutex::new(None),
            replacements: AtomicU64::new(0),
            logs_dropped: AtomicU64::new(0),
            spec,
        }
    }

    /// Records a lost worker for `/status`.
    fn note_replacement(&self, what: String) {
        self.replacements.fetch_add(1, Ordering::Relaxed);
        *self.last_replacement.lock().unwrap() = Some((what, crate::ids::now_ms() / 1000));
    }

    /// How many workers (idle, busy, starting) it holds on each of `n` agents.
    fn per_agent(&self, n: usize) -> Vec<usize> {
        let mut out = vec![0; n];
        let mut count = |a: usize| {
            if let Some(c) = out.get_mut(a) {
                *c += 1;
            }
        };
        self.pool.for_each_idle(|w| count(w.agent));
        for a in self.busy.lock().unwrap().values() {
            count(*a);
        }
        for a in self.starting.lock().unwrap().values() {
            count(*a);
        }
        for a in self.pausing.lock().unwrap().values() {
            count(*a);
        }
        out
    }

    /// Its workers: `(id, agent index, state)`; workers being created have no id yet.
    pub fn workers(&self) -> Vec<(Option<String>, usize, WorkerState)> {
        let mut out = Vec::new();
        self.pool.for_each_idle(|w| {
            let state = if w.paused {
                WorkerState::Paused
            } else {
                WorkerState::Idle
            };
            out.push((Some(w.id.clone()), w.agent, state))
        });
        for (id, a) in self.pausing.lock().unwrap().iter() {
            out.push((Some(id.clone()), *a, WorkerState::Pausing));
        }
        for (id, a) in self.busy.lock().unwrap().iter() {
            out.push((Some(id.clone()), *a, WorkerState::Busy));
        }
        for a in self.starting.lock().unwrap().values() {
            out.push((None, *a, WorkerState::Starting));
        }
        out.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// What a reload did, by function name (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Functions that did not exist before.
    pub added: Vec<String>,
    /// Functions whose spec differs (new pool and workers).
    pub changed: Vec<String>,
    /// Functions that no longer exist.
    pub removed: Vec<String>,
    /// Functions whose spec is equal (pool, workers and breaker kept).
    pub unchanged: Vec<String>,
}

/// The functions being served and their routes; swapped as a whole by a reload.
pub(crate) struct FunctionSet {
    pub functions: Vec<Arc<Function>>,
    /// Function names and logical ids -> index in `functions`.
    by_name: HashMap<String, usize>,
    pub router: Router,
}

/// The fields of a warning about one worker: its function, node and id, and what happened.
fn worker_fields(function: &str, node: &str, worker: &str, error: &str) -> Map<String, Value> {
    [
        ("kind".to_string(), json!("worker")),
        ("function".to_string(), json!(function)),
        ("node".to_string(), json!(node)),
        ("worker".to_string(), json!(worker)),
        ("error".to_string(), json!(error)),
    ]
    .into_iter()
    .collect()
}

fn build_routes(specs: &[FunctionSpec]) -> anyhow::Result<(Router, Vec<Vec<String>>)> {
    let mut routes: Vec<Route> = Vec::new();
    let mut keys = Vec::with_capacity(specs.len());
    for (fi, s) in specs.iter().enumerate() {
        let mut mine = Vec::new();
        for e in &s.events {
            let open = e
                .auth
                .as_ref()
                .and_then(|a| a.authorizer.as_deref())
                .is_some_and(|a| a.eq_ignore_ascii_case("NONE"));
            let r = Route::new(&e.method, &e.path, e.kind, fi, !open)
                .map_err(|m| anyhow::anyhow!("function {} event {}: {m}", s.name, e.name))?;
            if let Some(other) = routes
                .iter()
                .find(|o| o.route_key() == r.route_key() && o.kind == r.kind)
            {
                anyhow::bail!(
                    "route {} is declared twice (functions {} and {})",
                    r.route_key(),
                    specs[other.function].name,
                    s.name
                );
            }
            mine.push(r.route_key());
            routes.push(r);
        }
        keys.push(mine);
    }
    Ok((Router::new(routes), keys))
}

impl FunctionSet {
    /// Validates `specs` and builds the set. Functions equal to one of `previous` (same
    /// name, every field equal) are taken over as they are: same pool, workers, breaker.
    pub fn build(
        config: &Config,
        specs: Vec<FunctionSpec>,
        previous: Option<&FunctionSet>,
    ) -> anyhow::Result<(FunctionSet, ReloadReport)> {
        let mut by_name = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            if spec.name.is_empty() {
                anyhow::bail!("function #{} has an empty name", i + 1);
            }
            if by_name.insert(spec.name.clone(), i).is_some() {
                anyhow::bail!("two functions are named {:?}", spec.name);
            }
            let capacity = spec.reserved.unwrap_or(config.default_concurrency).max(1) as usize;
            if (spec.provisioned as usize) > capacity {
                anyhow::bail!(
                    "function {}: ProvisionedConcurrency {} exceeds its concurrency {capacity}",
                    spec.name,
                    spec.provisioned
                );
            }
        }
        for (i, spec) in specs.iter().enumerate() {
            by_name.entry(spec.logical_id.clone()).or_insert(i);
        }
        let (router, keys) = build_routes(&specs)?;
        let mut report = ReloadReport::default();
        let mut functions = Vec::with_capacity(specs.len());
        for (spec, routes) in specs.into_iter().zip(keys) {
            let before = previous.and_then(|p| p.by_spec_name(&spec.name));
            match before {
                Some(f) if f.spec == spec => {
                    report.unchanged.push(spec.name.clone());
                    functions.push(f.clone());
                    continue;
                }
                Some(_) => report.changed.push(spec.name.clone()),
                None => report.added.push(spec.name.clone()),
            }
            functions.push(Arc::new(Function::new(spec, routes, config)));
        }
        if let Some(p) = previous {
            for f in &p.functions {
                if !functions.iter().any(|g| g.spec.name == f.spec.name) {
                    report.removed.push(f.spec.name.clone());
                }
            }
        }
        for l in [
            &mut report.added,
            &mut report.changed,
            &mut report.removed,
            &mut report.unchanged,
        ] {
            l.sort();
        }
        Ok((
            FunctionSet {
                functions,
                by_name,
                router,
            },
            report,
        ))
    }

    /// The function of this name or logical id (the Invoke API's lookup).
    pub fn get(&self, name: &str) -> Option<&Arc<Function>> {
        self.by_name.get(name).map(|&i| &self.functions[i])
    }

    /// The function of exactly this name.
    pub fn by_spec_name(&self, name: &str) -> Option<&Arc<Function>> {
        self.get(name).filter(|f| f.spec.name == name)
    }

    /// Whether this very function version is part of the set.
    fn holds(&self, f: &Arc<Function>) -> bool {
        self.functions.iter().any(|g| Arc::ptr_eq(f, g))
    }
}

/// What a worker said.
pub(crate) struct WorkerAnswer {
    pub status: http::StatusCode,
    pub function_error: Option<HeaderValue>,
    pub error_type: Option<HeaderValue>,
    pub amz_error_type: Option<HeaderValue>,
    pub body: Bytes,
    /// Log records the worker dropped since its previous answer.
    pub logs_dropped: u64,
    /// The invocation's Lambda request id (the worker's `x-amzn-RequestId`).
    pub aws_request_id: Option<String>,
}

impl Outcome {
    /// The Lambda request id of the invocation, when a worker answered.
    pub(crate) fn aws_request_id(&self) -> Option<&str> {
        match self {
            Outcome::Answer(a) | Outcome::TimedOut(Some(a)) => a.aws_request_id.as_deref(),
            _ => None,
        }
    }
}

/// Where an invocation ran, for the access log.
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    /// A worker was created for it (a cold start).
    pub cold: bool,
    /// The node of the worker that ran it (none when no worker was reached).
    pub node: Option<String>,
    /// That worker's id.
    pub worker: Option<String>,
    /// Workers the request could not be delivered to before it reached this one.
    pub redelivered: u32,
    /// The invocation's Lambda request id (set by the caller from the answer).
    pub aws_request_id: Option<String>,
    /// The worker was paused (idle pause) and was resumed for it.
    pub resumed: bool,
}

/// The outcome of one invocation.
pub(crate) enum Outcome {
    /// The worker answered (possibly with a function error).
    Answer(WorkerAnswer),
    /// The breaker is open.
    BreakerOpen,
    /// No worker within POOL_ACQUIRE_TIMEOUT.
    Throttled,
    /// No agent could make a worker.
    AgentDown(String),
    /// The worker failed (connection, 5xx).
    WorkerFailed(String),
    /// The function timed out: the gateway's deadline (`None`) or the supervisor's
    /// timeout error (its answer).
    TimedOut(Option<WorkerAnswer>),
    /// The gateway is shutting down.
    ShuttingDown,
    /// A reload removed the function while the request waited for a worker.
    Gone,
}

/// A worker known to exist on an agent.
#[derive(Clone, Debug)]
pub(crate) struct Known {
    pub function: String,
    pub agent: usize,
    /// What it counts in its agent's memory.
    pub memory_mb: u64,
}

/// The shared state.
pub(crate) struct Gateway {
    pub config: Config,
    /// The current functions and routes; a reload swaps it whole.
    pub set: ArcSwap<FunctionSet>,
    /// The agents, append-only (workers refer to them by index): a reload of the agents
    /// appends new ones and marks removed ones, never drops or moves an entry.
    pub agents: ArcSwap<Vec<Arc<Agent>>>,
    /// Workers the gateway holds, by (node id, worker id): ids are the agents' own, so
    /// two nodes could in principle use the same one.
    pub known: Mutex<HashMap<(String, String), Known>>,
    /// Workers whose destruction began lately, by (node id, worker id), with when: a
    /// heartbeat's list may still show them, and they are not orphans.
    destroyed: Mutex<HashMap<(String, String), Instant>>,
    /// Busy workers whose task exited, by (node id, worker id): destroyed when their
    /// request ends instead of going back to a pool.
    exited: Mutex<std::collections::HashSet<(String, String)>>,
    /// The tasks following the agents' worker events (aborted at shutdown).
    watchers: Mutex<Vec<tokio::task::AbortHandle>>,
    pub metrics: Metrics,
    pub logger: Logger,
    pub queue: mpsc::Sender<AsyncJob>,
    pub queue_bytes: Arc<Semaphore>,
    /// Successful reloads.
    pub reloads: AtomicU64,
    /// When the gateway was bound, ms since the epoch.
    pub started_at_ms: u64,
    /// One reload at a time, and none during shutdown.
    reload_lock: tokio::sync::Mutex<()>,
    /// Set once leftovers are cleaned: provisioning may start.
    running: AtomicBool,
    /// Set when shutdown begins.
    stopping: AtomicBool,
}

/// An async (`Event`) invocation waiting in the queue; its function is looked up by name
/// when it runs, so that a reload in between sends it to the current version.
pub(crate) struct AsyncJob {
    pub function: Arc<str>,
    pub payload: Bytes,
    pub trace: String,
    pub request_id: String,
    pub client_context: Option<HeaderValue>,
    pub _bytes: OwnedSemaphorePermit,
}

/// A leased worker: given back on success, evicted otherwise — also when the invocation
/// future is dropped midway (the runtime stopping), so that no place leaks. A worker given back to
/// a pool closed meanwhile (reload, shutdown) is destroyed.
struct Lease<'g> {
    gw: &'g Arc<Gateway>,
    f: Arc<Function>,
    worker: Option<Worker>,
}

impl<'g> Lease<'g> {
    fn new(gw: &'g Arc<Gateway>, f: Arc<Function>, w: Worker) -> Lease<'g> {
        f.busy.lock().unwrap().insert(w.id.clone(), w.agent);
        Lease {
            gw,
            f,
            worker: Some(w),
        }
    }

    fn release(mut self) {
        if let Some(w) = self.worker.take() {
            self.f.busy.lock().unwrap().remove(&w.id);
            self.gw.give_back(&self.f, w);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            self.f.busy.lock().unwrap().remove(&w.id);
            self.f.pool.discard();
            self.gw.destroy(w, &self.f.spec.name);
            // A provisioned function gets its place filled again at once.
            if self.f.spec.provisioned > 0 && !self.gw.stopping() {
                self.gw.provision_function(&self.f);
            }
        }
    }
}

/// A place in the pool counted for a worker being created; freed if creation fails or
/// the future is dropped.
struct Slot<'f> {
    f: &'f Function,
    armed: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.f.pool.discard();
        }
    }
}

/// A worker being created, shown as `starting` until the agent answers.
struct Starting<'f> {
    f: &'f Function,
    n: u64,
}

impl<'f> Starting<'f> {
    fn new(f: &'f Function, agent: usize) -> Starting<'f> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        f.starting.lock().unwrap().insert(n, agent);
        Starting { f, n }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.f.starting.lock().unwrap().remove(&self.n);
    }
}

/// A worker counted in its agent's usage while it is being created; uncounted if the
/// creation fails or the future is dropped.
struct Reservation<'a> {
    agent: &'a Agent,
    memory_mb: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.agent.release(self.memory_mb);
        }
    }
}

/// Closes the pools of function versions that never went live (a reload cancelled while
/// warming them up), destroying their workers.
struct Abandon<'g> {
    gw: &'g Arc<Gateway>,
    fresh: Vec<Arc<Function>>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        for f in self.fresh.drain(..) {
            for w in f.pool.close() {
                self.gw.destroy(w, &f.spec.name);
            }
        }
    }
}

impl Gateway {
    pub fn new(
        config: Config,
        set: FunctionSet,
        logger: Logger,
        metrics: Metrics,
        queue: mpsc::Sender<AsyncJob>,
    ) -> anyhow::Result<Gateway> {
        let agents = config
            .agent_list()?
            .into_iter()
            .map(|a| Agent::connect(a, config.agent_timeout).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let queue_bytes = Arc::new(Semaphore::new(config.event_queue_bytes));
        Ok(Gateway {
            config,
            set: ArcSwap::from_pointee(set),
            agents: ArcSwap::from_pointee(agents),
            known: Mutex::new(HashMap::new()),
            destroyed: Mutex::new(HashMap::new()),
            exited: Mutex::new(Default::default()),
            watchers: Mutex::new(Vec::new()),
            metrics,
            logger,
            queue,
            queue_bytes,
            reloads: AtomicU64::new(0),
            started_at_ms: crate::ids::now_ms(),
            reload_lock: tokio::sync::Mutex::new(()),
            running: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        })
    }

    /// The agent at index `ai` (indices are stable).
    pub fn agent(&self, ai: usize) -> Arc<Agent> {
        self.agents.load()[ai].clone()
    }

    /// Returns a healthy worker to `f`'s pool; destroys it instead when the pool closed
    /// (reload, shutdown) or its agent was removed.
    fn give_back(self: &Arc<Self>, f: &Function, w: Worker) {
        self.give_back_at(f, w, None)
    }

    /// [`Gateway::give_back`]; with `since`, a worker taken out of the idle list (to be
    /// paused) goes back keeping its idle time.
    fn give_back_at(self: &Arc<Self>, f: &Function, w: Worker, since: Option<Instant>) {
        let agent = self.agent(w.agent);
        let exited = self
            .exited
            .lock()
            .unwrap()
            .contains(&(agent.addr.node_id.clone(), w.id.clone()));
        if agent.is_removed() || exited {
            f.pool.discard();
            self.destroy(w, &f.spec.name);
        } else if let Some(w) = match since {
            Some(t) => f.pool.restore(w, t),
            None => f.pool.release(w),
        } {
            self.destroy(w, &f.spec.name);
        }
    }

    /// Logs an error record.
    pub fn error(&self, msg: &str, fields: &[(&str, Value)]) {
        let mut m = Map::new();
        m.insert("kind".into(), "error".into());
        for (k, v) in fields {
            m.insert((*k).into(), v.clone());
        }
        self.logger.log("error", msg, m);
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the gateway running: leftovers are cleaned, provisioning may start; idle
    /// workers are paused from now on when [`Config::pause_after`] says so.
    pub fn set_running(self: &Arc<Self>) {
        self.running.store(true, Ordering::SeqCst);
        if let Some(after) = self.config.pause_after() {
            self.start_pauser(after);
        }
    }

    /// Pauses idle workers every fraction of `after` (a quarter, 0.1 to 1 s) until the
    /// gateway stops; aborted with the watchers at shutdown.
    fn start_pauser(self: &Arc<Self>, after: Duration) {
        let gw = Arc::downgrade(self);
        let every = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = gw.upgrade() else { return };
                if me.stopping() {
                    return;
                }
                me.pause_idle(after);
            }
        });
        self.watchers.lock().unwrap().push(task.abort_handle());
    }

    /// Starts pausing every warm worker idle for longer than `after` (not paused yet, its
    /// node up). Each is taken out of its pool first (see [`PoolCore::take_idle_before`]):
    /// no request can be given a worker while it is being paused; one that comes
    /// meanwhile waits for it (or for another worker) and resumes it.
    fn pause_idle(self: &Arc<Self>, after: Duration) {
        let Some(cutoff) = Instant::now().checked_sub(after) else {
            return;
        };
        let agents = self.agents.load();
        for f in &self.set.load().functions {
            let taken = f.pool.take_idle_before(cutoff, |w| {
                let ok = !w.paused
                    && agents
                        .get(w.agent)
                        .is_some_and(|a| a.is_up() && !a.is_removed());
                if ok {
                    // Shown (and counted on its node) as pausing from the moment it leaves.
                    f.pausing.lock().unwrap().insert(w.id.clone(), w.agent);
                }
                ok
            });
            for (w, since) in taken {
                let (gw, f) = (self.clone(), f.clone());
                tokio::spawn(async move { gw.pause_worker(f, w, since).await });
            }
        }
    }

    /// Asks the worker's agent to freeze it, then gives it back to its pool as paused
    /// (keeping its idle time, so that scale-down reaps it as before). A worker that could
    /// not be paused is in a state the gateway cannot know: it is destroyed.
    async fn pause_worker(self: Arc<Self>, f: Arc<Function>, mut w: Worker, since: Instant) {
        // The kept-alive connection goes: the runtime's timers run on while it is frozen
        // and may close it as it thaws, racing the next request. A new one is made then.
        w.conn = None;
        let agent = self.agent(w.agent);
        let mut client = agent.client.clone();
        let r = client
            .pause_container(PauseContainerRequest {
                container_id: w.id.clone(),
            })
            .await;
        f.pausing.lock().unwrap().remove(&w.id);
        let why = match r {
            Ok(a) if a.get_ref().success => {
                w.paused = true;
                self.metrics
                    .pauses
                    .get_or_create(&FnLabel {
                        function: f.label.clone(),
                    })
                    .inc();
                self.give_back_at(&f, w, Some(since));
                return;
            }
            Ok(_) => "the agent did not pause it".to_string(),
            Err(s) => {
                if agents::is_unreachable(&s) {
                    self.agent_down(w.agent, &s.to_string());
                }
                s.to_string()
            }
        };
        self.logger.log(
            "warn",
            "worker pause failed",
            worker_fields(&f.spec.name, &agent.addr.node_id, &w.id, &why),
        );
        f.note_replacement(format!(
            "worker {} could not be paused ({why}); destroyed",
            w.id
        ));
        f.pool.discard();
        self.destroy(w, &f.spec.name);
        if f.spec.provisioned > 0 && !self.stopping() {
            self.provision_function(&f);
        }
    }

    /// Thaws a paused worker before a request goes to it, within the request's deadline.
    async fn resume(&self, ai: usize, id: &str, deadline: Instant) -> Result<(), String> {
        let mut client = self.agent(ai).client.clone();
        let call = client.resume_container(ResumeContainerRequest {
            container_id: id.to_string(),
        });
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Ok(a)) if a.get_ref().success => Ok(()),
            Ok(Ok(_)) => Err("the agent did not resume it".into()),
            Ok(Err(s)) => {
                if agents::is_unreachable(&s) {
                    self.agent_down(ai, &s.to_string());
                }
                Err(format!("resume: {}", s.message()))
            }
            Err(_) => Err("resume: no answer before the request's deadline".into()),
        }
    }

    /// The deadline of one invocation of `f`.
    fn deadline(&self, f: &Function) -> Duration {
        (f.spec.timeout + TIMEOUT_GRACE).min(self.config.invoke_timeout)
    }

    /// Replaces the served functions (see [`crate::Reloader::reload`]).
    pub async fn reload(
        self: &Arc<Self>,
        specs: Vec<FunctionSpec>,
    ) -> anyhow::Result<ReloadReport> {
        let _one = self.reload_lock.lock().await;
        if self.stopping() {
            anyhow::bail!("the gateway is shutting down");
        }
        let old = self.set.load_full();
        let (new, report) = FunctionSet::build(&self.config, specs, Some(&old))?;
        // New versions get their provisioned workers before they take traffic.
        if self.running.load(Ordering::SeqCst) {
            // Should this future be dropped while waiting, the new versions never go
            // live: their pools are closed and their workers destroyed.
            let mut abandon = Abandon {
                gw: self,
                fresh: new
                    .functions
                    .iter()
                    .filter(|f| !old.holds(f))
                    .cloned()
                    .collect(),
            };
            let starts: Vec<_> = abandon
                .fresh
                .iter()
                .flat_map(|f| self.provision_function(f))
                .collect();
            for s in starts {
                let _ = s.await;
            }
            abandon.fresh.clear();
        }
        let new = Arc::new(new);
        self.set.store(new.clone());
        // Retire the replaced versions: idle workers now, busy ones when released.
        for o in old.functions.iter().filter(|o| !new.holds(o)) {
            for w in o.pool.close() {
                self.destroy(w, &o.spec.name);
            }
            if new.by_spec_name(&o.spec.name).is_none() {
                for state in ["idle", "paused", "busy", "waiting"] {
                    self.metrics.pool.remove(&PoolLabel {
                        function: o.label.clone(),
                        state,
                    });
                }
                self.metrics.breaker.remove(&FnLabel {
                    function: o.label.clone(),
                });
            }
        }
        self.reloads.fetch_add(1, Ordering::SeqCst);
        self.logger.log(
            "info",
            "functions reloaded",
            [
                ("kind".to_string(), json!("reload")),
                ("added".to_string(), json!(report.added)),
                ("changed".to_string(), json!(report.changed)),
                ("removed".to_string(), json!(report.removed)),
                ("unchanged".to_string(), json!(report.unchanged)),
            ]
            .into_iter()
            .collect(),
        );
        Ok(report)
    }

    /// Runs one synchronous invocation of `f` on a pooled worker. When a reload retires
    /// `f` while the request waits for a worker, the request moves to the function's new
    /// version.
    ///
    /// The invocation runs on a task of its own: a client that goes away mid-request does
    /// not cut it short (as on Lambda, the function runs to its end), and the worker goes
    /// back to its pool warm instead of being evicted.
    pub async fn invoke(
        self: &Arc<Self>,
        f: &Arc<Function>,
        payload: Bytes,
        trace: &str,
        client_context: Option<&HeaderValue>,
    ) -> (Outcome, Served) {
        let gw = self.clone();
        let f = f.clone();
        let trace = trace.to_string();
        let client_context = client_context.cloned();
        match tokio::spawn(async move {
            gw.invoke_here(&f, payload, &trace, client_context.as_ref())
                .await
        })
        .await
        {
            Ok(r) => r,
            Err(e) => (
                Outcome::WorkerFailed(format!("invocation task ended: {e}")),
                Served::default(),
            ),
        }
    }

    /// [`Gateway::invoke`] on the caller's task (for callers already on a task of their own).
    ///
    /// A request that could not be delivered to its worker (see [`CallError`]: certain
    /// that nothing of it reached the worker) evicts that worker and goes to another one,
    /// warm or new, within the deadline its first attempt started; one that was delivered
    /// and failed is never sent again (a synchronous invocation runs at most once).
    async fn invoke_here(
        self: &Arc<Self>,
        f: &Arc<Function>,
        payload: Bytes,
        trace: &str,
        client_context: Option<&HeaderValue>,
    ) -> (Outcome, Served) {
        let mut f = f.clone();
        let mut moves = 0;
        // Set when the first attempt starts; retries happen before it.
        let mut until: Option<Instant> = None;
        let mut any_cold = false;
        let mut redelivered = 0u32;
        loop {
            let wait = match until {
                None => self.config.pool_acquire_timeout,
                Some(t) => self
                    .config
                    .pool_acquire_timeout
                    .min(t.saturating_duration_since(Instant::now())),
            };
            let (permit, grant) = loop {
                let permit = f.breaker.permit(Instant::now());
                if permit == Permit::Rejected {
                    return (Outcome::BreakerOpen, Served::default());
                }
                match f.pool.acquire(wait).await {
                    Ok(g) => break (permit, g),
                    Err(e) => {
                        f.breaker.release_trial(permit);
                        match e {
                            AcquireError::Timeout if until.is_some_and(|t| Instant::now() >= t) => {
                                return (Outcome::TimedOut(None), Served::default())
                            }
                            AcquireError::Timeout => {
                                return (Outcome::Throttled, Served::default())
                            }
                            AcquireError::Closed if self.stopping() => {
                                return (Outcome::ShuttingDown, Served::default())
                            }
                            AcquireError::Closed => {
                                let next = self.set.load().by_spec_name(&f.spec.name).cloned();
                                match next {
                                    Some(n) if !Arc::ptr_eq(&n, &f) && moves < 8 => {
                                        f = n;
                                        moves += 1;
                                    }
                                    Some(_) => return (Outcome::ShuttingDown, Served::default()),
                                    None => return (Outcome::Gone, Served::default()),
                                }
                            }
                        }
                    }
                }
            };
            let (worker, cold) = match grant {
                Grant::Warm(w) => (w, false),
                Grant::Create => {
                    let mut slot = Slot { f: &f, armed: true };
                    let created = match until {
                        None => Some(self.create_worker(&f).await),
                        Some(t) => tokio::time::timeout_at(t.into(), self.create_worker(&f))
                            .await
                            .ok(),
                    };
                    let served = Served {
                        cold: true,
                        redelivered,
                        ..Served::default()
                    };
                    match created {
                        Some(Ok(w)) => {
                            slot.armed = false;
                            self.metrics
                                .cold_starts
                                .get_or_create(&FnLabel {
                                    function: f.label.clone(),
                                })
                                .inc();
                            (w, true)
                        }
                        None => {
                            // The request's deadline passed while a replacement started.
                            drop(slot);
                            f.breaker.release_trial(permit);
                            return (Outcome::TimedOut(None), served);
                        }
                        Some(Err(e)) => {
                            drop(slot);
                            // No node up to take it: the nodes failed, not the function.
                            let any_up = self
                                .agents
                                .load()
                                .iter()
                                .any(|a| a.is_up() && !a.is_removed());
                            if any_up {
                                f.breaker.record(permit, false, Instant::now());
                            } else {
                                f.breaker.release_trial(permit);
                            }
                            return (Outcome::AgentDown(e), served);
                        }
                    }
                }
            };
            any_cold |= cold;
            let mut lease = Lease::new(self, f.clone(), worker);
            let deadline = *until.get_or_insert_with(|| Instant::now() + self.deadline(&f));
            let agent = self.agent(lease.worker.as_ref().unwrap().agent);
            let mut served = Served {
                cold: any_cold,
                node: Some(agent.addr.node_id.clone()),
                worker: lease.worker.as_ref().map(|w| w.id.clone()),
                redelivered,
                aws_request_id: None,
                resumed: false,
            };
            // A paused worker is thawed first; one that cannot be is evicted and the
            // request, not sent, goes to another worker (as an unreachable one's).
            if lease.worker.as_ref().is_some_and(|w| w.paused) {
                let id = served.worker.clone().unwrap_or_default();
                let ai = lease.worker.as_ref().unwrap().agent;
                match self.resume(ai, &id, deadline).await {
                    Ok(()) => {
                        lease.worker.as_mut().unwrap().paused = false;
                        served.resumed = true;
                        self.metrics
                            .resumes
                            .get_or_create(&FnLabel {
                                function: f.label.clone(),
                            })
                            .inc();
                    }
                    Err(e) => {
                        f.breaker.release_trial(permit);
                        self.logger.log(
                            "warn",
                            "worker resume failed",
                            worker_fields(&f.spec.name, &agent.addr.node_id, &id, &e),
                        );
                        f.note_replacement(format!(
                            "worker {id} could not be resumed ({e}); evicted, the request went to another worker"
                        ));
                        drop(lease);
                        redelivered += 1;
                        if Instant::now() < deadline && (redelivered as usize) < DELIVERY_ATTEMPTS {
                            continue;
                        }
                        return (
                            Outcome::WorkerFailed(format!("{e} (after {redelivered} workers)")),
                            served,
                        );
                    }
                }
            }
            let call = lease.worker.as_mut().unwrap().call(
                &agent.dialer,
                payload.clone(),
                trace,
                client_context,
            );
            // A node marked down (missed heartbeats) fails its calls in flight at once (502),
            // rather than each waiting for its deadline.
            let down = agent.marked_down();
            let mut node_lost = false;
            let result = tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), call) => r,
                () = down => {
                    node_lost = true;
                    Ok(Err(CallError::Failed(format!("node {} is down", agent.addr.node_id))))
                }
            };
            let outcome = match result {
                Err(_) => Outcome::TimedOut(None),
                Ok(Err(CallError::NotDelivered(e))) => {
                    // Nothing of the request reached the worker: the function did not run.
                    f.breaker.release_trial(permit);
                    let id = served.worker.clone().unwrap_or_default();
                    let why = format!(
                        "worker {id} could not be reached ({e}); evicted, the request went to another worker"
                    );
                    self.logger.log(
                        "warn",
                        "worker unreachable",
                        worker_fields(&f.spec.name, &agent.addr.node_id, &id, &e),
                    );
                    f.note_replacement(why);
                    // Evicted: its place is freed and it is destroyed.
                    drop(lease);
                    redelivered += 1;
                    if Instant::now() < deadline && (redelivered as usize) < DELIVERY_ATTEMPTS {
                        continue;
                    }
                    return (
                        Outcome::WorkerFailed(format!("{e} (after {redelivered} workers)")),
                        served,
                    );
                }
                Ok(Err(CallError::Failed(e))) => Outcome::WorkerFailed(e),
                Ok(Ok(a)) => {
                    f.logs_dropped.fetch_add(a.logs_dropped, Ordering::Relaxed);
                    let timed_out = a
                        .error_type
                        .as_ref()
                        .is_some_and(|t| t.as_bytes().ends_with(b"Timedout"))
                        || (a.function_error.is_some()
                            && a.body.windows(16).any(|w| w == b"Sandbox.Timedout"));
                    if timed_out {
                        Outcome::TimedOut(Some(a))
                    } else {
                        Outcome::Answer(a)
                    }
                }
            };
            let healthy = match &outcome {
                Outcome::Answer(a) => {
                    !a.status.is_server_error()
                        && a.status != http::StatusCode::TOO_MANY_REQUESTS
                        && a.function_error.as_ref().is_none_or(|v| v != "Unhandled")
                }
                _ => false,
            };
            if node_lost {
                // The node failed, not the function: its breaker is left as it was.
                f.breaker.release_trial(permit);
            } else {
                f.breaker.record(permit, healthy, Instant::now());
            }
            if healthy {
                lease.release();
            } else {
                drop(lease);
            }
            return (outcome, served);
        }
    }

    /// Asks an agent for a new worker of `f`: the node [`agents::choose`] picks (or, when
    /// every agent is down, [`agents::choose_any`]); when that fails, one other node.
    pub async fn create_worker(self: &Arc<Self>, f: &Function) -> Result<Worker, String> {
        let need = u64::from(f.spec.memory_mb);
        let mut tried = Vec::new();
        let mut last = None;
        while tried.len() < CREATE_ATTEMPTS {
            let (ai, starting) = {
                let _placing = f.placing.lock().unwrap();
                let Some(ai) = self.reserve_agent(f, need, &tried) else {
                    break;
                };
                (ai, Starting::new(f, ai))
            };
            tried.push(ai);
            match self.create_on(f, ai, need, starting).await {
                Ok(w) => return Ok(w),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            let why = if self.agents.load().iter().all(|a| a.is_removed()) {
                "no agent: none is configured yet (ESB_AGENTS, ESB_AGENTS_FILE)".to_string()
            } else {
                format!("no agent has room for a worker of {need} MiB (max= / mem= of the agents)")
            };
            *f.last_error.lock().unwrap() = Some((why.clone(), crate::ids::now_ms() / 1000));
            why
        }))
    }

    /// Chooses a node for a worker of `f` and counts it there (workers, memory).
    fn reserve_agent(&self, f: &Function, need: u64, except: &[usize]) -> Option<usize> {
        let agents = self.agents.load();
        let mine = f.per_agent(agents.len());
        // Another creation may take the room between the choice and the count: choose
        // again then (a few times; each retry sees the new counts).
        for _ in 0..=agents.len() {
            let ai = agents::choose(&agents, need, &mine, except)
                .or_else(|| agents::choose_any(&agents, need, &mine, except))?;
            if agents[ai].try_reserve(need) {
                return Some(ai);
            }
        }
        None
    }

    /// Creates a worker of `f` on agent `ai`, where it is counted already.
    async fn create_on(
        self: &Arc<Self>,
        f: &Function,
        ai: usize,
        need: u64,
        _starting: Starting<'_>,
    ) -> Result<Worker, String> {
        let agent = self.agent(ai);
        let mut reservation = Reservation {
            agent: &agent,
            memory_mb: need,
            armed: true,
        };
        let req = EnsureContainerRequest {
            function_name: f.spec.name.clone(),
            image: f.spec.image.clone(),
            env: worker_env(&f.spec.env, self.config.log_level.as_deref()),
            memory_mb: f.spec.memory_mb,
            timeout_seconds: f.spec.timeout.as_secs() as u32,
            // The agent labels workers with the function itself (`esb.` labels are its own).
            labels: Default::default(),
        };
        let mut client = agent.client.clone();
        // A node marked down meanwhile fails the creation at once: another node is tried.
        let down = agent.marked_down();
        let created = tokio::select! {
            r = client.ensure_container(req) => r,
            () = down => Err(tonic::Status::unavailable(format!(
                "node {} was marked down",
                agent.addr.node_id
            ))),
        };
        let info = match created {
            Ok(r) => {
                agent.set_up(true);
                r.into_inner()
            }
            Err(s) => {
                if agents::is_unreachable(&s) {
                    self.agent_down(ai, &s.to_string());
                }
                self.error(
                    "worker creation failed",
                    &[
                        ("function", json!(f.spec.name)),
                        ("node", json!(agent.addr.node_id)),
                        ("error", json!(s.to_string())),
                    ],
                );
                let why = format!("agent {}: {}", agent.addr.node_id, s.message());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                *f.last_error.lock().unwrap() = Some((why.clone(), now));
                return Err(why);
            }
        };
        *f.last_error.lock().unwrap() = None;
        // From here the worker is known: destroying it uncounts it.
        reservation.armed = false;
        self.known.lock().unwrap().insert(
            (agent.addr.node_id.clone(), info.id.clone()),
            Known {
                function: f.spec.name.clone(),
                agent: ai,
                memory_mb: need,
            },
        );
        let port = if info.port > 0 {
            info.port as u16
        } else {
            8080
        };
        let addr = match info.ip_address.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => {
                let w = Worker {
                    id: info.id.clone(),
                    agent: ai,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    conn: None,
                    logs_dropped: 0,
                    paused: false,
                };
                self.destroy(w, &f.spec.name);
                return Err(format!(
                    "agent {} gave worker {} a bad address {:?}",
                    agent.addr.node_id, info.id, info.ip_address
                ));
            }
        };
        Ok(Worker {
            id: info.id,
            agent: ai,
            addr,
            conn: None,
            logs_dropped: 0,
            paused: false,
        })
    }

    /// Destroys a worker in the background (its pool place is already freed).
    pub fn destroy(self: &Arc<Self>, w: Worker, function: &str) {
        let gw = self.clone();
        let name = function.to_string();
        tokio::spawn(async move { gw.destroy_now(w.agent, &w.id, &name).await });
    }

    /// Destroys a worker and waits for the agent's answer.
    pub async fn destroy_now(&self, ai: usize, id: &str, function: &str) {
        let agent = self.agent(ai);
        let key = (agent.addr.node_id.clone(), id.to_string());
        let known = self.known.lock().unwrap().remove(&key);
        if let Some(k) = known {
            self.agent(k.agent).release(k.memory_mb);
        }
        self.exited.lock().unwrap().remove(&key);
        self.destroyed
            .lock()
            .unwrap()
            .insert(key.clone(), Instant::now());
        let mut client = agent.client.clone();
        let r = client
            .destroy_container(DestroyContainerRequest {
                function_name: function.to_string(),
                container_id: id.to_string(),
            })
            .await;
        if let Err(s) = r {
            // Still there, for all we know: an orphan for a later heartbeat to remove.
            self.destroyed.lock().unwrap().remove(&key);
            if agents::is_unreachable(&s) {
                self.agent_down(ai, &s.to_string());
            }
            self.error(
                "worker destruction failed",
                &[
                    ("worker", json!(id)),
                    ("function", json!(function)),
                    ("error", json!(s.to_string())),
                ],
            );
        }
    }

    /// Marks an agent down and drops its idle workers (they are unreachable).
    pub fn agent_down(&self, ai: usize, why: &str) {
        let agent = self.agent(ai);
        if agent.set_up(false) {
            // A removed agent failing is expected (its node may be gone): a warning.
            let level = if agent.is_removed() { "warn" } else { "error" };
            let mut m = Map::new();
            m.insert("kind".into(), "error".into());
            m.insert("node".into(), json!(agent.addr.node_id));
            m.insert("error".into(), json!(why));
            self.logger.log(level, "agent down", m);
        }
        for f in &self.set.load().functions {
            for w in f.pool.remove_idle_where(|w| w.agent == ai) {
                let key = (agent.addr.node_id.clone(), w.id.clone());
                let known = self.known.lock().unwrap().remove(&key);
                if let Some(k) = known {
                    agent.release(k.memory_mb);
                }
            }
        }
    }

    /// Replaces the agents (see [`crate::Reloader::reload_agents`]).
    pub async fn reload_agents(
        self: &Arc<Self>,
        list: Vec<AgentAddr>,
    ) -> anyhow::Result<AgentReloadReport> {
        let _one = self.reload_lock.lock().await;
        if self.stopping() {
            anyhow::bail!("the gateway is shutting down");
        }
        crate::config::check_agents(&list)?;
        let current = self.agents.load_full();
        let live: Vec<(usize, &Arc<Agent>)> = current
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.is_removed())
            .collect();
        let mut report = AgentReloadReport::default();
        let mut fresh = Vec::new();
        let mut retire = Vec::new();
        for a in list {
            match live.iter().find(|(_, o)| o.addr.node_id == a.node_id) {
                Some((_, o)) if o.addr == a => report.unchanged.push(a.node_id),
                found => {
                    match found {
                        Some((i, _)) => {
                            report.changed.push(a.node_id.clone());
                            retire.push(*i);
                        }
                        None => report.added.push(a.node_id.clone()),
                    }
                    // Every new entry is made before anything changes: an error (a TLS
                    // file that cannot be read) leaves the agents as they were.
                    fresh.push(Arc::new(Agent::connect(a, self.config.agent_timeout)?));
                }
            }
        }
        for (i, o) in &live {
            let listed = report.unchanged.contains(&o.addr.node_id)
                || report.changed.contains(&o.addr.node_id);
            if !listed {
                report.removed.push(o.addr.node_id.clone());
                retire.push(*i);
            }
        }
        for l in [
            &mut report.added,
            &mut report.changed,
            &mut report.removed,
            &mut report.unchanged,
        ] {
            l.sort();
        }
        let mut next = (*current).clone();
        let first_new = next.len();
        next.extend(fresh);
        let count = next.len();
        self.agents.store(Arc::new(next));
        if self.running.load(Ordering::SeqCst) {
            for ai in first_new..count {
                self.watch_agent(ai);
            }
        }
        for ai in retire {
            self.retire_agent(ai);
        }
        self.logger.log(
            "info",
            "agents reloaded",
            [
                ("kind".to_string(), json!("reload")),
                ("added".to_string(), json!(report.added)),
                ("changed".to_string(), json!(report.changed)),
                ("removed".to_string(), json!(report.removed)),
                ("unchanged".to_string(), json!(report.unchanged)),
            ]
            .into_iter()
            .collect(),
        );
        Ok(report)
    }

    /// Marks an agent removed: no new worker goes there, its idle workers leave the pools
    /// and are destroyed (best effort); busy ones are destroyed when their request ends.
    fn retire_agent(self: &Arc<Self>, ai: usize) {
        let agent = self.agent(ai);
        agent.set_removed();
        self.metrics.agent_up.remove(&NodeLabel {
            node: agent.addr.node_id.clone(),
        });
        self.evict_removed(ai);
    }

    /// Destroys the idle workers of the removed agent `ai`.
    fn evict_removed(self: &Arc<Self>, ai: usize) {
        for f in &self.set.load().functions {
            for w in f.pool.remove_idle_where(|w| w.agent == ai) {
                self.destroy(w, &f.spec.name);
            }
        }
    }

    /// Destroys every worker the agents report (leftovers of an earlier run). Agents are
    /// asked at the same time: one that does not answer delays no other.
    pub async fn clean_leftovers(self: &Arc<Self>) {
        let mut calls = tokio::task::JoinSet::new();
        for (ai, agent) in self.agents.load().iter().enumerate() {
            if agent.is_removed() {
                continue;
            }
            let (gw, agent) = (self.clone(), agent.clone());
            calls.spawn(async move {
                let mut client = agent.client.clone();
                match client.list_containers(ListContainersRequest {}).await {
                    Ok(r) => {
                        agent.set_up(true);
                        for c in r.into_inner().containers {
                            gw.destroy_now(ai, &c.container_id, &c.function_name).await;
                        }
                    }
                    Err(s) => {
                        if agents::is_unreachable(&s) {
                            gw.agent_down(ai, &s.to_string());
                        }
                    }
                }
            });
        }
        while calls.join_next().await.is_some() {}
    }

    /// One janitor round: idle scale-down, provisioned top-up, orphan reconcile, agent
    /// heartbeat (every agent at the same time, so that one that hangs delays no other).
    pub async fn janitor_round(self: &Arc<Self>) {
        let cutoff = Instant::now().checked_sub(self.config.idle_timeout);
        if let Some(cutoff) = cutoff {
            for f in &self.set.load().functions {
                for w in f.pool.reap_idle(cutoff, f.spec.provisioned as usize) {
                    self.destroy(w, &f.spec.name);
                }
            }
        }
        let agents = self.agents.load_full();
        // Idle workers that went back to a pool while their agent was being removed.
        for (ai, _) in agents.iter().enumerate().filter(|(_, a)| a.is_removed()) {
            self.evict_removed(ai);
        }
        self.provision();
        let mut calls = tokio::task::JoinSet::new();
        for (ai, agent) in agents.iter().enumerate() {
            if agent.is_removed() {
                continue;
            }
            let (gw, agent) = (self.clone(), agent.clone());
            calls.spawn(async move { gw.heartbeat(ai, &agent).await });
        }
        while calls.join_next().await.is_some() {}
    }

    /// Lists one agent's workers: marks it up or down, destroys orphans.
    async fn heartbeat(self: &Arc<Self>, ai: usize, agent: &Agent) {
        let now_secs = (crate::ids::now_ms() / 1000) as i64;
        let held = self.held_on(ai);
        let mut client = agent.client.clone();
        // A node whose list does not come within two intervals (less the probe's time)
        // and whose endpoint then takes no connection is down: with the janitor's round
        // every interval, that is at most three intervals after it went silent.
        let probe = probe_time(self.config.heartbeat);
        // A node over a tunnel gets at least REMOTE_HEARTBEAT_FLOOR: its tunnel may be busy
        // with an image pull, which delays every answer (a killed node is still seen at
        // once: its connection is reset).
        let floor = if agent.addr.endpoint.starts_with("https://") {
            REMOTE_HEARTBEAT_FLOOR
        } else {
            Duration::from_secs(1)
        };
        let deadline = (self.config.heartbeat * 2).saturating_sub(probe).max(floor);
        let answer =
            match tokio::time::timeout(deadline, client.list_containers(ListContainersRequest {}))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no heartbeat answer in {}s",
                    deadline.as_secs()
                ))),
            };
        match answer {
            Ok(r) => {
                if agent.set_up(true) {
                    self.logger.log(
                        "info",
                        "agent up",
                        [("node".to_string(), json!(agent.addr.node_id))]
                            .into_iter()
                            .collect(),
                    );
                }
                self.destroyed
                    .lock()
                    .unwrap()
                    .retain(|_, at| at.elapsed() < DESTROYED_MEMORY);
                let containers = r.into_inner().containers;
                // The backstop of the agents' worker events.
                self.find_lost(ai, &held, &containers);
                for c in containers {
                    let key = (agent.addr.node_id.clone(), c.container_id.clone());
                    let known = self.known.lock().unwrap().contains_key(&key)
                        || self.destroyed.lock().unwrap().contains_key(&key);
                    let age = now_secs - c.created_at;
                    if !known && age >= self.config.orphan_grace.as_secs() as i64 {
                        self.logger.log(
                            "warn",
                            "destroying orphan worker",
                            [
                                ("worker".to_string(), json!(c.container_id)),
                                ("function".to_string(), json!(c.function_name)),
                                ("node".to_string(), json!(agent.addr.node_id)),
                            ]
                            .into_iter()
                            .collect(),
                        );
                        self.destroy_now(ai, &c.container_id, &c.function_name)
                            .await;
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::DeadlineExceeded && agent.probe(probe).await => {
                // Slow, not gone: its endpoint takes connections (a busy containerd makes
                // the list slow). Marking it down would fail its calls in flight.
                self.logger.log(
                    "warn",
                    "agent slow to answer its heartbeat",
                    [
                        ("node".to_string(), json!(agent.addr.node_id)),
                        ("error".to_string(), json!(s.message())),
                    ]
                    .into_iter()
                    .collect(),
                );
            }
            Err(s) => {
                if agents::is_unreachable(&s) {
                    self.agent_down(ai, &s.to_string());
                }
            }
        }
    }

    /// Follows every agent's worker events (see [`Gateway::watch_agent`]).
    pub fn watch_agents(self: &Arc<Self>) {
        for ai in 0..self.agents.load().len() {
            self.watch_agent(ai);
        }
    }

    /// Follows the worker events of agent `ai` (`WatchWorkers`) until it is removed or the
    /// gateway stops: a worker whose task exited leaves its pool at once and is replaced.
    /// Each time the stream is (re)established, the agent's list is checked for workers
    /// that ended while nobody watched. An agent without the call (Unimplemented) is
    /// asked again now and then; the heartbeat's list is the backstop.
    fn watch_agent(self: &Arc<Self>, ai: usize) {
        let gw = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut pause = WATCH_RETRY_MIN;
            loop {
                let Some(me) = gw.upgrade() else { return };
                let agent = me.agent(ai);
                if agent.is_removed() || me.stopping() {
                    return;
                }
                let mut client = agent.client.clone();
                match client.watch_workers(WatchWorkersRequest {}).await {
                    Ok(r) => {
                        drop(me);
                        let mut stream = r.into_inner();
                        while let Ok(Some(ev)) = stream.message().await {
                            let Some(me) = gw.upgrade() else { return };
                            if ev.kind == esb_agent_api::event::WATCHING {
                                pause = WATCH_RETRY_MIN;
                                me.check_agent(ai).await;
                            } else if ev.kind == esb_agent_api::event::EXITED {
                                let why = format!("exited (code {})", ev.exit_status);
                                me.worker_lost(ai, &ev.container_id, &why);
                            }
                        }
                    }
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        pause = WATCH_RETRY_MAX.max(me.config.heartbeat);
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WATCH_RETRY_MAX);
            }
        });
        self.watchers.lock().unwrap().push(task.abort_handle());
    }

    /// The workers held on agent `ai` now (idle or busy): a list asked for after this
    /// must show each of them unless it ended.
    fn held_on(&self, ai: usize) -> Vec<String> {
        let node = self.agent(ai).addr.node_id.clone();
        self.known
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), k)| *n == node && k.agent == ai)
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    /// Lists agent `ai`'s workers and treats those it no longer runs as lost.
    async fn check_agent(self: &Arc<Self>, ai: usize) {
        let held = self.held_on(ai);
        let mut client = self.agent(ai).client.clone();
        if let Ok(r) = client.list_containers(ListContainersRequest {}).await {
            self.find_lost(ai, &held, &r.into_inner().containers);
        }
    }

    /// Of the workers `held` on agent `ai` before `listed` was asked for, those the agent
    /// shows stopped or no longer lists are lost.
    fn find_lost(self: &Arc<Self>, ai: usize, held: &[String], listed: &[ContainerState]) {
        for id in held {
            match listed.iter().find(|c| c.container_id == *id) {
                Some(c) if c.status == esb_agent_api::status::STOPPED => {
                    self.worker_lost(ai, id, "exited")
                }
                Some(_) => {}
                None => self.worker_lost(ai, id, "disappeared"),
            }
        }
    }

    /// A worker of agent `ai` ended (`why`: "exited (code 137)"): idle, it leaves its pool
    /// at once, is destroyed (the agent frees what is left of it) and provisioned
    /// concurrency is restored; busy, its request ends as it ends (a failure, not sent
    /// again) and it is destroyed then. Unknown ids (not ours, being destroyed) are ignored.
    pub fn worker_lost(self: &Arc<Self>, ai: usize, id: &str, why: &str) {
        let agent = self.agent(ai);
        let key = (agent.addr.node_id.clone(), id.to_string());
        let Some(k) = self.known.lock().unwrap().get(&key).cloned() else {
            return;
        };
        let set = self.set.load();
        let Some(f) = set.by_spec_name(&k.function) else {
            return;
        };
        let idle = f.pool.remove_idle_where(|w| w.agent == ai && w.id == id);
        let state = if idle.is_empty() { "busy" } else { "idle" };
        let what = if idle.is_empty() {
            self.exited.lock().unwrap().insert(key);
            format!("worker {id} {why} while busy")
        } else {
            format!("worker {id} {why} while idle; replaced")
        };
        let mut fields = worker_fields(&f.spec.name, &agent.addr.node_id, id, &what);
        fields.insert("state".to_string(), json!(state));
        self.logger.log("warn", "worker lost", fields);
        f.note_replacement(what);
        for w in idle {
            self.destroy(w, &f.spec.name);
        }
        if !self.stopping() {
            self.provision_function(f);
        }
    }

    /// Starts workers for provisioned concurrency where fewer exist.
    pub fn provision(self: &Arc<Self>) {
        if self.stopping() {
            return;
        }
        for f in &self.set.load().functions {
            self.provision_function(f);
        }
    }

    /// Starts the provisioned workers `f` lacks; the tasks end when they are in the pool.
    fn provision_function(self: &Arc<Self>, f: &Arc<Function>) -> Vec<JoinHandle<()>> {
        let mut started = Vec::new();
        while f.pool.reserve_below(f.spec.provisioned as usize) {
            let gw = self.clone();
            let f = f.clone();
            started.push(tokio::spawn(async move {
                let mut slot = Slot { f: &f, armed: true };
                if let Ok(w) = gw.create_worker(&f).await {
                    slot.armed = false;
                    gw.give_back(&f, w);
                }
            }));
        }
        started
    }

    /// Shutdown: closes the pools and destroys every worker left.
    pub async fn shutdown_workers(self: &Arc<Self>) {
        // Waits for a reload in progress; none starts after this.
        let _no_reload = self.reload_lock.lock().await;
        self.stopping.store(true, Ordering::SeqCst);
        for w in self.watchers.lock().unwrap().drain(..) {
            w.abort();
        }
        let mut idle = Vec::new();
        for f in &self.set.load().functions {
            for w in f.pool.close() {
                idle.push((w, f.clone()));
            }
        }
        for (w, f) in idle {
            self.destroy_now(w.agent, &w.id, &f.spec.name).await;
        }
        // Workers still being created or leased are destroyed as they come back; wait a
        // little for those.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.known.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the gauges read at scrape time and renders the metrics.
    pub fn render_metrics(&self) -> String {
        for f in &self.set.load().functions {
            let s = f.pool.stats();
            let label = |state| PoolLabel {
                function: f.label.clone(),
                state,
            };
            self.metrics
                .pool
                .get_or_create(&label("idle"))
                .set(s.idle as i64);
            let mut paused = 0;
            f.pool.for_each_idle(|w| paused += w.paused as i64);
            self.metrics
                .pool
                .get_or_create(&label("paused"))
                .set(paused);
            self.metrics
                .pool
                .get_or_create(&label("busy"))
                .set((s.total - s.idle) as i64);
            self.metrics
                .pool
                .get_or_create(&label("waiting"))
                .set(s.waiting as i64);
            self.metrics
                .breaker
                .get_or_create(&FnLabel {
                    function: f.label.clone(),
                })
                .set(f.breaker.state_code());
        }
        for a in self.agents.load().iter().filter(|a| !a.is_removed()) {
            self.metrics
                .agent_up
                .get_or_create(&NodeLabel {
                    node: a.addr.node_id.clone(),
                })
                .set(a.is_up() as i64);
        }
        self.metrics.encode()
    }

    /// The admin socket's `GET /status`: functions with routes, pools, breakers and
    /// workers; agents; start time; reload count.
    pub fn status(&self) -> Value {
        let set = self.set.load();
        let all_agents = self.agents.load();
        let functions: Vec<Value> = set
            .functions
            .iter()
            .map(|f| {
                let stats = f.pool.stats();
                let workers = f.workers();
                let busy = workers.iter().filter(|w| w.2 == WorkerState::Busy).count();
                let paused = workers
                    .iter()
                    .filter(|w| w.2 == WorkerState::Paused)
                    .count();
                let workers: Vec<Value> = workers
                    .into_iter()
                    .map(|(id, a, state)| {
                        json!({
                            "id": id,
                            // (`all_agents` may predate a newer worker's agent.)
                            "node": all_agents
                                .get(a)
                                .map(|x| x.addr.node_id.clone())
                                .unwrap_or_else(|| self.agent(a).addr.node_id.clone()),
                            "state": state.as_str(),
                        })
                    })
                    .collect();
                json!({
                    "name": f.spec.name,
                    "logical_id": f.spec.logical_id,
                    "image": f.spec.image,
                    "revision": f.spec.revision,
                    "routes": f.routes,
                    "capacity": f.pool.capacity(),
                    "reserved": f.spec.reserved,
                    "provisioned": f.spec.provisioned,
                    "pool": {"idle": stats.idle, "paused": paused, "busy": busy, "waiting": stats.waiting},
                    "breaker": f.breaker.state_name(),
                    "workers": workers,
                    "last_error": f.last_error.lock().unwrap().as_ref().map(|(msg, at)| {
                        json!({"message": msg, "at": at})
                    }),
                    "replacements": f.replacements.load(Ordering::Relaxed),
                    "logs_dropped": f.logs_dropped.load(Ordering::Relaxed),
                    "last_replacement": f.last_replacement.lock().unwrap().as_ref().map(|(msg, at)| {
                        json!({"message": msg, "at": at})
                    }),
                })
            })
            .collect();
        let agents: Vec<Value> = all_agents
            .iter()
            .map(|a| {
                let u = a.usage();
                json!({
                    "node": a.addr.node_id,
                    "endpoint": a.addr.endpoint,
                    "up": a.is_up(),
                    "removed": a.is_removed(),
                    "workers": u.workers,
                    "memory_mb": u.memory_mb,
                    "max_memory_mb": a.addr.max_memory_mb,
                })
            })
            .collect();
        json!({
            "functions": functions,
            "agents": agents,
            "started_at": crate::ids::rfc3339(self.started_at_ms),
            "reloads": self.reloads.load(Ordering::SeqCst),
            // The gateway's own log records dropped (its shipping queue full).
            "logs_dropped": self.metrics.logs_dropped.get(),
        })
    }

    /// `GET /metrics/containers`: every worker of every agent, in upstream ESB's shape
    /// (`{"containers": [{function_name, container_id, container_name, state,
    /// memory_current, memory_max, oom_events, cpu_usage_ns, exit_code, restart_count,
    /// exit_time, collected_at}]}`, the agent's `ContainerMetrics` fields; `state` is
    /// `RUNNING`, `PAUSED`, `STOPPED` or `UNKNOWN`), with esb's own fields beside them:
    /// `node`, `status` (the agent's list), `ip_address`, `created_at`, `last_used_at`,
    /// `managed` and `pool` (whether and where the gateway holds it). When the figures
    /// cannot be read, `state` is the list's status, the figures are null and
    /// `metrics_error` says why. An agent that does not answer is one entry with `node`
    /// and `error`.
    pub async fn containers(&self) -> Value {
        let mut out = Vec::new();
        let all_agents = self.agents.load_full();
        for agent in all_agents.iter().filter(|a| !a.is_removed()) {
            let mut client = agent.client.clone();
            let list = match client.list_containers(ListContainersRequest {}).await {
                Ok(r) => r.into_inner().containers,
                Err(s) => {
                    out.push(json!({"node": agent.addr.node_id, "error": s.message()}));
                    continue;
                }
            };
            for c in list {
                let metrics = client
                    .get_container_metrics(GetContainerMetricsRequest {
                        container_id: c.container_id.clone(),
                    })
                    .await
                    .map(|r| r.into_inner().metrics);
                let key = (agent.addr.node_id.clone(), c.container_id.clone());
                let known = self.known.lock().unwrap().get(&key).cloned();
                let mut entry = json!({
                    "function_name": c.function_name,
                    "container_id": c.container_id,
                    "container_name": c.container_name,
                    "state": c.status,
                    "memory_current": null,
                    "memory_max": null,
                    "oom_events": null,
                    "cpu_usage_ns": null,
                    "exit_code": null,
                    "restart_count": null,
                    "exit_time": null,
                    "collected_at": null,
                    "node": agent.addr.node_id,
                    "status": c.status,
                    "ip_address": c.ip_address,
                    "created_at": c.created_at,
                    "last_used_at": c.last_used_at,
                    "managed": known.is_some(),
                    "pool": known.map(|k| k.function),
                });
                match metrics {
                    Ok(Some(m)) => {
                        let figures = json!({
                            "state": m.state,
                            "memory_current": m.memory_current,
                            "memory_max": m.memory_max,
                            "oom_events": m.oom_events,
                            "cpu_usage_ns": m.cpu_usage_ns,
                            "exit_code": m.exit_code,
                            "restart_count": m.restart_count,
                            "exit_time": m.exit_time,
                            "collected_at": m.collected_at,
                        });
                        for (k, v) in figures.as_object().into_iter().flatten() {
                            entry[k] = v.clone();
                        }
                    }
                    Ok(None) => entry["metrics_error"] = json!("the agent sent no figures"),
                    Err(s) => entry["metrics_error"] = json!(s.message()),
                }
                out.push(entry);
            }
        }
        json!({ "containers": out })
    }

    /// Queues an async invocation; `Err` when the queue is full.
    pub fn enqueue(
        &self,
        f: &Function,
        payload: Bytes,
        trace: String,
        request_id: String,
        client_context: Option<HeaderValue>,
    ) -> Result<(), ()> {
        let n = payload.len().max(1).min(self.config.event_queue_bytes) as u32;
        let permit = self
            .queue_bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| ())?;
        let job = AsyncJob {
            function: f.label.clone(),
            payload,
            trace,
            request_id,
            client_context,
            _bytes: permit,
        };
        self.queue.try_send(job).map_err(|_| ())?;
        self.metrics.queue_depth.inc();
        Ok(())
    }

    /// Runs one async invocation with Lambda's retries (2, with backoff).
    pub async fn run_async(self: &Arc<Self>, job: AsyncJob) {
        let mut delay = self.config.event_retry_delay;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            // The current version of the function: a reload may have replaced it.
            let current = self.set.load().by_spec_name(&job.function).cloned();
            // Already on a task of its own: no need for `invoke`'s extra one.
            let (outcome, served) = match current {
                Some(f) => {
                    self.invoke_here(
                        &f,
                        job.payload.clone(),
                        &job.trace,
                        job.client_context.as_ref(),
                    )
                    .await
                }
                None => (Outcome::Gone, Served::default()),
            };
            let failure = match &outcome {
                Outcome::Answer(a) if a.function_error.is_none() && a.status.is_success() => None,
                Outcome::Answer(a) => Some(format!(
                    "status {} {}",
                    a.status,
                    String::from_utf8_lossy(&a.body[..a.body.len().min(512)])
                )),
                Outcome::ShuttingDown => Some("shutting down".into()),
                Outcome::BreakerOpen => Some("circuit open".into()),
                Outcome::Throttled => Some("throttled".into()),
                Outcome::AgentDown(e) | Outcome::WorkerFailed(e) => Some(e.clone()),
                Outcome::TimedOut(_) => Some("timed out".into()),
                Outcome::Gone => Some("the function was removed by a reload".into()),
            };
            let mut fields: Map<String, Value> = [
                ("kind".to_string(), json!("async")),
                (
                    "status".to_string(),
                    json!(if failure.is_none() { "ok" } else { "error" }),
                ),
                ("function".to_string(), json!(&*job.function)),
                ("request_id".to_string(), json!(job.request_id)),
                (
                    "trace_id".to_string(),
                    json!(crate::ids::trace_root(&job.trace)),
                ),
                ("attempt".to_string(), json!(attempt + 1)),
            ]
            .into_iter()
            .collect();
            if let Some(node) = served.node {
                fields.insert("node".to_string(), json!(node));
            }
            match failure {
                None => {
                    self.metrics.queue_depth.dec();
                    self.logger.log("info", "async invocation", fields);
                    return;
                }
                Some(e) => {
                    fields.insert("error".to_string(), json!(e));
                    self.logger.log("warn", "async invocation failed", fields);
                    if matches!(outcome, Outcome::ShuttingDown | Outcome::Gone) {
                        break;
                    }
                }
            }
        }
        self.metrics.queue_depth.dec();
        self.metrics
            .async_failures
            .get_or_create(&FnLabel {
                function: job.function.clone(),
            })
            .inc();
    }
}

/// Why a call to a worker failed: whether the request certainly did not reach it.
///
/// The rule ("not delivered"), strict so that a synchronous invocation runs at most once:
/// the TCP connection could not be made (refused, unreachable, reset during the
/// handshake, or not made within [`WORKER_CONNECT_TIMEOUT`]), or the HTTP/1 connection
/// was found closed before the request was handed to it (`ready()` failed), or hyper gave
/// the request back (`TrySendError::take_message()`: hyper's guarantee that it failed
/// before any byte of it was written). Anything else — an error while or after the
/// request was written, a reset or close before the whole answer came, even on a
/// connection that had been idle — may have reached the function, and is a failure of
/// this request.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing of the request reached the worker: it may go to another one.
    NotDelivered(String),
    /// The request may have reached the function.
    Failed(String),
}

impl Worker {
    async fn send(
        &mut self,
        dialer: &agents::Dialer,
        payload: Bytes,
        trace: &str,
        client_context: Option<&HeaderValue>,
    ) -> Result<http::Response<hyper::body::Incoming>, CallError> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = tokio::time::timeout(WORKER_CONNECT_TIMEOUT, dialer.connect(self.addr))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection in {}s", WORKER_CONNECT_TIMEOUT.as_secs()),
                    ))
                })
                .map_err(|e| {
                    CallError::NotDelivered(format!(
                        "connect to worker {} at {}: {e}",
                        self.id, self.addr
                    ))
                })?;
            // The HTTP/1 handshake only sets the connection up: nothing is written.
            let (send, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| CallError::NotDelivered(format!("worker {}: {e}", self.id)))?;
            tokio::spawn(conn);
            self.conn = Some(send);
        }
        let send = self.conn.as_mut().unwrap();
        send.ready()
            .await
            .map_err(|e| CallError::NotDelivered(format!("worker {}: {e}", self.id)))?;
        let mut req = http::Request::post(WORKER_INVOKE_PATH)
            .body(Full::new(payload))
            .expect("static request");
        let h = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.addr.to_string()) {
            h.insert(HOST, v);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(trace) {
            h.insert("x-amzn-trace-id", v);
        }
        if let Some(c) = client_context {
            h.insert("x-amz-client-context", c.clone());
        }
        send.try_send_request(req).await.map_err(|mut e| {
            let msg = format!("worker {}: {}", self.id, e.error());
            if e.take_message().is_some() {
                CallError::NotDelivered(msg)
            } else {
                CallError::Failed(msg)
            }
        })
    }

    /// POSTs the payload to the worker's invoke endpoint over its kept-alive connection.
    /// A kept-alive connection found dead before the request was handed to it is replaced
    /// once by a new connection; [`CallError`] says whether the request reached the worker.
    async fn call(
        &mut self,
        dialer: &agents::Dialer,
        payload: Bytes,
        trace: &str,
        client_context: Option<&HeaderValue>,
    ) -> Result<WorkerAnswer, CallError> {
        let reused = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        let resp = match self
            .send(dialer, payload.clone(), trace, client_context)
            .await
        {
            Err(CallError::NotDelivered(_)) if reused => {
                self.conn = None;
                self.send(dialer, payload, trace, client_context).await
            }
            r => r,
        }?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_WORKER_RESPONSE)
            .collect()
            .await
            .map_err(|e| CallError::Failed(format!("worker {}: reading the answer: {e}", self.id)))?
            .to_bytes();
        let dropped: u64 = parts
            .headers
            .get("x-esb-logs-dropped")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let logs_dropped = dropped.saturating_sub(self.logs_dropped);
        self.logs_dropped = self.logs_dropped.max(dropped);
        Ok(WorkerAnswer {
            logs_dropped,
            aws_request_id: parts
                .headers
                .get("x-amzn-requestid")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            status: parts.status,
            function_error: parts.headers.get("x-amz-function-error").cloned(),
            error_type: parts
                .headers
                .get("lambda-runtime-function-error-type")
                .cloned(),
            amz_error_type: parts.headers.get("x-amzn-errortype").cloned(),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, logical_id: &str, path: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            logical_id: logical_id.into(),
            image: format!("esb.local/functions/{name}:latest"),
            revision: "sha256:1".into(),
            env: Vec::new(),
            timeout: Duration::from_secs(3),
            memory_mb: 128,
            reserved: None,
            provisioned: 0,
            events: vec![esb_template::Event {
                name: "Get".into(),
                kind: esb_template::EventKind::Api,
                path: path.into(),
                method: "GET".into(),
                auth: None,
                api: None,
            }],
        }
    }

    #[test]
    fn build_keeps_equal_functions_and_reports() {
        let config = Config::default();
        let (first, report) = FunctionSet::build(
            &config,
            vec![
                spec("a", "A", "/a"),
                spec("b", "B", "/b"),
                spec("c", "C", "/c"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(report.added, ["a", "b", "c"]);
        let mut c2 = spec("c", "C", "/c");
        c2.revision = "sha256:2".into();
        let (second, report) = FunctionSet::build(
            &config,
            vec![c2, spec("d", "D", "/d"), spec("a", "A", "/a")],
            Some(&first),
        )
        .unwrap();
        assert_eq!(
            report,
            ReloadReport {
                added: vec!["d".into()],
                changed: vec!["c".into()],
                removed: vec!["b".into()],
                unchanged: vec!["a".into()],
            }
        );
        // The unchanged function is the very same (pool, breaker); the changed one is new.
        assert!(Arc::ptr_eq(
            first.get("a").unwrap(),
            second.get("A").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            first.get("c").unwrap(),
            second.get("c").unwrap()
        ));
        assert!(second.get("b").is_none());
        assert_eq!(second.get("D").unwrap().spec.name, "d");
        assert_eq!(second.get("c").unwrap().routes, ["GET /c"]);
        match second.router.find("GET", "/d") {
            crate::routes::Match::Found(r, _) => {
                assert_eq!(second.functions[r.function].spec.name, "d")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_win_over_logical_ids_and_errors_name_the_culprit() {
        let config = Config::default();
        // A logical id equal to another function's name does not hide that function.
        let (set, _) = FunctionSet::build(
            &config,
            vec![spec("x", "y", "/x"), spec("y", "Y", "/y")],
            None,
        )
        .unwrap();
        assert_eq!(set.get("y").unwrap().spec.name, "y");
        assert!(set.by_spec_name("Y").is_none());
        let e = |specs| {
            FunctionSet::build(&config, specs, None)
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            e(vec![spec("a", "A", "/same"), spec("b", "B", "/same")]),
            "route GET /same is declared twice (functions a and b)"
        );
        assert_eq!(
            e(vec![spec("a", "A", "/a"), spec("a", "B", "/b")]),
            "two functions are named \"a\""
        );
        assert!(e(vec![spec("", "A", "/a")]).contains("empty name"));
        let mut p = spec("p", "P", "/p");
        p.reserved = Some(2);
        p.provisioned = 3;
        assert_eq!(
            e(vec![p]),
            "function p: ProvisionedConcurrency 3 exceeds its concurrency 2"
        );
    }
}
