//! `https://` agents: a real tonic service (the scaffolding agent of `common`) behind
//! rustls requiring client certificates, certificates made here with rcgen. The gateway
//! calls it with the right client certificate; a wrong CA, a server certificate for
//! another IP, a missing or foreign client certificate are refused; the TCP connection is
//! made inside the agent's namespace when one is given.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use esb_agent_api::v1::agent_service_server::AgentServiceServer;
use esb_agent_api::v1::ListContainersRequest;
use esb_gateway::agents::Agent;
use esb_gateway::AgentAddr;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// A CA that writes what it issues into a directory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(p, key),
            pem,
        }
    }

    /// Writes the CA certificate as `dir/name.pem`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// Issues a certificate (server: SAN IP `ip`; client: no SAN) and writes
    /// `dir/name.pem` and `dir/name.key`.
    fn issue(&self, dir: &Path, name: &str, server_ip: Option<IpAddr>) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        match server_ip {
            Some(ip) => {
                p.subject_alt_names = vec![SanType::IpAddress(ip)];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            None => p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Certificates of one test: the box CA (agent server certificates, the gateway's client
/// certificate), and another CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    other: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("esb test CA"),
            other: Ca::new("another CA"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A rustls server configuration requiring client certificates of `client_ca`.
fn server_tls(cert: &Path, key: &Path, client_ca: &Path) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Serves `agent`'s gRPC API over TLS on `listener` until the sender is dropped.
fn serve_tls(
    agent: &ProcessAgent,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> tokio::sync::oneshot::Sender<()> {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let svc = AgentServiceServer::new(agent.clone());
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                _ = &mut rx => return,
            };
            let (acceptor, svc) = (acceptor.clone(), svc.clone());
            tokio::spawn(async move {
                // A refused handshake (no or foreign client certificate) ends here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(svc);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    tx
}

/// A TLS agent on 127.0.0.1 with a certificate for `server_ip`, requiring client
/// certificates of the box CA.
fn tls_agent(
    pki: &Pki,
    agent: &ProcessAgent,
    server_ip: IpAddr,
    name: &str,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (cert, key) = pki.ca.issue(pki.path(), name, Some(server_ip));
    let client_ca = pki.ca.write(pki.path(), "ca");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = serve_tls(agent, listener, server_tls(&cert, &key, &client_ca));
    (addr, stop)
}

/// Whether a gRPC call through an agent made from `spec` succeeds.
async fn call(spec: &str) -> Result<(), String> {
    let agent = Agent::connect(
        AgentAddr::parse(spec, 0).map_err(|e| format!("{e:#}"))?,
        Duration::from_secs(10),
    )
    .map_err(|e| format!("{e:#}"))?;
    let mut client = agent.client.clone();
    client
        .list_containers(ListContainersRequest {})
        .await
        .map(drop)
        .map_err(|s| format!("{s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_calls_a_tls_agent_with_its_client_certificate() {
    let pki = Pki::new();
    let agent = ProcessAgent::new();
    let (addr, _stop) = tls_agent(&pki, &agent, "127.0.0.1".parse().unwrap(), "agent");
    let ca = pki.ca.write(pki.path(), "ca");
    let (cert, key) = pki.ca.issue(pki.path(), "gateway-client", None);
    let spec = format!(
        "https://{addr},node=remote,mem=1024,ca={},cert={},key={}",
        ca.display(),
        cert.display(),
        key.display()
    );
    let admin = pki.path().join("admin.sock");
    let (spec2, admin2) = (spec.clone(), admin.clone());
    let b = TestBox::start(vec![spec_fn()], move |c| {
        c.agents = vec![AgentAddr::parse(&spec2, 0).unwrap()];
        c.admin_socket = Some(admin2);
    })
    .await;
    let r = b.client().invoke("echo", b"{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rev"], "tls");
    assert_eq!(agent.running_of("echo"), 1);
    let (_, v) = admin_get(&admin, "/status").await;
    assert_eq!(
        v["agents"],
        json!([{
            "node": "remote",
            "endpoint": format!("https://{addr}"),
            "up": true,
            "removed": false,
            "workers": 1,
            "memory_mb": 128,
            "max_memory_mb": 1024,
        }])
    );
    drop(b);
    agent.kill_all();
}

fn spec_fn() -> esb_gateway::FunctionSpec {
    let mut f = spec("echo", "python:gwfn.version");
    f.env = vec![("ESB_TEST_REV".into(), "tls".into())];
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_wrong_ip_and_wrong_client_certificates_are_refused() {
    let pki = Pki::new();
    let agent = ProcessAgent::new();
    let ca = pki.ca.write(pki.path(), "ca");
    let other_ca = pki.other.write(pki.path(), "other-ca");
    let (cert, key) = pki.ca.issue(pki.path(), "gateway-client", None);
    let (foreign_cert, foreign_key) = pki.other.issue(pki.path(), "foreign-client", None);
    let (good, _s1) = tls_agent(&pki, &agent, "127.0.0.1".parse().unwrap(), "good");
    // A server whose certificate names another address.
    let (elsewhere, _s2) = tls_agent(&pki, &agent, "10.99.0.2".parse().unwrap(), "elsewhere");
    let with = |addr: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>| {
        let mut s = format!("https://{addr},ca={}", ca.display());
        if let Some((c, k)) = client {
            s.push_str(&format!(",cert={},key={}", c.display(), k.display()));
        }
        s
    };
    let me = Some((cert.as_path(), key.as_path()));
    call(&with(good, &ca, me)).await.unwrap();
    let e = call(&with(good, &other_ca, me)).await.unwrap_err();
    assert!(e.contains("UnknownIssuer"), "wrong CA: {e}");
    let e = call(&with(elsewhere, &ca, me)).await.unwrap_err();
    assert!(
        e.contains("not valid for name"),
        "certificate for another IP: {e}"
    );
    let e = call(&with(good, &ca, None)).await.unwrap_err();
    eprintln!("no client certificate: {e}");
    let foreign = Some((foreign_cert.as_path(), foreign_key.as_path()));
    let e = call(&with(good, &ca, foreign)).await.unwrap_err();
    // (With TLS 1.3 the server's verdict on the client certificate comes after the
    // handshake: an alert or a closed connection, depending on timing.)
    eprintln!("foreign client certificate: {e}");
    // A key that is not the certificate's, a missing file: refused when the agent is set
    // up, naming the file.
    let e = call(&with(good, &ca, Some((&cert, &foreign_key))))
        .await
        .unwrap_err();
    assert!(e.contains("do not match"), "{e}");
    let e = call(&with(good, &pki.path().join("nope.pem"), me))
        .await
        .unwrap_err();
    assert!(e.contains("nope.pem"), "{e}");

    // Through the gateway: a wrong CA leaves the function without a worker (503), the
    // agent marked down.
    let admin = pki.path().join("admin.sock");
    let spec = with(good, &other_ca, me);
    let admin2 = admin.clone();
    let b = TestBox::start(vec![spec_fn()], move |c| {
        c.agents = vec![AgentAddr::parse(&format!("{spec},node=remote"), 0).unwrap()];
        c.admin_socket = Some(admin2);
        c.agent_timeout = Duration::from_secs(10);
    })
    .await;
    let r = b.client().invoke("echo", b"{}", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let (_, v) = admin_get(&admin, "/status").await;
    assert_eq!(v["agents"][0]["up"], false, "{v:#}");
    assert_eq!(agent.running_of("echo"), 0);
    drop(b);
    agent.kill_all();
}

/// A network namespace of the test's own with `lo` up; deleted when dropped.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = format!("esb-gwt-{}", std::process::id());
        let _ = esb_netns::NetNs::delete(&name);
        esb_netns::NetNs::create(&name).unwrap();
        let out = std::process::Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = esb_netns::NetNs::delete(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_agent_is_dialled_from_its_namespace() {
    esb_testkit::require_root();
    let ns = Ns::new();
    let pki = Pki::new();
    let agent = ProcessAgent::new();
    let ca = pki.ca.write(pki.path(), "ca");
    let (cert, key) = pki.ca.issue(pki.path(), "gateway-client", None);
    let (scert, skey) = pki
        .ca
        .issue(pki.path(), "agent", Some("127.0.0.1".parse().unwrap()));
    // The agent listens on 127.0.0.1 inside the namespace only.
    let listener = esb_netns::NetNs::open(&ns.0)
        .unwrap()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let _stop = serve_tls(&agent, listener, server_tls(&scert, &skey, &ca));
    let spec = |netns: &str| {
        format!(
            "https://{addr}{netns},ca={},cert={},key={}",
            ca.display(),
            cert.display(),
            key.display()
        )
    };
    call(&spec(&format!(",netns={}", ns.0))).await.unwrap();
    // From the gateway's own namespace nothing listens there.
    let e = call(&spec("")).await.unwrap_err();
    assert!(e.contains("refused"), "from the host namespace: {e}");
    // A namespace that does not exist (yet): the call fails, the agent can be set up.
    let e = call(&spec(",netns=esb-gwt-none")).await.unwrap_err();
    assert!(e.contains("esb-gwt-none"), "missing namespace: {e}");
}
