//! Control and compute nodes over WireGuard, with hosts as network namespaces on one
//! machine: a LAN bridge in a namespace of its own, a control host running `esb up
//! --no-local-workers` and a compute host joining it with `esb node join`; private
//! addresses exist only inside these namespaces, all removed at the end (also on failure).

mod boxkit;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use boxkit::e2e_box;
use esb_netns::NetNs;
use serde_json::Value;

/// The LAN and its hosts; every namespace removed on drop.
struct Lan {
    id: String,
    names: Vec<String>,
    next: u8,
}

impl Lan {
    fn new() -> Lan {
        esb_testkit::require_root();
        let id = format!("{}", std::process::id());
        let lan = format!("esbt-lan-{id}");
        let mut l = Lan {
            id,
            names: vec![lan.clone()],
            next: 1,
        };
        NetNs::create(&lan).unwrap();
        ipn(&lan, &["link", "add", "br0", "type", "bridge"]);
        ipn(&lan, &["link", "set", "br0", "up"]);
        ipn(&lan, &["link", "set", "lo", "up"]);
        l.names.shrink_to_fit();
        l
    }

    /// A host on the LAN with address 192.168.77.(10+n)/24; returns (namespace, address).
    fn host(&mut self, tag: &str) -> (String, String) {
        let (name, addr, _) = self.host_with_port(tag);
        (name, addr)
    }

