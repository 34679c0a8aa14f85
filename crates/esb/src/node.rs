//! `esb node up|down|status|attach|detach|token|join|leave`, `esb proxy` and `esb relay`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use esb_box::daemon;
use esb_box::layout::{agent_dir, proxy_pid_file};
use esb_local_proxy::Proxy;
use esb_runtime_node::{NodeConfig, RuntimeNode};

use crate::settings::{
    containerd_program, esb_exe, private_containerd, JoinArgs, LeaveArgs, NodeArgs, ProxyArgs,
    StateArgs,
};

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
    let pid_file = proxy_pid_file(&cfg.state_dir);
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
        match daemon::spawn(&esb_exe()?, &args, &pid_file, &log, Duration::from_secs(10)) {
            Ok(t) => Some(t.pid),
            Err(e) => {
                if report.created {
                    let _ = rn.down();
                }
                return Err(anyhow::Error::from(e).context("the local proxy did not start"));
            }
        }
    };
    let containerd_pid = if no_containerd {
        None
    } else {
        match private_containerd(state).start() {
            Ok(pid) => Some(pid),
            Err(e) => {
                if report.created {
                    let _ = daemon::stop(&pid_file, Duration::from_secs(5));
                    let _ = rn.down();
                }
                return Err(e.into());
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
    let ctd = private_containerd(state);
    if ctd.running().is_some() && rn.status()?.up {
        let n = esb_box::containerd::destroy_workers_blocking(
            agent_dir(&state.state_dir),
            rn.config(),
            ctd.socket(),
        )?;
        if n > 0 {
            println!("removed {n} worker(s)");
        }
    }
    if let Some(pid) = ctd.stop()? {
        println!("stopped containerd pid {pid}");
    }
    let stopped = daemon::stop(
        &proxy_pid_file(&rn.config().state_dir),
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
    let proxy = daemon::read_live(&proxy_pid_file(&rn.config().state_dir));
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
    match private_containerd(state).running() {
        Some(t) => println!(
            "  containerd  running, pid {} ({})",
            t.pid,
            private_containerd(state).socket().display()
        ),
        None => println!("  containerd  not running"),
    }
    println!("  NAT rules (iptables -t nat, comment esb-*):");
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

/// `esb node token`: prints a one-time join token for this box.
pub fn token(state: &StateArgs, endpoint: Option<String>, ttl: &str, wg_port: u16) -> Result<()> {
    let token =
        esb_box::cluster::issue_token(&state.state_dir, endpoint, gateway_port(), ttl, wg_port)?;
    println!("{}", token.encode());
    Ok(())
}

/// `esb node remove ID` (control node): the node drained and forgotten through the box's
/// own exchange socket.
pub fn remove(state: &StateArgs, node_id: &str) -> Result<()> {
    let socket = esb_box::layout::cluster_socket(&state.state_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let a = rt.block_on(esb_cluster::join::remove_local(&socket, node_id))?;
    if a.workers_left > 0 {
        println!(
            "{} worker(s) of node {node_id} were still busy when the drain's time ran out",
            a.workers_left
        );
    }
    println!("node {node_id} removed: no worker goes there, its tunnel peer and route are gone");
    Ok(())
}

/// The gateway's port as `esb up` got it (`ESB_GATEWAY_PORT`, else `ESB_GATEWAY_LISTEN`'s,
/// else 443).
fn gateway_port() -> u16 {
    std::env::var("ESB_GATEWAY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .or_else(|| {
            std::env::var("ESB_GATEWAY_LISTEN")
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.port())
        })
        .unwrap_or(443)
}

/// `esb node join [TOKEN]`: joins (or, with no token, restarts) this compute node, in the
/// background unless `--foreground`.
pub fn join(state: &StateArgs, a: &JoinArgs) -> Result<()> {
    let dir = std::path::absolute(&state.state_dir)?;
    std::fs::create_dir_all(esb_box::layout::run_dir(&dir))?;
    if let Some(t) = esb_compute::node::running(&dir) {
        println!("this node runs already (pid {}, {})", t.pid, dir.display());
        return Ok(());
    }
    let cfg = a.join_config(&dir)?;
    let joined = esb_compute::join::load_or_redeem(&cfg, a.token.as_deref())?;
    if a.foreground {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return Ok(rt.block_on(esb_compute::node::run(cfg, joined))?);
    }
    // Background: the same command with no token, in the foreground, detached.
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
    esb_compute::node::start_background(&cfg, &args)?;
    println!(
        "compute node {} is up: wg {}, workers {}, agent {}:{} (control {})",
        joined.node.id,
        joined.node.wg_address(),
        joined.node.cni_subnet(),
        joined.node.wg_address(),
        esb_box::cluster::AGENT_PORT,
        joined.control_endpoint
    );
    Ok(())
}

/// `esb node leave`: stops the node and removes its network, workers and identity.
pub fn leave(state: &StateArgs, a: &LeaveArgs) -> Result<()> {
    let dir = std::path::absolute(&state.state_dir)?;
    let node = a.node.node_config(&StateArgs {
        state_dir: dir.clone(),
    });
    let report = esb_compute::leave(dir, node, containerd_program())?;
    if report.workers_removed > 0 {
        println!(
            "removed {} worker(s) left by an unclean stop",
            report.workers_removed
        );
    }
    match report.control {
        esb_compute::Deregistration::NotJoined => println!("this node had not joined a box"),
        esb_compute::Deregistration::Done {
            endpoint,
            workers_left,
        } => {
            println!("the control node at {endpoint} drained and forgot this node");
            if workers_left > 0 {
                println!(
                    "  ({workers_left} worker(s) were still busy when the drain's time ran out)"
                );
            }
            println!("this node left its box");
        }
        esb_compute::Deregistration::Failed { endpoint, why } => {
            eprintln!("warning: the control node at {endpoint} was not told: {why}");
            eprintln!("  it keeps this node's record (shown down in `esb status` there)");
            println!("this node left its box");
        }
    }
    Ok(())
}
