//! The control node's side of compute nodes, wired into the box: its WireGuard interface
//! file (`STATE/wg/wg0.json`, peers = the joined nodes), the gateway's agents file (one
//! remote agent per node, reached over wg0 from the control namespace with mTLS), and the
//! join exchange behind the gateway (`STATE/run/cluster.sock`), and the join tokens
//! `esb node token` prints.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use esb_cluster::join::{
    Control, JoinAnswer, JoinRequest, LeaveAnswer, LeaveRequest, DRAIN_TIMEOUT, MAX_SKEW,
};
use esb_cluster::{ClusterError, Registry, TokenStore};

use crate::daemon;
use crate::layout::{
    agents_file, ca_file, cluster_dir, component_pid_file, gateway_client_cert, tls_dir, wg_file,
    wg_key_file,
};
use crate::{Error, Result};

/// Port of the agents of compute nodes on their WireGuard address.
pub const AGENT_PORT: u16 = 50051;

/// What the control side needs to know.
#[derive(Debug, Clone)]
pub struct ControlSide {
    /// State directory.
    pub state: PathBuf,
    /// The control namespace.
    pub netns: String,
    /// The control address (10.99.0.1).
    pub ip: Ipv4Addr,
    /// WireGuard UDP port.
    pub wg_port: u16,
    /// Node numbers never given (the control's own worker subnet).
    pub reserved: Vec<u8>,
    /// Next hop of 10.88.0.0/16 instead of wg0 (GATEWAY_WORKER_ROUTE_VIA_HOST).
    pub worker_route_via: Option<Ipv4Addr>,
    /// The box's credential pair and region, for the workers of compute nodes.
    pub credentials: (String, String, String),
}

/// Node numbers the control side never gives: 1 (the control node itself) and, when this
/// box runs workers in 10.88.N.0/24, that N.
pub fn reserved_numbers(local_worker_subnet: ipnet::Ipv4Net) -> Vec<u8> {
    let o = local_worker_subnet.network().octets();
    if o[0] == 10 && o[1] == 88 {
        vec![1, o[2]]
    } else {
        vec![1]
    }
}

impl ControlSide {
    /// Writes the interface file from the registry (the key made on first use).
    pub fn write_wg_file(&self) -> Result<()> {
        esb_wireguard::ensure_private_key(&wg_key_file(&self.state))?;
        let peers = Registry::new(&cluster_dir(&self.state))
            .list()
            .into_iter()
            .map(|n| esb_wireguard::PeerEntry {
                allowed_ips: n.allowed_ips(),
                name: n.id,
                public_key: n.wg_public_key,
                endpoint: n.wg_endpoint,
                keepalive: None,
            })
            .collect();
        let f = esb_wireguard::WgFile {
            ifname: "wg0".into(),
            netns: self.netns.clone(),
            address: format!("{}/24", self.ip),
            private_key_file: wg_key_file(&self.state),
            listen: SocketAddr::from(([0, 0, 0, 0], self.wg_port)),
            mtu: 1420,
            routes: true,
            worker_route_via: self.worker_route_via,
            peers,
        };
        std::fs::create_dir_all(self.state.join("wg"))?;
        f.write(&wg_file(&self.state))?;
        Ok(())
    }

    /// Writes the gateway's agents file from the registry.
    pub fn write_agents_file(&self) -> Result<()> {
        self.write_agents_file_without(None)
    }

