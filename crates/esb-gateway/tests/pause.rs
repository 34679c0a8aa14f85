//! Idle pause (`ESB_CONTAINER_PAUSE`) against the test agent, whose PauseContainer stops
//! a worker's processes (SIGSTOP) and ResumeContainer continues them: a request delivered
//! to a worker still stopped would get no answer (the test fails on its status), so every
//! answer below shows the worker was thawed before delivery. No timing is asserted: waits
//! are polls with generous deadlines.

mod common;

use std::time::Duration;

use common::{admin_get, is_stopped, spec, wait_until, TestBox};
use serde_json::Value;

const FUNCTION: &str = "pz";

/// One worker at most (capacity 1), so that requests meet the paused worker or wait for
/// it; paused after 300 ms idle.
async fn start(tweak: impl FnOnce(&mut esb_gateway::Config)) -> TestBox {
    let mut f = spec(FUNCTION, "python:gwfn.version");
    f.reserved = Some(1);
    f.timeout = Duration::from_secs(10);
    f.env.push(("ESB_TEST_REV".into(), "v1".into()));
    TestBox::start(vec![f], |c| {
        c.container_pause = true;
        c.pause_idle = Duration::from_millis(300);
        c.admin_socket = Some(c.data_dir.join("admin.sock"));
        tweak(c);
    })
    .await
}

/// Invokes the function (the event may hold the version handler's `wait_for`); returns
/// the process id of the worker that answered, after checking the answer.
async fn invoke(b: &TestBox, event: Value) -> u64 {
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        b.client()
            .invoke(FUNCTION, event.to_string().as_bytes(), &[]),
    )
    .await
    .expect("an answer within 60 s");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-amz-function-error").is_none(), "{}", r.text());
    let v = r.json();
    assert_eq!(v["rev"], "v1", "{v}");
    v["pid"].as_u64().expect("pid")
}

async fn status(b: &TestBox) -> Value {
    let (code, v) = admin_get(&b.dir.path().join("admin.sock"), "/status").await;
    assert_eq!(code, 200);
    v["functions"][0].clone()
}

