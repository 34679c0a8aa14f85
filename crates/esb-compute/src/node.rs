//! A compute node (`esb node join`): joins a box with a token, then runs in the background
//! like `esb up` — its node network (worker subnet 10.88.N.0/24 from the control node), its
//! WireGuard interface in the node namespace (10.99.0.N, peer: the control node), a private
//! containerd trusting the box's registry at 10.99.0.1:5010, the local proxy whose backends
//! (s3-storage, database, victorialogs, gateway, esb-registry) are the control node's relays
//! at ESB_CONTROL_HOST, dialled over wg0, and the agent, listening only on 10.99.0.N:50051
//! with mTLS (and its local socket). `esb node join` with no token restarts a node that
//! joined before, with its identity; `esb node leave` stops it and removes what it made.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::boxd::{box_pid_file, hosts_dir, log_file, run_dir, status_file};
use crate::cluster::{cluster_dir, wg_file, wg_key_file, AGENT_PORT};
use crate::daemon;
use crate::settings::{NodeArgs, StateArgs};
use crate::supervise::{
    destroy_workers, pending_components, save, start, update, BoxStatus, ChildSpec, Ready, Running,
    Shared,
};

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

/// Arguments of `esb node leave`.
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What a node keeps of its join (`STATE/cluster/node.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    /// Its record on the control node.
    pub node: esb_cluster::NodeRecord,
    /// The control node's WireGuard address (10.99.0.1).
    pub control_host: Ipv4Addr,
    /// Where the control node's WireGuard listens.
    pub control_wg_endpoint: String,
    /// Its public key.
    pub control_wg_public_key: String,
    /// The control node's gateway, as the token named it.
    pub control_endpoint: String,
    /// Credentials and region for workers.
    pub credentials: (String, String, String),
}

fn joined_file(state: &Path) -> PathBuf {
    cluster_dir(state).join("node.json")
}

fn tls(state: &Path) -> PathBuf {
    state.join("tls")
}

/// The components of a compute node, in start order.
const COMPONENTS: &[&str] = &["containerd", "wireguard", "proxy", "agent"];

fn redeem(state: &Path, a: &JoinArgs, text: &str) -> Result<Joined> {
    if joined_file(state).exists() {
        bail!(
            "{} joined a box already: `esb node join` with no token restarts it; `esb node leave` first to join another",
            state.display()
        );
    }
    let token = esb_cluster::JoinToken::decode(text)?;
    let id = a.node_id.clone().unwrap_or_else(crate::cluster::host_name);
    esb_cluster::registry::validate_node_id(&id)?;
    let key = esb_wireguard::ensure_private_key(&wg_key_file(state))?;
    let req = esb_cluster::JoinRequest {
        secret: token.secret.clone(),
        node_id: id,
        wg_public_key: key.public().to_base64(),
        wg_port: a.wg_port,
        clock: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        max_memory_mb: a.max_memory_mb,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(esb_cluster::join::join(&token, &req))?;
    if answer.control_wg_public_key != token.wg_public_key {
        bail!("the control node answered with another WireGuard key than its token's");
    }
    let host = token
        .endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| token.endpoint.clone());
    let t = tls(state);
    std::fs::create_dir_all(&t)?;
    write_private(&t.join(esb_pki::CA_FILE), &answer.ca_pem, false)?;
    write_private(&t.join("node.pem"), &answer.node_cert_pem, false)?;
    write_private(&t.join("node.key"), &answer.node_key_pem, true)?;
    let joined = Joined {
        control_host: answer.control_host.parse().context("control_host")?,
        control_wg_endpoint: format!("{host}:{}", answer.control_wg_port),
        control_wg_public_key: answer.control_wg_public_key,
        control_endpoint: token.endpoint,
        credentials: answer.credentials,
        node: answer.node,
    };
    std::fs::create_dir_all(cluster_dir(state))?;
    write_private(
        &joined_file(state),
        &serde_json::to_string_pretty(&joined)?,
        true,
    )?;
    Ok(joined)
}

fn write_private(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// `esb node join [TOKEN]`.
pub fn join(state: &StateArgs, a: &JoinArgs) -> Result<()> {
    let dir = std::path::absolute(&state.state_dir)?;
    std::fs::create_dir_all(run_dir(&dir))?;
    if let Some(t) = daemon::read_live(&box_pid_file(&dir)) {
        println!("this node runs already (pid {}, {})", t.pid, dir.display());
        return Ok(());
    }
    let joined = match &a.token {
        Some(text) => redeem(&dir, a, text)?,
        None => serde_json::from_slice(&std::fs::read(joined_file(&dir)).with_context(|| {
            format!(
                "{} has not joined a box: give the token from `esb node token`",
                dir.display()
            )
        })?)?,
    };
    if a.foreground {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(run(dir, a.clone(), joined));
    }
    // Background: the same command with no token, in the foreground, detached.
    let log = log_file(&dir, "box");
    let mut args: Vec<String> = vec![
        format!("--state-dir={}", dir.display()),
        "node".into(),
        "join".into(),
        "--foreground".into(),
        format!("--wg-port={}", a.wg_port),
    ];
    args.extend(
        std::env::args().skip(1).filter(|x| {
            x.starts_with("--netns") || x.starts_with("--cni") || x.starts_with("--dnat")
        }),
    );
    let mut child = daemon::detached(std::env::current_exe()?.as_os_str(), &args, &log)?
        .spawn()
        .context("start the node process")?;
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let s: Option<BoxStatus> = std::fs::read(status_file(&dir))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            bail!(
                "the node did not start ({st}): {}",
                s.map(|s| s.message)
                    .unwrap_or_else(|| daemon::tail(&log, 15))
            );
        }
        let s: Option<BoxStatus> = std::fs::read(status_file(&dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if s.is_some_and(|s| s.state == "ready") {
            println!(
                "compute node {} is up: wg {}, workers {}, agent {}:{AGENT_PORT} (control {})",
                joined.node.id,
                joined.node.wg_address(),
                joined.node.cni_subnet(),
                joined.node.wg_address(),
                joined.control_endpoint
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "the node is not ready after 5 minutes; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_config(dir: &Path, a: &NodeArgs, j: &Joined) -> esb_runtime_node::NodeConfig {
    let mut cfg = a.node_config(&StateArgs {
        state_dir: dir.to_path_buf(),
    });
    cfg.worker_subnet = j.node.cni_subnet();
    cfg
}

fn child_specs(dir: &Path, a: &JoinArgs, j: &Joined, netns: &str) -> Result<Vec<ChildSpec>> {
    let exe = crate::boxd::esb_exe()?;
    let st = format!("--state-dir={}", dir.display());
    let esb = |name: &'static str, args: Vec<String>, env: Vec<(String, String)>, ready: Ready| {
        let mut all = vec![st.clone()];
        all.extend(args);
        ChildSpec {
            name,
            program: exe.clone(),
            args: all,
            env,
            ready,
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(15),
        }
    };
    let ctd = dir.join("containerd");
    let t = tls(dir);
    let (ak, sk, region) = j.credentials.clone();
    let control = j.control_host;
    Ok(vec![
        ChildSpec {
            name: "containerd",
            program: PathBuf::from(
                std::env::var("ESB_CONTAINERD").unwrap_or_else(|_| "containerd".into()),
            ),
            args: vec![
                "--config".into(),
                ctd.join("config.toml").display().to_string(),
            ],
            env: vec![],
            ready: Ready::Containerd(ctd.join("containerd.sock")),
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(15),
        },
        esb(
            "wireguard",
            vec![
                "wireguard".into(),
                format!("--interface-file={}", wg_file(dir).display()),
                format!("--status-file={}", run_dir(dir).join("wg.json").display()),
                format!(
                    "--ready-file={}",
                    run_dir(dir).join("wireguard.ready").display()
                ),
            ],
            vec![],
            Ready::PidFile(run_dir(dir).join("wireguard.ready")),
        ),
        esb(
            "proxy",
            vec![
                "proxy".into(),
                format!("--netns={netns}"),
                format!("--dial-netns={netns}"),
                format!("--pid-file={}", run_dir(dir).join("proxy.ready").display()),
                "--s3-backend=s3-storage:9000".into(),
                "--db-backend=database:8000".into(),
                "--logs-backend=victorialogs:9428".into(),
                format!("--hosts-file={}", dir.join("hosts").display()),
            ],
            vec![],
            Ready::PidFile(run_dir(dir).join("proxy.ready")),
        ),
        esb(
            "agent",
            vec![
                "agent".into(),
                format!("--socket={}", dir.join("agent.sock").display()),
                format!("--ca-file={}", t.join(esb_pki::CA_FILE).display()),
                format!("--registry-hosts-dir={}", hosts_dir(dir).path().display()),
                format!("--registry-netns={netns}"),
                format!("--node-id={}", j.node.id),
                format!("--listen={}:{AGENT_PORT}", j.node.wg_address()),
                format!("--listen-netns={netns}"),
                format!("--tls-cert={}", t.join("node.pem").display()),
                format!("--tls-key={}", t.join("node.key").display()),
                format!("--client-ca={}", t.join(esb_pki::CA_FILE).display()),
                format!("--netns={netns}"),
                format!("--cni-subnet={}", j.node.cni_subnet()),
            ],
            vec![
                (
                    "GATEWAY_INTERNAL_URL".into(),
                    format!("https://{control}:443"),
                ),
                ("ESB_ACCESS_KEY_ID".into(), ak),
                ("ESB_SECRET_ACCESS_KEY".into(), sk),
                ("ESB_REGION".into(), region),
                ("ESB_NODE_MAX_MEMORY_MB".into(), a.max_memory_mb.to_string()),
            ],
            Ready::Unix(dir.join("agent.sock")),
        ),
    ])
}

/// Everything a compute node needs before its components start.
fn prepare(dir: &Path, a: &JoinArgs, j: &Joined, netns: &str) -> Result<()> {
    let control = j.control_host;
    std::fs::write(
        dir.join("hosts"),
        format!(
            "# Written by esb node join: the backends are the control node's relays.\n{control} s3-storage database victorialogs gateway esb-registry\n"
        ),
    )?;
    let host = format!("{control}:{}", esb_registry::DEFAULT_PORT);
    hosts_dir(dir).write(
        &host,
        &format!("https://{host}"),
        &tls(dir).join(esb_pki::CA_FILE),
    )?;
    let endpoint: SocketAddr = j
        .control_wg_endpoint
        .to_socket_addrs()
        .with_context(|| format!("resolve the control node {}", j.control_wg_endpoint))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{} has no IPv4 address", j.control_wg_endpoint))?;
    let f = esb_wireguard::WgFile {
        ifname: "wg0".into(),
        netns: netns.into(),
        address: format!("{}/24", j.node.wg_address()),
        private_key_file: wg_key_file(dir),
        listen: SocketAddr::from(([0, 0, 0, 0], a.wg_port)),
        mtu: 1420,
        routes: false,
        worker_route_via: None,
        peers: vec![esb_wireguard::PeerEntry {
            name: "control".into(),
            public_key: j.control_wg_public_key.clone(),
            endpoint: Some(endpoint),
            allowed_ips: vec![format!("{}/24", Ipv4Addr::from(u32::from(control) & !0xff))],
            keepalive: Some(25),
        }],
    };
    std::fs::create_dir_all(dir.join("wg"))?;
    f.write(&wg_file(dir))?;
    let ctd = dir.join("containerd");
    std::fs::create_dir_all(&ctd)?;
    let ctd = std::fs::canonicalize(&ctd)?;
    std::fs::write(ctd.join("config.toml"), esb_containerd::config_toml(&ctd))?;
    Ok(())
}

/// Runs the compute node until SIGTERM/SIGINT.
async fn run(dir: PathBuf, a: JoinArgs, j: Joined) -> Result<()> {
    let _lock = crate::boxd::lock(&dir)?;
    daemon::write_pid_file(&box_pid_file(&dir))?;
    let left = stop_leftovers(&dir);
    if !left.is_empty() {
        tracing::warn!("stopped leftovers of an unclean stop: {}", left.join(", "));
    }
    let _ = std::fs::remove_file(dir.join("agent.sock"));
    let _ = std::fs::remove_file(dir.join("containerd/containerd.sock"));
    let cfg = node_config(&dir, &a.node, &j);
    let netns = cfg.netns.clone();
    let rn = esb_runtime_node::RuntimeNode::new(cfg.clone())?;
    let specs = child_specs(&dir, &a, &j, &netns)?;
    let shared: Shared = Arc::new(Mutex::new(BoxStatus {
        pid: std::process::id() as i32,
        state: "starting".into(),
        message: String::new(),
        template: String::new(),
        gateway_url: j.control_endpoint.clone(),
        endpoints: serde_json::json!({"node": j.node.id, "wg": j.node.wg_address().to_string(),
            "workers": j.node.cni_subnet().to_string()}),
        ca: tls(&dir).join(esb_pki::CA_FILE).display().to_string(),
        components: pending_components(&dir, &specs),
        generation: 0,
        last_build: serde_json::Value::Null,
    }));
    save(&dir, &shared.lock().unwrap());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut stops: Vec<Running> = Vec::new();
    let start = async {
        update(&dir, &shared, |s| {
            s.message = "creating the node network".into()
        });
        rn.up().context("node network")?;
        let ns = esb_netns::NetNs::open(&netns)?;
        ns.write_sysctl("net/ipv4/ip_forward", "1")?;
        esb_runtime_node::nat::apply_fence(&ns, &cfg, "wg0", j.control_host)
            .context("fence the workers")?;
        prepare(&dir, &a, &j, &netns)?;
        for spec in &specs {
            stops.push(start(spec, &dir, &shared).await?);
        }
        anyhow::Ok(())
    };
    let started = tokio::select! {
        r = start => r,
        _ = term.recv() => Err(anyhow::anyhow!("stopped while starting (SIGTERM)")),
        _ = int.recv() => Err(anyhow::anyhow!("stopped while starting (SIGINT)")),
    };
    if let Err(e) = started {
        tracing::error!("the node did not start: {e:#}");
        update(&dir, &shared, |s| {
            s.state = "failed".into();
            s.message = format!("{e:#}");
        });
        shutdown(&dir, &rn, stops).await;
        let _ = std::fs::remove_file(box_pid_file(&dir));
        return Err(e);
    }
    update(&dir, &shared, |s| {
        s.state = "ready".into();
        s.message = "serving".into();
    });
    tracing::info!(node = %j.node.id, "the compute node is ready");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    update(&dir, &shared, |s| s.state = "stopping".into());
    shutdown(&dir, &rn, stops).await;
    let _ = std::fs::remove_file(status_file(&dir));
    let _ = std::fs::remove_file(box_pid_file(&dir));
    Ok(())
}

fn stop_leftovers(dir: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    for name in COMPONENTS.iter().rev() {
        let pf = crate::boxd::component_pid_file(dir, name);
        if let Ok(Some(pid)) = daemon::stop(&pf, Duration::from_secs(10)) {
            stopped.push(format!("{name} (pid {pid})"));
        }
    }
    stopped
}

async fn shutdown(dir: &Path, rn: &esb_runtime_node::RuntimeNode, mut stops: Vec<Running>) {
    // The agent first; then the workers it left, while containerd still runs.
    let mut containerd = None;
    while let Some((tx, h)) = stops.pop() {
        if stops.is_empty() {
            containerd = Some((tx, h));
            break;
        }
        let _ = tx.send(true);
        let _ = h.await;
    }
    destroy_workers(
        dir.join("agent"),
        rn.config().clone(),
        dir.join("containerd/containerd.sock"),
    )
    .await;
    if let Some((tx, h)) = containerd {
        let _ = tx.send(true);
        let _ = h.await;
    }
    let _ = stop_leftovers(dir);
    if let Err(e) = rn.down() {
        tracing::error!("remove the node network: {e}");
    }
    for f in ["proxy.ready", "wireguard.ready"] {
        let _ = std::fs::remove_file(run_dir(dir).join(f));
    }
    let _ = std::fs::remove_file(dir.join("agent.sock"));
}

/// `esb node leave`: stops the node and removes its network, workers and identity.
pub fn leave(state: &StateArgs, a: &LeaveArgs) -> Result<()> {
    let dir = std::path::absolute(&state.state_dir)?;
    if let Some(t) = daemon::read_live(&box_pid_file(&dir)) {
        // SAFETY: kill(2) on the node process recorded with its start time, checked now.
        unsafe {
            libc::kill(t.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while daemon::start_time(t.pid) == Some(t.start_time) {
            if Instant::now() > deadline {
                bail!("the node (pid {}) did not stop in 2 minutes", t.pid);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = stop_leftovers(&dir);
    let joined: Option<Joined> = std::fs::read(joined_file(&dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut cfg = a.node.node_config(&StateArgs {
        state_dir: dir.clone(),
    });
    if let Some(j) = &joined {
        cfg.worker_subnet = j.node.cni_subnet();
    }
    let rn = esb_runtime_node::RuntimeNode::from_state_or(cfg)?;
    // Workers a killed node left running (their shims outlive containerd): removed through
    // a temporary containerd, as `esb down` does after an unclean stop.
    let st = StateArgs {
        state_dir: dir.clone(),
    };
    let ctd = crate::node::PrivateContainerd::of(&st);
    if rn.status()?.up && ctd.dir.join("config.toml").exists() {
        ctd.start()?;
        let removed = crate::node::destroy_workers(&st, rn.config(), ctd.socket());
        ctd.stop()?;
        let n = removed?;
        if n > 0 {
            println!("removed {n} worker(s) left by an unclean stop");
        }
    }
    rn.down()?;
    for p in [cluster_dir(&dir), dir.join("wg"), tls(&dir)] {
        let _ = std::fs::remove_dir_all(p);
    }
    println!(
        "this node left its box (the control node keeps its record until it is removed there)"
    );
    Ok(())
}
