//! Settings shared by several commands: flags, each with its environment variable
//! (flags > environment > defaults). Names follow the seed's.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use esb_local_proxy::{Backend, ProxyConfig, Route};
use esb_runtime_node::{DnatConfig, DnatTarget, NodeConfig};
use ipnet::Ipv4Net;

/// Where the box keeps its state.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// State directory of the box.
    #[arg(
        long,
        env = "ESB_STATE_DIR",
        default_value = "/var/lib/esb",
        global = true
    )]
    pub state_dir: PathBuf,
}

impl StateArgs {
    /// The hosts file the local proxy resolves backend names with first.
    pub fn hosts_file(&self) -> PathBuf {
        esb_box::layout::hosts_file(&self.state_dir)
    }
    /// Where background components write their logs.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// The `esb` executable: components run as its subcommands.
pub fn esb_exe() -> Result<PathBuf> {
    use anyhow::Context;
    std::env::current_exe().context("locate the esb executable")
}

/// The containerd program (`ESB_CONTAINERD`, default `containerd` on the PATH).
pub fn containerd_program() -> PathBuf {
    PathBuf::from(std::env::var("ESB_CONTAINERD").unwrap_or_else(|_| "containerd".into()))
}

/// The box's private containerd at `state`.
pub fn private_containerd(state: &StateArgs) -> esb_box::containerd::PrivateContainerd {
    esb_box::containerd::PrivateContainerd::of(&state.state_dir, containerd_program())
}

/// The control side's namespace (system.md §4).
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// The control network namespace: it holds 10.99.0.1 and the relays to the box's
    /// services on this host (the registry's 10.99.0.1:5010).
    #[arg(
        long,
        env = "ESB_CONTROL_NETNS",
        default_value = esb_runtime_node::DEFAULT_CONTROL_NETNS
    )]
    pub control_netns: String,
}

impl ControlArgs {
    /// The control network (name checked).
    pub fn network(&self) -> Result<esb_runtime_node::ControlNetwork> {
        Ok(esb_runtime_node::ControlNetwork::new(&self.control_netns)?)
    }
}

/// An IPv4 address that may be empty ("" = no rule), as the seed's DNAT_*_IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalIp(pub Option<Ipv4Addr>);

fn parse_optional_ip(s: &str) -> Result<OptionalIp, String> {
    if s.trim().is_empty() {
        return Ok(OptionalIp(None));
    }
    s.trim()
        .parse()
        .map(|ip| OptionalIp(Some(ip)))
        .map_err(|_| format!("{s:?} is not an IPv4 address (leave it empty for no rule)"))
}

pub fn parse_bool01(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{s:?} is not 0 or 1")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

/// The runtime-node's network settings.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Name of the node network namespace.
    #[arg(long = "netns", env = "ESB_NODE_NETNS", default_value = esb_runtime_node::DEFAULT_NETNS)]
    pub netns: String,
    /// Gateway address of the bridge, the one workers use for every service.
    #[arg(long, env = "CNI_GW_IP", default_value = "10.88.0.1")]
    pub cni_gw_ip: Ipv4Addr,
    /// Base subnet of the bridge, shared by every node.
    #[arg(long, env = "CNI_BASE_SUBNET", default_value = esb_runtime_node::DEFAULT_BASE_SUBNET)]
    pub cni_base_subnet: Ipv4Net,
    /// This node's worker addresses (inside the base subnet).
    #[arg(long, env = "CNI_SUBNET", default_value = esb_runtime_node::DEFAULT_WORKER_SUBNET)]
    pub cni_subnet: Ipv4Net,
    /// Directories holding the CNI plugins (colon-separated).
    #[arg(long, env = "CNI_PATH", default_value = "/usr/lib/cni:/opt/cni/bin")]
    pub cni_path: String,
    /// NAT target of the S3 port 9000 ("" = no rule).
    #[arg(long, env = "DNAT_S3_IP", default_value = "127.0.0.1", value_parser = parse_optional_ip)]
    pub dnat_s3_ip: OptionalIp,
    /// NAT target of the DynamoDB port ("" = no rule).
    #[arg(long, env = "DNAT_DB_IP", default_value = "127.0.0.1", value_parser = parse_optional_ip)]
    pub dnat_db_ip: OptionalIp,
    /// NAT target of the log store port 9428 ("" = no rule).
    #[arg(long, env = "DNAT_VL_IP", default_value = "127.0.0.1", value_parser = parse_optional_ip)]
    pub dnat_vl_ip: OptionalIp,
    /// DynamoDB port behind the NAT: the seed's default is 8000 (the database itself);
    /// with a loopback `DNAT_DB_IP` (the local proxy, as in a box) the default is the
    /// proxy's DynamoDB port, 8001.
    #[arg(long, env = "DNAT_DB_PORT", value_parser = parse_port)]
    pub dnat_db_port: Option<u16>,
    /// DynamoDB port that workers dial on the gateway address.
    #[arg(long, env = "DNAT_DB_DPORT", default_value = "8001", value_parser = parse_port)]
    pub dnat_db_dport: u16,
    /// Also NAT traffic that starts inside the node namespace (1 or 0).
    #[arg(long, env = "DNAT_APPLY_OUTPUT", default_value = "1", value_parser = parse_bool01)]
    pub dnat_apply_output: bool,
}

