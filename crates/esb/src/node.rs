//! `esb node up|down|status|attach|detach` and `esb proxy`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use esb_local_proxy::Proxy;
use esb_runtime_node::{NodeConfig, RuntimeNode};

use crate::daemon;
use crate::settings::{NodeArgs, ProxyArgs, StateArgs};

/// Default hosts file of a single-node box: the backends live on this machine.
pub(crate) const DEFAULT_HOSTS: &str = "\
# Backend names of the local proxy (hosts(5) syntax). Re-read on every change: a name
# re-pointed here is followed by the next connection, no restart needed.
127.0.0.1 s3-storage database victorialogs gateway esb-registry
";

/// The ports the proxy listens on: the NAT targets' ports (defaults where a rule is off).
pub(crate) fn proxy_ports(cfg: &NodeConfig) -> [u16; 3] {
    let port = |t: Option<esb_runtime_node::DnatTarget>, d: u16| {
        t.filter(|t| t.ip.is_loopback())
            .map(|t| t.port)
            .unwrap_or(d)
    };
    [
        port(cfg.dnat.s3, 9000),
        port(cfg.dnat.db, 8001),
        port(cfg.dnat.logs, 9428),
    ]
}

/// Whether the containerd at `socket` answers its version call.
pub async fn containerd_answers(socket: &std::path::Path) -> bool {
    match esb_containerd::connect(socket).await {
        Ok(c) => c.version().await.is_ok(),
        Err(_) => false,
    }
}

/// The box's private containerd: directory, socket and pid file.
pub struct PrivateContainerd {
    /// Its directory (config, root, state, socket, log).
    pub dir: std::path::PathBuf,
}

impl PrivateContainerd {
    /// The private containerd of the box at `state`.
    pub fn of(state: &StateArgs) -> PrivateContainerd {
        PrivateContainerd {
            dir: state.state_dir.join("containerd"),
        }
    }
    /// Its gRPC socket.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.join("containerd.sock")
    }
    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.join("containerd.pid")
    }
    /// The running instance, if any.
    pub fn running(&self) -> Option<daemon::Tracked> {
        daemon::read_live(&self.pid_file())
    }

    /// Starts it in the background unless it runs; returns its PID.
    pub fn start(&self) -> Result<i32> {
        if let Some(t) = self.running() {
            return Ok(t.pid);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let dir = std::fs::canonicalize(&self.dir)?;
        if dir.join("containerd.sock.ttrpc").as_os_str().len() > 107 {
            anyhow::bail!(
                "ESB_STATE_DIR {} is too long for containerd's socket paths",
                dir.display()
            );
        }
        for stale in ["containerd.sock", "containerd.sock.ttrpc"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, esb_containerd::config_toml(&dir))
            .with_context(|| format!("write {}", config.display()))?;
        let socket = self.socket();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ready = || socket.exists() && rt.block_on(containerd_answers(&socket));
        let bin = std::env::var("ESB_CONTAINERD").unwrap_or_else(|_| "containerd".into());
        let t = daemon::spawn_program(
            &bin,
            &["--config".into(), config.display().to_string()],
            &self.pid_file(),
            &dir.join("containerd.log"),
            Duration::from_secs(30),
            ready,
        )
        .context("the private containerd did not start (Debian package containerd)")?;
        Ok(t.pid)
    }

    /// Stops it (SIGTERM, then SIGKILL) if it runs; returns the PID it had.
    pub fn stop(&self) -> Result<Option<i32>> {
        daemon::stop(&self.pid_file(), Duration::from_secs(10))
    }
}

/// Destroys every worker of the box through the agent library (used by `down`), so that
/// no task, snapshot or namespace outlives the node.
pub(crate) fn destroy_workers(
    state: &StateArgs,
    cfg: &NodeConfig,
    socket: std::path::PathBuf,
) -> Result<usize> {
    let acfg =
        esb_agent::AgentConfig::with_defaults(state.state_dir.join("agent"), cfg.clone(), socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let agent = esb_agent::Agent::connect(acfg).await?;
        let workers = agent.list().await?;
        for w in &workers {
            agent.destroy(&w.id).await?;
        }
        Ok::<_, esb_agent::AgentError>(workers.len())
    })
    .context("remove the workers")
}