/// The states of the function's workers in the admin status.
async fn states(b: &TestBox) -> Vec<String> {
    status(b).await["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_state(b: &TestBox, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = states(b).await;
        if s == [want] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker not {want} in 30 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn containers(b: &TestBox) -> Vec<Value> {
    let bearer = format!("Bearer {}", b.token().await);
    let r = b
        .client()
        .get("/metrics/containers", &[("authorization", &bearer)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["containers"].as_array().unwrap().clone()
}

/// `n` concurrent requests to the function while its one worker is paused (or pausing):
/// all answered by that worker (process `pid`), which was resumed, and no other made.
async fn concurrent_calls_resume_the_one_worker(b: &TestBox, n: usize, pid: u64) {
    let agent = b.agent.clone();
    let before = *agent.resumes.lock().unwrap();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let client = b.client();
            tokio::spawn(async move { client.invoke(FUNCTION, b"null", &[]).await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["pid"].as_u64(), Some(pid));
    }
    assert!(*agent.resumes.lock().unwrap() > before);
    assert_eq!(*agent.created.lock().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_worker_is_resumed_before_delivery() {
    let (log_addr, lines) = common::capture_server().await;
    let b = start(|c| c.victorialogs_url = Some(format!("http://{log_addr}"))).await;
    let pid = invoke(&b, Value::Null).await;
    let agent = b.agent.clone();
    let id = agent.running().pop().expect("one worker");
    let sup = agent.pid(&id).unwrap();

    // Idle: paused through the agent, shown as paused.
    wait_state(&b, "paused").await;
    assert_eq!(agent.paused(), std::slice::from_ref(&id));
    assert!(is_stopped(sup), "the supervisor is not stopped");
    assert!(is_stopped(pid as u32), "the runtime is not stopped");
    assert_eq!(status(&b).await["pool"]["paused"], 1);
    let list = containers(&b).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let c = &list[0];
    assert_eq!(c["state"], "PAUSED", "{c}");
    assert_eq!(c["function_name"], FUNCTION);
    assert_eq!(c["container_id"], id.as_str());
    for k in [
        "memory_max",
        "memory_current",
        "cpu_usage_ns",
        "collected_at",
    ] {
        assert!(c[k].is_u64() || c[k].is_i64(), "{k} in {c}");
    }
    assert_eq!(c["node"], "test");
    assert_eq!(c["managed"], true);

    // The next request thaws it (same worker, no cold start) and is answered.
    assert_eq!(invoke(&b, Value::Null).await, pid);
    assert_eq!(*agent.resumes.lock().unwrap(), 1);
    assert_eq!(*agent.created.lock().unwrap(), 1);
    // Its access record says so (the first, cold one does not).
    let of_function = |l: &String| l.contains("\"kind\":\"access\"") && l.contains("\"function\"");
    wait_until(
        "two invocations' access records",
        Duration::from_secs(30),
        || {
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| of_function(l))
                .count()
                >= 2
        },
    )
    .await;
    let access: Vec<Value> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| of_function(l))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    assert_eq!(access[0]["cold"], true, "{access:?}");
    assert!(access[0].get("resumed").is_none(), "{access:?}");
    assert_eq!(access[1]["cold"], false, "{access:?}");
    assert_eq!(access[1]["resumed"], true, "{access:?}");
    // While a request holds it, it runs.
    let gate = b.dir.path().join("gate");
    let held = {
        let (client, gate) = (b.client(), gate.clone());
        tokio::spawn(async move {
            let ev = serde_json::json!({"wait_for": gate});
            client
                .invoke(FUNCTION, ev.to_string().as_bytes(), &[])
                .await
        })
    };
    wait_state(&b, "busy").await;
    assert!(!is_stopped(sup));
    assert_eq!(containers(&b).await[0]["state"], "RUNNING");
    std::fs::write(&gate, "").unwrap();
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Concurrent requests to a paused worker: all answered, by that one worker.
    wait_state(&b, "paused").await;
    concurrent_calls_resume_the_one_worker(&b, 6, pid).await;

    // Requests that come while the worker is being paused wait for it (it is out of the
    // pool) and resume it: none goes to it while it stops.
    *agent.pause_delay.lock().unwrap() = Duration::from_millis(1500);
    wait_state(&b, "pausing").await;
    concurrent_calls_resume_the_one_worker(&b, 4, pid).await;
    *agent.pause_delay.lock().unwrap() = Duration::ZERO;

    // A worker that cannot be resumed is replaced: the request goes to a new one.
    wait_state(&b, "paused").await;
    *agent.fail_resume.lock().unwrap() = true;
    let other = invoke(&b, Value::Null).await;
    assert_ne!(other, pid);
    assert_eq!(*agent.created.lock().unwrap(), 2);
    wait_until(
        "the unresumable worker destroyed",
        Duration::from_secs(30),
        || !agent.running().contains(&id),
    )
    .await;
    let last = status(&b).await["last_replacement"]["message"].clone();
    assert!(
        last.as_str().unwrap_or("").contains("could not be resumed"),
        "{last}"
    );
    *agent.fail_resume.lock().unwrap() = false;

    // The counters.
    let text = b.client().get("/metrics", &[]).await.text();
    assert!(
        text.contains(&format!(
            "esb_gateway_resumes_total{{function=\"{FUNCTION}\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "esb_gateway_pauses_total{{function=\"{FUNCTION}\"}}"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_workers_are_scaled_down_and_not_taken_for_lost() {
    let mut b = start(|c| {
        c.heartbeat = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(3);
    })
    .await;
    invoke(&b, Value::Null).await;
    let agent = b.agent.clone();
    let id = agent.running().pop().expect("one worker");
    wait_state(&b, "paused").await;
    // Heartbeats pass (the agent lists it PAUSED): it is neither lost nor replaced.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let s = status(&b).await;
    assert_eq!(s["replacements"], 0, "{s}");
    // Idle past GATEWAY_IDLE_TIMEOUT_SECONDS: destroyed like any idle worker.
    wait_until("the paused worker reaped", Duration::from_secs(30), || {
        agent.running().is_empty()
    })
    .await;
    assert!(!agent.running().contains(&id));
    assert!(states(&b).await.is_empty());
    // And the next request starts a worker as usual.
    invoke(&b, Value::Null).await;
    assert_eq!(*agent.created.lock().unwrap(), 2);
    b.stop_gateway().await;
    assert!(agent.running().is_empty());
}
