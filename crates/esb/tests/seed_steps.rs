//! The seed's own words, against `esb up`: its five troubleshooting steps (shared/seed,
//! "トラブルシュート"), each run as the seed writes it with only `docker exec
//! esb-runtime-node` replaced by `ip netns exec <node namespace>` (and `docker logs
//! esb-local-proxy` by `esb logs --component proxy`), and the seed's settings as
//! `esb config` shows them.

mod boxkit;

use std::process::Command;

use boxkit::e2e_box;

/// `ip netns exec NS ARGS...`: (success, stdout, stderr).
fn in_node(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The packet counter of the PREROUTING DNAT rule for `port` in `iptables -t nat -L
/// PREROUTING -n -v` output.
fn prerouting_packets(listing: &str, port: u16) -> Option<u64> {
    listing
        .lines()
        .find(|l| {
            l.contains("DNAT")
                && l.contains(&format!("dpt:{port} "))
                && l.contains(&format!("to:127.0.0.1:{port}"))
        })
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| {
            // iptables abbreviates large counters (12K, 3M).
            let (num, mult) = match p.chars().last() {
                Some('K') => (&p[..p.len() - 1], 1_000),
                Some('M') => (&p[..p.len() - 1], 1_000_000),
                _ => (p, 1),
            };
            num.parse::<u64>().ok().map(|n| n * mult)
        })
}

#[test]
fn the_seeds_troubleshooting_steps_work_verbatim() {
    let mut b = e2e_box();
    // The seed's meaning of VICTORIALOGS_URL: where the gateway ships its logs. The same
    // log store under another spelling, so the gateway's environment shows it was taken.
    let logs_url = format!("http://localhost:{}", b.logs_port);
    b.set("VICTORIALOGS_URL", &logs_url);
    let out = b.up();
    assert!(out.contains("esb is up"), "{out}");
    let ns = b.netns.clone();

    // A worker uses S3 (through 10.88.0.1:9000, the DNAT rule and the local proxy).
    let put = b.ok(&[
        "invoke",
        "storage",
        "--payload",
        r#"{"op":"s3","key":"seed/step1","put":"counted"}"#,
    ]);
    assert!(put.contains("counted"), "{put}");

    // 1) DNAT rules: listed by iptables, in PREROUTING and OUTPUT, with counters.
    let (ok, rules, err) = in_node(&ns, &["iptables", "-t", "nat", "-S"]);
    assert!(ok, "iptables -t nat -S: {err}");
    for (dport, target) in [
        (9000, "127.0.0.1:9000"),
        (8001, "127.0.0.1:8001"),
        (9428, "127.0.0.1:9428"),
    ] {
        for chain in ["PREROUTING", "OUTPUT"] {
            assert!(
                rules.lines().any(|l| {
                    l.starts_with(&format!("-A {chain} -d 10.88.0.1/32 -p tcp"))
                        && l.contains(&format!("--dport {dport} "))
                        && l.ends_with(&format!("-j DNAT --to-destination {target}"))
                }),
                "{chain} {dport} -> {target} missing from:\n{rules}"
            );
        }
    }
    let (ok, listing, err) = in_node(
        &ns,
        &["iptables", "-t", "nat", "-L", "PREROUTING", "-n", "-v"],
    );
    assert!(ok, "iptables -t nat -L PREROUTING -n -v: {err}");
    let packets = prerouting_packets(&listing, 9000)
        .unwrap_or_else(|| panic!("no S3 DNAT rule in:\n{listing}"));
    assert!(
        packets > 0,
        "the S3 rule counted no packet after a worker used S3:\n{listing}"
    );

    // 2) route_localnet is 1.
    let (ok, v, err) = in_node(&ns, &["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]);
    assert!(ok, "{err}");
    assert_eq!(v.trim(), "1");

    // 3) The local proxy's log: its routes, listeners and backends by name.
    let proxy_log = b.ok(&["logs", "--component", "proxy", "-n", "200"]);
    for (route, backend) in [
        ("s3", "s3-storage"),
        ("db", "database"),
        ("logs", "victorialogs"),
    ] {
        assert!(
            proxy_log.lines().any(|l| l.contains("proxy route ready")
                && l.contains(&format!("route={route}"))
                && l.contains(backend)),
            "route {route} -> {backend} not in the proxy log:\n{proxy_log}"
        );
    }

    // 4) From the node namespace through the DNAT: S3's /health.
    let (ok, body, err) = in_node(
        &ns,
        &[
            "curl",
            "-sS",
            "-f",
            "--max-time",
            "20",
            "http://10.88.0.1:9000/health",
        ],
    );
    assert!(ok, "curl -f http://10.88.0.1:9000/health: {err}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON health");
    assert!(health.is_object(), "{body}");

    // 5) The worker's path to the gateway: GATEWAY_INTERNAL_URL on a single machine.
    let (ok, body, err) = in_node(
        &ns,
        &[
            "curl",
            "-sS",
            "-f",
            "-k",
            "--max-time",
            "20",
            "https://10.88.0.1/health",
        ],
    );
    assert!(ok, "curl -k https://10.88.0.1/health: {err}");
    assert!(body.contains("healthy"), "{body}");

    // The seed's settings, each with its value and where it came from.
    let config = b.ok(&["config"]);
    for want in [
        "DNAT_DB_PORT = \"8001\"  # default: DNAT_DB_IP is loopback",
        "DNAT_DB_DPORT = \"8001\"  # default",
        "DNAT_S3_IP = \"127.0.0.1\"  # default",
        "DNAT_APPLY_OUTPUT = \"1\"  # default",
        "ESB_WORKER_LOGS_URL = \"http://10.88.0.1:9428\"  # default",
        "LAMBDA_INVOKE_TIMEOUT = \"900\"  # default",
        "AUTH_ENDPOINT_PATH = ",
    ] {
        assert!(config.contains(want), "{want} not in esb config:\n{config}");
    }
    assert!(
        config.contains(&format!("VICTORIALOGS_URL = \"{logs_url}\"  # env")),
        "{config}"
    );
    // The gateway ships to VICTORIALOGS_URL: its environment has it, and its records of
    // the invocation above are in the log store.
    let status = b.status();
    let gw_pid = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gateway")
        .and_then(|c| c["pid"].as_i64())
        .expect("gateway pid");
    let environ = std::fs::read(format!("/proc/{gw_pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|kv| kv == format!("VICTORIALOGS_URL={logs_url}")),
        "the gateway does not ship to VICTORIALOGS_URL"
    );
    b.wait_for(
        "the gateway's record of the invocation in the log store",
        || {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    &format!("http://127.0.0.1:{}/select/logsql/query", b.logs_port),
                    "--data-urlencode",
                    "query=container_name:esb-gateway job:gateway",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.contains("\"storage\""))
        },
    );
    b.down_clean();
}
