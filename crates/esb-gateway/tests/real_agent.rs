//! The gateway in front of the real agent, as root: a node namespace of the test's own
//! and the box's private containerd (`esb node up`), runc, CNI, images built by esb's builder (Debian
//! python base, awslambdaric, boto3, the static supervisor) and `esb agent`. The gateway
//! runs in this process: its client listener on 127.0.0.1, its internal listener on
//! 10.88.0.1 inside the node namespace, workers dialled inside that namespace.
//!
//! One test walks through the "Must show" list, to pay for the set-up once. Everything is
//! torn down on drop, also after a failure: workers destroyed, the agent stopped by PID,
//! the node removed (`esb node down` also stops containerd).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, ACCESS_KEY, API_KEY, JWT_SECRET, PASS, SECRET_KEY, USER};
use esb_agent_api::v1::{DestroyContainerRequest, ListContainersRequest};
use esb_gateway::{AgentAddr, Config, FunctionSpec, Server};
use serde_json::{json, Value};

const TEMPLATE: &str = r#"
AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    CodeUri: app/
    MemorySize: 128
    Timeout: 10
Resources:
  Echo:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: gw-echo
      Handler: gwfn.echo
      Events:
        Get:
          Type: Api
          Properties:
            Path: '/items/{id}'
            Method: get
        Post:
          Type: Api
          Properties:
            Path: '/items/{id}'
            Method: post
        V2:
          Type: HttpApi
          Properties:
            Path: '/v2/{thing}'
            Method: ANY
  Bin:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: gw-bin
      Handler: gwfn.binary
      Events:
        Bin:
          Type: Api
          Properties:
            Path: /bin
            Method: post
            Auth:
              Authorizer: NONE
  Chain:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: gw-chain
      Handler: gwfn.chain
      Events:
        Chain:
          Type: Api
          Properties:
            Path: /chain
            Method: post
            Auth:
              Authorizer: NONE
  Target:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: gw-target
      Handler: gwfn.invoked
  Sleepy:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: gw-sleepy
      Handler: gwfn.sleepy
      Timeout: 2
      ReservedConcurrentExecutions: 2
      Events:
        Sleep:
          Type: Api
          Properties:
            Path: /sleep
            Method: get
            Auth:
              Authorizer: NONE
"#;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// The `esb` binary, built into this target directory.
fn esb_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "esb", "--bin", "esb", "--target-dir"])
        .arg(target_dir());
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo to build esb");
    assert!(
        out.status.success(),
        "building esb failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join("esb")
}

/// Node + containerd + agent, torn down on drop.
struct RealBox {
    esb: PathBuf,
    state: tempfile::TempDir,
    netns: String,
    agent: Mutex<Option<Child>>,
    /// The agent's TCP listener (127.0.0.1). Used rather than its Unix socket: the `esb`
    /// binary runs with SIGPIPE at its default action, and a Unix-socket peer that goes
    /// away mid-write kills the agent (TCP writes use MSG_NOSIGNAL).
    agent_tcp: SocketAddr,
}

impl RealBox {
    fn esb(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.esb)
            .arg(format!("--state-dir={}", self.state.path().display()))
            .args(args)
            .env("ESB_NODE_NETNS", &self.netns)
            .env("ESB_LOG", "warn")
            .output()
            .expect("run esb")
    }

    /// The private containerd that `esb node up` started.
    fn ctd_socket(&self) -> PathBuf {
        self.state.path().join("containerd/containerd.sock")
    }

    fn tls_dir(&self) -> PathBuf {
        self.state.path().join("tls")
    }

    fn start_agent(&mut self, internal_url: &str) {
        let ctd = self.ctd_socket();
        let child = Command::new(&self.esb)
            .arg(format!("--state-dir={}", self.state.path().display()))
            .arg("agent")
            .arg(format!("--listen={}", self.agent_tcp))
            .arg(format!("--containerd-socket={}", ctd.display()))
            .arg("--readiness-timeout=60")
            .arg(format!(
                "--ca-file={}",
                self.tls_dir().join("ca.pem").display()
            ))
            .env("ESB_NODE_NETNS", &self.netns)
            .env("ESB_ACCESS_KEY_ID", ACCESS_KEY)
            .env("ESB_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("GATEWAY_INTERNAL_URL", internal_url)
            .env(
                "ESB_LOG",
                std::env::var("ESB_TEST_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start esb agent");
        *self.agent.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(self.agent_tcp).is_err() {
            if let Some(st) = self
                .agent
                .lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!("esb agent exited: {st}");
            }
            assert!(Instant::now() < deadline, "agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn workers(&self) -> Vec<(String, String)> {
        let mut c = match esb_agent_api::connect(&format!("http://{}", self.agent_tcp)).await {
            Ok(c) => c,
            Err(e) => {
                let st = self.agent.lock().unwrap().as_mut().map(|a| a.try_wait());
                panic!("agent unreachable ({e}); agent process: {st:?}");
            }
        };
        c.list_containers(ListContainersRequest {})
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .map(|w| (w.container_id, w.function_name))
            .collect()
    }

    async fn count(&self, function: &str) -> usize {
        self.workers()
            .await
            .iter()
            .filter(|(_, f)| f == function)
            .count()
    }
}

impl Drop for RealBox {
    fn drop(&mut self) {
        if self.agent.lock().unwrap().is_some() {
            let tcp = self.agent_tcp;
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = esb_agent_api::connect(&format!("http://{tcp}")).await {
                        if let Ok(l) = c.list_containers(ListContainersRequest {}).await {
                            for w in l.into_inner().containers {
                                let _ = c
                                    .destroy_container(DestroyContainerRequest {
                                        function_name: w.function_name,
                                        container_id: w.container_id,
                                    })
                                    .await;
                            }
                        }
                    }
                })
            })
            .join();
        }
        if let Some(mut a) = self.agent.lock().unwrap().take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        // `esb node down` removes any worker left and stops the private containerd.
        let _ = self.esb(&["node", "down"]);
        let _ = esb_netns::NetNs::delete(&self.netns);
    }
}

