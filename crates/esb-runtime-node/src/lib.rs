//! The runtime-node: the network side of a compute node.
//!
//! `up` builds, idempotently, a named network namespace (default `esb-node`) holding the
//! bridge `esb0` with the gateway address (10.88.0.1/16), `route_localnet=1`, and the NAT
//! rules that send workers' traffic for 10.88.0.1:{9000,8001,9428} to the local proxy on
//! 127.0.0.1. `attach` gives a worker namespace an address from this node's `CNI_SUBNET`
//! through the standard CNI plugins (bridge + host-local), with the base /16 route and a
//! default route via the gateway; `detach` undoes it. `down` removes exactly what `up` and
//! `attach` made.
//!
//! This crate knows nothing of containerd or of the proxy process: the agent and the CLI
//! build on it.

pub mod cni;
mod config;
pub mod control;
mod link;
pub mod nat;

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use esb_netns::{NetNs, NetNsError};
use serde::{Deserialize, Serialize};

pub use config::*;
pub use control::{ControlNetwork, CONTROL_IP, DEFAULT_CONTROL_NETNS};
pub use link::BridgeInfo;

/// What can go wrong; every variant names the setting, resource or step.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is invalid.
    #[error("{setting}: {msg}")]
    Config {
        /// The setting's name (environment variable or flag).
        setting: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// A program the node needs is not installed.
    #[error("missing prerequisite: {0}")]
    Missing(String),
    /// The node namespace does not exist.
    #[error("runtime-node {0:?} is not up (run `esb node up`)")]
    NotUp(String),
    /// The node is up with other settings than asked for.
    #[error(
        "runtime-node {netns:?} is up with other settings ({diff}): run `esb node down` first"
    )]
    Conflict {
        /// Node namespace.
        netns: String,
        /// The settings that differ.
        diff: String,
    },
    /// A CNI plugin failed.
    #[error("CNI {command} with plugin {plugin}: {msg}")]
    Cni {
        /// Plugin type.
        plugin: String,
        /// ADD or DEL.
        command: &'static str,
        /// The plugin's error message.
        msg: String,
    },
    /// nft rejected the rules.
    #[error("nftables: {0}")]
    Nat(String),
    /// An `ip` command failed.
    #[error("ip: {0}")]
    Link(String),
    /// A namespace operation failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// Another I/O step failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl NodeError {
    pub(crate) fn io(step: &str, source: io::Error) -> NodeError {
        NodeError::Io {
            step: step.to_string(),
            source,
        }
    }
}

/// A worker namespace attached to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Name of the worker's namespace (also its CNI container id).
    pub name: String,
    /// Path of the namespace (`/run/netns/NAME`), for the container runtime.
    pub netns_path: PathBuf,
    /// The worker's address, from `CNI_SUBNET`.
    pub ip: Ipv4Addr,
    /// Prefix length of the worker's address (the base subnet's).
    pub prefix_len: u8,
    /// Its default gateway (`CNI_GW_IP`).
    pub gateway: Ipv4Addr,
    /// MAC address of its interface, when known.
    pub mac: Option<String>,
    /// The CNI result, kept for DEL.
    pub cni_result: serde_json::Value,
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The settings in force (those `up` saved, else those given).
    pub config: NodeConfig,
    /// Whether the node namespace exists.
    pub up: bool,
    /// The bridge, when it exists.
    pub bridge: Option<BridgeInfo>,
    /// `net.ipv4.conf.all.route_localnet` in the node namespace.
    pub route_localnet: Option<String>,
    /// esb's NAT rules as `iptables-save -c` prints them ([`nat::list`]).
    pub nat_rules: Option<String>,
    /// Attached worker namespaces.
    pub attachments: Vec<Attachment>,
}

/// What `up` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    /// Whether the node namespace was created by this call (false: it was already up).
    pub created: bool,
}

/// A runtime-node, described by its settings.
#[derive(Debug, Clone)]
pub struct RuntimeNode {
    cfg: NodeConfig,
}

const SAVED_CONFIG: &str = "node.json";
const CONFLIST: &str = "esb.conflist";
const ATTACHMENTS: &str = "attachments";

impl RuntimeNode {
    /// A node with the given settings (checked).
    pub fn new(cfg: NodeConfig) -> Result<RuntimeNode, NodeError> {
        cfg.validate()?;
        Ok(RuntimeNode { cfg })
    }

