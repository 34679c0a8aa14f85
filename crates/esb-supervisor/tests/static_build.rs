//! The static build: `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p
//! esb-supervisor --target x86_64-unknown-linux-gnu` produces a binary with no program
//! interpreter and no shared library, and that binary serves a real function.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

#[test]
fn static_release_build_is_static_and_serves_invocations() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = target_dir().join("esb-supervisor-static");
    let bin = esb_supervisor::build_static(&workspace, &target_dir).expect("static build");
    assert!(
        esb_supervisor::is_static_elf(&bin).unwrap(),
        "{} is dynamically linked",
        bin.display()
    );

    let out = Command::new(&bin)
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("esb-supervisor "));

    // The static binary runs a real function, with an empty environment but ours.
    let function = esb_test_functions::rust_function();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&function, dir.path().join("bootstrap")).unwrap();
    let mut child = Command::new(&bin)
        .env_clear()
        .env("ESB_SUPERVISOR_LISTEN", "127.0.0.1:0")
        .env("ESB_RUNTIME_API_LISTEN", "127.0.0.1:0")
        .env("ESB_RUNTIME", "provided.al2023")
        .env("LAMBDA_TASK_ROOT", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|l| l.starts_with("esb-supervisor: listening "))
        .expect("listening line");
    let addr = line
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_start_matches("invoke=")
        .parse()
        .unwrap();
    let r = request(addr, "POST", INVOKE_PATH, &[], br#"{"static":true}"#);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((r.status, r.json()), (200, json!({"static": true})));
}
