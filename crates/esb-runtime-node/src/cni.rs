//! Driving the standard CNI plugins (bridge, host-local, loopback) through the CNI exec
//! protocol, spec 1.0: configuration on stdin, parameters in `CNI_*` variables, the result
//! or an error object on stdout.
//!
//! The plugins run inside the node namespace (their "host" side), so the bridge and the
//! host ends of the veth pairs live there and never in the machine's root namespace.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use esb_netns::NetNs;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{NodeConfig, NodeError};

/// CNI spec version spoken with the plugins.
pub const CNI_VERSION: &str = "1.0.0";
/// Plugins the node needs.
pub const REQUIRED_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// Interface name of a worker's link to the bridge.
pub const WORKER_IFNAME: &str = "eth0";

/// The network configuration list for this node's bridge (written as `<state>/esb.conflist`
/// for people and tools to read; the same value is what esb hands the plugins).
pub fn conflist(cfg: &NodeConfig) -> Value {
    let (first, last) = cfg.worker_range();
    json!({
        "cniVersion": CNI_VERSION,
        "name": cfg.cni_network_name(),
        "plugins": [{
            "type": "bridge",
            "bridge": cfg.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{
                    "subnet": cfg.base_subnet.to_string(),
                    "rangeStart": first.to_string(),
                    "rangeEnd": last.to_string(),
                    "gateway": cfg.gateway_ip.to_string(),
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir(cfg),
            }
        }]
    })
}

/// Where host-local keeps its leases for this node.
pub fn ipam_dir(cfg: &NodeConfig) -> PathBuf {
    cfg.state_dir.join("ipam")
}

/// Finds a plugin binary in the configured directories.
pub fn find_plugin(cfg: &NodeConfig, name: &str) -> Option<PathBuf> {
    cfg.cni_bin_dirs
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Checks that every plugin the node needs is installed.
pub fn check_plugins(cfg: &NodeConfig) -> Result<(), NodeError> {
    let missing: Vec<&str> = REQUIRED_PLUGINS
        .iter()
        .copied()
        .filter(|p| find_plugin(cfg, p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let dirs: Vec<String> = cfg
        .cni_bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(NodeError::Config {
        setting: "CNI_PATH",
        msg: format!(
            "CNI plugins {} not found in {} (install Debian's containernetworking-plugins)",
            missing.join(", "),
            dirs.join(":")
        ),
    })
}

/// What a worker got from the bridge plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The worker's address.
    pub ip: Ipv4Addr,
    /// Its prefix length (the base subnet's).
    pub prefix_len: u8,
    /// Its default gateway.
    pub gateway: Ipv4Addr,
    /// The worker interface's MAC address, when reported.
    pub mac: Option<String>,
    /// The full result as the plugin returned it (needed for DEL).
    pub raw: Value,
}

/// The CNI commands esb uses.
#[derive(Debug, Clone, Copy)]
enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

struct Invocation<'a> {
    node: &'a NetNs,
    cfg: &'a NodeConfig,
    container_id: &'a str,
    netns_path: &'a Path,
    ifname: &'a str,
}

impl Invocation<'_> {
    fn exec(&self, command: CniCommand, plugin_conf: &Value) -> Result<Value, NodeError> {
        let plugin = plugin_conf["type"].as_str().unwrap_or_default();
        let bin = find_plugin(self.cfg, plugin).ok_or_else(|| NodeError::Config {
            setting: "CNI_PATH",
            msg: format!("CNI plugin {plugin} not found"),
        })?;
        let cni_path =
            std::env::join_paths(&self.cfg.cni_bin_dirs).map_err(|e| NodeError::Config {
                setting: "CNI_PATH",
                msg: e.to_string(),
            })?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.netns_path)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.node.enter_on_exec(&mut cmd);
        let step = format!("CNI {} {plugin}", command.as_str());
        let mut child = cmd.spawn().map_err(|e| NodeError::io(&step, e))?;
        let input = serde_json::to_vec(plugin_conf).expect("json");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(&input)
            .map_err(|e| NodeError::io(&step, e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| NodeError::io(&step, e))?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = stdout["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            let details = stdout["details"].as_str().unwrap_or_default();
            return Err(NodeError::Cni {
                plugin: plugin.to_string(),
                command: command.as_str(),
                msg: if details.is_empty() {
                    msg
                } else {
                    format!("{msg}: {details}")
                },
            });
        }
        Ok(stdout)
    }
}

/// Builds the per-plugin configuration from the list (name, version, prevResult).
fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

fn loopback_conf() -> Value {
    json!({ "cniVersion": CNI_VERSION, "name": "esb-loopback", "type": "loopback" })
}

