//! `esb s3`, `esb dynamodb`, `esb logstore` and `esb logs` as a user runs them: each
//! service alone on a loopback port, driven by the AWS CLI and curl.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A service process started by the test, stopped by its PID on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(state: &std::path::Path, args: &[&str], addr: SocketAddr) -> Service {
    let child = Command::new(env!("CARGO_BIN_EXE_esb"))
        .arg(format!("--state-dir={}", state.display()))
        .args(args)
        .arg(format!("--listen={addr}"))
        .env("ESB_ACCESS_KEY_ID", "AKIDTEST")
        .env("ESB_SECRET_ACCESS_KEY", "test-secret-key")
        .env("ESB_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start esb");
    let mut svc = Service(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        if let Some(st) = svc.0.try_wait().unwrap() {
            panic!("esb {args:?} exited: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "esb {args:?} did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    svc
}

fn aws(endpoint: SocketAddr, args: &[&str]) -> Output {
    Command::new(esb_testkit::venv_bin("aws"))
        .args([
            "--endpoint-url",
            &format!("http://{endpoint}"),
            "--region",
            "ap-northeast-1",
            "--output",
            "json",
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run aws")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn s3_and_dynamodb_serve_the_aws_cli() {
    let state = tempfile::tempdir().unwrap();
    let s3 = free_addr();
    let _s3 = start(state.path(), &["s3"], s3);
    ok(aws(
        s3,
        &["s3api", "create-bucket", "--bucket", "cli-bucket"],
    ));
    let file = state.path().join("hello.txt");
    std::fs::write(&file, "hello from the cli\n").unwrap();
    ok(aws(
        s3,
        &[
            "s3",
            "cp",
            file.to_str().unwrap(),
            "s3://cli-bucket/dir/hello.txt",
        ],
    ));
    let listed = ok(aws(s3, &["s3", "ls", "s3://cli-bucket/dir/"]));
    assert!(listed.contains("hello.txt"), "{listed}");
    assert!(state.path().join("s3").is_dir(), "data under STATE_DIR/s3");

    let db = free_addr();
    let _db = start(state.path(), &["dynamodb"], db);
    ok(aws(
        db,
        &[
            "dynamodb",
            "create-table",
            "--table-name",
            "cli-table",
            "--attribute-definitions",
            "AttributeName=pk,AttributeType=S",
            "--key-schema",
            "AttributeName=pk,KeyType=HASH",
            "--billing-mode",
            "PAY_PER_REQUEST",
        ],
    ));
    ok(aws(
        db,
        &[
            "dynamodb",
            "put-item",
            "--table-name",
            "cli-table",
            "--item",
            r#"{"pk":{"S":"a"},"v":{"N":"1"}}"#,
        ],
    ));
    let got = ok(aws(
        db,
        &[
            "dynamodb",
            "get-item",
            "--table-name",
            "cli-table",
            "--key",
            r#"{"pk":{"S":"a"}}"#,
        ],
    ));
    assert!(got.contains("\"N\": \"1\""), "{got}");

    // A wrong secret is refused with the AWS error.
    let out = Command::new(esb_testkit::venv_bin("aws"))
        .args([
            "--endpoint-url",
            &format!("http://{db}"),
            "--region",
            "ap-northeast-1",
            "dynamodb",
            "list-tables",
        ])
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn services_refuse_to_start_without_credentials() {
    let state = tempfile::tempdir().unwrap();
    for svc in ["s3", "dynamodb"] {
        let out = Command::new(env!("CARGO_BIN_EXE_esb"))
            .arg(format!("--state-dir={}", state.path().display()))
            .args([svc, "--listen", "127.0.0.1:1"])
            .env_remove("ESB_ACCESS_KEY_ID")
            .env_remove("ESB_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("ESB_ACCESS_KEY_ID"));
    }
}

#[test]
fn logs_shows_what_the_log_store_received() {
    let state = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _svc = start(state.path(), &["logstore"], addr);
    let lines = "{\"_msg\":\"hello from fn-a\",\"function_name\":\"fn-a\",\"trace_id\":\"Root=1-abc\",\"level\":\"INFO\"}\n\
                 {\"_msg\":\"other\",\"function_name\":\"fn-b\",\"level\":\"ERROR\"}\n";
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "--data-binary", "@-"])
        .arg(format!("http://{addr}/insert/jsonline"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(lines.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let logs = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_esb"))
            .args(["logs", "--url", &format!("http://{addr}")])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Ingestion becomes visible quickly but not synchronously everywhere: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = logs(&[]);
    while !all.contains("hello from fn-a") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        all = logs(&[]);
    }
    assert!(
        all.contains("hello from fn-a") && all.contains("other"),
        "{all}"
    );
    let only_a = logs(&["--function", "fn-a"]);
    assert!(
        only_a.contains("hello from fn-a") && !only_a.contains("other"),
        "{only_a}"
    );
    let by_trace = logs(&["--trace", "Root=1-abc"]);
    assert!(
        by_trace.contains("hello from fn-a") && !by_trace.contains("other"),
        "{by_trace}"
    );
}