    /// The node whose settings `up` saved under `state_dir`, or `fallback` when none are.
    ///
    /// `down`, `attach` and `status` use this so they act on the node as it was brought up.
    pub fn from_state_or(fallback: NodeConfig) -> Result<RuntimeNode, NodeError> {
        match read_json::<NodeConfig>(&fallback.state_dir.join(SAVED_CONFIG)) {
            Some(saved) if saved.netns == fallback.netns => RuntimeNode::new(saved),
            _ => RuntimeNode::new(fallback),
        }
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Checks everything `up` needs before anything is created.
    pub fn preflight(&self) -> Result<(), NodeError> {
        cni::check_plugins(&self.cfg)?;
        for (prog, pkg) in [("nft", "nftables"), ("ip", "iproute2")] {
            if which(prog).is_none() {
                return Err(NodeError::Missing(format!(
                    "{prog} (install Debian's {pkg})"
                )));
            }
        }
        Ok(())
    }

    /// Brings the node's network up; running it again changes nothing.
    pub fn up(&self) -> Result<UpReport, NodeError> {
        self.preflight()?;
        let cfg = &self.cfg;
        if NetNs::exists(&cfg.netns) {
            if let Some(saved) = read_json::<NodeConfig>(&cfg.state_dir.join(SAVED_CONFIG)) {
                let diff = config_diff(&saved, cfg);
                if !diff.is_empty() && !self.attachments().is_empty() {
                    return Err(NodeError::Conflict {
                        netns: cfg.netns.clone(),
                        diff,
                    });
                }
            }
        }
        std::fs::create_dir_all(cfg.state_dir.join(ATTACHMENTS))
            .map_err(|e| NodeError::io(&format!("create {}", cfg.state_dir.display()), e))?;
        let (node, created) = NetNs::create(&cfg.netns)?;
        let result = self.configure(&node);
        if let Err(e) = result {
            if created {
                let _ = NetNs::delete(&cfg.netns);
            }
            return Err(e);
        }
        Ok(UpReport { created })
    }

    fn configure(&self, node: &NetNs) -> Result<(), NodeError> {
        let cfg = &self.cfg;
        link::set_up(&cfg.netns, "lo")?;
        link::ensure_bridge(&cfg.netns, &cfg.bridge, cfg.gateway_cidr())?;
        if cfg.dnat.targets().any(|(_, t)| t.ip.is_loopback()) {
            node.write_sysctl("net/ipv4/conf/all/route_localnet", "1")?;
        }
        nat::apply(node, cfg)?;
        nat::apply_fence(node, cfg, None)?;
        write_json(&cfg.state_dir.join(CONFLIST), &cni::conflist(cfg))?;
        write_json(&cfg.state_dir.join(SAVED_CONFIG), cfg)?;
        Ok(())
    }

    /// Removes the node: every attachment, esb's NAT rules and fence, the namespace (with the bridge
    /// and veths), the IPAM leases and the node's state files.
    pub fn down(&self) -> Result<(), NodeError> {
        let cfg = &self.cfg;
        for a in self.attachments() {
            self.detach(&a.name)?;
        }
        if let Ok(node) = NetNs::open(&cfg.netns) {
            nat::remove(&node)?;
        }
        NetNs::delete(&cfg.netns)?;
        for p in [cni::ipam_dir(cfg), cfg.state_dir.join(ATTACHMENTS)] {
            remove_path(&p)?;
        }
        for f in [CONFLIST, SAVED_CONFIG] {
            remove_path(&cfg.state_dir.join(f))?;
        }
        let _ = std::fs::remove_dir(&cfg.state_dir);
        Ok(())
    }

    /// Reports the node's state.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        let cfg = &self.cfg;
        let node = NetNs::open(&cfg.netns).ok();
        let (bridge, route_localnet, nat_rules) = match &node {
            Some(node) => (
                link::bridge_info(&cfg.netns, &cfg.bridge)?,
                node.read_sysctl("net/ipv4/conf/all/route_localnet").ok(),
                nat::list(node)?,
            ),
            None => (None, None, None),
        };
        Ok(NodeStatus {
            config: cfg.clone(),
            up: node.is_some(),
            bridge,
            route_localnet,
            nat_rules,
            attachments: self.attachments(),
        })
    }

