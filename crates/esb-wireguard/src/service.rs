//! The tunnel as a long-running component (`esb wireguard --config FILE`): the interface
//! described by a JSON file, peers re-read on SIGHUP (a node joined or left), the control
//! side's routes kept equal to the peers' AllowedIPs (filtered, see [`crate::routes`]),
//! and a status file with every peer's handshake age and traffic, rewritten every few
//! seconds. SIGTERM or SIGINT stops it; the interface and its routes go with it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::{Key, PeerConfig, Tunnel, TunnelConfig, WgError};

/// One peer in the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerEntry {
    /// Name (node id).
    pub name: String,
    /// Public key, base64.
    pub public_key: String,
    /// `host:port`, when known.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// AllowedIPs.
    pub allowed_ips: Vec<String>,
    /// Keepalive seconds.
    #[serde(default)]
    pub keepalive: Option<u16>,
}

/// The file (`STATE/wg/wg0.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WgFile {
    /// Interface name.
    pub ifname: String,
    /// Namespace of the interface.
    pub netns: String,
    /// Its address with prefix.
    pub address: String,
    /// File holding the private key (base64, 0600).
    pub private_key_file: PathBuf,
    /// UDP listen address (in the namespace the process runs in: the host's).
    pub listen: SocketAddr,
    /// MTU (default 1420).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Install routes from the peers' AllowedIPs (the control side).
    #[serde(default)]
    pub routes: bool,
    /// `GATEWAY_WORKER_ROUTE_VIA_HOST`: next hop of 10.88.0.0/16 instead of the device.
    #[serde(default)]
    pub worker_route_via: Option<Ipv4Addr>,
    /// The peers.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
}

fn default_mtu() -> u16 {
    1420
}

fn cfg_err(setting: impl Into<String>, msg: impl Into<String>) -> WgError {
    WgError::Config {
        setting: setting.into(),
        msg: msg.into(),
    }
}

impl WgFile {
    /// Reads and checks the file.
    pub fn read(path: &Path) -> Result<WgFile, WgError> {
        let text = std::fs::read(path).map_err(crate::io(format!("read {}", path.display())))?;
        let f: WgFile = serde_json::from_slice(&text)
            .map_err(|e| cfg_err(path.display().to_string(), e.to_string()))?;
        f.peers()?;
        Ok(f)
    }

    /// Writes it atomically.
    pub fn write(&self, path: &Path) -> Result<(), WgError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("serializable");
        std::fs::write(&tmp, text).map_err(crate::io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(crate::io(format!("write {}", path.display())))
    }

    /// The peers, parsed.
    pub fn peers(&self) -> Result<Vec<PeerConfig>, WgError> {
        self.peers
            .iter()
            .map(|p| {
                Ok(PeerConfig {
                    name: p.name.clone(),
                    public_key: Key::from_base64(&p.public_key, &format!("peer {}", p.name))?,
                    endpoint: p.endpoint,
                    allowed_ips: p
                        .allowed_ips
                        .iter()
                        .filter_map(|a| match a.parse::<IpNet>() {
                            Ok(IpNet::V4(n)) => Some(Ok(n)),
                            Ok(IpNet::V6(_)) => None,
                            Err(_) => Some(Err(cfg_err(
                                format!("peer {} allowed_ips", p.name),
                                format!("{a:?} is not a network"),
                            ))),
                        })
                        .collect::<Result<Vec<Ipv4Net>, WgError>>()?,
                    keepalive: p.keepalive,
                })
            })
            .collect()
    }

    fn tunnel_config(&self) -> Result<TunnelConfig, WgError> {
        let key = std::fs::read_to_string(&self.private_key_file).map_err(crate::io(format!(
            "read the private key {}",
            self.private_key_file.display()
        )))?;
        Ok(TunnelConfig {
            ifname: self.ifname.clone(),
            netns: self.netns.clone(),
            address: self.address.parse().map_err(|_| {
                cfg_err(
                    "address",
                    format!("{:?} is not an address/prefix", self.address),
                )
            })?,
            mtu: self.mtu,
            private_key: Key::from_base64(&key, "private key")?,
            listen: self.listen,
            udp_netns: None,
            peers: self.peers()?,
        })
    }

