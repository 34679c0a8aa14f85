//! Benchmark harness (bench/gateway/run.sh): starts N warm workers (the Rust test function
//! under `esb-supervisor`, on 127.0.0.1), a minimal agent that hands them out, and the
//! gateway in front with an open `HttpApi` route `ANY /bench` to that function.
//!
//! Usage: bench_gateway SUPERVISOR BOOTSTRAP WORKERS GATEWAY_PORT DATA_DIR
//! Prints `READY workers=PORT,PORT,...` once the gateway holds every worker warm, then
//! serves until stdin closes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esb_agent_api::v1::agent_service_server::{AgentService, AgentServiceServer};
use esb_agent_api::v1::*;
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct FixedAgent {
    free: Arc<Mutex<Vec<(String, u16)>>>,
}

#[tonic::async_trait]
impl AgentService for FixedAgent {
    type WatchWorkersStream = tonic::codegen::BoxStream<WorkerEvent>;
    async fn watch_workers(
        &self,
        _: Request<WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchWorkersStream>, Status> {
        Err(Status::unimplemented("bench"))
    }
    async fn ensure_container(
        &self,
        _: Request<EnsureContainerRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        let (id, port) = self
            .free
            .lock()
            .unwrap()
            .pop()
            .ok_or_else(|| Status::resource_exhausted("no more workers"))?;
        Ok(Response::new(WorkerInfo {
            name: id.clone(),
            id,
            ip_address: "127.0.0.1".into(),
            port: port as i32,
            node_id: "bench".into(),
        }))
    }
    async fn destroy_container(
        &self,
        _: Request<DestroyContainerRequest>,
    ) -> Result<Response<DestroyContainerResponse>, Status> {
        Ok(Response::new(DestroyContainerResponse { success: true }))
    }
    async fn pause_container(
        &self,
        _: Request<PauseContainerRequest>,
    ) -> Result<Response<PauseContainerResponse>, Status> {
        Ok(Response::new(PauseContainerResponse { success: false }))
    }
    async fn resume_container(
        &self,
        _: Request<ResumeContainerRequest>,
    ) -> Result<Response<ResumeContainerResponse>, Status> {
        Ok(Response::new(ResumeContainerResponse { success: false }))
    }
    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(ListContainersResponse::default()))
    }
    async fn get_container_metrics(
        &self,
        _: Request<GetContainerMetricsRequest>,
    ) -> Result<Response<GetContainerMetricsResponse>, Status> {
        Err(Status::not_found("bench"))
    }
}

fn start_worker(supervisor: &str, task_root: &str) -> (Child, u16) {
    let mut child = Command::new(supervisor)
        .env("ESB_SUPERVISOR_LISTEN", "127.0.0.1:0")
        .env("ESB_RUNTIME_API_LISTEN", "127.0.0.1:0")
        .env("ESB_RUNTIME", "provided.al2023")
        .env("_HANDLER", "bootstrap")
        .env("LAMBDA_TASK_ROOT", task_root)
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "30")
        .env_remove("VICTORIALOGS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start esb-supervisor");
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let port = loop {
        let l = lines.next().expect("supervisor output").unwrap();
        if let Some(rest) = l.strip_prefix("esb-supervisor: listening ") {
            let inv = rest.split_whitespace().next().unwrap();
            let a: SocketAddr = inv.trim_start_matches("invoke=").parse().unwrap();
            break a.port();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, port)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 6,
        "usage: bench_gateway SUPERVISOR TASK_ROOT WORKERS PORT DATA_DIR"
    );
    let n: usize = args[3].parse()?;
    let port: u16 = args[4].parse()?;
    let mut children = Vec::new();
    let mut free = Vec::new();
    for i in 0..n {
        let (c, p) = start_worker(&args[1], &args[2]);
        children.push(c);
        free.push((format!("w{i}"), p));
    }
    let ports: Vec<String> = free.iter().map(|(_, p)| p.to_string()).collect();
    let agent = FixedAgent {
        free: Arc::new(Mutex::new(free)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_addr = listener.local_addr()?;
    let svc = AgentServiceServer::new(agent);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    let mut f = esb_gateway::FunctionSpec {
        name: "bench".into(),
        logical_id: "Bench".into(),
        image: "bench".into(),
        revision: String::new(),
        env: Vec::new(),
        timeout: Duration::from_secs(30),
        memory_mb: 128,
        reserved: Some(n as u32),
        provisioned: n as u32,
        events: Vec::new(),
    };
    f.events.push(esb_template::Event {
        name: "Bench".into(),
        kind: esb_template::EventKind::HttpApi,
        path: "/bench".into(),
        method: "ANY".into(),
        auth: Some(esb_template::EventAuth {
            authorizer: Some("NONE".into()),
            ..Default::default()
        }),
        api: None,
    });
    let config = esb_gateway::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        internal_listen: None,
        internal_netns: None,
        data_dir: args[5].clone().into(),
        jwt_secret: "bench-secret-bench-secret-bench-secret".into(),
        api_key: "bench".into(),
        auth_user: "bench".into(),
        auth_pass: "bench".into(),
        access_key: "bench".into(),
        secret_key: "bench".into(),
        log_stderr: false,
        pool_acquire_timeout: Duration::from_secs(60),
        agents: vec![esb_gateway::AgentAddr {
            node_id: "bench".into(),
            endpoint: format!("http://{agent_addr}"),
            netns: None,
            max_workers: 0,
            ..Default::default()
        }],
        ..Default::default()
    };
    let server = esb_gateway::Server::bind(config, vec![f]).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    // Provisioned workers are taken at start; wait until the agent has handed out all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("READY workers={}", ports.join(","));
    // Serve until stdin closes.
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            s.clear();
        }
    })
    .await?;
    let _ = tx.send(());
    let _ = run.await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}