    /// Creates (or finds) the worker namespace `name` and attaches it to the bridge.
    ///
    /// On failure nothing is left: no namespace, veth or lease.
    pub fn attach(&self, name: &str) -> Result<Attachment, NodeError> {
        let cfg = &self.cfg;
        esb_netns::validate_name(name)?;
        if name == cfg.netns {
            return Err(NodeError::Config {
                setting: "NAME",
                msg: format!("{name:?} is the node namespace itself"),
            });
        }
        let node = NetNs::open(&cfg.netns).map_err(|_| NodeError::NotUp(cfg.netns.clone()))?;
        let record = self.attachment_path(name);
        if let Some(existing) = read_json::<Attachment>(&record) {
            if NetNs::exists(name) {
                return Ok(existing);
            }
        }
        // Mark the intent first: a crash from here on leaves a trace `reconcile` finds.
        let pending = self.pending_path(name);
        std::fs::write(&pending, b"")
            .map_err(|e| NodeError::io(&format!("write {}", pending.display()), e))?;
        let (_, created) = NetNs::create(name)?;
        let path = NetNs::path_of(name);
        let attached = cni::add(&node, cfg, name, &path).and_then(|res| {
            let a = Attachment {
                name: name.to_string(),
                netns_path: path.clone(),
                ip: res.ip,
                prefix_len: res.prefix_len,
                gateway: res.gateway,
                mac: res.mac,
                cni_result: res.raw,
            };
            write_json(&record, &a).map(|_| a)
        });
        if attached.is_err() {
            let _ = cni::del(&node, cfg, name, &path, None);
            if created {
                let _ = NetNs::delete(name);
            }
            let _ = std::fs::remove_file(&record);
        }
        let _ = std::fs::remove_file(&pending);
        attached
    }

    /// Detaches and removes the worker namespace `name`; returns whether anything was there.
    pub fn detach(&self, name: &str) -> Result<bool, NodeError> {
        let cfg = &self.cfg;
        esb_netns::validate_name(name)?;
        let record = self.attachment_path(name);
        let prev = read_json::<Attachment>(&record);
        let existed = prev.is_some() || NetNs::exists(name);
        if let Ok(node) = NetNs::open(&cfg.netns) {
            cni::del(
                &node,
                cfg,
                name,
                &NetNs::path_of(name),
                prev.as_ref().map(|a| &a.cni_result),
            )?;
        }
        NetNs::delete(name)?;
        remove_path(&record)?;
        remove_path(&self.pending_path(name))?;
        Ok(existed)
    }

    /// Removes every worker attachment whose name is not in `keep`: complete ones, ones a
    /// crash left half-made (namespace without record), and IPAM leases held for names
    /// that no longer exist. Returns the names removed.
    pub fn reconcile(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, NodeError> {
        let mut names: BTreeSet<String> = self.attachments().into_iter().map(|a| a.name).collect();
        if let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join(ATTACHMENTS)) {
            for e in entries.filter_map(|e| e.ok()) {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Some(name) = file.strip_suffix(".pending") {
                    names.insert(name.to_string());
                }
            }
        }
        names.extend(self.lease_owners());
        let mut removed = Vec::new();
        for name in names {
            if !keep.contains(&name) && esb_netns::validate_name(&name).is_ok() {
                self.detach(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Container ids that hold an IPAM lease (host-local writes the id on the first line).
    fn lease_owners(&self) -> BTreeSet<String> {
        let dir = cni::ipam_dir(&self.cfg).join(self.cfg.cni_network_name());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<Ipv4Addr>().is_ok())
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.lines().next().map(|l| l.trim().to_string()))
            .filter(|id| !id.is_empty())
            .collect()
    }

    fn pending_path(&self, name: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join(ATTACHMENTS)
            .join(format!("{name}.pending"))
    }

    /// Attached worker namespaces, by name.
    pub fn attachments(&self) -> Vec<Attachment> {
        let dir = self.cfg.state_dir.join(ATTACHMENTS);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<Attachment> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| read_json(&e.path()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn attachment_path(&self, name: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join(ATTACHMENTS)
            .join(format!("{name}.json"))
    }
}

/// The settings that differ between two configurations, by name.
fn config_diff(a: &NodeConfig, b: &NodeConfig) -> String {
    let mut d = Vec::new();
    if a.bridge != b.bridge {
        d.push("bridge");
    }
    if a.gateway_ip != b.gateway_ip {
        d.push("CNI_GW_IP");
    }
    if a.base_subnet != b.base_subnet {
        d.push("base subnet");
    }
    if a.worker_subnet != b.worker_subnet {
        d.push("CNI_SUBNET");
    }
    d.join(", ")
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes JSON atomically (temporary file, then rename).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), NodeError> {
    let step = format!("write {}", path.display());
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value).expect("serializable");
    std::fs::write(&tmp, body).map_err(|e| NodeError::io(&step, e))?;
    std::fs::rename(&tmp, path).map_err(|e| NodeError::io(&step, e))
}

fn remove_path(path: &Path) -> Result<(), NodeError> {
    let res = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(NodeError::io(&format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}
