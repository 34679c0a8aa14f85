//! Crash loops of the data services, as the box runs them (`esb s3`, `esb dynamodb`,
//! `esb logstore`, each a process of its own on a loopback port): 20 rounds of SIGKILL
//! under write load from real clients (boto3, HTTP), each followed by a restart on the same
//! data; then every acknowledged write must be readable, whole (tests/crash/crash_load.py
//! writes and verifies). Then S3 without its index: refused with nothing touched, and
//! everything readable again once the index is back.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;
const ACCESS_KEY: &str = "AKIDCRASHLOOP";
const SECRET_KEY: &str = "crash-loop-secret";

/// A process started by the test, killed by its PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port below the ephemeral range (no outgoing connection can take it
/// while the service restarts).
fn free_addr() -> SocketAddr {
    use std::hash::{BuildHasher, Hasher};
    let mut n = 0u32;
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u32(n);
        n += 1;
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

fn service(state: &Path, kind: &str, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb"));
    cmd.arg(format!("--state-dir={}", state.display()))
        .arg(kind)
        .arg(format!("--listen={addr}"))
        .env("ESB_ACCESS_KEY_ID", ACCESS_KEY)
        .env("ESB_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("ESB_LOG", "warn")
        // Small log segments: kills also land on seals.
        .env("ESB_LOGSTORE_SEGMENT_MB", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the service and waits until it accepts connections.
fn start(state: &Path, kind: &str, addr: SocketAddr) -> Proc {
    let mut p = Proc(
        service(state, kind, addr)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start esb"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        if let Some(st) = p.0.try_wait().unwrap() {
            panic!("esb {kind} exited: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "esb {kind} did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crash/crash_load.py")
}

fn load(args: &[&str]) -> Command {
    let mut cmd = Command::new(esb_testkit::python());
    cmd.arg(script())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_PROFILE");
    cmd
}

fn acks(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits until at least `more` writes were acknowledged after `since`.
fn wait_acks(path: &Path, since: usize, more: usize, writer: &mut Proc) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = acks(path);
        if n >= since + more {
            return n;
        }
        if let Some(st) = writer.0.try_wait().unwrap() {
            panic!("the writer exited: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "no write acknowledged ({n} so far, waiting for {})",
            since + more
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(kind: &str, endpoint: &str, acks: &Path) -> String {
    let out = load(&["verify", kind, endpoint, acks.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{kind}: acknowledged writes lost or damaged: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `ROUNDS` kills under load, then checks every acknowledged write. Returns the state
/// directory, the address and the acknowledgement file (for more checks).
fn crash_loop(kind: &str) -> (tempfile::TempDir, SocketAddr, PathBuf) {
    let state = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let endpoint = format!("http://{addr}");
    let acks_file = state.path().join("acks");
    let stop = state.path().join("stop");
    let mut svc = start(state.path(), kind, addr);
    let mut writer = Proc(
        load(&[
            "write",
            kind,
            &endpoint,
            acks_file.to_str().unwrap(),
            stop.to_str().unwrap(),
        ])
        .spawn()
        .unwrap(),
    );
    let mut seen = wait_acks(&acks_file, 0, 20, &mut writer);
    for round in 0..ROUNDS {
        // Writes are flowing: kill -9 in the middle of them.
        seen = wait_acks(&acks_file, seen, 10 + round, &mut writer);
        svc.0.kill().unwrap();
        svc.0.wait().unwrap();
        svc = start(state.path(), kind, addr);
    }
    wait_acks(&acks_file, seen, 20, &mut writer);
    std::fs::write(&stop, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while writer.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the writer did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary = verify(kind, &endpoint, &acks_file);
    eprintln!("{kind}: {ROUNDS} kills, {summary}");
    drop(svc);
    (state, addr, acks_file)
}

#[test]
fn dynamodb_keeps_every_acknowledged_write_through_20_kills() {
    crash_loop("dynamodb");
}

#[test]
fn logstore_keeps_every_acknowledged_record_through_20_kills() {
    crash_loop("logstore");
}

/// Every file under `dir` with its size and a hash of its content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let mut h = std::hash::DefaultHasher::new();
                bytes.hash(&mut h);
                out.push((p, bytes.len() as u64, h.finish()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn s3_keeps_every_acknowledged_write_through_20_kills_and_never_deletes_without_its_index() {
    let (state, addr, acks_file) = crash_loop("s3");
    let data = state.path().join("s3");
    let index = data.join("index.redb");
    let before = snapshot(&data);
    assert!(
        before
            .iter()
            .filter(|(p, ..)| p.starts_with(data.join("data")))
            .count()
            > 10,
        "the load wrote data files"
    );
    // The index goes missing: the server refuses to start, naming it, and touches nothing.
    let aside = state.path().join("index.redb.aside");
    std::fs::rename(&index, &aside).unwrap();
    let out = service(state.path(), "s3", addr).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its index: {stderr}");
    assert!(
        stderr.contains("index.redb") && stderr.contains("refusing to start"),
        "{stderr}"
    );
    let without: Vec<_> = before
        .iter()
        .filter(|(p, ..)| *p != index)
        .cloned()
        .collect();
    assert_eq!(snapshot(&data), without, "the store was changed");
    // Back in place: every acknowledged object is readable again.
    std::fs::rename(&aside, &index).unwrap();
    let _svc = start(state.path(), "s3", addr);
    verify("s3", &format!("http://{addr}"), &acks_file);
}
