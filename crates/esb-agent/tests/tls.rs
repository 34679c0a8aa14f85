//! The agent's TCP listener on a compute node: bound on a WireGuard-like address that
//! exists only inside a network namespace, and mutual TLS with certificates of the box CA
//! (esb-pki). Real parts: a namespace of the test's own, the kernel's TCP, rustls, tonic and
//! `esb_agent::service::serve_service`; the service behind it is a stand-in (the real one
//! needs containerd, which the listener has nothing to do with).
//!
//! The namespace is removed on drop, also after a failure; 10.99.0.2 exists only inside it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use esb_agent::service::{serve_service, Listen, ServeError, TlsFiles};
use esb_agent_api::v1::agent_service_client::AgentServiceClient;
use esb_agent_api::v1::agent_service_server::AgentService;
use esb_agent_api::v1::*;
use esb_netns::NetNs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const PORT: u16 = 50051;

fn addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(NODE_IP), PORT)
}

/// A network namespace of the test's own, deleted on drop. Made as the guard's first act,
/// so that a failure half-way still removes it.
struct NsGuard(String);

impl NsGuard {
    fn new() -> NsGuard {
        esb_testkit::require_root();
        static N: AtomicUsize = AtomicUsize::new(0);
        let g = NsGuard(format!(
            "esbt-tls{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        NetNs::create(&g.0).expect("create namespace");
        g.ip(&["link", "set", "lo", "up"]);
        g.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        g
    }

    fn ip(&self, args: &[&str]) {
        let out = std::process::Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.0);
    }
}

/// A stand-in agent: answers ListContainers with one worker, records who called.
#[derive(Default)]
struct FakeAgent {
    calls: AtomicUsize,
    peers: Mutex<Vec<Option<SocketAddr>>>,
}

#[derive(Clone)]
struct Fake(Arc<FakeAgent>);

#[tonic::async_trait]
impl AgentService for Fake {
    type WatchWorkersStream = tonic::codegen::BoxStream<WorkerEvent>;
    async fn watch_workers(
        &self,
        _: Request<WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchWorkersStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn ensure_container(
        &self,
        _: Request<EnsureContainerRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn destroy_container(
        &self,
        _: Request<DestroyContainerRequest>,
    ) -> Result<Response<DestroyContainerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn pause_container(
        &self,
        _: Request<PauseContainerRequest>,
    ) -> Result<Response<PauseContainerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn resume_container(
        &self,
        _: Request<ResumeContainerRequest>,
    ) -> Result<Response<ResumeContainerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0.peers.lock().unwrap().push(req.remote_addr());
        Ok(Response::new(ListContainersResponse {
            containers: vec![ContainerState {
                container_id: "w-probe-000000000001".into(),
                function_name: "probe".into(),
                status: esb_agent_api::status::RUNNING.into(),
                ip_address: "10.88.2.5".into(),
                node_id: "node-2".into(),
                ..Default::default()
            }],
        }))
    }
    async fn get_container_metrics(
        &self,
        _: Request<GetContainerMetricsRequest>,
    ) -> Result<Response<GetContainerMetricsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// What a client presents.
#[derive(Clone)]
enum Identity {
    None,
    Cert { cert: PathBuf, key: PathBuf },
}

/// A TLS client trusting `ca` for the agent, presenting `id`, speaking h2.
fn client_config(ca: &Path, id: &Identity) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match id {
        Identity::None => b.with_no_client_auth(),
        Identity::Cert { cert, key } => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// A TCP connection to the agent from a socket made inside `ns`.
async fn tcp_in(ns: &str) -> std::io::Result<tokio::net::TcpStream> {
    let s = NetNs::open(ns)
        .map_err(std::io::Error::other)?
        .run(|| std::net::TcpStream::connect_timeout(&addr(), Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

/// TLS to the agent from inside `ns`, handshake done (as far as the client can tell).
async fn tls_in(
    ns: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_in(ns).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(IpAddr::V4(NODE_IP).into()), tcp)
        .await
}

/// A gRPC client of the agent at 10.99.0.2:50051 over TLS, connected from inside `ns`.
async fn grpc_in(
    ns: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
    let ns = ns.to_string();
    let channel = Endpoint::from_shared(format!("http://{}", addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let (ns, cfg) = (ns.clone(), cfg.clone());
            async move {
                let tls = tls_in(&ns, cfg).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(AgentServiceClient::new(channel))
}

/// ListContainers over mutual TLS from inside `ns`; any failure (connect or call) as text.
async fn list_in(
    ns: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<ListContainersResponse, String> {
    let mut c = grpc_in(ns, cfg)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    c.list_containers(ListContainersRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("call: {s:?}"))
}

/// The server's answer to a client it refuses: the handshake, or the first read after
/// it (TLS 1.3 clients finish before the server has checked their certificate), fails
/// with the alert the agent sent.
async fn refused_with_alert(ns: &str, cfg: Arc<rustls::ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = match tls_in(ns, cfg).await {
        Err(e) => e,
        Ok(mut s) => {
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Err(e)) => e,
                other => panic!("agent did not refuse the client: {other:?}"),
            }
        }
    };
    let text = e.to_string();
    assert!(text.contains("alert"), "expected a TLS alert, got: {text}");
    text
}

/// Listening sockets on `ip:port` in the TCP table of the calling thread's namespace.
fn listening_here(ip: Ipv4Addr, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
    let want = format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()));
    let any = format!("{:08X}:{port:04X}", 0);
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && (f[1] == want || f[1] == any) && f[3] == "0A"
    })
}

struct Certs {
    _dirs: Vec<tempfile::TempDir>,
    ca: PathBuf,
    agent: TlsFiles,
    gateway: Identity,
    foreign: Identity,
    server_only: Identity,
}

/// The box CA with the node's certificate (SAN 10.99.0.2) and the gateway's client
/// certificate; another CA with a certificate of the same names; the box's server-only
/// certificate (no ClientAuth).
fn certs() -> Certs {
    let boxca = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = esb_pki::ensure_node_cert(
        boxca.path(),
        "agent",
        "esb agent node-2",
        &[NODE_IP.to_string()],
    )
    .unwrap();
    let (gc, gk) = esb_pki::ensure_node_cert(
        boxca.path(),
        "gateway",
        "esb gateway",
        &["esb-gateway".into()],
    )
    .unwrap();
    let (sc, sk) =
        esb_pki::ensure_server_cert(boxca.path(), "server", "esb gateway", &["10.99.0.1".into()])
            .unwrap();
    let (oc, ok) = esb_pki::ensure_node_cert(
        other.path(),
        "gateway",
        "esb gateway",
        &["esb-gateway".into()],
    )
    .unwrap();
    let ca = esb_pki::ca_path(boxca.path());
    Certs {
        agent: TlsFiles {
            cert,
            key,
            client_ca: ca.clone(),
        },
        ca,
        gateway: Identity::Cert { cert: gc, key: gk },
        foreign: Identity::Cert { cert: oc, key: ok },
        server_only: Identity::Cert { cert: sc, key: sk },
        _dirs: vec![boxca, other],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_listens_only_in_its_namespace_and_only_for_clients_of_the_box_ca() {
    let ns = NsGuard::new();
    let certs = certs();
    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("agent.sock");
    let fake = Arc::new(FakeAgent::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_service(
        Fake(fake.clone()),
        Listen {
            unix: Some(socket.clone()),
            tcp: Some(addr()),
            tcp_netns: Some(ns.0.clone()),
            tls: Some(certs.agent.clone()),
        },
        async move {
            let _ = stopped.await;
        },
    ));

    // The gateway's certificate (same CA, ClientAuth): served.
    let good = client_config(&certs.ca, &certs.gateway);
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        match list_in(&ns.0, good.clone()).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(!server.is_finished(), "serve ended: {e}");
                assert!(Instant::now() < deadline, "agent not reachable: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(list.containers.len(), 1);
    assert_eq!(list.containers[0].node_id, "node-2");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    // tonic sees the TCP peer as on a plain listener: a socket of the namespace.
    let peer = fake.peers.lock().unwrap()[0].expect("remote_addr");
    assert_eq!(peer.ip(), IpAddr::V4(NODE_IP));

    // No client certificate: refused in the handshake, the service never called.
    let none = client_config(&certs.ca, &Identity::None);
    let alert = refused_with_alert(&ns.0, none.clone()).await;
    println!("no certificate: {alert}");
    assert!(list_in(&ns.0, none).await.is_err());
    // A certificate of another CA (same names): refused the same way.
    let foreign = client_config(&certs.ca, &certs.foreign);
    let alert = refused_with_alert(&ns.0, foreign.clone()).await;
    println!("foreign CA: {alert}");
    assert!(list_in(&ns.0, foreign).await.is_err());
    // The box's server-only certificate is no client's.
    let server_only = client_config(&certs.ca, &certs.server_only);
    refused_with_alert(&ns.0, server_only.clone()).await;
    assert!(list_in(&ns.0, server_only).await.is_err());
    // Not TLS at all (plain h2, then junk): refused.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tcp_in(&ns.0).await.unwrap();
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buf))
            .await
            .expect("agent kept a non-TLS client")
            .unwrap_or(0);
        assert!(
            !String::from_utf8_lossy(&buf[..n]).contains("grpc"),
            "answered gRPC in the clear"
        );
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "a refused client reached the service"
    );

    // A client that connects and stalls does not hold up the others; the listener
    // survived every refusal.
    let _stalled = tcp_in(&ns.0).await.unwrap();
    let started = Instant::now();
    let list = list_in(&ns.0, good.clone()).await.expect("after refusals");
    assert_eq!(list.containers[0].container_id, "w-probe-000000000001");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    // The listener is in the namespace and nowhere else: nothing listens on the port in
    // the host namespace, and 10.99.0.2:50051 is not reachable from it.
    let in_ns = NetNs::open(&ns.0)
        .unwrap()
        .run(|| listening_here(NODE_IP, PORT))
        .unwrap();
    assert!(in_ns, "no listener on {} in {}", addr(), ns.0);
    assert!(
        !listening_here(NODE_IP, PORT),
        "a listener on {} in the host namespace",
        addr()
    );
    let host = tokio::task::spawn_blocking(|| {
        std::net::TcpStream::connect_timeout(&addr(), Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(host.is_err(), "reached {} from the host namespace", addr());

    // Local callers keep the Unix socket, without TLS.
    let mut local = esb_agent_api::connect(&format!("unix://{}", socket.display()))
        .await
        .expect("unix socket");
    local
        .list_containers(ListContainersRequest {})
        .await
        .expect("list over the unix socket");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);

    // Shutdown closes the listener.
    drop(local);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("serve did not stop")
        .unwrap()
        .expect("serve");
    let in_ns = NetNs::open(&ns.0)
        .unwrap()
        .run(|| listening_here(NODE_IP, PORT))
        .unwrap();
    assert!(!in_ns, "listener left after shutdown");
    assert!(!socket.exists(), "unix socket left after shutdown");
}

#[tokio::test]
async fn listen_settings_are_checked_before_anything_is_bound() {
    let certs = certs();
    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("agent.sock");
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let run = |listen: Listen| async move {
        let fake = Fake(Arc::new(FakeAgent::default()));
        tokio::time::timeout(
            Duration::from_secs(10),
            serve_service(fake, listen, async {}),
        )
        .await
        .expect("serve should fail at once")
    };

    // TLS or a namespace without a TCP address.
    let e = run(Listen {
        unix: Some(socket.clone()),
        tls: Some(certs.agent.clone()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, ServeError::Config(_)), "{e}");
    let e = run(Listen {
        unix: Some(socket.clone()),
        tcp_netns: Some("esbt-none".into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, ServeError::Config(_)), "{e}");
    assert!(matches!(
        run(Listen::default()).await.unwrap_err(),
        ServeError::Config(_)
    ));

    // A missing file is named.
    let mut files = certs.agent.clone();
    files.client_ca = state.path().join("missing-ca.pem");
    let e = run(Listen {
        unix: Some(socket.clone()),
        tcp: Some(loopback),
        tls: Some(files),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(e, ServeError::TlsFile { .. }) && e.to_string().contains("missing-ca.pem"),
        "{e}"
    );
    // A key that is not the certificate's.
    let mut files = certs.agent.clone();
    if let Identity::Cert { key, .. } = &certs.gateway {
        files.key = key.clone();
    }
    let e = run(Listen {
        tcp: Some(loopback),
        tls: Some(files),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, ServeError::Tls(_)), "{e}");
    // A namespace that does not exist.
    let e = run(Listen {
        unix: Some(socket.clone()),
        tcp: Some(loopback),
        tcp_netns: Some("esbt-no-such-namespace".into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, ServeError::Netns(_)), "{e}");
    assert!(e.to_string().contains("esbt-no-such-namespace"), "{e}");
    // None of these touched the Unix socket.
    assert!(!socket.exists());
}
