//! Registry benchmark (bench/registry/run.sh), on loopback with real parts: Debian's
//! docker-registry with a certificate from a box CA, a private containerd and the agent.
//!
//! 1. Cold start to the first answer of a Python function whose image (about 100 MB
//!    compressed: the Python base plus a 40 MB layer) must first be pulled from the
//!    registry, against the same cold start with the image already in containerd.
//!    Pulled = EnsureContainer with the digest reference containerd lacks (pull, import,
//!    unpack, network, task, readiness) + the first invocation; between rounds the image is
//!    removed with `ctr images rm --sync` (content and snapshots collected).
//! 2. `esb build --push` of a one-file change against a full push of the same images into
//!    an empty registry (the build itself cached in both).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{first_invocation, median_ms};
use esb_agent_api::v1::*;
use esb_netns::NetNs;

const APP: &str = "def handler(event, context):\n    return {\"ok\": True, \"event\": event}\n";
const TEMPLATE: &str = "Resources:\n  Data:\n    Type: AWS::Serverless::LayerVersion\n    Properties:\n      LayerName: data\n      ContentUri: data/\n  BigEcho:\n    Type: AWS::Serverless::Function\n    Properties:\n      FunctionName: big-echo\n      CodeUri: app/\n      Handler: app.handler\n      Runtime: python3.11\n      Layers:\n        - !Ref Data\n";

fn esb_bin() -> PathBuf {
    std::env::var_os("ESB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("esb")
        })
}

/// The node and state directory of the run, removed on drop (`esb node down`).
struct Bench {
    state: PathBuf,
    netns: String,
}

/// A child process of the run, killed (by its PID) on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bench {
    fn esb(&self, args: &[&str]) -> Command {
        let mut c = Command::new(esb_bin());
        c.arg(format!("--state-dir={}", self.state.display()))
            .args(args)
            .env("ESB_NODE_NETNS", &self.netns)
            .env("ESB_LOG", "warn");
        c
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.esb(args).output().expect("run esb");
        assert!(
            out.status.success(),
            "esb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.state.join("containerd/containerd.sock"))
            .args(["-n", "esb-runtime"])
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.esb(&["node", "down"]).output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry on 127.0.0.1 with TLS from `tls`'s CA, storage under `dir`.
fn start_registry(dir: &Path, tls: &Path) -> (Child, u16) {
    let port = free_port();
    let (cert, key) =
        esb_pki::ensure_server_cert(tls, "registry", "bench", &["127.0.0.1".into()]).unwrap();
    let cfg = esb_registry::ServerConfig {
        dir: dir.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        cert,
        key,
    };
    let path = cfg.write().unwrap();
    let child = Command::new(esb_registry::server::program().unwrap())
        .arg("serve")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

fn timed(mut cmd: Command) -> (Duration, String) {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let code_mb: usize = std::env::var("CODE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let state = PathBuf::from(format!("/tmp/esb-rbench-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let b = Bench {
        state: state.clone(),
        netns: format!("esb-rbench-{}", std::process::id()),
    };
    b.ok(&["node", "up"]);
    let node_ns = NetNs::open(&b.netns).unwrap();
    let tls = state.join("tls");
    let ca = esb_pki::ca_path(&tls);

    // The function: a Python handler and CODE_MB of incompressible data.
    let src = state.join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/app.py"), APP).unwrap();
    // xorshift64: incompressible bytes, no generator crate needed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    let blob: Vec<u8> = (0..(code_mb << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    // In a layer of its own (as a dependency would be): a code edit leaves it alone.
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/data.bin"), blob).unwrap();
    std::fs::write(src.join("template.yaml"), TEMPLATE).unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .join("esb-supervisor-static");
    let supervisor = esb_supervisor::build_static(&workspace, &target).expect("static supervisor");
    // `esb build` with a state directory of its own: no containerd runs there, so it only
    // builds (and pushes with --push).
    let build_state = state.join("build-state");
    let build = |args: &[&str]| {
        let mut c = Command::new(esb_bin());
        c.arg(format!("--state-dir={}", build_state.display()))
            .args(["build", "-t"])
            .arg(src.join("template.yaml"))
            .arg(format!("--supervisor={}", supervisor.display()))
            .args(args)
            .env("ESB_LOG", "warn");
        c
    };
    // Build once (not timed), so both pushes below find the build cached.
    let first = build(&[]).output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // 2. Pushes: everything into an empty registry, then a one-file change.
    let (reg, port) = start_registry(&state.join("registry"), &tls);
    let _registry = Kill(reg);
    let host = format!("127.0.0.1:{port}");
    let push_args = ["--push", host.as_str(), "--registry-ca"];
    let mut full = build(&push_args);
    full.arg(&ca);
    let (full_t, full_out) = timed(full);
    std::fs::write(src.join("app/app.py"), format!("{APP}# changed\n")).unwrap();
    let mut one = build(&push_args);
    one.arg(&ca);
    let (one_t, one_out) = timed(one);
    assert!(full_out.contains("pushed big-echo"), "{full_out}");
    assert!(one_out.contains("(1 layer(s) sent"), "{one_out}");
    let image_mb =
        esb_registry::server::disk_usage(&state.join("registry/data")) as f64 / 1048576.0;

    // 1. Cold starts: pulled vs present.
    let layout = src.join(".esb/build");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let reference = esb_registry::image_reference(&host, "big-echo", &digest);
    esb_registry::HostsDir::new(state.join("containerd/certs.d"))
        .write(&host, &format!("https://{host}"), &ca)
        .unwrap();
    let _agent = Kill(b.esb(&["agent"]).stdin(Stdio::null()).spawn().unwrap());
    let sock = state.join("agent.sock");
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = esb_agent_api::connect(&format!("unix://{}", sock.display()))
        .await
        .unwrap();
    let req = || EnsureContainerRequest {
        function_name: "big-echo".into(),
        image: reference.clone(),
        env: HashMap::new(),
        ..Default::default()
    };
    let cold = |pulled: bool| {
        let mut client = client.clone();
        let node_ns = &node_ns;
        let b = &b;
        let req = req();
        let reference = reference.clone();
        async move {
            if pulled {
                let out = b.ctr(&["images", "rm", "--sync", &reference]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let t = Instant::now();
            let w = client.ensure_container(req).await.unwrap().into_inner();
            first_invocation(node_ns, &w.ip_address);
            let took = t.elapsed();
            client
                .destroy_container(DestroyContainerRequest {
                    function_name: String::new(),
                    container_id: w.id,
                })
                .await
                .unwrap();
            took
        }
    };
    // Warm the page cache of the base files once.
    cold(false).await;
    let (mut pulled, mut present) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        pulled.push(cold(true).await);
        present.push(cold(false).await);
    }
    let (p, l) = (median_ms(pulled), median_ms(present));
    println!("| figure | measured | peer | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| cold start to first answer, image pulled first ({image_mb:.0} MB in the registry) vs already present, median of {rounds} (ms) | {p:.0} | {l:.0} | {:.2}x |",
        p / l
    );
    println!(
        "| `esb build --push`: one-file change vs full push (s) | {:.2} | {:.2} | {:.2}x |",
        one_t.as_secs_f64(),
        full_t.as_secs_f64(),
        one_t.as_secs_f64() / full_t.as_secs_f64()
    );
}
