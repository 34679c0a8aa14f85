//! The supervisor with esb's Node.js runtime client (crates/esb-image/runtimes/nodejs) and
//! this machine's `node`: the handler forms and behaviours of Lambda's Node.js runtimes that
//! the end-to-end test (crates/esb/tests/runtimes.rs) does not reach.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

fn app(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn start(dir: &Path, handler: &str) -> Sup {
    SupBuilder::node(dir, handler)
        .env("ESB_LOG_STDOUT_FORMAT", "json")
        .start()
}

#[test]
fn es_module_by_package_type_nested_handler_context_and_trace() {
    let dir = app(&[
        ("package.json", r#"{"type": "module"}"#),
        (
            "lib/app.js",
            "export const api = { v1: { handler: async (event, context) => ({\n\
               event,\n\
               requestId: context.awsRequestId,\n\
               name: context.functionName,\n\
               remaining: context.getRemainingTimeInMillis(),\n\
               trace: process.env._X_AMZN_TRACE_ID,\n\
               module: typeof require,\n\
             }) } };\n",
        ),
    ]);
    let sup = start(dir.path(), "lib/app.api.v1.handler");
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let r = sup.invoke_raw(&[("X-Amzn-Trace-Id", trace)], br#"{"a":1}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["event"], json!({"a": 1}));
    assert_eq!(v["module"], "undefined", "an ES module has no require: {v}");
    assert_eq!(v["name"], "test-fn");
    assert_eq!(v["trace"], trace);
    assert_eq!(v["requestId"].as_str(), r.header("x-amzn-requestid"), "{v}");
    let remaining = v["remaining"].as_i64().unwrap();
    assert!(remaining > 20_000 && remaining <= 30_000, "{v}");
}

#[test]
fn callback_answers_at_once_when_told_not_to_wait_for_the_event_loop() {
    // A minute-long timer outlives the 30 s timeout: only an answer that does not wait
    // for the empty event loop arrives.
    let dir = app(&[(
        "index.js",
        "exports.handler = (event, context, callback) => {\n\
           context.callbackWaitsForEmptyEventLoop = false;\n\
           setTimeout(() => {}, 60000);\n\
           callback(null, { done: true });\n\
         };\n",
    )]);
    let sup = start(dir.path(), "index.handler");
    let r = sup.invoke(&json!({}));
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"done": true})),
        "{}",
        r.text()
    );
    // And the next invocation is served by the same process.
    let r = sup.invoke(&json!({}));
    assert_eq!(r.json(), json!({"done": true}));
}

#[test]
fn thrown_errors_and_returned_undefined_as_lambda_reports_them() {
    let dir = app(&[(
        "app.cjs",
        "class ValidationError extends Error { constructor(m) { super(m); this.name = 'ValidationError'; } }\n\
         exports.handler = async (event) => {\n\
           if (event.fail === 'error') throw new ValidationError('bad input');\n\
           if (event.fail === 'string') throw 'plain string';\n\
           if (event.fail === 'callback') return new Promise((_, reject) => reject(new TypeError('nope')));\n\
           return undefined;\n\
         };\n",
    )]);
    let sup = start(dir.path(), "app.handler");
    let r = sup.invoke(&json!({"fail": "error"}));
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let v = r.json();
    assert_eq!(v["errorType"], "ValidationError", "{v}");
    assert_eq!(v["errorMessage"], "bad input", "{v}");
    assert!(
        v["trace"][0]
            .as_str()
            .unwrap()
            .starts_with("ValidationError: bad input"),
        "{v}"
    );
    let v = sup.invoke(&json!({"fail": "string"})).json();
    assert_eq!(
        (v["errorType"].clone(), v["errorMessage"].clone()),
        (json!("string"), json!("plain string")),
        "{v}"
    );
    let v = sup.invoke(&json!({"fail": "callback"})).json();
    assert_eq!(v["errorType"], "TypeError", "{v}");
    let r = sup.invoke(&json!({}));
    assert_eq!((r.status, r.text()), (200, "null".to_string()));
}

