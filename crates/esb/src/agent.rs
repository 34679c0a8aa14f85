//! `esb agent`: the agent in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use esb_agent::service::{serve, Listen};
use esb_agent::{Agent, AgentConfig};

use crate::settings::{BoxArgs, NodeArgs, StateArgs};

/// Arguments of `esb agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Unix socket to serve on (default STATE_DIR/agent.sock).
    #[arg(long, env = "ESB_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also serve on this TCP address (keep it local to the control side).
    #[arg(long, env = "ESB_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// containerd's socket (default: the box's private instance, STATE_DIR/containerd/containerd.sock).
    #[arg(long, env = "ESB_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// This compute node's id.
    #[arg(long, env = "ESB_NODE_ID", default_value = "node-1")]
    pub node_id: String,
    /// Seconds a new worker may take to accept connections.
    #[arg(long, env = "READINESS_TIMEOUT", default_value_t = 30)]
    pub readiness_timeout: u64,
    /// Memory of workers whose function names none (MiB).
    #[arg(long, env = "ESB_DEFAULT_MEMORY_MB", default_value_t = 128)]
    pub default_memory_mb: u32,
    /// The box CA file to mount in workers (default STATE_DIR/tls/ca.pem when it exists).
    #[arg(long, env = "ESB_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// containerd's hosts directory: images the node lacks are pulled from registries
    /// configured here (`HOST/hosts.toml`; default STATE_DIR/containerd/certs.d).
    #[arg(long, env = "ESB_REGISTRY_HOSTS_DIR")]
    pub registry_hosts_dir: Option<PathBuf>,
    /// Network namespace to reach registries from (the control namespace on the control
    /// machine, the runtime-node namespace on a compute node).
    #[arg(long, env = "ESB_REGISTRY_NETNS")]
    pub registry_netns: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub box_args: BoxArgs,
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub fn run(state: &StateArgs, a: &AgentArgs) -> Result<()> {
    let node = a.node.node_config(state);
    let socket = a
        .containerd_socket
        .clone()
        .unwrap_or_else(|| state.state_dir.join("containerd/containerd.sock"));
    let mut cfg = AgentConfig::with_defaults(state.state_dir.join("agent"), node.clone(), socket);
    cfg.node_id = a.node_id.clone();
    cfg.readiness_timeout = Duration::from_secs(a.readiness_timeout.max(1));
    cfg.default_memory_mb = a.default_memory_mb;
    cfg.box_env = a.box_args.worker_env(node.gateway_ip, a.node.dnat_db_dport);
    cfg.ca_file = a
        .ca_file
        .clone()
        .or_else(|| Some(state.state_dir.join("tls/ca.pem")).filter(|p| p.exists()));
    cfg.pull = Some(esb_agent::PullConfig {
        hosts_dir: a
            .registry_hosts_dir
            .clone()
            .unwrap_or_else(|| state.state_dir.join("containerd/certs.d")),
        netns: a.registry_netns.clone().filter(|n| !n.is_empty()),
        work_dir: state.state_dir.join("agent"),
    });
    let listen = Listen {
        unix: Some(
            a.socket
                .clone()
                .unwrap_or_else(|| state.state_dir.join("agent.sock")),
        ),
        tcp: a.listen,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::connect(cfg).await.context("start the agent")?;
        let report = agent.reconcile().await.context("reconcile leftovers")?;
        tracing::info!(kept = report.kept.len(), removed_containers = ?report.removed_containers,
            removed_attachments = ?report.removed_attachments, "reconciled");
        tracing::info!(socket = ?listen.unix, tcp = ?listen.tcp, "agent serving esb.agent.v1");
        serve(agent, listen, shutdown_signal()).await
    })
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
