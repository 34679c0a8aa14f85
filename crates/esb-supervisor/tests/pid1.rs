//! As a worker's entrypoint the supervisor is PID 1 of the worker's PID namespace: it must
//! reap orphans there and stop gracefully on SIGTERM. Runs it that way with `unshare`
//! (root, as CI runs).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    esb_testkit::require_root();
    let logs = LogEndpoint::start();
    let mut sup = SupBuilder::python("handlers.dispatch")
        .env("VICTORIALOGS_URL", &logs.url)
        .wrap(&["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        .start();
    let wrapper = sup.pid();
    let inner = Sup::children_of(wrapper);
    assert_eq!(
        inner.len(),
        1,
        "unshare should have one child, the supervisor"
    );
    let supervisor = inner[0];
    let status = std::fs::read_to_string(format!("/proc/{supervisor}/status")).unwrap();
    let ns_pid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        ns_pid.trim_end().ends_with("\t1"),
        "not PID 1 in its namespace: {ns_pid}"
    );

    for _ in 0..3 {
        let r = sup.invoke(&json!({"action": "orphan"}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The orphans exit after 0.2 s; as PID 1 the supervisor must collect them: in the end
    // its only child is the runtime.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let kids = Sup::children_of(supervisor);
        let zombies: Vec<i32> = kids.iter().copied().filter(|p| process_gone(*p)).collect();
        if kids.len() == 1 && zombies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children never reaped: {kids:?} (zombies {zombies:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }

    let r = sup.invoke(&json!({"action": "log", "lines": 3}));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    // SIGTERM to PID 1 of the namespace (from outside, as containerd does).
    unsafe {
        libc::kill(supervisor, libc::SIGTERM);
    }
    assert_eq!(sup.wait_exit(Duration::from_secs(30)), Some(0));
    let recs = logs.records();
    assert!(recs
        .iter()
        .any(|r| r["_msg"] == format!("stdout line 2 of {id}")));
    assert!(recs
        .iter()
        .any(|r| r["type"] == "platform.report" && r["aws_request_id"] == id));
}
