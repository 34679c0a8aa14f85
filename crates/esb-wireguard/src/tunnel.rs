//! One WireGuard interface: a TUN device inside a namespace, a UDP socket in the host
//! namespace (or another given one), and one boringtun [`Tunn`] per peer, driven by three
//! tasks: packets from the TUN device out to peers, datagrams from peers into the device,
//! and the protocol's timers (handshakes, keepalives, rekeying).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use esb_netns::NetNs;
use ipnet::Ipv4Net;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::key::Key;
use crate::tun::Tun;
use crate::WgError;

/// Largest packet handled (MTU plus WireGuard's overhead, with room).
const BUF: usize = 65_535 + 64;
/// How often the protocol's timers run.
const TICK: Duration = Duration::from_millis(250);
/// The UDP socket's receive and send buffers (wireguard-go's size). The kernel's default
/// (~208 KiB) overflows whenever the device loop is not scheduled for a moment while a
/// burst arrives (an image pull, log shipping), and each datagram lost there costs a TCP
/// flow inside the tunnel a retransmission timeout (~200 ms).
const UDP_BUFFER: libc::c_int = 7 << 20;
/// The TUN device's queue towards this process (the kernel's default is 500 packets).
const TUN_QUEUE: &str = "4096";

/// A peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// A name for logs and status (the node id).
    pub name: String,
    /// Its public key.
    pub public_key: Key,
    /// Where it listens, when known (else learnt from its first packet).
    pub endpoint: Option<SocketAddr>,
    /// The inner addresses it may send from and that are sent to it.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Keepalive interval (seconds), for a peer behind NAT.
    pub keepalive: Option<u16>,
}

/// The interface.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Interface name (`wg0`).
    pub ifname: String,
    /// Namespace the interface lives in.
    pub netns: String,
    /// Its address (`10.99.0.1/24`).
    pub address: Ipv4Net,
    /// MTU of the interface (1420, WireGuard's default).
    pub mtu: u16,
    /// This side's private key.
    pub private_key: Key,
    /// Where the UDP socket listens (`0.0.0.0:51820`).
    pub listen: SocketAddr,
    /// Namespace the UDP socket is made in (`None`: the caller's, the host namespace).
    pub udp_netns: Option<String>,
    /// The peers.
    pub peers: Vec<PeerConfig>,
}

/// A peer as [`Tunnel::stats`] reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStats {
    /// Its name.
    pub name: String,
    /// Its public key (base64).
    pub public_key: String,
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Time since the last handshake, if any.
    pub last_handshake: Option<Duration>,
    /// Bytes sent to it (inner packets).
    pub tx_bytes: usize,
    /// Bytes received from it (inner packets).
    pub rx_bytes: usize,
}

struct Peer {
    cfg: PeerConfig,
    index: u32,
    tunn: Mutex<Tunn>,
    endpoint: Mutex<Option<SocketAddr>>,
}

struct Shared {
    key: Key,
    tun: Tun,
    udp: UdpSocket,
    peers: RwLock<Vec<Arc<Peer>>>,
    next_index: AtomicU32,
}

