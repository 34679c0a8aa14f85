//! Test scaffolding for the gateway's integration tests.
//!
//! `ProcessAgent` implements the agent's gRPC API (`esb.agent.v1.AgentService`) by
//! spawning real `esb-supervisor` processes on 127.0.0.1 that run real functions (Python
//! under awslambdaric, Rust on lambda_runtime). It stands in for the real agent
//! (containerd + CNI) so that the gateway's own behaviour can be tested on loopback only;
//! it is test code, not a product part. The gateway and the clients (boto3, a hyper
//! HTTPS client) are real.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esb_agent_api::v1::agent_service_server::{AgentService, AgentServiceServer};
use esb_agent_api::v1::*;
use esb_gateway::{AgentAddr, Config, FunctionSpec, Server};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tonic::{Request, Response, Status};

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const API_KEY: &str = "test-api-key";
pub const USER: &str = "alice";
pub const PASS: &str = "wonderland";
pub const ACCESS_KEY: &str = "ESBTESTACCESSKEY";
pub const SECRET_KEY: &str = "esb-test-secret-key";

/// Path of the `esb-supervisor` binary, built into the same target directory when missing.
pub fn supervisor_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let mut dir = exe.parent().unwrap().to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = dir.join("esb-supervisor");
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let target = dir.parent().unwrap().to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "esb-supervisor", "--bin", "esb-supervisor"])
            .arg("--target-dir")
            .arg(&target);
        if profile == "release" {
            cmd.arg("--release");
        } else if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        let out = cmd.output().expect("run cargo to build esb-supervisor");
        assert!(
            out.status.success(),
            "building esb-supervisor failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.is_file(), "no {}", bin.display());
        bin
    })
    .clone()
}

pub fn functions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions")
}

struct Proc {
    child: Child,
    function: String,
    created_at: i64,
    port: u16,
    _task_root: Option<tempfile::TempDir>,
    /// Stopped (SIGSTOP) by PauseContainer.
    paused: bool,
}

/// The processes whose parent is `pid` (the supervisor's runtime).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the command (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

/// Stops (`SIGSTOP`) or continues (`SIGCONT`) a worker: its supervisor and runtime.
fn signal_worker(pid: u32, sig: i32) {
    let mut pids = vec![pid as i32];
    pids.extend(children_of(pid));
    for p in pids {
        // SAFETY: kill(2) on processes this test agent started (and their children).
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// Whether a process is stopped (state `T` in `/proc/PID/stat`).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|c| c == "T"))
        })
        .unwrap_or(false)
}

/// A worker process goes with its record, also when a test fails before `kill_all`.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent that runs each worker as a local `esb-supervisor` process (test scaffolding).
#[derive(Clone)]
pub struct ProcessAgent {
    procs: Arc<Mutex<HashMap<String, Proc>>>,
    /// Extra environment for every worker (endpoints, credentials, CA).
    pub env: Arc<Mutex<Vec<(String, String)>>>,
    /// Total EnsureContainer calls.
    pub created: Arc<Mutex<usize>>,
    next: Arc<Mutex<u64>>,
    /// PauseContainer and ResumeContainer calls that stopped / continued a worker.
    pub pauses: Arc<Mutex<usize>>,
    pub resumes: Arc<Mutex<usize>>,
    /// How long PauseContainer waits before it stops the worker (to observe the race of
    /// a pause with requests).
    pub pause_delay: Arc<Mutex<Duration>>,
    /// ResumeContainer fails (as for a worker that could not be thawed).
    pub fail_resume: Arc<Mutex<bool>>,
}

impl ProcessAgent {
    pub fn new() -> ProcessAgent {
        ProcessAgent {
            procs: Arc::default(),
            env: Arc::default(),
            created: Arc::default(),
            next: Arc::default(),
            pauses: Arc::default(),
            resumes: Arc::default(),
            pause_delay: Arc::default(),
            fail_resume: Arc::default(),
        }
    }