impl NodeArgs {
    /// The node's settings (not yet validated).
    pub fn node_config(&self, state: &StateArgs) -> NodeConfig {
        let mut cfg = NodeConfig::with_defaults(state.state_dir.join("node").join(&self.netns));
        cfg.netns = self.netns.clone();
        cfg.gateway_ip = self.cni_gw_ip;
        cfg.base_subnet = self.cni_base_subnet;
        cfg.worker_subnet = self.cni_subnet;
        cfg.cni_bin_dirs = std::env::split_paths(&self.cni_path).collect();
        let db_port = |ip: Ipv4Addr| {
            self.dnat_db_port
                .unwrap_or(if ip.is_loopback() { 8001 } else { 8000 })
        };
        cfg.dnat = DnatConfig {
            s3: self.dnat_s3_ip.0.map(|ip| DnatTarget {
                dport: 9000,
                ip,
                port: 9000,
            }),
            db: self.dnat_db_ip.0.map(|ip| DnatTarget {
                dport: self.dnat_db_dport,
                ip,
                port: db_port(ip),
            }),
            logs: self.dnat_vl_ip.0.map(|ip| DnatTarget {
                dport: 9428,
                ip,
                port: 9428,
            }),
            apply_output: self.dnat_apply_output,
        };
        cfg
    }
}

/// The local proxy's backends and limits.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Backend of the S3 route, HOST:PORT (a name is resolved per connection).
    #[arg(long, env = "ESB_S3_BACKEND", default_value = esb_local_proxy::DEFAULT_S3_BACKEND)]
    pub s3_backend: String,
    /// Backend of the DynamoDB route.
    #[arg(long, env = "ESB_DB_BACKEND", default_value = esb_local_proxy::DEFAULT_DB_BACKEND)]
    pub db_backend: String,
    /// Backend of the log store route.
    #[arg(long, env = "ESB_LOGS_BACKEND", default_value = esb_local_proxy::DEFAULT_LOGS_BACKEND)]
    pub logs_backend: String,
    /// Hosts file consulted before DNS (default: STATE_DIR/hosts).
    #[arg(long, env = "ESB_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,
    /// Connections open at once through the proxy.
    #[arg(long, env = "ESB_PROXY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections open at once from one worker (source address).
    #[arg(long, env = "ESB_PROXY_MAX_PER_SOURCE", default_value_t = 256)]
    pub max_per_source: usize,
    /// Seconds without traffic after which a proxied connection is closed.
    #[arg(long, env = "ESB_PROXY_IDLE_TIMEOUT", default_value_t = 30)]
    pub idle_timeout: u64,
    /// Seconds to wait for a backend connection.
    #[arg(long, env = "ESB_PROXY_CONNECT_TIMEOUT", default_value_t = 5)]
    pub connect_timeout: u64,
    /// A proxied connection moving fewer than ESB_PROXY_MIN_PROGRESS_BYTES in a window of
    /// this many seconds is closed (a trickle cannot hold a connection).
    #[arg(long, env = "ESB_PROXY_PROGRESS_WINDOW", default_value_t = 60)]
    pub progress_window: u64,
    /// Bytes a proxied connection must move per progress window.
    #[arg(long, env = "ESB_PROXY_MIN_PROGRESS_BYTES", default_value_t = 1024)]
    pub min_progress_bytes: u64,
    /// Namespace to dial backends from (a compute node's node namespace, where wg0 is).
    #[arg(long, env = "ESB_PROXY_DIAL_NETNS")]
    pub dial_netns: Option<String>,
}

