//! Shared helpers for the esb-s3 integration tests: an in-process server on an ephemeral
//! loopback port, and runners for the real clients (boto3/pytest, AWS CLI, s3cmd, rclone).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const ACCESS_KEY: &str = "esb-test-access";
pub const SECRET_KEY: &str = "esb-test-secret/with+odd=chars";

/// A server running on its own runtime thread; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn config(data_dir: &Path) -> esb_s3::Config {
    esb_s3::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        region: esb_s3::DEFAULT_REGION.into(),
        iam_file: None,
        allow_sigv2: false,
    }
}

/// Runs a server for `cfg` on a new two-thread runtime until `shutdown` completes;
/// `bound` gets the server's address once it listens.
pub fn run_server(
    cfg: esb_s3::Config,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = esb_s3::Server::bind(cfg).await.expect("bind S3 server");
        bound(server.local_addr());
        server.run(shutdown).await.expect("S3 server run");
    });
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_in(tempfile::tempdir().expect("tempdir"))
    }

    /// Stops the server and starts a new one on the same data directory.
    pub fn restart(mut self) -> TestServer {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir)
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn start_in(dir: tempfile::TempDir) -> TestServer {
        let cfg = config(dir.path());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            run_server(cfg, |addr| addr_tx.send(addr).unwrap(), async move {
                let _ = stop_rx.await;
            })
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("server did not start");
        TestServer {
            addr,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A command with the environment the client scripts expect.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        client_command(program, &self.endpoint(), self.dir.path())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn client_command(
    program: impl AsRef<std::ffi::OsStr>,
    endpoint: &str,
    data_dir: &Path,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("ESB_S3_ENDPOINT", endpoint)
        .env("ESB_S3_ACCESS_KEY", ACCESS_KEY)
        .env("ESB_S3_SECRET_KEY", SECRET_KEY)
        .env("ESB_S3_REGION", esb_s3::DEFAULT_REGION)
        .env("ESB_S3_DATA_DIR", data_dir)
        .env("AWS", esb_testkit::venv_bin("aws"))
        .env("PYTHON", esb_testkit::python())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(py_dir());
    cmd
}

pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

pub fn sh_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sh")
}

/// Runs a command to completion and fails the test with its output unless it succeeds.
pub fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {what} stdout ---\n{stdout}\n--- {what} stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "{what} failed with {}:\n{stdout}\n{stderr}",
        out.status
    );
}

/// Runs part of the boto3 suite (`-k` expression) against a fresh server.
pub fn pytest(server: &TestServer, file: &str, select: Option<&str>) {
    let mut cmd = server.command(esb_testkit::python());
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", file]);
    if let Some(k) = select {
        cmd.args(["-k", k]);
    }
    run_ok(cmd, &format!("pytest {file} {}", select.unwrap_or("")));
}
