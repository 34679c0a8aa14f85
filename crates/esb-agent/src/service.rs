//! The gRPC face of the agent: `esb.agent.v1.AgentService` over a Unix socket and/or a TCP
//! address (never the worker bridge): local to the control side, or on a compute node its
//! WireGuard address, bound inside the namespace that holds it, with mutual TLS (only
//! clients with a certificate of the box CA get past the handshake).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use esb_agent_api::v1::agent_service_server::{AgentService, AgentServiceServer};
use esb_agent_api::v1::*;
use tonic::{Request, Response, Status};

use crate::{Agent, AgentError, EnsureRequest};

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let msg = e.to_string();
        match e {
            AgentError::InvalidArgument { .. } => Status::invalid_argument(msg),
            AgentError::NotFound(_) => Status::not_found(msg),
            AgentError::NotReady {
                timed_out: true, ..
            } => Status::deadline_exceeded(msg),
            AgentError::NotReady { .. } | AgentError::NotRunning(_) => {
                Status::failed_precondition(msg)
            }
            // The registry, not the agent, is out of reach: the agent stays usable.
            AgentError::Pull(_) => Status::failed_precondition(msg),
            AgentError::Containerd(c) if c.status.code() == tonic::Code::Unavailable => {
                Status::unavailable(msg)
            }
            AgentError::Node(esb_runtime_node::NodeError::NotUp(_)) => Status::unavailable(msg),
            _ => Status::internal(msg),
        }
    }
}

/// The service implementation.
#[derive(Clone)]
pub struct AgentGrpc {
    agent: Arc<Agent>,
}

