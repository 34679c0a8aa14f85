//! The box's registry, as root with real parts: a box started with
//! `ESB_IMAGE_SOURCE=registry` imports nothing, so every worker of the end-to-end suite runs
//! from an image its agent pulled through the relay at 10.99.0.1:5010 (control namespace),
//! trusted through the box CA in containerd's hosts directory; the registry, seen with curl
//! from the control namespace, lists every function; a registry that is down gives a clear
//! pull error and the next request after its restart is served; `esb build` pushes nothing
//! when nothing changed and one layer for a code change; a rebuild deletes the old revision
//! from the registry; `esb down` leaves no registry process and no control namespace.

mod boxkit;

use std::process::Command;

use boxkit::e2e_box;
use serde_json::Value;

const FUNCTIONS: [&str; 8] = [
    "echo", "public", "chain", "recorder", "storage", "limited", "failing", "slow",
];

fn component(status: &Value, name: &str) -> Value {
    status["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no component {name} in {status}"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn registry_mode_serves_the_e2e_app_from_pulled_images() {
    let mut b = e2e_box();
    b.set("ESB_IMAGE_SOURCE", "registry");
    b.up();
    let ca = b.state.join("tls/ca.pem").display().to_string();
    let control_get = |path: &str| -> Value {
        let out = b
            .in_control("curl")
            .args(["-sS", "--fail", "--cacert", &ca])
            .arg(format!("https://10.99.0.1:5010{path}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {path}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // Every function's image is in the registry, seen from the control namespace through
    // the relay, the certificate checked for 10.99.0.1 with the box CA.
    let catalog = control_get("/v2/_catalog");
    for f in FUNCTIONS {
        let repo = format!("esb/functions/{f}");
        assert!(
            catalog["repositories"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == repo.as_str())),
            "{repo} missing from {catalog}"
        );
    }

    // The registry down (the box held still so it does not restart it yet): a cold start
    // fails with the reference and the registry's answer; after the restart it works.
    let status = b.status();
    let box_pid = status["pid"].as_i64().unwrap() as i32;
    let registry_pid = component(&status, "registry")["pid"].as_i64().unwrap() as i32;
    // SAFETY: signals to the box process and its registry child, PIDs from its status.
    unsafe {
        libc::kill(box_pid, libc::SIGSTOP);
        libc::kill(registry_pid, libc::SIGKILL);
    }
    let failed = b.esb(&["invoke", "echo", "--payload", "{}"]);
    // SAFETY: as above.
    unsafe {
        libc::kill(box_pid, libc::SIGCONT);
    }
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("503"),
        "the client gets 503: {}",
        text(&failed)
    );
    // The pool reports why, naming the reference and the registry.
    let echo = b.status()["functions"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "echo").cloned())
        .unwrap();
    let why = echo["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("pull 10.99.0.1:5010/esb/functions/echo@sha256:")
            && why.contains("https://10.99.0.1:5010"),
        "the pool's error names the reference and the registry: {echo}"
    );
    b.wait_for("the registry restarted", || {
        let c = component(&b.status(), "registry");
        c["state"] == "running" && c["restarts"].as_u64() >= Some(1)
    });
    let served = b.ok(&["invoke", "echo", "--payload", "{}"]);
    assert!(
        served.contains("statusCode") && served.contains("version"),
        "{served}"
    );

    // The whole suite, every worker from a pulled image (nothing was imported).
    b.pytest("test_box.py");
    let agent_log = std::fs::read_to_string(b.state.join("logs/agent.log")).unwrap();
    for f in ["echo", "public", "chain", "recorder", "storage"] {
        assert!(
            agent_log
                .lines()
                .any(|l| l.contains("pulled") && l.contains(&format!("esb/functions/{f}@"))),
            "no pull of {f} in the agent log"
        );
    }
    let images = Command::new("ctr")
        .arg("--address")
        .arg(b.state.join("containerd/containerd.sock"))
        .args(["--namespace", "esb-runtime", "images", "ls", "-q"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&images.stdout).to_string();
    assert!(!names.trim().is_empty(), "{}", text(&images));
    for name in names.lines() {
        assert!(
            name.starts_with("10.99.0.1:5010/esb/functions/") && name.contains("@sha256:"),
            "an image not pulled by digest from the box's registry: {name}"
        );
    }

    // `esb build` with nothing changed pushes nothing (the same digests as the box's build).
    let same = b.ok(&["build"]);
    for f in FUNCTIONS {
        assert!(
            same.lines()
                .any(|l| l.contains(&format!("  {f}: ")) && l.contains("nothing sent")),
            "{f} pushed again:\n{same}"
        );
    }
    // A code change pushes one layer, of that function only.
    std::fs::write(b.app.join("functions/echo/version.txt"), "v2-registry\n").unwrap();
    let changed = b.ok(&["build"]);
    assert!(
        changed
            .lines()
            .any(|l| l.contains("pushed echo:") && l.contains("(1 layer(s) sent")),
        "{changed}"
    );
    assert_eq!(
        changed.lines().filter(|l| l.contains("pushed ")).count(),
        1,
        "{changed}"
    );

    // The box's rebuild serves the new revision (pulled) and deletes the old one from the
    // registry.
    b.ok(&["watch", "--once"]);
    let revisions: Value =
        serde_json::from_slice(&std::fs::read(b.state.join("run/revisions.json")).unwrap())
            .unwrap();
    let digest = revisions["echo"].as_str().unwrap();
    let tags = control_get("/v2/esb/functions/echo/tags/list");
    assert_eq!(
        tags["tags"],
        serde_json::json!([&digest["sha256:".len().."sha256:".len() + 12]]),
        "{tags}"
    );
    b.wait_for("echo served from the new revision", || {
        b.esb(&["invoke", "echo", "--payload", "{}"])
            .stdout
            .windows(11)
            .any(|w| w == b"v2-registry")
    });

    let status = b.ok(&["status"]);
    assert!(status.contains("registry  10.99.0.1:5010"), "{status}");
    b.down_clean();
}
