//! The local proxy: an L4 (TCP) proxy that runs inside the runtime-node namespace.
//!
//! Workers reach the box's services at 10.88.0.1:{9000,8001,9428}; the node's NAT rules
//! send that traffic to this proxy on 127.0.0.1 of the node namespace, and the proxy
//! forwards each connection to the real backend, found by name (`s3-storage:9000`,
//! `database:8000`, `victorialogs:9428` by default) when the connection arrives.
//!
//! Listeners are created inside the node namespace (on a helper thread that entered it),
//! while backend connections are dialled from the namespace the process started in, where
//! the backends live. Per connection: connect timeout, idle timeout, half-close passed
//! through, a global connection cap that stops accepting when reached (backpressure into
//! the listen queue), and a backend that is down is reported once per burst of failures.

mod resolve;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use resolve::{parse_hosts, Resolver};

/// Default backend of the S3 route (`ESB_S3_BACKEND`).
pub const DEFAULT_S3_BACKEND: &str = "s3-storage:9000";
/// Default backend of the DynamoDB route (`ESB_DB_BACKEND`).
pub const DEFAULT_DB_BACKEND: &str = "database:8000";
/// Default backend of the log route (`ESB_LOGS_BACKEND`).
pub const DEFAULT_LOGS_BACKEND: &str = "victorialogs:9428";

/// Errors of configuration and start-up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A backend is not `host:port`.
    #[error("{setting}: {value:?} is not HOST:PORT ({why})")]
    BadBackend {
        /// The setting that held it.
        setting: String,
        /// The value.
        value: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// A listener could not be made.
    #[error("listen on {addr} for {route}: {source}")]
    Listen {
        /// The route's name.
        route: String,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The listen namespace could not be entered.
    #[error(transparent)]
    NetNs(#[from] esb_netns::NetNsError),
}

/// A backend, as `host:port`; the host is a name resolved per connection or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Backend {
    /// Parses `host:port` (`[v6]:port` for IPv6 literals); `setting` names the source in errors.
    pub fn parse(setting: &str, value: &str) -> Result<Backend, ProxyError> {
        let bad = |why| ProxyError::BadBackend {
            setting: setting.to_string(),
            value: value.to_string(),
            why,
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number 1-65535"))?;
        if port == 0 {
            return Err(bad("port is not a number 1-65535"));
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("malformed address"));
        }
        if !host.contains(':')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(bad("host is neither a name nor an address"));
        }
        Ok(Backend {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One listener and where its connections go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs and metrics (`s3`, `db`, `logs`).
    pub name: String,
    /// Where to listen (in the listen namespace).
    pub listen: SocketAddr,
    /// Where to forward.
    pub backend: Backend,
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The routes.
    pub routes: Vec<Route>,
    /// Named namespace to listen in (`None`: the current one).
    pub listen_netns: Option<String>,
    /// Named namespace backend connections are made from (`None`: the process's own). A
    /// compute node reaches its backends (10.99.0.1) only over wg0, in its node namespace.
    pub dial_netns: Option<String>,
    /// Hosts file consulted before the system resolver.
    pub hosts_file: Option<PathBuf>,
    /// How long a system resolver answer may be reused.
    pub resolve_ttl: Duration,
    /// Connect timeout to a backend.
    pub connect_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that moves fewer than [`ProxyConfig::min_progress_bytes`] in a whole
    /// window of this length is closed: a trickle of bytes, which the idle timeout never
    /// sees, cannot hold a slot for ever (default 60 s).
    pub progress_window: Duration,
    /// Bytes (both ways together, counted as read) a connection must move per
    /// [`ProxyConfig::progress_window`] (default 1024).
    pub min_progress_bytes: u64,
    /// Connections open at once, over all routes; beyond it the proxy stops accepting.
    pub max_connections: usize,
    /// Connections open at once from one source address (one worker), over all routes;
    /// beyond it that source's new connections are closed at once, so one worker cannot
    /// take the slots of the others.
    pub max_per_source: usize,
    /// Copy buffer per direction.
    pub buffer_size: usize,
    /// Listen backlog.
    pub backlog: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            routes: Vec::new(),
            listen_netns: None,
            dial_netns: None,
            hosts_file: None,
            resolve_ttl: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            progress_window: Duration::from_secs(60),
            min_progress_bytes: 1024,
            max_connections: 4096,
            max_per_source: 256,
            buffer_size: 16 * 1024,
            backlog: 1024,
        }
    }
}

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections refused because the backend could not be resolved or reached.
    pub backend_failures: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// Connections closed because they moved too few bytes in a progress window.
    pub slow_closed: AtomicU64,
    /// Connections closed at once because their source had `max_per_source` open.
    pub source_refused: AtomicU64,
    /// Bytes client -> backend.
    pub bytes_up: AtomicU64,
    /// Bytes backend -> client.
    pub bytes_down: AtomicU64,
}

