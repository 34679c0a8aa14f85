//! The limits every esb HTTP server shares, so that no client — slow, idle or many — can
//! stop a server from answering the others:
//!
//! - a cap on open connections ([`Gate`]): past it, new connections are closed at once and
//!   the server logs it (once per burst), instead of accepting until file descriptors or
//!   memory run out;
//! - a header timeout: a request's headers must arrive whole within
//!   [`Limits::header_read_timeout`], and an idle keep-alive connection is closed after the
//!   same time (hyper starts the timer as soon as it waits for the next request), which
//!   cuts slowloris clients;
//! - HTTP/2: at most [`Limits::h2_max_concurrent_streams`] streams per connection, bounded
//!   header lists, flow-control windows (1 MiB per stream, 4 MiB per connection) and send
//!   buffers, a bound on streams reset as soon as opened (rapid reset), and keep-alive pings
//!   that close connections whose peer went away;
//! - [`serve`]: the accept loop with these limits and a graceful shutdown, for plain TCP
//!   servers (S3, DynamoDB, the log store). Servers with their own loop (TLS) use
//!   [`builder`] and [`Gate`] directly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The server's name in log lines (`s3`, `dynamodb`, `logstore`, `gateway`, …).
    pub name: &'static str,
    /// Open connections at most (default 4096).
    pub max_connections: usize,
    /// Time for a request's headers to arrive whole, and for an idle keep-alive HTTP/1
    /// connection to send its next request (default 30 s).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) of HTTP/1, in bytes (default 64 KiB).
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once per connection (default 128).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 header list size, in bytes (default 64 KiB).
    pub h2_max_header_list_size: u32,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within the same time
    /// is dropped (default 30 s).
    pub h2_keep_alive: Duration,
    /// How long [`serve`] lets open connections finish after its shutdown (default 10 s).
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The defaults, for the server `name`.
    pub fn new(name: &'static str) -> Limits {
        Limits {
            name,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 128,
            h2_max_header_list_size: 64 * 1024,
            h2_keep_alive: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// The defaults, overridden by `ESB_HTTP_MAX_CONNECTIONS`,
    /// `ESB_HTTP_HEADER_TIMEOUT_SECONDS` and `ESB_HTTP2_MAX_STREAMS` when set (every esb
    /// server reads the same variables). A value that is not a positive number is an
    /// error naming the variable.
    pub fn from_env(name: &'static str) -> Result<Limits, String> {
        Limits::from_lookup(name, |k| std::env::var(k).ok())
    }

    /// [`Limits::from_env`] with a custom variable lookup.
    pub fn from_lookup(
        name: &'static str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Limits, String> {
        let mut l = Limits::new(name);
        let num = |k: &str| -> Result<Option<u64>, String> {
            match get(k).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!("{k}={v:?} is not a positive number")),
                },
            }
        };
        if let Some(n) = num("ESB_HTTP_MAX_CONNECTIONS")? {
            l.max_connections = n as usize;
        }
        if let Some(n) = num("ESB_HTTP_HEADER_TIMEOUT_SECONDS")? {
            l.header_read_timeout = Duration::from_secs(n);
        }
        if let Some(n) = num("ESB_HTTP2_MAX_STREAMS")? {
            l.h2_max_concurrent_streams = n.min(u32::MAX as u64) as u32;
        }
        Ok(l)
    }
}

/// A connection builder (HTTP/1 and HTTP/2, chosen by the client) with `limits` applied.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_size)
        .keep_alive_interval(limits.h2_keep_alive)
        .keep_alive_timeout(limits.h2_keep_alive)
        // Flow-control windows and the send buffer bound what one connection may make the
        // server hold; streams a client opens and resets at once (the "rapid reset"
        // attack) are bounded too.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_send_buf_size(1 << 20)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    b
}

