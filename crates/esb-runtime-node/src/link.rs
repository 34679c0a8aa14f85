//! Links and addresses in the node namespace, through iproute2 (`ip -n NS …`).
//! Used only by `up` and `status`; per-worker links are made by the CNI bridge plugin.

use std::process::Command;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// The bridge as `ip` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// Interface name.
    pub name: String,
    /// Whether it is administratively up.
    pub admin_up: bool,
    /// Its IPv4 addresses with prefix.
    pub addresses: Vec<String>,
}

fn ip(netns: &str, args: &[&str]) -> Result<String, NodeError> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .map_err(|e| NodeError::io("run ip", e))?;
    if !out.status.success() {
        return Err(NodeError::Link(format!(
            "`ip -n {netns} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets a link up.
pub fn set_up(netns: &str, dev: &str) -> Result<(), NodeError> {
    ip(netns, &["link", "set", dev, "up"]).map(drop)
}

/// Adds `cidr` to `dev` unless it carries it already.
pub fn ensure_address(netns: &str, dev: &str, cidr: &str) -> Result<(), NodeError> {
    let out = ip(netns, &["-4", "-o", "addr", "show", "dev", dev])?;
    let have = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == "inet" && w[1] == cidr);
    if !have {
        ip(netns, &["addr", "add", cidr, "dev", dev])?;
    }
    Ok(())
}

/// Creates the bridge with `addr` unless it exists, and sets it up.
pub fn ensure_bridge(netns: &str, name: &str, addr: Ipv4Net) -> Result<(), NodeError> {
    let info = match bridge_info(netns, name)? {
        Some(info) => info,
        None => {
            ip(netns, &["link", "add", name, "type", "bridge"])?;
            bridge_info(netns, name)?.expect("bridge just created")
        }
    };
    let want = addr.to_string();
    if !info.addresses.contains(&want) {
        ip(netns, &["addr", "add", &want, "dev", name])?;
    }
    if !info.admin_up {
        set_up(netns, name)?;
    }
    Ok(())
}

/// The bridge's state, or `None` when there is no such link.
pub fn bridge_info(netns: &str, name: &str) -> Result<Option<BridgeInfo>, NodeError> {
    let out = match ip(netns, &["-j", "addr", "show", "dev", name]) {
        Ok(out) => out,
        Err(NodeError::Link(msg)) if msg.contains("does not exist") => return Ok(None),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let Some(link) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let addresses = link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["family"] == "inet")
                .filter_map(|x| {
                    Some(format!(
                        "{}/{}",
                        x["local"].as_str()?,
                        x["prefixlen"].as_u64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(BridgeInfo {
        name: name.to_string(),
        admin_up: flags.contains(&"UP"),
        addresses,
    }))
}
