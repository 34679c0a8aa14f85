//! The compute node's process: its components supervised like the control box's
//! (containerd, WireGuard, the local proxy, the agent), the status file `esb status`
//! reads, and the stop that removes what it made.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use esb_box::cluster::AGENT_PORT;
use esb_box::daemon;
use esb_box::layout::{
    agent_dir, agent_socket, box_pid_file, ca_file, containerd_dir, containerd_socket, hosts_dir,
    hosts_file, log_file, ready_file, tls_dir, wg_file, wg_key_file, wg_status_file,
};
use esb_box::status::{save, update, BoxStatus, Shared};
use esb_box::supervise::{pending_components, start, ChildSpec, Ready, Running};

use crate::join::{JoinConfig, Joined};
use crate::{Error, Result, ResultExt};

/// The components of a compute node, in start order.
pub const COMPONENTS: &[&str] = &["containerd", "wireguard", "proxy", "agent"];

/// The running node process, if any.
pub fn running(state: &Path) -> Option<daemon::Tracked> {
    daemon::read_live(&box_pid_file(state))
}

/// The node network of a joined node: the configured one with the worker subnet the
/// control node gave.
pub fn node_config(cfg: &JoinConfig, j: &Joined) -> esb_runtime_node::NodeConfig {
    let mut node = cfg.node.clone();
    node.worker_subnet = j.node.cni_subnet();
    node
}

/// The node's components, in start order.
pub fn child_specs(cfg: &JoinConfig, j: &Joined, netns: &str) -> Vec<ChildSpec> {
    let dir = &cfg.state;
    let st = format!("--state-dir={}", dir.display());
    let esb = |name: &'static str, args: Vec<String>, env: Vec<(String, String)>, ready| {
        let mut all = vec![st.clone()];
        all.extend(args);
        ChildSpec::new(name, cfg.esb.clone(), all, env, ready)
    };
    let ctd = containerd_dir(dir);
    let t = tls_dir(dir);
    let (ak, sk, region) = j.credentials.clone();
    let control = j.control_host;
    vec![
        ChildSpec::new(
            "containerd",
            cfg.containerd.clone(),
            vec![
                "--config".into(),
                ctd.join("config.toml").display().to_string(),
            ],
            vec![],
            Ready::Containerd(ctd.join("containerd.sock")),
        ),
        esb(
            "wireguard",
            vec![
                "wireguard".into(),
                format!("--interface-file={}", wg_file(dir).display()),
                format!("--status-file={}", wg_status_file(dir).display()),
                format!("--ready-file={}", ready_file(dir, "wireguard").display()),
            ],
            vec![],
            Ready::PidFile(ready_file(dir, "wireguard")),
        ),
        esb(
            "proxy",
            vec![
                "proxy".into(),
                format!("--netns={netns}"),
                format!("--dial-netns={netns}"),
                format!("--pid-file={}", ready_file(dir, "proxy").display()),
                "--s3-backend=s3-storage:9000".into(),
                "--db-backend=database:8000".into(),
                "--logs-backend=victorialogs:9428".into(),
                format!("--hosts-file={}", hosts_file(dir).display()),
            ],
            vec![],
            Ready::PidFile(ready_file(dir, "proxy")),
        ),
        esb(
            "agent",
            vec![
                "agent".into(),
                format!("--socket={}", agent_socket(dir).display()),
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
                (
                    "ESB_NODE_MAX_MEMORY_MB".into(),
                    cfg.max_memory_mb.to_string(),
                ),
            ],
            Ready::Unix(agent_socket(dir)),
        ),
    ]
}

/// Everything a compute node needs before its components start: the hosts file (the
/// backends are the control node's relays), containerd's trust of the box's registry, the
/// WireGuard interface file, containerd's configuration.
fn prepare(cfg: &JoinConfig, j: &Joined, netns: &str) -> Result<()> {
    let dir = &cfg.state;
    let control = j.control_host;
    std::fs::write(
        hosts_file(dir),
        format!(
            "# Written by esb node join: the backends are the control node's relays.\n{control} s3-storage database victorialogs gateway esb-registry\n"
        ),
    )?;
    let host = format!("{control}:{}", esb_registry::DEFAULT_PORT);
    hosts_dir(dir).write(&host, &format!("https://{host}"), &ca_file(dir))?;
    let endpoint: SocketAddr = j
        .control_wg_endpoint
        .to_socket_addrs()
        .map_err(|source| Error::ResolveControl {
            endpoint: j.control_wg_endpoint.clone(),
            source,
        })?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| Error::NoIpv4(j.control_wg_endpoint.clone()))?;
    let f = esb_wireguard::WgFile {
        ifname: "wg0".into(),
        netns: netns.into(),
        address: format!("{}/24", j.node.wg_address()),
        private_key_file: wg_key_file(dir),
        listen: SocketAddr::from(([0, 0, 0, 0], cfg.wg_port)),
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
    let ctd = containerd_dir(dir);
    std::fs::create_dir_all(&ctd)?;
    let ctd = std::fs::canonicalize(&ctd)?;
    std::fs::write(ctd.join("config.toml"), esb_containerd::config_toml(&ctd))?;
    Ok(())
}

