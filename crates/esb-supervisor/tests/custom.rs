//! A custom runtime written in shell with curl (the style of AWS's custom runtime
//! tutorial) as `$LAMBDA_TASK_ROOT/bootstrap`: the Runtime API as a plain HTTP client sees
//! it, and the Handled / non-JSON error paths no packaged runtime client takes.

mod common;

use common::*;
use serde_json::json;

fn shell() -> SupBuilder {
    SupBuilder::python("unused")
        .env("ESB_RUNTIME", "provided.al2023")
        .env("_HANDLER", "function.handler")
        .env(
            "LAMBDA_TASK_ROOT",
            esb_test_functions::shell_dir().to_str().unwrap(),
        )
}

#[test]
fn shell_bootstrap_success_handled_and_unhandled_errors() {
    let sup = shell().start();
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1";
    let r = sup.invoke_raw(&[("X-Amzn-Trace-Id", trace)], br#"{"action":"echo","n":1}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"action": "echo", "n": 1}));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    sup.wait_stdout("the runtime's line", |l| {
        l == format!("shell runtime got {id} trace {trace}")
    });

    // An error the runtime marks Handled.
    let r = sup.invoke(&json!({"action": "handled"}));
    assert_eq!(r.header("x-amz-function-error"), Some("Handled"));
    assert_eq!(
        r.json(),
        json!({"errorType": "OrderRejected", "errorMessage": "handled on purpose"})
    );

    // A non-JSON error body is wrapped in an error document with the header's type.
    let r = sup.invoke(&json!({"action": "fail"}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(
        r.json(),
        json!({"errorType": "Runtime.ShellError", "errorMessage": "not json at all"})
    );

    assert_eq!(sup.invoke(&json!({"n": 2})).json(), json!({"n": 2}));
}