/// A running interface; dropping it stops the tasks and removes the interface.
pub struct Tunnel {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    local: SocketAddr,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn new_peer(key: &Key, cfg: PeerConfig, index: u32) -> Arc<Peer> {
    let tunn = Tunn::new(
        key.secret(),
        cfg.public_key.public_key(),
        None,
        cfg.keepalive,
        index,
        None,
    );
    Arc::new(Peer {
        endpoint: Mutex::new(cfg.endpoint),
        cfg,
        index,
        tunn: Mutex::new(tunn),
    })
}

impl Tunnel {
    /// Creates the interface with its address in `cfg.netns`, binds the UDP socket and
    /// starts moving packets. Must run inside a tokio runtime.
    pub async fn start(cfg: TunnelConfig) -> Result<Tunnel, WgError> {
        let ns = NetNs::open(&cfg.netns)?;
        let tun = Tun::create(&ns, &cfg.ifname)?;
        crate::ip(
            &cfg.netns,
            &[
                "addr",
                "replace",
                &cfg.address.to_string(),
                "dev",
                &cfg.ifname,
            ],
        )?;
        crate::ip(
            &cfg.netns,
            &[
                "link",
                "set",
                &cfg.ifname,
                "mtu",
                &cfg.mtu.to_string(),
                "txqueuelen",
                TUN_QUEUE,
                "up",
            ],
        )?;
        let listen = cfg.listen;
        let bind = move || std::net::UdpSocket::bind(listen);
        let std_udp = match &cfg.udp_netns {
            Some(n) => NetNs::open(n)?.run(bind)?,
            None => bind(),
        }
        .map_err(crate::io(format!("bind UDP {listen} (ESB_WG_PORT)")))?;
        std_udp
            .set_nonblocking(true)
            .map_err(crate::io("UDP socket"))?;
        grow_buffers(&std_udp);
        let udp = UdpSocket::from_std(std_udp).map_err(crate::io("UDP socket"))?;
        let local = udp.local_addr().map_err(crate::io("UDP socket"))?;
        let shared = Arc::new(Shared {
            key: cfg.private_key,
            tun,
            udp,
            peers: RwLock::new(Vec::new()),
            next_index: AtomicU32::new(1),
        });
        let t = Tunnel {
            tasks: vec![
                tokio::spawn(outbound(shared.clone())),
                tokio::spawn(inbound(shared.clone())),
                tokio::spawn(timers(shared.clone())),
            ],
            shared,
            local,
        };
        t.set_peers(cfg.peers);
        Ok(t)
    }

    /// Where the UDP socket listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This side's public key.
    pub fn public_key(&self) -> Key {
        self.shared.key.public()
    }

    /// Replaces the peers; a peer whose configuration did not change keeps its session.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let mut current = self.shared.peers.write().unwrap();
        let mut next = Vec::with_capacity(peers.len());
        for p in peers {
            match current.iter().find(|c| c.cfg == p) {
                Some(same) => next.push(same.clone()),
                None => {
                    let index =
                        self.shared.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                    next.push(new_peer(&self.shared.key, p, index));
                }
            }
        }
        *current = next;
    }

    /// Every peer's handshake age and traffic.
    pub fn stats(&self) -> Vec<PeerStats> {
        self.shared
            .peers
            .read()
            .unwrap()
            .iter()
            .map(|p| {
                let (last, tx, rx, _, _) = p.tunn.lock().unwrap().stats();
                PeerStats {
                    name: p.cfg.name.clone(),
                    public_key: p.cfg.public_key.to_base64(),
                    endpoint: *p.endpoint.lock().unwrap(),
                    last_handshake: last,
                    tx_bytes: tx,
                    rx_bytes: rx,
                }
            })
            .collect()
    }
}

/// Sets the socket's buffers to [`UDP_BUFFER`]: past `net.core.[rw]mem_max` where the
/// process may (`SO_RCVBUFFORCE` needs CAP_NET_ADMIN, which the tunnel has), else up to
/// that limit. A failure leaves the kernel's default, with a warning.
fn grow_buffers(sock: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let set = |opt: libc::c_int| -> bool {
        // SAFETY: setsockopt(2) on a descriptor `sock` owns, with a pointer to a c_int
        // that lives through the call and its exact size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&UDP_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    for (force, plain, what) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        if !set(force) && !set(plain) {
            tracing::warn!(
                "wireguard: could not grow the UDP {what} buffer: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn dst_v4(packet: &[u8]) -> Option<Ipv4Addr> {
    match Tunn::dst_address(packet)? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The peer whose AllowedIPs hold `addr` most specifically.
fn route(peers: &[Arc<Peer>], addr: Ipv4Addr) -> Option<Arc<Peer>> {
    peers
        .iter()
        .filter_map(|p| {
            p.cfg
                .allowed_ips
                .iter()
                .filter(|n| n.contains(&addr))
                .map(|n| n.prefix_len())
                .max()
                .map(|len| (len, p))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p.clone())
}

/// TUN -> peers.
async fn outbound(s: Arc<Shared>) {
    let mut packet = vec![0u8; BUF];
    let mut out = vec![0u8; BUF + 32];
    loop {
        let n = match s.tun.recv(&mut packet).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("wireguard: read from the interface: {e}");
                return;
            }
        };
        let Some(dst) = dst_v4(&packet[..n]) else {
            continue;
        };
        let Some(peer) = route(&s.peers.read().unwrap(), dst) else {
            continue;
        };
        let send = match peer
            .tunn
            .lock()
            .unwrap()
            .encapsulate(&packet[..n], &mut out)
        {
            TunnResult::WriteToNetwork(p) => Some(p.len()),
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.cfg.name, "encapsulate: {e:?}");
                None
            }
            _ => None,
        };
        let endpoint = *peer.endpoint.lock().unwrap();
        if let (Some(len), Some(ep)) = (send, endpoint) {
            let _ = s.udp.send_to(&out[..len], ep).await;
        }
    }
}

