//! The agent: Lambda workers as containerd tasks on a runtime-node.
//!
//! A worker is a containerd container (namespace `esb-runtime`, overlayfs snapshot of its
//! function image, labels naming function, box and creation time) whose task runs in a
//! network namespace attached to the node bridge through the runtime-node's CNI path. The
//! agent serves `esb.agent.v1.AgentService` ([`service`]) and keeps no state of its own
//! that containerd and the runtime-node do not hold: on start it rebuilds its view from
//! them and removes whatever a crash left half-made ([`Agent::reconcile`]).

mod cgroup;
pub mod console;
pub mod containerd;
mod image;
mod pull;
pub mod seccomp;
pub mod service;
mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use esb_agent_api::{status, LABEL_BOX, LABEL_CREATED_AT, LABEL_FUNCTION, LABEL_IP};
use esb_netns::NetNs;
use esb_runtime_node::{NodeConfig, RuntimeNode};
use tokio::sync::Mutex;

pub use crate::containerd::Containerd;
use crate::containerd::{ignore_missing, status_name, CtdError};
pub use crate::image::ImageError;
pub use crate::pull::PullConfig;
pub use crate::spec::{CA_PATH_IN_WORKER, WORKER_GID, WORKER_UID};

/// Label set once a worker answered its readiness check; workers without it are half-made.
pub const LABEL_READY: &str = "esb.ready";
/// Label holding the node id.
pub const LABEL_NODE: &str = "esb.node";
/// Smallest and largest memory sizes Lambda accepts (MiB).
pub const MEMORY_RANGE_MB: (u32, u32) = (128, 10_240);

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// containerd's socket.
    pub containerd_socket: PathBuf,
    /// containerd namespace of the workers.
    pub namespace: String,
    /// Snapshotter for worker root filesystems.
    pub snapshotter: String,
    /// The runtime-node the workers attach to.
    pub node: NodeConfig,
    /// This node's id (reported in WorkerInfo and labels).
    pub node_id: String,
    /// Id of the box: workers carry it; reconcile touches only these.
    pub box_id: String,
    /// Environment every worker gets (endpoints, credentials, region, log URL); it
    /// overrides the function's own variables of the same name.
    pub box_env: BTreeMap<String, String>,
    /// The box CA, mounted read-only at [`CA_PATH_IN_WORKER`] (and `AWS_CA_BUNDLE`,
    /// `NODE_EXTRA_CA_CERTS`).
    pub ca_file: Option<PathBuf>,
    /// Where worker console logs go (`workers/ID.log`).
    pub state_dir: PathBuf,
    /// How long a new worker may take to accept connections (READINESS_TIMEOUT).
    pub readiness_timeout: Duration,
    /// Memory of a worker whose request names none (MiB).
    pub default_memory_mb: u32,
    /// Port of the supervisor's invoke endpoint.
    pub worker_port: u16,
    /// Cgroup parent of workers.
    pub cgroup_parent: String,
    /// cgroup filesystem root.
    pub cgroup_root: PathBuf,
    /// Pulling images containerd lacks from their registry (`None`: never pull; images
    /// must be built or imported into the node's containerd).
    pub pull: Option<PullConfig>,
    /// The console logger of workers ([`console`]): `(program, cap in bytes)`. `None`:
    /// containerd writes the console to `workers/ID.log` itself, without a cap (for
    /// embedders whose executable cannot act as the logger).
    pub console_logger: Option<(PathBuf, u64)>,
    /// Ceilings of the parent cgroup of all workers: memory (MiB) and processes; `None`
    /// leaves the parent as it is.
    pub workers_ceiling: Option<WorkersCeiling>,
}

impl WorkersCeiling {
    /// The defaults: 75% of this machine's memory, 16384 processes.
    pub fn default_for_machine() -> WorkersCeiling {
        WorkersCeiling {
            memory_mb: cgroup::machine_memory_mb().unwrap_or(4096) * 3 / 4,
            pids: DEFAULT_WORKERS_MAX_PIDS,
        }
    }
}

