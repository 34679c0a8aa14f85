//! The gateway's settings (system.md §5), with the seed's environment names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

/// Smallest accepted `JWT_SECRET_KEY`, in bytes.
pub const MIN_JWT_SECRET: usize = 32;

/// One agent (one compute node).
///
/// `Default` gives empty strings and no options: handy with `..Default::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentAddr {
    /// Node id used in logs and metrics; also what identifies the agent across
    /// [`crate::Reloader::reload_agents`].
    pub node_id: String,
    /// `unix:/path/to/agent.sock`, `http://127.0.0.1:50051` or, for a remote node,
    /// `https://IP:PORT` (TLS, see [`AgentAddr::ca`]).
    pub endpoint: String,
    /// Network namespace in which this node's workers are dialled (`None` = the
    /// gateway's own namespace; single node: `esb-node`). An `https://` agent's own gRPC
    /// connection is made from there too.
    pub netns: Option<String>,
    /// Most workers this node should hold (0 = no limit).
    pub max_workers: usize,
    /// Memory the gateway may place on this node, in MiB: the sum of the `MemorySize` of
    /// the workers it holds there, starting ones included (0 = no limit). `mem=`.
    pub max_memory_mb: u64,
    /// `https://` only: CA certificate (PEM) the agent's certificate must chain to; the
    /// certificate must name the endpoint's IP address (SAN IP).
    pub ca: Option<PathBuf>,
    /// `https://` only: client certificate (PEM chain) presented to the agent.
    pub cert: Option<PathBuf>,
    /// `https://` only: private key (PEM) of [`AgentAddr::cert`].
    pub key: Option<PathBuf>,
}

impl AgentAddr {
    /// Parses `ENDPOINT[,netns=NAME][,node=ID][,max=N][,mem=MB][,ca=PATH][,cert=PATH][,key=PATH]`;
    /// the node id defaults to `node-{index}`.
    ///
    /// `https://IP:PORT` endpoints need `ca=` (and take `cert=` with `key=`); the other
    /// endpoints refuse the TLS options.
    pub fn parse(spec: &str, index: usize) -> anyhow::Result<AgentAddr> {
        AgentAddr::parse_with_node(spec, |_| format!("node-{index}"))
    }

    /// [`AgentAddr::parse`] with the node id defaulting to `default_node(endpoint)`.
    pub fn parse_with_node(
        spec: &str,
        default_node: impl FnOnce(&str) -> String,
    ) -> anyhow::Result<AgentAddr> {
        let mut parts = spec.split(',');
        let endpoint = parts.next().unwrap_or("").trim().to_string();
        if !(endpoint.starts_with("unix:")
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            bail!(
                "agent address {spec:?}: expected unix:/path, http://host:port or https://IP:PORT"
            );
        }
        let mut a = AgentAddr {
            node_id: default_node(&endpoint),
            endpoint,
            ..AgentAddr::default()
        };
        let path = |v: &str| -> anyhow::Result<Option<PathBuf>> {
            let v = v.trim();
            if v.is_empty() {
                bail!("agent address {spec:?}: empty path");
            }
            Ok(Some(PathBuf::from(v)))
        };
        for p in parts {
            if p.trim().is_empty() {
                continue;
            }
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("agent address {spec:?}: option {p:?} is not k=v"))?;
            match k.trim() {
                "netns" => a.netns = Some(v.trim().to_string()).filter(|s| !s.is_empty()),
                "node" => a.node_id = v.trim().to_string(),
                "max" => {
                    a.max_workers = v
                        .trim()
                        .parse()
                        .with_context(|| format!("agent address {spec:?}: max={v:?}"))?
                }
                "mem" => {
                    a.max_memory_mb = v
                        .trim()
                        .parse()
                        .with_context(|| format!("agent address {spec:?}: mem={v:?}"))?
                }
                "ca" => a.ca = path(v)?,
                "cert" => a.cert = path(v)?,
                "key" => a.key = path(v)?,
                other => bail!("agent address {spec:?}: unknown option {other:?}"),
            }
        }
        a.check()
            .with_context(|| format!("agent address {spec:?}"))?;
        Ok(a)
    }

    /// Checks the combination of options (what [`AgentAddr::parse`] checks).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.node_id.trim().is_empty() {
            bail!("empty node id");
        }
        if let Some(ns) = &self.netns {
            esb_netns::validate_name(ns).map_err(|e| anyhow::anyhow!("netns={ns:?}: {e}"))?;
        }
        if self.endpoint.starts_with("https://") {
            self.tls_addr()?;
            if self.ca.is_none() {
                bail!("an https:// agent needs ca=PATH (the CA of its certificate)");
            }
            if self.cert.is_some() != self.key.is_some() {
                bail!("cert= and key= go together");
            }
        } else if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
            bail!("ca=, cert= and key= are for https:// agents only");
        }
        Ok(())
    }

    /// The address of an `https://IP:PORT` endpoint (`None` for the other kinds).
    pub fn tls_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(rest) = self.endpoint.strip_prefix("https://") else {
            return Ok(None);
        };
        rest.trim_end_matches('/')
            .parse()
            .map(Some)
            .with_context(|| {
                format!(
                    "{}: an https:// agent is addressed as https://IP:PORT",
                    self.endpoint
                )
            })
    }
}

