//! The node's NAT rules, kept in an nftables table of esb's own (`ip esb`) inside the node
//! namespace, so that they are applied atomically, listed with `nft list table ip esb`,
//! and removed exactly.
//!
//! Rules (seed, "DNAT ルール"): for each service with a target,
//! `CNI_GW_IP:dport -> ip:port` in PREROUTING (traffic from workers) and, with
//! `DNAT_APPLY_OUTPUT`, in OUTPUT (traffic from inside the node namespace); a target that
//! is not 127.0.0.1 is also masqueraded on the way out. Reaching 127.0.0.1 from the bridge
//! needs `route_localnet=1`, which [`crate::RuntimeNode::up`] sets.

use std::io::Write;
use std::process::{Command, Stdio};

use esb_netns::NetNs;

use crate::{NodeConfig, NodeError};

/// nftables family and name of esb's table.
pub const TABLE: &str = "ip esb";

/// The nft script that (re)creates the table with exactly the configured rules, in one
/// transaction: the table is declared, flushed away and rebuilt, so applying it twice
/// leaves one copy and a failure leaves the previous rules untouched.
pub fn ruleset(cfg: &NodeConfig) -> String {
    let gw = cfg.gateway_ip;
    let mut dnat = String::new();
    let mut masq = String::new();
    for (name, t) in cfg.dnat.targets() {
        dnat.push_str(&format!(
            "\t\tip daddr {gw} tcp dport {} dnat to {}:{} comment \"esb {name}\"\n",
            t.dport, t.ip, t.port
        ));
        if !t.ip.is_loopback() {
            masq.push_str(&format!(
                "\t\tip daddr {} tcp dport {} masquerade comment \"esb {name}\"\n",
                t.ip, t.port
            ));
        }
    }
    let output = if cfg.dnat.apply_output {
        dnat.as_str()
    } else {
        ""
    };
    format!(
        "table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n{dnat}\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{output}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n{masq}\t}}\n\
         }}\n"
    )
}

fn nft(node: &NetNs, args: &[&str], stdin: Option<&str>) -> Result<String, NodeError> {
    let mut cmd = Command::new("nft");
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
            NodeError::Missing("nft (install Debian's nftables)".into())
        } else {
            NodeError::io("run nft", e)
        }
    })?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|e| NodeError::io("write nft script", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NodeError::io("run nft", e))?;
    if !out.status.success() {
        return Err(NodeError::Nat(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies the rules inside the node namespace (atomically, idempotently).
pub fn apply(node: &NetNs, cfg: &NodeConfig) -> Result<(), NodeError> {
    nft(node, &["-f", "-"], Some(&ruleset(cfg))).map(drop)
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

/// Removes esb's table (and nothing else); no table is not an error.
pub fn remove(node: &NetNs) -> Result<(), NodeError> {
    nft(
        node,
        &["-f", "-"],
        Some(&format!(
            "table {TABLE}\ndelete table {TABLE}\ntable {FENCE}\ndelete table {FENCE}\n\
             table {ISOLATE}\ndelete table {ISOLATE}\n"
        )),
    )
    .map(drop)
}

/// The table as nft prints it, or `None` when there is no such table.
pub fn list(node: &NetNs) -> Result<Option<String>, NodeError> {
    let fam_name: Vec<&str> = TABLE.split(' ').collect();
    match nft(node, &["list", "table", fam_name[0], fam_name[1]], None) {
        Ok(s) => Ok(Some(s)),
        Err(NodeError::Nat(msg)) if msg.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn local_proxy_mode_rules() {
        let cfg = NodeConfig::with_defaults("/tmp/s".into());
        let r = ruleset(&cfg);
        assert!(r.contains("ip daddr 10.88.0.1 tcp dport 9000 dnat to 127.0.0.1:9000"));
        assert!(r.contains("ip daddr 10.88.0.1 tcp dport 8001 dnat to 127.0.0.1:8001"));
        assert!(r.contains("ip daddr 10.88.0.1 tcp dport 9428 dnat to 127.0.0.1:9428"));
        // PREROUTING and OUTPUT each hold the three rules; no masquerade for loopback.
        assert_eq!(r.matches("dnat to").count(), 6);
        assert!(!r.contains("masquerade"));
        assert!(r.starts_with("table ip esb\ndelete table ip esb\n"));
    }

    #[test]
    fn empty_target_means_no_rule_and_output_is_optional() {
        let mut cfg = NodeConfig::with_defaults("/tmp/s".into());
        cfg.dnat.s3 = None;
        cfg.dnat.apply_output = false;
        let r = ruleset(&cfg);
        assert!(!r.contains("dport 9000"));
        assert_eq!(r.matches("dnat to").count(), 2);
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
        let r = ruleset(&cfg);
        assert!(r.contains("tcp dport 8001 dnat to 10.99.0.1:8000"));
        assert!(r.contains("ip daddr 10.99.0.1 tcp dport 8000 masquerade"));
    }
}
