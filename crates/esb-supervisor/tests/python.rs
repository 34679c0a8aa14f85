//! The supervisor with a real Python runtime client: awslambdaric (PyPI) running the
//! handlers of crates/esb-test-functions/python, driven through the :8080 endpoint.

mod common;

use std::thread;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::json;

fn py() -> SupBuilder {
    SupBuilder::python("handlers.dispatch")
}

#[test]
fn success_returns_the_result_with_lambda_headers_and_platform_lines() {
    let sup = py().start();
    let r = sup.invoke(&json!({"hello": "world", "n": [1, 2, 3]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"hello": "world", "n": [1, 2, 3]}));
    assert_eq!(r.header("x-amz-function-error"), None);
    assert_eq!(r.header("x-amz-executed-version"), Some("$LATEST"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r
        .header("x-amzn-requestid")
        .expect("request id")
        .to_string();
    assert_eq!(id.len(), 36);
    assert!(r.header("x-amzn-trace-id").unwrap().starts_with("Root=1-"));

    // An empty body is the empty event, as with Lambda.
    let r = sup.invoke_raw(&[], b"");
    assert_eq!((r.status, r.json()), (200, json!({})));

    sup.wait_stdout("INIT_START", |l| {
        l == "INIT_START Runtime Version: python3.11"
    });
    sup.wait_stdout("START", |l| {
        l == format!("START RequestId: {id} Version: $LATEST")
    });
    sup.wait_stdout("END", |l| l == format!("END RequestId: {id}"));
    let report = sup.wait_stdout("REPORT", |l| {
        l.starts_with(&format!("REPORT RequestId: {id}"))
    });
    for part in [
        "Duration: ",
        "Billed Duration: ",
        "Memory Size: 256 MB",
        "Max Memory Used: ",
        "Init Duration: ",
    ] {
        assert!(report.contains(part), "{part} missing in {report}");
    }
}

#[test]
fn returned_error_object_is_a_result_and_raised_exception_is_unhandled() {
    let sup = py().start();
    // Like Lambda: an error-shaped object returned by the handler is a normal result.
    let r = sup.invoke(&json!({"action": "returned_error"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amz-function-error"), None);
    assert_eq!(r.json()["errorType"], "ValidationError");

    let r = sup.invoke(&json!({"action": "raise", "why": "bad day"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "ValueError");
    assert_eq!(body["errorMessage"], "boom: bad day");
    assert!(
        body["stackTrace"].as_array().is_some_and(|s| !s.is_empty()),
        "{body}"
    );

    // The runtime is still there for the next one.
    assert_eq!(sup.invoke(&json!({"k": 1})).json(), json!({"k": 1}));
}

#[test]
fn init_error_surfaces_on_the_first_invocation() {
    let sup = SupBuilder::python("init_error.handler").spawn();
    sup.wait_status("failed");
    let r = sup.invoke(&json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    // awslambdaric reports the exception raised at import time.
    assert_eq!(body["errorType"], "RuntimeError", "{body}");
    assert_eq!(body["errorMessage"], "init failed on purpose", "{body}");
    assert!(
        body["stackTrace"].to_string().contains("init_error.py"),
        "{body}"
    );
    sup.wait_stdout("INIT_REPORT", |l| {
        l.starts_with("INIT_REPORT Init Duration: ")
            && l.ends_with("Phase: init\tStatus: error\tError Type: RuntimeError")
    });
    // The next invocation retries init (which fails again) and gets the error too; the
    // supervisor keeps serving.
    let r = sup.invoke(&json!({}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "RuntimeError");
    sup.wait_status("failed");
}

#[test]
fn missing_handler_module_is_an_init_error() {
    let sup = SupBuilder::python("no_such_module.handler").spawn();
    sup.wait_status("failed");
    let r = sup.invoke(&json!({}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Runtime.ImportModuleError", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no_such_module"),
        "{body}"
    );
}

#[test]
fn timeout_answers_like_lambda_and_kills_the_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let sup = py().env("AWS_LAMBDA_FUNCTION_TIMEOUT", "2").start();
    let r = sup.invoke(&json!({"action": "spawn_and_sleep", "pid_file": pid_file}));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Sandbox.Timedout");
    let id = r.header("x-amzn-requestid").unwrap();
    assert_eq!(
        body["errorMessage"],
        format!("RequestId: {id} Error: Task timed out after 2.00 seconds")
    );
    // The runtime and the child it spawned are really gone.
    wait_gone(&read_pids(&pid_file));
    sup.wait_stdout("timeout report", |l| {
        l.starts_with(&format!("REPORT RequestId: {id}")) && l.contains("Status: timeout")
    });
    // A fresh runtime serves the next invocation.
    let r = sup.invoke(&json!({"after": "timeout"}));
    assert_eq!((r.status, r.json()), (200, json!({"after": "timeout"})));
}

#[test]
fn crash_mid_invocation_is_reported_and_the_runtime_restarted() {
    let sup = py().start();
    let r = sup.invoke(&json!({"action": "crash"}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Runtime.ExitError");
    let id = r.header("x-amzn-requestid").unwrap();
    assert_eq!(
        body["errorMessage"],
        format!("RequestId: {id} Error: Runtime exited with error: exit status 7")
    );
    let r = sup.invoke(&json!({"after": "crash"}));
    assert_eq!((r.status, r.json()), (200, json!({"after": "crash"})));
}

#[test]
fn payload_limits_give_clear_errors() {
    let sup = py().start();
    // 6 MiB request limit (6291456 bytes): a JSON string of exactly that size passes...
    let max = 6 * 1024 * 1024;
    let event = format!("\"{}\"", "a".repeat(max - 2));
    let r = sup.invoke_raw(&[], event.as_bytes());
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    );
    assert_eq!(r.body.len(), max);
    // ...one byte more is refused before the function sees it.
    let event = format!("\"{}\"", "a".repeat(max - 1));
    let r = sup.invoke_raw(&[], event.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("RequestTooLargeException")
    );
    assert!(r.json()["message"].as_str().unwrap().contains("6291456"));

    // A response over 6291556 bytes becomes Function.ResponseSizeTooLarge.
    let r = sup.invoke(&json!({"action": "big", "size": 6_291_556}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let body = r.json();
    assert_eq!(body["errorType"], "Function.ResponseSizeTooLarge", "{body}");
    assert!(body["errorMessage"].as_str().unwrap().contains("6291556"));
    // And the worker keeps serving.
    let r = sup.invoke(&json!({"still": "here"}));
    assert_eq!((r.status, r.json()), (200, json!({"still": "here"})));
}

#[test]
fn a_second_concurrent_invocation_is_refused() {
    let sup = py().start();
    let addr = sup.addr;
    let slow = thread::spawn(move || {
        request(
            addr,
            "POST",
            INVOKE_PATH,
            &[],
            br#"{"action":"sleep","seconds":3}"#,
        )
    });
    sup.wait_status("busy");
    let r = sup.invoke(&json!({}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(
        r.json()["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    let first = slow.join().unwrap();
    assert_eq!((first.status, first.json()), (200, json!("woke")));
    assert_eq!(sup.invoke(&json!({"n": 2})).json(), json!({"n": 2}));
}

#[test]
fn trace_id_and_context_reach_the_function() {
    let sup = py().env("AWS_LAMBDA_FUNCTION_TIMEOUT", "7").start();
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let cc = base64::engine::general_purpose::STANDARD
        .encode(r#"{"custom":{"tenant":"t1"},"env":{"locale":"ja"},"client":{}}"#);
    let r = sup.invoke_raw(
        &[("X-Amzn-Trace-Id", trace), ("X-Amz-Client-Context", &cc)],
        br#"{"action":"env"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amzn-trace-id"), Some(trace));
    let seen = r.json();
    assert_eq!(
        seen["trace_id"], trace,
        "_X_AMZN_TRACE_ID inside the function"
    );
    assert_eq!(seen["request_id"], r.header("x-amzn-requestid").unwrap());
    assert_eq!(seen["function_name"], "test-fn");
    assert_eq!(seen["function_version"], "$LATEST");
    assert_eq!(seen["memory"], "256");
    assert_eq!(
        seen["function_arn"],
        "arn:aws:lambda:ap-northeast-1:000000000000:function:test-fn"
    );
    assert_eq!(seen["region"], "ap-northeast-1");
    assert_eq!(seen["handler"], "handlers.dispatch");
    assert_eq!(
        seen["client_context"],
        json!({"custom": {"tenant": "t1"}, "env": {"locale": "ja"}})
    );
    let remaining = seen["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 7000, "remaining {remaining}");
    let root = esb_test_functions::python_dir();
    assert_eq!(seen["task_root"], root.to_str().unwrap());
    assert_eq!(seen["cwd"], root.to_str().unwrap());

    // Without a trace header the supervisor makes one and the function sees it.
    let r = sup.invoke(&json!({"action": "env"}));
    let made = r.header("x-amzn-trace-id").unwrap().to_string();
    assert!(made.starts_with("Root=1-"));
    assert_eq!(r.json()["trace_id"], made);
}

#[test]
fn event_invocations_are_accepted_and_run_and_dry_runs_are_not() {
    let sup = py().start();
    let r = sup.invoke_raw(
        &[("X-Amz-Invocation-Type", "Event")],
        br#"{"action":"log","lines":1}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    sup.wait_stdout("the async run", |l| l == format!("stdout line 0 of {id}"));
    sup.wait_stdout("its REPORT", |l| {
        l.starts_with(&format!("REPORT RequestId: {id}"))
    });

    let r = sup.invoke_raw(&[("X-Amz-Invocation-Type", "DryRun")], b"{}");
    assert_eq!(r.status, 204);
    sup.wait_status("ready");
}

#[test]
fn bad_input_gets_documented_errors_and_the_supervisor_keeps_serving() {
    let sup = py().start();
    let err = |r: &Resp| r.header("x-amzn-errortype").unwrap_or_default().to_string();

    // Invoke endpoint.
    let r = sup.invoke_raw(&[], b"{not json");
    assert_eq!(
        (r.status, err(&r).as_str()),
        (400, "InvalidRequestContentException")
    );
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("Could not parse request body into json"));
    let r = sup.invoke_raw(&[("X-Amz-Invocation-Type", "Sometimes")], b"{}");
    assert_eq!(
        (r.status, err(&r).as_str()),
        (400, "InvalidParameterValueException")
    );
    let r = sup.invoke_raw(&[("X-Amz-Client-Context", "%%%not base64")], b"{}");
    assert_eq!(
        (r.status, err(&r).as_str()),
        (400, "InvalidRequestContentException")
    );
    let not_json = base64::engine::general_purpose::STANDARD.encode("plain text");
    let r = sup.invoke_raw(&[("X-Amz-Client-Context", &not_json)], b"{}");
    assert_eq!(r.status, 400);
    let r = request(
        sup.addr,
        "POST",
        "/2015-03-31/functions/function/other",
        &[],
        b"{}",
    );
    assert_eq!(
        (r.status, err(&r).as_str()),
        (404, "UnknownOperationException")
    );
    let r = request(sup.addr, "GET", INVOKE_PATH, &[], b"");
    assert_eq!(r.status, 405);

    // Runtime API.
    let api = sup.api;
    let r = request(api, "GET", "/2018-06-01/runtime/unknown", &[], b"");
    assert_eq!(
        (r.status, r.json()["errorType"].as_str()),
        (404, Some("NotFound"))
    );
    let r = request(api, "GET", "/2020-01-01/extension/register", &[], b"");
    assert_eq!(r.status, 404);
    let r = request(api, "POST", "/2018-06-01/runtime/invocation/next", &[], b"");
    assert_eq!(r.status, 405);
    let r = request(
        api,
        "POST",
        "/2018-06-01/runtime/invocation/no-such-id/response",
        &[],
        b"{}",
    );
    assert_eq!(
        (r.status, r.json()["errorType"].as_str()),
        (400, Some("InvalidRequestID"))
    );
    let r = request(
        api,
        "POST",
        "/2018-06-01/runtime/invocation/no-such-id/error",
        &[],
        b"{}",
    );
    assert_eq!(r.status, 400);
    // Init is over: a late init error is a wrong state transition.
    let r = request(api, "POST", "/2018-06-01/runtime/init/error", &[], b"{}");
    assert_eq!(
        (r.status, r.json()["errorType"].as_str()),
        (403, Some("InvalidStateTransition"))
    );

    // A response for an invocation that was already answered.
    let done = sup.invoke(&json!({"x": 1}));
    let id = done.header("x-amzn-requestid").unwrap();
    let r = request(
        api,
        "POST",
        &format!("/2018-06-01/runtime/invocation/{id}/response"),
        &[],
        b"{}",
    );
    assert_eq!(
        (r.status, r.json()["errorType"].as_str()),
        (403, Some("InvalidStateTransition"))
    );

    let r = sup.invoke(&json!({"still": "serving"}));
    assert_eq!((r.status, r.json()), (200, json!({"still": "serving"})));
}

#[test]
fn logs_reach_the_endpoint_with_ids_and_nothing_is_lost_on_sigterm() {
    let logs = LogEndpoint::start();
    let mut sup = py().env("VICTORIALOGS_URL", &logs.url).start();
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1";
    let lines = 200;
    let r = sup.invoke_raw(
        &[("X-Amzn-Trace-Id", trace)],
        json!({"action": "log", "lines": lines})
            .to_string()
            .as_bytes(),
    );
    assert_eq!((r.status, r.json()), (200, json!("logged")));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    let raised = sup.invoke(&json!({"action": "raise", "why": "traced"}));
    let raised_id = raised.header("x-amzn-requestid").unwrap().to_string();
    // Stopped right after the response: everything must still arrive.
    assert_eq!(sup.terminate(), Some(0));

    let recs = logs.records();
    let targets: Vec<String> = logs
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        targets.iter().all(|t| t.starts_with("/insert/jsonline?")),
        "{targets:?}"
    );
    for i in 0..lines {
        let want = format!("stdout line {i} of {id}");
        let rec = recs
            .iter()
            .find(|r| r["_msg"] == want)
            .unwrap_or_else(|| panic!("missing {want:?} among {} records", recs.len()));
        assert_eq!(rec["aws_request_id"], id);
        assert_eq!(rec["trace_id"], trace);
        assert_eq!(rec["function_name"], "test-fn");
        assert_eq!(rec["container_name"], "test-fn");
        assert_eq!(rec["job"], "lambda");
        assert_eq!(rec["log_group"], "/aws/lambda/test-fn");
        assert_eq!(rec["stream"], "stdout");
        assert!(rec["_time"].as_str().unwrap().ends_with('Z'));
    }
    // A JSON line keeps its fields.
    let structured = recs
        .iter()
        .find(|r| r["_msg"] == "structured")
        .expect("the JSON line");
    assert_eq!(
        (structured["order"].clone(), structured["level"].clone()),
        (json!(1), json!("WARN"))
    );
    assert_eq!(structured["aws_request_id"], id);
    // awslambdaric's logging line carries its level.
    let logged = recs
        .iter()
        .find(|r| {
            r["_msg"]
                .as_str()
                .is_some_and(|m| m.contains("logged through logging"))
        })
        .expect("the logging line");
    assert_eq!(logged["level"], "INFO");
    // awslambdaric's error log comes framed on _LAMBDA_TELEMETRY_LOG_FD: the traceback is
    // one record, at level error.
    let traceback = recs
        .iter()
        .find(|r| {
            r["_msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("[ERROR] ValueError: boom: traced"))
        })
        .expect("the error record");
    let text = traceback["_msg"].as_str().unwrap();
    assert!(
        text.contains("\nTraceback (most recent call last):"),
        "{text}"
    );
    assert_eq!(traceback["level"], "ERROR");
    assert_eq!(traceback["aws_request_id"], raised_id);
    // START / END / REPORT like Lambda's.
    for (kind, prefix) in [
        ("platform.start", format!("START RequestId: {id}")),
        ("platform.end", format!("END RequestId: {id}")),
        ("platform.report", format!("REPORT RequestId: {id}")),
    ] {
        let rec = recs
            .iter()
            .find(|r| r["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} record"));
        assert!(rec["_msg"].as_str().unwrap().starts_with(&prefix), "{rec}");
        assert_eq!(rec["aws_request_id"], id);
        assert_eq!(rec["trace_id"], trace);
    }
    let report = recs
        .iter()
        .find(|r| r["type"] == "platform.report")
        .unwrap();
    assert_eq!(report["memory_size_mb"], 256);
    assert!(report["duration_ms"].as_f64().is_some());
    assert!(report["init_duration_ms"].as_f64().is_some());
}

#[test]
fn sigterm_aborts_a_running_invocation_after_the_grace_period() {
    let mut sup = py().env("ESB_SHUTDOWN_GRACE_MS", "300").start();
    let addr = sup.addr;
    let slow = thread::spawn(move || {
        request(
            addr,
            "POST",
            INVOKE_PATH,
            &[],
            br#"{"action":"sleep","seconds":60}"#,
        )
    });
    sup.wait_status("busy");
    assert_eq!(sup.terminate(), Some(0));
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "Sandbox.Shutdown");
}

#[test]
fn sigterm_lets_a_short_invocation_finish() {
    let mut sup = py().env("ESB_SHUTDOWN_GRACE_MS", "20000").start();
    let addr = sup.addr;
    let slow = thread::spawn(move || {
        request(
            addr,
            "POST",
            INVOKE_PATH,
            &[],
            br#"{"action":"sleep","seconds":1}"#,
        )
    });
    sup.wait_status("busy");
    thread::sleep(Duration::from_millis(100));
    assert_eq!(sup.terminate(), Some(0));
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.json()), (200, json!("woke")));
}

#[test]
fn log_shipping_retries_a_failing_endpoint_without_losing_records() {
    let logs = LogEndpoint::start_failing(3);
    let mut sup = py().env("VICTORIALOGS_URL", &logs.url).start();
    let r = sup.invoke(&json!({"action": "log", "lines": 50}));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    assert_eq!(sup.terminate(), Some(0));
    let recs = logs.records();
    for i in 0..50 {
        let want = format!("stdout line {i} of {id}");
        assert!(recs.iter().any(|r| r["_msg"] == want), "missing {want:?}");
    }
    assert!(recs.iter().any(|r| r["type"] == "platform.report"));
}

#[test]
fn an_unreachable_log_endpoint_bounds_memory_and_does_not_block_exit() {
    // An endpoint that never accepts a batch (a closed port could be reused by a
    // neighbouring test; this one stays ours).
    let logs = LogEndpoint::start_failing(usize::MAX);
    let mut sup = py()
        .env("VICTORIALOGS_URL", &logs.url)
        .env("ESB_LOG_BUFFER_BYTES", "65536")
        .env("ESB_LOG_FLUSH_TIMEOUT_MS", "500")
        .start();
    let r = sup.invoke(&json!({"action": "log", "lines": 5000}));
    assert_eq!((r.status, r.json()), (200, json!("logged")));
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", sup.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().map(|n| n.parse().unwrap()))
        .unwrap();
    assert!(rss_kib < 64 * 1024, "supervisor RSS {rss_kib} KiB");
    assert_eq!(sup.terminate(), Some(0));
    let stderr = sup.stderr.lock().unwrap().join("\n");
    assert!(
        stderr.contains("could not ship every log record"),
        "{stderr}"
    );
}

#[test]
fn orphans_left_by_the_function_are_reaped() {
    let sup = py().start();
    let r = sup.invoke(&json!({"action": "orphan"}));
    let pid = r.json()["orphan"].as_i64().expect("orphan pid") as i32;
    // Not even a zombie: the supervisor (subreaper, or PID 1 in a worker) collects it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "orphan {pid} was never reaped"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sup.invoke(&json!({"n": 1})).json(), json!({"n": 1}));
}

#[test]
fn boto3_invokes_through_the_endpoint_like_lambda() {
    let sup = py().start();
    // boto3's Lambda client pointed at the worker's endpoint: results, function errors,
    // the log tail, Event and DryRun, and an error of the API itself.
    let script = r#"
import base64, json, sys
import boto3, botocore
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="ap-northeast-1",
                 aws_access_key_id="x", aws_secret_access_key="y",
                 config=botocore.config.Config(retries={"max_attempts": 0}))
r = c.invoke(FunctionName="function", Payload=json.dumps({"action": "log", "lines": 2}), LogType="Tail")
assert r["StatusCode"] == 200, r
assert json.loads(r["Payload"].read()) == "logged"
tail = base64.b64decode(r["LogResult"]).decode()
rid = r["ResponseMetadata"]["RequestId"]
for want in ["START RequestId: " + rid, "stdout line 1 of " + rid, "END RequestId: " + rid, "REPORT RequestId: " + rid]:
    assert want in tail, (want, tail)
r = c.invoke(FunctionName="function", Payload=json.dumps({"action": "raise"}))
assert r["FunctionError"] == "Unhandled", r
assert json.loads(r["Payload"].read())["errorType"] == "ValueError"
assert c.invoke(FunctionName="function", InvocationType="Event", Payload=b"{}")["StatusCode"] == 202
assert c.invoke(FunctionName="function", InvocationType="DryRun", Payload=b"{}")["StatusCode"] == 204
try:
    c.invoke(FunctionName="function", Payload=b"{oops")
    raise SystemExit("non-JSON payload accepted")
except c.exceptions.InvalidRequestContentException as e:
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
print("boto3 ok")
"#;
    let out = std::process::Command::new(esb_testkit::python())
        .args(["-c", script, &format!("http://{}", sup.addr)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("boto3 ok"));
}

#[test]
fn a_stuck_stdout_does_not_stall_invocations() {
    // Nobody reads the supervisor's stdout: the pipe fills up after 64 KiB.
    let mut sup = py()
        .env("ESB_LOG_FLUSH_TIMEOUT_MS", "300")
        .hold_stdout()
        .start();
    for _ in 0..3 {
        let r = sup.invoke(&json!({"action": "log", "lines": 2000}));
        assert_eq!((r.status, r.json()), (200, json!("logged")));
    }
    assert_eq!(
        sup.invoke(&json!({"still": "serving"})).json(),
        json!({"still": "serving"})
    );
    assert_eq!(sup.terminate(), Some(0));
}

#[test]
fn a_runtime_command_on_the_command_line_replaces_esb_runtime() {
    let python = esb_testkit::python();
    let sup = py()
        .env("ESB_RUNTIME", "")
        .env("_HANDLER", "")
        .args(&[
            "--",
            python.to_str().unwrap(),
            "-m",
            "awslambdaric",
            "handlers.echo",
        ])
        .start();
    assert_eq!(
        sup.invoke(&json!({"via": "args"})).json(),
        json!({"via": "args"})
    );
}

#[test]
fn init_time_does_not_count_against_the_function_timeout() {
    // Init takes 1.5 s, the function may run 1 s: as on Lambda, a cold invocation still
    // gets its whole timeout once the runtime has finished init.
    let sup = SupBuilder::python("slow_init.handler")
        .env("SLOW_INIT_SECONDS", "1.5")
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "1")
        .spawn();
    let r = sup.invoke(&json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-function-error"), None, "{}", r.text());
    let remaining = r.json()["remaining_ms"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 1000, "remaining {remaining}");
    let report = sup.wait_stdout("REPORT", |l| l.starts_with("REPORT RequestId:"));
    assert!(report.contains("Init Duration: "), "{report}");
}

#[test]
fn an_init_longer_than_the_init_timeout_times_the_invocation_out() {
    let sup = SupBuilder::python("slow_init.handler")
        .env("SLOW_INIT_SECONDS", "30")
        .env("ESB_INIT_TIMEOUT_MS", "300")
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "1")
        .spawn();
    let r = sup.invoke(&json!({}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "Sandbox.Timedout", "{}", r.text());
}

#[test]
fn next_while_an_invocation_is_running_is_a_wrong_state() {
    let sup = py().start();
    let addr = sup.addr;
    let slow = thread::spawn(move || {
        request(
            addr,
            "POST",
            INVOKE_PATH,
            &[],
            br#"{"action":"sleep","seconds":1}"#,
        )
    });
    // Busy means the event is with the (idle, polling) runtime already.
    sup.wait_status("busy");
    let r = request(
        sup.api,
        "GET",
        "/2018-06-01/runtime/invocation/next",
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["errorType"], "InvalidStateTransition");
    assert_eq!(slow.join().unwrap().json(), json!("woke"));
}
