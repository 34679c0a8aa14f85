//! Idle pause on a whole box (`esb up` of the e2e app, real containerd), through real
//! clients (curl on the API, boto3 on the Invoke API), with `ESB_CONTAINER_PAUSE=1` and
//! `ESB_PAUSE_IDLE_SECONDS=2`:
//!
//! - a warm worker left idle is frozen: `esb status` and `/metrics/containers` show it
//!   PAUSED and the kernel reports its cgroup frozen (`cgroup.events` / `freezer.state`;
//!   the agent freezes it directly, containerd's task stays RUNNING);
//! - the next request is answered correctly by that same worker (thawed, not replaced);
//! - concurrent requests to a paused worker are all answered;
//! - a paused worker that a request holds runs again: RUNNING, cgroup thawed.
//!
//! No latency is asserted; every wait is a bounded poll.

mod boxkit;

use std::process::{Command, Stdio};

use boxkit::{e2e_app, function, workers, TestBox};
use serde_json::Value;

/// Waits until `name` has exactly one worker, in `state`; its id.
fn only_worker(b: &TestBox, name: &str, state: &str) -> String {
    let mut id = String::new();
    b.wait_for(&format!("one {state} worker of {name}"), || {
        let s = b.status();
        let all = function(&s, name)["workers"]
            .as_array()
            .map(|w| w.len())
            .unwrap_or(0);
        let w = workers(&s, name, state);
        if all == 1 && w.len() == 1 {
            id = w[0].clone();
            true
        } else {
            false
        }
    });
    id
}

/// The containerd status of a worker's task (`ctr tasks ls`), e.g. `PAUSED`.
fn task_status(b: &TestBox, id: &str) -> String {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(b.state.join("containerd/containerd.sock"))
        .args(["-n", "esb-runtime", "tasks", "ls"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string()
}

/// Whether the worker's cgroup is frozen: `frozen 1` in its `cgroup.events` (cgroup v2),
/// or `FROZEN` in its `freezer.state` (v1).
fn frozen(b: &TestBox, id: &str) -> bool {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let rel = format!("esb-runtime/{}/{id}", b.netns);
    let (path, want) = if root.join("cgroup.controllers").exists() {
        (root.join(&rel).join("cgroup.events"), "frozen 1")
    } else {
        (
            root.join("freezer").join(&rel).join("freezer.state"),
            "FROZEN",
        )
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().any(|l| l.trim() == want)
}

/// `/metrics/containers` (with an IdToken): the entry of worker `id`.
fn container(b: &TestBox, token: &str, id: &str) -> Value {
    let (code, body) = b.curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &b.url("/metrics/containers"),
    ]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["container_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {v:#}"))
}

/// POST /echo with `body`: the function's answer (checked: 200, the body echoed).
fn echo(b: &TestBox, token: &str, body: &str) -> Value {
    let (code, text) = b.curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-d",
        body,
        &b.url("/echo"),
    ]);
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["body"], body, "{v}");
    v
}

/// `client.py invoke crasher PAYLOAD` as a child (boto3 Invoke API).
fn invoke_crasher(b: &TestBox, payload: &str) -> std::process::Child {
    b.python(&["client.py", "invoke", "crasher", payload])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn crasher_answer(child: std::process::Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["function_error"].is_null(), "{v}");
    let payload: Value = serde_json::from_str(v["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["survived"], true, "{payload}");
    payload
}

#[test]
fn idle_workers_are_paused_and_resumed_by_requests() {
    let mut b = TestBox::new(&e2e_app());
    b.set("ESB_CONTAINER_PAUSE", "1");
    b.set("ESB_PAUSE_IDLE_SECONDS", "2");
    b.set("POOL_ACQUIRE_TIMEOUT", "30");
    b.up();
    let token = b.token();

    // A warm worker left idle is frozen, and shown so everywhere.
    let first = echo(&b, &token, "one");
    let id = only_worker(&b, "echo", "paused");
    assert!(frozen(&b, &id), "the cgroup of {id} is not frozen");
    assert_eq!(task_status(&b, &id), "RUNNING");
    let c = container(&b, &token, &id);
    assert_eq!(c["state"], "PAUSED", "{c}");
    assert_eq!(c["function_name"], "echo", "{c}");
    for k in ["memory_max", "memory_current", "cpu_usage_ns"] {
        assert!(c[k].is_u64(), "{k} in {c}");
    }
    assert!(c["memory_max"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["managed"], true, "{c}");
    let human = b.ok(&["status"]);
    let line = human
        .lines()
        .find(|l| l.trim_start().starts_with("echo "))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(line.contains("(paused 1)"), "{human}");

    // The next request is answered by the same worker, thawed.
    let second = echo(&b, &token, "two");
    assert_eq!(second["instance"], first["instance"]);

    // Concurrent requests to a paused worker: all answered.
    only_worker(&b, "echo", "paused");
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let body = format!("c{i}");
            b.in_host("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "120",
                    "--cacert",
                    &b.state.join("tls/ca.pem").display().to_string(),
                    "-w",
                    "\n%{http_code}",
                    "-X",
                    "POST",
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    "-d",
                    &body,
                    &b.url("/echo"),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .map(|c| (body, c))
                .unwrap()
        })
        .collect();
    for (body, c) in calls {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        assert_eq!(code.trim(), "200", "{text}");
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["body"], body.as_str(), "{v}");
    }

    // A paused worker held by a request runs: RUNNING, its cgroup thawed.
    let before = crasher_answer(invoke_crasher(&b, r#"{"id":"pause-1","sleep":0}"#));
    let crasher = only_worker(&b, "crasher", "paused");
    assert!(frozen(&b, &crasher));
    let held = invoke_crasher(&b, r#"{"id":"pause-2","sleep":8}"#);
    assert_eq!(only_worker(&b, "crasher", "busy"), crasher);
    assert_eq!(container(&b, &token, &crasher)["state"], "RUNNING");
    assert_eq!(task_status(&b, &crasher), "RUNNING");
    assert!(
        !frozen(&b, &crasher),
        "the cgroup of {crasher} is still frozen"
    );
    let after = crasher_answer(held);
    assert_eq!(after["instance"], before["instance"]);

    // The gateway counted the pauses and the resumes.
    let (_, metrics) = b.curl(&[&b.url("/metrics")]);
    for m in [
        "esb_gateway_pauses_total{function=\"echo\"}",
        "esb_gateway_resumes_total{function=\"echo\"}",
        "esb_gateway_resumes_total{function=\"crasher\"}",
    ] {
        assert!(metrics.contains(m), "{m} not in:\n{metrics}");
    }

    b.down_clean();
}
