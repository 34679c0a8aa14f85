//! Integration tests of the runtime-node through the `esb` binary, as root, with real
//! namespaces, CNI plugins, nftables and the local proxy. Each test uses its own node
//! namespace and state directory, and tears everything down on drop, also on failure.
//! Backends listen on 127.0.0.0/8 in the test's own namespace; private addresses exist only
//! inside the namespaces the test creates.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use esb_netns::NetNs;
use serde_json::Value;

/// Reads the backend's greeting, then sends 1 MiB and checks it comes back intact.
fn roundtrip(stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut tag = String::new();
    reader.read_line(&mut tag).unwrap();
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut w = stream.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "echoed bytes differ");
    tag.trim().to_string()
}

/// Whether a TCP connection to `addr` from namespace `ns` is accepted within 3 s.
fn reaches(ns: &str, addr: SocketAddr) -> bool {
    NetNs::open(ns)
        .unwrap()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
        .unwrap()
}

/// A listener on `addr` inside namespace `ns` (accepting until dropped).
fn listen_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    NetNs::open(ns)
        .unwrap()
        .run(|| std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("listen on {addr} in {ns}: {e}"))
}

/// What `ip netns exec NS ARGS...` prints (the command must succeed).
fn in_netns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn proxy_pid(status: &Value) -> i32 {
    status["proxy_pid"].as_i64().expect("proxy running") as i32
}