/// `esb node up`: the network, then the proxy in the background.
pub fn up(
    state: &StateArgs,
    node: &NodeArgs,
    proxy: &ProxyArgs,
    no_proxy: bool,
    no_containerd: bool,
) -> Result<()> {
    let cfg = node.node_config(state);
    let rn = RuntimeNode::new(cfg.clone())?;
    // Check the proxy's settings before anything is created.
    proxy.proxy_config(state, None, IpAddr::from([127, 0, 0, 1]), proxy_ports(&cfg))?;
    let report = rn.up()?;
    let hosts = proxy
        .hosts_file
        .clone()
        .unwrap_or_else(|| state.hosts_file());
    if !hosts.exists() {
        std::fs::write(&hosts, DEFAULT_HOSTS)
            .with_context(|| format!("write {}", hosts.display()))?;
    }
    let pid_file = daemon::proxy_pid_file(&cfg.state_dir);
    let proxy_pid = if no_proxy {
        None
    } else if let Some(t) = daemon::read_live(&pid_file) {
        Some(t.pid)
    } else {
        let ports = proxy_ports(&cfg);
        let mut args = vec![
            format!("--state-dir={}", state.state_dir.display()),
            "proxy".into(),
            format!("--netns={}", cfg.netns),
            format!("--s3-port={}", ports[0]),
            format!("--db-port={}", ports[1]),
            format!("--logs-port={}", ports[2]),
            format!("--pid-file={}", pid_file.display()),
        ];
        args.extend(proxy.to_args(state));
        let log = state.log_dir().join(format!("proxy-{}.log", cfg.netns));
        match daemon::spawn(&args, &pid_file, &log, Duration::from_secs(10)) {
            Ok(t) => Some(t.pid),
            Err(e) => {
                if report.created {
                    let _ = rn.down();
                }
                return Err(e.context("the local proxy did not start"));
            }
        }
    };
    let containerd_pid = if no_containerd {
        None
    } else {
        match PrivateContainerd::of(state).start() {
            Ok(pid) => Some(pid),
            Err(e) => {
                if report.created {
                    let _ = daemon::stop(&pid_file, Duration::from_secs(5));
                    let _ = rn.down();
                }
                return Err(e);
            }
        }
    };
    println!(
        "runtime-node {} is up{}: bridge {} {} (workers from {}), NAT {}{}{}",
        cfg.netns,
        if report.created { "" } else { " (already)" },
        cfg.bridge,
        cfg.gateway_cidr(),
        cfg.worker_subnet,
        cfg.dnat
            .targets()
            .map(|(n, t)| format!("{n} {}:{}->{}:{}", cfg.gateway_ip, t.dport, t.ip, t.port))
            .collect::<Vec<_>>()
            .join(", "),
        proxy_pid
            .map(|p| format!(", local proxy pid {p}"))
            .unwrap_or_default(),
        containerd_pid
            .map(|p| format!(", containerd pid {p}"))
            .unwrap_or_default(),
    );
    Ok(())
}

fn saved_node(state: &StateArgs, node: &NodeArgs) -> Result<RuntimeNode> {
    Ok(RuntimeNode::from_state_or(node.node_config(state))?)
}

/// `esb node down`: the proxy, every attachment, the network, the state.
pub fn down(state: &StateArgs, node: &NodeArgs) -> Result<()> {
    let rn = saved_node(state, node)?;
    let ctd = PrivateContainerd::of(state);
    if ctd.running().is_some() && rn.status()?.up {
        let n = destroy_workers(state, rn.config(), ctd.socket())?;
        if n > 0 {
            println!("removed {n} worker(s)");
        }
    }
    if let Some(pid) = ctd.stop()? {
        println!("stopped containerd pid {pid}");
    }
    let stopped = daemon::stop(
        &daemon::proxy_pid_file(&rn.config().state_dir),
        Duration::from_secs(5),
    )?;
    rn.down()?;
    println!(
        "runtime-node {} is down{}",
        rn.config().netns,
        stopped
            .map(|p| format!(" (stopped local proxy pid {p})"))
            .unwrap_or_default()
    );
    Ok(())
}