    /// Serves the gRPC API on 127.0.0.1; returns its address.
    pub async fn serve(&self) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        self.serve_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Serves the gRPC API on `addr` (loopback).
    pub async fn serve_on(
        &self,
        addr: SocketAddr,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = AgentServiceServer::new(self.clone());
        tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let (stream, _) = tokio::select! {
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .http2_only()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        (addr, tx)
    }

    /// Running workers (ids).
    pub fn running(&self) -> Vec<String> {
        let mut p = self.procs.lock().unwrap();
        p.retain(|_, pr| pr.child.try_wait().ok().flatten().is_none());
        p.keys().cloned().collect()
    }

    /// Running workers of one function.
    pub fn running_of(&self, function: &str) -> usize {
        self.running();
        self.procs
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.function == function)
            .count()
    }

    /// The supervisor PID of a worker.
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.procs.lock().unwrap().get(id).map(|p| p.child.id())
    }

    /// Ids of the workers stopped by PauseContainer.
    pub fn paused(&self) -> Vec<String> {
        let procs = self.procs.lock().unwrap();
        procs
            .iter()
            .filter(|(_, p)| p.paused)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// SIGKILLs one worker's supervisor (its runtime goes with it) and reaps it, leaving
    /// the record: a worker that crashed or met the OOM killer. False if unknown.
    pub fn kill(&self, id: &str) -> bool {
        let mut procs = self.procs.lock().unwrap();
        let Some(p) = procs.get_mut(id) else {
            return false;
        };
        let _ = p.child.kill();
        let _ = p.child.wait();
        true
    }

    /// Kills every worker (test cleanup).
    pub fn kill_all(&self) {
        for (_, mut p) in self.procs.lock().unwrap().drain() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Starts a worker the gateway does not know about (an orphan).
    pub fn spawn_orphan(&self, function: &str, image: &str, created_at: i64) -> String {
        let id = self.start(function, image, &HashMap::new(), 30).unwrap().0;
        self.procs.lock().unwrap().get_mut(&id).unwrap().created_at = created_at;
        id
    }

    fn start(
        &self,
        function: &str,
        image: &str,
        fenv: &HashMap<String, String>,
        timeout: u32,
    ) -> Result<(String, u16), String> {
        let id = {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            format!("w{}-{}", std::process::id(), *n)
        };
        let mut cmd = Command::new(supervisor_bin());
        cmd.env_remove("VICTORIALOGS_URL")
            .env("ESB_SUPERVISOR_LISTEN", "127.0.0.1:0")
            .env("ESB_RUNTIME_API_LISTEN", "127.0.0.1:0")
            .env("AWS_LAMBDA_FUNCTION_NAME", function)
            .env("AWS_LAMBDA_FUNCTION_TIMEOUT", timeout.max(1).to_string())
            .env("AWS_REGION", "ap-northeast-1")
            .envs(self.env.lock().unwrap().iter().cloned())
            .envs(fenv.iter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut task_root = None;
        if let Some(handler) = image.strip_prefix("python:") {
            cmd.env("ESB_RUNTIME", "python3.11")
                .env("_HANDLER", handler)
                .env("ESB_PYTHON", esb_testkit::python())
                .env("LAMBDA_TASK_ROOT", functions_dir());
        } else if image == "rust" {
            let dir = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(
                esb_test_functions::rust_function(),
                dir.path().join("bootstrap"),
            )
            .unwrap();
            cmd.env("ESB_RUNTIME", "provided.al2023")
                .env("_HANDLER", "bootstrap")
                .env("LAMBDA_TASK_ROOT", dir.path());
            task_root = Some(dir);
        } else {
            return Err(format!("unknown test image {image:?}"));
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = l.strip_prefix("esb-supervisor: listening ") {
                    let invoke = rest.split_whitespace().next().unwrap_or("");
                    let addr: Option<SocketAddr> =
                        invoke.trim_start_matches("invoke=").parse().ok();
                    let _ = tx.send(addr);
                } else if std::env::var_os("ESB_TEST_VERBOSE").is_some() {
                    eprintln!("[worker] {l}");
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(a)) => a,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("esb-supervisor did not start".into());
            }
        };
        self.procs.lock().unwrap().insert(
            id.clone(),
            Proc {
                child,
                function: function.to_string(),
                created_at: now_secs(),
                port: addr.port(),
                _task_root: task_root,
                paused: false,
            },
        );
        Ok((id, addr.port()))
    }
}

impl Default for ProcessAgent {
    fn default() -> Self {
        ProcessAgent::new()
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tonic::async_trait]
impl AgentService for ProcessAgent {
    type WatchWorkersStream = tonic::codegen::BoxStream<WorkerEvent>;
    async fn watch_workers(
        &self,
        _: Request<WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchWorkersStream>, Status> {
        Err(Status::unimplemented(
            "the test agent reports exits through ListContainers only",
        ))
    }
    async fn ensure_container(
        &self,
        req: Request<EnsureContainerRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        let r = req.into_inner();
        *self.created.lock().unwrap() += 1;
        // A slow start on request (seconds), to observe workers being created.
        if let Some(d) = r.env.get("ESB_TEST_START_DELAY") {
            tokio::time::sleep(Duration::from_secs_f64(d.parse().unwrap())).await;
        }
        let me = self.clone();
        let (id, port) = tokio::task::spawn_blocking(move || {
            me.start(&r.function_name, &r.image, &r.env, r.timeout_seconds)
        })
        .await
        .unwrap()
        .map_err(Status::internal)?;
        Ok(Response::new(WorkerInfo {
            name: id.clone(),
            id,
            ip_address: "127.0.0.1".into(),
            port: port as i32,
            node_id: "test".into(),
        }))
    }

    async fn destroy_container(
        &self,
        req: Request<DestroyContainerRequest>,
    ) -> Result<Response<DestroyContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let p = self.procs.lock().unwrap().remove(&id);
        let success = p.is_some();
        if let Some(mut p) = p {
            tokio::task::spawn_blocking(move || {
                unsafe {
                    libc::kill(p.child.id() as i32, libc::SIGTERM);
                }
                // A stopped worker is continued to take its SIGTERM (the agent thaws a
                // paused task before it kills it).
                if p.paused {
                    signal_worker(p.child.id(), libc::SIGCONT);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if p.child.try_wait().ok().flatten().is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = p.child.kill();
                let _ = p.child.wait();
            })
            .await
            .unwrap();
        }
        Ok(Response::new(DestroyContainerResponse { success }))
    }

    async fn pause_container(
        &self,
        req: Request<PauseContainerRequest>,
    ) -> Result<Response<PauseContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        let delay = *self.pause_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let mut procs = self.procs.lock().unwrap();
        let Some(p) = procs.get_mut(&id) else {
            return Err(Status::not_found(id));
        };
        signal_worker(p.child.id(), libc::SIGSTOP);
        p.paused = true;
        *self.pauses.lock().unwrap() += 1;
        Ok(Response::new(PauseContainerResponse { success: true }))
    }

    async fn resume_container(
        &self,
        req: Request<ResumeContainerRequest>,
    ) -> Result<Response<ResumeContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        if *self.fail_resume.lock().unwrap() {
            return Err(Status::internal(format!(
                "resume {id}: refused by the test"
            )));
        }
        let mut procs = self.procs.lock().unwrap();
        let Some(p) = procs.get_mut(&id) else {
            return Err(Status::not_found(id));
        };
        signal_worker(p.child.id(), libc::SIGCONT);
        p.paused = false;
        *self.resumes.lock().unwrap() += 1;
        Ok(Response::new(ResumeContainerResponse { success: true }))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.running();
        let containers = self
            .procs
            .lock()
            .unwrap()
            .iter()
            .map(|(id, p)| ContainerState {
                container_id: id.clone(),
                function_name: p.function.clone(),
                status: if p.paused { "PAUSED" } else { "RUNNING" }.into(),
                last_used_at: p.created_at,
                container_name: id.clone(),
                created_at: p.created_at,
                ip_address: "127.0.0.1".into(),
                node_id: "test".into(),
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn get_container_metrics(
        &self,
        req: Request<GetContainerMetricsRequest>,
    ) -> Result<Response<GetContainerMetricsResponse>, Status> {
        let id = req.into_inner().container_id;
        let p = self.procs.lock().unwrap();
        let Some(p) = p.get(&id) else {
            return Err(Status::not_found(id));
        };
        Ok(Response::new(GetContainerMetricsResponse {
            metrics: Some(ContainerMetrics {
                container_id: id.clone(),
                function_name: p.function.clone(),
                container_name: id,
                state: if p.paused { "PAUSED" } else { "RUNNING" }.into(),
                collected_at: now_secs(),
                ..Default::default()
            }),
        }))
    }
}

/// A function spec for a test image (`python:module.handler` or `rust`).
pub fn spec(name: &str, image: &str) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        logical_id: format!("{name}Function"),
        image: image.into(),
        revision: String::new(),
        env: Vec::new(),
        timeout: Duration::from_secs(30),
        memory_mb: 128,
        reserved: None,
        provisioned: 0,
        events: Vec::new(),
    }
}

pub fn event(
    kind: esb_template::EventKind,
    method: &str,
    path: &str,
    open: bool,
) -> esb_template::Event {
    esb_template::Event {
        name: format!("{method}{path}"),
        kind,
        path: path.into(),
        method: method.into(),
        auth: open.then(|| esb_template::EventAuth {
            authorizer: Some("NONE".into()),
            ..Default::default()
        }),
        api: None,
    }
}

/// A gateway on loopback in front of a [`ProcessAgent`].
pub struct TestBox {
    pub agent: ProcessAgent,
    pub addr: SocketAddr,
    pub internal: SocketAddr,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent_stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub agent_addr: SocketAddr,
    /// Reloads the running gateway's functions.
    pub reloader: Option<esb_gateway::Reloader>,
}

pub fn base_config(dir: &Path, agent: SocketAddr) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        internal_listen: Some("127.0.0.1:0".parse().unwrap()),
        internal_netns: None,
        data_dir: dir.to_path_buf(),
        jwt_secret: JWT_SECRET.into(),
        api_key: API_KEY.into(),
        auth_user: USER.into(),
        auth_pass: PASS.into(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        agents: vec![AgentAddr {
            node_id: "test".into(),
            endpoint: format!("http://{agent}"),
            netns: None,
            max_workers: 0,
            ..Default::default()
        }],
        event_retry_delay: Duration::from_millis(200),
        log_stderr: std::env::var_os("ESB_TEST_VERBOSE").is_some(),
        ..Config::default()
    }
}

impl TestBox {
    /// Starts an agent and a gateway; `tweak` adjusts the configuration.
    pub async fn start(functions: Vec<FunctionSpec>, tweak: impl FnOnce(&mut Config)) -> TestBox {
        let agent = ProcessAgent::new();
        let (agent_addr, agent_stop) = agent.serve().await;
        let dir = tempfile::tempdir().unwrap();
        let mut b = TestBox {
            agent,
            addr: "127.0.0.1:0".parse().unwrap(),
            internal: "127.0.0.1:0".parse().unwrap(),
            ca: dir.path().join("ca.pem"),
            dir,
            stop: None,
            agent_stop: Some(agent_stop),
            task: None,
            agent_addr,
            reloader: None,
        };
        b.start_gateway(functions, tweak).await;
        b
    }

    /// (Re)starts the gateway against the same agent.
    pub async fn start_gateway(
        &mut self,
        functions: Vec<FunctionSpec>,
        tweak: impl FnOnce(&mut Config),
    ) {
        let mut config = base_config(self.dir.path(), self.agent_addr);
        tweak(&mut config);
        let server = Server::bind(config, functions).await.expect("bind gateway");
        self.addr = server.local_addr();
        self.internal = server.internal_addr().unwrap();
        self.ca = server.ca_path().unwrap();
        self.reloader = Some(server.reloader());
        let internal_url = format!("https://127.0.0.1:{}", self.internal.port());
        *self.agent.env.lock().unwrap() = vec![
            ("AWS_ENDPOINT_URL_LAMBDA".into(), internal_url),
            (
                "AWS_CA_BUNDLE".into(),
                self.ca.to_string_lossy().into_owned(),
            ),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_DEFAULT_REGION".into(), "ap-northeast-1".into()),
            ("AWS_MAX_ATTEMPTS".into(), "1".into()),
        ];
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(server.run(async {
            let _ = rx.await;
        })));
    }

    /// Stops the gateway (drain, destroy workers) and waits for it.
    pub async fn stop_gateway(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("gateway stops")
                .unwrap()
                .unwrap();
        }
    }

    /// Aborts the gateway task without its shutdown (like a crash).
    pub async fn crash_gateway(&mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.ca)
    }

    /// Logs in through the auth endpoint; returns the IdToken.
    pub async fn token(&self) -> String {
        let r = self
            .client()
            .send(
                "POST",
                "/user/auth/ver1.0",
                &[("x-api-key", API_KEY), ("content-type", "application/json")],
                serde_json::json!({"AuthParameters": {"USERNAME": USER, "PASSWORD": PASS}})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["AuthenticationResult"]["IdToken"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs a Python snippet with boto3 pointed at the gateway (args: sys.argv[1:]).
    pub fn python(&self, code: &str, args: &[&str]) -> Value {
        let out = Command::new(esb_testkit::python())
            .arg("-c")
            .arg(code)
            .args(args)
            .env(
                "AWS_ENDPOINT_URL_LAMBDA",
                format!("https://127.0.0.1:{}", self.addr.port()),
            )
            .env("AWS_CA_BUNDLE", &self.ca)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "ap-northeast-1")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "python output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(s) = self.agent_stop.take() {
            let _ = s.send(());
        }
        self.agent.kill_all();
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// An HTTPS client trusting the box's CA (HTTP/1.1 or HTTP/2), one connection per request.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    h2: bool,
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path) -> Client {
        Client::with_alpn(addr, ca, false)
    }

    pub fn with_alpn(addr: SocketAddr, ca: &Path, h2: bool) -> Client {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Client {
            addr,
            tls: Arc::new(cfg),
            h2,
        }
    }

    /// Calls the Lambda Invoke API, signed with the box's credentials.
    pub async fn invoke(&self, function: &str, payload: &[u8], headers: &[(&str, &str)]) -> Resp {
        self.invoke_as(function, payload, headers, ACCESS_KEY, SECRET_KEY)
            .await
    }

    /// [`Client::invoke`] with another credential pair.
    pub async fn invoke_as(
        &self,
        function: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
        ak: &str,
        sk: &str,
    ) -> Resp {
        use sha2::Digest;
        let path = format!("/2015-03-31/functions/{function}/invocations");
        let host = format!("localhost:{}", self.addr.port());
        let date = esb_sigv4::format_amz_date(now_secs());
        let hash = hex::encode(sha2::Sha256::digest(payload));
        let mut hs: Vec<(String, String)> = vec![
            ("host".into(), host),
            ("x-amz-date".into(), date),
            ("x-amz-content-sha256".into(), hash.clone()),
        ];
        for (k, v) in headers {
            hs.push((k.to_string(), v.to_string()));
        }
        let auth = esb_sigv4::sign(
            ak,
            sk,
            "ap-northeast-1",
            "lambda",
            &esb_sigv4::Request {
                method: "POST",
                path: &path,
                query: "",
                headers: &hs,
            },
            &hash,
        );
        let mut all: Vec<(&str, &str)> = hs
            .iter()
            .filter(|(k, _)| k != "host")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.push(("authorization", &auth));
        self.send("POST", &path, &all, payload.to_vec()).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", path, headers, Vec::new()).await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        tokio::time::timeout(
            Duration::from_secs(120),
            self.try_send(method, path, headers, body),
        )
        .await
        .expect("request within 120 s")
        .expect("request")
    }

    /// Sends `head` (request line and headers, HTTP/1.1) and only the first `sent` bytes of
    /// a body it announces, then reads what the server answers without sending the rest:
    /// the response's first line, or the error.
    pub async fn partial(&self, head: &str, sent: usize) -> Result<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(&vec![b'x'; sent])
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf))
            .await
            .map_err(|_| "no answer before the body was sent".to_string())?
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let io = hyper_util::rt::TokioIo::new(tls);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", self.addr.port()));
        if !self.h2 {
            req = req.header("host", format!("localhost:{}", self.addr.port()));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = if self.h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = path.parse().unwrap();
            send.send_request(req).await.map_err(|e| e.to_string())?
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// `GET uri` on the gateway's admin unix socket: status and body as JSON.
pub async fn admin_get(socket: &Path, uri: &str) -> (u16, Value) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(req))
        .await
        .expect("admin answer within 60 s")
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("admin body is not JSON ({e}): {body:?}"));
    (status, v)
}

/// Polls `f` until it returns true (generous deadline, no timing assertion).
pub async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A stand-in log store that records what is POSTed to `/insert/jsonline`.
pub async fn capture_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use http_body_util::BodyExt;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = lines.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let ok = req.uri().path() == "/insert/jsonline";
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if ok {
                                for l in String::from_utf8_lossy(&body).lines() {
                                    store.lock().unwrap().push(l.to_string());
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, lines)
}