/// Whether `pid` is a live process (a zombie awaiting its reaper is not).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn workers_reach_backends_through_nat_and_proxy_and_down_cleans_everything() {
    let mut node = TestNode::new();
    let s3 = tagged_echo(Ipv4Addr::LOCALHOST, 0, "s3");
    let db = tagged_echo(Ipv4Addr::LOCALHOST, 0, "db");
    let logs = tagged_echo(Ipv4Addr::LOCALHOST, 0, "logs");
    write_hosts(
        &node.hosts(),
        "127.0.0.1 s3-storage database victorialogs\n",
    );
    node.env = vec![
        ("CNI_SUBNET".into(), "10.88.7.0/24".into()),
        ("ESB_S3_BACKEND".into(), format!("s3-storage:{}", s3.port())),
        ("ESB_DB_BACKEND".into(), format!("database:{}", db.port())),
        (
            "ESB_LOGS_BACKEND".into(),
            format!("victorialogs:{}", logs.port()),
        ),
    ];
    node.ok(&["node", "up"]);

    // A worker gets an address from CNI_SUBNET, the base /16 and a route via 10.88.0.1.
    let w = node.attach();
    let ip: Ipv4Addr = w["ip"].as_str().unwrap().parse().unwrap();
    assert!(
        "10.88.7.0/24"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&ip),
        "{ip}"
    );
    assert_eq!(w["prefix_len"], 16);
    let worker = w["name"].as_str().unwrap().to_string();
    let routes = Command::new("ip")
        .args(["-n", &worker, "-j", "route"])
        .output()
        .unwrap();
    let routes: Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.88.0.1"),
        "no default route via 10.88.0.1: {routes}"
    );

    // Worker -> 10.88.0.1:PORT -> PREROUTING DNAT -> proxy -> the right backend, 1 MiB intact.
    let gw = Ipv4Addr::new(10, 88, 0, 1);
    for (port, tag) in [(9000, "s3"), (8001, "db"), (9428, "logs")] {
        assert_eq!(roundtrip(connect_in(&worker, (gw, port).into())), tag);
    }
    // The same from inside the node namespace (OUTPUT path).
    for (port, tag) in [(9000, "s3"), (8001, "db"), (9428, "logs")] {
        assert_eq!(roundtrip(connect_in(&node.netns, (gw, port).into())), tag);
    }

    // A second worker gets another address; `up` again adds nothing.
    let w2 = node.attach();
    assert_ne!(w2["ip"], w["ip"]);

    // The fence: a worker reaches no other worker and no other port of the node
    // namespace; the node namespace (the gateway's side) reaches every worker.
    let worker2 = w2["name"].as_str().unwrap().to_string();
    let ip2: Ipv4Addr = w2["ip"].as_str().unwrap().parse().unwrap();
    let in_worker2 = listen_in(&worker2, (Ipv4Addr::UNSPECIFIED, 8080).into());
    let in_node = listen_in(&node.netns, (gw, 7777).into());
    let gateway_port = listen_in(&node.netns, (gw, 443).into());
    assert!(reaches(&node.netns, (ip2, 8080).into()), "node -> worker");
    assert!(!reaches(&worker, (ip2, 8080).into()), "worker -> worker");
    assert!(!reaches(&worker, (gw, 7777).into()), "worker -> node port");
    assert!(reaches(&worker, (gw, 443).into()), "worker -> gateway port");
    assert!(reaches(&node.netns, (gw, 7777).into()), "node -> node port");
    drop((in_worker2, in_node, gateway_port));
    let before = node.status();
    node.ok(&["node", "up"]);
    let after = node.status();
    assert_eq!(before["nat_rules"], after["nat_rules"]);
    assert_eq!(before["bridge"], after["bridge"]);
    assert_eq!(proxy_pid(&before), proxy_pid(&after));
    assert_eq!(after["attachments"].as_array().unwrap().len(), 2);
    let rules = after["nat_rules"].as_str().unwrap();
    assert_eq!(rules.matches("-j DNAT").count(), 6, "{rules}");
    // The seed's own troubleshooting command lists them (step 1).
    let listed = in_netns(&node.netns, &["iptables", "-t", "nat", "-S"]);
    for port in [9000, 8001, 9428] {
        for chain in ["PREROUTING", "OUTPUT"] {
            assert!(
                listed
                    .lines()
                    .any(|l| l.starts_with(&format!("-A {chain} -d 10.88.0.1/32"))
                        && l.contains(&format!("--dport {port} "))
                        && l.contains("-j DNAT")),
                "{chain} {port} in {listed}"
            );
        }
    }

    // Down leaves no namespace, veth, rule, lease or process.
    let pid = proxy_pid(&after);
    let ipam = node
        .state
        .path()
        .join("node")
        .join(&node.netns)
        .join("ipam");
    assert!(
        std::fs::read_dir(&ipam).unwrap().count() > 0,
        "leases exist while up"
    );
    node.ok(&["node", "down"]);
    for ns in [
        &node.netns,
        &worker,
        &w2["name"].as_str().unwrap().to_string(),
    ] {
        assert!(!NetNs::exists(ns), "namespace {ns} left behind");
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "mount point {ns} left behind"
        );
    }
    assert!(!process_alive(pid), "proxy pid {pid} left running");
    assert!(!ipam.exists(), "IPAM leases left behind");
    assert!(
        !node.state.path().join("node").join(&node.netns).exists(),
        "node state left behind"
    );
    let st = node.status();
    assert_eq!(st["up"], false);
    assert!(st["attachments"].as_array().unwrap().is_empty());
    // Down again is harmless.
    node.ok(&["node", "down"]);
}

#[test]
fn a_backend_name_repointed_is_followed_by_the_next_connection() {
    let node = {
        let mut n = TestNode::new();
        // Two backends on the same port, 127.0.0.1 and 127.0.0.2: only the name moves.
        let a = tagged_echo(Ipv4Addr::LOCALHOST, 0, "first");
        let _b = tagged_echo(Ipv4Addr::new(127, 0, 0, 2), a.port(), "second");
        n.env = vec![("ESB_DB_BACKEND".into(), format!("database:{}", a.port()))];
        n
    };
    write_hosts(&node.hosts(), "127.0.0.1 database\n");
    node.ok(&["node", "up"]);
    let addr: SocketAddr = "10.88.0.1:8001".parse().unwrap();
    assert_eq!(roundtrip(connect_in(&node.netns, addr)), "first");
    write_hosts(&node.hosts(), "127.0.0.2 database\n");
    assert_eq!(roundtrip(connect_in(&node.netns, addr)), "second");
    write_hosts(&node.hosts(), "127.0.0.1 database\n");
    assert_eq!(roundtrip(connect_in(&node.netns, addr)), "first");
}

