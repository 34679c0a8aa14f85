//! Workers that die: an idle one costs no request (the request goes to another worker),
//! a provisioned one is replaced without traffic (here through the heartbeat's list: the
//! scaffolding agent has no `WatchWorkers`; the real agent's stream is tested end to end
//! in crates/esb/tests/worker_loss.rs), and one that dies while handling a request fails
//! that request once without running it again — with the test scaffolding agent of
//! `common` (real `esb-supervisor` workers on 127.0.0.1).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn admin(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// Polls `/status` until `f` holds (generous deadline).
async fn status_until(b: &TestBox, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, v) = admin_get(&admin(b.dir.path()), "/status").await;
        assert_eq!(code, 200, "{v}");
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn function<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no function {name}: {v:#}"))
}

/// Ids of the function's workers in `state`.
fn workers(v: &Value, name: &str, state: &str) -> Vec<String> {
    function(v, name)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == state)
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_killed_costs_no_request() {
    // No heartbeat during the test: only the request path can notice the dead worker.
    let b = TestBox::start(vec![spec("echo", "python:gwfn.version")], |c| {
        c.admin_socket = Some(admin(&c.data_dir));
        c.heartbeat = Duration::from_secs(3600);
    })
    .await;
    let client = b.client();
    let first = client.invoke("echo", b"{}", &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let v = status_until(&b, "one idle worker", |v| {
        workers(v, "echo", "idle").len() == 1
    })
    .await;
    let dead = workers(&v, "echo", "idle").remove(0);
    assert!(b.agent.kill(&dead));

    for i in 0..5 {
        let r = client.invoke("echo", b"{}", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(r.header("x-amz-function-error").is_none(), "{}", r.text());
    }
    let v = status_until(&b, "the dead worker replaced", |v| {
        let w = workers(v, "echo", "idle");
        w.len() == 1 && w[0] != dead
    })
    .await;
    let f = function(&v, "echo");
    assert_eq!(f["replacements"], 1, "{f:#}");
    let note = f["last_replacement"]["message"].as_str().unwrap();
    assert!(
        note.contains(&dead) && note.contains("could not be reached"),
        "{note}"
    );
    assert_eq!(f["breaker"], "closed");
    assert!(f["last_error"].is_null(), "{f:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_worker_lost_is_replaced_without_requests() {
    let mut s = spec("warm", "python:gwfn.version");
    s.provisioned = 2;
    s.reserved = Some(2);
    let b = TestBox::start(vec![s], |c| {
        c.admin_socket = Some(admin(&c.data_dir));
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    let v = status_until(&b, "two provisioned workers", |v| {
        workers(v, "warm", "idle").len() == 2
    })
    .await;
    let before = workers(&v, "warm", "idle");
    assert!(b.agent.kill(&before[0]));
    // No request: the heartbeat's list shows it gone; the pool is back to two.
    let v = status_until(&b, "provisioned concurrency restored", |v| {
        let w = workers(v, "warm", "idle");
        w.len() == 2 && !w.contains(&before[0])
    })
    .await;
    assert!(workers(&v, "warm", "idle").contains(&before[1]));
    let f = function(&v, "warm");
    let note = f["last_replacement"]["message"].as_str().unwrap();
    assert_eq!(
        note,
        format!("worker {} disappeared while idle; replaced", before[0])
    );
    assert_eq!(b.agent.running_of("warm"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dying_midway_fails_its_request_once_and_runs_it_once() {
    let b = TestBox::start(vec![spec("counted", "python:gwfn.counted")], |c| {
        c.admin_socket = Some(admin(&c.data_dir));
        c.heartbeat = Duration::from_secs(3600);
    })
    .await;
    let client = b.client();
    // Warm first: the request then goes over a kept-alive connection.
    let warm = b.dir.path().join("warm-count");
    let go = b.dir.path().join("go");
    std::fs::write(&go, "").unwrap();
    let payload = |count: &Path, wait_for: &Path| {
        json!({"count": count, "wait_for": wait_for})
            .to_string()
            .into_bytes()
    };
    let r = client.invoke("counted", &payload(&warm, &go), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["runs"], 1);

    let count = b.dir.path().join("count");
    let never = b.dir.path().join("never");
    let body = payload(&count, &never);
    let c2 = client.clone();
    let call = tokio::spawn(async move { c2.invoke("counted", &body, &[]).await });
    wait_until("the function ran", Duration::from_secs(60), || {
        std::fs::read_to_string(&count).is_ok_and(|t| t.lines().count() == 1)
    })
    .await;
    let v = status_until(&b, "the worker busy", |v| {
        workers(v, "counted", "busy").len() == 1
    })
    .await;
    let busy = workers(&v, "counted", "busy").remove(0);
    assert!(b.agent.kill(&busy));
    let r = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("ServiceException"),
        "{}",
        r.text()
    );
    // Answered once, and the function did not run again.
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\n");
    // The next request is served by a new worker.
    std::fs::write(&never, "").unwrap();
    let again = b.dir.path().join("again");
    let r = client
        .invoke("counted", &payload(&again, &never), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\n");
}
