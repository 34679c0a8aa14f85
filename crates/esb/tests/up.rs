//! `esb up` end to end, as root, with real parts only: the whole box (containerd, CNI,
//! nftables, the embedded services, agent, gateway) driven through real clients —
//! requests, boto3, the AWS CLI and curl (crates/esb/tests/e2e/test_box.py) — then
//! `esb down` leaving nothing behind; `esb watch` under load; crash recovery; the example
//! application; and bad input refused with nothing created.

mod boxkit;

use std::process::{Command, Stdio};
use std::time::Duration;

use boxkit::{e2e_app, e2e_box, TestBox};
use serde_json::Value;

fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no component {name} in {status}"))
}

fn mode(p: &std::path::Path) -> u32 {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777
}

/// Every process's command line (NUL-separated arguments joined by spaces).
fn all_command_lines() -> Vec<(String, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some((e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect()
}

#[test]
fn e2e_suite_through_real_clients_then_down_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let b = e2e_box();
    // A state directory an older version left readable to everyone.
    std::fs::create_dir_all(b.state.join("logs")).unwrap();
    std::fs::write(b.state.join("logs/old.log"), "old\n").unwrap();
    for (p, m) in [
        (b.state.clone(), 0o755),
        (b.state.join("logs"), 0o755),
        (b.state.join("logs/old.log"), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    // The box's keys given on the command line: honoured, and kept off every command
    // line (the box's own included).
    let (access_key, secret_key) = ("AKIDE2EFLAGS", "e2e-flag-secret-0123456789abcdef");
    let out = b.ok(&["up", "--access-key", access_key, "--secret-key", secret_key]);
    assert!(out.contains("esb is up"), "{out}");
    assert!(
        out.contains("generated secrets"),
        "first up names the generated secrets: {out}"
    );
    let secrets = b.secrets();
    assert_eq!(secrets["ESB_ACCESS_KEY_ID"], access_key);
    assert_eq!(secrets["ESB_SECRET_ACCESS_KEY"], secret_key);
    let secret_values: Vec<String> = [
        "ESB_SECRET_ACCESS_KEY",
        "JWT_SECRET_KEY",
        "X_API_KEY",
        "AUTH_PASS",
    ]
    .iter()
    .map(|k| secrets[*k].clone())
    .collect();
    for v in &secret_values {
        assert!(v.len() >= 8, "{v}");
        assert!(
            !out.contains(v.as_str()),
            "`esb up` printed a secret: {out}"
        );
    }
    // Owner only: the state directory (it was 0755), its databases, secrets and logs.
    assert_eq!(mode(&b.state), 0o700);
    assert_eq!(mode(&b.state.join("logs")), 0o700);
    assert_eq!(mode(&b.state.join("logs/old.log")), 0o600);
    assert_eq!(mode(&b.state.join("secrets.toml")), 0o600);
    assert_eq!(mode(&b.state.join("s3/index.redb")), 0o600);
    assert_eq!(mode(&b.state.join("dynamodb/dynamodb.sqlite3")), 0o600);
    assert_eq!(mode(&b.state.join("s3")), 0o700);
    let segments: Vec<_> = std::fs::read_dir(b.state.join("logstore"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .collect();
    assert!(!segments.is_empty());
    for s in segments {
        assert_eq!(mode(&s.path()), 0o600, "{}", s.path().display());
    }
    // No process shows a secret on its command line; the box's foreground output (its
    // log) holds none either.
    for (pid, cmdline) in all_command_lines() {
        for v in &secret_values {
            assert!(!cmdline.contains(v.as_str()), "pid {pid}: {cmdline}");
        }
    }
    let box_log = std::fs::read_to_string(b.state.join("logs/box.log")).unwrap();
    for v in &secret_values {
        assert!(!box_log.contains(v.as_str()), "box.log holds a secret");
    }
    let pid = b.status()["pid"].as_i64().unwrap();
    // Provisioned concurrency is started with the box, without any request.
    b.wait_for("the provisioned worker of public", || {
        b.status()["functions"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == "public"))
            .is_some_and(|f| f["workers"].as_array().is_some_and(|w| !w.is_empty()))
    });

    // A second up reports the running box instead of starting another.
    let again = b.ok(&["up"]);
    assert!(again.contains("already running"), "{again}");
    assert!(!again.contains("generated secrets"), "{again}");
    assert_eq!(b.status()["pid"].as_i64().unwrap(), pid);

    // The suite, through real clients only.
    b.pytest("test_box.py");

    // `esb invoke --async`: the Event invocation type, accepted with a request id.
    let queued = b.ok(&[
        "invoke",
        "recorder",
        "--async",
        "--payload",
        r#"{"from":"esb invoke"}"#,
    ]);
    assert!(queued.contains("accepted (202)"), "{queued}");
    let missing = b.esb(&["invoke", "no-such-function"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("ResourceNotFoundException"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // Every check passes, including the worker's path to the gateway (GATEWAY_INTERNAL_URL
    // from inside the node namespace, TLS verified with the box CA).
    let doctor = b.ok(&["doctor"]);
    assert!(doctor.contains("worker -> gateway"), "{doctor}");
    assert!(doctor.contains("all checks passed"), "{doctor}");

    // A crashed component is reported and restarted; the others keep their process.
    let before = b.status();
    let s3_pid = component(&before, "s3")["pid"].as_i64().unwrap() as i32;
    let gw_pid = component(&before, "gateway")["pid"].as_i64().unwrap();
    // SAFETY: SIGKILL to the S3 process this box started (PID from its status).
    unsafe {
        libc::kill(s3_pid, libc::SIGKILL);
    }
    b.wait_for("s3 restarted", || {
        let s = b.status();
        let c = component(&s, "s3");
        c["restarts"].as_u64() >= Some(1)
            && c["state"] == "running"
            && c["pid"].as_i64() != Some(s3_pid as i64)
    });
    let after = b.status();
    assert_eq!(
        component(&after, "gateway")["pid"].as_i64().unwrap(),
        gw_pid
    );
    assert_eq!(component(&after, "gateway")["restarts"], 0);
    let human = b.ok(&["status"]);
    assert!(human.contains("restarts 1"), "{human}");
    // S3 answers again (from the host, through the AWS CLI).
    let ls = b
        .python(&[
            "-c",
            "import os,subprocess,sys; sys.exit(subprocess.call([os.path.join(os.path.dirname(sys.executable),'aws'),'s3','ls','--endpoint-url',os.environ['E2E_S3']]))",
        ])
        .output()
        .unwrap();
    assert!(
        ls.status.success() && String::from_utf8_lossy(&ls.stdout).contains("e2e-bucket"),
        "{}{}",
        String::from_utf8_lossy(&ls.stdout),
        String::from_utf8_lossy(&ls.stderr)
    );

    b.down_clean();
    let st = b.esb(&["status", "--json"]);
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stdout).contains("\"running\":false"));
}

#[test]
fn watch_swaps_code_under_continuous_load_with_zero_failed_requests() {
    let b = e2e_box();
    b.up();
    let token = b.token();
    let (code, body) = b.curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &b.url("/echo"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "1"
    );

    let mut watch = Command::new(env!("CARGO_BIN_EXE_esb"))
        .arg(format!("--state-dir={}", b.state.display()))
        .arg("watch")
        .envs(b.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let load = b
        .load(&token, "/echo", 30, 4)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    std::fs::write(b.app.join("functions/echo/version.txt"), "2\n").unwrap();
    let out = load.wait_with_output().unwrap();
    let _ = watch.kill();
    let watched = watch.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("load.py said: {}", String::from_utf8_lossy(&out.stdout)));
    println!(
        "load: {report}\nwatch: {}",
        String::from_utf8_lossy(&watched.stdout)
    );
    assert!(
        String::from_utf8_lossy(&watched.stdout).contains("rebuilt"),
        "esb watch did not rebuild: {}",
        String::from_utf8_lossy(&watched.stdout)
    );
    assert_eq!(
        report["failed"], 0,
        "failed requests during the swap: {report}"
    );
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["versions"]["1"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(
        report["versions"]["2"].as_u64().unwrap_or(0) > 0,
        "new requests must reach the new code: {report}"
    );
    // Only the edited function got a new image.
    let s = b.status();
    let images = s["last_build"]["images"].as_array().unwrap();
    let changed: Vec<&str> = images
        .iter()
        .filter(|i| i["changed"] == true)
        .map(|i| i["function"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["EchoFunction"], "{}", s["last_build"]);
    b.down_clean();
}

#[test]
fn up_after_an_unclean_stop_recovers_and_leaves_nothing() {
    let b = e2e_box();
    b.up();
    let (code, body) = b.curl(&[&b.url("/public")]);
    assert_eq!(code, 200, "{body}");
    let pids = b.recorded_pids();
    assert!(pids.len() >= 8, "box + 7 components: {pids:?}");
    for p in &pids {
        // SAFETY: SIGKILL to processes this box recorded (its own and its children's).
        unsafe {
            libc::kill(*p, libc::SIGKILL);
        }
    }
    b.wait_for("every process gone", || {
        pids.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        })
    });
    let st = b.esb(&["status"]);
    assert!(!st.status.success(), "no box runs after kill -9");
    // Meanwhile the template's table changed its key: reported as drift, data kept.
    let t = b.app.join("template.yaml");
    let text = std::fs::read_to_string(&t).unwrap();
    std::fs::write(
        &t,
        text.replace(
            "        - AttributeName: sk\n          KeyType: RANGE\n",
            "",
        )
        .replace(
            "        - AttributeName: sk\n          AttributeType: S\n",
            "",
        ),
    )
    .unwrap();
    let out = b.up();
    assert!(out.contains("esb is up"), "{out}");
    assert!(
        out.contains("drift") && out.contains("table e2e-table: key schema differs"),
        "{out}"
    );
    let (code, body) = b.curl(&[&b.url("/public")]);
    assert_eq!(code, 200, "{body}");
    let token = b.token();
    let (code, body) = b.curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &b.url("/echo"),
    ]);
    assert_eq!(code, 200, "{body}");
    b.down_clean();
    // down after an unclean stop (no box process) cleans up too.
    b.up();
    let (code, _) = b.curl(&[&b.url("/public")]);
    assert_eq!(code, 200);
    let pids = b.recorded_pids();
    for p in &pids {
        // SAFETY: as above.
        unsafe {
            libc::kill(*p, libc::SIGKILL);
        }
    }
    // Polled: a loaded machine may take its time to tear the processes down.
    b.wait_for("the killed processes gone", || {
        pids.iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        })
    });
    b.ok(&["down"]);
    let left = b.leftovers(&pids);
    assert!(left.is_empty(), "down after kill -9 left: {left:#?}");
}

#[test]
fn the_example_application_is_served_without_a_template_flag() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let b = TestBox::new(&examples);
    let dist = b.app.join("functions/greeter/dist");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::copy(boxkit::greeter_bootstrap(), dist.join("bootstrap")).unwrap();
    // No --template: the directory's template.yaml.
    let out = b.up();
    assert!(
        out.contains(&b.app.join("template.yaml").display().to_string()),
        "{out}"
    );
    let (code, body) = b.curl(&[&b.url("/hello?name=edge")]);
    if code != 200 {
        // Records ship within a few seconds; give them the time before showing them.
        std::thread::sleep(std::time::Duration::from_secs(5));
        let logs = b
            .in_host("curl")
            .args([
                "-s",
                "--max-time",
                "10",
                &format!(
                    "http://127.0.0.1:{}/select/logsql/query?query=_time:10m&limit=40",
                    b.logs_port
                ),
            ])
            .output()
            .unwrap();
        panic!(
            "/hello answered {code}: {body}\nlog store:\n{}{}\ngateway:\n{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr),
            b.log_events("gateway", 30)
        );
    }
    assert!(body.contains("Hello, edge"), "{body}");
    let (code, _) = b.curl(&[&b.url("/notes")]);
    assert_eq!(code, 401);
    let token = b.token();
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = b.curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"title":"edge","text":"runs where AWS is not"}"#,
        &b.url("/notes"),
    ]);
    assert!(code == 200 || code == 201, "{code} {body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = b.curl(&["-H", &auth, &b.url(&format!("/notes/{id}"))]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("runs where AWS is not"), "{body}");
    // The example's walk-through with real clients (requests, boto3).
    b.pytest("test_examples.py");
    b.down_clean();
}

