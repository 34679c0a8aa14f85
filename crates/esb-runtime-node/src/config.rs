//! The runtime-node's settings, with the seed's names, and their validation.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// Default name of the node namespace (`ESB_NODE_NETNS`).
pub const DEFAULT_NETNS: &str = "esb-node";
/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "esb0";
/// Default gateway address of the bridge (`CNI_GW_IP`).
pub const DEFAULT_GW_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// Default base subnet of the bridge.
pub const DEFAULT_BASE_SUBNET: &str = "10.88.0.0/16";
/// Default worker subnet of this node (`CNI_SUBNET`).
pub const DEFAULT_WORKER_SUBNET: &str = "10.88.1.0/24";
/// Where Debian's containernetworking-plugins and the upstream convention put CNI plugins.
pub const DEFAULT_CNI_BIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// One NAT rule's target: traffic to `CNI_GW_IP:dport` goes to `ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatTarget {
    /// Port on the gateway address that workers dial.
    pub dport: u16,
    /// Destination address (127.0.0.1 in local-proxy mode).
    pub ip: Ipv4Addr,
    /// Destination port.
    pub port: u16,
}

/// The NAT rules: one per service whose `DNAT_*_IP` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnatConfig {
    /// S3: `CNI_GW_IP:9000 -> DNAT_S3_IP:9000`.
    pub s3: Option<DnatTarget>,
    /// DynamoDB: `CNI_GW_IP:DNAT_DB_DPORT -> DNAT_DB_IP:DNAT_DB_PORT`.
    pub db: Option<DnatTarget>,
    /// Logs: `CNI_GW_IP:9428 -> DNAT_VL_IP:9428`.
    pub logs: Option<DnatTarget>,
    /// Also rewrite traffic that starts inside the node namespace (`DNAT_APPLY_OUTPUT`).
    pub apply_output: bool,
}

impl DnatConfig {
    /// Local-proxy mode: every service to 127.0.0.1 on the port workers dial.
    pub fn local_proxy() -> DnatConfig {
        let lo = Ipv4Addr::LOCALHOST;
        DnatConfig {
            s3: Some(DnatTarget {
                dport: 9000,
                ip: lo,
                port: 9000,
            }),
            db: Some(DnatTarget {
                dport: 8001,
                ip: lo,
                port: 8001,
            }),
            logs: Some(DnatTarget {
                dport: 9428,
                ip: lo,
                port: 9428,
            }),
            apply_output: true,
        }
    }

    /// The rules that are set, with a service name each.
    pub fn targets(&self) -> impl Iterator<Item = (&'static str, DnatTarget)> + '_ {
        [("s3", self.s3), ("db", self.db), ("logs", self.logs)]
            .into_iter()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
    }
}

/// Everything that describes one runtime-node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Name of the node namespace (`ESB_NODE_NETNS`).
    pub netns: String,
    /// Name of the bridge inside it.
    pub bridge: String,
    /// The bridge's address and the workers' default gateway (`CNI_GW_IP`).
    pub gateway_ip: Ipv4Addr,
    /// The bridge's subnet, shared by every node (10.88.0.0/16).
    pub base_subnet: Ipv4Net,
    /// The addresses this node hands to its workers (`CNI_SUBNET`).
    pub worker_subnet: Ipv4Net,
    /// NAT rules into the local proxy.
    pub dnat: DnatConfig,
    /// Directories searched for CNI plugins (`CNI_PATH`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// State of this node: conflist, IPAM leases, attachments (under the box's state dir).
    pub state_dir: PathBuf,
}

