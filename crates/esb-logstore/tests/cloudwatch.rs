//! The CloudWatch Logs API of the log store driven by real clients: boto3's `logs` client
//! (`tests/py/cloudwatch.py`) and the stock AWS CLI v2 (`/usr/bin/aws logs tail`, with and
//! without `--follow`), on the main listener with the box's key pair and on the workers'
//! listener with functions' keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use esb_logstore::{BoxKey, Config, Server};

const BOX_AK: &str = "ESBBOXTESTKEY0000001";
const BOX_SK: &str = "box-secret-for-the-cloudwatch-tests-0001";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/cloudwatch.py")
}

struct TestServer {
    addr: SocketAddr,
    workers: Option<SocketAddr>,
    env: Vec<(String, String)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Issues a key with only the basic execution role (`greeter`) and one allowed to read
/// logs (`reader`) into the credentials file `path`; returns the script's settings.
fn issue_keys(path: &Path) -> Vec<(String, String)> {
    let mut read = esb_iam::Policy::default();
    read.allow(
        &[
            "logs:FilterLogEvents",
            "logs:GetLogEvents",
            "logs:Describe*",
        ],
        vec!["arn:aws:logs:*:*:log-group:/custom/*".into()],
    );
    let grants = [
        esb_iam::store::FunctionGrant {
            function: "greeter".into(),
            revision: "r1".into(),
            has_policy: false,
            policy: esb_iam::Policy::default(),
        },
        esb_iam::store::FunctionGrant {
            function: "reader".into(),
            revision: "r1".into(),
            has_policy: true,
            policy: read,
        },
    ];
    let keys = esb_iam::store::issue(
        path,
        &grants,
        esb_iam::Mode::Enforce,
        "123456789012",
        Duration::from_secs(60),
    )
    .expect("issue functions' keys");
    let (g, r) = (&keys["greeter"], &keys["reader"]);
    vec![
        ("CW_FN_AK".into(), g.access_key.clone()),
        ("CW_FN_SK".into(), g.secret_key.clone()),
        ("CW_READER_AK".into(), r.access_key.clone()),
        ("CW_READER_SK".into(), r.secret_key.clone()),
    ]
}

impl TestServer {
    async fn start(with_box_key: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let iam = dir.path().join("credentials.json");
        let env = issue_keys(&iam);
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            worker_listen: Some("127.0.0.1:0".parse().unwrap()),
            iam_file: Some(iam),
            box_key: with_box_key.then(|| BoxKey {
                access_key: BOX_AK.into(),
                secret_key: BOX_SK.into(),
            }),
            ..Default::default()
        };
        let server = Server::bind(config).await.expect("bind the log store");
        let addr = server.local_addr();
        let workers = server.worker_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            workers,
            env,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Runs a scenario of `tests/py/cloudwatch.py`, failing the test with its output.
    async fn scenario(&self, name: &str) -> String {
        let mut cmd = Command::new(esb_testkit::python());
        cmd.arg(script())
            .arg(name)
            .env("CW_URL", format!("http://{}", self.addr))
            .env(
                "CW_WORKER_URL",
                format!("http://{}", self.workers.expect("workers' listener")),
            )
            .env("CW_AK", BOX_AK)
            .env("CW_SK", BOX_SK)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let out = cmd.output().expect("run the Python client");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "scenario {name} failed:\n--- stdout\n{stdout}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .await
        .unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .expect("the server stops within the deadline")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_groups_streams_events_filters_retention_and_deletes() {
    let server = TestServer::start(true).await;
    let out = server.scenario("api").await;
    assert!(out.contains("api ok"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_must_be_signed_with_the_box_key() {
    let server = TestServer::start(true).await;
    server.scenario("auth").await;
    server.stop().await;
    let server = TestServer::start(false).await;
    server.scenario("no_box_key").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_function_records_appear_as_lambda_log_groups() {
    let server = TestServer::start(true).await;
    server.scenario("contract").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_keys_get_the_basic_execution_role_and_their_policy() {
    let server = TestServer::start(true).await;
    server.scenario("workers").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_v2_logs_tail_and_follow() {
    let server = TestServer::start(true).await;
    server.scenario("cli_tail").await;
    server.stop().await;
}

/// Groups, streams, retention and deletions survive a restart; the catalogue of groups
/// named by records is rebuilt from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_catalogue_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: PathBuf| async move {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir,
            box_key: Some(BoxKey {
                access_key: BOX_AK.into(),
                secret_key: BOX_SK.into(),
            }),
            ..Default::default()
        };
        let server = Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        (addr, tx, task)
    };
    let run = |addr: SocketAddr, name: &'static str| async move {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(esb_testkit::python())
                .arg(script())
                .arg(name)
                .env("CW_URL", format!("http://{addr}"))
                .env("CW_AK", BOX_AK)
                .env("CW_SK", BOX_SK)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "scenario {name}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await
        .unwrap()
    };
    let (addr, tx, task) = start(dir.path().to_path_buf()).await;
    run(addr, "restart_before").await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    let meta = dir.path().join("cloudwatch.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&meta).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", meta.display());
    let (addr, tx, task) = start(dir.path().to_path_buf()).await;
    run(addr, "restart_after").await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
