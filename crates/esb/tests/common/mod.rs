//! Helpers shared by the CLI's integration tests: a node under test with its own namespace
//! and state directory (torn down on drop, also on failure), tagged echo backends on
//! 127.0.0.0/8, and connections made from inside a namespace.
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use esb_netns::NetNs;
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A backend on `ip:0` that greets each connection with `name\n`, then echoes.
pub fn tagged_echo(ip: Ipv4Addr, port: u16, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, port)).expect("bind backend");
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(format!("{name}\n").as_bytes());
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// One node under test.
pub struct TestNode {
    pub state: tempfile::TempDir,
    pub netns: String,
    pub env: Vec<(String, String)>,
    pub workers: Vec<String>,
}

impl TestNode {
    pub fn new() -> TestNode {
        esb_testkit::require_root();
        TestNode {
            state: tempfile::tempdir().unwrap(),
            netns: unique("esbt-n"),
            env: Vec::new(),
            workers: Vec::new(),
        }
    }

    pub fn hosts(&self) -> PathBuf {
        self.state.path().join("hosts")
    }

    pub fn esb(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb"));
        cmd.arg(format!("--state-dir={}", self.state.path().display()))
            .args(args)
            .env("ESB_NODE_NETNS", &self.netns)
            .env("ESB_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run esb")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.esb(args);
        assert!(
            out.status.success(),
            "esb {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["node", "status", "--json"])).unwrap()
    }

    pub fn attach(&mut self) -> Value {
        let name = unique("esbt-w");
        self.workers.push(name.clone());
        serde_json::from_str(&self.ok(&["node", "attach", &name, "--json"])).unwrap()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.esb(&["node", "down"]);
        for ns in self.workers.iter().chain([&self.netns]) {
            let _ = NetNs::delete(ns);
        }
    }
}

/// Connects to `addr` from inside the namespace `ns`.
pub fn connect_in(ns: &str, addr: SocketAddr) -> TcpStream {
    NetNs::open(ns)
        .unwrap()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect {addr} from {ns}: {e}"))
}

pub fn write_hosts(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
