//! The agents (one per compute node), the dialling of their workers, and the choice of
//! the node for a new worker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use esb_agent_api::v1::agent_service_client::AgentServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::AgentAddr;

/// How long the TCP connection (and TLS handshake) to an agent may take.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on a remote (`https://`) agent's connection, so that one whose node went
/// away (a silent WireGuard peer) is closed and dialled again rather than waited on.
const AGENT_PING_INTERVAL: Duration = Duration::from_secs(10);
const AGENT_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens TCP connections from inside a network namespace when a node's workers (or,
/// for `https://` agents, the agent itself) are reached through one.
///
/// The namespace is opened by name at each connection, so that one made after the
/// gateway started, or made again (its network restarted), is found.
#[derive(Clone, Debug)]
pub struct Dialer {
    netns: Option<String>,
}

impl Dialer {
    /// Dials in the gateway's own namespace.
    pub fn current() -> Dialer {
        Dialer { netns: None }
    }

    /// Dials in the named namespace (`None` = the current one). The name is checked now;
    /// the namespace need not exist yet.
    pub fn new(netns: Option<&str>) -> anyhow::Result<Dialer> {
        if let Some(n) = netns {
            esb_netns::validate_name(n).with_context(|| format!("netns {n:?}"))?;
        }
        Ok(Dialer {
            netns: netns.map(str::to_string),
        })
    }

    /// The namespace dialled from (`None` = the gateway's own).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Connects to `addr` (TCP_NODELAY set).
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let new = move || {
            if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        let socket = match &self.netns {
            None => new()?,
            Some(n) => esb_netns::NetNs::open(n)
                .map_err(|e| std::io::Error::other(format!("open netns {n}: {e}")))?
                .run(new)
                .map_err(std::io::Error::other)??,
        };
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    }
}

/// What the gateway holds on a node: workers (starting ones included) and the sum of
/// their `MemorySize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Workers.
    pub workers: usize,
    /// Their memory, MiB.
    pub memory_mb: u64,
}

/// One agent.
pub struct Agent {
    /// Its address and options.
    pub addr: AgentAddr,
    /// gRPC client (cheap to clone).
    pub client: AgentServiceClient<Channel>,
    /// Dials this node's workers.
    pub dialer: Dialer,
    /// Whether it answered its last call; receivers learn when it is marked down.
    up: tokio::sync::watch::Sender<bool>,
    removed: AtomicBool,
    usage: Mutex<Usage>,
}

/// The TLS material of an `https://` agent, read again for each new connection (so that
/// renewed certificates are picked up without a reload).
#[derive(Clone)]
struct TlsFiles {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    fn config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        crate::tls::client_config(
            &self.ca,
            self.client
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )
    }
}