impl NodeConfig {
    /// The defaults of a single-node box, keeping state under `state_dir`.
    pub fn with_defaults(state_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            netns: DEFAULT_NETNS.into(),
            bridge: DEFAULT_BRIDGE.into(),
            gateway_ip: DEFAULT_GW_IP,
            base_subnet: DEFAULT_BASE_SUBNET.parse().expect("valid default"),
            worker_subnet: DEFAULT_WORKER_SUBNET.parse().expect("valid default"),
            dnat: DnatConfig::local_proxy(),
            cni_bin_dirs: DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect(),
            state_dir,
        }
    }

    /// Checks the settings against each other; errors name the setting.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |setting: &'static str, msg: String| Err(NodeError::Config { setting, msg });
        esb_netns::validate_name(&self.netns).map_err(|e| NodeError::Config {
            setting: "ESB_NODE_NETNS",
            msg: e.to_string(),
        })?;
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || !self
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return bad(
                "bridge",
                format!(
                    "{:?} is not an interface name (1-15 of [A-Za-z0-9_-])",
                    self.bridge
                ),
            );
        }
        let base = self.base_subnet;
        if base.network() != base.addr() {
            return bad(
                "base subnet",
                format!(
                    "{base} is not a network address (did you mean {}?)",
                    base.trunc()
                ),
            );
        }
        if !base.contains(&self.gateway_ip)
            || self.gateway_ip == base.network()
            || self.gateway_ip == base.broadcast()
        {
            return bad(
                "CNI_GW_IP",
                format!(
                    "{} is not a host address of the base subnet {base}",
                    self.gateway_ip
                ),
            );
        }
        let sub = self.worker_subnet;
        if sub.network() != sub.addr() {
            return bad(
                "CNI_SUBNET",
                format!(
                    "{sub} is not a network address (did you mean {}?)",
                    sub.trunc()
                ),
            );
        }
        if !base.contains(&sub) {
            return bad(
                "CNI_SUBNET",
                format!(
                    "{sub} lies outside the base subnet {base}: every node's workers must share it"
                ),
            );
        }
        if sub.prefix_len() > 30 {
            return bad(
                "CNI_SUBNET",
                format!("{sub} holds no room for workers (use /30 or wider)"),
            );
        }
        let (first, last) = self.worker_range();
        if first > last {
            return bad(
                "CNI_SUBNET",
                format!("{sub} leaves no worker address besides {}", self.gateway_ip),
            );
        }
        let mut dports = Vec::new();
        for (name, t) in self.dnat.targets() {
            if t.dport == 0 || t.port == 0 {
                return bad(
                    dnat_setting(name),
                    format!("port 0 is not a valid port for the {name} rule"),
                );
            }
            if dports.contains(&t.dport) {
                return bad(
                    dnat_setting(name),
                    format!("port {} is used by two NAT rules", t.dport),
                );
            }
            dports.push(t.dport);
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("ESB_STATE_DIR", "must not be empty".into());
        }
        Ok(())
    }

    /// First and last address handed to workers: the worker subnet less its network and
    /// broadcast addresses (the gateway address, if inside, is skipped by the IPAM).
    pub fn worker_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let sub = self.worker_subnet;
        let first = u32::from(sub.network()) + 1;
        let last = u32::from(sub.broadcast()) - 1;
        (Ipv4Addr::from(first), Ipv4Addr::from(last))
    }

    /// The bridge's address with the base prefix, e.g. 10.88.0.1/16.
    pub fn gateway_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway_ip, self.base_subnet.prefix_len())
            .expect("prefix from a valid net")
    }

    /// Name of the CNI network (also the IPAM store's directory name).
    pub fn cni_network_name(&self) -> String {
        format!("esb-{}", self.netns)
    }
}

fn dnat_setting(name: &str) -> &'static str {
    match name {
        "s3" => "DNAT_S3_IP",
        "db" => "DNAT_DB_IP",
        _ => "DNAT_VL_IP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig::with_defaults("/tmp/x".into())
    }

    fn err_setting(c: &NodeConfig) -> &'static str {
        match c.validate() {
            Err(NodeError::Config { setting, .. }) => setting,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().unwrap();
        assert_eq!(cfg().gateway_cidr().to_string(), "10.88.0.1/16");
        assert_eq!(
            cfg().worker_range(),
            (Ipv4Addr::new(10, 88, 1, 1), Ipv4Addr::new(10, 88, 1, 254))
        );
    }

    #[test]
    fn worker_subnet_must_be_inside_base_and_a_network() {
        let mut c = cfg();
        c.worker_subnet = "10.89.1.0/24".parse().unwrap();
        assert_eq!(err_setting(&c), "CNI_SUBNET");
        c.worker_subnet = "10.88.1.7/24".parse().unwrap();
        assert_eq!(err_setting(&c), "CNI_SUBNET");
        c.worker_subnet = "10.88.1.0/31".parse().unwrap();
        assert_eq!(err_setting(&c), "CNI_SUBNET");
        c.worker_subnet = "10.88.2.0/24".parse().unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn gateway_must_be_a_host_of_the_base() {
        let mut c = cfg();
        c.gateway_ip = Ipv4Addr::new(10, 89, 0, 1);
        assert_eq!(err_setting(&c), "CNI_GW_IP");
        c.gateway_ip = Ipv4Addr::new(10, 88, 0, 0);
        assert_eq!(err_setting(&c), "CNI_GW_IP");
    }

    #[test]
    fn nat_ports_must_differ_and_be_nonzero() {
        let mut c = cfg();
        c.dnat.db.as_mut().unwrap().dport = 9000;
        assert_eq!(err_setting(&c), "DNAT_DB_IP");
        let mut c = cfg();
        c.dnat.logs.as_mut().unwrap().port = 0;
        assert_eq!(err_setting(&c), "DNAT_VL_IP");
    }

    #[test]
    fn names_are_checked() {
        let mut c = cfg();
        c.netns = "a/b".into();
        assert_eq!(err_setting(&c), "ESB_NODE_NETNS");
        let mut c = cfg();
        c.bridge = "much-too-long-bridge".into();
        assert_eq!(err_setting(&c), "bridge");
    }
}