struct RouteState {
    route: Route,
    stats: Arc<RouteStats>,
    failures: Mutex<FailureBurst>,
}

/// Logs backend failures once per burst instead of once per connection.
#[derive(Default)]
struct FailureBurst {
    since: Option<Instant>,
    suppressed: u64,
    /// When a source at its cap was last logged.
    source_logged: Option<Instant>,
}

const BURST_WINDOW: Duration = Duration::from_secs(10);

impl RouteState {
    fn failed(&self, err: &io::Error) {
        self.stats.backend_failures.fetch_add(1, Ordering::Relaxed);
        let mut b = self.failures.lock().expect("burst lock");
        match b.since {
            Some(since) if since.elapsed() < BURST_WINDOW => b.suppressed += 1,
            _ => {
                let more = std::mem::take(&mut b.suppressed);
                b.since = Some(Instant::now());
                tracing::warn!(
                    route = %self.route.name, backend = %self.route.backend, error = %err,
                    suppressed_before = more,
                    "backend unavailable; closing client connections (further failures in the next {}s are counted, not logged)",
                    BURST_WINDOW.as_secs()
                );
            }
        }
    }

    /// Logs a source at its connection cap once per burst.
    fn source_over_cap(&self, ip: std::net::IpAddr, cap: usize) {
        let mut b = self.failures.lock().expect("burst lock");
        if b.source_logged.is_none_or(|t| t.elapsed() >= BURST_WINDOW) {
            b.source_logged = Some(Instant::now());
            tracing::warn!(route = %self.route.name, source = %ip, cap,
                "a source holds its maximum of open connections (ESB_PROXY_MAX_PER_SOURCE); closing its new ones");
        }
    }

    fn succeeded(&self) {
        let mut b = self.failures.lock().expect("burst lock");
        if b.since.take().is_some() {
            let more = std::mem::take(&mut b.suppressed);
            tracing::info!(route = %self.route.name, backend = %self.route.backend,
                failed_connections = more + 1, "backend reachable again");
        }
    }
}

struct Shared {
    cfg: ProxyConfig,
    resolver: Resolver,
    slots: Arc<Semaphore>,
    dial_ns: Option<Arc<esb_netns::NetNs>>,
    /// Connections open per source address (entries removed at zero).
    per_source: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A bound proxy, ready to run.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<(Arc<RouteState>, TcpListener)>,
}

impl Proxy {
    /// Binds every route's listener (inside `listen_netns` when set). Needs a tokio runtime.
    pub fn bind(cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        let sockets = match &cfg.listen_netns {
            Some(name) => {
                let ns = esb_netns::NetNs::open(name)?;
                ns.run(|| make_sockets(&cfg.routes))??
            }
            None => make_sockets(&cfg.routes)?,
        };
        let mut listeners = Vec::new();
        for (route, socket) in cfg.routes.iter().zip(sockets) {
            let listener = socket
                .listen(cfg.backlog)
                .map_err(|source| ProxyError::Listen {
                    route: route.name.clone(),
                    addr: route.listen,
                    source,
                })?;
            let state = RouteState {
                route: route.clone(),
                stats: Arc::default(),
                failures: Mutex::default(),
            };
            listeners.push((Arc::new(state), listener));
        }
        let dial_ns = match &cfg.dial_netns {
            Some(name) => Some(Arc::new(esb_netns::NetNs::open(name)?)),
            None => None,
        };
        let shared = Shared {
            dial_ns,
            resolver: Resolver::new(cfg.hosts_file.clone(), cfg.resolve_ttl),
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
            per_source: Default::default(),
            cfg,
        };
        Ok(Proxy {
            shared: Arc::new(shared),
            listeners,
        })
    }