impl Agent {
    /// A lazily connecting client for `addr`; calls time out after `timeout`.
    ///
    /// - `unix:PATH`: the agent's unix socket.
    /// - `http://HOST:PORT`: plain TCP from the gateway's own namespace (as always).
    /// - `https://IP:PORT`: TCP from `addr.netns` (when set), then TLS (rustls, ring):
    ///   the agent's certificate must chain to `addr.ca` and name IP (SAN IP); the
    ///   client certificate `addr.cert`/`addr.key` is presented; ALPN `h2`. The files
    ///   are read now (an error here names them) and again for every new connection.
    ///   HTTP/2 pings (every 10 s, 5 s to answer) close a connection to a node gone
    ///   silent, so that the next call dials again.
    pub fn connect(addr: AgentAddr, timeout: Duration) -> anyhow::Result<Agent> {
        addr.check()
            .with_context(|| format!("agent {} ({})", addr.node_id, addr.endpoint))?;
        let dialer = Dialer::new(addr.netns.as_deref())?;
        let channel = if let Some(path) = addr.endpoint.strip_prefix("unix:") {
            let path = path.to_string();
            Endpoint::from_static("http://agent.invalid")
                .timeout(timeout)
                .connect_timeout(AGENT_CONNECT_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
        } else if let Some(sock) = addr.tls_addr()? {
            let files = TlsFiles {
                ca: addr.ca.clone().expect("checked: https needs ca"),
                client: addr.cert.clone().zip(addr.key.clone()),
            };
            files
                .config()
                .with_context(|| format!("agent {} ({}): TLS", addr.node_id, addr.endpoint))?;
            let dialer = dialer.clone();
            // The scheme only fills HTTP/2's :scheme; TLS is done by the connector.
            Endpoint::from_shared(format!("http://{sock}"))
                .with_context(|| format!("agent address {}", addr.endpoint))?
                .timeout(timeout)
                .connect_timeout(AGENT_CONNECT_TIMEOUT)
                .http2_keep_alive_interval(AGENT_PING_INTERVAL)
                .keep_alive_timeout(AGENT_PING_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let (files, dialer) = (files.clone(), dialer.clone());
                    async move {
                        let config = files
                            .config()
                            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
                        let tcp = dialer.connect(sock).await?;
                        let name = rustls::pki_types::ServerName::IpAddress(sock.ip().into());
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                }))
        } else {
            Endpoint::from_shared(addr.endpoint.clone())
                .with_context(|| format!("agent address {}", addr.endpoint))?
                .timeout(timeout)
                .connect_timeout(AGENT_CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy()
        };
        Ok(Agent {
            addr,
            client: AgentServiceClient::new(channel),
            dialer,
            up: tokio::sync::watch::Sender::new(true),
            removed: AtomicBool::new(false),
            usage: Mutex::new(Usage::default()),
        })
    }

    /// Whether the agent's endpoint takes a connection within `timeout` (its socket, or its
    /// TCP port from its namespace): tells an agent that is slow to answer (its containerd
    /// busy) from one that is gone (killed, or behind a partition).
    pub async fn probe(&self, timeout: Duration) -> bool {
        let dial = async {
            if let Some(path) = self.addr.endpoint.strip_prefix("unix:") {
                return tokio::net::UnixStream::connect(path).await.is_ok();
            }
            let target = match self.addr.tls_addr() {
                Ok(Some(sock)) => Some(sock),
                _ => self
                    .addr
                    .endpoint
                    .strip_prefix("http://")
                    .and_then(|r| r.trim_end_matches('/').parse().ok()),
            };
            match target {
                Some(sock) => self.dialer.connect(sock).await.is_ok(),
                None => false,
            }
        };
        tokio::time::timeout(timeout, dial).await.unwrap_or(false)
    }

    /// Whether the agent answered its last call.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Records whether it answered; returns true when this changes the state.
    pub fn set_up(&self, up: bool) -> bool {
        // Only a change is sent: waiters on `marked_down` see falls, not repeats.
        self.up.send_if_modified(|now| {
            let changed = *now != up;
            *now = up;
            changed
        })
    }

    /// Resolves when the agent is next marked down (a change after this call: an agent
    /// already down when it is called must go down again). For calls in flight on its
    /// workers: they fail at once instead of waiting for their deadline.
    pub fn marked_down(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.up.subscribe();
        async move {
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if !*rx.borrow_and_update() {
                    return;
                }
            }
        }
    }

    /// Whether a reload of the agents removed it: no new worker goes there.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Marks it removed (for good); returns true the first time.
    pub fn set_removed(&self) -> bool {
        !self.removed.swap(true, Ordering::Relaxed)
    }

