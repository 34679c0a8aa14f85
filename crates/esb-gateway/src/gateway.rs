//! The gateway's state: functions with their pools and breakers, agents, the invoke path,
//! the async queue and the janitor.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_agent_api::v1::{
    DestroyContainerRequest, EnsureContainerRequest, GetContainerMetricsRequest,
    ListContainersRequest,
};
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::agents::{self, Agent};
use crate::breaker::{Breaker, Permit};
use crate::config::Config;
use crate::logs::Logger;
use crate::metrics::{FnLabel, Metrics, NodeLabel, PoolLabel};
use crate::pool::{AcquireError, Grant, PoolCore};

/// Path of the worker contract's invoke endpoint.
pub const WORKER_INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";
/// Largest answer read from a worker (Lambda's sync limit is 6 MB; some room for headers).
const MAX_WORKER_RESPONSE: usize = 7 << 20;
/// Extra time given to the supervisor over the function's timeout, so that it answers
/// with its own timeout error before the gateway gives up.
const TIMEOUT_GRACE: Duration = Duration::from_secs(3);

/// A function the gateway serves: what `esb` hands over from the template and the build.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Function name (`FunctionName` or the logical id); also the Invoke API name.
    pub name: String,
    /// Logical id in the template (also accepted by the Invoke API).
    pub logical_id: String,
    /// Image reference the agent runs.
    pub image: String,
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
            env: f
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: Duration::from_secs(f.timeout.max(1) as u64),
            memory_mb: f.memory_size,
            reserved: f.reserved_concurrency,
            provisioned: f.provisioned_concurrency.unwrap_or(0),
            events: f.events.clone(),
        }
    }
}

/// A worker held by the gateway.
pub(crate) struct Worker {
    pub id: String,
    pub agent: usize,
    pub addr: SocketAddr,
    conn: Option<SendRequest<Full<Bytes>>>,
}

/// One function at run time.
pub(crate) struct Function {
    pub spec: FunctionSpec,
    pub label: Arc<str>,
    pub pool: PoolCore<Worker>,
    pub breaker: Breaker,
}

/// What a worker said.
pub(crate) struct WorkerAnswer {
    pub status: http::StatusCode,
    pub function_error: Option<HeaderValue>,
    pub error_type: Option<HeaderValue>,
    pub amz_error_type: Option<HeaderValue>,
    pub body: Bytes,
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
}

/// A worker known to exist on an agent.
#[derive(Clone, Debug)]
pub(crate) struct Known {
    pub function: String,
    pub agent: usize,
}

/// The shared state.
pub(crate) struct Gateway {
    pub config: Config,
    pub functions: Vec<Function>,
    pub by_name: HashMap<String, usize>,
    pub agents: Vec<Arc<Agent>>,
    pub known: Mutex<HashMap<String, Known>>,
    pub metrics: Metrics,
    pub logger: Logger,
    pub queue: mpsc::Sender<AsyncJob>,
    pub queue_bytes: Arc<Semaphore>,
}

/// An async (`Event`) invocation waiting in the queue.
pub(crate) struct AsyncJob {
    pub function: usize,
    pub payload: Bytes,
    pub trace: String,
    pub request_id: String,
    pub client_context: Option<HeaderValue>,
    pub _bytes: OwnedSemaphorePermit,
}

/// A leased worker: given back on success, evicted otherwise — also when the request
/// future is dropped midway (client gone), so that no place leaks.
struct Lease<'g> {
    gw: &'g Arc<Gateway>,
    function: usize,
    worker: Option<Worker>,
}

impl Lease<'_> {
    fn release(mut self) {
        if let Some(w) = self.worker.take() {
            if let Some(w) = self.gw.functions[self.function].pool.release(w) {
                // The pool closed meanwhile (shutdown).
                self.gw.destroy(w, self.function);
            }
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            self.gw.functions[self.function].pool.discard();
            self.gw.destroy(w, self.function);
        }
    }
}

/// A place in the pool counted for a worker being created; freed if creation fails or
/// the future is dropped.
struct Slot<'g> {
    gw: &'g Gateway,
    function: usize,
    armed: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gw.functions[self.function].pool.discard();
        }
    }
}