impl AgentGrpc {
    /// Wraps an agent.
    pub fn new(agent: Arc<Agent>) -> AgentGrpc {
        AgentGrpc { agent }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AgentServiceServer<AgentGrpc> {
        AgentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    type WatchWorkersStream = tonic::codegen::BoxStream<WorkerEvent>;

    async fn watch_workers(
        &self,
        _req: Request<WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchWorkersStream>, Status> {
        use tokio::sync::broadcast::error::RecvError;
        // Subscribed before WATCHING is sent: nothing after it is missed.
        let mut events = self.agent.watch();
        let node_id = self.agent.config().node_id.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WorkerEvent, Status>>(64);
        let agent = self.agent.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = agent.following() => {}
                () = tx.closed() => return,
            }
            drop(agent);
            let watching = WorkerEvent {
                kind: esb_agent_api::event::WATCHING.into(),
                node_id: node_id.clone(),
                ..Default::default()
            };
            if tx.send(Ok(watching)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    r = events.recv() => r,
                    () = tx.closed() => return,
                };
                let item = match next {
                    Ok(crate::WorkerEvent::Exited {
                        id,
                        function_name,
                        exit_status,
                        exited_at_ms,
                    }) => Ok(WorkerEvent {
                        kind: esb_agent_api::event::EXITED.into(),
                        container_id: id,
                        function_name,
                        exit_status,
                        exited_at_ms,
                        node_id: node_id.clone(),
                    }),
                    Ok(crate::WorkerEvent::Lost) => Err(Status::unavailable(
                        "the agent's subscription to containerd broke: list and watch again",
                    )),
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "{n} worker events were missed: list and watch again"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ensure_container(
        &self,
        req: Request<EnsureContainerRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        let r = req.into_inner();
        let started = std::time::Instant::now();
        let w = self
            .agent
            .ensure(EnsureRequest {
                function_name: r.function_name.clone(),
                image: r.image,
                env: r.env,
                memory_mb: r.memory_mb,
                timeout_seconds: r.timeout_seconds,
                labels: r.labels,
            })
            .await
            .inspect_err(
                |e| tracing::warn!(function = %r.function_name, error = %e, "ensure failed"),
            )?;
        tracing::info!(function = %r.function_name, worker = %w.id, ip = %w.ip,
            ms = started.elapsed().as_millis() as u64, "worker ready");
        Ok(Response::new(WorkerInfo {
            name: w.id.clone(),
            id: w.id,
            ip_address: w.ip,
            port: w.port as i32,
            node_id: self.agent.config().node_id.clone(),
        }))
    }

    async fn destroy_container(
        &self,
        req: Request<DestroyContainerRequest>,
    ) -> Result<Response<DestroyContainerResponse>, Status> {
        let r = req.into_inner();
        if r.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must not be empty"));
        }
        let success = self.agent.destroy(&r.container_id).await?;
        tracing::info!(worker = %r.container_id, existed = success, "worker destroyed");
        Ok(Response::new(DestroyContainerResponse { success }))
    }

    async fn pause_container(
        &self,
        req: Request<PauseContainerRequest>,
    ) -> Result<Response<PauseContainerResponse>, Status> {
        self.agent.pause(&req.into_inner().container_id).await?;
        Ok(Response::new(PauseContainerResponse { success: true }))
    }

    async fn resume_container(
        &self,
        req: Request<ResumeContainerRequest>,
    ) -> Result<Response<ResumeContainerResponse>, Status> {
        self.agent.resume(&req.into_inner().container_id).await?;
        Ok(Response::new(ResumeContainerResponse { success: true }))
    }

    async fn list_containers(
        &self,
        _req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let node_id = self.agent.config().node_id.clone();
        let containers = self
            .agent
            .list()
            .await?
            .into_iter()
            .map(|w| ContainerState {
                container_name: w.id.clone(),
                container_id: w.id,
                function_name: w.function_name,
                status: w.status.to_string(),
                last_used_at: w.created_at,
                created_at: w.created_at,
                ip_address: w.ip,
                node_id: node_id.clone(),
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn get_container_metrics(
        &self,
        req: Request<GetContainerMetricsRequest>,
    ) -> Result<Response<GetContainerMetricsResponse>, Status> {
        let m = self.agent.metrics(&req.into_inner().container_id).await?;
        Ok(Response::new(GetContainerMetricsResponse {
            metrics: Some(ContainerMetrics {
                container_name: m.id.clone(),
                container_id: m.id,
                function_name: m.function_name,
                state: m.state.to_string(),
                memory_current: m.memory_current,
                memory_max: m.memory_max,
                oom_events: m.oom_events,
                cpu_usage_ns: m.cpu_usage_ns,
                exit_code: m.exit_code,
                restart_count: 0,
                exit_time: m.exit_time,
                collected_at: m.collected_at,
            }),
        }))
    }
}

/// Where the agent listens.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// Unix socket path (created, replaced if stale, mode 0600).
    pub unix: Option<PathBuf>,
    /// TCP address: loopback on the control machine; on a compute node its WireGuard
    /// address (with `tcp_netns` and `tls`).
    pub tcp: Option<SocketAddr>,
    /// Named network namespace the TCP listener is bound in (its address exists only
    /// there, e.g. a node's `wg0`); the agent's other sockets stay where it runs.
    pub tcp_netns: Option<String>,
    /// Mutual TLS on the TCP listener: only clients with a certificate of the client CA
    /// get past the handshake. The Unix socket is never TLS (local callers, mode 0600).
    pub tls: Option<TlsFiles>,
}

/// PEM files of the TCP listener's mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The agent's certificate (chain), e.g. from `esb_pki::ensure_node_cert`.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA (one or more certificates) that must have signed a client's certificate:
    /// the box CA.
    pub client_ca: PathBuf,
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen settings do not fit together.
    #[error("{0}")]
    Config(String),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The listener's network namespace could not be entered.
    #[error("listener namespace: {0}")]
    Netns(#[from] esb_netns::NetNsError),
    /// A TLS file is missing, unreadable, or holds no usable certificate or key.
    #[error("TLS: {path}: {msg}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// rustls refused the certificates (e.g. the key does not match the certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// A listener ended before shutdown was asked.
    #[error("a listener stopped unexpectedly")]
    ListenerStopped,
    /// A listener's task panicked.
    #[error("listener task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Handshakes in progress at most; the listener accepts no more until one ends.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// The rustls settings of the TCP listener: `files.cert`/`files.key` served, a client
/// certificate signed by `files.client_ca` required (no certificate, or one of another
/// CA, and the handshake fails), TLS 1.2/1.3 with ring, ALPN `h2`.
pub fn tls_server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |path: &PathBuf| {
        let path = path.clone();
        move |e: rustls::pki_types::pem::Error| ServeError::TlsFile {
            msg: e.to_string(),
            path,
        }
    };
    let certs = |path: &PathBuf| -> Result<Vec<CertificateDer<'static>>, ServeError> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(pem_err(path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(path))?;
        if certs.is_empty() {
            return Err(ServeError::TlsFile {
                path: path.clone(),
                msg: "no certificate in the file".into(),
            });
        }
        Ok(certs)
    };
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(pem_err(&files.key))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| ServeError::TlsFile {
            path: files.client_ca.clone(),
            msg: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ServeError::Tls(format!("client CA {}: {e}", files.client_ca.display())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            ServeError::Tls(format!(
                "{} with {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds the TCP listener, inside `netns` when given: the socket is made on a helper
/// thread that entered the namespace and keeps it for its whole life.
fn bind_tcp(addr: SocketAddr, netns: Option<&str>) -> Result<tokio::net::TcpListener, ServeError> {
    let (l, place) = match netns {
        Some(name) => (
            esb_netns::NetNs::open(name)?.run(|| std::net::TcpListener::bind(addr))?,
            format!(" in network namespace {name}"),
        ),
        None => (std::net::TcpListener::bind(addr), String::new()),
    };
    let l = l.map_err(io_err(format!("listen on {addr}{place}")))?;
    l.set_nonblocking(true)
        .map_err(io_err(format!("listen on {addr}{place}")))?;
    tokio::net::TcpListener::from_std(l).map_err(io_err(format!("listen on {addr}{place}")))
}

/// Serves the agent until `shutdown` completes.
pub async fn serve(
    agent: Arc<Agent>,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_service(AgentGrpc::new(agent), listen, shutdown).await
}

/// Serves any implementation of `esb.agent.v1.AgentService` (the agent's, or a stand-in)
/// on `listen` until `shutdown` completes. Everything is checked and bound before the
/// first request is served; a listener that stops early ends the whole server with an
/// error.
pub async fn serve_service<S: AgentService>(
    svc: S,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
    if listen.tcp.is_none() && (listen.tcp_netns.is_some() || listen.tls.is_some()) {
        return Err(ServeError::Config(
            "a TCP listener's namespace or TLS needs a TCP address".into(),
        ));
    }
    if listen.unix.is_none() && listen.tcp.is_none() {
        return Err(ServeError::Config(
            "no listen address (set a Unix socket or a TCP address)".into(),
        ));
    }
    let svc = AgentServiceServer::new(svc);
    let tls = listen.tls.as_ref().map(tls_server_config).transpose()?;
    // TCP first: a bad address or namespace fails before the Unix socket is touched.
    let tcp = listen
        .tcp
        .map(|addr| bind_tcp(addr, listen.tcp_netns.as_deref()))
        .transpose()?;
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    if let Some(path) = &listen.unix {
        if path.exists() {
            std::fs::remove_file(path)
                .map_err(io_err(format!("remove stale socket {}", path.display())))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let l = tokio::net::UnixListener::bind(path)
            .map_err(io_err(format!("listen on {}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let mut rx = tx.subscribe();
        let server = tonic::transport::Server::builder().add_service(svc.clone());
        servers.spawn(async move {
            server
                .serve_with_incoming_shutdown(
                    skip_accept_errors(UnixListenerStream::new(l)),
                    async move {
                        let _ = rx.recv().await;
                    },
                )
                .await
        });
    }
    if let Some(l) = tcp {
        let mut rx = tx.subscribe();
        let server = tonic::transport::Server::builder().add_service(svc.clone());
        let signal = async move {
            let _ = rx.recv().await;
        };
        match tls {
            None => {
                servers.spawn(async move {
                    server
                        .serve_with_incoming_shutdown(
                            skip_accept_errors(TcpListenerStream::new(l)),
                            signal,
                        )
                        .await
                });
            }
            Some(cfg) => {
                servers.spawn(async move {
                    let (conns, incoming) = tokio::sync::mpsc::channel(16);
                    // The accept loop owns the listener: aborting it closes the socket
                    // and drops the handshakes in progress.
                    let accept =
                        tokio::spawn(accept_tls(l, tokio_rustls::TlsAcceptor::from(cfg), conns));
                    let incoming = {
                        use tokio_stream::StreamExt;
                        tokio_stream::wrappers::ReceiverStream::new(incoming)
                            .map(Ok::<_, std::io::Error>)
                    };
                    let r = server.serve_with_incoming_shutdown(incoming, signal).await;
                    accept.abort();
                    let _ = accept.await;
                    r
                });
            }
        }
    }
    // A listener that stops early is an error of the whole agent, never a silent half.
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        Some(r) = servers.join_next() => {
            let _ = tx.send(());
            r??;
            return Err(ServeError::ListenerStopped);
        }
    }
    let _ = tx.send(());
    while let Some(r) = servers.join_next().await {
        r??;
    }
    if let Some(path) = &listen.unix {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Accepts TCP connections and hands those whose TLS handshake succeeds to the server.
/// Each handshake runs on its own task with a deadline: a client that stalls, speaks
/// something else or presents no (or a foreign) certificate costs its own connection,
/// never the listener or the other clients. Ends when the server drops its receiver.
async fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    conns: tokio::sync::mpsc::Sender<TlsConn>,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= MAX_PENDING_HANDSHAKES {
            tokio::select! {
                _ = conns.closed() => return,
                _ = handshakes.join_next() => continue,
            }
        }
        let (tcp, peer) = tokio::select! {
            _ = conns.closed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // A client gone first, or out of descriptors: skip, without spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, conns) = (acceptor.clone(), conns.clone());
        handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = conns.send(TlsConn(tls)).await;
                }
                // A connection closed before any TLS byte is a reachability probe (the
                // gateway's, when a heartbeat is slow), not a refused client.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, "connection closed before a TLS handshake")
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// A client connection past its TLS handshake. It tells tonic the TCP addresses, so
/// `Request::remote_addr` works as on a plain TCP listener.
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connections whose accept failed (a client that went away first, a descriptor limit)
/// are logged and skipped: one bad accept must not end the server.
fn skip_accept_errors<S, T>(
    incoming: S,
) -> impl tokio_stream::Stream<Item = Result<T, std::io::Error>>
where
    S: tokio_stream::Stream<Item = Result<T, std::io::Error>>,
{
    use tokio_stream::StreamExt;
    incoming.filter_map(|r| match r {
        Ok(conn) => Some(Ok(conn)),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            None
        }
    })
}