/// Runs CNI ADD for a worker namespace: loopback up, then the bridge chain on `eth0`.
pub fn add(
    node: &NetNs,
    cfg: &NodeConfig,
    container_id: &str,
    netns_path: &Path,
) -> Result<CniResult, NodeError> {
    let list = conflist(cfg);
    let lo = Invocation {
        node,
        cfg,
        container_id,
        netns_path,
        ifname: "lo",
    };
    lo.exec(CniCommand::Add, &loopback_conf())?;
    let inv = Invocation {
        ifname: WORKER_IFNAME,
        ..lo
    };
    let mut prev: Option<Value> = None;
    for plugin in list["plugins"].as_array().expect("plugins") {
        let conf = plugin_conf(&list, plugin, prev.as_ref());
        prev = Some(inv.exec(CniCommand::Add, &conf)?);
    }
    let raw = prev.unwrap_or(Value::Null);
    parse_result(&raw).ok_or_else(|| NodeError::Cni {
        plugin: "bridge".into(),
        command: "ADD",
        msg: format!("result holds no IPv4 address: {raw}"),
    })
}

/// Runs CNI DEL for a worker namespace (plugins in reverse order, then loopback).
///
/// DEL is idempotent in CNI: it succeeds when the worker is already gone, and frees the
/// IPAM lease in any case.
pub fn del(
    node: &NetNs,
    cfg: &NodeConfig,
    container_id: &str,
    netns_path: &Path,
    prev: Option<&Value>,
) -> Result<(), NodeError> {
    let list = conflist(cfg);
    let inv = Invocation {
        node,
        cfg,
        container_id,
        netns_path,
        ifname: WORKER_IFNAME,
    };
    for plugin in list["plugins"].as_array().expect("plugins").iter().rev() {
        let conf = plugin_conf(&list, plugin, prev);
        match inv.exec(CniCommand::Del, &conf) {
            Ok(_) => {}
            // A concurrent DEL of the same worker removed the interface between the
            // plugin's lookup and its delete (the lease goes first in the plugin): gone
            // is what DEL wants.
            Err(NodeError::Cni { msg, .. }) if link_already_gone(&msg) => {}
            Err(e) => return Err(e),
        }
    }
    let lo = Invocation {
        ifname: "lo",
        ..inv
    };
    // Loopback DEL only brings lo down in a namespace that is about to go: best effort.
    let _ = lo.exec(CniCommand::Del, &loopback_conf());
    Ok(())
}

/// Whether a plugin's DEL failed only because the interface no longer exists.
fn link_already_gone(msg: &str) -> bool {
    msg.contains("no such device") || msg.contains("Link not found")
}

/// Extracts the worker's IPv4 address from a CNI 1.0 result.
pub fn parse_result(raw: &Value) -> Option<CniResult> {
    let interfaces = raw["interfaces"].as_array();
    raw["ips"].as_array()?.iter().find_map(|ip| {
        let (addr, prefix) = ip["address"].as_str()?.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let gateway = ip["gateway"].as_str()?.parse().ok()?;
        let mac = ip["interface"]
            .as_u64()
            .and_then(|i| interfaces?.get(i as usize))
            .and_then(|iface| iface["mac"].as_str())
            .map(str::to_string);
        Some(CniResult {
            ip: addr,
            prefix_len: prefix.parse().ok()?,
            gateway,
            mac,
            raw: raw.clone(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_keeps_the_base_prefix_and_uses_the_worker_range() {
        let mut cfg = NodeConfig::with_defaults("/var/lib/esb/node".into());
        cfg.worker_subnet = "10.88.3.0/24".parse().unwrap();
        let c = conflist(&cfg);
        let range = &c["plugins"][0]["ipam"]["ranges"][0][0];
        assert_eq!(range["subnet"], "10.88.0.0/16");
        assert_eq!(range["rangeStart"], "10.88.3.1");
        assert_eq!(range["rangeEnd"], "10.88.3.254");
        assert_eq!(range["gateway"], "10.88.0.1");
        assert_eq!(c["plugins"][0]["bridge"], "esb0");
        assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/var/lib/esb/node/ipam");
    }

    #[test]
    fn parses_a_bridge_result() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "esb0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/w"}
            ],
            "ips": [{"interface": 2, "address": "10.88.1.5/16", "gateway": "10.88.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}]
        });
        let r = parse_result(&raw).unwrap();
        assert_eq!(r.ip, Ipv4Addr::new(10, 88, 1, 5));
        assert_eq!(r.prefix_len, 16);
        assert_eq!(r.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(r.mac.as_deref(), Some("cc:cc:cc:cc:cc:cc"));
        assert!(parse_result(&json!({"ips": []})).is_none());
    }

    #[test]
    fn plugin_conf_carries_name_version_and_prev_result() {
        let list = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]});
        let prev = json!({"ips": []});
        let c = plugin_conf(&list, &list["plugins"][0], Some(&prev));
        assert_eq!(c["name"], "n");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
    }
}
