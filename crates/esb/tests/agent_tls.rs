//! `esb agent` on a compute node, as root, with real parts: a node (`esb node up`, private
//! containerd), a namespace of the test's own standing for the node's WireGuard namespace
//! (10.99.0.2/32 on its `lo`), and the agent started with `--listen 10.99.0.2:50051
//! --listen-netns NS --tls-cert --tls-key --client-ca` (certificates from esb-pki). Only a
//! client with a certificate of the box CA, from inside that namespace, gets an answer.
//!
//! Everything is removed on drop, also after a failure: the agent by its PID, the node by
//! `esb node down`, the namespace by its guard (made first, dropped last).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use esb_agent_api::v1::agent_service_client::AgentServiceClient;
use esb_agent_api::v1::*;
use esb_netns::NetNs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const PORT: u16 = 50051;

fn addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(NODE_IP), PORT)
}

/// The WireGuard-like namespace: made as the guard's first act, deleted on drop.
struct NsGuard(String);

impl NsGuard {
    fn new() -> NsGuard {
        esb_testkit::require_root();
        let g = NsGuard(unique("esbt-wg"));
        NetNs::create(&g.0).expect("create namespace");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", "10.99.0.2/32", "dev", "lo"],
        ] {
            let out = Command::new("ip")
                .arg("-n")
                .arg(&g.0)
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        g
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.0);
    }
}

/// The `esb agent` process, killed by its PID on drop.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TLS client of the agent trusting `ca`, presenting `id` (certificate, key) if any.
fn client_config(ca: &Path, id: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
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
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Dials the agent over TLS from a socket made inside the namespace.
#[derive(Clone)]
struct Dial {
    ns: String,
    tls: Arc<rustls::ClientConfig>,
}

impl tonic::codegen::Service<http::Uri> for Dial {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let d = self.clone();
        Box::pin(async move {
            let tcp = NetNs::open(&d.ns)
                .map_err(std::io::Error::other)?
                .run(|| std::net::TcpStream::connect_timeout(&addr(), Duration::from_secs(5)))
                .map_err(std::io::Error::other)??;
            tcp.set_nonblocking(true)?;
            let tcp = tokio::net::TcpStream::from_std(tcp)?;
            let tls = tokio_rustls::TlsConnector::from(d.tls)
                .connect(ServerName::IpAddress(IpAddr::V4(NODE_IP).into()), tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

async fn client(
    ns: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<AgentServiceClient<Channel>, String> {
    let channel = Endpoint::from_shared(format!("http://{}", addr()))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_with_connector(Dial {
            ns: ns.to_string(),
            tls,
        })
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    Ok(AgentServiceClient::new(channel))
}

async fn list(ns: &str, tls: Arc<rustls::ClientConfig>) -> Result<ListContainersResponse, String> {
    client(ns, tls)
        .await?
        .list_containers(ListContainersRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("call: {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esb_agent_serves_mtls_on_the_wireguard_address_inside_its_namespace_only() {
    let wg = NsGuard::new();
    let node = TestNode::new();
    node.ok(&["node", "up", "--no-proxy"]);
    let pki = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (cert, key) =
        esb_pki::ensure_node_cert(pki.path(), "agent", "esb agent", &["10.99.0.2".into()]).unwrap();
    let gateway = esb_pki::ensure_node_cert(
        pki.path(),
        "gateway",
        "esb gateway",
        &["esb-gateway".into()],
    )
    .unwrap();
    let foreign = esb_pki::ensure_node_cert(
        other.path(),
        "gateway",
        "esb gateway",
        &["esb-gateway".into()],
    )
    .unwrap();
    let ca = esb_pki::ca_path(pki.path());

    // The TLS flags come together: one alone is refused before anything starts.
    let out = node.esb(&[
        "agent",
        "--listen=10.99.0.2:50051",
        &format!("--tls-cert={}", cert.display()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-key") && err.contains("--client-ca"),
        "{err}"
    );

    let socket = node.state.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_esb"))
        .arg(format!("--state-dir={}", node.state.path().display()))
        .arg("agent")
        .arg(format!(
            "--containerd-socket={}",
            node.state
                .path()
                .join("containerd/containerd.sock")
                .display()
        ))
        .args(["--listen", "10.99.0.2:50051", "--listen-netns", &wg.0])
        .env("ESB_AGENT_TLS_CERT", &cert)
        .env("ESB_AGENT_TLS_KEY", &key)
        .env("ESB_AGENT_CLIENT_CA", &ca)
        .env("ESB_NODE_NETNS", &node.netns)
        .env("ESB_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start esb agent");
    let mut agent = AgentProc(child);

    // Up once a box-CA client gets an answer from inside the namespace.
    let good = client_config(&ca, Some(&gateway));
    let deadline = Instant::now() + Duration::from_secs(60);
    let l = loop {
        match list(&wg.0, good.clone()).await {
            Ok(l) => break l,
            Err(e) => {
                if let Some(st) = agent.0.try_wait().unwrap() {
                    panic!("esb agent exited: {st}");
                }
                assert!(Instant::now() < deadline, "agent not reachable: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(l.containers.is_empty(), "{:?}", l.containers);

    // No certificate, or one of another CA: refused.
    let e = list(&wg.0, client_config(&ca, None)).await.unwrap_err();
    println!("no certificate: {e}");
    let e = list(&wg.0, client_config(&ca, Some(&foreign)))
        .await
        .unwrap_err();
    println!("foreign CA: {e}");
    // ... and the listener is still there for the gateway.
    list(&wg.0, good.clone()).await.expect("after refusals");

    // Not reachable from the host namespace, where 10.99.0.2 does not exist.
    let host = tokio::task::spawn_blocking(|| {
        std::net::TcpStream::connect_timeout(&addr(), Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(host.is_err(), "reached {} from the host namespace", addr());

    // Local callers keep the Unix socket.
    let mut local = esb_agent_api::connect(&format!("unix://{}", socket.display()))
        .await
        .expect("unix socket");
    local
        .list_containers(ListContainersRequest {})
        .await
        .expect("list over the unix socket");
    assert!(agent.0.try_wait().unwrap().is_none(), "agent exited");
}
