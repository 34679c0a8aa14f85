//! Per-function credentials from SAM Policies, against `esb up` (issue 16): a function
//! with DynamoDBReadPolicy on table A, S3ReadPolicy on bucket X and LambdaInvokePolicy on
//! `target` does exactly that through boto3 and is refused the rest with AWS's errors;
//! the box's key is in no worker; `ESB_IAM=warn` lets everything through and logs each
//! would-be denial; `esb up` names the function without a policy.

mod boxkit;

use std::path::Path;

use boxkit::TestBox;
use serde_json::Value;

fn iam_app() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/iam")
}

/// `esb invoke FUNCTION`: the JSON the function returned.
fn invoke(b: &TestBox, function: &str) -> Value {
    let out = b.ok(&["invoke", function, "--payload", "{}"]);
    let (a, z) = (out.find('{').unwrap(), out.rfind('}').unwrap());
    serde_json::from_str(&out[a..=z]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Puts the object `reader` reads (with the box's own key, which may do anything).
fn seed_object(b: &TestBox) {
    // python_env carries the box's own key pair and E2E_S3, the S3 endpoint.
    let out = b
        .python(&[
            "-c",
            "import boto3,os; boto3.client('s3', endpoint_url=os.environ['E2E_S3']).put_object(Bucket='iam-x', Key='seeded', Body=b'x')",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "seed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The log store's records (host side, main listener) whose message has `word`.
fn query_logs(b: &TestBox, word: &str) -> Vec<Value> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{}/select/logsql/query", b.logs_port),
            "--data-urlencode",
            &format!("query={word}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn denied(v: &Value, call: &str, code: &str, action: &str) {
    let r = &v[call];
    assert_eq!(r["ok"], false, "{call} should be denied: {v}");
    assert_eq!(r["code"], code, "{call}: {r}");
    let m = r["message"].as_str().unwrap_or_default();
    assert!(
        m.contains(&format!("is not authorized to perform: {action}")),
        "{call}: the message names the action: {m}"
    );
}

#[test]
fn functions_get_what_their_policies_allow_and_nothing_else() {
    let b = TestBox::new(&iam_app());
    let out = b.up();
    assert!(out.contains("esb is up"), "{out}");
    assert!(
        out.contains("no Policies or Role for loose"),
        "esb up names the function without a policy: {out}"
    );
    seed_object(&b);

    let v = invoke(&b, "reader");
    for call in ["ddb_get_a", "s3_list_x", "s3_get_x", "invoke_target"] {
        assert_eq!(v[call]["ok"], true, "{call} is allowed: {v}");
    }
    denied(&v, "ddb_put_a", "AccessDeniedException", "dynamodb:PutItem");
    denied(&v, "ddb_get_b", "AccessDeniedException", "dynamodb:GetItem");
    denied(&v, "s3_put_x", "AccessDenied", "s3:PutObject");
    denied(
        &v,
        "invoke_other",
        "AccessDeniedException",
        "lambda:InvokeFunction",
    );
    let loose = invoke(&b, "loose");
    denied(&loose, "s3_list_x", "AccessDenied", "s3:ListBucket");

    // The function has a key of its own; the box's key is nowhere in the worker.
    let secrets = b.secrets();
    let box_key = &secrets["ESB_ACCESS_KEY_ID"];
    let box_secret = &secrets["ESB_SECRET_ACCESS_KEY"];
    let own = v["access_key"].as_str().unwrap();
    assert!(own.starts_with("ESBF") && own != box_key, "{own}");
    for what in ["environ", "pid1_environ"] {
        let text = v[what].as_str().unwrap();
        assert!(
            !text.contains(box_key.as_str()) && !text.contains(box_secret.as_str()),
            "the box's key pair is in the worker's {what}"
        );
    }
    // The log store: a worker may not query it, may not ingest unsigned, and what it
    // ingests signed is stamped with its own function's name (function_name,
    // container_name) and job=lambda, whatever the body claims.
    assert_eq!(v["logstore"]["query"], 403, "{v}");
    assert_eq!(v["logstore"]["unsigned_insert"], 403, "{v}");
    assert_eq!(v["logstore"]["signed_insert"], 200, "{v}");
    b.wait_for("the reader's records in the log store", || {
        let records = query_logs(&b, "forged-by-reader");
        let own = query_logs(&b, "reader-was-here");
        !records.is_empty()
            && records.iter().all(|r| {
                r["function_name"] == "reader"
                    && r["container_name"] == "reader"
                    && r["job"] == "lambda"
            })
            && own.iter().any(|r| r["function_name"] == "reader")
    });
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b.state.join("iam/credentials.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    b.down_clean();

    // warn: every call passes, each would-be denial is logged by the service that let it.
    let mut w = TestBox::new(&iam_app());
    w.set("ESB_IAM", "warn");
    let out = w.up();
    assert!(out.contains("esb is up"), "{out}");
    seed_object(&w);
    let v = invoke(&w, "reader");
    for call in [
        "ddb_get_a",
        "ddb_put_a",
        "ddb_get_b",
        "s3_get_x",
        "s3_put_x",
        "invoke_target",
        "invoke_other",
    ] {
        assert_eq!(v[call]["ok"], true, "{call} passes under warn: {v}");
    }
    for (component, action) in [
        ("dynamodb", "dynamodb:PutItem"),
        ("dynamodb", "dynamodb:GetItem on resource: arn:aws:dynamodb"),
        ("s3", "s3:PutObject"),
        ("gateway", "lambda:InvokeFunction"),
    ] {
        let log = std::fs::read_to_string(w.state.join(format!("logs/{component}.log")))
            .unwrap_or_default();
        assert!(
            log.lines().any(|l| l.contains("ESB_IAM=warn lets through")
                && l.contains(&format!("is not authorized to perform: {action}"))),
            "{component} did not log the would-be denial of {action}:\n{log}"
        );
    }
    w.down_clean();
}
