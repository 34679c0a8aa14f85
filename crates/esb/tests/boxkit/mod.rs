//! A whole box under test: `esb up` with its own state directory, node namespace and
//! loopback ports, torn down (`esb down`, then by hand) when dropped, also on failure; and
//! checks that nothing it made is left behind.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Function `name` in `esb status --json` (Null when absent).
pub fn function(status: &Value, name: &str) -> Value {
    status["functions"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Ids of `name`'s workers in `state`.
pub fn workers(status: &Value, name: &str, state: &str) -> Vec<String> {
    function(status, name)["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == state)
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect()
}

/// A free loopback port below the kernel's ephemeral range (32768 and up), so that no
/// other test's bind to port 0, and no outgoing connection, can take it between now and
/// the box's start; picked at random, checked free.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf()
}

/// A free UDP port below the ephemeral range (for each box's WireGuard).
pub fn free_udp_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// The static supervisor for images (built once per target dir).
pub fn static_supervisor() -> PathBuf {
    esb_supervisor::build_static(&workspace(), &target_dir().join("esb-supervisor-static"))
        .expect("build the static esb-supervisor")
}

/// The example app's Rust function: the workspace build's binary when there is one (a
/// `--workspace` build makes it), else built now in a target directory of its own.
pub fn greeter_bootstrap() -> PathBuf {
    let sibling = Path::new(env!("CARGO_BIN_EXE_esb")).with_file_name("esb-example-greeter");
    if sibling.is_file() {
        return sibling;
    }
    let target = target_dir().join("esb-examples");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "-p", "esb-example-greeter"])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p esb-example-greeter failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/esb-example-greeter")
}

/// Copies a directory tree (skipping build output).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if matches!(
            name.to_str(),
            Some(".esb" | "__pycache__" | "target" | "dist")
        ) {
            continue;
        }
        let dst = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// The repository's directory of the end-to-end fixture app.
pub fn e2e_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// A box serving the end-to-end fixture app, with the settings test_box.py expects
/// (crates/esb/tests/e2e/README.md).
pub fn e2e_box() -> TestBox {
    let mut b = TestBox::new(&e2e_app());
    for (k, v) in [
        ("CIRCUIT_BREAKER_THRESHOLD", "3"),
        ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "30"),
        ("GATEWAY_IDLE_TIMEOUT_SECONDS", "3"),
        ("HEARTBEAT_INTERVAL", "1"),
        ("POOL_ACQUIRE_TIMEOUT", "30"),
    ] {
        b.set(k, v);
    }
    b
}

/// One box.
pub struct TestBox {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub app: PathBuf,
    pub netns: String,
    /// The box's control namespace (10.99.0.1 and the registry relay).
    pub control_netns: String,
    pub env: Vec<(String, String)>,
    pub gateway_port: u16,
    pub registry_port: u16,
    /// A host namespace the box runs in (multi-host tests), else the test's own.
    pub host_netns: Option<String>,
    pub s3_port: u16,
    pub ddb_port: u16,
    pub logs_port: u16,
}

