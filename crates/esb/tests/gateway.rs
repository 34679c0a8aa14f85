//! `esb gateway` as a user starts it: settings from the environment, routes from the
//! template, HTTPS with the box's own CA; bad settings refused with the setting named.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TEMPLATE: &str = "Resources:\n  Hello:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: hello/\n      Handler: app.handler\n      Runtime: python3.11\n      Events:\n        Get:\n          Type: Api\n          Properties:\n            Path: /hello\n            Method: get\n";

fn gateway(dir: &std::path::Path, listen: SocketAddr, secret: &str, netns: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_esb"));
    c.current_dir(dir)
        .arg(format!("--state-dir={}", dir.join("state").display()))
        .arg("gateway")
        .env("ESB_GATEWAY_LISTEN", listen.to_string())
        .env("GATEWAY_INTERNAL_URL", "https://10.88.0.1:443")
        .env("ESB_GATEWAY_INTERNAL_NETNS", netns)
        .env(
            "ESB_AGENTS",
            format!("unix://{}", dir.join("no-agent.sock").display()),
        )
        .env("JWT_SECRET_KEY", secret)
        .env("X_API_KEY", "test-api-key")
        .env("AUTH_USER", "alice")
        .env("AUTH_PASS", "wonderland")
        .env("ESB_ACCESS_KEY_ID", "AKIDTEST")
        .env("ESB_SECRET_ACCESS_KEY", "test-secret-key")
        .env("ESB_LOG", "warn");
    c
}

#[test]
fn gateway_serves_health_and_auth_over_https_with_its_own_ca() {
    // The internal listener (for workers) lives in a node namespace of the test's own.
    let node = common::TestNode::new();
    node.ok(&["node", "up", "--no-proxy", "--no-containerd"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("hello")).unwrap();
    std::fs::write(
        dir.path().join("hello/app.py"),
        "def handler(e, c):\n    return {}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("template.yaml"), TEMPLATE).unwrap();
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = gateway(
        dir.path(),
        listen,
        "a-jwt-secret-that-is-long-enough-000",
        &node.netns,
    )
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    let mut p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(listen).is_err() {
        if let Some(st) = p.0.try_wait().unwrap() {
            panic!("esb gateway exited: {st}");
        }
        assert!(Instant::now() < deadline, "gateway did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = dir.path().join("state/tls/ca.pem");
    assert!(ca.exists(), "the box CA is under STATE_DIR/tls");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &format!("localhost:{}:127.0.0.1", listen.port()),
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("https://localhost:{}", listen.port());
    assert!(curl(&[&format!("{base}/health")]).contains("healthy"));
    // A template route without a token: 401; an unknown route: 404.
    assert!(curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/hello")
    ])
    .contains("401"));
    let token = curl(&[
        "-X",
        "POST",
        "-H",
        "x-api-key: test-api-key",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"AuthParameters":{"USERNAME":"alice","PASSWORD":"wonderland"}}"#,
        &format!("{base}/user/auth/ver1.0"),
    ]);
    assert!(token.contains("IdToken"), "{token}");
    assert!(curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/nope")
    ])
    .contains("404"));
}

#[test]
fn a_short_jwt_secret_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("template.yaml"), "Resources: {}\n").unwrap();
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = gateway(dir.path(), listen, "short", "esb-unused")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET_KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