/// Reads an agents file (`ESB_AGENTS_FILE`): one [`AgentAddr::parse`] spec per line;
/// blank lines and `#` comments (whole lines, or after a spec) are skipped. A line
/// without `node=` gets its endpoint as node id. A missing file is an empty list.
pub fn read_agents_file(path: &Path) -> anyhow::Result<Vec<AgentAddr>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            AgentAddr::parse_with_node(line, |e| e.to_string())
                .with_context(|| format!("{} line {}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

/// Checks a whole agent list: each spec, node ids unique. An empty list is valid (with an
/// agents file, compute nodes may join later).
pub fn check_agents(agents: &[AgentAddr]) -> anyhow::Result<()> {
    for (i, a) in agents.iter().enumerate() {
        a.check()
            .with_context(|| format!("agent {} ({})", a.node_id, a.endpoint))?;
        if agents[..i].iter().any(|b| b.node_id == a.node_id) {
            bail!("two agents have the node id {:?}", a.node_id);
        }
    }
    Ok(())
}

/// Everything the gateway needs. [`Config::default`] gives the documented defaults;
/// The gateway's default connection cap: higher than the data services' (every client of
/// the box comes through it, and idle TLS connections must not lock a user out).
pub const GATEWAY_MAX_CONNECTIONS: usize = 16384;

/// [`Config::from_env`] reads the environment names of the seed. `Debug` shows every
/// setting with the secrets redacted (for `esb config`-style output).
#[derive(Clone)]
pub struct Config {
    /// Client listener (`ESB_GATEWAY_LISTEN`, default `0.0.0.0:443`), host namespace.
    pub listen: SocketAddr,
    /// Internal listener for workers (chain invokes), derived from `GATEWAY_INTERNAL_URL`
    /// (default `https://10.88.0.1:443` -> `10.88.0.1:443`); `None` = no internal listener.
    pub internal_listen: Option<SocketAddr>,
    /// Network namespace of the internal listener (`ESB_GATEWAY_INTERNAL_NETNS`, default
    /// `esb-node`); `None` = the gateway's own namespace.
    pub internal_netns: Option<String>,
    /// `GATEWAY_INTERNAL_URL`: what workers use as `AWS_ENDPOINT_URL_LAMBDA`.
    pub internal_url: String,
    /// Directory for the box's CA and server certificate (`ESB_GATEWAY_DATA_DIR`,
    /// default `/var/lib/esb/gateway`).
    pub data_dir: PathBuf,
    /// `SSL_CERT_PATH` / `SSL_KEY_PATH`: use this certificate instead of the box's own.
    pub cert_path: Option<PathBuf>,
    /// See [`Config::cert_path`].
    pub key_path: Option<PathBuf>,
    /// Extra subject alternative names for the generated certificate (`ESB_GATEWAY_SANS`,
    /// comma-separated).
    pub extra_sans: Vec<String>,
    /// `JWT_SECRET_KEY`: HS256 key of the IdTokens; at least 32 bytes.
    pub jwt_secret: String,
    /// `X_API_KEY`: the API key the auth endpoint requires in `x-api-key`.
    pub api_key: String,
    /// `AUTH_USER`: the user name accepted by the auth endpoint.
    pub auth_user: String,
    /// `AUTH_PASS`: that user's password.
    pub auth_pass: String,
    /// Paths of the auth endpoint: both of upstream ESB's (`/user/auth/v1`, its default,
    /// and `/user/auth/ver1.0`) unless `AUTH_ENDPOINT_PATH` names the one to serve.
    pub auth_paths: Vec<String>,
    /// `LOG_LEVEL` (upstream ESB's setting): the level functions log at when neither
    /// their `LoggingConfig.ApplicationLogLevel` nor their own `LOG_LEVEL` says; given to
    /// workers as `LOG_LEVEL` and `AWS_LAMBDA_LOG_LEVEL`. `None`: not set.
    pub log_level: Option<String>,
    /// `JWT_EXPIRES_DELTA` in seconds (default 3600).
    pub jwt_expires: Duration,
    /// `LAMBDA_INVOKE_TIMEOUT` in seconds (default 900): upper bound of one invocation
    /// on a worker; the function's own `Timeout` applies when smaller.
    pub invoke_timeout: Duration,
    /// `CIRCUIT_BREAKER_THRESHOLD` (default 5) consecutive failures open the breaker.
    pub breaker_threshold: u32,
    /// `CIRCUIT_BREAKER_RECOVERY_TIMEOUT` in seconds (default 30) before one trial.
    pub breaker_recovery: Duration,
    /// `GATEWAY_IDLE_TIMEOUT_SECONDS` (default 300): idle workers older than this are
    /// destroyed (never below the provisioned count).
    pub idle_timeout: Duration,
    /// `HEARTBEAT_INTERVAL` in seconds (default 30): janitor period.
    pub heartbeat: Duration,
    /// `ORPHAN_GRACE_PERIOD_SECONDS` (default 60): unknown workers younger than this are
    /// left alone by the janitor.
    pub orphan_grace: Duration,
    /// `POOL_ACQUIRE_TIMEOUT` in seconds (default 10): how long a request waits for a
    /// worker of a full pool before 429.
    pub pool_acquire_timeout: Duration,
    /// `ESB_DEFAULT_CONCURRENCY` (default 10): pool capacity of functions without
    /// `ReservedConcurrentExecutions`.
    pub default_concurrency: u32,
    /// `ESB_CONTAINER_PAUSE` (upstream's `ENABLE_CONTAINER_PAUSE`; default off): warm
    /// workers idle for [`Config::pause_idle`] are frozen (containerd's cgroup freezer)
    /// and thawed by their next request.
    pub container_pause: bool,
    /// `ESB_PAUSE_IDLE_SECONDS` (upstream's `PAUSE_IDLE_SECONDS`; default 30): how long a
    /// warm worker stays idle before it is paused. 0 turns pausing off, as upstream.
    pub pause_idle: Duration,
    /// `ESB_IAM_FILE`: the box's credentials file of functions' keys and policies, checked
    /// by the Invoke API (`None`: only the box's key is accepted).
    pub iam_file: Option<PathBuf>,
    /// `VICTORIALOGS_URL`: where structured logs are shipped (`/insert/jsonline`);
    /// `None` = stderr only.
    pub victorialogs_url: Option<String>,
    /// Whether log records are also written to stderr (`ESB_GATEWAY_LOG_STDERR`, default
    /// true; `0` turns it off).
    pub log_stderr: bool,
    /// `ESB_ACCESS_KEY_ID`: access key of SigV4 requests to the Invoke API.
    pub access_key: String,
    /// `ESB_SECRET_ACCESS_KEY`: its secret.
    pub secret_key: String,
    /// `ESB_REGION` (default `ap-northeast-1`).
    pub region: String,
    /// Account id in ARNs and events (`ESB_ACCOUNT_ID`, default `000000000000`).
    pub account_id: String,
    /// `ESB_AGENTS`: agents, `;`-separated [`AgentAddr::parse`] specs (default
    /// `unix:/run/esb/agent.sock,netns=esb-node`).
    pub agents: Vec<AgentAddr>,
    /// `ESB_AGENTS_FILE`: more agents, one spec per line (see [`read_agents_file`]), read
    /// at start after [`Config::agents`] and again by [`crate::Reloader::reload_agents`]
    /// callers (`esb gateway` on SIGHUP). Default none.
    pub agents_file: Option<PathBuf>,
    /// Stage name of REST (`Api`) events (`ESB_API_STAGE`, default `Prod`).
    pub stage: String,
    /// Capacity of the async (`Event`) queue in invocations (`ESB_EVENT_QUEUE`, default 1000).
    pub event_queue_len: usize,
    /// Memory bound of the async queue in bytes (`ESB_EVENT_QUEUE_BYTES`, default 64 MiB).
    pub event_queue_bytes: usize,
    /// First retry delay of failed async invocations (`ESB_EVENT_RETRY_DELAY_MS`, default
    /// 1000; doubled for the second retry).
    pub event_retry_delay: Duration,
    /// Largest request body (`ESB_MAX_BODY_BYTES`, default 10 MiB, API Gateway's limit).
    pub max_body: usize,
    /// How long SIGTERM waits for in-flight requests (`ESB_DRAIN_SECONDS`, default 30).
    pub drain_timeout: Duration,
    /// Connection cap, header timeout and HTTP/2 limits of both listeners
    /// (`ESB_HTTP_MAX_CONNECTIONS`, default 16384 here; `ESB_HTTP_HEADER_TIMEOUT_SECONDS`;
    /// `ESB_HTTP2_MAX_STREAMS`).
    pub http_limits: esb_serve::Limits,
    /// Timeout of agent calls (`ESB_AGENT_TIMEOUT`, seconds, default 60: creating a
    /// worker can take a while).
    pub agent_timeout: Duration,
    /// Unix socket of the admin API, `GET /status` and `GET /health`
    /// (`ESB_GATEWAY_ADMIN_SOCKET`, default none): created with mode 0600, a stale socket
    /// file replaced, removed on shutdown.
    pub admin_socket: Option<PathBuf>,
    /// Unix socket of the box's join exchange (`ESB_CLUSTER_SOCKET`): `/esb/v1/nodes/…`
    /// on the public port is forwarded there (compute nodes join through the one public
    /// port). Unset: those paths are 404.
    pub cluster_socket: Option<PathBuf>,
}

fn redact(s: &str) -> &'static str {
    if s.is_empty() {
        "<unset>"
    } else {
        "<redacted>"
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("internal_listen", &self.internal_listen)
            .field("internal_netns", &self.internal_netns)
            .field("internal_url", &self.internal_url)
            .field("data_dir", &self.data_dir)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("extra_sans", &self.extra_sans)
            .field("jwt_secret", &redact(&self.jwt_secret))
            .field("api_key", &redact(&self.api_key))
            .field("auth_user", &self.auth_user)
            .field("auth_pass", &redact(&self.auth_pass))
            .field("auth_paths", &self.auth_paths)
            .field("log_level", &self.log_level)
            .field("jwt_expires", &self.jwt_expires)
            .field("invoke_timeout", &self.invoke_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_recovery", &self.breaker_recovery)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("orphan_grace", &self.orphan_grace)
            .field("pool_acquire_timeout", &self.pool_acquire_timeout)
            .field("default_concurrency", &self.default_concurrency)
            .field("container_pause", &self.container_pause)
            .field("pause_idle", &self.pause_idle)
            .field("victorialogs_url", &self.victorialogs_url)
            .field("iam_file", &self.iam_file)
            .field("log_stderr", &self.log_stderr)
            .field("access_key", &self.access_key)
            .field("secret_key", &redact(&self.secret_key))
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("agents", &self.agents)
            .field("agents_file", &self.agents_file)
            .field("stage", &self.stage)
            .field("event_queue_len", &self.event_queue_len)
            .field("event_queue_bytes", &self.event_queue_bytes)
            .field("event_retry_delay", &self.event_retry_delay)
            .field("max_body", &self.max_body)
            .field("drain_timeout", &self.drain_timeout)
            .field("agent_timeout", &self.agent_timeout)
            .field("admin_socket", &self.admin_socket)
            .field("cluster_socket", &self.cluster_socket)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:443".parse().unwrap(),
            internal_listen: Some("10.88.0.1:443".parse().unwrap()),
            internal_netns: Some("esb-node".into()),
            internal_url: "https://10.88.0.1:443".into(),
            data_dir: "/var/lib/esb/gateway".into(),
            cert_path: None,
            key_path: None,
            extra_sans: Vec::new(),
            jwt_secret: String::new(),
            api_key: String::new(),
            auth_user: String::new(),
            auth_pass: String::new(),
            auth_paths: vec!["/user/auth/v1".into(), "/user/auth/ver1.0".into()],
            log_level: None,
            jwt_expires: Duration::from_secs(3600),
            invoke_timeout: Duration::from_secs(900),
            breaker_threshold: 5,
            breaker_recovery: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            heartbeat: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(60),
            pool_acquire_timeout: Duration::from_secs(10),
            default_concurrency: 10,
            container_pause: false,
            pause_idle: Duration::from_secs(30),
            victorialogs_url: None,
            iam_file: None,
            log_stderr: true,
            access_key: String::new(),
            secret_key: String::new(),
            region: "ap-northeast-1".into(),
            account_id: "000000000000".into(),
            agents: vec![AgentAddr {
                node_id: "node-0".into(),
                endpoint: "unix:/run/esb/agent.sock".into(),
                netns: Some("esb-node".into()),
                ..AgentAddr::default()
            }],
            agents_file: None,
            stage: "Prod".into(),
            event_queue_len: 1000,
            event_queue_bytes: 64 << 20,
            event_retry_delay: Duration::from_millis(1000),
            max_body: 10 << 20,
            drain_timeout: Duration::from_secs(30),
            http_limits: esb_serve::Limits {
                max_connections: GATEWAY_MAX_CONNECTIONS,
                ..esb_serve::Limits::new("gateway")
            },
            agent_timeout: Duration::from_secs(60),
            admin_socket: None,
            cluster_socket: None,
        }
    }
}

/// The default of every setting the gateway reads from the environment whose default is
/// a value (secrets, paths and lists that default to "none" are left out), as the text a
/// user would write: what `esb config` shows for settings nobody set.
pub fn setting_defaults() -> Vec<(&'static str, String)> {
    let c = Config::default();
    let secs = |d: Duration| {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{}", s as u64)
        } else {
            format!("{s}")
        }
    };
    vec![
        ("AUTH_ENDPOINT_PATH", c.auth_paths.join(",")),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", secs(c.breaker_recovery)),
        ("CIRCUIT_BREAKER_THRESHOLD", c.breaker_threshold.to_string()),
        ("ESB_ACCOUNT_ID", c.account_id.clone()),
        ("ESB_AGENT_TIMEOUT", secs(c.agent_timeout)),
        ("ESB_API_STAGE", c.stage.clone()),
        (
            "ESB_CONTAINER_PAUSE",
            if c.container_pause { "1" } else { "0" }.to_string(),
        ),
        ("ESB_DEFAULT_CONCURRENCY", c.default_concurrency.to_string()),
        ("ESB_DRAIN_SECONDS", secs(c.drain_timeout)),
        ("ESB_EVENT_QUEUE", c.event_queue_len.to_string()),
        ("ESB_EVENT_QUEUE_BYTES", c.event_queue_bytes.to_string()),
        (
            "ESB_EVENT_RETRY_DELAY_MS",
            c.event_retry_delay.as_millis().to_string(),
        ),
        ("ESB_MAX_BODY_BYTES", c.max_body.to_string()),
        ("ESB_PAUSE_IDLE_SECONDS", secs(c.pause_idle)),
        ("GATEWAY_IDLE_TIMEOUT_SECONDS", secs(c.idle_timeout)),
        ("HEARTBEAT_INTERVAL", secs(c.heartbeat)),
        ("JWT_EXPIRES_DELTA", secs(c.jwt_expires)),
        ("LAMBDA_INVOKE_TIMEOUT", secs(c.invoke_timeout)),
        ("LOG_LEVEL", c.log_level.clone().unwrap_or_default()),
        ("ORPHAN_GRACE_PERIOD_SECONDS", secs(c.orphan_grace)),
        ("POOL_ACQUIRE_TIMEOUT", secs(c.pool_acquire_timeout)),
    ]
}