    fn announced(&self) -> Vec<(String, Vec<IpNet>)> {
        self.peers
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.allowed_ips
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .collect(),
                )
            })
            .collect()
    }
}

/// Writes a new private key (0600) unless the file exists; returns the key.
pub fn ensure_private_key(path: &Path) -> Result<Key, WgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        return Key::from_base64(&text, &path.display().to_string());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(crate::io(format!("create {}", d.display())))?;
    }
    let key = Key::generate()?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(crate::io(format!("write {}", tmp.display())))?;
    f.write_all(key.to_base64().as_bytes())
        .map_err(crate::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(crate::io(format!("write {}", path.display())))?;
    Ok(key)
}

/// Makes the routes through the device equal to the file's (filtered) AllowedIPs.
fn sync_routes(f: &WgFile) -> Result<crate::RoutePlan, WgError> {
    let existing = crate::routes::other_routes(&f.netns, &f.ifname)?;
    let mut plan = crate::route_plan(&f.announced(), &existing, f.worker_route_via);
    // Addresses inside the interface's own subnet are routed through it already.
    let own: Ipv4Net = f
        .address
        .parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .unwrap_or_default();
    plan.accept.retain(|(n, _, _)| !own.contains(n));
    crate::routes::apply(&f.netns, &f.ifname, &plan)?;
    // Routes of peers that left.
    let current = crate::ip(&f.netns, &["-4", "route", "show", "dev", &f.ifname])?;
    for line in current.lines() {
        let Some(Ok(net)) = line.split_whitespace().next().map(|c| {
            c.parse::<Ipv4Net>()
                .or_else(|_| c.parse::<Ipv4Addr>().map(Ipv4Net::from))
        }) else {
            continue;
        };
        if net != own && !plan.accept.iter().any(|(a, _, _)| *a == net) {
            crate::ip(
                &f.netns,
                &["route", "del", &net.to_string(), "dev", &f.ifname],
            )?;
        }
    }
    Ok(plan)
}

/// What the status file holds.
#[derive(Debug, Serialize)]
struct Status<'a> {
    public_key: String,
    listen: SocketAddr,
    address: &'a str,
    peers: Vec<crate::PeerStats>,
    refused_routes: &'a [(String, String, String)],
}

fn write_status(path: &Path, t: &Tunnel, f: &WgFile, refused: &[(String, String, String)]) {
    let s = Status {
        public_key: t.public_key().to_base64(),
        listen: t.local_addr(),
        address: &f.address,
        peers: t.stats(),
        refused_routes: refused,
    };
    let tmp = path.with_extension("json.tmp");
    if let Ok(text) = serde_json::to_vec_pretty(&s) {
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// Runs the interface of `config` until SIGTERM/SIGINT; `ready` is called once it is up
/// (the caller writes its ready file); `status` is rewritten every 2 s.
pub async fn run(
    config: &Path,
    status: Option<&Path>,
    ready: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), WgError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut f = WgFile::read(config)?;
    let tunnel = Tunnel::start(f.tunnel_config()?).await?;
    let mut refused = Vec::new();
    if f.routes {
        refused = sync_routes(&f)?.refuse;
    }
    tracing::info!(
        interface = %f.ifname, netns = %f.netns, address = %f.address,
        listen = %tunnel.local_addr(), peers = f.peers.len(), "wireguard up"
    );
    ready().map_err(crate::io("signal readiness"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(crate::io("signal handler"))?;
    let mut term = signal(SignalKind::terminate()).map_err(crate::io("signal handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(crate::io("signal handler"))?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(s) = status {
                    write_status(s, &tunnel, &f, &refused);
                }
            }
            _ = hup.recv() => {
                match WgFile::read(config).and_then(|n| Ok((n.peers()?, n))) {
                    Ok((peers, next)) => {
                        tunnel.set_peers(peers);
                        f = next;
                        if f.routes {
                            match sync_routes(&f) {
                                Ok(plan) => refused = plan.refuse,
                                Err(e) => tracing::error!("routes: {e}"),
                            }
                        }
                        tracing::info!(peers = f.peers.len(), "peers reloaded");
                    }
                    Err(e) => tracing::error!("reload refused, keeping the peers: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}