    /// Writes the gateway's agents file from the registry, leaving out node `except`.
    fn write_agents_file_without(&self, except: Option<&str>) -> Result<()> {
        let (cert, key) = gateway_client_cert(&self.state);
        let ca = ca_file(&self.state);
        let mut text = String::from("# Written by esb: the agents of the joined compute nodes.\n");
        let nodes = Registry::new(&cluster_dir(&self.state)).list();
        for n in nodes.iter().filter(|n| Some(n.id.as_str()) != except) {
            text.push_str(&format!(
                "https://{}:{AGENT_PORT},netns={},node={},ca={},cert={},key={}{}\n",
                n.wg_address(),
                self.netns,
                n.id,
                ca.display(),
                cert.display(),
                key.display(),
                if n.max_memory_mb > 0 {
                    format!(",mem={}", n.max_memory_mb)
                } else {
                    String::new()
                }
            ));
        }
        let path = agents_file(&self.state);
        std::fs::create_dir_all(cluster_dir(&self.state))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Tells the running tunnel and gateway about the nodes (SIGHUP by verified PID).
    fn notify(&self) {
        self.notify_only(&["wireguard", "gateway"]);
    }

    /// SIGHUP to the named running components.
    fn notify_only(&self, names: &[&str]) {
        for name in names {
            if let Some(t) = daemon::read_live(&component_pid_file(&self.state, name)) {
                daemon::signal_pid(t.pid, libc::SIGHUP);
            }
        }
    }

    fn admit(&self, req: &JoinRequest, peer: Option<IpAddr>) -> Result<JoinAnswer, ClusterError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if (req.clock - now).abs() > MAX_SKEW {
            return Err(ClusterError::ClockSkew(req.clock - now, MAX_SKEW));
        }
        esb_cluster::registry::validate_node_id(&req.node_id)?;
        esb_wireguard::Key::from_base64(&req.wg_public_key, "wg_public_key").map_err(|_| {
            ClusterError::Invalid {
                field: "wg_public_key",
                msg: "not a WireGuard key".into(),
            }
        })?;
        let dir = cluster_dir(&self.state);
        let tokens = TokenStore::new(&dir);
        tokens.redeem(&req.secret, &req.node_id)?;
        let result = (|| {
            let registry = Registry::new(&dir);
            let endpoint = peer.map(|ip| SocketAddr::new(ip, req.wg_port));
            let node = registry.admit(
                &req.node_id,
                &req.wg_public_key,
                endpoint,
                req.max_memory_mb,
                &self.reserved,
            )?;
            // Issued by the box CA (its key is in STATE/tls), kept beside it.
            let (cert, key) = esb_pki::ensure_node_cert(
                &tls_dir(&self.state),
                &format!("node-{}", node.id),
                &node.id,
                &[node.wg_address().to_string()],
            )
            .map_err(|e| ClusterError::Invalid {
                field: "certificate",
                msg: e.to_string(),
            })?;
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|source| ClusterError::Io {
                    path: p.to_path_buf(),
                    source,
                })
            };
            let ca = read(&ca_file(&self.state))?;
            let wg_public_key = esb_wireguard::ensure_private_key(&wg_key_file(&self.state))
                .map_err(|e| ClusterError::Invalid {
                    field: "wireguard key",
                    msg: e.to_string(),
                })?
                .public()
                .to_base64();
            let leave_secret = registry.issue_leave_secret(&node.id)?;
            Ok(JoinAnswer {
                leave_secret,
                control_host: self.ip.to_string(),
                control_wg_public_key: wg_public_key,
                control_wg_port: self.wg_port,
                ca_pem: ca,
                node_cert_pem: read(&cert)?,
                node_key_pem: read(&key)?,
                credentials: self.credentials.clone(),
                node,
            })
        })();
        match result {
            Ok(a) => Ok(a),
            Err(e) => {
                let _ = tokens.release(&req.secret);
                Err(e)
            }
        }
    }
}

/// Workers the gateway holds on node `id` (none when its status cannot be read: the
/// gateway is down, and holds nothing).
fn workers_on(state: &Path, id: &str) -> usize {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return 0;
    };
    let Ok(status) = handle.block_on(crate::control::gateway_status(state)) else {
        return 0;
    };
    status["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["workers"].as_array().cloned().unwrap_or_default())
        .filter(|w| w["node"] == id)
        .count()
}

impl ControlSide {
    /// Lets node `id` go: no new worker there (the gateway's agents without it), its
    /// workers drained (idle ones destroyed at once, busy ones when their request ends,
    /// for at most `drain`), then its record, certificate, tunnel peer and route removed.
    /// Returns the workers still there when the drain's time ran out.
    fn let_go(&self, id: &str, drain: std::time::Duration) -> Result<usize, ClusterError> {
        let control_state = |e: Error| ClusterError::Invalid {
            field: "control state",
            msg: e.chain(),
        };
        self.write_agents_file_without(Some(id))
            .map_err(control_state)?;
        self.notify_only(&["gateway"]);
        let deadline = std::time::Instant::now() + drain;
        let mut left = workers_on(&self.state, id);
        while left > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(250));
            left = workers_on(&self.state, id);
        }
        Registry::new(&cluster_dir(&self.state)).remove(id)?;
        for ext in ["pem", "key", "sans"] {
            let _ = std::fs::remove_file(tls_dir(&self.state).join(format!("node-{id}.{ext}")));
        }
        self.write_wg_file()
            .and_then(|_| self.write_agents_file())
            .map_err(control_state)?;
        self.notify();
        Ok(left)
    }
}