/// The connection cap of one server: [`Gate::admit`] hands out one permit per open
/// connection, and none past [`Limits::max_connections`].
#[derive(Debug, Clone)]
pub struct Gate {
    name: &'static str,
    limit: usize,
    slots: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
    last_log: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Gate {
    /// A gate of `limits.max_connections` slots. The process's soft limit of open files is
    /// raised to its hard limit first (once), so that the cap, not the descriptor limit,
    /// decides.
    pub fn new(limits: &Limits) -> Gate {
        raise_open_files_limit();
        Gate {
            name: limits.name,
            limit: limits.max_connections,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            refused: Arc::new(AtomicU64::new(0)),
            last_log: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// A slot for a new connection from `peer`, held for as long as the connection lives;
    /// `None` when every slot is taken (the caller closes the connection). The first
    /// refusal of a burst, then at most one every 10 s, is logged with the count.
    pub fn admit(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_log.lock().unwrap();
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        server = self.name,
                        limit = self.limit,
                        refused_total = n,
                        %peer,
                        "connection cap reached: new connections are closed until one ends \
                         (ESB_HTTP_MAX_CONNECTIONS)"
                    );
                }
                None
            }
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limit - self.slots.available_permits()
    }
}

/// How long a request body may go without a byte before the server gives up on it
/// ([`read_body`]): a client that stops sending mid-body cannot hold the request.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why [`read_body`] gave up.
#[derive(Debug)]
pub enum BodyError {
    /// More than the limit.
    TooLarge,
    /// No byte for [`BODY_IDLE_TIMEOUT`].
    Stalled,
    /// The connection failed.
    Read(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("the request body is too large"),
            BodyError::Stalled => write!(
                f,
                "the request body stalled: no byte for {} s",
                BODY_IDLE_TIMEOUT.as_secs()
            ),
            BodyError::Read(e) => write!(f, "the request body could not be read: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Reads a whole request body of at most `limit` bytes, giving up when no byte arrives for
/// `idle` (a trickle keeps it going: the header timeout and the connection cap bound the
/// rest).
pub async fn read_body<B>(
    body: B,
    limit: usize,
    idle: Duration,
) -> Result<hyper::body::Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(mut data) = frame.into_data() {
            use hyper::body::Buf as _;
            if buf.len() + data.remaining() > limit {
                return Err(BodyError::TooLarge);
            }
            while data.has_remaining() {
                let chunk = data.chunk();
                buf.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Ok(buf.into())
}

/// Raises this process's soft limit of open files to its hard limit (once per process;
/// failures are ignored: the old limit stays).
pub fn raise_open_files_limit() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write a valid rlimit struct we own.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

/// Serves `listener` with `limits` until `shutdown` resolves, then lets open connections
/// finish (graceful shutdown, at most [`Limits::shutdown_grace`]). `service` makes the service of one connection from the
/// peer's address.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: Limits,
    service: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder(&limits);
    let gate = Gate::new(&limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before accept: wait a
                        // little instead of spinning.
                        tracing::warn!(server = limits.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(permit) = gate.admit(peer) else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service(peer))
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_bad_ones_are_named() {
        let l = Limits::from_lookup("s3", |k| match k {
            "ESB_HTTP_MAX_CONNECTIONS" => Some("10".into()),
            "ESB_HTTP_HEADER_TIMEOUT_SECONDS" => Some("5".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.header_read_timeout, Duration::from_secs(5));
        assert_eq!(l.h2_max_concurrent_streams, 128);
        let e = Limits::from_lookup("s3", |k| {
            (k == "ESB_HTTP_MAX_CONNECTIONS").then(|| "lots".to_string())
        })
        .unwrap_err();
        assert!(e.contains("ESB_HTTP_MAX_CONNECTIONS"), "{e}");
        assert!(Limits::from_lookup("s3", |k| {
            (k == "ESB_HTTP_HEADER_TIMEOUT_SECONDS").then(|| "0".to_string())
        })
        .is_err());
    }

    #[test]
    fn the_gate_refuses_past_its_cap_and_counts() {
        let mut l = Limits::new("test");
        l.max_connections = 2;
        let gate = Gate::new(&l);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = gate.admit(peer).unwrap();
        let _b = gate.admit(peer).unwrap();
        assert!(gate.admit(peer).is_none());
        assert_eq!((gate.open(), gate.refused()), (2, 1));
        drop(a);
        assert!(gate.admit(peer).is_some());
    }
}