impl TestBox {
    /// A box serving a copy of `app` (not started).
    pub fn new(app: &Path) -> TestBox {
        esb_testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("app");
        copy_tree(app, &copy);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let netns = format!("esbt-b{}-{n}", std::process::id());
        let control_netns = format!("esbt-c{}-{n}", std::process::id());
        let (gateway_port, s3_port, ddb_port, logs_port, registry_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let env = vec![
            ("ESB_NODE_NETNS".to_string(), netns.clone()),
            ("ESB_CONTROL_NETNS".to_string(), control_netns.clone()),
            ("ESB_WG_PORT".to_string(), free_udp_port().to_string()),
            (
                "ESB_REGISTRY_LISTEN".into(),
                format!("127.0.0.1:{registry_port}"),
            ),
            (
                "ESB_GATEWAY_LISTEN".into(),
                format!("127.0.0.1:{gateway_port}"),
            ),
            ("ESB_S3_LISTEN".into(), format!("127.0.0.1:{s3_port}")),
            (
                "ESB_DYNAMODB_LISTEN".into(),
                format!("127.0.0.1:{ddb_port}"),
            ),
            (
                "ESB_LOGSTORE_LISTEN".into(),
                format!("127.0.0.1:{logs_port}"),
            ),
            (
                "ESB_LOGSTORE_WORKER_LISTEN".into(),
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "ESB_SUPERVISOR_BIN".into(),
                static_supervisor().display().to_string(),
            ),
            ("ESB_LOG".into(), "info".into()),
            ("ESB_DRAIN_SECONDS".into(), "10".into()),
        ];
        TestBox {
            state: dir.path().join("state"),
            app: copy,
            dir,
            netns,
            control_netns,
            env,
            gateway_port,
            registry_port,
            host_netns: None,
            s3_port,
            ddb_port,
            logs_port,
        }
    }

    /// Adds a setting for every `esb` call.
    pub fn set(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    /// A command run in the box's host namespace (the test's own unless set).
    pub fn in_host(&self, program: &str) -> Command {
        match &self.host_netns {
            Some(h) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{h}"))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Runs `esb ARGS` against this box (in the app directory).
    pub fn esb(&self, args: &[&str]) -> Output {
        let mut cmd = self.in_host(env!("CARGO_BIN_EXE_esb"));
        cmd.current_dir(&self.app)
            .arg(format!("--state-dir={}", self.state.display()))
            .args(args)
            .env_remove("ESB_STATE_DIR");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run esb")
    }

    /// `esb ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.esb(args);
        assert!(
            out.status.success(),
            "esb {args:?} failed:\n{}{}\nbox log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail("box", 40)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The last lines of a component's log.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.state.join(format!("logs/{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The last `n` lines of component `name`'s log that are not access records.
    pub fn log_events(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.state.join(format!("logs/{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("\"_msg\":\"request\""))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `esb invoke FUNCTION --payload P`: whether it succeeded, the JSON it printed (or
    /// Null), and all its output.
    pub fn invoke(&self, function: &str, payload: &str) -> (bool, Value, String) {
        let out = self.esb(&["invoke", function, "--payload", payload]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json = text
            .find('{')
            .zip(text.rfind('}'))
            .and_then(|(a, z)| serde_json::from_str(&text[a..=z]).ok())
            .unwrap_or(Value::Null);
        (out.status.success(), json, text)
    }

    /// `esb up`.
    pub fn up(&self) -> String {
        self.ok(&["up"])
    }

    /// `esb status --json`.
    pub fn status(&self) -> Value {
        let out = self.esb(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The generated secrets.
    pub fn secrets(&self) -> toml_lite::Map {
        toml_lite::parse(&std::fs::read_to_string(self.state.join("secrets.toml")).unwrap())
    }

    /// PIDs of every process the box recorded (box and components).
    pub fn recorded_pids(&self) -> Vec<i32> {
        let mut files = vec![self.state.join("containerd/containerd.pid")];
        if let Ok(rd) = std::fs::read_dir(self.state.join("run")) {
            files.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pid")),
            );
        }
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|t| t.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The environment `test_box.py` and `load.py` read.
    pub fn python_env(&self) -> Vec<(String, String)> {
        let s = self.secrets();
        let get = |k: &str| s.get(k).cloned().unwrap_or_default();
        vec![
            (
                "E2E_URL".into(),
                format!("https://localhost:{}", self.gateway_port),
            ),
            (
                "E2E_CA".into(),
                self.state.join("tls/ca.pem").display().to_string(),
            ),
            ("E2E_API_KEY".into(), get("X_API_KEY")),
            ("E2E_USER".into(), get("AUTH_USER")),
            ("E2E_PASS".into(), get("AUTH_PASS")),
            ("AWS_ACCESS_KEY_ID".into(), get("ESB_ACCESS_KEY_ID")),
            ("AWS_SECRET_ACCESS_KEY".into(), get("ESB_SECRET_ACCESS_KEY")),
            ("AWS_REGION".into(), "ap-northeast-1".into()),
            ("AWS_DEFAULT_REGION".into(), "ap-northeast-1".into()),
            (
                "E2E_S3".into(),
                format!("http://127.0.0.1:{}", self.s3_port),
            ),
            (
                "E2E_DDB".into(),
                format!("http://127.0.0.1:{}", self.ddb_port),
            ),
            (
                "E2E_LOGS".into(),
                format!("http://127.0.0.1:{}", self.logs_port),
            ),
            ("E2E_ESB".into(), env!("CARGO_BIN_EXE_esb").into()),
            ("E2E_STATE".into(), self.state.display().to_string()),
        ]
    }

    /// A Python command from the test venv, with the box's environment.
    pub fn python(&self, args: &[&str]) -> Command {
        let mut c = self.in_host(&esb_testkit::python().display().to_string());
        c.args(args).current_dir(e2e_app());
        for (k, v) in self.python_env() {
            c.env(k, v);
        }
        c.env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("AWS_CA_BUNDLE");
        c
    }

    /// Runs a pytest file of crates/esb/tests/e2e against this box; it must pass.
    pub fn pytest(&self, file: &str) {
        let out = self
            .python(&["-m", "pytest", "-v", "-p", "no:cacheprovider", file])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(
            out.status.success(),
            "{file} failed:\n{text}\nstatus: {}\ngateway log (all but access records, last 150):\n{}",
            String::from_utf8_lossy(&self.esb(&["status", "--json"]).stdout),
            self.log_events("gateway", 150)
        );
    }

    /// `load.py` against this box's gateway: `path` for `seconds` from `concurrency`
    /// threads, authenticated with `token` (crates/esb/tests/e2e/load.py).
    pub fn load(&self, token: &str, path: &str, seconds: u32, concurrency: u32) -> Command {
        let (secs, conc) = (seconds.to_string(), concurrency.to_string());
        self.python(&[
            "load.py",
            "--url",
            &self.url(""),
            "--ca",
            &self.state.join("tls/ca.pem").display().to_string(),
            "--token",
            token,
            "--path",
            path,
            "--seconds",
            &secs,
            "--concurrency",
            &conc,
        ])
    }

    /// An IdToken from the auth endpoint (curl).
    pub fn token(&self) -> String {
        let s = self.secrets();
        let out = self
            .in_host("curl")
            .args([
                "-sS",
                "--cacert",
                &self.state.join("tls/ca.pem").display().to_string(),
                "-X",
                "POST",
                "-H",
                &format!("x-api-key: {}", s["X_API_KEY"]),
                "-d",
                &format!(
                    r#"{{"AuthParameters":{{"USERNAME":"{}","PASSWORD":"{}"}}}}"#,
                    s["AUTH_USER"], s["AUTH_PASS"]
                ),
                &format!("https://localhost:{}/user/auth/ver1.0", self.gateway_port),
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["AuthenticationResult"]["IdToken"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {}", String::from_utf8_lossy(&out.stdout)))
            .to_string()
    }

    /// `curl` a route of the gateway; (status, body).
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = self
            .in_host("curl")
            .args([
                "-sS",
                "--max-time",
                "120",
                "--cacert",
                &self.state.join("tls/ca.pem").display().to_string(),
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The gateway base URL.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.gateway_port)
    }

    /// Waits (bounded) until `f` holds.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; box log:\n{}",
                self.log_tail("box", 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What of this box is still on the machine (empty = nothing).
    pub fn leftovers(&self, pids: &[i32]) -> Vec<String> {
        let mut left = Vec::new();
        for pid in pids {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if !stat.contains(") Z ") {
                    left.push(format!("process {pid}"));
                }
            }
        }
        for ns in [&self.netns, &self.control_netns] {
            if Path::new("/run/netns").join(ns).exists() {
                left.push(format!("namespace {ns}"));
            }
        }
        let state = self.state.display().to_string();
        for line in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if line.contains(&state) || line.contains(&format!("/run/netns/{}", self.netns)) {
                left.push(format!("mount {line}"));
            }
        }
        // Processes whose command line names this box's state directory (containerd,
        // its shims, any esb component).
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&state) {
                    left.push(format!("process {pid}: {cmd}"));
                }
            }
        }
        // Host-side veths of workers are inside the node namespace (gone with it); the
        // host namespace must hold no link of ours.
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        for l in String::from_utf8_lossy(&links.stdout).lines() {
            if l.contains(&self.netns) {
                left.push(format!("link {l}"));
            }
        }
        left
    }

    /// A command run inside the box's control namespace (where 10.99.0.1 lives).
    pub fn in_control(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.control_netns))
            .arg("--")
            .arg(program);
        c
    }

    /// `esb down`, then the leftovers check.
    pub fn down_clean(&self) {
        let pids = self.recorded_pids();
        self.ok(&["down"]);
        let left = self.leftovers(&pids);
        assert!(left.is_empty(), "esb down left: {left:#?}");
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("box log:\n{}", self.log_tail("box", 60));
            eprintln!("gateway log:\n{}", self.log_tail("gateway", 30));
        }
        let _ = self.esb(&["down"]);
        let _ = esb_netns::NetNs::delete(&self.netns);
        let _ = esb_netns::NetNs::delete(&self.control_netns);
    }
}

/// Reads the flat `KEY = "value"` lines of secrets.toml (no TOML parser in the tests).
pub mod toml_lite {
    /// Key -> value.
    pub type Map = std::collections::BTreeMap<String, String>;
    /// Parses `KEY = "value"` lines.
    pub fn parse(text: &str) -> Map {
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(" = ")?;
                Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            })
            .collect()
    }
}