/// `esb node status`.
pub fn status(state: &StateArgs, node: &NodeArgs, json: bool) -> Result<()> {
    let rn = saved_node(state, node)?;
    let st = rn.status()?;
    let proxy = daemon::read_live(&daemon::proxy_pid_file(&rn.config().state_dir));
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["proxy_pid"] = proxy.map(|t| t.pid).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let c = &st.config;
    println!(
        "runtime-node {}: {}",
        c.netns,
        if st.up { "up" } else { "down" }
    );
    if !st.up {
        return Ok(());
    }
    match &st.bridge {
        Some(b) => println!(
            "  bridge      {} {} ({})",
            b.name,
            b.addresses.join(" "),
            if b.admin_up { "up" } else { "DOWN" }
        ),
        None => println!("  bridge      {} MISSING", c.bridge),
    }
    println!(
        "  workers     from {} (gateway {})",
        c.worker_subnet, c.gateway_ip
    );
    println!(
        "  route_localnet {}",
        st.route_localnet.as_deref().unwrap_or("?")
    );
    match proxy {
        Some(t) => println!("  local proxy running, pid {}", t.pid),
        None => println!("  local proxy NOT RUNNING"),
    }
    match PrivateContainerd::of(state).running() {
        Some(t) => println!(
            "  containerd  running, pid {} ({})",
            t.pid,
            PrivateContainerd::of(state).socket().display()
        ),
        None => println!("  containerd  not running"),
    }
    println!("  NAT rules (nft table ip esb):");
    for line in st.nat_rules.as_deref().unwrap_or("    (none)").lines() {
        println!("    {line}");
    }
    println!("  attached    {}", st.attachments.len());
    for a in &st.attachments {
        println!(
            "    {:<24} {}/{} via {}",
            a.name, a.ip, a.prefix_len, a.gateway
        );
    }
    Ok(())
}

/// `esb node attach NAME`.
pub fn attach(state: &StateArgs, node: &NodeArgs, name: &str, json: bool) -> Result<()> {
    let a = saved_node(state, node)?.attach(name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        println!(
            "{} attached: {}/{} via {} ({})",
            a.name,
            a.ip,
            a.prefix_len,
            a.gateway,
            a.netns_path.display()
        );
    }
    Ok(())
}

/// `esb node detach NAME`.
pub fn detach(state: &StateArgs, node: &NodeArgs, name: &str) -> Result<()> {
    let existed = saved_node(state, node)?.detach(name)?;
    println!(
        "{name} {}",
        if existed {
            "detached"
        } else {
            "was not attached"
        }
    );
    Ok(())
}

/// `esb proxy`: the local proxy in the foreground.
pub fn proxy(
    state: &StateArgs,
    args: &ProxyArgs,
    netns: Option<String>,
    listen: IpAddr,
    ports: [u16; 3],
    pid_file: Option<std::path::PathBuf>,
) -> Result<()> {
    let cfg = args.proxy_config(state, netns, listen, ports)?;
    run_proxy(cfg, pid_file)
}

/// Parses a relay route `NAME=LISTEN=BACKEND` (`registry=10.99.0.1:5010=esb-registry:5010`).
pub fn relay_route(value: &str) -> Result<esb_local_proxy::Route> {
    let parts: Vec<&str> = value.splitn(3, '=').collect();
    let [name, listen, backend] = parts[..] else {
        anyhow::bail!("--route {value:?}: expected NAME=LISTEN_ADDR:PORT=BACKEND_HOST:PORT");
    };
    if name.is_empty() {
        anyhow::bail!("--route {value:?}: the name is empty");
    }
    Ok(esb_local_proxy::Route {
        name: name.to_string(),
        listen: listen
            .parse()
            .with_context(|| format!("--route {value:?}: {listen:?} is not an address:port"))?,
        backend: esb_local_proxy::Backend::parse("--route", backend)?,
    })
}

/// `esb relay`: the local proxy's machinery with routes given one by one: listeners in a
/// namespace (the control namespace's 10.99.0.1:5010), backends by name.
pub fn relay(
    state: &StateArgs,
    args: &ProxyArgs,
    netns: Option<String>,
    routes: &[String],
    pid_file: Option<std::path::PathBuf>,
) -> Result<()> {
    let mut cfg = args.proxy_config(state, netns, [127, 0, 0, 1].into(), [9000, 8001, 9428])?;
    cfg.routes = routes
        .iter()
        .map(|r| relay_route(r))
        .collect::<Result<_>>()?;
    run_proxy(cfg, pid_file)
}

fn run_proxy(
    cfg: esb_local_proxy::ProxyConfig,
    pid_file: Option<std::path::PathBuf>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let proxy = Proxy::bind(cfg)?;
        if let Some(p) = &pid_file {
            daemon::write_pid_file(p)?;
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping the proxy");
        };
        proxy.run(shutdown, Duration::from_secs(2)).await;
        if let Some(p) = &pid_file {
            let _ = std::fs::remove_file(p);
        }
        anyhow::Ok(())
    })
}
