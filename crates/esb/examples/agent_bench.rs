//! Agent benchmark (bench/agent/run.sh): cold start of a Python worker through the agent
//! against the floor `ctr run` of the same image, workers ready per second with 50 ensures
//! at once, and the agent's RSS with 100 workers. Uses a node namespace and state
//! directory of its own and removes them at the end (`esb node down`).
//!
//! Cold start (esb) = EnsureContainer (network attach, container, task, readiness) + the
//! first invocation answered. Floor = `ctr run -d` of the same image in a namespace
//! attached beforehand (not timed) + the first invocation answered.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{first_invocation, median_ms};
use esb_agent_api::v1::*;
use esb_netns::NetNs;

const IMAGE: &str = "esb.local/functions/bench-echo:latest";
const APP: &str = "def handler(event, context):\n    return {\"ok\": True, \"event\": event}\n";
const TEMPLATE: &str = "Resources:\n  BenchEcho:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: bench-echo\n      CodeUri: app/\n      Handler: app.handler\n      Runtime: python3.11\n";

fn esb_bin() -> PathBuf {
    std::env::var_os("ESB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("esb")
        })
}

struct Bench {
    state: PathBuf,
    netns: String,
    agent: Option<Child>,
}

impl Bench {
    fn esb(&self, args: &[&str]) -> String {
        let out = Command::new(esb_bin())
            .arg(format!("--state-dir={}", self.state.display()))
            .args(args)
            .env("ESB_NODE_NETNS", &self.netns)
            .env("ESB_LOG", "warn")
            .output()
            .expect("run esb");
        assert!(
            out.status.success(),
            "esb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .args([
                "--address",
                &self
                    .state
                    .join("containerd/containerd.sock")
                    .display()
                    .to_string(),
                "-n",
                "esb-runtime",
            ])
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = Command::new(esb_bin())
            .arg(format!("--state-dir={}", self.state.display()))
            .args(["node", "down"])
            .env("ESB_NODE_NETNS", &self.netns)
            .output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ensure_req() -> EnsureContainerRequest {
    EnsureContainerRequest {
        function_name: "bench-echo".into(),
        image: IMAGE.into(),
        env: HashMap::new(),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let many: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let state = PathBuf::from(format!("/tmp/esb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let mut b = Bench {
        state: state.clone(),
        netns: format!("esb-bench-{}", std::process::id()),
        agent: None,
    };
    b.esb(&["node", "up"]);
    let node_ns = NetNs::open(&b.netns).unwrap();

    // The image, built by esb's builder and imported into the node's containerd.
    let src = state.join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/app.py"), APP).unwrap();
    std::fs::write(src.join("template.yaml"), TEMPLATE).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .join("esb-supervisor-static");
    let supervisor = esb_supervisor::build_static(&workspace, &target).expect("static supervisor");
    let template = esb_template::load(&src.join("template.yaml"), &Default::default()).unwrap();
    let report = esb_image::build(
        &template,
        &esb_image::BuildOptions::new(&template, supervisor),
        &|_| {},
    )
    .unwrap();
    let image =
        esb_containerd::OciImage::from_layout(&report.layout, &report.images[0].reference).unwrap();
    let ctd = esb_containerd::connect(&state.join("containerd/containerd.sock"))
        .await
        .unwrap();
    ctd.import(&image, IMAGE).await.unwrap();

    let agent = Command::new(esb_bin())
        .arg(format!("--state-dir={}", state.display()))
        .arg("agent")
        .env("ESB_NODE_NETNS", &b.netns)
        .env("ESB_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = agent.id();
    b.agent = Some(agent);
    let sock = state.join("agent.sock");
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client = esb_agent_api::connect(&format!("unix://{}", sock.display()))
        .await
        .unwrap();

    // Warm the page cache and the unpacked snapshot once for both sides.
    let w = client
        .ensure_container(ensure_req())
        .await
        .unwrap()
        .into_inner();
    first_invocation(&node_ns, &w.ip_address);
    client
        .destroy_container(DestroyContainerRequest {
            function_name: String::new(),
            container_id: w.id,
        })
        .await
        .unwrap();

    let mut esb_times = Vec::new();
    let mut ctr_times = Vec::new();
    for i in 0..rounds {
        // esb: ensure + first invocation.
        let t = Instant::now();
        let w = client
            .ensure_container(ensure_req())
            .await
            .unwrap()
            .into_inner();
        first_invocation(&node_ns, &w.ip_address);
        esb_times.push(t.elapsed());
        client
            .destroy_container(DestroyContainerRequest {
                function_name: String::new(),
                container_id: w.id,
            })
            .await
            .unwrap();

        // floor: ctr run of the same image in a namespace attached beforehand.
        let name = format!("floor-{i}");
        let att: serde_json::Value =
            serde_json::from_str(&b.esb(&["node", "attach", &name, "--json"])).unwrap();
        let ip = att["ip"].as_str().unwrap().to_string();
        let t = Instant::now();
        let out = b.ctr(&[
            "run",
            "-d",
            "--with-ns",
            &format!("network:/run/netns/{name}"),
            IMAGE,
            &name,
        ]);
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        first_invocation(&node_ns, &ip);
        ctr_times.push(t.elapsed());
        let _ = b.ctr(&["task", "kill", "-s", "SIGKILL", &name]);
        for _ in 0..100 {
            if b.ctr(&["task", "rm", &name]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = b.ctr(&["container", "rm", &name]);
        b.esb(&["node", "detach", &name]);
    }
    let (esb_ms, ctr_ms) = (median_ms(esb_times), median_ms(ctr_times));

    // 50 at once.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.ensure_container(ensure_req()).await.unwrap().into_inner()
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().id);
    }
    let per_sec = 50.0 / t.elapsed().as_secs_f64();
    // Up to `many` workers, then the agent's RSS.
    while ids.len() < many {
        ids.push(
            client
                .ensure_container(ensure_req())
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let rss = rss_kib(agent_pid);
    for id in ids {
        let _ = client
            .destroy_container(DestroyContainerRequest {
                function_name: String::new(),
                container_id: id,
            })
            .await;
    }

    println!("| figure | esb | floor (ctr run) | ratio |");
    println!("|---|---|---|---|");
    println!("| cold start to first answer, Python, median of {rounds} (ms) | {esb_ms:.0} | {ctr_ms:.0} | {:.2}x |", esb_ms / ctr_ms);
    println!("| workers ready per second, 50 ensures at once | {per_sec:.1} | | |");
    println!(
        "| agent RSS with {many} workers (MiB) | {:.1} | | |",
        rss as f64 / 1024.0
    );
}