fn write_app(dir: &std::path::Path, template: &str) {
    std::fs::create_dir_all(dir.join("fn")).unwrap();
    std::fs::write(dir.join("fn/app.py"), "def handler(e, c):\n    return {}\n").unwrap();
    std::fs::write(dir.join("template.yaml"), template).unwrap();
}

const GOOD: &str = "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: fn/\n      Handler: app.handler\n      Runtime: python3.11\n";

#[test]
fn bad_input_is_refused_by_name_and_creates_nothing() {
    let b = TestBox::new(&e2e_app());
    let check_nothing = |what: &str| {
        let left = b.leftovers(&[]);
        assert!(left.is_empty(), "{what} left: {left:#?}");
        assert!(
            !b.state.join("run/box.pid").exists(),
            "{what}: no box pid file"
        );
    };
    let fails = |args: &[&str], env: &[(&str, &str)], needle: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb"));
        cmd.current_dir(&b.app)
            .arg(format!("--state-dir={}", b.state.display()))
            .args(args);
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} should fail");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in:\n{err}");
        check_nothing(needle);
    };
    let dir = b.dir.path().join("bad");
    // A template with an error: named, nothing started.
    write_app(
        &dir,
        &format!("{GOOD}      Environment:\n        Variables:\n          T: !Ref NoSuchThing\n"),
    );
    let t = dir.join("template.yaml").display().to_string();
    fails(&["up", "-t", &t], &[], "NoSuchThing");
    fails(
        &["up", "-t", "/nonexistent/template.yaml"],
        &[],
        "ESB_TEMPLATE",
    );
    write_app(&dir, GOOD);
    // Ports in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    fails(
        &["up", "-t", &t],
        &[("ESB_GATEWAY_LISTEN", &busy_addr)],
        "ESB_GATEWAY_LISTEN",
    );
    fails(
        &["up", "-t", &t],
        &[("ESB_DYNAMODB_LISTEN", &busy_addr)],
        "ESB_DYNAMODB_LISTEN",
    );
    // A bad setting, a missing supervisor, a bad configuration file.
    fails(
        &["up", "-t", &t],
        &[("CNI_SUBNET", "10.99.0.0/24")],
        "CNI_SUBNET",
    );
    fails(
        &["up", "-t", &t],
        &[("ESB_SUPERVISOR_BIN", "/nonexistent/esb-supervisor")],
        "ESB_SUPERVISOR_BIN",
    );
    let conf = dir.join("esb.toml");
    std::fs::write(&conf, "CNI_SUBNETT = \"10.88.1.0/24\"\n").unwrap();
    fails(
        &["up", "-t", &t],
        &[("ESB_CONFIG", conf.to_str().unwrap())],
        "CNI_SUBNETT",
    );
    fails(
        &["up", "-t", &t],
        &[("JWT_SECRET_KEY", "short")],
        "JWT_SECRET_KEY",
    );
    // A read-only and a full state directory (tmpfs mounts of the test's own).
    for (opts, needle) in [
        ("ro,size=4m", "ESB_STATE_DIR"),
        ("size=256k", "ESB_STATE_DIR"),
    ] {
        let mnt = b.dir.path().join(format!("mnt-{}", opts.len()));
        std::fs::create_dir_all(&mnt).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                opts,
                "esbt-state",
                mnt.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
            }
        }
        let _guard = Unmount(mnt.clone());
        let state = mnt.join("state");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb"));
        cmd.arg(format!("--state-dir={}", state.display()))
            .args(["up", "-t", &t]);
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opts}: should fail");
        assert!(err.contains(needle), "{opts}: {err}");
        assert!(
            !std::path::Path::new("/run/netns").join(&b.netns).exists(),
            "{opts}: no namespace"
        );
    }
}

