//! The node's NAT rules and the workers' fence, inside the node namespace.
//!
//! DNAT rules (seed, "DNAT ルール"): for each service with a target,
//! `CNI_GW_IP:dport -> ip:port` in PREROUTING (traffic from workers) and, with
//! `DNAT_APPLY_OUTPUT`, in OUTPUT (traffic from inside the node namespace); a target that
//! is not 127.0.0.1 is also masqueraded on the way out. Reaching 127.0.0.1 from the bridge
//! needs `route_localnet=1`, which [`crate::RuntimeNode::up`] sets.
//!
//! They live in the `nat` table that `iptables` itself manages (through this machine's
//! `iptables-save` and `iptables-restore`, whichever backend `iptables` is), so the seed's
//! troubleshooting commands (`iptables -t nat -S`, `iptables -t nat -L PREROUTING -n -v`)
//! list them with their counters. Each rule carries the comment `esb-SERVICE`: applying
//! replaces exactly the rules with such a comment in one `iptables-restore` transaction
//! (other rules of the table and their counters are kept; a rule that stays keeps its
//! counters), and removal takes exactly those rules away.
//!
//! The fence is nftables tables of esb's own ([`fence_script`]).

use std::io::Write;
use std::process::{Command, Stdio};

use esb_netns::NetNs;

use crate::{NodeConfig, NodeError};

/// The nftables table that held the DNAT rules before they moved to iptables' own `nat`
/// table; removed whenever the rules are applied or removed.
const OLD_TABLE: &str = "ip esb";

/// Prefix of the comment of every rule esb adds to the `nat` table.
pub const COMMENT_PREFIX: &str = "esb-";

/// The rules esb wants in the `nat` table, as `iptables-save` prints them (without
/// counters): `-A PREROUTING -d 10.88.0.1/32 -p tcp -m tcp --dport 9000 -m comment
/// --comment esb-s3 -j DNAT --to-destination 127.0.0.1:9000`, …
pub fn rules(cfg: &NodeConfig) -> Vec<String> {
    let gw = cfg.gateway_ip;
    let mut chains = vec!["PREROUTING"];
    if cfg.dnat.apply_output {
        chains.push("OUTPUT");
    }
    let mut out = Vec::new();
    for chain in chains {
        for (name, t) in cfg.dnat.targets() {
            out.push(format!(
                "-A {chain} -d {gw}/32 -p tcp -m tcp --dport {} -m comment --comment {COMMENT_PREFIX}{name} -j DNAT --to-destination {}:{}",
                t.dport, t.ip, t.port
            ));
        }
    }
    for (name, t) in cfg.dnat.targets() {
        if !t.ip.is_loopback() {
            out.push(format!(
                "-A POSTROUTING -d {}/32 -p tcp -m tcp --dport {} -m comment --comment {COMMENT_PREFIX}{name} -j MASQUERADE",
                t.ip, t.port
            ));
        }
    }
    out
}

/// Whether a rule line of `iptables-save` is one of esb's.
fn is_ours(rule: &str) -> bool {
    rule.contains(&format!("--comment {COMMENT_PREFIX}"))
        || rule.contains(&format!("--comment \"{COMMENT_PREFIX}"))
}

/// Splits an `iptables-save -c` rule line into its counters (`p:b`) and the rule.
fn split_counters(line: &str) -> (Option<&str>, &str) {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((c, rule)) => (Some(c), rule),
        None => (None, line),
    }
}

