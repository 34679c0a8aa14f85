//! The supervisor with a real Rust runtime client: the `lambda_runtime` crate (crates.io)
//! in crates/esb-test-functions, run as a custom runtime (`provided.al2023`, found as
//! `$LAMBDA_TASK_ROOT/bootstrap`), driven through the :8080 endpoint.

mod common;

use std::thread;

use base64::Engine;
use common::*;
use serde_json::json;

#[test]
fn success_returned_error_and_panic() {
    let sup = SupBuilder::rust().start();
    let r = sup.invoke(&json!({"hello": "rust"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"hello": "rust"}));
    assert_eq!(r.header("x-amz-function-error"), None);

    let r = sup.invoke(&json!({"action": "error", "message": "no such order"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorMessage"], "no such order", "{body}");
    assert!(body["errorType"].is_string(), "{body}");

    let r = sup.invoke(&json!({"action": "panic"}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert!(
        r.json()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("panicked on purpose"),
        "{}",
        r.text()
    );

    // The runtime survived both.
    assert_eq!(sup.invoke(&json!({"n": 3})).json(), json!({"n": 3}));
}

#[test]
fn trace_id_and_context_reach_the_function() {
    let sup = SupBuilder::rust().start();
    let trace = "Root=1-65f0a2b1-0123456789abcdef01234567;Parent=1111111111111111;Sampled=1";
    let cc = base64::engine::general_purpose::STANDARD
        .encode(r#"{"custom":{"tenant":"t9"},"env":{"locale":"en"}}"#);
    let r = sup.invoke_raw(
        &[("X-Amzn-Trace-Id", trace), ("X-Amz-Client-Context", &cc)],
        br#"{"action":"env"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(
        seen["trace_id"], trace,
        "_X_AMZN_TRACE_ID inside the function: {seen}"
    );
    assert_eq!(seen["context_trace_id"], trace);
    assert_eq!(seen["request_id"], r.header("x-amzn-requestid").unwrap());
    assert_eq!(
        seen["function_arn"],
        "arn:aws:lambda:ap-northeast-1:000000000000:function:test-fn"
    );
    assert_eq!(seen["function_name"], "test-fn");
    assert_eq!(seen["memory"], "256");
    assert_eq!(seen["client_context"]["custom"], json!({"tenant": "t9"}));
    assert!(seen["deadline_ms"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn init_failure_surfaces_on_the_first_invocation() {
    let sup = SupBuilder::rust().env("ESB_TEST_INIT_FAIL", "1").spawn();
    sup.wait_status("failed");
    let r = sup.invoke(&json!({}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Runtime.ExitError", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status 1"),
        "{body}"
    );
    sup.wait_stdout("INIT_REPORT", |l| {
        l.starts_with("INIT_REPORT") && l.ends_with("Error Type: Runtime.ExitError")
    });
    // Still serving (and still failing the same way).
    let r = sup.invoke(&json!({}));
    assert_eq!(r.json()["errorType"], "Runtime.ExitError");
}

#[test]
fn missing_bootstrap_is_an_invalid_entrypoint() {
    let dir = tempfile::tempdir().unwrap();
    let sup = SupBuilder::rust()
        .env("LAMBDA_TASK_ROOT", dir.path().to_str().unwrap())
        .spawn();
    sup.wait_status("failed");
    let r = sup.invoke(&json!({}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(
        r.json()["errorType"],
        "Runtime.InvalidEntrypoint",
        "{}",
        r.text()
    );
}

#[test]
fn timeout_kills_the_process_tree_and_crash_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let sup = SupBuilder::rust()
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "2")
        .start();
    let r = sup.invoke(&json!({"action": "spawn_and_sleep", "pid_file": pid_file}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Sandbox.Timedout");
    assert!(body["errorMessage"]
        .as_str()
        .unwrap()
        .ends_with("Task timed out after 2.00 seconds"));
    wait_gone(&read_pids(&pid_file));
    assert_eq!(
        sup.invoke(&json!({"after": "timeout"})).json(),
        json!({"after": "timeout"})
    );

    let r = sup.invoke(&json!({"action": "crash", "code": 5}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Runtime.ExitError");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("exit status 5"),
        "{body}"
    );
    assert_eq!(
        sup.invoke(&json!({"after": "crash"})).json(),
        json!({"after": "crash"})
    );
}

#[test]
fn oversized_response_and_concurrent_invocation() {
    let sup = SupBuilder::rust().start();
    // Over the 6 MiB request limit: refused before the function sees it.
    let event = format!("\"{}\"", "a".repeat(6 * 1024 * 1024));
    let r = sup.invoke_raw(&[], event.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("RequestTooLargeException")
    );

    let r = sup.invoke(&json!({"action": "big", "size": 7 * 1024 * 1024}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "Function.ResponseSizeTooLarge");
    // Just under the limit passes (a JSON string: the size plus two quotes).
    let r = sup.invoke(&json!({"action": "big", "size": 6_291_556 - 2}));
    assert_eq!((r.status, r.body.len()), (200, 6_291_556));

    let addr = sup.addr;
    let slow = thread::spawn(move || {
        request(
            addr,
            "POST",
            INVOKE_PATH,
            &[],
            br#"{"action":"sleep","ms":1500}"#,
        )
    });
    sup.wait_status("busy");
    let r = sup.invoke(&json!({}));
    assert_eq!(r.status, 429);
    assert_eq!(slow.join().unwrap().json(), json!("woke"));
}

#[test]
fn logs_of_a_rust_function_are_shipped_with_ids() {
    let logs = LogEndpoint::start();
    let mut sup = SupBuilder::rust()
        .env("VICTORIALOGS_URL", &logs.url)
        .start();
    let r = sup.invoke(&json!({"action": "log", "lines": 20}));
    assert_eq!(r.json(), json!("logged"));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    let trace = r.header("x-amzn-trace-id").unwrap().to_string();
    assert_eq!(sup.terminate(), Some(0));
    let recs = logs.records();
    for stream in ["stdout", "stderr"] {
        for i in 0..20 {
            let want = format!("{stream} line {i} of {id}");
            let rec = recs
                .iter()
                .find(|r| r["_msg"] == want)
                .unwrap_or_else(|| panic!("missing {want:?}"));
            assert_eq!(
                (rec["aws_request_id"].as_str(), rec["trace_id"].as_str()),
                (Some(&*id), Some(&*trace))
            );
            assert_eq!(rec["stream"], stream);
        }
    }
    let structured = recs.iter().find(|r| r["_msg"] == "structured").unwrap();
    assert_eq!(
        (structured["level"].as_str(), structured["order"].as_u64()),
        (Some("WARN"), Some(1))
    );
    assert!(recs
        .iter()
        .any(|r| r["type"] == "platform.report" && r["aws_request_id"] == id));
}