/// Default ceiling of all workers' processes together.
pub const DEFAULT_WORKERS_MAX_PIDS: u64 = 16384;

/// What all workers of a node may use together (their parent cgroup's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkersCeiling {
    /// Memory of all workers together, MiB.
    pub memory_mb: u64,
    /// Processes of all workers together.
    pub pids: u64,
}

impl AgentConfig {
    /// Defaults for a single-node box: containerd socket and state under `state_dir`.
    pub fn with_defaults(
        state_dir: PathBuf,
        node: NodeConfig,
        containerd_socket: PathBuf,
    ) -> AgentConfig {
        AgentConfig {
            containerd_socket,
            namespace: "esb-runtime".into(),
            snapshotter: "overlayfs".into(),
            node,
            node_id: "node-1".into(),
            box_id: "esb".into(),
            box_env: BTreeMap::new(),
            ca_file: None,
            state_dir,
            readiness_timeout: Duration::from_secs(30),
            default_memory_mb: 128,
            worker_port: 8080,
            cgroup_parent: "/esb-runtime".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            pull: None,
            console_logger: None,
            workers_ceiling: None,
        }
    }
}

/// Errors, each mapping to a gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request field is invalid.
    #[error("{field}: {msg}")]
    InvalidArgument {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// No such worker or image.
    #[error("{0}")]
    NotFound(String),
    /// The worker started but did not become ready.
    #[error("worker {id} of {function}: {reason}")]
    NotReady {
        /// Worker id.
        id: String,
        /// Function.
        function: String,
        /// Why (with the last log lines).
        reason: String,
        /// Timed out (vs crashed).
        timed_out: bool,
    },
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] CtdError),
    /// The node network failed.
    #[error("runtime-node: {0}")]
    Node(#[from] esb_runtime_node::NodeError),
    /// The image could not be pulled (the registry is down, refused or unknown).
    #[error("{0}")]
    Pull(String),
    /// The worker's task is not running (it cannot be paused).
    #[error("{0}")]
    NotRunning(String),
    /// The cgroup freezer of a worker failed.
    #[error("worker {id}: cgroup freezer: {msg}")]
    Freezer {
        /// Worker id.
        id: String,
        /// What failed.
        msg: String,
    },
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<ImageError> for AgentError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NotFound(_) => AgentError::NotFound(e.to_string()),
            ImageError::Invalid { .. } => AgentError::InvalidArgument {
                field: "image",
                msg: e.to_string(),
            },
            ImageError::Pull { .. } => AgentError::Pull(e.to_string()),
            ImageError::Containerd(c) => AgentError::Containerd(c),
        }
    }
}

/// A worker as the agent reports it.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Container id.
    pub id: String,
    /// Function name.
    pub function_name: String,
    /// Address on the bridge.
    pub ip: String,
    /// RUNNING | PAUSED | STOPPED | UNKNOWN.
    pub status: &'static str,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// Metrics of one worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    /// Container id.
    pub id: String,
    /// Function name.
    pub function_name: String,
    /// Task state.
    pub state: &'static str,
    /// Memory in use (bytes).
    pub memory_current: u64,
    /// Memory limit (bytes).
    pub memory_max: u64,
    /// OOM kills inside the worker.
    pub oom_events: u64,
    /// CPU time (ns).
    pub cpu_usage_ns: u64,
    /// Exit code of the task when it has exited.
    pub exit_code: i32,
    /// When it exited (Unix seconds), 0 while running.
    pub exit_time: i64,
    /// When these figures were read (Unix seconds).
    pub collected_at: i64,
}

/// What a new worker needs.
#[derive(Debug, Clone, Default)]
pub struct EnsureRequest {
    /// Function name.
    pub function_name: String,
    /// Image reference in containerd.
    pub image: String,
    /// Function environment.
    pub env: HashMap<String, String>,
    /// Memory (MiB); 0 = default.
    pub memory_mb: u32,
    /// Function timeout (s); 0 = leave the image's.
    pub timeout_seconds: u32,
    /// Extra labels.
    pub labels: HashMap<String, String>,
}

