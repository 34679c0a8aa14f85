//! `esb agent`: the agent in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use esb_agent::service::{serve, Listen, TlsFiles};
use esb_agent::{Agent, AgentConfig};

use crate::settings::{BoxArgs, NodeArgs, StateArgs};

/// Arguments of `esb agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Unix socket to serve on (default STATE_DIR/agent.sock).
    #[arg(long, env = "ESB_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also serve on this TCP address: local to the control side, or a compute node's
    /// WireGuard address (with --listen-netns and the TLS flags).
    #[arg(long, env = "ESB_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Network namespace to bind the --listen address in (e.g. the one holding the node's
    /// WireGuard interface).
    #[arg(long, env = "ESB_AGENT_LISTEN_NETNS", value_name = "NAME")]
    pub listen_netns: Option<String>,
    /// Mutual TLS on --listen: the agent's certificate (PEM). Needs --tls-key and --client-ca.
    #[arg(long, env = "ESB_AGENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS on --listen: the certificate's private key (PEM).
    #[arg(long, env = "ESB_AGENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS on --listen: the CA whose certificates clients must present (the box
    /// CA); clients without one are refused during the handshake.
    #[arg(long, env = "ESB_AGENT_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
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
    /// Cap of a worker's console files (STATE/agent/workers/ID.log and its rotated .1), MiB.
    #[arg(long, env = "ESB_WORKER_CONSOLE_MAX_MB", default_value_t = 10)]
    pub worker_console_max_mb: u64,
    /// Memory of all workers of this node together (their parent cgroup), MiB; 0 = 75% of
    /// this machine's memory.
    #[arg(long, env = "ESB_WORKERS_MAX_MEMORY_MB", default_value_t = 0)]
    pub workers_max_memory_mb: u64,
    /// Processes of all workers of this node together (their parent cgroup).
    #[arg(long, env = "ESB_WORKERS_MAX_PIDS", default_value_t = esb_agent::DEFAULT_WORKERS_MAX_PIDS)]
    pub workers_max_pids: u64,
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

/// The TCP listener's namespace and mutual TLS from the flags: the three TLS files
/// together or none, and either only with --listen.
fn tcp_settings(a: &AgentArgs) -> Result<(Option<String>, Option<TlsFiles>)> {
    let given = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let tls = match (given(&a.tls_cert), given(&a.tls_key), given(&a.client_ca)) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "--tls-cert (ESB_AGENT_TLS_CERT)"),
                (key.is_none(), "--tls-key (ESB_AGENT_TLS_KEY)"),
                (ca.is_none(), "--client-ca (ESB_AGENT_CLIENT_CA)"),
            ]
            .into_iter()
            .filter_map(|(m, flag)| m.then_some(flag))
            .collect();
            anyhow::bail!(
                "mutual TLS needs --tls-cert, --tls-key and --client-ca together; missing {}",
                missing.join(", ")
            );
        }
    };
    let netns = a.listen_netns.clone().filter(|n| !n.is_empty());
    if a.listen.is_none() {
        if netns.is_some() {
            anyhow::bail!("--listen-netns (ESB_AGENT_LISTEN_NETNS) needs --listen ADDRESS");
        }
        if tls.is_some() {
            anyhow::bail!("--tls-cert, --tls-key and --client-ca need --listen ADDRESS");
        }
    }
    Ok((netns, tls))
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub fn run(state: &StateArgs, a: &AgentArgs) -> Result<()> {
    let (tcp_netns, tls) = tcp_settings(a)?;
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
    // The console logger is this executable (`esb _ESB_WORKER_CONSOLE …`).
    let exe = std::env::current_exe().context("the path of this executable")?;
    cfg.console_logger = Some((exe, a.worker_console_max_mb.max(1) << 20));
    let mut ceiling = esb_agent::WorkersCeiling::default_for_machine();
    if a.workers_max_memory_mb > 0 {
        ceiling.memory_mb = a.workers_max_memory_mb;
    }
    ceiling.pids = a.workers_max_pids.max(1);
    cfg.workers_ceiling = Some(ceiling);
    // One parent cgroup per node network: the ceilings of one box are its own.
    cfg.cgroup_parent = format!("/esb-runtime/{}", node.netns);
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
        tcp_netns,
        tls,
    };
    if let Some(files) = &listen.tls {
        // Unreadable or mismatched files are reported before anything starts.
        esb_agent::service::tls_server_config(files).context("mutual TLS on --listen")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::connect(cfg).await.context("start the agent")?;
        let report = agent.reconcile().await.context("reconcile leftovers")?;
        tracing::info!(kept = report.kept.len(), removed_containers = ?report.removed_containers,
            removed_attachments = ?report.removed_attachments, "reconciled");
        tracing::info!(socket = ?listen.unix, tcp = ?listen.tcp, netns = ?listen.tcp_netns,
            mtls = listen.tls.is_some(), "agent serving esb.agent.v1");
        let served = serve(agent.clone(), listen, shutdown_signal()).await;
        agent.remove_cgroup_parent();
        Ok(served?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn args(flags: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("esb-agent").chain(flags.iter().copied()))
            .unwrap()
            .agent
    }

    #[test]
    fn tls_flags_come_together_and_need_listen() {
        let (netns, tls) = tcp_settings(&args(&[
            "--listen=10.99.0.2:50051",
            "--listen-netns=esb-wg",
            "--tls-cert=/t/agent.pem",
            "--tls-key=/t/agent.key",
            "--client-ca=/t/ca.pem",
        ]))
        .unwrap();
        assert_eq!(netns.as_deref(), Some("esb-wg"));
        let tls = tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/t/agent.pem"));
        assert_eq!(tls.key, PathBuf::from("/t/agent.key"));
        assert_eq!(tls.client_ca, PathBuf::from("/t/ca.pem"));

        let (netns, tls) = tcp_settings(&args(&["--listen=127.0.0.1:50051"])).unwrap();
        assert!(netns.is_none() && tls.is_none());

        let e = tcp_settings(&args(&[
            "--listen=10.99.0.2:50051",
            "--tls-cert=/t/agent.pem",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--tls-key")
                && e.contains("--client-ca")
                && !e.contains("missing --tls-cert"),
            "{e}"
        );
        let e = tcp_settings(&args(&[
            "--tls-cert=/t/agent.pem",
            "--tls-key=/t/agent.key",
            "--client-ca=/t/ca.pem",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--listen"), "{e}");
        let e = tcp_settings(&args(&["--listen-netns=esb-wg"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--listen-netns") && e.contains("--listen ADDRESS"),
            "{e}"
        );
    }
}