    /// What the gateway holds on the node.
    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap()
    }

    /// Workers this gateway holds on the node (starting ones included).
    pub fn workers(&self) -> usize {
        self.usage().workers
    }

    /// Memory of those workers, MiB.
    pub fn memory_mb(&self) -> u64 {
        self.usage().memory_mb
    }

    /// Whether one more worker of `memory_mb` fits (`max=` and `mem=`).
    pub fn has_room(&self, memory_mb: u64) -> bool {
        self.fits(self.usage(), memory_mb)
    }

    fn fits(&self, u: Usage, memory_mb: u64) -> bool {
        (self.addr.max_workers == 0 || u.workers < self.addr.max_workers)
            && (self.addr.max_memory_mb == 0
                || u.memory_mb.saturating_add(memory_mb) <= self.addr.max_memory_mb)
    }

    /// Counts one more worker of `memory_mb` if it fits; false (nothing counted) if not.
    pub fn try_reserve(&self, memory_mb: u64) -> bool {
        let mut u = self.usage.lock().unwrap();
        if !self.fits(*u, memory_mb) {
            return false;
        }
        u.workers += 1;
        u.memory_mb += memory_mb;
        true
    }

    /// Counts one worker of `memory_mb` fewer.
    pub fn release(&self, memory_mb: u64) {
        let mut u = self.usage.lock().unwrap();
        u.workers = u.workers.saturating_sub(1);
        u.memory_mb = u.memory_mb.saturating_sub(memory_mb);
    }

    /// Free memory (`u64::MAX` without a limit).
    fn free_memory(&self, u: Usage) -> u64 {
        if self.addr.max_memory_mb == 0 {
            u64::MAX
        } else {
            self.addr.max_memory_mb.saturating_sub(u.memory_mb)
        }
    }

    /// Free worker places (`usize::MAX - workers` without a limit).
    fn free_places(&self, u: Usage) -> usize {
        if self.addr.max_workers == 0 {
            usize::MAX - u.workers
        } else {
            self.addr.max_workers.saturating_sub(u.workers)
        }
    }
}

/// The node for a new worker of `memory_mb` MiB of a function holding `of_function[i]`
/// workers on agent `i` (missing = 0): among the agents that are up, not removed, not in
/// `except`, and have room (`max=` workers, `mem=` MiB), the one with the most free
/// memory (no limit = most); ties: fewer workers of this function (spreading it over
/// nodes), then more free worker places, then fewer workers, then the first. `None` when
/// no agent qualifies.
pub fn choose(
    agents: &[Arc<Agent>],
    memory_mb: u64,
    of_function: &[usize],
    except: &[usize],
) -> Option<usize> {
    pick(agents, memory_mb, of_function, except, false)
}

/// Like [`choose`], also taking agents marked down (up ones first): when every agent is
/// down, one is still tried, so that an agent that came back is used at once.
pub fn choose_any(
    agents: &[Arc<Agent>],
    memory_mb: u64,
    of_function: &[usize],
    except: &[usize],
) -> Option<usize> {
    pick(agents, memory_mb, of_function, except, true)
}

fn pick(
    agents: &[Arc<Agent>],
    memory_mb: u64,
    of_function: &[usize],
    except: &[usize],
    any: bool,
) -> Option<usize> {
    agents
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.is_removed() && (any || a.is_up()) && !except.contains(i))
        .map(|(i, a)| (i, a, a.usage()))
        .filter(|(_, a, u)| a.fits(*u, memory_mb))
        .max_by(|(ia, a, ua), (ib, b, ub)| {
            let mine = |i: &usize| of_function.get(*i).copied().unwrap_or(0);
            a.is_up()
                .cmp(&b.is_up())
                .then(a.free_memory(*ua).cmp(&b.free_memory(*ub)))
                .then(mine(ib).cmp(&mine(ia)))
                .then(a.free_places(*ua).cmp(&b.free_places(*ub)))
                .then(ub.workers.cmp(&ua.workers))
                .then(ib.cmp(ia))
        })
        .map(|(i, _, _)| i)
}

/// Whether a gRPC status means the agent itself cannot be reached (`Cancelled`: the
/// connection closed under the call, e.g. an agent refusing the client certificate).
pub fn is_unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    ) && !s.message().starts_with("esb:")
}