impl Config {
    /// How long a warm worker stays idle before it is paused: `None` when pausing is off
    /// ([`Config::container_pause`] unset, or [`Config::pause_idle`] 0).
    pub fn pause_after(&self) -> Option<Duration> {
        (self.container_pause && !self.pause_idle.is_zero()).then_some(self.pause_idle)
    }

    /// Reads the settings from the process environment over the defaults.
    pub fn from_env() -> anyhow::Result<Config> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] with a custom lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut c = Config::default();
        let secs = |k: &str, d: Duration| -> anyhow::Result<Duration> {
            match var(k) {
                None => Ok(d),
                Some(v) => {
                    let s: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .with_context(|| format!("{k}={v:?} is not a number of seconds"))?;
                    Ok(Duration::from_secs_f64(s))
                }
            }
        };
        let num = |k: &str, d: u64| -> anyhow::Result<u64> {
            match var(k) {
                None => Ok(d),
                Some(v) => v
                    .parse()
                    .with_context(|| format!("{k}={v:?} is not a number")),
            }
        };
        if let Some(v) = var("ESB_GATEWAY_LISTEN") {
            c.listen = v
                .parse()
                .with_context(|| format!("ESB_GATEWAY_LISTEN={v:?}"))?;
        }
        if let Some(v) = var("GATEWAY_INTERNAL_URL") {
            c.internal_listen = Some(internal_addr(&v)?);
            c.internal_url = v;
        }
        if let Some(v) = get("ESB_GATEWAY_INTERNAL_NETNS") {
            c.internal_netns = Some(v.trim().to_string()).filter(|s| !s.is_empty());
        }
        if let Some(v) = var("ESB_GATEWAY_DATA_DIR") {
            c.data_dir = v.into();
        }
        c.cert_path = var("SSL_CERT_PATH").map(Into::into);
        c.key_path = var("SSL_KEY_PATH").map(Into::into);
        if let Some(v) = var("ESB_GATEWAY_SANS") {
            c.extra_sans = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        c.jwt_secret = get("JWT_SECRET_KEY").unwrap_or_default();
        c.api_key = get("X_API_KEY").unwrap_or_default();
        c.auth_user = get("AUTH_USER").unwrap_or_default();
        c.auth_pass = get("AUTH_PASS").unwrap_or_default();
        if let Some(v) = var("AUTH_ENDPOINT_PATH") {
            c.auth_paths = vec![v];
        }
        if let Some(v) = var("LOG_LEVEL") {
            c.log_level = Some(log_level(&v).with_context(|| format!("LOG_LEVEL={v:?}"))?);
        }
        c.jwt_expires = secs("JWT_EXPIRES_DELTA", c.jwt_expires)?;
        c.invoke_timeout = secs("LAMBDA_INVOKE_TIMEOUT", c.invoke_timeout)?;
        c.breaker_threshold = num("CIRCUIT_BREAKER_THRESHOLD", c.breaker_threshold.into())? as u32;
        c.breaker_recovery = secs("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", c.breaker_recovery)?;
        c.idle_timeout = secs("GATEWAY_IDLE_TIMEOUT_SECONDS", c.idle_timeout)?;
        c.heartbeat = secs("HEARTBEAT_INTERVAL", c.heartbeat)?;
        c.orphan_grace = secs("ORPHAN_GRACE_PERIOD_SECONDS", c.orphan_grace)?;
        c.pool_acquire_timeout = secs("POOL_ACQUIRE_TIMEOUT", c.pool_acquire_timeout)?;
        c.default_concurrency =
            num("ESB_DEFAULT_CONCURRENCY", c.default_concurrency.into())? as u32;
        if let Some(v) = var("ESB_CONTAINER_PAUSE") {
            c.container_pause = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => bail!("ESB_CONTAINER_PAUSE={v:?} is not a boolean (1/0, true/false)"),
            };
        }
        c.pause_idle = secs("ESB_PAUSE_IDLE_SECONDS", c.pause_idle)?;
        c.victorialogs_url = var("VICTORIALOGS_URL");
        c.iam_file = var("ESB_IAM_FILE").map(Into::into);
        if let Some(v) = var("ESB_GATEWAY_LOG_STDERR") {
            c.log_stderr = !matches!(v.as_str(), "0" | "false" | "no");
        }
        c.access_key = get("ESB_ACCESS_KEY_ID").unwrap_or_default();
        c.secret_key = get("ESB_SECRET_ACCESS_KEY").unwrap_or_default();
        if let Some(v) = var("ESB_REGION") {
            c.region = v;
        }
        if let Some(v) = var("ESB_ACCOUNT_ID") {
            c.account_id = v;
        }
        c.agents_file = var("ESB_AGENTS_FILE").map(Into::into);
        match get("ESB_AGENTS") {
            Some(v) if !v.trim().is_empty() => {
                c.agents = v
                    .split(';')
                    .filter(|s| !s.trim().is_empty())
                    .enumerate()
                    .map(|(i, s)| AgentAddr::parse(s.trim(), i))
                    .collect::<anyhow::Result<_>>()?;
            }
            // Set but empty, with a file: the file's agents only (a control node without
            // workers of its own, whose compute nodes join later).
            Some(_) if c.agents_file.is_some() => c.agents.clear(),
            _ => {}
        }
        if let Some(v) = var("ESB_API_STAGE") {
            c.stage = v;
        }
        c.event_queue_len = num("ESB_EVENT_QUEUE", c.event_queue_len as u64)? as usize;
        c.event_queue_bytes = num("ESB_EVENT_QUEUE_BYTES", c.event_queue_bytes as u64)? as usize;
        c.event_retry_delay = Duration::from_millis(num(
            "ESB_EVENT_RETRY_DELAY_MS",
            c.event_retry_delay.as_millis() as u64,
        )?);
        c.max_body = num("ESB_MAX_BODY_BYTES", c.max_body as u64)? as usize;
        c.drain_timeout = secs("ESB_DRAIN_SECONDS", c.drain_timeout)?;
        c.http_limits =
            esb_serve::Limits::from_lookup("gateway", &get).map_err(anyhow::Error::msg)?;
        if var("ESB_HTTP_MAX_CONNECTIONS").is_none() {
            c.http_limits.max_connections = GATEWAY_MAX_CONNECTIONS;
        }
        c.agent_timeout = secs("ESB_AGENT_TIMEOUT", c.agent_timeout)?;
        c.admin_socket = var("ESB_GATEWAY_ADMIN_SOCKET").map(Into::into);
        c.cluster_socket = var("ESB_CLUSTER_SOCKET").map(Into::into);
        Ok(c)
    }

    /// Every agent: [`Config::agents`] then the lines of [`Config::agents_file`] (read
    /// now), checked with [`check_agents`]. What the gateway starts with, and what
    /// `esb gateway` hands to [`crate::Reloader::reload_agents`] on SIGHUP.
    /// The list may be empty only with an agents file (nodes that join later).
    pub fn agent_list(&self) -> anyhow::Result<Vec<AgentAddr>> {
        let mut all = self.agents.clone();
        match &self.agents_file {
            Some(f) => all.extend(read_agents_file(f)?),
            None if all.is_empty() => bail!("at least one agent is needed (ESB_AGENTS)"),
            None => {}
        }
        check_agents(&all)?;
        Ok(all)
    }

    /// Checks the settings that must hold before serving.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.jwt_secret.len() < MIN_JWT_SECRET {
            bail!(
                "JWT_SECRET_KEY must be at least {MIN_JWT_SECRET} bytes (it has {})",
                self.jwt_secret.len()
            );
        }
        if self.api_key.is_empty() {
            bail!("X_API_KEY must be set");
        }
        if self.auth_user.is_empty() || self.auth_pass.is_empty() {
            bail!("AUTH_USER and AUTH_PASS must be set");
        }
        if self.auth_paths.iter().any(|p| !p.starts_with('/')) {
            bail!("AUTH_ENDPOINT_PATH must start with '/'");
        }
        if self.access_key.is_empty() || self.secret_key.is_empty() {
            bail!("ESB_ACCESS_KEY_ID and ESB_SECRET_ACCESS_KEY must be set");
        }
        if self.agents.is_empty() && self.agents_file.is_none() {
            bail!("at least one agent is needed (ESB_AGENTS)");
        }
        if self.cert_path.is_some() != self.key_path.is_some() {
            bail!("SSL_CERT_PATH and SSL_KEY_PATH go together");
        }
        if self.breaker_threshold == 0 {
            bail!("CIRCUIT_BREAKER_THRESHOLD must be at least 1");
        }
        if self.heartbeat.is_zero() {
            bail!("HEARTBEAT_INTERVAL must be positive");
        }
        if self.event_queue_len == 0 {
            bail!("ESB_EVENT_QUEUE must be at least 1");
        }
        if let Some(p) = &self.admin_socket {
            if p.file_name().is_none() {
                bail!("ESB_GATEWAY_ADMIN_SOCKET={p:?} is not a file path");
            }
        }
        Ok(())
    }
}