impl Gateway {
    pub fn new(
        config: Config,
        specs: Vec<FunctionSpec>,
        logger: Logger,
        metrics: Metrics,
        queue: mpsc::Sender<AsyncJob>,
    ) -> anyhow::Result<Gateway> {
        let mut by_name = HashMap::new();
        let mut functions = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            if by_name.insert(spec.name.clone(), i).is_some() {
                anyhow::bail!("two functions are named {:?}", spec.name);
            }
            by_name.entry(spec.logical_id.clone()).or_insert(i);
            let capacity = spec.reserved.unwrap_or(config.default_concurrency).max(1) as usize;
            if (spec.provisioned as usize) > capacity {
                anyhow::bail!(
                    "function {}: ProvisionedConcurrency {} exceeds its concurrency {capacity}",
                    spec.name,
                    spec.provisioned
                );
            }
            functions.push(Function {
                label: Arc::from(spec.name.as_str()),
                pool: PoolCore::new(capacity),
                breaker: Breaker::new(config.breaker_threshold, config.breaker_recovery),
                spec,
            });
        }
        let agents = config
            .agents
            .iter()
            .map(|a| Agent::connect(a.clone(), config.agent_timeout).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let queue_bytes = Arc::new(Semaphore::new(config.event_queue_bytes));
        Ok(Gateway {
            config,
            functions,
            by_name,
            agents,
            known: Mutex::new(HashMap::new()),
            metrics,
            logger,
            queue,
            queue_bytes,
        })
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

    /// The deadline of one invocation of `f`.
    fn deadline(&self, f: &Function) -> Duration {
        (f.spec.timeout + TIMEOUT_GRACE).min(self.config.invoke_timeout)
    }

    /// Runs one synchronous invocation of function `fi` on a pooled worker.
    pub async fn invoke(
        self: &Arc<Self>,
        fi: usize,
        payload: Bytes,
        trace: &str,
        client_context: Option<&HeaderValue>,
    ) -> (Outcome, bool) {
        let f = &self.functions[fi];
        let permit = f.breaker.permit(Instant::now());
        if permit == Permit::Rejected {
            return (Outcome::BreakerOpen, false);
        }
        let grant = match f.pool.acquire(self.config.pool_acquire_timeout).await {
            Ok(g) => g,
            Err(e) => {
                f.breaker.release_trial(permit);
                return (
                    match e {
                        AcquireError::Timeout => Outcome::Throttled,
                        AcquireError::Closed => Outcome::ShuttingDown,
                    },
                    false,
                );
            }
        };
        let (worker, cold) = match grant {
            Grant::Warm(w) => (w, false),
            Grant::Create => {
                let mut slot = Slot {
                    gw: self,
                    function: fi,
                    armed: true,
                };
                match self.create_worker(fi).await {
                    Ok(w) => {
                        slot.armed = false;
                        self.metrics
                            .cold_starts
                            .get_or_create(&FnLabel {
                                function: f.label.clone(),
                            })
                            .inc();
                        (w, true)
                    }
                    Err(e) => {
                        drop(slot);
                        f.breaker.record(permit, false, Instant::now());
                        return (Outcome::AgentDown(e), true);
                    }
                }
            }
        };
        let mut lease = Lease {
            gw: self,
            function: fi,
            worker: Some(worker),
        };
        let deadline = self.deadline(f);
        let agent = lease.worker.as_ref().unwrap().agent;
        let dialer = &self.agents[agent].dialer;
        let call = lease
            .worker
            .as_mut()
            .unwrap()
            .call(dialer, payload, trace, client_context);
        let result = tokio::time::timeout(deadline, call).await;
        let outcome = match result {
            Err(_) => Outcome::TimedOut(None),
            Ok(Err(e)) => Outcome::WorkerFailed(e),
            Ok(Ok(a)) => {
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
        f.breaker.record(permit, healthy, Instant::now());
        if healthy {
            lease.release();
        } else {
            drop(lease);
        }
        (outcome, cold)
    }

    /// Asks an agent for a new worker of function `fi`.
    pub async fn create_worker(self: &Arc<Self>, fi: usize) -> Result<Worker, String> {
        let f = &self.functions[fi];
        // When every agent is marked down, try one anyway: an agent that came back is
        // used at once rather than at the next heartbeat.
        let Some(ai) = agents::choose(&self.agents).or_else(|| agents::choose_any(&self.agents))
        else {
            return Err("no agent has free capacity".into());
        };
        let agent = &self.agents[ai];
        let req = EnsureContainerRequest {
            function_name: f.spec.name.clone(),
            image: f.spec.image.clone(),
            env: f.spec.env.iter().cloned().collect(),
            memory_mb: f.spec.memory_mb,
            timeout_seconds: f.spec.timeout.as_secs() as u32,
            // The agent labels workers with the function itself (`esb.` labels are its own).
            labels: Default::default(),
        };
        let mut client = agent.client.clone();
        let info = match client.ensure_container(req).await {
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
                return Err(format!("agent {}: {}", agent.addr.node_id, s.message()));
            }
        };
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
                };
                self.known.lock().unwrap().insert(
                    info.id.clone(),
                    Known {
                        function: f.spec.name.clone(),
                        agent: ai,
                    },
                );
                agent.add_workers(1);
                self.destroy(w, fi);
                return Err(format!(
                    "agent {} gave worker {} a bad address {:?}",
                    agent.addr.node_id, info.id, info.ip_address
                ));
            }
        };
        self.known.lock().unwrap().insert(
            info.id.clone(),
            Known {
                function: f.spec.name.clone(),
                agent: ai,
            },
        );
        agent.add_workers(1);
        Ok(Worker {
            id: info.id,
            agent: ai,
            addr,
            conn: None,
        })
    }

    /// Destroys a worker in the background (its pool place is already freed).
    pub fn destroy(self: &Arc<Self>, w: Worker, fi: usize) {
        let gw = self.clone();
        let name = self.functions[fi].spec.name.clone();
        tokio::spawn(async move { gw.destroy_now(w.agent, &w.id, &name).await });
    }

    /// Destroys a worker and waits for the agent's answer.
    pub async fn destroy_now(&self, ai: usize, id: &str, function: &str) {
        let agent = &self.agents[ai];
        let known = self.known.lock().unwrap().remove(id).is_some();
        if known {
            agent.add_workers(-1);
        }
        let mut client = agent.client.clone();
        let r = client
            .destroy_container(DestroyContainerRequest {
                function_name: function.to_string(),
                container_id: id.to_string(),
            })
            .await;
        if let Err(s) = r {
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
        let agent = &self.agents[ai];
        if agent.set_up(false) {
            self.error(
                "agent down",
                &[("node", json!(agent.addr.node_id)), ("error", json!(why))],
            );
        }
        for f in &self.functions {
            for w in f.pool.remove_idle_where(|w| w.agent == ai) {
                if self.known.lock().unwrap().remove(&w.id).is_some() {
                    agent.add_workers(-1);
                }
            }
        }
    }

    /// Destroys every worker the agents report (leftovers of an earlier run).
    pub async fn clean_leftovers(&self) {
        for (ai, agent) in self.agents.iter().enumerate() {
            let mut client = agent.client.clone();
            match client.list_containers(ListContainersRequest {}).await {
                Ok(r) => {
                    agent.set_up(true);
                    for c in r.into_inner().containers {
                        self.destroy_now(ai, &c.container_id, &c.function_name)
                            .await;
                    }
                }
                Err(s) => {
                    if agents::is_unreachable(&s) {
                        self.agent_down(ai, &s.to_string());
                    }
                }
            }
        }
    }

    /// One janitor round: idle scale-down, provisioned top-up, orphan reconcile, agent
    /// heartbeat.
    pub async fn janitor_round(self: &Arc<Self>) {
        let cutoff = Instant::now().checked_sub(self.config.idle_timeout);
        for (fi, f) in self.functions.iter().enumerate() {
            if let Some(cutoff) = cutoff {
                for w in f.pool.reap_idle(cutoff, f.spec.provisioned as usize) {
                    self.destroy(w, fi);
                }
            }
        }
        self.provision();
        let now_secs = (crate::ids::now_ms() / 1000) as i64;
        for (ai, agent) in self.agents.iter().enumerate() {
            let mut client = agent.client.clone();
            match client.list_containers(ListContainersRequest {}).await {
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
                    for c in r.into_inner().containers {
                        let known = self.known.lock().unwrap().contains_key(&c.container_id);
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
                Err(s) => {
                    if agents::is_unreachable(&s) {
                        self.agent_down(ai, &s.to_string());
                    }
                }
            }
        }
    }

    /// Starts workers for provisioned concurrency where fewer exist.
    pub fn provision(self: &Arc<Self>) {
        for (fi, f) in self.functions.iter().enumerate() {
            while f.pool.reserve_below(f.spec.provisioned as usize) {
                let gw = self.clone();
                tokio::spawn(async move {
                    let slot = Slot {
                        gw: &gw,
                        function: fi,
                        armed: true,
                    };
                    if let Ok(w) = gw.create_worker(fi).await {
                        let mut slot = slot;
                        slot.armed = false;
                        if let Some(w) = gw.functions[fi].pool.release(w) {
                            gw.destroy(w, fi);
                        }
                    }
                });
            }
        }
    }

    /// Shutdown: closes the pools and destroys every worker left.
    pub async fn shutdown_workers(self: &Arc<Self>) {
        let mut idle = Vec::new();
        for (fi, f) in self.functions.iter().enumerate() {
            for w in f.pool.close() {
                idle.push((w, fi));
            }
        }
        for (w, fi) in idle {
            self.destroy_now(w.agent, &w.id, &self.functions[fi].spec.name)
                .await;
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
        for f in &self.functions {
            let s = f.pool.stats();
            let label = |state| PoolLabel {
                function: f.label.clone(),
                state,
            };
            self.metrics
                .pool
                .get_or_create(&label("idle"))
                .set(s.idle as i64);
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
        for a in &self.agents {
            self.metrics
                .agent_up
                .get_or_create(&NodeLabel {
                    node: a.addr.node_id.clone(),
                })
                .set(a.is_up() as i64);
        }
        self.metrics.encode()
    }

    /// `GET /metrics/containers`: the workers with the agents' figures.
    pub async fn containers(&self) -> Value {
        let mut out = Vec::new();
        for (ai, agent) in self.agents.iter().enumerate() {
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
                    .ok()
                    .and_then(|r| r.into_inner().metrics)
                    .map(|m| {
                        json!({
                            "memory_current": m.memory_current,
                            "memory_max": m.memory_max,
                            "oom_events": m.oom_events,
                            "cpu_usage_ns": m.cpu_usage_ns,
                            "exit_code": m.exit_code,
                            "restart_count": m.restart_count,
                            "state": m.state,
                            "collected_at": m.collected_at,
                        })
                    });
                let known = self.known.lock().unwrap().get(&c.container_id).cloned();
                out.push(json!({
                    "node": agent.addr.node_id,
                    "container_id": c.container_id,
                    "container_name": c.container_name,
                    "function_name": c.function_name,
                    "status": c.status,
                    "ip_address": c.ip_address,
                    "created_at": c.created_at,
                    "last_used_at": c.last_used_at,
                    "managed": known.as_ref().is_some_and(|k| k.agent == ai),
                    "pool": known.map(|k| k.function),
                    "metrics": metrics,
                }));
            }
        }
        json!({ "containers": out })
    }

    /// Queues an async invocation; `Err` when the queue is full.
    pub fn enqueue(
        &self,
        fi: usize,
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
            function: fi,
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
        let f = &self.functions[job.function];
        let mut delay = self.config.event_retry_delay;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            let (outcome, _) = self
                .invoke(
                    job.function,
                    job.payload.clone(),
                    &job.trace,
                    job.client_context.as_ref(),
                )
                .await;
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
            };
            match failure {
                None => {
                    self.metrics.queue_depth.dec();
                    self.logger.log(
                        "info",
                        "async invocation",
                        [
                            ("kind".to_string(), json!("async")),
                            ("status".to_string(), json!("ok")),
                            ("function".to_string(), json!(f.spec.name)),
                            ("request_id".to_string(), json!(job.request_id)),
                            (
                                "trace_id".to_string(),
                                json!(crate::ids::trace_root(&job.trace)),
                            ),
                            ("attempt".to_string(), json!(attempt + 1)),
                        ]
                        .into_iter()
                        .collect(),
                    );
                    return;
                }
                Some(e) => {
                    self.logger.log(
                        "warn",
                        "async invocation failed",
                        [
                            ("kind".to_string(), json!("async")),
                            ("status".to_string(), json!("error")),
                            ("function".to_string(), json!(f.spec.name)),
                            ("request_id".to_string(), json!(job.request_id)),
                            (
                                "trace_id".to_string(),
                                json!(crate::ids::trace_root(&job.trace)),
                            ),
                            ("attempt".to_string(), json!(attempt + 1)),
                            ("error".to_string(), json!(e)),
                        ]
                        .into_iter()
                        .collect(),
                    );
                    if matches!(outcome, Outcome::ShuttingDown) {
                        break;
                    }
                }
            }
        }
        self.metrics.queue_depth.dec();
        self.metrics
            .async_failures
            .get_or_create(&FnLabel {
                function: f.label.clone(),
            })
            .inc();
    }
}

impl Worker {
    /// POSTs the payload to the worker's invoke endpoint over its kept-alive connection.
    async fn call(
        &mut self,
        dialer: &agents::Dialer,
        payload: Bytes,
        trace: &str,
        client_context: Option<&HeaderValue>,
    ) -> Result<WorkerAnswer, String> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = dialer
                .connect(self.addr)
                .await
                .map_err(|e| format!("connect to worker {} at {}: {e}", self.id, self.addr))?;
            let (send, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("worker {}: {e}", self.id))?;
            tokio::spawn(conn);
            self.conn = Some(send);
        }
        let send = self.conn.as_mut().unwrap();
        send.ready()
            .await
            .map_err(|e| format!("worker {}: {e}", self.id))?;
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
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("worker {}: {e}", self.id))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_WORKER_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("worker {}: reading the answer: {e}", self.id))?
            .to_bytes();
        Ok(WorkerAnswer {
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
