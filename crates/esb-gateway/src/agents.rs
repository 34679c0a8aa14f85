//! The agents (one per compute node) and the dialling of their workers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use esb_agent_api::v1::agent_service_client::AgentServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::AgentAddr;

/// Opens TCP connections to workers, from inside a network namespace when the node's
/// workers live in one.
#[derive(Clone)]
pub struct Dialer {
    netns: Option<Arc<esb_netns::NetNs>>,
}

impl Dialer {
    /// Dials in the gateway's own namespace.
    pub fn current() -> Dialer {
        Dialer { netns: None }
    }

    /// Dials in the named namespace (`None` = the current one).
    pub fn new(netns: Option<&str>) -> anyhow::Result<Dialer> {
        Ok(Dialer {
            netns: match netns {
                None => None,
                Some(n) => Some(Arc::new(
                    esb_netns::NetNs::open(n).with_context(|| format!("open netns {n}"))?,
                )),
            },
        })
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
            Some(ns) => ns.run(new).map_err(std::io::Error::other)??,
        };
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    }
}

/// One agent.
pub struct Agent {
    /// Its address and options.
    pub addr: AgentAddr,
    /// gRPC client (cheap to clone).
    pub client: AgentServiceClient<Channel>,
    /// Dials this node's workers.
    pub dialer: Dialer,
    up: AtomicBool,
    workers: AtomicUsize,
}

impl Agent {
    /// A lazily connecting client for `addr`; calls time out after `timeout`.
    pub fn connect(addr: AgentAddr, timeout: Duration) -> anyhow::Result<Agent> {
        let channel = if let Some(path) = addr.endpoint.strip_prefix("unix:") {
            let path = path.to_string();
            Endpoint::from_static("http://agent.invalid")
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
        } else {
            Endpoint::from_shared(addr.endpoint.clone())
                .with_context(|| format!("agent address {}", addr.endpoint))?
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect_lazy()
        };
        let dialer = Dialer::new(addr.netns.as_deref())?;
        Ok(Agent {
            addr,
            client: AgentServiceClient::new(channel),
            dialer,
            up: AtomicBool::new(true),
            workers: AtomicUsize::new(0),
        })
    }

    /// Whether the agent answered its last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records whether it answered; returns true when this changes the state.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    /// Workers this gateway holds on the node.
    pub fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    /// Counts one more or one fewer worker.
    pub fn add_workers(&self, delta: isize) {
        if delta >= 0 {
            self.workers.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            let _ = self
                .workers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    Some(w.saturating_sub((-delta) as usize))
                });
        }
    }

    fn free(&self) -> usize {
        if self.addr.max_workers == 0 {
            usize::MAX - self.workers()
        } else {
            self.addr.max_workers.saturating_sub(self.workers())
        }
    }
}

/// Chooses the node for a new worker: the up agent with the most free capacity (ties:
/// fewest workers, then order). `None` when every agent is down or full.
pub fn choose(agents: &[Arc<Agent>]) -> Option<usize> {
    agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_up() && a.free() > 0)
        .max_by(|(ia, a), (ib, b)| {
            a.free()
                .cmp(&b.free())
                .then(b.workers().cmp(&a.workers()))
                .then(ib.cmp(ia))
        })
        .map(|(i, _)| i)
}

/// Like [`choose`], ignoring whether agents are marked down.
pub fn choose_any(agents: &[Arc<Agent>]) -> Option<usize> {
    agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.free() > 0)
        .max_by(|(ia, a), (ib, b)| {
            a.is_up()
                .cmp(&b.is_up())
                .then(a.free().cmp(&b.free()))
                .then(ib.cmp(ia))
        })
        .map(|(i, _)| i)
}

/// Whether a gRPC status means the agent itself cannot be reached.
pub fn is_unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    ) && !s.message().starts_with("esb:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(max: usize, workers: usize) -> Arc<Agent> {
        let a = Agent::connect(
            AgentAddr {
                node_id: "n".into(),
                endpoint: "http://127.0.0.1:1".into(),
                netns: None,
                max_workers: max,
            },
            Duration::from_secs(1),
        )
        .unwrap();
        a.add_workers(workers as isize);
        Arc::new(a)
    }

    #[tokio::test]
    async fn chooses_by_free_capacity() {
        let agents = vec![agent(4, 3), agent(4, 1), agent(2, 0)];
        assert_eq!(choose(&agents), Some(1));
        agents[1].set_up(false);
        assert_eq!(choose(&agents), Some(2));
        let full = vec![agent(1, 1)];
        assert_eq!(choose(&full), None);
        assert_eq!(choose_any(&full), None);
        // All down: still one to try.
        agents[0].set_up(false);
        agents[2].set_up(false);
        assert_eq!(choose(&agents), None);
        assert_eq!(choose_any(&agents), Some(1));
        let unlimited = vec![agent(0, 5), agent(0, 2)];
        assert_eq!(choose(&unlimited), Some(1));
        unlimited[1].add_workers(-10);
        assert_eq!(unlimited[1].workers(), 0);
    }
}