impl ProxyArgs {
    /// The proxy's settings: one route per port, listening on `listen` in `netns`.
    pub fn proxy_config(
        &self,
        state: &StateArgs,
        netns: Option<String>,
        listen: IpAddr,
        ports: [u16; 3],
    ) -> Result<ProxyConfig> {
        let backends = [
            ("s3", "ESB_S3_BACKEND", &self.s3_backend),
            ("db", "ESB_DB_BACKEND", &self.db_backend),
            ("logs", "ESB_LOGS_BACKEND", &self.logs_backend),
        ];
        let mut routes = Vec::new();
        for ((name, setting, value), port) in backends.into_iter().zip(ports) {
            routes.push(Route {
                name: name.to_string(),
                listen: (listen, port).into(),
                backend: Backend::parse(setting, value)?,
            });
        }
        if self.max_connections == 0 {
            anyhow::bail!("ESB_PROXY_MAX_CONNECTIONS: must be at least 1");
        }
        if self.max_per_source == 0 {
            anyhow::bail!("ESB_PROXY_MAX_PER_SOURCE: must be at least 1");
        }
        Ok(ProxyConfig {
            routes,
            listen_netns: netns,
            hosts_file: Some(
                self.hosts_file
                    .clone()
                    .unwrap_or_else(|| state.hosts_file()),
            ),
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
            progress_window: Duration::from_secs(self.progress_window.max(1)),
            min_progress_bytes: self.min_progress_bytes,
            max_connections: self.max_connections,
            max_per_source: self.max_per_source,
            dial_netns: self.dial_netns.clone().filter(|n| !n.is_empty()),
            ..ProxyConfig::default()
        })
    }

    /// The arguments that reproduce these settings on an `esb proxy` command line.
    pub fn to_args(&self, state: &StateArgs) -> Vec<String> {
        let hosts = self
            .hosts_file
            .clone()
            .unwrap_or_else(|| state.hosts_file());
        let mut args = vec![
            format!("--s3-backend={}", self.s3_backend),
            format!("--db-backend={}", self.db_backend),
            format!("--logs-backend={}", self.logs_backend),
            format!("--hosts-file={}", hosts.display()),
            format!("--max-connections={}", self.max_connections),
            format!("--max-per-source={}", self.max_per_source),
            format!("--idle-timeout={}", self.idle_timeout),
            format!("--connect-timeout={}", self.connect_timeout),
            format!("--progress-window={}", self.progress_window),
            format!("--min-progress-bytes={}", self.min_progress_bytes),
        ];
        if let Some(n) = &self.dial_netns {
            args.push(format!("--dial-netns={n}"));
        }
        args
    }
}

/// The box's single credential pair and region (system.md §6), shared by S3, DynamoDB and
/// the Lambda Invoke API, and handed to workers.
#[derive(Debug, Clone, Args)]
pub struct Credentials {
    /// Access key of the box's credential pair.
    #[arg(long = "access-key", env = "ESB_ACCESS_KEY_ID")]
    pub access_key: Option<String>,
    /// Secret key of the box's credential pair.
    #[arg(
        long = "secret-key",
        env = "ESB_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Region reported to clients and functions.
    #[arg(long, env = "ESB_REGION", default_value = "ap-northeast-1")]
    pub region: String,
}

impl Credentials {
    /// Both keys, or an error naming the settings.
    pub fn pair(&self) -> anyhow::Result<(String, String)> {
        match (&self.access_key, &self.secret_key) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok((a.clone(), s.clone())),
            _ => anyhow::bail!(
                "ESB_ACCESS_KEY_ID and ESB_SECRET_ACCESS_KEY (or --access-key/--secret-key) must both be set"
            ),
        }
    }
}

