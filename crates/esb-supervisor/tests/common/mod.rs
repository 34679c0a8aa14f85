//! Shared helpers for the supervisor's integration tests: start the real binary with a
//! real runtime client, a tiny blocking HTTP client, and a log endpoint that records what
//! VictoriaLogs would receive.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

/// A running `esb-supervisor` process.
pub struct Sup {
    child: Child,
    pub addr: SocketAddr,
    pub api: SocketAddr,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// One message per output pipe at its end of file.
    eof: mpsc::Receiver<()>,
    release_stdout: mpsc::Sender<()>,
    _task_root: Option<tempfile::TempDir>,
}

/// How to start one.
pub struct SupBuilder {
    env: Vec<(String, String)>,
    task_root: Option<tempfile::TempDir>,
    wrapper: Vec<String>,
    args: Vec<String>,
    hold_stdout: bool,
}

impl SupBuilder {
    /// A Python function run by awslambdaric from the venv, handler `module.function`.
    pub fn python(handler: &str) -> SupBuilder {
        let python = esb_testkit::python();
        SupBuilder::with_env(
            vec![
                ("ESB_RUNTIME".into(), "python3.11".into()),
                ("_HANDLER".into(), handler.into()),
                ("ESB_PYTHON".into(), python.to_string_lossy().into_owned()),
                (
                    "LAMBDA_TASK_ROOT".into(),
                    esb_test_functions::python_dir()
                        .to_string_lossy()
                        .into_owned(),
                ),
            ],
            None,
        )
    }

    /// A custom runtime whose `bootstrap` is in `task_root`.
    pub fn provided(task_root: &Path) -> SupBuilder {
        SupBuilder::with_env(
            vec![
                ("ESB_RUNTIME".into(), "provided.al2023".into()),
                ("_HANDLER".into(), "function.handler".into()),
                (
                    "LAMBDA_TASK_ROOT".into(),
                    task_root.to_string_lossy().into_owned(),
                ),
            ],
            None,
        )
    }

    /// A Node.js function in `task_root` run by esb's runtime client (the repository's
    /// `crates/esb-image/runtimes/nodejs/ric.mjs`) with this machine's `node`.
    pub fn node(task_root: &Path, handler: &str) -> SupBuilder {
        let ric = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../esb-image/runtimes/nodejs/ric.mjs")
            .canonicalize()
            .expect("ric.mjs");
        SupBuilder::with_env(
            vec![
                ("ESB_RUNTIME".into(), "nodejs20.x".into()),
                ("_HANDLER".into(), handler.into()),
                ("ESB_NODE_RIC".into(), ric.to_string_lossy().into_owned()),
                (
                    "LAMBDA_TASK_ROOT".into(),
                    task_root.to_string_lossy().into_owned(),
                ),
            ],
            None,
        )
    }

    /// The Rust lambda_runtime function as a custom runtime: `$LAMBDA_TASK_ROOT/bootstrap`.
    pub fn rust() -> SupBuilder {
        let bin = esb_test_functions::rust_function();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&bin, dir.path().join("bootstrap")).unwrap();
        SupBuilder::with_env(
            vec![
                ("ESB_RUNTIME".into(), "provided.al2023".into()),
                ("_HANDLER".into(), "bootstrap".into()),
                (
                    "LAMBDA_TASK_ROOT".into(),
                    dir.path().to_string_lossy().into_owned(),
                ),
            ],
            Some(dir),
        )
    }

    /// A builder with `env` (and the task root directory to keep alive), plus the
    /// settings every test shares.
    fn with_env(env: Vec<(String, String)>, task_root: Option<tempfile::TempDir>) -> SupBuilder {
        SupBuilder {
            env,
            task_root,
            wrapper: Vec::new(),
            args: Vec::new(),
            hold_stdout: false,
        }
        .common()
    }

    fn common(self) -> SupBuilder {
        self.env("ESB_SUPERVISOR_LISTEN", "127.0.0.1:0")
            .env("ESB_RUNTIME_API_LISTEN", "127.0.0.1:0")
            .env("AWS_LAMBDA_FUNCTION_NAME", "test-fn")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_REGION", "ap-northeast-1")
            .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "30")
    }

    pub fn env(mut self, k: &str, v: &str) -> SupBuilder {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs the supervisor under a wrapper command (e.g. `unshare --pid --fork`).
    pub fn wrap(mut self, wrapper: &[&str]) -> SupBuilder {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Command-line arguments for the supervisor (a runtime command after `--`).
    pub fn args(mut self, args: &[&str]) -> SupBuilder {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Leaves the supervisor's stdout unread (a stuck log collector) until it exits.
    pub fn hold_stdout(mut self) -> SupBuilder {
        self.hold_stdout = true;
        self
    }

    /// Starts the supervisor and waits until both endpoints listen.
    pub fn spawn(self) -> Sup {
        let bin = env!("CARGO_BIN_EXE_esb-supervisor");
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(bin),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
        };
        cmd.args(&self.args)
            .env_remove("VICTORIALOGS_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start esb-supervisor");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (eof_tx, eof) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        let eof_out = eof_tx.clone();
        let (release, released) = mpsc::channel::<()>();
        if !self.hold_stdout {
            let _ = release.send(());
        }
        thread::spawn(move || {
            let _ = released.recv();
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
            let _ = eof_out.send(());
        });
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[supervisor] {l}");
                if let Some(rest) = l.strip_prefix("esb-supervisor: listening ") {
                    let mut it = rest.split_whitespace();
                    let invoke = it.next().unwrap().trim_start_matches("invoke=").to_string();
                    let api = it
                        .next()
                        .unwrap()
                        .trim_start_matches("runtime-api=")
                        .to_string();
                    let _ = tx.send((invoke.parse().unwrap(), api.parse().unwrap()));
                }
                lines.lock().unwrap().push(l);
            }
            let _ = eof_tx.send(());
        });
        let (addr, api) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("esb-supervisor did not start: {:?}", stderr.lock().unwrap());
            }
        };
        Sup {
            child,
            addr,
            api,
            stdout,
            stderr,
            eof,
            release_stdout: release,
            _task_root: self.task_root,
        }
    }

    /// Starts it and waits until the runtime finished its init.
    pub fn start(self) -> Sup {
        let sup = self.spawn();
        sup.wait_status("ready");
        sup
    }
}