/// Runs the compute node until SIGTERM/SIGINT (the foreground process). Returns an error
/// when it could not start; then nothing it made is left behind.
pub async fn run(cfg: JoinConfig, j: Joined) -> Result<()> {
    let dir = cfg.state.clone();
    let _lock = esb_box::control::lock(&dir)?;
    daemon::write_pid_file(&box_pid_file(&dir))?;
    let left = stop_leftovers(&dir);
    if !left.is_empty() {
        tracing::warn!("stopped leftovers of an unclean stop: {}", left.join(", "));
    }
    let _ = std::fs::remove_file(agent_socket(&dir));
    let _ = std::fs::remove_file(containerd_socket(&dir));
    let node = node_config(&cfg, &j);
    let netns = node.netns.clone();
    let rn = esb_runtime_node::RuntimeNode::new(node.clone())?;
    let specs = child_specs(&cfg, &j, &netns);
    let shared: Shared = Arc::new(Mutex::new(BoxStatus {
        pid: std::process::id() as i32,
        state: "starting".into(),
        message: String::new(),
        template: String::new(),
        gateway_url: j.control_endpoint.clone(),
        endpoints: serde_json::json!({"node": j.node.id, "wg": j.node.wg_address().to_string(),
            "workers": j.node.cni_subnet().to_string()}),
        ca: ca_file(&dir).display().to_string(),
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
        rn.up().step("node network")?;
        let ns = esb_netns::NetNs::open(&netns)?;
        ns.write_sysctl("net/ipv4/ip_forward", "1")?;
        esb_runtime_node::nat::apply_fence(&ns, &node, Some(("wg0", j.control_host)))
            .step("fence the workers")?;
        prepare(&cfg, &j, &netns)?;
        for spec in &specs {
            stops.push(start(spec, &dir, &shared).await?);
        }
        Ok::<_, Error>(())
    };
    let started = tokio::select! {
        r = start => r,
        _ = term.recv() => Err(Error::StoppedWhileStarting("SIGTERM")),
        _ = int.recv() => Err(Error::StoppedWhileStarting("SIGINT")),
    };
    if let Err(e) = started {
        tracing::error!("the node did not start: {}", e.chain());
        update(&dir, &shared, |s| {
            s.state = "failed".into();
            s.message = e.chain();
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
    let _ = std::fs::remove_file(esb_box::layout::status_file(&dir));
    let _ = std::fs::remove_file(box_pid_file(&dir));
    Ok(())
}

/// Starts the node process in the background (`esb ARGS…`: the same join, in the
/// foreground, detached, logging to `STATE/logs/box.log`) and waits until its status file
/// says ready.
pub fn start_background(cfg: &JoinConfig, args: &[String]) -> Result<()> {
    let dir = &cfg.state;
    let log = log_file(dir, "box");
    let mut child = daemon::detached(cfg.esb.as_os_str(), args, &log)?
        .spawn()
        .map_err(|source| {
            Error::Box(esb_box::Error::Spawn {
                component: "the node process".into(),
                program: cfg.esb.clone(),
                source,
            })
        })?;
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Err(Error::DidNotStart {
                status: st.to_string(),
                why: esb_box::status::read(dir)
                    .map(|s| s.message)
                    .unwrap_or_else(|| daemon::tail(&log, 15)),
            });
        }
        if esb_box::status::read(dir).is_some_and(|s| s.state == "ready") {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(Error::NotReady(log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the components a node that did not stop cleanly left running.
pub fn stop_leftovers(dir: &Path) -> Vec<String> {
    esb_box::supervise::stop_leftovers(dir, COMPONENTS)
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
    esb_box::containerd::destroy_leftover_workers(
        agent_dir(dir),
        rn.config().clone(),
        containerd_socket(dir),
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
    for f in ["proxy", "wireguard"] {
        let _ = std::fs::remove_file(ready_file(dir, f));
    }
    let _ = std::fs::remove_file(agent_socket(dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined() -> Joined {
        Joined {
            node: esb_cluster::NodeRecord {
                id: "node-a".into(),
                number: 2,
                wg_public_key: String::new(),
                wg_endpoint: None,
                joined_at: 0,
                max_memory_mb: 512,
            },
            control_host: Ipv4Addr::new(10, 99, 0, 1),
            control_wg_endpoint: "control.example:51820".into(),
            control_wg_public_key: String::new(),
            control_endpoint: "control.example:443".into(),
            credentials: ("ak".into(), "sk".into(), "ap-northeast-1".into()),
            leave_secret: String::new(),
        }
    }

    #[test]
    fn a_joined_node_runs_its_components_on_its_own_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::join::tests::config(dir.path());
        let j = joined();
        assert_eq!(
            node_config(&cfg, &j).worker_subnet.to_string(),
            "10.88.2.0/24"
        );
        let specs = child_specs(&cfg, &j, "esb-node");
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names, COMPONENTS);
        let agent = specs.iter().find(|s| s.name == "agent").unwrap();
        assert_eq!(agent.program, Path::new("/usr/local/bin/esb"));
        assert!(agent.args.contains(&"--listen=10.99.0.2:50051".to_string()));
        assert!(agent
            .args
            .contains(&"--cni-subnet=10.88.2.0/24".to_string()));
        assert!(agent.env.contains(&(
            "GATEWAY_INTERNAL_URL".into(),
            "https://10.99.0.1:443".into()
        )));
        assert_eq!(specs[0].program, Path::new("containerd"));
    }
}
