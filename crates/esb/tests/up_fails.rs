//! `esb up` that fails inside the box process (after every check passed) says why, as
//! root with real parts: functions that cannot be built (each one named with its
//! reason), a table the DynamoDB service refuses (its name and the service's answer), and
//! a component that cannot start (its name and its log's last lines); then what was
//! cleaned up, with nothing left running. `esb up --foreground` and `esb status` show the
//! same text.

mod boxkit;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use boxkit::TestBox;

/// An app of its own: `fn/app.py` and `template`, in a fresh directory of the box.
fn app(b: &TestBox, name: &str, template: &str) -> String {
    let dir = b.dir.path().join(name);
    std::fs::create_dir_all(dir.join("fn")).unwrap();
    std::fs::write(dir.join("fn/app.py"), "def handler(e, c):\n    return {}\n").unwrap();
    let t = dir.join("template.yaml");
    std::fs::write(&t, template).unwrap();
    t.display().to_string()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `esb up ARGS` must fail after the box process started: its error output, which must
/// hold each of `needles`, in that order.
fn up_fails(b: &TestBox, args: &[&str], needles: &[&str]) -> String {
    let out = b.esb(args);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "esb {args:?} should fail:\n{stdout}{stderr}"
    );
    println!("esb {args:?}:\n{stderr}");
    assert_in_order(&stderr, needles);
    stderr
}

fn assert_in_order(haystack: &str, needles: &[&str]) {
    let mut at = 0;
    for n in needles {
        match haystack[at..].find(n) {
            Some(i) => at += i + n.len(),
            None => panic!("{n:?} not found (in this order) in:\n{haystack}"),
        }
    }
}

/// Nothing of the box is left: no process, namespace, mount, link or box pid file.
fn nothing_left(b: &TestBox, what: &str) {
    let left = b.leftovers(&[]);
    assert!(left.is_empty(), "{what} left: {left:#?}");
    assert!(
        !b.state.join("run/box.pid").exists(),
        "{what}: box pid file left"
    );
}

