//! The control node's side of compute nodes, wired into the box: its WireGuard interface
//! file (`STATE/wg/wg0.json`, peers = the joined nodes), the gateway's agents file (one
//! remote agent per node, reached over wg0 from the control namespace with mTLS), and the
//! join exchange behind the gateway (`STATE/run/cluster.sock`). `esb node token` prints a
//! join token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use esb_cluster::join::{Control, JoinAnswer, JoinRequest, MAX_SKEW};
use esb_cluster::{ClusterError, Registry, TokenStore};

use crate::daemon;

/// Port of the agents of compute nodes on their WireGuard address.
pub const AGENT_PORT: u16 = 50051;

/// `STATE/cluster`: tokens, nodes, node certificates.
pub fn cluster_dir(state: &Path) -> PathBuf {
    state.join("cluster")
}
/// The control node's WireGuard private key.
pub fn wg_key_file(state: &Path) -> PathBuf {
    state.join("wg/private.key")
}
/// The interface file of `esb wireguard`.
pub fn wg_file(state: &Path) -> PathBuf {
    state.join("wg/wg0.json")
}
/// The gateway's agents file (remote agents, one per line).
pub fn agents_file(state: &Path) -> PathBuf {
    cluster_dir(state).join("agents")
}
/// The join exchange's socket (the gateway forwards `/esb/v1/nodes/` to it).
pub fn socket(state: &Path) -> PathBuf {
    state.join("run/cluster.sock")
}
/// The gateway's client certificate for agents.
pub fn gateway_client_cert(state: &Path) -> (PathBuf, PathBuf) {
    let tls = state.join("tls");
    (
        tls.join("gateway-client.pem"),
        tls.join("gateway-client.key"),
    )
}

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
        let (cert, key) = gateway_client_cert(&self.state);
        let ca = self.state.join("tls").join(esb_pki::CA_FILE);
        let mut text = String::from("# Written by esb: the agents of the joined compute nodes.\n");
        for n in Registry::new(&cluster_dir(&self.state)).list() {
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
        for name in ["wireguard", "gateway"] {
            if let Some(t) = daemon::read_live(&crate::boxd::component_pid_file(&self.state, name))
            {
                crate::supervise::signal_pid(t.pid, libc::SIGHUP);
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
                &self.state.join("tls"),
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
            let ca = read(&self.state.join("tls").join(esb_pki::CA_FILE))?;
            let wg_public_key = esb_wireguard::ensure_private_key(&wg_key_file(&self.state))
                .map_err(|e| ClusterError::Invalid {
                    field: "wireguard key",
                    msg: e.to_string(),
                })?
                .public()
                .to_base64();
            Ok(JoinAnswer {
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

impl Control for ControlSide {
    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.state.join("tls").join(esb_pki::CA_FILE)).unwrap_or_default()
    }

    fn join(&self, req: JoinRequest, peer: Option<IpAddr>) -> Result<JoinAnswer, ClusterError> {
        let answer = self.admit(&req, peer)?;
        if let Err(e) = self.write_wg_file().and_then(|_| self.write_agents_file()) {
            return Err(ClusterError::Invalid {
                field: "control state",
                msg: format!("{e:#}"),
            });
        }
        self.notify();
        Ok(answer)
    }
}

/// `esb node token`: a one-time join token for this box.
pub fn token(state: &Path, endpoint: Option<String>, ttl: &str, wg_port: u16) -> Result<()> {
    let ttl = esb_cluster::token::parse_ttl(ttl)?;
    let tls = state.join("tls");
    let fingerprint = esb_pki::ca_fingerprint(&tls)
        .with_context(|| format!("no box CA in {} (run `esb up` first)", tls.display()))?;
    let key = esb_wireguard::ensure_private_key(&wg_key_file(state))?;
    let endpoint = match endpoint {
        Some(e) if e.contains(':') => e,
        Some(host) => format!("{host}:{}", gateway_port()),
        None => format!("{}:{}", host_name(), gateway_port()),
    };
    let secret = TokenStore::new(&cluster_dir(state)).issue(ttl)?;
    let token = esb_cluster::JoinToken {
        endpoint,
        wg_port,
        wg_public_key: key.public().to_base64(),
        ca_fingerprint: fingerprint,
        secret,
    };
    println!("{}", token.encode());
    Ok(())
}

fn gateway_port() -> u16 {
    std::env::var("ESB_GATEWAY_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .or_else(|| {
            std::env::var("ESB_GATEWAY_LISTEN")
                .ok()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.port())
        })
        .unwrap_or(443)
}

/// This machine's host name (lower case).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}