/// Settings of the box as a whole that workers see (system.md §5, §6).
#[derive(Debug, Clone, Args)]
pub struct BoxArgs {
    #[command(flatten)]
    pub creds: Credentials,
    /// URL workers use for the Lambda Invoke API (chain invokes).
    #[arg(
        long,
        env = "GATEWAY_INTERNAL_URL",
        default_value = "https://10.88.0.1:443"
    )]
    pub gateway_internal_url: String,
    /// Where the gateway ships its logs (the seed's `VICTORIALOGS_URL`; default: the log
    /// store, `http://ESB_LOGSTORE_LISTEN`).
    #[arg(long, env = "VICTORIALOGS_URL")]
    pub victorialogs_url: Option<String>,
    /// URL workers ship their logs to (their `VICTORIALOGS_URL`).
    #[arg(
        long,
        env = "ESB_WORKER_LOGS_URL",
        default_value = "http://10.88.0.1:9428"
    )]
    pub worker_logs_url: String,
}

impl BoxArgs {
    /// The environment every worker gets, for endpoints at the gateway address `gw`.
    pub fn worker_env(
        &self,
        gw: Ipv4Addr,
        db_dport: u16,
    ) -> std::collections::BTreeMap<String, String> {
        let mut env = std::collections::BTreeMap::new();
        env.insert("AWS_ENDPOINT_URL_S3".into(), format!("http://{gw}:9000"));
        env.insert(
            "AWS_ENDPOINT_URL_DYNAMODB".into(),
            format!("http://{gw}:{db_dport}"),
        );
        env.insert(
            "AWS_ENDPOINT_URL_LAMBDA".into(),
            self.gateway_internal_url.clone(),
        );
        // Upstream ESB's name for the same URL.
        env.insert(
            "GATEWAY_INTERNAL_URL".into(),
            self.gateway_internal_url.clone(),
        );
        // The log store's CloudWatch Logs API, on the same port as the workers' log
        // shipping: the SDKs' own variable for the service ("CloudWatch Logs" →
        // CLOUDWATCH_LOGS, what boto3's `logs` client reads), and the shorter name upstream
        // ESB's functions read.
        env.insert(
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS".into(),
            self.worker_logs_url.clone(),
        );
        env.insert("AWS_ENDPOINT_URL_LOGS".into(), self.worker_logs_url.clone());
        env.insert("VICTORIALOGS_URL".into(), self.worker_logs_url.clone());
        env.insert("AWS_REGION".into(), self.creds.region.clone());
        env.insert("AWS_DEFAULT_REGION".into(), self.creds.region.clone());
        // No credentials: the box's own pair never enters a worker; each function gets
        // its own key from the gateway (docs/iam.md).
        env
    }
}

/// Arguments of `esb node join`.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The token from `esb node token` on the control node (none: restart this node).
    pub token: Option<String>,
    /// This node's id (default: the host name).
    #[arg(long, env = "ESB_NODE_ID")]
    pub node_id: Option<String>,
    /// WireGuard UDP port of this node.
    #[arg(long, env = "ESB_WG_PORT", default_value_t = 51820)]
    pub wg_port: u16,
    /// Memory the workers of this node may use (MiB; 0 = no limit).
    #[arg(long, env = "ESB_NODE_MAX_MEMORY_MB", default_value_t = 0)]
    pub max_memory_mb: u32,
    /// Stay in the foreground (for a service manager).
    #[arg(long)]
    pub foreground: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

impl JoinArgs {
    /// The compute node's settings for the (absolute) state directory `dir`.
    pub fn join_config(&self, dir: &std::path::Path) -> Result<esb_compute::JoinConfig> {
        Ok(esb_compute::JoinConfig {
            state: dir.to_path_buf(),
            node_id: self.node_id.clone(),
            wg_port: self.wg_port,
            max_memory_mb: self.max_memory_mb,
            node: self.node.node_config(&StateArgs {
                state_dir: dir.to_path_buf(),
            }),
            esb: esb_exe()?,
            containerd: containerd_program(),
        })
    }
}

/// Arguments of `esb node leave`.
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub node: NodeArgs,
}
