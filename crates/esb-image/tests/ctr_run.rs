//! End to end: images built by the builder are imported into a private containerd
//! (namespace esb-runtime) and run with `ctr run`; each answers an invocation through the
//! real supervisor: a Python function using a layer (awslambdaric) and a Rust function on
//! the lambda_runtime crate (provided.al2023).
//!
//! Networking: each container joins a network namespace this test creates; invocations
//! are sent from inside that namespace to 127.0.0.1:8080 (`ip netns exec NS curl ...`).
//! No address is added anywhere. Containers, namespaces and containerd are removed by drop
//! guards, also when the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn sh(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The static supervisor, built once into the target directory shared with its own tests.
fn supervisor() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("esb-supervisor-static");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    esb_supervisor::build_static(&workspace, &target).expect("static build of esb-supervisor")
}

/// A network namespace with loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = sh(Command::new("ip").args(["netns", "delete", name]));
        let out = sh(Command::new("ip").args(["netns", "add", name]));
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns(name.to_string());
        let out =
            sh(Command::new("ip").args(["netns", "exec", name, "ip", "link", "set", "lo", "up"]));
        assert!(
            out.status.success(),
            "lo up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(Command::new("ip").args(["netns", "delete", &self.0]));
    }
}

/// A container started with `ctr run -d`, killed and deleted (with its snapshot) on drop.
struct Container<'a> {
    socket: &'a Path,
    id: String,
}

impl Container<'_> {
    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket)
            .args(["--namespace", esb_containerd::NAMESPACE]);
        c
    }

    fn run<'a>(socket: &'a Path, image: &str, id: &str, netns: &Netns) -> Container<'a> {
        let c = Container {
            socket,
            id: id.to_string(),
        };
        let out = sh(c
            .ctr()
            .args([
                "run",
                "-d",
                "--snapshotter",
                esb_containerd::SNAPSHOTTER,
                "--with-ns",
            ])
            .arg(format!("network:/var/run/netns/{}", netns.0))
            .args([image, id]));
        assert!(
            out.status.success(),
            "ctr run {image}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = sh(self
            .ctr()
            .args(["task", "kill", "--signal", "SIGKILL", &self.id]));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = sh(self.ctr().args(["task", "delete", &self.id]));
            if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = sh(self.ctr().args(["container", "delete", &self.id]));
    }
}

/// POSTs `body` to the supervisor inside `netns`, retrying until it answers (60 s).
fn invoke(netns: &Netns, body: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = sh(Command::new("ip").args(["netns", "exec", &netns.0]).args([
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "-w",
            "\n%{http_code}",
            "http://127.0.0.1:8080/2015-03-31/functions/function/invocations",
        ]));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
            assert_eq!(code, "200", "invocation answered {code}: {body}");
            return body.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the worker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn built_images_run_under_ctr_and_answer_invocations() {
    esb_testkit::require_root();
    let supervisor = supervisor();

    // Python function with a layer.
    let py = fixture("python-layer");
    let py_t = esb_template::load(&py.path().join("template.yaml"), &Default::default()).unwrap();
    // Rust function on lambda_runtime: its binary is the bootstrap.
    let rs = fixture("rust-fn");
    std::fs::create_dir_all(rs.path().join("bootstrap-dir")).unwrap();
    std::fs::copy(
        esb_test_functions::rust_function(),
        rs.path().join("bootstrap-dir/bootstrap"),
    )
    .unwrap();
    let rs_t = esb_template::load(&rs.path().join("template.yaml"), &Default::default()).unwrap();

    let layout = tempfile::tempdir().unwrap();
    let (py_report, _) = build(&py_t, &options(&py_t, layout.path(), &supervisor));
    let (rs_report, _) = build(&rs_t, &options(&rs_t, layout.path(), &supervisor));
    let py_ref = py_report
        .images
        .iter()
        .find(|i| i.function == "HelloFunction")
        .unwrap()
        .reference
        .clone();
    let rs_ref = rs_report.images[0].reference.clone();

    let state = tempfile::Builder::new()
        .prefix("esb-ctr-")
        .tempdir_in("/tmp")
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut containerd = rt
        .block_on(esb_containerd::Containerd::start(state.path()))
        .expect("start containerd");
    let socket = containerd.socket().to_path_buf();
    let imported = rt
        .block_on(esb_image::import_to_containerd(
            layout.path(),
            &[py_ref.clone(), rs_ref.clone()],
            &socket,
        ))
        .expect("import into containerd");
    assert_eq!(imported.len(), 2);
    assert!(
        imported
            .iter()
            .all(|i| i.layers_unpacked == 4 || i.layers_unpacked == 3),
        "{imported:?}"
    );

    let tag = std::process::id();
    {
        let ns = Netns::new(&format!("esb-img-py-{tag}"));
        let _c = Container::run(&socket, &py_ref, &format!("esb-img-py-{tag}"), &ns);
        let answer = invoke(&ns, r#"{"name": "edge"}"#);
        let v: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["greeting"], "hello, edge (from the layer)", "{v}");
        assert_eq!(v["style"], "warm");
        assert_eq!(v["function"], "hello-python");
        assert_eq!(v["task_root"], "/var/task");
    }
    {
        let ns = Netns::new(&format!("esb-img-rs-{tag}"));
        let _c = Container::run(&socket, &rs_ref, &format!("esb-img-rs-{tag}"), &ns);
        let answer = invoke(&ns, r#"{"action": "env"}"#);
        let v: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["function_name"], "hello-rust", "{v}");
        assert_eq!(v["memory"], "256");
        assert_eq!(v["task_root"], "/var/task");
        let echo = invoke(&ns, r#"{"hello": "rust"}"#);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&echo).unwrap(),
            serde_json::json!({"hello": "rust"})
        );
    }

    // Editing the Python function's code: one layer rebuilt, one blob set written, one
    // layer unpacked on re-import (the code layer is on top).
    std::fs::write(
        py.path().join("src/app.py"),
        std::fs::read_to_string(py.path().join("src/app.py")).unwrap() + "\n# edited\n",
    )
    .unwrap();
    let (py_again, _) = build(&py_t, &options(&py_t, layout.path(), &supervisor));
    assert_eq!(py_again.layers_built, 1);
    let again = rt
        .block_on(esb_image::import_to_containerd(
            layout.path(),
            std::slice::from_ref(&py_ref),
            &socket,
        ))
        .expect("re-import");
    assert_eq!(again[0].layers_unpacked, 1, "{again:?}");
    assert_eq!(again[0].blobs_written, 3, "{again:?}"); // code layer, config, manifest
    containerd.stop().unwrap();
}