/// A ready worker.
#[derive(Debug, Clone)]
pub struct ReadyWorker {
    /// Container id (also the worker's name and network namespace name).
    pub id: String,
    /// Address on the bridge.
    pub ip: String,
    /// Invoke port.
    pub port: u16,
}

/// What reconcile removed.
#[derive(Debug, Default, Clone)]
pub struct ReconcileReport {
    /// Workers kept (complete and running).
    pub kept: Vec<String>,
    /// Containers removed (half-made or dead).
    pub removed_containers: Vec<String>,
    /// Network attachments removed (no container behind them).
    pub removed_attachments: Vec<String>,
}

/// What [`Agent::watch`] tells its receivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A worker's task ended (a crash, the OOM killer, a kill, a destroy).
    Exited {
        /// Worker id.
        id: String,
        /// Its function (empty when the container was already removed).
        function_name: String,
        /// Exit status (137 = SIGKILL).
        exit_status: u32,
        /// When (Unix milliseconds; 0 unknown).
        exited_at_ms: i64,
    },
    /// The agent's own subscription to containerd broke: exits may have been missed
    /// (receivers list the workers again).
    Lost,
}

/// Events kept for slow receivers before they miss some (and must list again).
const WATCH_BACKLOG: usize = 1024;
/// How long a pause waits for the kernel to freeze every task of a worker.
const FREEZE_WAIT: Duration = Duration::from_secs(5);

/// The agent.
pub struct Agent {
    cfg: AgentConfig,
    ctd: Containerd,
    node: RuntimeNode,
    node_ns: Arc<NetNs>,
    unpack: Mutex<()>,
    puller: Option<pull::Puller>,
    events: tokio::sync::broadcast::Sender<WorkerEvent>,
    /// Whether the subscription to containerd's task exits is live.
    following: tokio::sync::watch::Sender<bool>,
    watcher: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.lock().unwrap().take() {
            w.abort();
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks a Lambda function name: 1-64 of letters, digits, hyphens and underscores.
pub fn validate_function_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument {
            field: "function_name",
            msg: format!("{name:?} is not a function name (1-64 of letters, digits, '-' and '_')"),
        })
    }
}

