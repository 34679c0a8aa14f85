//! Crash safety: the server runs in a child process (this test binary re-executed) and is
//! killed with SIGKILL while uploads are mid-body. After a restart on the same data
//! directory every acknowledged object is intact, nothing partial is visible, and the
//! interrupted writes left no data files behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client_command, run_ok};

const CHILD_ENV: &str = "ESB_S3_CRASH_CHILD_DIR";

/// Not a test of its own: the body of the child process when `ESB_S3_CRASH_CHILD_DIR` is set.
#[test]
fn crash_child_server() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    common::run_server(
        common::config(std::path::Path::new(&dir)),
        |addr| println!("LISTENING {addr}"),
        std::future::pending(),
    );
}

struct ChildServer {
    child: Child,
    endpoint: String,
}

impl ChildServer {
    fn start(dir: &std::path::Path) -> ChildServer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_server",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints "test crash_child_server ... " on the same line.
                if let Some((_, addr)) = line.split_once("LISTENING ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child server did not start within 120 s");
            }
        };
        ChildServer {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    fn kill9(mut self) {
        // SIGKILL by PID: the process we spawned.
        self.child.kill().expect("kill child server");
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(
    server: &ChildServer,
    dir: &std::path::Path,
    mode: &str,
    state: &std::path::Path,
) -> Command {
    let mut cmd = client_command(esb_testkit::python(), &server.endpoint, dir);
    cmd.arg("crash_client.py").arg(mode).arg(state);
    cmd
}

#[test]
fn kill_during_uploads_keeps_acknowledged_objects_and_no_partial_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let data = dir.path().join("s3");

    let server = ChildServer::start(&data);
    run_ok(client(&server, &data, "seed", &state), "crash_client seed");

    // Start uploads that stop mid-body, then kill the server under them.
    let mut partial = client(&server, &data, "partial", &state)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn partial");
    let mut lines = BufReader::new(partial.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "the partial uploads never reached midway"
        );
        match lines.next() {
            Some(Ok(l)) if l.trim() == "midway" => break,
            Some(_) => continue,
            None => panic!(
                "the partial-upload client exited early: {:?}",
                partial.wait()
            ),
        }
    }
    server.kill9();
    let _ = partial.kill();
    let _ = partial.wait();

    // The store starts again on the same directory, and holds exactly what was acknowledged.
    let server = ChildServer::start(&data);
    run_ok(
        client(&server, &data, "verify", &state),
        "crash_client verify",
    );
    server.kill9();
    // ... and starts once more after a crash with nothing in flight.
    let server = ChildServer::start(&data);
    drop(server);
}
