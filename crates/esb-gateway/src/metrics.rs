//! Prometheus metrics (`GET /metrics`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels: function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnLabel {
    /// Function name (`-` for requests that reached none).
    pub function: Arc<str>,
}

/// Labels: function and HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnStatus {
    /// Function name.
    pub function: Arc<str>,
    /// Response status.
    pub status: u16,
}

/// Labels: function and pool state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Function name.
    pub function: Arc<str>,
    /// `idle`, `busy` or `waiting`.
    pub state: &'static str,
}

/// Labels: node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// Node id.
    pub node: String,
}

type HistFamily = Family<FnLabel, Histogram, fn() -> Histogram>;

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by function and status.
    pub requests: Family<FnStatus, Counter>,
    /// Request latency by function.
    pub latency: HistFamily,
    /// Workers created because no warm one was free.
    pub cold_starts: Family<FnLabel, Counter>,
    /// Idle workers frozen (`ESB_CONTAINER_PAUSE`).
    pub pauses: Family<FnLabel, Counter>,
    /// Paused workers thawed for a request.
    pub resumes: Family<FnLabel, Counter>,
    /// Pool sizes (set at scrape time).
    pub pool: Family<PoolLabel, Gauge>,
    /// Breaker state: 0 closed, 1 open, 2 half-open (set at scrape time).
    pub breaker: Family<FnLabel, Gauge>,
    /// Async invocations queued or being retried.
    pub queue_depth: Gauge,
    /// Async invocations dropped after their retries.
    pub async_failures: Family<FnLabel, Counter>,
    /// Agent up (1) or down (0) (set at scrape time).
    pub agent_up: Family<NodeLabel, Gauge>,
    /// Log lines dropped because the shipping queue was full.
    pub logs_dropped: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("esb_gateway");
        let requests = Family::<FnStatus, Counter>::default();
        registry.register(
            "requests",
            "Requests by function and status",
            requests.clone(),
        );
        let latency: HistFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Request latency by function",
            latency.clone(),
        );
        let cold_starts = Family::<FnLabel, Counter>::default();
        registry.register(
            "cold_starts",
            "Workers created on demand",
            cold_starts.clone(),
        );
        let pauses = Family::<FnLabel, Counter>::default();
        registry.register(
            "pauses",
            "Idle workers paused (cgroup freezer)",
            pauses.clone(),
        );
        let resumes = Family::<FnLabel, Counter>::default();
        registry.register(
            "resumes",
            "Paused workers resumed for a request",
            resumes.clone(),
        );
        let pool = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "pool_workers",
            "Workers per function and state",
            pool.clone(),
        );
        let breaker = Family::<FnLabel, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "event_queue_depth",
            "Async invocations queued or retrying",
            queue_depth.clone(),
        );
        let async_failures = Family::<FnLabel, Counter>::default();
        registry.register(
            "async_failures",
            "Async invocations that failed after retries",
            async_failures.clone(),
        );
        let agent_up = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "agent_up",
            "Agent reachable (1) or not (0)",
            agent_up.clone(),
        );
        let logs_dropped = Counter::default();
        registry.register(
            "logs_dropped",
            "Log lines dropped (shipping queue full)",
            logs_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            cold_starts,
            pauses,
            resumes,
            pool,
            breaker,
            queue_depth,
            async_failures,
            agent_up,
            logs_dropped,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(8192);
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