/// What [`crate::Reloader::reload_agents`] did, by node id (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentReloadReport {
    /// Agents that were not there before (appended).
    pub added: Vec<String>,
    /// Agents whose spec differs: the old entry is removed, a new one appended.
    pub changed: Vec<String>,
    /// Agents no longer listed (marked removed).
    pub removed: Vec<String>,
    /// Agents listed with the same spec (kept as they are).
    pub unchanged: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_mem(max: usize, mem: u64, used: &[u64]) -> Arc<Agent> {
        let a = Agent::connect(
            AgentAddr {
                node_id: "n".into(),
                endpoint: "http://127.0.0.1:1".into(),
                max_workers: max,
                max_memory_mb: mem,
                ..AgentAddr::default()
            },
            Duration::from_secs(1),
        )
        .unwrap();
        for m in used {
            assert!(a.try_reserve(*m));
        }
        Arc::new(a)
    }

    fn agent(max: usize, workers: usize) -> Arc<Agent> {
        agent_mem(max, 0, &vec![0; workers])
    }

    #[tokio::test]
    async fn probe_tells_a_listening_endpoint_from_a_gone_one() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let at = |endpoint: String| {
            Agent::connect(
                AgentAddr {
                    node_id: "n".into(),
                    endpoint,
                    ..AgentAddr::default()
                },
                Duration::from_secs(1),
            )
            .unwrap()
        };
        let t = Duration::from_secs(2);
        assert!(at(format!("http://127.0.0.1:{port}")).probe(t).await);
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        assert!(!at(format!("unix:{}", sock.display())).probe(t).await);
        let _u = tokio::net::UnixListener::bind(&sock).unwrap();
        assert!(at(format!("unix:{}", sock.display())).probe(t).await);
        drop(l);
        assert!(!at(format!("http://127.0.0.1:{port}")).probe(t).await);
    }

    #[tokio::test]
    async fn marked_down_resolves_on_the_next_fall_only() {
        use std::future::Future;
        use std::task::{Context, Poll};
        let pending = |f: &mut std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
            f.as_mut()
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
                == Poll::Pending
        };
        let a = agent(0, 0);
        let mut f: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(a.marked_down());
        assert!(pending(&mut f), "an agent that is up");
        a.set_up(true);
        assert!(pending(&mut f), "up again is no fall");
        a.set_up(false);
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .unwrap();
        // Already down when asked: only the next fall counts.
        let mut g: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(a.marked_down());
        assert!(pending(&mut g), "down before the call");
        a.set_up(true);
        assert!(pending(&mut g));
        a.set_up(false);
        tokio::time::timeout(Duration::from_secs(5), g)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn chooses_by_free_capacity() {
        let agents = vec![agent(4, 3), agent(4, 1), agent(2, 0)];
        assert_eq!(choose(&agents, 0, &[], &[]), Some(1));
        assert_eq!(choose(&agents, 0, &[], &[1]), Some(2));
        agents[1].set_up(false);
        assert_eq!(choose(&agents, 0, &[], &[]), Some(2));
        let full = vec![agent(1, 1)];
        assert_eq!(choose(&full, 0, &[], &[]), None);
        assert_eq!(choose_any(&full, 0, &[], &[]), None);
        // All down: still one to try.
        agents[0].set_up(false);
        agents[2].set_up(false);
        assert_eq!(choose(&agents, 0, &[], &[]), None);
        assert_eq!(choose_any(&agents, 0, &[], &[]), Some(1));
        let unlimited = vec![agent(0, 5), agent(0, 2)];
        assert_eq!(choose(&unlimited, 0, &[], &[]), Some(1));
        unlimited[1].release(0);
        unlimited[1].release(0);
        unlimited[1].release(0);
        assert_eq!(unlimited[1].workers(), 0);
    }

    #[tokio::test]
    async fn chooses_by_free_memory() {
        // 1024 MiB with 512 used (512 free), 2048 with 1024 used (1024 free), unlimited.
        let agents = vec![
            agent_mem(0, 1024, &[512]),
            agent_mem(0, 2048, &[512, 512]),
            agent_mem(0, 4096, &[]),
        ];
        assert_eq!(choose(&agents, 128, &[], &[]), Some(2));
        agents[2].set_removed();
        assert_eq!(choose(&agents, 128, &[], &[]), Some(1));
        assert_eq!(choose_any(&agents, 128, &[], &[]), Some(1));
        // Room is needed: 768 MiB fits on 1 only, 1536 nowhere.
        assert_eq!(choose(&agents, 768, &[], &[]), Some(1));
        assert_eq!(choose(&agents, 768, &[], &[1]), None);
        assert_eq!(choose(&agents, 1536, &[], &[]), None);
        // Exactly full is allowed.
        assert_eq!(choose(&agents, 1024, &[], &[]), Some(1));
        assert!(agents[1].try_reserve(1024));
        assert!(!agents[1].try_reserve(1));
        assert_eq!(agents[1].memory_mb(), 2048);
        assert_eq!(choose(&agents, 128, &[], &[]), Some(0));
        assert_eq!(choose(&agents, 0, &[], &[]), Some(0));
        agents[1].release(1024);
        assert_eq!(
            agents[1].usage(),
            Usage {
                workers: 2,
                memory_mb: 1024
            }
        );
        // The worker limit holds with memory to spare.
        let capped = vec![agent_mem(1, 0, &[128]), agent_mem(2, 1024, &[128])];
        assert_eq!(choose(&capped, 128, &[], &[]), Some(1));
        assert!(capped[1].try_reserve(128));
        assert_eq!(choose(&capped, 128, &[], &[]), None);
        assert!(!capped[1].try_reserve(0));
    }

    #[tokio::test]
    async fn spreads_a_function_over_nodes() {
        // Unlimited memory everywhere: the node with fewer workers of the function wins,
        // even when it holds more workers overall.
        let agents = vec![agent(0, 1), agent(0, 4), agent(0, 2)];
        assert_eq!(choose(&agents, 128, &[1, 0, 1], &[]), Some(1));
        assert_eq!(choose(&agents, 128, &[1, 1, 1], &[]), Some(0));
        assert_eq!(choose(&agents, 128, &[1, 2], &[]), Some(2));
        // Same count of the function: fewer workers overall.
        assert_eq!(choose(&agents, 128, &[0, 2], &[]), Some(0));
        // Equal free memory: the same rule; more free memory wins over spreading.
        let equal = vec![agent_mem(0, 1024, &[256]), agent_mem(0, 1024, &[256])];
        assert_eq!(choose(&equal, 128, &[1, 0], &[]), Some(1));
        assert_eq!(choose(&equal, 128, &[0, 1], &[]), Some(0));
        let unequal = vec![agent_mem(0, 1024, &[]), agent_mem(0, 1024, &[256])];
        assert_eq!(choose(&unequal, 128, &[3, 0], &[]), Some(0));
        // Down agents come after up ones in choose_any, whatever their memory.
        unequal[0].set_up(false);
        assert_eq!(choose_any(&unequal, 128, &[], &[]), Some(1));
        assert_eq!(choose(&unequal, 128, &[], &[]), Some(1));
    }

    #[tokio::test]
    async fn tls_agents_need_readable_material() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgentAddr::parse(
            &format!(
                "https://127.0.0.1:1,ca={}",
                dir.path().join("missing.pem").display()
            ),
            0,
        )
        .unwrap();
        let e = Agent::connect(a, Duration::from_secs(1)).err().unwrap();
        assert!(format!("{e:#}").contains("missing.pem"), "{e:#}");
        let (_c, _k) =
            crate::tls::ensure_box_certs(dir.path(), &crate::tls::default_sans(&[])).unwrap();
        let a = AgentAddr::parse(
            &format!(
                "https://127.0.0.1:1,netns=nowhere-yet,ca={}",
                dir.path().join(crate::tls::CA_FILE).display()
            ),
            0,
        )
        .unwrap();
        // The namespace need not exist when the agent is set up.
        let agent = Agent::connect(a, Duration::from_secs(1)).unwrap();
        assert_eq!(agent.dialer.netns(), Some("nowhere-yet"));
        let e = agent
            .dialer
            .connect("127.0.0.1:1".parse().unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nowhere-yet"), "{e}");
    }
}
