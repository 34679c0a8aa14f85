//! Shared helpers of the integration tests: an in-process server on 127.0.0.1:0 and a
//! runner for the Python client suites under tests/py.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod signing;

pub const ACCESS_KEY: &str = "AKIDESBTEST";
pub const SECRET_KEY: &str = "esb-test-secret";
pub const REGION: &str = "ap-northeast-1";

/// A server running on its own runtime thread, stopped (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let mut s = TestServer::start_in(&dir);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(dir: &Path) -> TestServer {
        let config = config(dir, "127.0.0.1:0".parse().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = esb_dynamodb::Server::bind(config).await.expect("bind");
                addr_tx.send(server.local_addr()).unwrap();
                server
                    .run(async move {
                        let _ = rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("server did not start");
        TestServer {
            addr,
            dir: dir.to_owned(),
            _tmp: None,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn config(dir: &Path, listen: SocketAddr) -> esb_dynamodb::Config {
    esb_dynamodb::Config {
        listen,
        data_dir: dir.to_owned(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        region: REGION.into(),
        iam_file: None,
    }
}

/// Environment for real AWS clients talking to `endpoint` with the test credentials.
pub fn client_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("DDB_ENDPOINT", endpoint)
        .env("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("PYTHONDONTWRITEBYTECODE", "1");
}

pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// Runs one pytest file of tests/py against a fresh server; panics with pytest's output
/// when a test fails.
pub fn pytest(file: &str) {
    let server = TestServer::start();
    pytest_against(&server.endpoint(), file, &[]);
}

pub fn pytest_against(endpoint: &str, file: &str, extra_env: &[(&str, &str)]) {
    let mut cmd = Command::new(esb_testkit::python());
    cmd.arg("-m")
        .arg("pytest")
        .arg("-q")
        .arg("-p")
        .arg("no:cacheprovider")
        .arg(py_dir().join(file))
        .current_dir(py_dir());
    client_env(&mut cmd, endpoint);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pytest {file} failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

/// A minimal signed DynamoDB client over std TCP (HTTP/1.1, one request per connection),
/// for tests that must not depend on Python.
pub fn call(
    addr: SocketAddr,
    op: &str,
    body: &serde_json::Value,
) -> std::io::Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let payload = serde_json::to_vec(body).unwrap();
    let headers = signing::signed_headers(
        &addr.to_string(),
        op,
        &payload,
        (ACCESS_KEY, SECRET_KEY),
        REGION,
    );
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut head = String::from("POST / HTTP/1.1\r\n");
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        payload.len()
    ));
    stream.write_all(head.as_bytes())?;
    stream.write_all(&payload)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("truncated response"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    Ok((status, json))
}
