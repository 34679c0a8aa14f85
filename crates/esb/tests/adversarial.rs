//! Servers that bad input cannot stop, against `esb up` through real sockets (issue 17):
//! a slow-header client (slowloris) is cut at the header timeout by S3, DynamoDB, the log
//! store and the gateway (after its TLS handshake); a LogsQL query of 100 000 opening
//! parentheses answers 400 and the log store is not restarted; 5 000 idle TLS connections
//! held open against the gateway do not stop a legitimate request from being served.

mod boxkit;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxkit::TestBox;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const HEADER_TIMEOUT: u64 = 20;

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Trickles a header that never ends into `s`, one byte every 300 ms; how long until the
/// server cut the connection (None: still open after `limit`).
fn slowloris(s: &mut dyn ReadWrite, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    if s.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
        .is_err()
    {
        return Some(start.elapsed());
    }
    while start.elapsed() < limit {
        if s.write_all(b"a").and_then(|_| s.flush()).is_err() {
            return Some(start.elapsed());
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => return Some(start.elapsed()), // an error answer, then the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

#[test]
fn slow_idle_and_hostile_clients_do_not_stop_the_box() {
    let mut b = TestBox::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fenced"));
    b.set(
        "ESB_HTTP_HEADER_TIMEOUT_SECONDS",
        &HEADER_TIMEOUT.to_string(),
    );
    let out = b.up();
    assert!(out.contains("esb is up"), "{out}");
    let ca = b.state.join("tls/ca.pem");
    let limit = Duration::from_secs(HEADER_TIMEOUT + 30);

    // Slowloris on every server at once.
    let plain = [
        ("s3", b.s3_port),
        ("dynamodb", b.ddb_port),
        ("logstore", b.logs_port),
    ];
    let mut threads = Vec::new();
    for (name, port) in plain {
        threads.push(std::thread::spawn(move || {
            (name, slowloris(&mut tcp(port), limit))
        }));
    }
    let (gw_port, gw_ca) = (b.gateway_port, ca.clone());
    threads.push(std::thread::spawn(move || {
        let conn = rustls::ClientConnection::new(
            tls_config(&gw_ca),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp(gw_port));
        ("gateway", slowloris(&mut tls, limit))
    }));
    for t in threads {
        let (name, cut) = t.join().unwrap();
        let cut = cut.unwrap_or_else(|| panic!("{name}: a trickled header kept its connection"));
        assert!(
            cut >= Duration::from_secs(HEADER_TIMEOUT - 1),
            "{name}: cut after {cut:?}, before the header timeout?"
        );
    }

    // A LogsQL query nested 100 000 deep: 400, and the store lives on.
    let deep = "(".repeat(100_000);
    let out = b
        .in_host("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            "--data-urlencode",
            &format!("query={deep}"),
            &format!("http://127.0.0.1:{}/select/logsql/query", b.logs_port),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");

    // 5 000 idle TLS connections held open against the gateway; a real request still
    // gets its answer meanwhile.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_config(&ca));
    let port = b.gateway_port;
    let held = rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for _ in 0..5000 {
            let connector = connector.clone();
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()?;
                connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .ok()
            }));
        }
        let mut held = Vec::new();
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                held.push(c);
            }
        }
        held
    });
    assert!(
        held.len() >= 4500,
        "only {} of 5000 TLS connections were established",
        held.len()
    );
    let (code, body) = b.curl(&[&b.url("/health")]);
    assert_eq!(
        code,
        200,
        "with {} idle TLS connections: {body}",
        held.len()
    );
    drop(held);
    drop(rt);

    // Nothing restarted.
    let status = b.status();
    for c in status["components"].as_array().unwrap() {
        assert_eq!(
            c["restarts"].as_u64(),
            Some(0),
            "component {} restarted: {status}",
            c["name"]
        );
    }
    b.down_clean();
}