/// A new worker id: `w-<function, shortened>-<12 hex>` (also a valid netns name).
fn new_worker_id(function: &str) -> String {
    let short: String = function
        .chars()
        .take(40)
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    format!(
        "w-{short}-{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

impl Agent {
    /// Connects to containerd and the runtime-node (which must be up).
    pub async fn connect(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        let node = RuntimeNode::from_state_or(cfg.node.clone())?;
        let node_ns = NetNs::open(&node.config().netns)
            .map_err(|_| esb_runtime_node::NodeError::NotUp(node.config().netns.clone()))?;
        let ctd = Containerd::connect(&cfg.containerd_socket, &cfg.namespace, &cfg.snapshotter)
            .await
            .map_err(AgentError::Internal)?;
        std::fs::create_dir_all(cfg.state_dir.join("workers")).map_err(|e| {
            AgentError::Internal(format!("create {}: {e}", cfg.state_dir.display()))
        })?;
        if let Some(c) = cfg.workers_ceiling {
            cgroup::set_ceiling(&cfg.cgroup_root, &cfg.cgroup_parent, c.memory_mb, c.pids)
                .map_err(AgentError::Internal)?;
        }
        let puller = cfg
            .pull
            .clone()
            .map(|p| pull::Puller::new(p, &cfg.containerd_socket));
        let agent = Arc::new(Agent {
            cfg,
            ctd,
            node,
            node_ns: Arc::new(node_ns),
            unpack: Mutex::new(()),
            puller,
            events: tokio::sync::broadcast::channel(WATCH_BACKLOG).0,
            following: tokio::sync::watch::Sender::new(false),
            watcher: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(watch_exits(Arc::downgrade(&agent)));
        *agent.watcher.lock().unwrap() = Some(task.abort_handle());
        Ok(agent)
    }

    /// The exits of this box's workers from now on (see [`WorkerEvent`]). A receiver that
    /// falls more than 1024 events behind gets `Lagged` and should list the workers again.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<WorkerEvent> {
        self.events.subscribe()
    }

    /// Resolves once the agent follows containerd's task exits (at once, but for a moment
    /// after the start or while containerd is away): receivers of [`Agent::watch`] made
    /// before then miss nothing after it.
    pub async fn following(&self) {
        let mut rx = self.following.subscribe();
        let _ = rx.wait_for(|live| *live).await;
    }

    /// Turns a task exit into an event for this box's watchers (`None`: another box's).
    async fn exit_event(&self, exit: containerd::TaskExit) -> Option<WorkerEvent> {
        let function_name = match self.ctd.container(&exit.container_id).await {
            Ok(c) if c.labels.get(LABEL_BOX) != Some(&self.cfg.box_id) => return None,
            Ok(c) => c.labels.get(LABEL_FUNCTION).cloned().unwrap_or_default(),
            // Already removed (a destroy): the watcher knows the id or ignores it.
            Err(_) => String::new(),
        };
        Some(WorkerEvent::Exited {
            id: exit.container_id,
            function_name,
            exit_status: exit.exit_status,
            exited_at_ms: exit.exited_at_ms,
        })
    }

    /// Removes the workers' parent cgroup where it is empty (when the agent stops).
    pub fn remove_cgroup_parent(&self) {
        cgroup::remove_parent(&self.cfg.cgroup_root, &self.cfg.cgroup_parent);
    }

    /// The settings.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    fn box_filter(&self) -> String {
        format!("labels.\"{LABEL_BOX}\"=={}", self.cfg.box_id)
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("workers").join(format!("{id}.log"))
    }

    /// Rebuilds the agent's view after a start: keeps complete running workers of this box,
    /// removes half-made or exited ones, and network attachments with no container.
    pub async fn reconcile(&self) -> Result<ReconcileReport, AgentError> {
        let mut report = ReconcileReport::default();
        let attached: BTreeSet<String> = self
            .node
            .attachments()
            .into_iter()
            .map(|a| a.name)
            .collect();
        for c in self.ctd.containers(&self.box_filter()).await? {
            let ready = c.labels.contains_key(LABEL_READY);
            let running = match self.ctd.task(&c.id).await {
                Ok(p) => matches!(status_name(p.status), status::RUNNING | status::PAUSED),
                Err(e) if e.not_found() => false,
                Err(e) => return Err(e.into()),
            };
            if ready && running && attached.contains(&c.id) {
                report.kept.push(c.id);
            } else {
                self.destroy(&c.id).await?;
                report.removed_containers.push(c.id);
            }
        }
        // Snapshots named like workers without a container (crash between prepare and create).
        let keep: BTreeSet<String> = report.kept.iter().cloned().collect();
        let node = self.node.clone();
        let keep2 = keep.clone();
        report.removed_attachments = tokio::task::spawn_blocking(move || node.reconcile(&keep2))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        for id in &report.removed_attachments {
            let _ = ignore_missing(self.ctd.remove_snapshot(id).await);
            for f in console::files(&self.log_path(id)) {
                let _ = std::fs::remove_file(f);
            }
        }
        Ok(report)
    }

    /// Creates a worker and returns once its supervisor accepts connections. On failure
    /// nothing of it is left.
    pub async fn ensure(&self, req: EnsureRequest) -> Result<ReadyWorker, AgentError> {
        validate_function_name(&req.function_name)?;
        if req.image.trim().is_empty() {
            return Err(AgentError::InvalidArgument {
                field: "image",
                msg: "must not be empty".into(),
            });
        }
        let memory_mb = if req.memory_mb == 0 {
            self.cfg.default_memory_mb
        } else {
            req.memory_mb
        };
        let (lo, hi) = MEMORY_RANGE_MB;
        if !(lo..=hi).contains(&memory_mb) {
            return Err(AgentError::InvalidArgument {
                field: "memory_mb",
                msg: format!("{memory_mb} MiB is outside Lambda's range {lo}-{hi} MiB"),
            });
        }
        for key in req.labels.keys() {
            if key.starts_with("esb.") {
                return Err(AgentError::InvalidArgument {
                    field: "labels",
                    msg: format!("{key:?}: the esb. prefix is reserved"),
                });
            }
        }
        let id = new_worker_id(&req.function_name);
        let lease = format!("esb-ensure-{id}");
        self.ctd.create_lease(&lease).await?;
        let result = self.build_worker(&id, &req, memory_mb, &lease).await;
        let _ = self.ctd.delete_lease(&lease).await;
        match result {
            Ok(w) => Ok(w),
            Err(e) => {
                if let Err(cleanup) = self.destroy(&id).await {
                    tracing::warn!(worker = %id, error = %cleanup, "cleanup after a failed ensure");
                }
                Err(e)
            }
        }
    }

    async fn build_worker(
        &self,
        id: &str,
        req: &EnsureRequest,
        memory_mb: u32,
        lease: &str,
    ) -> Result<ReadyWorker, AgentError> {
        let image = match (image::resolve(&self.ctd, &req.image).await, &self.puller) {
            (Err(ImageError::NotFound(_)), Some(puller)) => {
                puller.ensure(&self.ctd, &req.image).await?;
                puller.prune(&self.ctd, &req.image).await;
                image::resolve(&self.ctd, &req.image).await?
            }
            (r, _) => r?,
        };
        {
            let _one_unpack_at_a_time = self.unpack.lock().await;
            image::ensure_unpacked(&self.ctd, &image, lease).await?;
        }
        let node = self.node.clone();
        let name = id.to_string();
        let attachment = tokio::task::spawn_blocking(move || node.attach(&name))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        let ip = attachment.ip.to_string();

        let env = self.worker_env(req, &image.run.env, memory_mb);
        let spec = spec::worker_spec(&spec::WorkerSpec {
            id,
            args: &image.run.args,
            env: &env,
            cwd: &image.run.cwd,
            netns: &attachment.netns_path,
            memory_mb: memory_mb as u64,
            ca_file: self.cfg.ca_file.as_ref(),
            cgroup_parent: &self.cfg.cgroup_parent,
            swap_accounting: cgroup::swap_accounting(&self.cfg.cgroup_root),
        });
        let mut labels: HashMap<String, String> = req.labels.clone();
        labels.insert(LABEL_FUNCTION.into(), req.function_name.clone());
        labels.insert(LABEL_BOX.into(), self.cfg.box_id.clone());
        labels.insert(LABEL_CREATED_AT.into(), now_secs().to_string());
        labels.insert(LABEL_IP.into(), ip.clone());
        labels.insert(LABEL_NODE.into(), self.cfg.node_id.clone());
        self.ctd
            .create_container(id, &req.image, labels, &spec, Some(lease))
            .await?;
        let mounts = self
            .ctd
            .prepare_snapshot(id, &image.chain_id, Some(lease))
            .await?;
        let log = self.log_path(id);
        let stdio = match &self.cfg.console_logger {
            Some((program, max)) => console::uri(program, &log, *max),
            None => format!("file://{}", log.display()),
        };
        self.ctd.create_task(id, mounts, &stdio).await?;
        self.ctd.start_task(id).await?;
        self.wait_ready(id, &req.function_name, &attachment.ip)
            .await?;
        self.ctd.label_container(id, LABEL_READY, "1").await?;
        Ok(ReadyWorker {
            id: id.to_string(),
            ip,
            port: self.cfg.worker_port,
        })
    }

    fn worker_env(&self, req: &EnsureRequest, image_env: &[String], memory_mb: u32) -> Vec<String> {
        let mut env: BTreeMap<String, String> = image_env
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(self.cfg.box_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("AWS_LAMBDA_FUNCTION_NAME".into(), req.function_name.clone());
        env.insert(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            memory_mb.to_string(),
        );
        if req.timeout_seconds > 0 {
            env.insert(
                "AWS_LAMBDA_FUNCTION_TIMEOUT".into(),
                req.timeout_seconds.to_string(),
            );
        }
        env.insert(
            "ESB_SUPERVISOR_LISTEN".into(),
            format!("0.0.0.0:{}", self.cfg.worker_port),
        );
        if self.cfg.ca_file.is_some() {
            // botocore and the AWS CLI read AWS_CA_BUNDLE; Node.js reads its extra CAs
            // from NODE_EXTRA_CA_CERTS at start (the SDK for JavaScript has no such
            // setting of its own).
            env.insert("AWS_CA_BUNDLE".into(), CA_PATH_IN_WORKER.into());
            env.insert("NODE_EXTRA_CA_CERTS".into(), CA_PATH_IN_WORKER.into());
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Polls the worker's invoke port from inside the node namespace until it accepts, the
    /// task exits, or the readiness timeout passes.
    async fn wait_ready(
        &self,
        id: &str,
        function: &str,
        ip: &std::net::Ipv4Addr,
    ) -> Result<(), AgentError> {
        let addr = std::net::SocketAddr::from((*ip, self.cfg.worker_port));
        let deadline = Instant::now() + self.cfg.readiness_timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let ns = self.node_ns.clone();
            let socket = tokio::task::spawn_blocking(move || ns.run(tokio::net::TcpSocket::new_v4))
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?
                .map_err(|e| AgentError::Internal(e.to_string()))?
                .map_err(|e| AgentError::Internal(format!("socket in node namespace: {e}")))?;
            let attempt =
                tokio::time::timeout(Duration::from_millis(500), socket.connect(addr)).await;
            if matches!(attempt, Ok(Ok(_))) {
                return Ok(());
            }
            match self.ctd.task(id).await {
                Ok(p) if status_name(p.status) == status::STOPPED => {
                    return Err(AgentError::NotReady {
                        id: id.into(),
                        function: function.into(),
                        reason: format!(
                            "the worker exited with status {} before it was ready; last log lines:\n{}",
                            p.exit_status,
                            tail(&self.log_path(id), 20)
                        ),
                        timed_out: false,
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(AgentError::NotReady {
                    id: id.into(),
                    function: function.into(),
                    reason: format!(
                        "not accepting connections on {addr} after {}s (READINESS_TIMEOUT); last log lines:\n{}",
                        self.cfg.readiness_timeout.as_secs(),
                        tail(&self.log_path(id), 20)
                    ),
                    timed_out: true,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Stops and removes a worker: task, container, snapshot, network, lease, log.
    /// Returns whether anything was there.
    pub async fn destroy(&self, id: &str) -> Result<bool, AgentError> {
        if esb_netns::validate_name(id).is_err() {
            return Err(AgentError::InvalidArgument {
                field: "container_id",
                msg: format!("{id:?} is not a worker id"),
            });
        }
        let mut existed = false;
        let image = match self.ctd.container(id).await {
            Ok(c) => Some(c.image),
            Err(_) => None,
        };
        match self.ctd.task(id).await {
            Ok(p) => {
                existed = true;
                if status_name(p.status) != status::STOPPED {
                    // A frozen task takes no signal: thawed first (frozen by the agent's
                    // pause, or by containerd's).
                    let _ = self.set_frozen(id, false).await;
                    if status_name(p.status) == status::PAUSED {
                        let _ = self.ctd.resume_task(id).await;
                    }
                    let _ = ignore_missing(self.ctd.kill_task(id, libc::SIGKILL as u32).await)?;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), self.ctd.wait_task(id)).await;
                }
                ignore_missing(self.ctd.delete_task(id).await)?;
            }
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e.into()),
        }
        existed |= ignore_missing(self.ctd.delete_container(id).await)?;
        existed |= ignore_missing(self.ctd.remove_snapshot(id).await)?;
        let node = self.node.clone();
        let name = id.to_string();
        existed |= tokio::task::spawn_blocking(move || node.detach(&name))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))??;
        for f in console::files(&self.log_path(id)) {
            let _ = std::fs::remove_file(f);
        }
        if let (Some(puller), Some(image)) = (&self.puller, image) {
            puller.prune(&self.ctd, &image).await;
        }
        Ok(existed)
    }

    async fn own_container(
        &self,
        id: &str,
    ) -> Result<containerd_client::services::v1::Container, AgentError> {
        match self.ctd.container(id).await {
            Ok(c) if c.labels.get(LABEL_BOX) == Some(&self.cfg.box_id) => Ok(c),
            Ok(_) => Err(AgentError::NotFound(format!(
                "container {id:?} is not a worker of this box"
            ))),
            Err(e) if e.not_found() => Err(AgentError::NotFound(format!("no worker {id:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The cgroup of worker `id`, relative to the cgroup root.
    fn worker_cgroup(&self, id: &str) -> String {
        format!("{}/{id}", self.cfg.cgroup_parent)
    }

    /// Freezes or thaws worker `id`'s cgroup (see [`cgroup::set_frozen`]).
    async fn set_frozen(&self, id: &str, frozen: bool) -> Result<(), AgentError> {
        let root = self.cfg.cgroup_root.clone();
        let rel = self.worker_cgroup(id);
        tokio::task::spawn_blocking(move || cgroup::set_frozen(&root, &rel, frozen, FREEZE_WAIT))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => AgentError::NotFound(format!("no worker {id:?}")),
                _ => AgentError::Freezer {
                    id: id.to_string(),
                    msg: e.to_string(),
                },
            })
    }

    /// Whether worker `id`'s cgroup is frozen (by [`Agent::pause`]).
    fn frozen(&self, id: &str) -> bool {
        cgroup::is_frozen(&self.cfg.cgroup_root, &self.worker_cgroup(id)).unwrap_or(false)
    }

    /// Freezes a worker with the kernel's cgroup freezer, as containerd's task Pause
    /// (`runc pause`) does, without a process started per call; returns once every task of
    /// it is frozen. containerd is not told: its task stays "running", and the agent
    /// reports the worker PAUSED from its cgroup ([`Agent::list`], [`Agent::metrics`]).
    pub async fn pause(&self, id: &str) -> Result<(), AgentError> {
        self.own_container(id).await?;
        match self.ctd.task(id).await {
            Ok(p) if status_name(p.status) == status::RUNNING => {}
            Ok(p) => {
                return Err(AgentError::NotRunning(format!(
                    "worker {id} is {}, not running",
                    status_name(p.status)
                )))
            }
            Err(e) if e.not_found() => {
                return Err(AgentError::NotRunning(format!("worker {id} has no task")))
            }
            Err(e) => return Err(e.into()),
        }
        self.set_frozen(id, true).await
    }

    /// Thaws a worker frozen by [`Agent::pause`]. A request to a paused worker waits for
    /// this, so it only writes the worker's cgroup freezer (~0.1 ms) and asks containerd
    /// nothing (its Resume starts `runc resume` through the shim: ~11 ms measured).
    pub async fn resume(&self, id: &str) -> Result<(), AgentError> {
        if esb_netns::validate_name(id).is_err() {
            return Err(AgentError::InvalidArgument {
                field: "container_id",
                msg: format!("{id:?} is not a worker id"),
            });
        }
        // Only this box's workers have a cgroup under its parent: the path is the check.
        self.set_frozen(id, false).await
    }

    /// The workers of this box.
    pub async fn list(&self) -> Result<Vec<Worker>, AgentError> {
        let mut out = Vec::new();
        for c in self.ctd.containers(&self.box_filter()).await? {
            let st = match self.ctd.task(&c.id).await {
                Ok(p) => status_name(p.status),
                Err(e) if e.not_found() => status::STOPPED,
                Err(_) => status::UNKNOWN,
            };
            let st = if st == status::RUNNING && self.frozen(&c.id) {
                status::PAUSED
            } else {
                st
            };
            out.push(Worker {
                function_name: c.labels.get(LABEL_FUNCTION).cloned().unwrap_or_default(),
                ip: c.labels.get(LABEL_IP).cloned().unwrap_or_default(),
                created_at: c
                    .labels
                    .get(LABEL_CREATED_AT)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                status: st,
                id: c.id,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Metrics of one worker.
    pub async fn metrics(&self, id: &str) -> Result<WorkerMetrics, AgentError> {
        let c = self.own_container(id).await?;
        let (state, exit_code, exit_time) = match self.ctd.task(id).await {
            Ok(p) => {
                let st = status_name(p.status);
                let exited = st == status::STOPPED;
                (
                    st,
                    if exited { p.exit_status as i32 } else { 0 },
                    if exited {
                        p.exited_at.map(|t| t.seconds).unwrap_or(0)
                    } else {
                        0
                    },
                )
            }
            Err(e) if e.not_found() => (status::STOPPED, 0, 0),
            Err(e) => return Err(e.into()),
        };
        let state = if state == status::RUNNING && self.frozen(id) {
            status::PAUSED
        } else {
            state
        };
        let fig = cgroup::read(
            &self.cfg.cgroup_root,
            &format!("{}/{id}", self.cfg.cgroup_parent),
        );
        Ok(WorkerMetrics {
            id: id.to_string(),
            function_name: c.labels.get(LABEL_FUNCTION).cloned().unwrap_or_default(),
            state,
            memory_current: fig.memory_current.unwrap_or(0),
            memory_max: fig.memory_max.unwrap_or(0),
            oom_events: fig.oom_kills.unwrap_or(0),
            cpu_usage_ns: fig.cpu_usage_ns.unwrap_or(0),
            exit_code,
            exit_time,
            collected_at: now_secs(),
        })
    }
}

/// Follows containerd's task exits for the agent's watchers, subscribing again (after a
/// pause) when containerd ends or breaks the stream; ends with the agent.
async fn watch_exits(agent: std::sync::Weak<Agent>) {
    let mut broken = false;
    loop {
        let Some(ctd) = agent.upgrade().map(|a| a.ctd.clone()) else {
            return;
        };
        match ctd.task_exits().await {
            Ok(mut exits) => {
                if let Some(a) = agent.upgrade() {
                    a.following.send_replace(true);
                }
                if broken {
                    tracing::info!("following containerd's task exits again");
                }
                loop {
                    match exits.next().await {
                        Ok(Some(exit)) => {
                            let Some(a) = agent.upgrade() else { return };
                            if let Some(ev) = a.exit_event(exit).await {
                                tracing::info!(event = ?ev, "worker exited");
                                let _ = a.events.send(ev);
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("containerd ended the task exit stream");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "containerd's task exit stream broke");
                            break;
                        }
                    }
                }
            }
            Err(e) if !broken => tracing::warn!(error = %e, "containerd's task exits"),
            Err(_) => {}
        }
        // Events between the break and the next subscription are lost: say so.
        match agent.upgrade() {
            Some(a) => {
                a.following.send_replace(false);
                let _ = a.events.send(WorkerEvent::Lost);
            }
            None => return,
        }
        broken = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let t = lines[lines.len().saturating_sub(n)..].join("\n");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_and_ids() {
        validate_function_name("hello_World-1").unwrap();
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            assert!(validate_function_name(bad).is_err(), "{bad:?}");
        }
        let id = new_worker_id("My_Function");
        assert!(id.starts_with("w-my-function-"), "{id}");
        esb_netns::validate_name(&id).unwrap();
        assert_ne!(new_worker_id("f"), new_worker_id("f"));
        let long = new_worker_id(&"f".repeat(64));
        assert!(long.len() <= 64, "{}", long.len());
    }
}
