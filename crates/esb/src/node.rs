//! `esb node up|down|status|attach|detach` and `esb proxy`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use esb_local_proxy::Proxy;
use esb_runtime_node::{NodeConfig, RuntimeNode};

use crate::daemon;
use crate::settings::{NodeArgs, ProxyArgs, StateArgs};

/// Default hosts file of a single-node box: the backends live on this machine.
const DEFAULT_HOSTS: &str = "\
# Backend names of the local proxy (hosts(5) syntax). Re-read on every change: a name
# re-pointed here is followed by the next connection, no restart needed.
127.0.0.1 s3-storage database victorialogs gateway esb-registry
";

/// The ports the proxy listens on: the NAT targets' ports (defaults where a rule is off).
fn proxy_ports(cfg: &NodeConfig) -> [u16; 3] {
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
pub fn up(state: &StateArgs, node: &NodeArgs, proxy: &ProxyArgs, no_proxy: bool) -> Result<()> {
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
    println!(
        "runtime-node {} is up{}: bridge {} {} (workers from {}), NAT {}{}",
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
    );
    Ok(())
}

fn saved_node(state: &StateArgs, node: &NodeArgs) -> Result<RuntimeNode> {
    Ok(RuntimeNode::from_state_or(node.node_config(state))?)
}

/// `esb node down`: the proxy, every attachment, the network, the state.
pub fn down(state: &StateArgs, node: &NodeArgs) -> Result<()> {
    let rn = saved_node(state, node)?;
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
            tracing::info!("stopping local proxy");
        };
        proxy.run(shutdown, Duration::from_secs(2)).await;
        if let Some(p) = &pid_file {
            let _ = std::fs::remove_file(p);
        }
        anyhow::Ok(())
    })
}