/// The `iptables-restore -c` input that turns the `nat` table `saved` (the output of
/// `iptables-save -c -t nat`, possibly empty) into the same table with esb's rules
/// replaced by `wanted`. Chains and rules of others keep their place and counters; a rule
/// of esb's that stays keeps its counters.
pub fn restore_input(saved: &str, wanted: &[String]) -> String {
    let mut chains = Vec::new();
    let mut kept = Vec::new();
    let mut old_ours: Vec<(String, String)> = Vec::new();
    let mut in_nat = false;
    for line in saved.lines() {
        let line = line.trim_end();
        if line.starts_with('*') {
            in_nat = line == "*nat";
            continue;
        }
        if !in_nat || line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if line.starts_with(':') {
            chains.push(line.to_string());
            continue;
        }
        let (counters, rule) = split_counters(line);
        if is_ours(rule) {
            old_ours.push((rule.to_string(), counters.unwrap_or("0:0").to_string()));
        } else {
            kept.push(line.to_string());
        }
    }
    if chains.is_empty() {
        for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            chains.push(format!(":{c} ACCEPT [0:0]"));
        }
    }
    let mut out = String::from("*nat\n");
    for line in chains.iter().chain(&kept) {
        out.push_str(line);
        out.push('\n');
    }
    for w in wanted {
        let counters = old_ours
            .iter()
            .position(|(r, _)| r == w)
            .map(|i| old_ours.remove(i).1)
            .unwrap_or_else(|| "0:0".into());
        out.push_str(&format!("[{counters}] {w}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// Runs `program args` inside `node`, feeding it `stdin`: its stdout, or what it printed
/// on failure. `package` is the Debian package named when the program is missing.
fn run_in(
    node: &NetNs,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    package: &str,
) -> Result<String, NodeError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    node.enter_on_exec(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NodeError::Missing(format!("{program} (install Debian's {package})"))
        } else {
            NodeError::io(&format!("run {program}"), e)
        }
    })?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|e| NodeError::io(&format!("write {program} input"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NodeError::io(&format!("run {program}"), e))?;
    if !out.status.success() {
        return Err(NodeError::Nat(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft(node: &NetNs, args: &[&str], stdin: Option<&str>) -> Result<String, NodeError> {
    run_in(node, "nft", args, stdin, "nftables")
}

/// The `nat` table as `iptables-save -c` prints it (empty when there is none).
fn save_nat(node: &NetNs) -> Result<String, NodeError> {
    run_in(
        node,
        "iptables-save",
        &["-c", "-t", "nat"],
        None,
        "iptables",
    )
}

/// Replaces esb's rules of the `nat` table with `wanted`, in one transaction, and drops
/// the nftables table of earlier versions.
fn replace_rules(node: &NetNs, wanted: &[String]) -> Result<(), NodeError> {
    let input = restore_input(&save_nat(node)?, wanted);
    run_in(
        node,
        "iptables-restore",
        &["-w", "-c", "-T", "nat"],
        Some(&input),
        "iptables",
    )?;
    nft(
        node,
        &["-f", "-"],
        Some(&format!("table {OLD_TABLE}\ndelete table {OLD_TABLE}\n")),
    )
    .map(drop)
}

/// Applies the rules inside the node namespace (atomically, idempotently).
pub fn apply(node: &NetNs, cfg: &NodeConfig) -> Result<(), NodeError> {
    replace_rules(node, &rules(cfg))
}

/// The tables fencing the workers ([`fence_script`]).
const FENCE: &str = "ip esb-fence";
const ISOLATE: &str = "bridge esb-isolate";

/// The port of the gateway's internal listener on the bridge address (the workers'
/// `GATEWAY_INTERNAL_URL` on a single machine).
pub const GATEWAY_INTERNAL_PORT: u16 = 443;

/// The nft script of the workers' fence (system.md §9), in one transaction:
///
/// - `ip esb-fence`: from the bridge a worker opens connections only to the NAT targets of
///   the bridge address (connections our DNAT rules rewrote: the local proxy's ports) and
///   to `GATEWAY_IP:443` (the gateway's internal listener on a single machine); with
///   `remote = Some((wg, control))` (a compute node), also to `control:443` through `wg`.
///   Not the node's other addresses or ports (an agent on a WireGuard address), not
///   other nodes. Answers of connections opened towards workers (the gateway's
///   invocations) pass.
/// - `bridge esb-isolate`: no frame is forwarded between two ports of a bridge of the
///   node namespace (it has one: the workers'), so a worker reaches no other worker; the
///   node namespace (the gateway, the agent) still reaches every worker, and every worker
///   the bridge address.
pub fn fence_script(cfg: &NodeConfig, remote: Option<(&str, std::net::Ipv4Addr)>) -> String {
    let br = &cfg.bridge;
    let gw = cfg.gateway_ip;
    let to_control = match remote {
        Some((wg, control)) => format!(
            "\t\tiifname \"{br}\" oifname \"{wg}\" ip daddr {control} tcp dport {GATEWAY_INTERNAL_PORT} accept\n"
        ),
        None => String::new(),
    };
    format!(
        "table {FENCE}\n\
         delete table {FENCE}\n\
         table {FENCE} {{\n\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\tiifname \"{br}\" ct state established,related accept\n\
         \t\tiifname \"{br}\" ct status dnat accept\n\
         \t\tiifname \"{br}\" ip daddr {gw} tcp dport {GATEWAY_INTERNAL_PORT} accept\n\
         \t\tiifname \"{br}\" ip protocol icmp accept\n\
         \t\tiifname \"{br}\" drop\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname \"{br}\" ct state established,related accept\n\
         \t\tiifname \"{br}\" ct status dnat accept\n\
         {to_control}\
         \t\tiifname \"{br}\" drop\n\t}}\n\
         }}\n\
         table {ISOLATE}\n\
         delete table {ISOLATE}\n\
         table {ISOLATE} {{\n\
         \tchain forward {{\n\t\ttype filter hook forward priority 0; policy drop;\n\t}}\n\
         }}\n"
    )
}

/// Applies [`fence_script`] inside the node namespace (atomically, idempotently).
pub fn apply_fence(
    node: &NetNs,
    cfg: &NodeConfig,
    remote: Option<(&str, std::net::Ipv4Addr)>,
) -> Result<(), NodeError> {
    nft(node, &["-f", "-"], Some(&fence_script(cfg, remote))).map(drop)
}

/// The fence's tables as nft prints them, or `None` when they are missing.
pub fn list_fence(node: &NetNs) -> Result<Option<String>, NodeError> {
    let mut out = String::new();
    for t in [FENCE, ISOLATE] {
        let fam_name: Vec<&str> = t.split(' ').collect();
        match nft(node, &["list", "table", fam_name[0], fam_name[1]], None) {
            Ok(s) => out.push_str(&s),
            Err(NodeError::Nat(msg)) if msg.contains("No such file") => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// Removes esb's NAT rules and fence tables (and nothing else); none is not an error.
pub fn remove(node: &NetNs) -> Result<(), NodeError> {
    replace_rules(node, &[])?;
    nft(
        node,
        &["-f", "-"],
        Some(&format!(
            "table {FENCE}\ndelete table {FENCE}\ntable {ISOLATE}\ndelete table {ISOLATE}\n"
        )),
    )
    .map(drop)
}

/// esb's NAT rules as `iptables-save -c` prints them (`[packets:bytes] -A PREROUTING …`),
/// one per line, or `None` when there is none.
pub fn list(node: &NetNs) -> Result<Option<String>, NodeError> {
    let saved = save_nat(node)?;
    let ours: Vec<&str> = saved
        .lines()
        .filter(|l| is_ours(split_counters(l).1))
        .collect();
    Ok((!ours.is_empty()).then(|| ours.join("\n") + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn local_proxy_mode_rules() {
        let cfg = NodeConfig::with_defaults("/tmp/s".into());
        let r = rules(&cfg).join("\n");
        assert!(r.contains(
            "-A PREROUTING -d 10.88.0.1/32 -p tcp -m tcp --dport 9000 -m comment --comment esb-s3 -j DNAT --to-destination 127.0.0.1:9000"
        ));
        assert!(r.contains(
            "--dport 8001 -m comment --comment esb-db -j DNAT --to-destination 127.0.0.1:8001"
        ));
        assert!(r.contains(
            "--dport 9428 -m comment --comment esb-logs -j DNAT --to-destination 127.0.0.1:9428"
        ));
        // PREROUTING and OUTPUT each hold the three rules; no masquerade for loopback.
        assert_eq!(r.matches("-j DNAT").count(), 6);
        assert_eq!(r.matches("-A OUTPUT").count(), 3);
        assert!(!r.contains("MASQUERADE"));
    }

    #[test]
    fn empty_target_means_no_rule_and_output_is_optional() {
        let mut cfg = NodeConfig::with_defaults("/tmp/s".into());
        cfg.dnat.s3 = None;
        cfg.dnat.apply_output = false;
        let r = rules(&cfg).join("\n");
        assert!(!r.contains("dport 9000"));
        assert_eq!(r.matches("-j DNAT").count(), 2);
        assert!(!r.contains("-A OUTPUT"));
    }

    #[test]
    fn restore_replaces_only_ours_and_keeps_counters() {
        let cfg = NodeConfig::with_defaults("/tmp/s".into());
        let wanted = rules(&cfg);
        // No table yet: the built-in chains are declared.
        let fresh = restore_input("", &wanted);
        assert!(fresh.starts_with("*nat\n:PREROUTING ACCEPT [0:0]\n"));
        assert!(fresh.ends_with("COMMIT\n"));
        assert_eq!(fresh.matches("[0:0] -A").count(), 6);
        // A table with somebody else's rule and one of ours that stays, one that goes.
        let saved = format!(
            "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [5:300]\n:INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [1:60]\n:POSTROUTING ACCEPT [1:60]\n:OTHER - [0:0]\n\
             [7:420] -A PREROUTING -p udp -j OTHER\n[3:180] {}\n\
             [9:540] -A OUTPUT -d 10.88.0.1/32 -p tcp -m tcp --dport 7 -m comment --comment esb-old -j DNAT --to-destination 127.0.0.1:7\nCOMMIT\n",
            wanted[0]
        );
        let r = restore_input(&saved, &wanted);
        assert!(r.contains(":OTHER - [0:0]\n"));
        assert!(r.contains("[7:420] -A PREROUTING -p udp -j OTHER\n"));
        assert!(r.contains(&format!("[3:180] {}\n", wanted[0])));
        assert!(!r.contains("esb-old"));
        assert!(!r.contains("# Generated"));
        assert_eq!(r.matches("-j DNAT").count(), 6);
        // Removal: ours go, the rest stays.
        let gone = restore_input(&saved, &[]);
        assert!(!gone.contains("--comment esb-"));
        assert!(gone.contains("-j OTHER"));
    }

    #[test]
    fn the_fence_admits_the_nat_targets_and_the_gateway_only() {
        let cfg = NodeConfig::with_defaults("/tmp/s".into());
        let local = fence_script(&cfg, None);
        assert!(local.contains("iifname \"esb0\" ct status dnat accept"));
        assert!(local.contains("iifname \"esb0\" ip daddr 10.88.0.1 tcp dport 443 accept"));
        assert!(local.contains("table bridge esb-isolate"));
        assert!(local.contains("hook forward priority 0; policy drop;"));
        assert!(!local.contains("oifname"));
        assert_eq!(local.matches("iifname \"esb0\" drop").count(), 2);
        let compute = fence_script(&cfg, Some(("wg0", Ipv4Addr::new(10, 99, 0, 1))));
        assert!(compute
            .contains("iifname \"esb0\" oifname \"wg0\" ip daddr 10.99.0.1 tcp dport 443 accept"));
    }

    #[test]
    fn remote_targets_are_masqueraded() {
        let mut cfg = NodeConfig::with_defaults("/tmp/s".into());
        let db = cfg.dnat.db.as_mut().unwrap();
        db.ip = Ipv4Addr::new(10, 99, 0, 1);
        db.port = 8000;
        let r = rules(&cfg).join("\n");
        assert!(r.contains(
            "--dport 8001 -m comment --comment esb-db -j DNAT --to-destination 10.99.0.1:8000"
        ));
        assert!(r.contains(
            "-A POSTROUTING -d 10.99.0.1/32 -p tcp -m tcp --dport 8000 -m comment --comment esb-db -j MASQUERADE"
        ));
    }
}