#[test]
fn load_failures_are_named_as_the_lambda_runtime_names_them() {
    /// Files of the task root, handler, expected errorType, part of the errorMessage.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("app.mjs", "export const other = 1;\n")],
            "app.handler",
            "Runtime.HandlerNotFound",
            "app.handler is undefined or not exported",
        ),
        (
            &[("app.mjs", "export const handler = 42;\n")],
            "app.handler",
            "Runtime.HandlerNotFound",
            "app.handler is not a function",
        ),
        (
            &[("app.mjs", "export const handler = async () => {\n")],
            "app.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError",
        ),
        (
            &[("app.js", "module.exports.handler = async () => 1;\n")],
            "missing.handler",
            "Runtime.ImportModuleError",
            "Cannot find module 'missing'",
        ),
        (
            &[("app.js", "")],
            "nodot",
            "Runtime.MalformedHandlerName",
            "Bad handler",
        ),
    ];
    for (files, handler, error_type, message) in cases {
        let dir = app(files);
        // Not ready: the init fails, and the first invocation reports why.
        let sup = SupBuilder::node(dir.path(), handler).spawn();
        let r = sup.invoke(&json!({}));
        assert_eq!(
            r.header("x-amz-function-error"),
            Some("Unhandled"),
            "{handler}"
        );
        let v = r.json();
        assert_eq!(v["errorType"], *error_type, "{handler}: {v}");
        assert!(
            v["errorMessage"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{handler}: {v}"
        );
    }
}

#[test]
fn console_lines_carry_level_and_request_id_and_json_format_filters_by_level() {
    let dir = app(&[(
        "app.mjs",
        "export const handler = async () => {\n\
           console.debug('debug line');\n\
           console.info('info line');\n\
           console.warn('warn line', { k: 1 });\n\
           console.error('two\\nlines');\n\
           return 'ok';\n\
         };\n",
    )]);
    let sup = start(dir.path(), "app.handler");
    let r = sup.invoke(&json!({}));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    let warn = sup.wait_stdout("the WARN record", |l| l.contains("warn line"));
    let rec: serde_json::Value = serde_json::from_str(&warn).unwrap();
    assert_eq!(rec["level"], "WARN", "{rec}");
    assert!(
        rec["_msg"]
            .as_str()
            .unwrap()
            .contains(&format!("\t{id}\tWARN\twarn line {{ k: 1 }}")),
        "{rec}"
    );
    // A two-line message is one record.
    let two = sup.wait_stdout("the ERROR record", |l| l.contains("two"));
    let rec: serde_json::Value = serde_json::from_str(&two).unwrap();
    assert!(
        rec["_msg"].as_str().unwrap().ends_with("ERROR\ttwo\nlines"),
        "{rec}"
    );

    // LoggingConfig as on Lambda: JSON records, and lines below the level dropped.
    let sup = SupBuilder::node(dir.path(), "app.handler")
        .env("ESB_LOG_STDOUT_FORMAT", "json")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_LEVEL", "WARN")
        .start();
    let r = sup.invoke(&json!({}));
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    let warn = sup.wait_stdout("the JSON WARN record", |l| l.contains("warn line"));
    let rec: serde_json::Value = serde_json::from_str(&warn).unwrap();
    assert!(
        rec["level"]
            .as_str()
            .is_some_and(|l| l.eq_ignore_ascii_case("warn")),
        "{rec}"
    );
    assert_eq!(rec["requestId"], id.as_str(), "{rec}");
    assert_eq!(rec["message"], "warn line { k: 1 }", "{rec}");
    sup.wait_stdout("END", |l| l.contains(&format!("END RequestId: {id}")));
    let out = sup.stdout.lock().unwrap().join("\n");
    assert!(
        !out.contains("info line") && !out.contains("debug line"),
        "{out}"
    );
}
