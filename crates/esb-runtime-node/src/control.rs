//! The control network namespace (`esb-control`, system.md §4): where the control address
//! 10.99.0.1 lives, so that it never exists in the host namespace. It holds the relays of
//! the control side (the registry's `10.99.0.1:5010`, the data services) and, with compute
//! nodes, the WireGuard interface. On a single machine the address sits on the
//! namespace's loopback: the relays listen there and the local agent pulls through them.

use std::net::Ipv4Addr;

use esb_netns::NetNs;

use crate::{link, NodeError};

/// Default name of the control namespace (`ESB_CONTROL_NETNS`).
pub const DEFAULT_CONTROL_NETNS: &str = "esb-control";
/// The control address (`ESB_CONTROL_HOST` of compute nodes).
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// The control namespace and its address.
#[derive(Debug, Clone)]
pub struct ControlNetwork {
    /// Namespace name.
    pub netns: String,
    /// The control address.
    pub ip: Ipv4Addr,
}

impl ControlNetwork {
    /// The control network of the given namespace name, with the default address.
    pub fn new(netns: impl Into<String>) -> Result<ControlNetwork, NodeError> {
        let netns = netns.into();
        esb_netns::validate_name(&netns).map_err(|e| NodeError::Config {
            setting: "ESB_CONTROL_NETNS",
            msg: e.to_string(),
        })?;
        Ok(ControlNetwork {
            netns,
            ip: CONTROL_IP,
        })
    }

    /// Creates the namespace with `lo` up carrying the control address (idempotent).
    /// Returns whether the namespace was created by this call.
    pub fn up(&self) -> Result<bool, NodeError> {
        let (_, created) = NetNs::create(&self.netns)?;
        let r = (|| {
            link::set_up(&self.netns, "lo")?;
            link::ensure_address(&self.netns, "lo", &format!("{}/32", self.ip))
        })();
        if let Err(e) = r {
            if created {
                let _ = NetNs::delete(&self.netns);
            }
            return Err(e);
        }
        Ok(created)
    }

    /// Whether the namespace exists.
    pub fn exists(&self) -> bool {
        NetNs::exists(&self.netns)
    }

    /// Removes the namespace (and everything in it); true when it existed.
    pub fn down(&self) -> Result<bool, NodeError> {
        Ok(NetNs::delete(&self.netns)?)
    }
}