/// `esb status` after the failed start: not running (exit 3), and why the start failed.
fn status_says(b: &TestBox, needles: &[&str]) {
    let out = b.esb(&["status"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert_in_order(&stdout, needles);
}

const GOOD: &str = "  Good:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: fn/\n      Handler: app.handler\n      Runtime: python3.11\n";

#[test]
fn functions_that_cannot_be_built_are_each_named_and_nothing_is_left() {
    let b = TestBox::new(&boxkit::e2e_app());
    let t = app(
        &b,
        "unbuildable",
        &format!(
            "Resources:\n{GOOD}  Java:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: fn/\n      Handler: example.Handler::handleRequest\n      Runtime: java21\n  Newer:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: fn/\n      Handler: app.handler\n      Runtime: python3.12\n  Missing:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: not-there/\n      Handler: app.handler\n      Runtime: python3.11\n"
        ),
    );
    let needles = [
        "the box did not start: build the images failed:",
        "function Java: runtime java21 has no base image",
        "function Missing: CodeUri not-there/",
        "is not a directory",
        "cleaned up: stopped ",
        "containerd (pid ",
        &format!("removed the node network ({})", b.netns),
        &format!("removed the control network ({})", b.control_netns),
        // Warnings found on the way come after (python3.12 is served by the 3.11 base).
        "warning: Newer: runtime python3.12",
    ];
    let err = up_fails(&b, &["up", "-t", &t], &needles);
    assert!(
        !err.contains("function Good") && !err.contains("function Newer"),
        "the good functions are not blamed:\n{err}"
    );
    assert!(
        !err.contains("stopping containerd"),
        "the cleanup does not mask the error:\n{err}"
    );
    nothing_left(&b, "a failed build");
    status_says(
        &b,
        &[
            "esb is not running",
            "its last start failed: build the images failed:",
            "function Java: runtime java21",
            "function Missing: CodeUri not-there/",
            "cleaned up: stopped ",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_slice(&b.esb(&["status", "--json"]).stdout).expect("status --json");
    assert_eq!(
        json["start"]["failure"]["step"], "build the images",
        "{json}"
    );
    assert_eq!(
        json["start"]["failure"]["lines"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );

    // In the foreground (a service manager's view): the same text on stderr.
    up_fails(&b, &["up", "--foreground", "-t", &t], &needles);
    nothing_left(&b, "a failed build in the foreground");

    b.ok(&["down"]);
    let out = b.esb(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("last start failed"),
        "down forgets the failed start"
    );
}

#[test]
fn a_table_the_service_refuses_is_named_with_the_services_answer() {
    let b = TestBox::new(&boxkit::e2e_app());
    // A local secondary index on a table without a range key: the template loads, and
    // DynamoDB's CreateTable refuses it (as AWS does).
    let t = app(
        &b,
        "badtable",
        "Resources:\n  Orders:\n    Type: AWS::DynamoDB::Table\n    Properties:\n      TableName: orders-by-lsi\n      BillingMode: PAY_PER_REQUEST\n      AttributeDefinitions:\n        - {AttributeName: pk, AttributeType: S}\n        - {AttributeName: at, AttributeType: N}\n      KeySchema:\n        - {AttributeName: pk, KeyType: HASH}\n      LocalSecondaryIndexes:\n        - IndexName: byTime\n          KeySchema:\n            - {AttributeName: pk, KeyType: HASH}\n            - {AttributeName: at, KeyType: RANGE}\n          Projection: {ProjectionType: ALL}\n",
    );
    let needles = [
        "the box did not start: provision tables and buckets failed:",
        "table orders-by-lsi (template line ",
        "CreateTable refused",
        "ValidationException",
        "Table KeySchema does not have a range key, which is required when specifying a LocalSecondaryIndex",
        "cleaned up: stopped ",
        "dynamodb (pid ",
    ];
    up_fails(&b, &["up", "-t", &t], &needles);
    nothing_left(&b, "a refused table");
    status_says(
        &b,
        &[
            "its last start failed: provision tables and buckets failed:",
            "table orders-by-lsi",
            "Table KeySchema does not have a range key",
        ],
    );
}

#[test]
fn a_component_that_cannot_start_is_named_with_its_logs_last_lines() {
    let b = TestBox::new(&boxkit::e2e_app());
    let t = app(
        &b,
        "portlate",
        "Resources:\n  Files:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: late-port-files\n",
    );
    // `esb up` checks that the gateway's port is free (and so does the box process it
    // starts); the port is taken afterwards, once the box process holds its lock and has
    // written its start report (before any component runs; the gateway is the last).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb"));
    cmd.current_dir(&b.app)
        .arg(format!("--state-dir={}", b.state.display()))
        .args(["up", "-t", &t])
        .env_remove("ESB_STATE_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &b.env {
        cmd.env(k, v);
    }
    let up = cmd.spawn().unwrap();
    let report = b.state.join("run/start.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !report.exists() {
        assert!(
            Instant::now() < deadline,
            "the box process wrote no start report; box log:\n{}",
            b.log_tail("box", 40)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let gateway = b
        .env
        .iter()
        .find(|(k, _)| k == "ESB_GATEWAY_LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    let taken = std::net::TcpListener::bind(&gateway)
        .unwrap_or_else(|e| panic!("take {gateway} before the gateway starts: {e}"));
    let out = up.wait_with_output().unwrap();
    drop(taken);
    let (stdout, stderr) = text(&out);
    println!("esb up:\n{stderr}");
    assert!(!out.status.success(), "{stdout}{stderr}");
    let log = b.state.join("logs/gateway.log");
    assert_in_order(
        &stderr,
        &[
            "the box did not start: start gateway failed:",
            "gateway did not start: exit status: 1",
            &format!("last lines of {}:", log.display()),
            &format!("listen on {gateway}"),
            "Address already in use",
            "cleaned up: stopped agent (pid ",
            "containerd (pid ",
        ],
    );
    nothing_left(&b, "a gateway that could not start");
    status_says(
        &b,
        &[
            "its last start failed: start gateway failed:",
            "Address already in use",
        ],
    );
    assert!(Path::new(&log).exists());
}