/// `https://10.88.0.1:443` -> `10.88.0.1:443`.
/// A log level as Lambda names them (`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL`);
/// Python's `WARNING` and `CRITICAL` are taken too. Returns the Lambda name.
pub fn log_level(v: &str) -> anyhow::Result<String> {
    Ok(match v.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "TRACE",
        "DEBUG" => "DEBUG",
        "INFO" => "INFO",
        "WARN" | "WARNING" => "WARN",
        "ERROR" => "ERROR",
        "FATAL" | "CRITICAL" => "FATAL",
        _ => bail!("not a log level (TRACE, DEBUG, INFO, WARN, ERROR or FATAL)"),
    }
    .to_string())
}

fn internal_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("GATEWAY_INTERNAL_URL={url:?} must be https://IP:PORT"))?;
    let host = rest.trim_end_matches('/');
    let with_port = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:443")
    };
    with_port
        .parse()
        .with_context(|| format!("GATEWAY_INTERNAL_URL={url:?} must be https://IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        let env = [
            ("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef"),
            ("X_API_KEY", "k"),
            ("AUTH_USER", "u"),
            ("AUTH_PASS", "p"),
            ("ESB_ACCESS_KEY_ID", "a"),
            ("ESB_SECRET_ACCESS_KEY", "s"),
            ("CIRCUIT_BREAKER_THRESHOLD", "3"),
            ("POOL_ACQUIRE_TIMEOUT", "2.5"),
            ("GATEWAY_INTERNAL_URL", "https://127.0.0.1:8443"),
            ("ESB_GATEWAY_ADMIN_SOCKET", "/run/esb/gateway.sock"),
            (
                "ESB_AGENTS",
                "http://127.0.0.1:1,node=a;unix:/x.sock,netns=esb-node,max=4",
            ),
        ];
        let c = Config::from_lookup(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.breaker_threshold, 3);
        assert_eq!(c.pool_acquire_timeout, Duration::from_millis(2500));
        assert_eq!(c.internal_listen, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(c.agents.len(), 2);
        assert_eq!(c.agents[0].node_id, "a");
        assert_eq!(c.agents[1].netns.as_deref(), Some("esb-node"));
        assert_eq!(c.agents[1].max_workers, 4);
        assert_eq!(
            c.admin_socket.as_deref(),
            Some(std::path::Path::new("/run/esb/gateway.sock"))
        );
        assert_eq!(Config::default().admin_socket, None);
        let shown = format!("{c:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("jwt_secret: \"<redacted>\""), "{shown}");
    }

    #[test]
    fn container_pause_settings() {
        let get = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d = Config::default();
        assert!(!d.container_pause);
        assert_eq!(d.pause_idle, Duration::from_secs(30));
        assert_eq!(d.pause_after(), None);
        let c = Config::from_lookup(get(&[
            ("ESB_CONTAINER_PAUSE", "true"),
            ("ESB_PAUSE_IDLE_SECONDS", "2.5"),
        ]))
        .unwrap();
        assert_eq!(c.pause_after(), Some(Duration::from_millis(2500)));
        let on = Config::from_lookup(get(&[("ESB_CONTAINER_PAUSE", "1")])).unwrap();
        assert_eq!(on.pause_after(), Some(Duration::from_secs(30)));
        // 0 s turns it off, as upstream.
        let zero = Config::from_lookup(get(&[
            ("ESB_CONTAINER_PAUSE", "1"),
            ("ESB_PAUSE_IDLE_SECONDS", "0"),
        ]))
        .unwrap();
        assert_eq!(zero.pause_after(), None);
        let e = Config::from_lookup(get(&[("ESB_CONTAINER_PAUSE", "perhaps")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ESB_CONTAINER_PAUSE"), "{e}");
        let e = format!(
            "{:#}",
            Config::from_lookup(get(&[("ESB_PAUSE_IDLE_SECONDS", "-1")])).unwrap_err()
        );
        assert!(e.contains("ESB_PAUSE_IDLE_SECONDS"), "{e}");
        let defaults = setting_defaults();
        let shown = |k: &str| defaults.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(shown("ESB_CONTAINER_PAUSE"), "0");
        assert_eq!(shown("ESB_PAUSE_IDLE_SECONDS"), "30");
    }

    #[test]
    fn short_secret_refused() {
        let c = Config {
            jwt_secret: "short".into(),
            api_key: "k".into(),
            auth_user: "u".into(),
            auth_pass: "p".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("JWT_SECRET_KEY"), "{e}");
        assert!(Config::from_lookup(|k| (k == "HEARTBEAT_INTERVAL").then(|| "x".into())).is_err());
        assert!(AgentAddr::parse("tcp://x", 0).is_err());
    }

    #[test]
    fn agent_specs_with_tls_and_memory() {
        let a = AgentAddr::parse(
            "https://10.99.0.2:50051,netns=esb-wg,node=n2,max=8,mem=4096,ca=/t/ca.pem,cert=/t/gw.pem,key=/t/gw.key",
            3,
        )
        .unwrap();
        assert_eq!(
            a,
            AgentAddr {
                node_id: "n2".into(),
                endpoint: "https://10.99.0.2:50051".into(),
                netns: Some("esb-wg".into()),
                max_workers: 8,
                max_memory_mb: 4096,
                ca: Some("/t/ca.pem".into()),
                cert: Some("/t/gw.pem".into()),
                key: Some("/t/gw.key".into()),
            }
        );
        assert_eq!(
            a.tls_addr().unwrap(),
            Some("10.99.0.2:50051".parse().unwrap())
        );
        let m = AgentAddr::parse("unix:/x.sock,mem=512", 3).unwrap();
        assert_eq!((m.node_id.as_str(), m.max_memory_mb), ("node-3", 512));
        assert_eq!(m.tls_addr().unwrap(), None);
        let v6 = AgentAddr::parse("https://[fd00::2]:7000,ca=/ca.pem", 0).unwrap();
        assert!(v6.tls_addr().unwrap().unwrap().is_ipv6());
        let err = |spec: &str| format!("{:#}", AgentAddr::parse(spec, 0).unwrap_err());
        assert!(err("https://10.0.0.1:1").contains("ca="), "no CA");
        assert!(err("https://agent.example:1,ca=/c").contains("https://IP:PORT"));
        assert!(err("https://10.0.0.1,ca=/c").contains("https://IP:PORT"));
        assert!(err("https://10.0.0.1:1,ca=/c,cert=/x").contains("go together"));
        assert!(err("http://10.0.0.1:1,ca=/c").contains("https:// agents only"));
        assert!(err("unix:/x,key=/k").contains("https:// agents only"));
        assert!(err("unix:/x,mem=lots").contains("mem="));
        assert!(err("unix:/x,ca=").contains("empty path"));
        assert!(err("unix:/x,netns=a/b").contains("netns"));
        assert!(err("unix:/x,node=").contains("node id"));
    }

    #[test]
    fn agents_file_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agents");
        let mut c = Config {
            agents_file: Some(file.clone()),
            ..Config::default()
        };
        // A missing file is an empty list.
        assert_eq!(c.agent_list().unwrap(), c.agents);
        std::fs::write(
            &file,
            "# compute nodes\n\n  http://10.99.0.3:50051 \nhttps://10.99.0.2:50051,node=n2,ca=/ca.pem # wg\n",
        )
        .unwrap();
        let from_file = read_agents_file(&file).unwrap();
        assert_eq!(from_file.len(), 2);
        // Without node=, the endpoint is the node id (stable across edits of the file).
        assert_eq!(from_file[0].node_id, "http://10.99.0.3:50051");
        assert_eq!(from_file[1].node_id, "n2");
        let all = c.agent_list().unwrap();
        assert_eq!(
            all.iter().map(|a| a.node_id.as_str()).collect::<Vec<_>>(),
            ["node-0", "http://10.99.0.3:50051", "n2"]
        );
        // Errors name the line; duplicate node ids are refused.
        std::fs::write(&file, "http://10.99.0.3:1\nbogus\n").unwrap();
        let e = format!("{:#}", c.agent_list().unwrap_err());
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&file, "http://10.99.0.3:1,node=node-0\n").unwrap();
        let e = format!("{:#}", c.agent_list().unwrap_err());
        assert!(e.contains("two agents have the node id \"node-0\""), "{e}");
        assert!(check_agents(&[]).is_ok());
        // ESB_AGENTS_FILE from the environment.
        let env =
            Config::from_lookup(|k| (k == "ESB_AGENTS_FILE").then(|| file.display().to_string()))
                .unwrap();
        assert_eq!(env.agents_file.as_deref(), Some(file.as_path()));
        // Only the file's agents, none yet: valid (nodes join later); without a file, not.
        c.agents.clear();
        std::fs::write(&file, "").unwrap();
        assert_eq!(c.agent_list().unwrap(), []);
        c.agents_file = None;
        assert!(c.agent_list().is_err());
        assert!(c.validate().is_err());
        // ESB_AGENTS set but empty: no agent of its own when there is a file (a control
        // node without local workers), the default otherwise.
        let lookup = |file: bool| {
            let file = file.then(|| file_path(&dir));
            move |k: &str| match k {
                "ESB_AGENTS" => Some(String::new()),
                "ESB_AGENTS_FILE" => file.clone(),
                _ => None,
            }
        };
        fn file_path(dir: &tempfile::TempDir) -> String {
            dir.path().join("agents").display().to_string()
        }
        assert!(Config::from_lookup(lookup(true)).unwrap().agents.is_empty());
        assert_eq!(
            Config::from_lookup(lookup(false)).unwrap().agents,
            Config::default().agents
        );
    }
}