impl Control for ControlSide {
    fn ca_pem(&self) -> String {
        std::fs::read_to_string(ca_file(&self.state)).unwrap_or_default()
    }

    fn join(&self, req: JoinRequest, peer: Option<IpAddr>) -> Result<JoinAnswer, ClusterError> {
        let answer = self.admit(&req, peer)?;
        if let Err(e) = self.write_wg_file().and_then(|_| self.write_agents_file()) {
            return Err(ClusterError::Invalid {
                field: "control state",
                msg: e.chain(),
            });
        }
        self.notify();
        Ok(answer)
    }

    fn remove(&self, node_id: &str) -> Result<LeaveAnswer, ClusterError> {
        let known = Registry::new(&cluster_dir(&self.state))
            .list()
            .iter()
            .any(|n| n.id == node_id);
        if !known {
            return Err(ClusterError::UnknownNode(node_id.to_string()));
        }
        let workers_left = self.let_go(node_id, DRAIN_TIMEOUT)?;
        Ok(LeaveAnswer {
            node_id: node_id.to_string(),
            workers_left,
        })
    }

    fn leave(&self, req: LeaveRequest) -> Result<LeaveAnswer, ClusterError> {
        Registry::new(&cluster_dir(&self.state)).check_leave_secret(&req.node_id, &req.secret)?;
        let workers_left = self.let_go(&req.node_id, DRAIN_TIMEOUT)?;
        Ok(LeaveAnswer {
            node_id: req.node_id,
            workers_left,
        })
    }
}

/// A one-time join token for this box (`esb node token`): compute nodes reach its gateway
/// at `endpoint` (HOST or HOST:PORT; default this host's name), on `gateway_port` when the
/// endpoint names none; `ttl` as `30m`, `1h`, `2d`.
pub fn issue_token(
    state: &Path,
    endpoint: Option<String>,
    gateway_port: u16,
    ttl: &str,
    wg_port: u16,
) -> Result<esb_cluster::JoinToken> {
    let ttl = esb_cluster::token::parse_ttl(ttl)?;
    let tls = tls_dir(state);
    let fingerprint = esb_pki::ca_fingerprint(&tls).map_err(|e| Error::NoBoxCa(tls, e))?;
    let key = esb_wireguard::ensure_private_key(&wg_key_file(state))?;
    let endpoint = match endpoint {
        Some(e) if e.contains(':') => e,
        Some(host) => format!("{host}:{gateway_port}"),
        None => format!("{}:{gateway_port}", host_name()),
    };
    let secret = TokenStore::new(&cluster_dir(state)).issue(ttl)?;
    Ok(esb_cluster::JoinToken {
        endpoint,
        wg_port,
        wg_public_key: key.public().to_base64(),
        ca_fingerprint: fingerprint,
        secret,
    })
}

/// This machine's host name (lower case).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_nodes_own_numbers_are_reserved() {
        assert_eq!(
            reserved_numbers("10.88.1.0/24".parse().unwrap()),
            vec![1, 1]
        );
        assert_eq!(
            reserved_numbers("10.88.7.0/24".parse().unwrap()),
            vec![1, 7]
        );
        assert_eq!(reserved_numbers("10.77.0.0/24".parse().unwrap()), vec![1]);
    }

    #[test]
    fn a_token_needs_the_box_ca() {
        let dir = tempfile::tempdir().unwrap();
        let e = issue_token(dir.path(), None, 443, "1h", 51820).unwrap_err();
        assert!(e.to_string().contains("run `esb up` first"), "{e}");
    }

    #[test]
    fn agents_file_lists_joined_nodes_only() {
        let dir = tempfile::tempdir().unwrap();
        let side = ControlSide {
            state: dir.path().to_path_buf(),
            netns: "esb-control".into(),
            ip: Ipv4Addr::new(10, 99, 0, 1),
            wg_port: 51820,
            reserved: vec![1],
            worker_route_via: None,
            credentials: ("a".into(), "s".into(), "r".into()),
        };
        side.write_agents_file().unwrap();
        let text = std::fs::read_to_string(agents_file(dir.path())).unwrap();
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 0);
    }
}