    /// The bound addresses, by route name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(s, l)| Some((s.route.name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    /// Counters per route.
    pub fn stats(&self) -> Vec<(String, Arc<RouteStats>)> {
        self.listeners
            .iter()
            .map(|(s, _)| (s.route.name.clone(), s.stats.clone()))
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open connections
    /// up to `grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (state, listener) in self.listeners {
            tracing::info!(route = %state.route.name, listen = %state.route.listen,
                backend = %state.route.backend, "proxy route ready");
            tasks.spawn(accept_loop(
                self.shared.clone(),
                state,
                listener,
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(grace, drain).await;
    }
}

fn make_sockets(routes: &[Route]) -> Result<Vec<TcpSocket>, ProxyError> {
    routes
        .iter()
        .map(|r| {
            let err = |source| ProxyError::Listen {
                route: r.name.clone(),
                addr: r.listen,
                source,
            };
            let s = if r.listen.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(err)?;
            s.set_reuseaddr(true).map_err(err)?;
            s.bind(r.listen).map_err(err)?;
            Ok(s)
        })
        .collect()
}

async fn accept_loop(
    shared: Arc<Shared>,
    state: Arc<RouteState>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        // Take a slot first: at the cap, stop accepting and let the listen queue hold on.
        let permit = tokio::select! {
            p = shared.slots.clone().acquire_owned() => p.expect("semaphore open"),
            _ = stop.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((client, peer)) => {
                state.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(source) = SourceSlot::take(&shared, peer.ip()) else {
                    state.stats.source_refused.fetch_add(1, Ordering::Relaxed);
                    state.source_over_cap(peer.ip(), shared.cfg.max_per_source);
                    drop(client);
                    drop(permit);
                    continue;
                };
                let (shared, state) = (shared.clone(), state.clone());
                let mut stop = stop.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = serve_connection(&shared, &state, client) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    drop(source);
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(route = %state.route.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// One connection counted against its source address; released on drop.
struct SourceSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl SourceSlot {
    /// Counts a connection from `ip`, unless it already has `max_per_source` open.
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let mut map = shared.per_source.lock().expect("per-source lock");
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.cfg.max_per_source.max(1) {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_source.lock().expect("per-source lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn connect_backend(shared: &Shared, backend: &Backend) -> io::Result<TcpStream> {
    let attempt = async {
        let addrs = shared.resolver.resolve(backend).await?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            let connected = match &shared.dial_ns {
                None => TcpStream::connect(addr).await,
                Some(ns) => {
                    let ns = ns.clone();
                    let socket = tokio::task::spawn_blocking(move || {
                        ns.run(move || {
                            if addr.is_ipv4() {
                                tokio::net::TcpSocket::new_v4()
                            } else {
                                tokio::net::TcpSocket::new_v6()
                            }
                        })
                    })
                    .await
                    .map_err(io::Error::other)?
                    .map_err(io::Error::other)??;
                    socket.connect(addr).await
                }
            };
            match connected {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match tokio::time::timeout(shared.cfg.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

async fn serve_connection(shared: &Shared, state: &RouteState, client: TcpStream) {
    let stats = &state.stats;
    let backend = match connect_backend(shared, &state.route.backend).await {
        Ok(b) => {
            state.succeeded();
            b
        }
        Err(e) => {
            state.failed(&e);
            // Dropping the client closes it at once.
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let moved = AtomicU64::new(0);
    let mut a = Tracked {
        inner: client,
        last: &last,
        moved: &moved,
        epoch,
    };
    let mut b = Tracked {
        inner: backend,
        last: &last,
        moved: &moved,
        epoch,
    };
    let size = shared.cfg.buffer_size;
    let idle = shared.cfg.idle_timeout;
    let window = shared.cfg.progress_window;
    let min_bytes = shared.cfg.min_progress_bytes;
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, size, size);
    // Why the watchdog closed a connection.
    enum Cut {
        Idle,
        Slow,
    }
    let watchdog = async {
        let mut window_start = Duration::ZERO;
        let mut moved_at_start = 0;
        loop {
            let now = epoch.elapsed();
            let quiet = now.saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return Cut::Idle;
            }
            if now >= window_start + window {
                let n = moved.load(Ordering::Relaxed);
                if n - moved_at_start < min_bytes {
                    return Cut::Slow;
                }
                window_start = now;
                moved_at_start = n;
            }
            let next_window = (window_start + window).saturating_sub(now);
            tokio::time::sleep((idle - quiet).min(next_window)).await;
        }
    };
    tokio::select! {
        r = copy => {
            if let Ok((up, down)) = r {
                stats.bytes_up.fetch_add(up, Ordering::Relaxed);
                stats.bytes_down.fetch_add(down, Ordering::Relaxed);
            }
        }
        cut = watchdog => match cut {
            Cut::Idle => {
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            Cut::Slow => {
                stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats.active.fetch_sub(1, Ordering::Relaxed);
}

/// A stream that notes when data last moved through it (milliseconds since `epoch`) and
/// how much moved.
struct Tracked<'a> {
    inner: TcpStream,
    last: &'a AtomicU64,
    moved: &'a AtomicU64,
    epoch: Instant,
}

impl Tracked<'_> {
    fn touch(&self, bytes: usize) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.moved.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch(buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                // Counted once, when read: only the time of the write matters here.
                self.touch(0);
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn backends_parse_with_clear_errors() {
        assert_eq!(
            Backend::parse("X", "s3-storage:9000").unwrap(),
            Backend {
                host: "s3-storage".into(),
                port: 9000
            }
        );
        assert_eq!(Backend::parse("X", "[::1]:80").unwrap().host, "::1");
        for bad in ["s3-storage", "h:0", "h:99999", ":80", "a b:1", "h:x"] {
            let e = Backend::parse("ESB_S3_BACKEND", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("ESB_S3_BACKEND:"), "{e}");
        }
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    fn proxy_to(backend: SocketAddr, tweak: impl FnOnce(&mut ProxyConfig)) -> (Proxy, SocketAddr) {
        let mut cfg = ProxyConfig {
            routes: vec![Route {
                name: "t".into(),
                listen: "127.0.0.1:0".parse().unwrap(),
                backend: Backend {
                    host: "127.0.0.1".into(),
                    port: backend.port(),
                },
            }],
            ..ProxyConfig::default()
        };
        tweak(&mut cfg);
        let p = Proxy::bind(cfg).unwrap();
        let addr = p.local_addrs()[0].1;
        (p, addr)
    }

    #[tokio::test]
    async fn one_source_holding_many_connections_does_not_starve_another() {
        // Both ends of every connection live in this process: lift the soft descriptor
        // limit to the hard one, and keep the numbers under 1024 descriptors in all.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid, owned struct.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        let backend = echo_server().await;
        // 120 slots in all, 100 per source: without the per-source cap one source would
        // take every slot and the proxy would stop accepting for everyone.
        let (p, addr) = proxy_to(backend, |c| {
            c.max_connections = 120;
            c.max_per_source = 100;
        });
        let stats = p.stats()[0].1.clone();
        tokio::spawn(p.run(std::future::pending(), Duration::ZERO));
        let mut held = Vec::new();
        for _ in 0..400 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            held.push(s.connect(addr).await.unwrap());
        }
        // Another source is served at once.
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut c = tokio::time::timeout(Duration::from_secs(10), s.connect(addr))
            .await
            .unwrap()
            .unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf))
            .await
            .expect("the second source is served")
            .unwrap();
        assert_eq!(&buf, b"ping");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.source_refused.load(Ordering::Relaxed) < 400 - 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "refused {:?}",
                stats.source_refused
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.source_refused.load(Ordering::Relaxed), 400 - 100);
    }

    #[tokio::test]
    async fn a_trickle_cannot_hold_a_connection() {
        let backend = echo_server().await;
        let (p, addr) = proxy_to(backend, |c| {
            c.idle_timeout = Duration::from_secs(5);
            c.progress_window = Duration::from_millis(500);
            c.min_progress_bytes = 100;
        });
        let stats = p.stats()[0].1.clone();
        tokio::spawn(p.run(std::future::pending(), Duration::ZERO));
        let mut c = TcpStream::connect(addr).await.unwrap();
        // One byte every 50 ms: never idle for the idle timeout, far below the rate.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1];
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "a trickle held its connection"
            );
            if c.write_all(b"x").await.is_err() {
                break;
            }
            // The echo (or the close) comes back at once; then wait out the 50 ms.
            match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert_eq!(stats.slow_closed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn forwards_with_half_close() {
        let backend = echo_server().await;
        let (p, addr) = proxy_to(backend, |_| {});
        tokio::spawn(p.run(std::future::pending(), Duration::ZERO));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        c.write_all(&data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
    }

    #[tokio::test]
    async fn unreachable_backend_closes_the_client_promptly() {
        // A port nothing listens on: bind then drop.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (p, addr) = proxy_to(dead, |_| {});
        let stats = p.stats()[0].1.clone();
        tokio::spawn(p.run(std::future::pending(), Duration::ZERO));
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(c.read(&mut buf).await.unwrap_or(0), 0);
        }
        assert_eq!(stats.backend_failures.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let backend = echo_server().await;
        let (p, addr) = proxy_to(backend, |c| c.idle_timeout = Duration::from_millis(200));
        let stats = p.stats()[0].1.clone();
        tokio::spawn(p.run(std::future::pending(), Duration::ZERO));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        c.read_exact(&mut buf).await.unwrap();
        // Then silence: the proxy closes the connection.
        let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn connection_cap_holds_new_clients_until_a_slot_frees() {
        let backend = echo_server().await;
        let (p, addr) = proxy_to(backend, |c| c.max_connections = 1);
        let stats = p.stats()[0].1.clone();
        tokio::spawn(p.run(std::future::pending(), Duration::ZERO));
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"a").await.unwrap();
        let mut buf = [0u8; 1];
        first.read_exact(&mut buf).await.unwrap();
        // The second connects (listen queue) but is not served while the first is open.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"b").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        drop(first);
        tokio::time::timeout(Duration::from_secs(30), second.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"b");
    }
}
