//! Workers that die, on a whole box (`esb up` of the e2e app, real containerd), through
//! real clients (curl on the API, boto3 on the Invoke API and DynamoDB):
//!
//! - kill -9 of the provisioned worker's task: the pool is back to its number without any
//!   request (the agent's `WatchWorkers` stream; the janitor is kept out of the way with a
//!   long `HEARTBEAT_INTERVAL`), and `esb status` says what happened;
//! - kill -9 of an idle worker's task, then 5 requests in a row: all 200;
//! - the same after `DestroyContainer` through the agent's API;
//! - a function whose worker dies while handling a request (its task killed), or whose
//!   runtime exits: that request answers its error once, and the function ran once.

mod boxkit;

use std::process::{Command, Stdio};

use boxkit::{e2e_app, function, workers, TestBox};
use serde_json::Value;

/// `ctr tasks kill -s SIGKILL` on the box's private containerd (what the OOM killer or a
/// crash does to a worker).
fn kill_task(b: &TestBox, id: &str) {
    let sock = b.state.join("containerd/containerd.sock");
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["-n", "esb-runtime", "tasks", "kill", "-s", "SIGKILL", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr tasks kill {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until containerd no longer runs the worker's task (stopped, or already removed):
/// the worker is dead, whatever the gateway knows of it yet.
fn wait_dead(b: &TestBox, id: &str) {
    let sock = b.state.join("containerd/containerd.sock");
    b.wait_for(&format!("the task of {id} dead"), || {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["-n", "esb-runtime", "tasks", "ls"])
            .output()
            .unwrap();
        !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
    });
}

/// `DestroyContainer` through the agent's gRPC API (its unix socket).
fn destroy_container(b: &TestBox, id: &str) -> bool {
    let sock = b.state.join("agent.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = esb_agent_api::connect(&sock.display().to_string())
            .await
            .unwrap();
        client
            .destroy_container(esb_agent_api::v1::DestroyContainerRequest {
                function_name: "public".into(),
                container_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .success
    })
}

/// The idle workers of `public` (its provisioned one, and any a request started), once
/// there is one.
fn idle_public(b: &TestBox) -> Vec<String> {
    let mut ids = Vec::new();
    b.wait_for("an idle worker of public", || {
        ids = workers(&b.status(), "public", "idle");
        !ids.is_empty()
    });
    ids
}

/// Five requests in a row to /public (curl): all must answer 200.
fn five_requests(b: &TestBox, after: &str) {
    for i in 0..5 {
        let (code, body) = b.curl(&[&b.url("/public")]);
        assert_eq!(code, 200, "request {i} after {after}: {body}");
    }
}

/// `client.py ARGS` (boto3), its JSON.
fn client(b: &TestBox, args: &[&str]) -> Value {
    let mut all = vec!["client.py"];
    all.extend_from_slice(args);
    let out = b.python(&all).output().unwrap();
    assert!(
        out.status.success(),
        "client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn runs(b: &TestBox, id: &str) -> u64 {
    client(b, &["runs", id])["runs"].as_u64().unwrap()
}

#[test]
fn dead_workers_cost_no_request_and_crashes_run_once() {
    let mut b = TestBox::new(&e2e_app());
    // No janitor round during the test: what restores the pools is the agent's stream.
    b.set("HEARTBEAT_INTERVAL", "3600");
    b.set("POOL_ACQUIRE_TIMEOUT", "30");
    b.up();

    // 1. kill -9 of the idle provisioned worker: replaced without any request.
    let first = idle_public(&b);
    assert_eq!(first.len(), 1, "{first:?}");
    let first = &first[0];
    kill_task(&b, first);
    b.wait_for("public's provisioned worker replaced", || {
        let w = workers(&b.status(), "public", "idle");
        w.len() == 1 && w[0] != *first
    });
    let f = function(&b.status(), "public");
    assert_eq!(
        f["last_replacement"]["message"],
        format!("worker {first} exited (code 137) while idle; replaced"),
        "{f:#}"
    );
    let human = b.ok(&["status"]);
    assert!(
        human.contains(&format!(
            "last worker lost: worker {first} exited (code 137)"
        )),
        "{human}"
    );

    // 2. kill -9 of the idle worker(s), then requests at once: all 200.
    let killed = idle_public(&b);
    for id in &killed {
        kill_task(&b, id);
    }
    for id in &killed {
        wait_dead(&b, id);
    }
    five_requests(&b, "kill -9");

    // 3. DestroyContainer through the agent, then requests at once: all 200.
    let destroyed = idle_public(&b);
    for id in &destroyed {
        assert!(!killed.contains(id), "{id} was killed");
        assert!(destroy_container(&b, id), "{id}");
    }
    five_requests(&b, "DestroyContainer");
    b.wait_for("provisioned concurrency restored", || {
        let w = workers(&b.status(), "public", "idle");
        !w.is_empty() && w.iter().all(|id| !destroyed.contains(id))
    });
    assert_eq!(function(&b.status(), "public")["breaker"], "closed");

    // 4. The worker dies while its request runs: that request fails once (502, the
    // Invoke API's ServiceException), the function ran once.
    let hang = b
        .python(&[
            "client.py",
            "invoke",
            "crasher",
            r#"{"id":"hang-1","mode":"hang"}"#,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    b.wait_for("crasher running", || runs(&b, "hang-1") == 1);
    let busy = workers(&b.status(), "crasher", "busy");
    assert_eq!(busy.len(), 1, "{busy:?}");
    kill_task(&b, &busy[0]);
    let out = hang.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], 502, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("ServiceException")),
        "{answer}"
    );
    assert_eq!(runs(&b, "hang-1"), 1);

    // 5. The runtime exits mid-request: Unhandled, once; ran once.
    let answer = client(
        &b,
        &["invoke", "crasher", r#"{"id":"exit-1","mode":"exit"}"#],
    );
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["function_error"], "Unhandled", "{answer}");
    assert_eq!(runs(&b, "exit-1"), 1);

    b.down_clean();
}