/// Which peer a datagram is for.
fn peer_of(s: &Shared, datagram: &[u8]) -> Option<Arc<Peer>> {
    let peers = s.peers.read().unwrap();
    match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(init) => {
            let half =
                parse_handshake_anon(&s.key.secret(), &s.key.public().public_key(), &init).ok()?;
            peers
                .iter()
                .find(|p| p.cfg.public_key.0 == half.peer_static_public)
                .cloned()
        }
        Packet::HandshakeResponse(p) => by_index(&peers, p.receiver_idx),
        Packet::PacketCookieReply(p) => by_index(&peers, p.receiver_idx),
        Packet::PacketData(p) => by_index(&peers, p.receiver_idx),
    }
}

fn by_index(peers: &[Arc<Peer>], receiver: u32) -> Option<Arc<Peer>> {
    peers.iter().find(|p| p.index == receiver >> 8).cloned()
}

enum Step {
    Network(usize),
    Tunnel(usize, Ipv4Addr),
    Done,
}

/// Peers -> TUN.
async fn inbound(s: Arc<Shared>) {
    let mut datagram = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    loop {
        let (n, from) = match s.udp.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("wireguard: receive: {e}");
                continue;
            }
        };
        let Some(peer) = peer_of(&s, &datagram[..n]) else {
            tracing::debug!(%from, "wireguard: a datagram from no known peer");
            continue;
        };
        let mut input: &[u8] = &datagram[..n];
        let mut first = true;
        loop {
            let step = {
                let mut t = peer.tunn.lock().unwrap();
                match t.decapsulate(first.then_some(from.ip()), input, &mut out) {
                    TunnResult::WriteToNetwork(p) => Step::Network(p.len()),
                    TunnResult::WriteToTunnelV4(p, src) => Step::Tunnel(p.len(), src),
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %peer.cfg.name, "decapsulate: {e:?}");
                        Step::Done
                    }
                    _ => Step::Done,
                }
            };
            if first && !matches!(step, Step::Done) {
                // Roaming: the peer is where its last authenticated datagram came from.
                *peer.endpoint.lock().unwrap() = Some(from);
            }
            first = false;
            match step {
                Step::Network(len) => {
                    let _ = s.udp.send_to(&out[..len], from).await;
                    // Queued packets may follow: ask again with an empty datagram.
                    input = &[];
                }
                Step::Tunnel(len, src) => {
                    if peer.cfg.allowed_ips.iter().any(|n| n.contains(&src)) {
                        let _ = s.tun.send(&out[..len]).await;
                    } else {
                        tracing::debug!(peer = %peer.cfg.name, %src, "a packet from outside its AllowedIPs");
                    }
                    break;
                }
                Step::Done => break,
            }
        }
    }
}

/// Handshake retries, keepalives, rekeying.
async fn timers(s: Arc<Shared>) {
    let mut out = vec![0u8; BUF];
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let peers: Vec<Arc<Peer>> = s.peers.read().unwrap().clone();
        for peer in peers {
            let len = match peer.tunn.lock().unwrap().update_timers(&mut out) {
                TunnResult::WriteToNetwork(p) => Some(p.len()),
                _ => None,
            };
            let endpoint = *peer.endpoint.lock().unwrap();
            if let (Some(len), Some(ep)) = (len, endpoint) {
                let _ = s.udp.send_to(&out[..len], ep).await;
            }
        }
    }
}