#[test]
fn reset_asks_first_and_then_removes_the_state() {
    let b = TestBox::new(&e2e_app());
    std::fs::create_dir_all(b.state.join("s3/bucket")).unwrap();
    std::fs::write(b.state.join("secrets.toml"), "X_API_KEY = \"k\"\n").unwrap();
    // No terminal and no --yes: refused, nothing removed.
    let out = b.esb(&["reset"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(b.state.join("s3/bucket").exists());
    let out = b.ok(&["reset", "--yes"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!b.state.exists());
}

#[test]
fn config_file_environment_and_masked_secrets() {
    let b = TestBox::new(&e2e_app());
    std::fs::write(
        b.app.join("esb.toml"),
        "CNI_SUBNET = \"10.88.9.0/24\"\nX_API_KEY = \"key-from-the-file\"\nCIRCUIT_BREAKER_THRESHOLD = 7\n",
    )
    .unwrap();
    let out = b.ok(&["config"]);
    assert!(
        out.contains("CNI_SUBNET = \"10.88.9.0/24\"  # file"),
        "{out}"
    );
    assert!(
        out.contains("CIRCUIT_BREAKER_THRESHOLD = \"7\"  # file"),
        "{out}"
    );
    assert!(
        !out.contains("key-from-the-file"),
        "secrets are masked: {out}"
    );
    assert!(out.contains("X_API_KEY = \"********"), "{out}");
    // The environment wins over the file.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_esb"));
    let out = cmd
        .current_dir(&b.app)
        .arg(format!("--state-dir={}", b.state.display()))
        .args(["config", "--show-secrets"])
        .env("CNI_SUBNET", "10.88.10.0/24")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CNI_SUBNET = \"10.88.10.0/24\"  # env"),
        "{text}"
    );
    assert!(text.contains("key-from-the-file"), "{text}");
}