impl Sup {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Host pids of the children of process `pid`.
    pub fn children_of(pid: i32) -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Polls `GET /health` until it reports `want` (generous deadline).
    pub fn wait_status(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(r) = try_request(self.addr, "GET", "/health", &[], b"") {
                last = r.text();
                if r.json()["status"] == want {
                    return;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("supervisor never became {want}; last health: {last}");
    }

    /// Invokes the function synchronously with a JSON event.
    pub fn invoke(&self, event: &serde_json::Value) -> Resp {
        self.invoke_raw(&[], event.to_string().as_bytes())
    }

    pub fn invoke_raw(&self, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.addr, "POST", INVOKE_PATH, headers, body)
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for the process to exit and for its output to be read to the end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                let _ = self.release_stdout.send(());
                for _ in 0..2 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.eof
                        .recv_timeout(left.max(Duration::from_secs(1)))
                        .expect("the supervisor's output never ended");
                }
                return st.code();
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("supervisor did not exit within {limit:?}");
    }

    /// Waits until a stdout line satisfies `f` (generous deadline); returns it.
    pub fn wait_stdout(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(l) = self.stdout.lock().unwrap().iter().find(|l| f(l)) {
                return l.clone();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no stdout line {what}; stdout: {:?}",
            self.stdout.lock().unwrap()
        );
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), bounded in time.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr} failed: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // The server may refuse before reading a large body: ignore write errors then.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.truncate(n);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Requests received by a [`LogEndpoint`]: request target and body.
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in for VictoriaLogs: records every `/insert/jsonline` request.
pub struct LogEndpoint {
    pub url: String,
    pub requests: Received,
}

impl LogEndpoint {
    pub fn start() -> LogEndpoint {
        LogEndpoint::start_failing(0)
    }

    /// An endpoint that answers the first `failures` requests with 503 (not recorded).
    pub fn start_failing(failures: usize) -> LogEndpoint {
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(failures));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Received = Arc::default();
        let rec = requests.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let rec = rec.clone();
                let failures = failures.clone();
                thread::spawn(move || serve_log_conn(conn, rec, failures));
            }
        });
        LogEndpoint { url, requests }
    }

    /// Every record received so far, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, body)| {
                String::from_utf8_lossy(body)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).expect("a JSON line"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn serve_log_conn(conn: TcpStream, rec: Received, failures: Arc<std::sync::atomic::AtomicUsize>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        use std::sync::atomic::Ordering;
        let fail = failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let answer: &[u8] = if fail {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        } else {
            rec.lock().unwrap().push((target, body));
            b"HTTP/1.1 204 No Content\r\n\r\n"
        };
        if conn.write_all(answer).is_err() {
            return;
        }
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

/// Waits (bounded) until every pid is gone.
pub fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if pids.iter().all(|p| process_gone(*p)) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let alive: Vec<_> = pids.iter().filter(|p| !process_gone(**p)).collect();
    panic!("processes still alive: {alive:?}");
}

/// Reads "<pid> <pid>" written by a spawn_and_sleep handler (waits for the file).
pub fn read_pids(path: &Path) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            let pids: Vec<i32> = s
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() == 2 {
                return pids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The workspace's target directory (from this test's executable path).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}
