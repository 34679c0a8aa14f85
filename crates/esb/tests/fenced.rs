//! Workers least-privileged, against `esb up` (issue 16): a function, written as a user
//! would, tries to leave its worker — a user namespace through `unshare -U` and through
//! `clone(CLONE_NEWUSER)`, `io_uring_setup`, a gigabyte written straight to its console,
//! a fork bomb, a memory hog, a /tmp fill — and each attempt fails or stays inside its
//! ceiling while another function and the box's services keep answering.

mod boxkit;

use std::path::Path;

use boxkit::TestBox;

fn fenced_app() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fenced")
}

/// The bystander function and the box's services still answer.
fn box_still_serves(b: &TestBox, after: &str) {
    let (ok, v, text) = b.invoke("bystander", "{}");
    assert!(ok && v["ok"] == true, "after {after}: bystander: {text}");
    let status = b.status();
    for c in status["components"].as_array().unwrap() {
        assert!(
            c["pid"].as_i64().is_some_and(|p| p > 0),
            "after {after}: component {} not running: {status}",
            c["name"]
        );
    }
    let out = b
        .in_host("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{}/health", b.s3_port),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "after {after}: S3 /health failed");
}

/// Total size of the worker console files of this box.
fn console_bytes(b: &TestBox) -> u64 {
    std::fs::read_dir(b.state.join("agent/workers"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".log"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_worker_cannot_leave_its_fence_or_starve_the_box() {
    let mut b = TestBox::new(&fenced_app());
    b.set("ESB_WORKERS_MAX_MEMORY_MB", "3000");
    b.set("ESB_WORKERS_MAX_PIDS", "5000");
    let out = b.up();
    assert!(out.contains("esb is up"), "{out}");

    // No user namespace (either way), no io_uring.
    let (ok, v, text) = b.invoke("probe", r#"{"op":"escape"}"#);
    assert!(ok, "{text}");
    assert_eq!(v["clone_newuser"]["ok"], false, "{text}");
    assert_eq!(v["clone_newuser"]["errno"], "EPERM", "{text}");
    assert_eq!(v["io_uring_setup"]["ok"], false, "{text}");
    assert_eq!(v["io_uring_setup"]["errno"], "EPERM", "{text}");
    assert_eq!(v["unshare_user"]["ok"], false, "{text}");
    box_still_serves(&b, "the escape attempts");

    // Another worker's :8080 is out of reach (the gateway's path works: box_still_serves);
    // of 10.88.0.1 only the gateway and the three services answer.
    let status = b.status();
    let bystander = status["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "bystander")
        .and_then(|f| {
            f["workers"].as_array()?.first()?["id"]
                .as_str()
                .map(str::to_string)
        })
        .expect("a bystander worker");
    let addr = std::process::Command::new("ip")
        .args([
            "netns", "exec", &bystander, "ip", "-4", "-o", "addr", "show", "eth0",
        ])
        .output()
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no address of {bystander}: {addr}"))
        .to_string();
    let (ok, v, text) = b.invoke("probe", &format!(r#"{{"op":"neighbor","ip":"{ip}"}}"#));
    assert!(ok, "{text}");
    assert_eq!(
        v["reached"], false,
        "a worker reached {ip}:8080 directly: {text}"
    );
    // Every port, quickly (a dropped port costs the whole timeout): none beyond the four.
    let expected = serde_json::json!([443, 8001, 9000, 9428]);
    let (ok, v, text) = b.invoke("probe", r#"{"op":"scan","timeout":0.7}"#);
    assert!(ok, "{text}");
    let open = v["open"].as_array().cloned().unwrap_or_default();
    assert!(
        !open.is_empty()
            && open
                .iter()
                .all(|p| expected.as_array().unwrap().contains(p)),
        "ports of 10.88.0.1 open to a worker: {text}"
    );
    // The four, with time to answer on a loaded machine.
    let (ok, v, text) = b.invoke(
        "probe",
        r#"{"op":"scan","timeout":5,"ports":[443,8001,9000,9428]}"#,
    );
    assert!(ok, "{text}");
    assert_eq!(
        v["open"], expected,
        "ports of 10.88.0.1 open to a worker: {text}"
    );

    // The workers' parent cgroup carries the box's ceilings; workers are the kernel's
    // first choice when memory runs out.
    let parent = format!("esb-runtime/{}", b.netns);
    let root = Path::new("/sys/fs/cgroup");
    let (mem, pids) = if root.join("cgroup.controllers").exists() {
        (
            root.join(&parent).join("memory.max"),
            root.join(&parent).join("pids.max"),
        )
    } else {
        (
            root.join("memory")
                .join(&parent)
                .join("memory.limit_in_bytes"),
            root.join("pids").join(&parent).join("pids.max"),
        )
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(read(&mem), (3000u64 << 20).to_string(), "{}", mem.display());
    assert_eq!(read(&pids), "5000", "{}", pids.display());
    let mut workers = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if cgroup.contains(&format!("/{parent}/")) {
            workers += 1;
            assert_eq!(
                read(&e.path().join("oom_score_adj")),
                "1000",
                "worker process {}",
                e.path().display()
            );
        }
    }
    assert!(workers > 0, "no worker process found under /{parent}");

    // A gigabyte written straight to the console leaves at most the cap (10 MiB) on disk.
    let (ok, v, text) = b.invoke("probe", r#"{"op":"console","mib":1024}"#);
    assert!(ok, "{text}");
    assert_eq!(v["written_mib"], 1024, "{text}");
    let on_disk = console_bytes(&b);
    assert!(
        on_disk <= 10 << 20,
        "console files hold {on_disk} bytes after 1 GiB was written"
    );
    box_still_serves(&b, "1 GiB on the console");

    // A fork bomb stops at the worker's process limit.
    // Time enough to reach the limit on a loaded machine (it returns at the first EAGAIN).
    let (ok, v, text) = b.invoke("probe", r#"{"op":"fork","seconds":90}"#);
    assert!(ok, "{text}");
    assert_eq!(
        v["failed"], "EAGAIN",
        "the fork bomb was not stopped: {text}"
    );
    assert!(v["forked"].as_u64().unwrap() < 1024, "{text}");
    box_still_serves(&b, "the fork bomb");

    // A memory hog and a /tmp fill fail inside their 512 MB.
    let (ok, _, text) = b.invoke("probe", r#"{"op":"hog"}"#);
    assert!(!ok, "the memory hog returned: {text}");
    box_still_serves(&b, "the memory hog");
    let (ok, _, text) = b.invoke("probe", r#"{"op":"tmpfs","mib":700}"#);
    assert!(!ok, "700 MiB in /tmp of a 512 MB function: {text}");
    box_still_serves(&b, "the /tmp fill");

    b.down_clean();
    assert!(
        !root.join("memory").join(&parent).exists() && !root.join(&parent).exists(),
        "the workers' parent cgroup outlived esb down"
    );
}