#[test]
fn empty_dnat_ip_means_no_rule() {
    let mut node = TestNode::new();
    node.env = vec![
        ("DNAT_S3_IP".into(), "".into()),
        ("DNAT_APPLY_OUTPUT".into(), "0".into()),
    ];
    node.ok(&["node", "up"]);
    let rules = node.status()["nat_rules"].as_str().unwrap().to_string();
    assert!(!rules.contains("dport 9000"), "{rules}");
    assert!(
        rules.contains(
            "--dport 8001 -m comment --comment esb-db -j DNAT --to-destination 127.0.0.1:8001"
        ),
        "{rules}"
    );
    // Without DNAT_APPLY_OUTPUT only PREROUTING holds rules.
    assert_eq!(rules.matches("-j DNAT").count(), 2, "{rules}");
    assert!(!rules.contains("-A OUTPUT"), "{rules}");
}

#[test]
fn bad_settings_are_named_and_nothing_is_created() {
    let cases: &[(&str, &str, &str)] = &[
        ("CNI_SUBNET", "10.89.1.0/24", "CNI_SUBNET"),
        ("CNI_SUBNET", "10.88.1.5/24", "CNI_SUBNET"),
        ("CNI_SUBNET", "10.88.1.0/33", "CNI_SUBNET"),
        ("CNI_GW_IP", "10.88.0.300", "CNI_GW_IP"),
        ("DNAT_DB_PORT", "80x", "DNAT_DB_PORT"),
        ("DNAT_DB_DPORT", "0", "DNAT_DB_DPORT"),
        ("DNAT_S3_IP", "1.2.3", "DNAT_S3_IP"),
        ("ESB_S3_BACKEND", "s3-storage", "ESB_S3_BACKEND"),
        ("ESB_DB_BACKEND", "database:70000", "ESB_DB_BACKEND"),
        ("CNI_PATH", "/nonexistent-cni", "CNI_PATH"),
        ("ESB_NODE_NETNS", "bad/name", "ESB_NODE_NETNS"),
    ];
    for (var, value, named) in cases {
        let mut node = TestNode::new();
        node.env = vec![(var.to_string(), value.to_string())];
        let out = node.esb(&["node", "up"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(
            err.contains(named),
            "{var}={value}: error does not name {named}: {err}"
        );
        let netns = if *var == "ESB_NODE_NETNS" {
            value.to_string()
        } else {
            node.netns.clone()
        };
        assert!(!NetNs::exists(&netns), "{var}={value}: namespace created");
        assert!(
            !node.state.path().join("node").exists(),
            "{var}={value}: node state created"
        );
    }
}

#[test]
fn attach_needs_a_node_and_cleans_up_after_itself() {
    let mut node = TestNode::new();
    let name = unique("esbt-w");
    node.workers.push(name.clone());
    let out = node.esb(&["node", "attach", &name]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not up"));
    assert!(!NetNs::exists(&name));

    node.ok(&["node", "up", "--no-proxy"]);
    let a = node.attach();
    let name = a["name"].as_str().unwrap().to_string();
    // Attaching again returns the same worker; detach removes it and frees the lease.
    let again: Value =
        serde_json::from_str(&node.ok(&["node", "attach", &name, "--json"])).unwrap();
    assert_eq!(again["ip"], a["ip"]);
    let lease = node
        .state
        .path()
        .join("node")
        .join(&node.netns)
        .join("ipam")
        .join(format!("esb-{}", node.netns))
        .join(a["ip"].as_str().unwrap());
    assert!(lease.exists(), "no lease file at {}", lease.display());
    assert!(node.ok(&["node", "detach", &name]).contains("detached"));
    assert!(!NetNs::exists(&name));
    assert!(!lease.exists(), "lease not released");
    assert!(node
        .ok(&["node", "detach", &name])
        .contains("was not attached"));
}
