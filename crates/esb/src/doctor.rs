//! `esb doctor`: the seed's troubleshooting list as checks, each with a hint.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Result;
use esb_local_proxy::{Backend, Resolver};
use esb_netns::NetNs;
use esb_runtime_node::RuntimeNode;

use esb_box::daemon;
use esb_box::layout;

use crate::settings::{NodeArgs, ProxyArgs, StateArgs};

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, ok: bool, what: String, hint: &str) {
        if ok {
            println!("ok    {what}");
        } else {
            self.failed += 1;
            println!("FAIL  {what}\n      hint: {hint}");
        }
    }
}

impl Report {
    /// The verdict: an error when a check failed.
    fn finish(self) -> Result<()> {
        if self.failed > 0 {
            anyhow::bail!("{} check(s) failed", self.failed);
        }
        println!("all checks passed");
        Ok(())
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The box process (or compute node) ready, and each of its components running.
fn process_checks(r: &mut Report, what: String, s: &esb_box::status::BoxStatus) {
    r.check(s.state == "ready", what, "see STATE_DIR/logs/box.log");
    for c in &s.components {
        r.check(
            c.state == "running",
            format!("component {} {} (restarts {})", c.name, c.state, c.restarts),
            &format!("see {}", c.log),
        );
    }
}

/// Whether `addr` accepts a TCP connection from inside namespace `netns`.
fn reachable_in(netns: &str, addr: SocketAddr) -> bool {
    NetNs::open(netns)
        .and_then(|ns| ns.run(|| TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()))
        .unwrap_or(false)
}

/// `ip -n NETNS ARGS…`'s output ("" when it fails).
fn ip_in(netns: &str, args: &[&str]) -> String {
    std::process::Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A compute node's checks: the node process and its components, wg0 with 10.99.0.N and a
/// recent handshake with the control node, the route to the control network, the five
/// backend names resolving to the control address and each relay answering over wg0, the
/// worker's way to the gateway (`https://10.99.0.1:443/health`, the box CA), and the agent
/// listening on its wg0 address only, behind the workers' fence.
fn compute_checks(
    state: &StateArgs,
    cfg: &esb_runtime_node::NodeConfig,
    j: &esb_compute::Joined,
    r: &mut Report,
) {
    let dir = &state.state_dir;
    let netns = cfg.netns.as_str();
    match esb_box::status::running(dir) {
        Some((t, Some(s))) => process_checks(
            r,
            format!("compute node {} (pid {}) is {}", j.node.id, t.pid, s.state),
            &s,
        ),
        _ => r.check(
            false,
            format!("compute node {} running", j.node.id),
            "`esb node join` with no token restarts it",
        ),
    }
    let wg_addr = j.node.wg_address();
    r.check(
        ip_in(netns, &["-o", "addr", "show", "dev", "wg0"]).contains(&format!("{wg_addr}/24")),
        format!("wireguard: wg0 with {wg_addr} in {netns}"),
        "see STATE_DIR/logs/wireguard.log",
    );
    let status: serde_json::Value = std::fs::read(layout::wg_status_file(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let age = status["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "control"))
        .and_then(|p| p["last_handshake"]["secs"].as_u64());
    r.check(
        age.is_some_and(|a| a < 180),
        format!(
            "control node {}: WireGuard handshake {}",
            j.control_wg_endpoint,
            age.map(|a| format!("{a}s ago"))
                .unwrap_or_else(|| "never".into())
        ),
        "the control node is down, or its UDP port (ESB_WG_PORT) is not reachable from here",
    );
    let control_net = format!(
        "{}/24",
        std::net::Ipv4Addr::from(u32::from(j.control_host) & !0xff)
    );
    r.check(
        ip_in(netns, &["-4", "route", "show", "dev", "wg0"])
            .lines()
            .any(|l| l.starts_with(&format!("{control_net} "))),
        format!("route {control_net} dev wg0 in {netns}"),
        "see STATE_DIR/logs/wireguard.log",
    );
    // Names: the local proxy's backends are the control node's relays.
    let resolver = Resolver::new(Some(layout::hosts_file(dir)), Duration::ZERO);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    for (name, port) in [
        ("s3-storage", 9000u16),
        ("database", 8000),
        ("victorialogs", 9428),
        ("esb-registry", esb_registry::DEFAULT_PORT),
        ("gateway", 443),
    ] {
        let backend = Backend::parse("backend", &format!("{name}:{port}"));
        let addrs = match backend {
            Ok(b) => rt.block_on(resolver.resolve(&b)).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let to_control = !addrs.is_empty() && addrs.iter().all(|a| a.ip() == j.control_host);
        r.check(
            to_control,
            format!(
                "name {name} resolves to the control node {}",
                j.control_host
            ),
            &format!(
                "{} is written by `esb node join`",
                layout::hosts_file(dir).display()
            ),
        );
        let addr = SocketAddr::from((j.control_host, port));
        r.check(
            reachable_in(netns, addr),
            format!("{name}: {addr} answers over wg0 from {netns}"),
            "the control node's relays run in its control namespace: `esb doctor` there",
        );
    }
    // The worker's view of the gateway: TLS with the box CA, from the node namespace.
    let ca = layout::tls_dir(dir).join(esb_pki::CA_FILE);
    let gw = SocketAddr::from((j.control_host, 443));
    let health = (|| -> anyhow::Result<u16> {
        let tcp =
            NetNs::open(netns)?.run(move || TcpStream::connect_timeout(&gw, PROBE_TIMEOUT))??;
        tcp.set_nonblocking(true)?;
        let req = esb_box::http::request(
            "GET",
            &format!("https://{}:443/health", j.control_host),
            bytes::Bytes::new(),
        )?;
        let host = j.control_host.to_string();
        let reply = rt.block_on(async {
            let tcp = tokio::net::TcpStream::from_std(tcp)?;
            esb_box::http::https_over(tcp, &host, &ca, req, PROBE_TIMEOUT * 5)
                .await
                .map_err(anyhow::Error::from)
        })?;
        Ok(reply.status)
    })();
    r.check(
        matches!(health, Ok(200)),
        format!("worker -> gateway: https://{gw}/health from inside {netns} ({health:?})"),
        "GATEWAY_INTERNAL_URL of compute nodes; the control node's gateway listens on 10.99.0.1:443 in its control namespace",
    );
    // The agent: on its wg0 address only, and workers fenced off it.
    let agent = SocketAddr::from((wg_addr, esb_box::cluster::AGENT_PORT));
    r.check(
        reachable_in(netns, agent),
        format!("agent listens on {agent} (wg0) in {netns}"),
        "see STATE_DIR/logs/agent.log",
    );
    let on_host = SocketAddr::from(([127, 0, 0, 1], esb_box::cluster::AGENT_PORT));
    r.check(
        TcpStream::connect_timeout(&on_host, PROBE_TIMEOUT).is_err(),
        format!("agent not on the host's loopback ({on_host})"),
        "something else listens on the agent's port on this host",
    );
    let fence = NetNs::open(netns)
        .ok()
        .and_then(|ns| esb_runtime_node::nat::list_fence(&ns).ok().flatten());
    r.check(
        fence.is_some_and(|t| t.contains(&format!("ip daddr {} tcp dport 443", j.control_host))),
        format!(
            "workers may reach the control node only at {}:443",
            j.control_host
        ),
        "`esb node join` (no token) restarts the node and applies the fence",
    );
}

/// Runs every check; fails (non-zero exit) when one does.
pub fn run(state: &StateArgs, node: &NodeArgs, proxy: &ProxyArgs) -> Result<()> {
    let rn = RuntimeNode::from_state_or(node.node_config(state))?;
    let cfg = rn.config().clone();
    let st = rn.status()?;
    let mut r = Report { failed: 0 };

    r.check(
        rn.preflight().is_ok(),
        "prerequisites: CNI plugins (bridge, host-local, loopback), nft, ip".into(),
        "install Debian's containernetworking-plugins, nftables and iproute2",
    );
    r.check(
        st.up,
        format!("node namespace {} exists", cfg.netns),
        "run `esb node up`",
    );
    let want = cfg.gateway_cidr().to_string();
    r.check(
        st.bridge
            .as_ref()
            .is_some_and(|b| b.admin_up && b.addresses.contains(&want)),
        format!("bridge {} holds {want} and is up", cfg.bridge),
        "run `esb node up` again (it repairs the bridge)",
    );
    let rules = st.nat_rules.clone().unwrap_or_default();
    for (name, t) in cfg.dnat.targets() {
        let rule = format!(
            "--dport {} -m comment --comment {}{name} -j DNAT --to-destination {}:{}",
            t.dport,
            esb_runtime_node::nat::COMMENT_PREFIX,
            t.ip,
            t.port
        );
        let chains: &[&str] = if cfg.dnat.apply_output {
            &["PREROUTING", "OUTPUT"]
        } else {
            &["PREROUTING"]
        };
        let present = chains.iter().all(|c| {
            rules.lines().any(|l| {
                l.contains(&format!("-A {c} -d {}/32 ", cfg.gateway_ip)) && l.contains(&rule)
            })
        });
        r.check(
            present,
            format!(
                "NAT rule {name}: {}:{} -> {}:{} ({})",
                cfg.gateway_ip,
                t.dport,
                t.ip,
                t.port,
                chains.join(" and ")
            ),
            &format!(
                "ip netns exec {} iptables -t nat -S; `esb node up` re-applies",
                cfg.netns
            ),
        );
    }
    let fence = NetNs::open(&cfg.netns)
        .ok()
        .and_then(|ns| esb_runtime_node::nat::list_fence(&ns).ok().flatten());
    r.check(
        fence.is_some_and(|t| t.contains("ct status dnat accept")),
        format!(
            "workers fenced in {} (nft tables ip esb-fence, bridge esb-isolate)",
            cfg.netns
        ),
        "`esb node up` (or `esb up`) applies them with the node network",
    );
    let needs_localnet = cfg.dnat.targets().any(|(_, t)| t.ip.is_loopback());
    if needs_localnet {
        r.check(
            st.route_localnet.as_deref() == Some("1"),
            format!("route_localnet = 1 in {}", cfg.netns),
            "DNAT to 127.0.0.1 needs net.ipv4.conf.all.route_localnet=1; `esb node up` sets it",
        );
    }
    // A compute node: its own checks (its backends are the control node's relays, dialled
    // over wg0 from the node namespace).
    if let Some(j) = esb_compute::join::read_joined(&state.state_dir) {
        compute_checks(state, &cfg, &j, &mut r);
        return r.finish();
    }

    // With a box running, its proxy is a component of the box and its backends follow the
    // box's service ports (as `esb up` sets them).
    let running_box = esb_box::status::running(&state.state_dir).and_then(|(_, s)| s);
    let mut proxy = proxy.clone();
    if let Some(s) = &running_box {
        let port = |k: &str| {
            s.endpoints[k]
                .as_str()
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
        };
        if let (Some(a), Some(b), Some(c)) = (port("s3"), port("dynamodb"), port("logs")) {
            proxy = crate::up::box_backends(&proxy, a, b, c);
        }
    }
    let proxy = &proxy;
    let proxy_pid = if running_box.is_some() {
        daemon::read_live(&layout::component_pid_file(&state.state_dir, "proxy"))
    } else {
        daemon::read_live(&layout::proxy_pid_file(&cfg.state_dir))
    };
    r.check(
        proxy_pid.is_some(),
        format!(
            "local proxy running{}",
            proxy_pid
                .map(|t| format!(" (pid {})", t.pid))
                .unwrap_or_default()
        ),
        &format!(
            "run `esb node up`; its log is {}",
            state
                .log_dir()
                .join(format!("proxy-{}.log", cfg.netns))
                .display()
        ),
    );

    // Backends, resolved and dialled as the proxy does (from this namespace).
    let hosts = proxy
        .hosts_file
        .clone()
        .unwrap_or_else(|| state.hosts_file());
    let resolver = Resolver::new(Some(hosts.clone()), Duration::ZERO);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (setting, value) in [
        ("ESB_S3_BACKEND", &proxy.s3_backend),
        ("ESB_DB_BACKEND", &proxy.db_backend),
        ("ESB_LOGS_BACKEND", &proxy.logs_backend),
    ] {
        let backend = Backend::parse(setting, value)?;
        let addrs = rt.block_on(resolver.resolve(&backend));
        let hint = format!(
            "add the name to {} or DNS, or set {setting}",
            hosts.display()
        );
        match addrs {
            Ok(addrs) => {
                let reach = addrs
                    .iter()
                    .any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok());
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                r.check(
                    reach,
                    format!(
                        "backend {backend} ({}) accepts connections",
                        list.join(", ")
                    ),
                    &format!("start the service behind {setting} or point {setting} elsewhere"),
                );
            }
            Err(e) => r.check(false, format!("backend {backend} resolves ({e})"), &hint),
        }
    }

    // The worker's view: the gateway address from inside the node namespace (OUTPUT path).
    if let Ok(ns) = NetNs::open(&cfg.netns) {
        for (name, t) in cfg.dnat.targets() {
            let addr = SocketAddr::from((cfg.gateway_ip, t.dport));
            let ok = ns
                .run(|| TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
                .unwrap_or(false);
            r.check(
                ok || !cfg.dnat.apply_output,
                format!("{addr} ({name}) reachable from inside {}", cfg.netns),
                "check the NAT rules and the local proxy above",
            );
        }
    }

    box_checks(state, &cfg, &mut r);
    r.finish()
}

/// The box's own checks when `esb up` runs: every component running, the gateway's health
/// from the host, and the worker's path to the gateway (GATEWAY_INTERNAL_URL from inside
/// the node namespace, TLS verified with the box CA).
fn box_checks(state: &StateArgs, cfg: &esb_runtime_node::NodeConfig, r: &mut Report) {
    let Some((t, Some(s))) = esb_box::status::running(&state.state_dir) else {
        println!("info  no box runs (esb up): box checks skipped");
        return;
    };
    process_checks(
        r,
        format!("box pid {} is {} ({})", t.pid, s.state, s.message),
        &s,
    );
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let ca = std::path::PathBuf::from(&s.ca);
    let health = |url: &str| {
        esb_box::http::request("GET", url, bytes::Bytes::new()).map_err(anyhow::Error::from)
    };
    let port: u16 = s
        .gateway_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(443);
    let host_ok = health(&format!("{}/health", s.gateway_url))
        .and_then(|req| {
            rt.block_on(esb_box::http::https(
                "localhost",
                port,
                &ca,
                req,
                PROBE_TIMEOUT * 5,
            ))
            .map_err(anyhow::Error::from)
        })
        .map(|r| r.status == 200);
    r.check(
        matches!(host_ok, Ok(true)),
        format!("gateway {}/health answers ({host_ok:?})", s.gateway_url),
        "see STATE_DIR/logs/gateway.log",
    );
    let internal =
        std::env::var("GATEWAY_INTERNAL_URL").unwrap_or_else(|_| "https://10.88.0.1:443".into());
    let target = internal
        .strip_prefix("https://")
        .unwrap_or(&internal)
        .trim_end_matches('/')
        .to_string();
    let (ihost, iport) = match target.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(443)),
        None => (target.clone(), 443),
    };
    let worker_view = (|| -> anyhow::Result<u16> {
        let addr: SocketAddr = format!("{ihost}:{iport}").parse()?;
        let std_stream = NetNs::open(&cfg.netns)?
            .run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT))??;
        std_stream.set_nonblocking(true)?;
        let req = health(&format!("https://{ihost}:{iport}/health"))?;
        let reply = rt.block_on(async {
            let tcp = tokio::net::TcpStream::from_std(std_stream)?;
            esb_box::http::https_over(tcp, &ihost, &ca, req, PROBE_TIMEOUT * 5)
                .await
                .map_err(anyhow::Error::from)
        })?;
        Ok(reply.status)
    })();
    // The data services' own health endpoints (the seed's troubleshooting step 4).
    for (name, key, component) in [
        ("S3", "s3", "s3"),
        ("DynamoDB", "dynamodb", "dynamodb"),
        ("log store", "logs", "logstore"),
    ] {
        let Some(base) = s.endpoints[key].as_str() else {
            continue;
        };
        let addr = base.trim_start_matches("http://").trim_end_matches('/');
        let status = esb_box::http::request("GET", &format!("{base}/health"), bytes::Bytes::new())
            .map_err(anyhow::Error::from)
            .and_then(|req| {
                rt.block_on(esb_box::http::tcp(addr, req, PROBE_TIMEOUT * 2))
                    .map_err(anyhow::Error::from)
            })
            .map(|r| r.status);
        r.check(
            matches!(status, Ok(200)),
            format!("{name} {base}/health answers ({status:?})"),
            &format!("see `esb logs --component {component}`"),
        );
    }
    registry_checks(state, &ca, &rt, r);
    wireguard_checks(state, r);
    r.check(
        matches!(worker_view, Ok(200)),
        format!(
            "worker -> gateway: {internal}/health from inside {} ({worker_view:?})",
            cfg.netns
        ),
        "the gateway's internal listener (GATEWAY_INTERNAL_URL) must run in the node namespace; see STATE_DIR/logs/gateway.log",
    );
}

/// The registry: its catalog from this host with the box CA, the hosts.toml nodes trust it
/// through, and the relay: the catalog at 10.99.0.1:5010 from inside the control namespace,
/// which also proves the certificate carries the SAN 10.99.0.1.
fn registry_checks(
    state: &StateArgs,
    ca: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    r: &mut Report,
) {
    let listen = std::env::var("ESB_REGISTRY_LISTEN").unwrap_or_else(|_| "127.0.0.1:5010".into());
    let control = std::env::var("ESB_CONTROL_NETNS")
        .unwrap_or_else(|_| esb_runtime_node::DEFAULT_CONTROL_NETNS.into());
    let catalog = |url: &str, netns: Option<String>| -> Result<usize, String> {
        let mut reg = esb_image::Registry::from_setting(url).map_err(|e| e.to_string())?;
        reg.ca_file = Some(ca.to_path_buf());
        reg.netns = netns;
        let repos = rt
            .block_on(async {
                tokio::time::timeout(PROBE_TIMEOUT * 5, esb_image::catalog(&reg)).await
            })
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(repos.len())
    };
    let local = catalog(&listen, None);
    r.check(
        local.is_ok(),
        format!("registry https://{listen}/v2/_catalog with the box CA ({local:?} repositories)"),
        "see STATE_DIR/logs/registry.log (Debian's docker-registry)",
    );
    let host = esb_registry::CONTROL_HOST;
    let hosts = layout::hosts_dir(&state.state_dir);
    let trusted = hosts
        .lookup(host)
        .ok()
        .flatten()
        .is_some_and(|e| e.iter().any(|e| e.ca.iter().any(|c| c == ca)));
    r.check(
        trusted,
        format!("{} names the box CA", hosts.file(host).display()),
        "`esb up` writes it; agents pull only from registries configured there",
    );
    let relayed = catalog(host, Some(control.clone()));
    r.check(
        relayed.is_ok(),
        format!("registry https://{host}/v2/_catalog from inside {control}: relay and certificate SAN ({relayed:?})"),
        "the relay (STATE_DIR/logs/relay.log) forwards 10.99.0.1:5010 to esb-registry; the certificate STATE_DIR/tls/registry.pem must name 10.99.0.1",
    );
}

/// The control side of compute nodes: wg0 in the control namespace, each joined node's
/// handshake (WireGuard rekeys every two minutes: an older one means a silent node) and the
/// route of its worker subnet through wg0.
fn wireguard_checks(state: &StateArgs, r: &mut Report) {
    let control = std::env::var("ESB_CONTROL_NETNS")
        .unwrap_or_else(|_| esb_runtime_node::DEFAULT_CONTROL_NETNS.into());
    let link = std::process::Command::new("ip")
        .args(["-n", &control, "-o", "addr", "show", "dev", "wg0"])
        .output();
    let up = link.as_ref().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("10.99.0.1/")
    });
    r.check(
        up,
        format!("wireguard: wg0 with 10.99.0.1 in {control}"),
        "see STATE_DIR/logs/wireguard.log",
    );
    let nodes = esb_cluster::Registry::new(&layout::cluster_dir(&state.state_dir)).list();
    if nodes.is_empty() {
        println!("info  no compute node joined (esb node token, esb node join)");
        return;
    }
    let status: serde_json::Value = std::fs::read(layout::wg_status_file(&state.state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let routes = std::process::Command::new("ip")
        .args(["-n", &control, "-4", "route", "show", "dev", "wg0"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for n in nodes {
        let age = status["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == n.id.as_str()))
            .and_then(|p| p["last_handshake"]["secs"].as_u64());
        r.check(
            age.is_some_and(|a| a < 180),
            format!(
                "node {}: WireGuard handshake {}",
                n.id,
                age.map(|a| format!("{a}s ago")).unwrap_or_else(|| "never".into())
            ),
            "the node is down or cannot reach this host's UDP port (ESB_WG_PORT); `esb node join` on it restarts it",
        );
        let subnet = n.cni_subnet().to_string();
        r.check(
            routes.lines().any(|l| l.starts_with(&format!("{subnet} "))),
            format!("node {}: route {subnet} dev wg0 in {control}", n.id),
            "routes follow the peers' AllowedIPs; see STATE_DIR/run/wg.json (refused_routes)",
        );
    }
}