/// Builds the functions' images and imports them; returns the specs.
async fn build_images(dir: &Path, ctd_socket: &Path) -> Vec<FunctionSpec> {
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::copy(
        common::functions_dir().join("gwfn.py"),
        dir.join("app/gwfn.py"),
    )
    .unwrap();
    std::fs::write(dir.join("template.yaml"), TEMPLATE).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let supervisor =
        esb_supervisor::build_static(&workspace, &target_dir().join("esb-supervisor-static"))
            .expect("static supervisor");
    let template =
        esb_template::load(&dir.join("template.yaml"), &Default::default()).expect("template");
    let opts = esb_image::BuildOptions::new(&template, supervisor);
    let report = esb_image::build(&template, &opts, &|_| {}).expect("image build");
    let client = esb_containerd::connect(ctd_socket)
        .await
        .expect("containerd");
    let mut specs = Vec::new();
    for img in &report.images {
        let oci =
            esb_containerd::OciImage::from_layout(&report.layout, &img.reference).expect("layout");
        client.import(&oci, &img.reference).await.expect("import");
        let f = template.function(&img.function).unwrap();
        // Workers get credentials from the gateway's function specs (the agent adds none):
        // without a box issuing per-function keys, the test's own pair.
        let mut spec = FunctionSpec::from_template(f, img.reference.clone());
        spec.env
            .push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
        spec.env
            .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
        specs.push(spec);
    }
    specs
}

fn config(b: &RealBox, internal: SocketAddr, logs: SocketAddr) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        internal_listen: Some(internal),
        internal_netns: Some(b.netns.clone()),
        internal_url: format!("https://{internal}"),
        data_dir: b.tls_dir(),
        jwt_secret: JWT_SECRET.into(),
        api_key: API_KEY.into(),
        auth_user: USER.into(),
        auth_pass: PASS.into(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        agents: vec![AgentAddr {
            node_id: "node-1".into(),
            endpoint: format!("http://{}", b.agent_tcp),
            netns: Some(b.netns.clone()),
            max_workers: 0,
            ..Default::default()
        }],
        idle_timeout: Duration::from_secs(8),
        heartbeat: Duration::from_millis(500),
        breaker_threshold: 2,
        breaker_recovery: Duration::from_secs(2),
        pool_acquire_timeout: Duration::from_secs(60),
        victorialogs_url: Some(format!("http://{logs}")),
        log_stderr: std::env::var_os("ESB_TEST_VERBOSE").is_some(),
        ..Config::default()
    }
}

struct Gw {
    addr: SocketAddr,
    ca: PathBuf,
    reloader: esb_gateway::Reloader,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Gw {
    async fn start(cfg: Config, specs: Vec<FunctionSpec>) -> Gw {
        let server = Server::bind(cfg, specs).await.expect("bind gateway");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        Gw {
            addr: server.local_addr(),
            ca: server.ca_path().unwrap(),
            reloader: server.reloader(),
            stop: Some(tx),
            task: Some(tokio::spawn(server.run(async {
                let _ = rx.await;
            }))),
        }
    }

    fn client(&self) -> Client {
        Client::new(self.addr, &self.ca)
    }

    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(120), self.task.take().unwrap())
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
    }

    async fn crash(&mut self) {
        self.stop.take();
        let t = self.task.take().unwrap();
        t.abort();
        let _ = t.await;
    }
}