    /// [`Lan::host`], also returning the name of its port on the LAN's bridge.
    fn host_with_port(&mut self, tag: &str) -> (String, String, String) {
        let n = self.next;
        self.next += 1;
        let name = format!("esbt-{tag}-{}", self.id);
        let addr = format!("192.168.77.{}", 10 + n);
        self.names.push(name.clone());
        NetNs::create(&name).unwrap();
        ipn(&name, &["link", "set", "lo", "up"]);
        let lan = &self.names[0];
        let peer = format!("v{n}-{}", &self.id[..self.id.len().min(8)]);
        ip(&[
            "link", "add", "eth0", "netns", &name, "type", "veth", "peer", "name", &peer, "netns",
            lan,
        ]);
        ipn(lan, &["link", "set", &peer, "master", "br0", "up"]);
        ipn(
            &name,
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
        ipn(&name, &["link", "set", "eth0", "up"]);
        (name, addr, peer)
    }

    /// Cuts (`up = false`) or mends a host's cable: its port on the bridge.
    fn cable(&self, port: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        ipn(&self.names[0], &["link", "set", port, state]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = NetNs::delete(n);
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ipn(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A compute host's `esb`.
struct Compute {
    host: String,
    state: PathBuf,
    netns: String,
    _dir: tempfile::TempDir,
}

impl Compute {
    fn new(host: &str, tag: &str) -> Compute {
        let dir = tempfile::Builder::new()
            .prefix("esbt-cn-")
            .tempdir_in("/tmp")
            .unwrap();
        Compute {
            host: host.into(),
            state: dir.path().join("s"),
            netns: format!("esbt-{tag}n-{}", std::process::id()),
            _dir: dir,
        }
    }

    fn esb(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_esb"))
            .arg(format!("--state-dir={}", self.state.display()))
            .args(args)
            .env_remove("ESB_STATE_DIR")
            .env("ESB_NODE_NETNS", &self.netns)
            .env("ESB_LOG", "info")
            .output()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join(format!("logs/{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in ["box", "wireguard", "agent", "proxy"] {
                eprintln!("compute {n} log:\n{}", self.log(n));
            }
        }
        let _ = self.esb(&["node", "leave"]);
        let _ = NetNs::delete(&self.netns);
        kill_shims_of(&self.state);
    }
}

/// Kills (by PID) containerd shims whose containerd lived under `state`: a node killed
/// with -9 leaves its shims behind (docs/next.md), and this test's must not outlive it.
fn kill_shims_of(state: &std::path::Path) {
    let state = state.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("containerd-shim") && cmd.contains(&state) {
            // SAFETY: kill(2) on a PID read from /proc just now, a shim of this test.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn agents(status: &Value) -> Vec<Value> {
    status["agents"].as_array().cloned().unwrap_or_default()
}

/// A load across a node's loss lost only the requests in flight there: at most one per
/// client (4), each failed as soon as the node was marked down (502), none queued behind
/// it and none waiting for its deadline (504).
fn only_in_flight_failed(report: &Value) {
    assert!(report["failed"].as_u64().unwrap_or(99) <= 4, "{report}");
    let statuses = report["statuses"].as_object().cloned().unwrap_or_default();
    assert!(
        statuses.keys().all(|s| s == "200" || s == "502"),
        "{report}"
    );
}

/// The containers of a compute node's containerd (`None` when `ctr` cannot list them).
fn containers(state: &Path) -> Option<std::collections::BTreeSet<String>> {
    let ls = Command::new("ctr")
        .arg("--address")
        .arg(state.join("containerd/containerd.sock"))
        .args(["-n", "esb-runtime", "containers", "ls", "-q"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        String::from_utf8_lossy(&ls.stdout)
            .lines()
            .map(String::from)
            .collect(),
    )
}

/// Waits for the box's status to satisfy `f`; the last status in the failure.
fn wait_status(b: &boxkit::TestBox, what: &str, secs: u64, f: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = b.status();
        if f(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; last status: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_compute_node_joins_over_wireguard_and_serves_the_e2e_app() {
    let mut lan = Lan::new();
    let (control_host, control_addr) = lan.host("hc");
    let (node_host, _) = lan.host("h1");
    let (node_host_b, _, cable_b) = lan.host_with_port("h2");
    let mut b = e2e_box();
    b.host_netns = Some(control_host.clone());
    b.set("ESB_GATEWAY_LISTEN", &format!("0.0.0.0:{}", b.gateway_port));
    b.set("ESB_LOCAL_WORKERS", "0");
    b.set("ORPHAN_GRACE_PERIOD_SECONDS", "5");
    b.set("ESB_GATEWAY_LOG_STDERR", "1");
    b.up();
    let endpoint = format!("{control_addr}:{}", b.gateway_port);
    let token = b
        .ok(&["node", "token", "--endpoint", &endpoint])
        .trim()
        .to_string();
    assert!(token.starts_with("esb1."), "{token}");

    let node = Compute::new(&node_host, "n1");
    // node-a has room for the suite (16 workers of 128 MiB), node-b (later) 2000 MiB:
    // placement by free memory then alternates between them (see the chain below).
    let joined = node.esb(&[
        "node",
        "join",
        &token,
        "--node-id",
        "node-a",
        "--max-memory-mb",
        "2048",
    ]);
    assert!(joined.status.success(), "join: {}", text(&joined));
    assert!(
        text(&joined).contains("compute node node-a is up"),
        "{}",
        text(&joined)
    );
    // The token is one-time.
    let other = Compute::new(&node_host, "n2");
    let again = other.esb(&["node", "join", &token, "--node-id", "node-b"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("used already"), "{}", text(&again));

    // The gateway reaches the node's agent over wg0 (mTLS) and marks it up.
    wait("the agent of node-a up in the gateway", 120, || {
        agents(&b.status())
            .iter()
            .any(|a| a["node"] == "node-a" && a["up"] == true)
    });
    // The control namespace routes the node's worker subnet through wg0.
    let routes = ipn(&b.control_netns, &["-4", "route"]);
    assert!(routes.contains("10.88.2.0/24 dev wg0"), "{routes}");

    // The suite, every worker on the compute node.
    b.pytest("test_box.py");
    let status = b.status();
    let workers: Vec<Value> = status["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["workers"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(!workers.is_empty(), "{status}");
    assert!(workers.iter().all(|w| w["node"] == "node-a"), "{workers:?}");

    // A second node: control routes exactly the two worker subnets through wg0.
    let token_b = b
        .ok(&["node", "token", "--endpoint", &endpoint])
        .trim()
        .to_string();
    let node_b = Compute::new(&node_host_b, "n3");
    let joined = node_b.esb(&[
        "node",
        "join",
        &token_b,
        "--node-id",
        "node-b",
        "--max-memory-mb",
        "2000",
    ]);
    assert!(joined.status.success(), "join: {}", text(&joined));
    wait("the agent of node-b up in the gateway", 120, || {
        agents(&b.status())
            .iter()
            .any(|a| a["node"] == "node-b" && a["up"] == true)
    });
    let wg_routes = || -> Vec<String> {
        ipn(&b.control_netns, &["-4", "route", "show", "dev", "wg0"])
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .filter(|n| n != "10.99.0.0/24")
            .collect()
    };
    wait("both worker subnets routed", 30, || {
        wg_routes() == ["10.88.2.0/24", "10.88.3.0/24"]
    });

    // A peer announcing a default route and link-local gets no route for them.
    let wg_file = b.state.join("wg/wg0.json");
    let original = std::fs::read_to_string(&wg_file).unwrap();
    let mut doc: Value = serde_json::from_str(&original).unwrap();
    doc["peers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "rogue",
            "public_key": "0fQ8dCHCJzvfVkXfkrVWLAq2iUcZrJ3OAi1h5fhXNlE=",
            "allowed_ips": ["0.0.0.0/0", "169.254.0.0/16", "10.88.9.0/24"],
        }));
    std::fs::write(&wg_file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let hup = || {
        let pid: i32 = std::fs::read_to_string(b.state.join("run/wireguard.pid"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // SAFETY: SIGHUP to the box's WireGuard component, PID from its pid file.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
    };
    hup();
    wait("the rogue peer's routes", 30, || {
        wg_routes().contains(&"10.88.9.0/24".to_string())
    });
    let all = ipn(&b.control_netns, &["-4", "route"]);
    assert!(
        !all.contains("default") && !all.contains("169.254"),
        "{all}"
    );
    wait("the refusals reported", 30, || {
        let s: Value =
            serde_json::from_slice(&std::fs::read(b.state.join("run/wg.json")).unwrap_or_default())
                .unwrap_or_default();
        let r = s["refused_routes"].to_string();
        r.contains("0.0.0.0/0") && r.contains("169.254.0.0/16") && r.contains("rogue")
    });
    std::fs::write(&wg_file, original).unwrap();
    hup();
    wait("the rogue peer's routes gone", 30, || {
        wg_routes() == ["10.88.2.0/24", "10.88.3.0/24"]
    });

    // A chain across nodes. Once only public's provisioned worker (on node-a) is left,
    // node-a has 1920 MiB free and node-b 2000: chain's worker goes to node-b, echo's to
    // node-a (1920 > 1872), recorder's to node-b; the test reads each one's node from
    // the gateway's records in the log store.
    let workers_of = |s: &Value| -> Vec<String> {
        s["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|f| {
                let name = f["name"].as_str().unwrap_or("").to_string();
                f["workers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |w| format!("{name}@{}", w["node"].as_str().unwrap_or("?")))
            })
            .collect()
    };
    wait_status(
        &b,
        "only public's provisioned worker left, both nodes up",
        120,
        |s| {
            workers_of(s) == ["public@node-a"]
                && agents(s).iter().filter(|a| a["up"] == true).count() == 2
        },
    );
    b.pytest("test_cluster.py");

    // Requests are served from both nodes: a function's workers spread over them.
    let token = b.token();
    let load = b.load(&token, "/echo", 8, 8).output().unwrap();
    let report: Value = serde_json::from_slice(&load.stdout)
        .unwrap_or_else(|_| panic!("load.py said: {}", text(&load)));
    assert_eq!(report["failed"], 0, "{report}");
    // Both nodes hold workers that served requests: the load's echo workers alternate
    // between the two nodes (the most free memory first).
    let (code, _) = b.curl(&[&b.url("/public")]);
    assert_eq!(code, 200);
    let status = b.status();
    let nodes: std::collections::BTreeSet<String> = status["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["node"].as_str().map(String::from))
        .collect();
    if nodes.len() != 2 {
        let logs = std::fs::read_to_string(b.state.join("logs/gateway.log")).unwrap_or_default();
        let agent_lines: Vec<String> = logs
            .lines()
            .filter(|l| l.contains("agent") || l.contains("worker creation"))
            .map(String::from)
            .collect();
        panic!(
            "workers on {nodes:?} only: {status}\ngateway records:\n{}",
            agent_lines.join("\n")
        );
    }
    // A worker on node-b reaches 10.88.0.1's services and the gateway at 10.99.0.1:443,
    // nothing else: not its agent, not node-a's, not control's other relays, not another
    // worker. A load keeps the workers busy meanwhile (idle ones go after 3 s).
    let keep = b
        .load(&token, "/echo", 60, 8)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_status(&b, "echo workers busy on both nodes", 60, |s| {
        let w = workers_of(s);
        w.contains(&"echo@node-a".to_string()) && w.contains(&"echo@node-b".to_string())
    });
    let status = b.status();
    let worker = status["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["workers"].as_array().cloned().unwrap_or_default())
        .find(|w| w["node"] == "node-b")
        .and_then(|w| w["id"].as_str().map(String::from))
        .expect("a worker on node-b");
    let reach = |addr: &str, port: u16| -> bool {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{worker}"))
            .args(["--", "timeout", "3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
            .output()
            .unwrap()
            .status
            .success()
    };
    for (addr, port) in [("10.88.0.1", 9000), ("10.88.0.1", 8001), ("10.99.0.1", 443)] {
        assert!(reach(addr, port), "a worker cannot reach {addr}:{port}");
    }
    for (addr, port) in [
        ("10.99.0.3", 50051),
        ("10.99.0.2", 50051),
        ("10.99.0.1", 5010),
        ("10.99.0.1", 9000),
        ("10.88.0.1", 50051),
    ] {
        assert!(!reach(addr, port), "a worker reached {addr}:{port}");
    }
    // Nor any other worker, on its node or the other one (their :8080, where the
    // gateway invokes them).
    let others: Vec<String> = status["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["id"].as_str().map(String::from))
        .filter(|id| *id != worker)
        .filter(|id| Path::new("/run/netns").join(id).exists())
        .filter_map(|id| {
            let a = ipn(&id, &["-4", "-o", "addr", "show", "dev", "eth0"]);
            a.split_whitespace()
                .nth(3)
                .and_then(|c| c.split('/').next())
                .map(String::from)
        })
        .collect();
    assert!(others.len() >= 2, "{status}");
    for ip in &others {
        assert!(
            !reach(ip, 8080),
            "a worker reached another worker at {ip}:8080"
        );
    }
    // (A probe from a namespace that went away would prove nothing.)
    assert!(
        Path::new("/run/netns").join(&worker).exists(),
        "the probing worker {worker} went away"
    );
    let _ = Command::new("kill").arg(keep.id().to_string()).status();
    let _ = keep.wait_with_output();

    let doctor = b.ok(&["doctor"]);
    assert!(
        doctor.contains("node node-b: WireGuard handshake") && doctor.contains("all checks passed"),
        "{doctor}"
    );
    // The compute side: wg0, handshake, routes, names, relays, worker -> gateway, agent.
    let doctor = node_b.esb(&["doctor"]);
    assert!(
        doctor.status.success()
            && text(&doctor).contains("control node")
            && text(&doctor).contains("worker -> gateway: https://10.99.0.1:443/health")
            && text(&doctor).contains("all checks passed"),
        "{}",
        text(&doctor)
    );
    // A component's own log, on either side (the seed's `docker logs esb-local-proxy`).
    let proxy_log = node_b.esb(&["logs", "--component", "proxy", "-n", "5"]);
    assert!(
        proxy_log.status.success() && !proxy_log.stdout.is_empty(),
        "{}",
        text(&proxy_log)
    );
    let gw_log = b.ok(&["logs", "--component", "gateway", "-n", "3"]);
    assert_eq!(gw_log.lines().count(), 3, "{gw_log}");
    let bad = b.esb(&["logs", "--component", "../secrets"]);
    assert!(
        !bad.status.success() && text(&bad).contains("gateway"),
        "{}",
        text(&bad)
    );
    let human = b.ok(&["status"]);
    assert!(
        human.contains("node-a") && human.contains("ready"),
        "{human}"
    );

    // Node loss under load: every process of node-b killed (SIGKILL, by the PIDs it
    // recorded); node-a keeps answering; node-b is marked down within 3 heartbeats.
    let load = b
        .load(&token, "/echo", 20, 4)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let mut pid_files: Vec<PathBuf> = std::fs::read_dir(node_b.state.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .collect();
    pid_files.push(node_b.state.join("containerd/containerd.pid"));
    for f in &pid_files {
        let Ok(t) = std::fs::read_to_string(f) else {
            continue;
        };
        if let Some(pid) = t
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        {
            // SAFETY: SIGKILL to a process node-b recorded (box, components, containerd).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    wait("node-b marked down", 60, || {
        agents(&b.status())
            .iter()
            .any(|a| a["node"] == "node-b" && a["up"] == false)
    });
    let out = load.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("load.py said: {}", String::from_utf8_lossy(&out.stdout)));
    println!("load across the node loss: {report}");
    assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{report}");
    only_in_flight_failed(&report);
    // A node's loss does not count against the function's breaker: echo is answered (by
    // node-a).
    wait("echo served again", 90, || {
        let (code, _) = b.curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &b.url("/echo"),
        ]);
        code == 200
    });

    // node-b comes back with its identity (no token) and keeps no orphan worker.
    let back = node_b.esb(&["node", "join"]);
    assert!(back.status.success(), "rejoin: {}", text(&back));
    wait("node-b up again", 120, || {
        agents(&b.status())
            .iter()
            .any(|a| a["node"] == "node-b" && a["up"] == true)
    });
    let known = |s: &Value| -> std::collections::BTreeSet<String> {
        s["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|f| f["workers"].as_array().cloned().unwrap_or_default())
            .filter(|w| w["node"] == "node-b")
            .filter_map(|w| w["id"].as_str().map(String::from))
            .collect()
    };
    wait("no orphan worker on node-b", 120, || {
        containers(&node_b.state).is_some_and(|c| c.is_subset(&known(&b.status())))
    });

    // A partition that heals: node-b's cable cut under load. The other node answers,
    // node-b is marked down and its workers leave the pools (they keep running there);
    // once the cable is back, node-b is up again and the workers the gateway gave up
    // on are destroyed: no orphan.
    let containers_b = || containers(&node_b.state).expect("ctr lists node-b's containers");
    wait_status(&b, "only public's provisioned worker left", 120, |s| {
        workers_of(s) == ["public@node-a"]
    });
    let load = b
        .load(&token, "/echo", 20, 4)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_status(&b, "echo workers on node-b", 60, |s| {
        workers_of(s).contains(&"echo@node-b".to_string())
    });
    lan.cable(&cable_b, false);
    wait("node-b marked down by the partition", 60, || {
        agents(&b.status())
            .iter()
            .any(|a| a["node"] == "node-b" && a["up"] == false)
    });
    let stranded = containers_b();
    assert!(!stranded.is_empty(), "no worker left on node-b to strand");
    let out = load.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("load.py said: {}", String::from_utf8_lossy(&out.stdout)));
    println!("load across the partition: {report}");
    assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{report}");
    only_in_flight_failed(&report);
    lan.cable(&cable_b, true);
    wait("node-b up after the partition healed", 120, || {
        agents(&b.status())
            .iter()
            .any(|a| a["node"] == "node-b" && a["up"] == true)
    });
    wait("the stranded workers destroyed", 120, || {
        let now = containers_b();
        now.is_disjoint(&stranded) && now.is_subset(&known(&b.status()))
    });
    wait("echo served again after the partition", 90, || {
        let (code, _) = b.curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &b.url("/echo"),
        ]);
        code == 200
    });

    // Bad input, each refused by name, nothing made on either side.
    let nodes_before = std::fs::read(b.state.join("cluster/nodes.json")).unwrap();
    let bad = Compute::new(&node_host_b, "n4");
    let mut forged = esb_cluster::JoinToken::decode(&token_b).unwrap();
    forged.secret = "00".repeat(32);
    let out = bad.esb(&["node", "join", &forged.encode(), "--node-id", "node-c"]);
    assert!(
        text(&out).contains("not known to this control node"),
        "{}",
        text(&out)
    );
    let expired = b
        .ok(&["node", "token", "--endpoint", &endpoint, "--ttl", "1s"])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(2));
    let out = bad.esb(&["node", "join", &expired, "--node-id", "node-c"]);
    assert!(text(&out).contains("expired"), "{}", text(&out));
    let fresh = b
        .ok(&["node", "token", "--endpoint", &endpoint])
        .trim()
        .to_string();
    let out = bad.esb(&["node", "join", &fresh, "--node-id", "node-a"]);
    assert!(
        text(&out).contains("taken by another node"),
        "{}",
        text(&out)
    );
    let mut elsewhere = esb_cluster::JoinToken::decode(&fresh).unwrap();
    elsewhere.endpoint = format!("192.168.77.99:{}", b.gateway_port);
    let out = bad.esb(&["node", "join", &elsewhere.encode(), "--node-id", "node-c"]);
    assert!(text(&out).contains("192.168.77.99"), "{}", text(&out));
    let mut other_ca = esb_cluster::JoinToken::decode(&fresh).unwrap();
    other_ca.ca_fingerprint = format!("sha256:{}", "ab".repeat(32));
    let out = bad.esb(&["node", "join", &other_ca.encode(), "--node-id", "node-c"]);
    assert!(
        text(&out).contains("not the box this token is for"),
        "{}",
        text(&out)
    );
    assert!(!bad.state.join("cluster/node.json").exists());
    assert!(!Path::new("/run/netns").join(&bad.netns).exists());
    assert_eq!(
        std::fs::read(b.state.join("cluster/nodes.json")).unwrap(),
        nodes_before,
        "a refused join changed the control's registry"
    );

    // node-b leaves: the control node drains it and forgets it (record, certificate,
    // tunnel peer and route); the gateway places nothing there any more.
    let left = node_b.esb(&["node", "leave"]);
    assert!(left.status.success(), "{}", text(&left));
    assert!(
        text(&left).contains("drained and forgot this node"),
        "{}",
        text(&left)
    );
    let member_ids = || -> Vec<String> {
        let nodes: Value =
            serde_json::from_slice(&std::fs::read(b.state.join("cluster/nodes.json")).unwrap())
                .unwrap();
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(member_ids(), ["node-a"]);
    assert!(!b.state.join("tls/node-node-b.pem").exists());
    wait("node-b's route gone", 30, || {
        wg_routes() == ["10.88.2.0/24"]
    });
    wait_status(&b, "node-b removed in the gateway", 30, |s| {
        agents(s)
            .iter()
            .filter(|a| a["node"] == "node-b")
            .all(|a| a["removed"] == true)
    });
    // The outside can neither remove a node nor leave in another node's name.
    let post = |op: &str, body: &str| -> (u16, String) {
        b.curl(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &b.url(&format!("/esb/v1/nodes/{op}")),
        ])
    };
    let (code, body) = post("remove", r#"{"node_id":"node-a"}"#);
    assert_eq!(code, 404, "{body}");
    let (code, body) = post("leave", r#"{"node_id":"node-a","secret":"00"}"#);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("only the node itself may leave"), "{body}");
    assert_eq!(member_ids(), ["node-a"]);
    // A node that cannot leave itself (its host gone) is removed on the control node.
    let out = b.esb(&["node", "remove", "node-zz"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not a member"), "{}", text(&out));
    let removed = b.ok(&["node", "remove", "node-a"]);
    assert!(removed.contains("node node-a removed"), "{removed}");
    assert!(member_ids().is_empty());
    wait("no worker route left", 30, || wg_routes().is_empty());
    // node-a, forgotten already, still leaves cleanly here, with a warning.
    let left = node.esb(&["node", "leave"]);
    assert!(left.status.success(), "{}", text(&left));
    assert!(text(&left).contains("was not told"), "{}", text(&left));
    assert!(!Path::new("/run/netns").join(&node.netns).exists());
    b.down_clean();
}