async fn capture_logs() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    use http_body_util::BodyExt;
    let store = Arc::new(Mutex::new(Vec::new()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let s2 = store.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let store = s2.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            for l in String::from_utf8_lossy(&body).lines() {
                                if let Ok(v) = serde_json::from_str(l) {
                                    store.lock().unwrap().push(v);
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
    (addr, store)
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_the_real_agent_with_containerd_workers() {
    esb_testkit::require_root();
    let esb = esb_bin();
    let mut b = RealBox {
        esb,
        state: tempfile::tempdir().unwrap(),
        netns: unique("esbg-n"),
        agent: Mutex::new(None),
        agent_tcp: std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
    };
    let up = b.esb(&["node", "up"]);
    assert!(
        up.status.success(),
        "esb node up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let specs = build_images(&b.state.path().join("src"), &b.ctd_socket()).await;
    // The CA exists before the agent starts, so that it mounts it in workers.
    esb_gateway::tls::ensure_box_certs(&b.tls_dir(), &esb_gateway::tls::default_sans(&[])).unwrap();
    // The internal listener: on the node's bridge address, in the node namespace, on the
    // port the workers' fence admits (esb_runtime_node::nat::GATEWAY_INTERNAL_PORT).
    let internal: SocketAddr = "10.88.0.1:443".parse().unwrap();
    b.start_agent(&format!("https://{internal}"));
    let (logs, records) = capture_logs().await;
    let mut gw = Gw::start(config(&b, internal, logs), specs.clone()).await;
    let c = gw.client();

    // --- auth flow and the 401/404 cases --------------------------------------------------
    let r = c
        .send(
            "POST",
            "/user/auth/ver1.0",
            &[("x-api-key", "wrong")],
            json!({"AuthParameters": {"USERNAME": USER, "PASSWORD": PASS}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.header("padma_user_authorized").is_none());
    let r = c
        .send(
            "POST",
            "/user/auth/ver1.0",
            &[("x-api-key", API_KEY)],
            json!({"AuthParameters": {"USERNAME": USER, "PASSWORD": "bad"}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("padma_user_authorized").as_deref(), Some("true"));
    let r = c
        .send(
            "POST",
            "/user/auth/ver1.0",
            &[("x-api-key", API_KEY)],
            json!({"AuthParameters": {"USERNAME": USER, "PASSWORD": PASS}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = format!(
        "Bearer {}",
        r.json()["AuthenticationResult"]["IdToken"]
            .as_str()
            .unwrap()
    );
    assert_eq!(c.get("/items/1", &[]).await.status, 401);
    assert_eq!(
        c.get("/nowhere", &[("authorization", &bearer)])
            .await
            .status,
        404
    );

    // --- v1 and v2 events, echoed by a Python function in a container -------------------
    let r = c
        .send(
            "POST",
            "/items/42?x=1&x=2",
            &[
                ("authorization", &bearer),
                ("x-custom", "a"),
                ("x-custom", "b"),
            ],
            b"{\"k\":1}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = &r.json()["event"];
    assert_eq!(e["resource"], "/items/{id}");
    assert_eq!(e["pathParameters"], json!({"id": "42"}));
    assert_eq!(e["multiValueQueryStringParameters"]["x"], json!(["1", "2"]));
    assert_eq!(e["multiValueHeaders"]["x-custom"], json!(["a", "b"]));
    assert_eq!(
        e["requestContext"]["authorizer"]["claims"]["cognito:username"],
        USER
    );
    assert_eq!(
        e["requestContext"]["requestId"],
        r.header("x-amzn-requestid").unwrap().as_str()
    );
    assert_eq!(e["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["body"], "{\"k\":1}");
    let r = c
        .send(
            "GET",
            "/v2/t?a=1",
            &[("authorization", &bearer), ("cookie", "c=1")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = &r.json()["event"];
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "ANY /v2/{thing}");
    assert_eq!(e["cookies"], json!(["c=1"]));
    assert_eq!(e["queryStringParameters"], json!({"a": "1"}));
    assert_eq!(e["requestContext"]["http"]["method"], "GET");

    // --- binary bodies round-trip ----------------------------------------------------------
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let r = c
        .send(
            "POST",
            "/bin",
            &[("content-type", "application/octet-stream")],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == data, "binary body differs");

    // --- chain invoke with boto3 from inside a worker: one trace root ---------------------
    let root = "Root=1-65000000-00112233445566778899aabb";
    let r = c
        .send(
            "POST",
            "/chain",
            &[("x-amzn-trace-id", &format!("{root};Sampled=1"))],
            json!({"target": "gw-target", "record": "/tmp/unused"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    assert!(out["trace_env"].as_str().unwrap().contains(root), "{out}");
    assert!(
        out["sync"]["trace_env"].as_str().unwrap().contains(root),
        "{out}"
    );
    assert_eq!(out["async_status"], 202);
    // The Event invocation ran from the gateway's queue under the same root.
    eventually("the async chain invocation", || {
        let records = records.clone();
        async move {
            records.lock().unwrap().iter().any(|v| {
                v["kind"] == "async"
                    && v["function"] == "gw-target"
                    && v["status"] == "ok"
                    && v["trace_id"]
                        .as_str()
                        .is_some_and(|t| t.contains(&root[5..]))
            })
        }
    })
    .await;

    // --- ReservedConcurrentExecutions=2: exactly 2 workers under 8 parallel requests ------
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(
            async move { c.get("/sleep?s=0.5", &[]).await },
        ));
    }
    let mut most = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        most = most.max(b.count("gw-sleepy").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(most <= 2, "{most} workers for a reserved concurrency of 2");
    assert_eq!(b.count("gw-sleepy").await, 2);

    // --- function timeout -> 504, the worker is replaced -------------------------------
    let before: Vec<String> = b
        .workers()
        .await
        .into_iter()
        .filter(|(_, f)| f == "gw-sleepy")
        .map(|(id, _)| id)
        .collect();
    let r = c.get("/sleep?s=5", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    eventually("the timed-out worker to be destroyed", || async {
        let now: Vec<String> = b
            .workers()
            .await
            .into_iter()
            .filter(|(_, f)| f == "gw-sleepy")
            .map(|(id, _)| id)
            .collect();
        now.len() == 1 && before.contains(&now[0])
    })
    .await;
    assert_eq!(c.get("/sleep?s=0", &[]).await.status, 200);

    // --- breaker: opens after 2 unhandled errors, answers 503 fast, recovers ---------------
    for _ in 0..2 {
        let r = c.invoke("gw-target", br#"{"fail": true}"#, &[]).await;
        assert_eq!(
            r.header("x-amz-function-error").as_deref(),
            Some("Unhandled"),
            "{}",
            r.text()
        );
    }
    let r = c.invoke("gw-target", b"{}", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = c.invoke("gw-target", br#"{"n": 1}"#, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["event"], json!({"n": 1}));

    // --- idle workers reach zero, the next request cold-starts fine ---------------------
    eventually("scale to zero", || async { b.workers().await.is_empty() }).await;
    let r = c.get("/items/7", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // --- live reload: a new revision of gw-sleepy swaps its containers under load -------
    assert_eq!(c.get("/sleep?s=0", &[]).await.status, 200);
    let sleepy = || async {
        b.workers()
            .await
            .into_iter()
            .filter(|(_, f)| f == "gw-sleepy")
            .map(|(id, _)| id)
            .collect::<Vec<String>>()
    };
    let old = sleepy().await;
    assert!(!old.is_empty());
    let mut next = specs.clone();
    for s in next.iter_mut().filter(|s| s.name == "gw-sleepy") {
        s.revision = "sha256:next".into();
    }
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..6 {
                statuses.push(c.get("/sleep?s=0.2", &[]).await.status);
            }
            statuses
        }));
    }
    let report = gw.reloader.reload(next).await.expect("reload");
    assert_eq!(report.changed, ["gw-sleepy"]);
    assert!(report.added.is_empty() && report.removed.is_empty());
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert_eq!(c.get("/sleep?s=0", &[]).await.status, 200);
    eventually("the old revision's containers destroyed", || async {
        let now = sleepy().await;
        !now.is_empty() && now.iter().all(|w| !old.contains(w))
    })
    .await;

    // --- a gateway restart leaves no orphan workers -------------------------------------
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        tasks.push(tokio::spawn(
            async move { c.get("/sleep?s=0.3", &[]).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert!(!b.workers().await.is_empty());
    gw.crash().await;
    assert!(!b.workers().await.is_empty());
    let mut gw = Gw::start(config(&b, internal, logs), specs.clone()).await;
    eventually("leftovers removed", || async {
        b.workers().await.is_empty()
    })
    .await;
    assert_eq!(gw.client().get("/sleep?s=0", &[]).await.status, 200);
    gw.stop().await;
    assert!(
        b.workers().await.is_empty(),
        "workers left after stop: {:?}",
        b.workers().await
    );
}
