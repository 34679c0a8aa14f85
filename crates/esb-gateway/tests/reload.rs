//! Live reload and the admin socket, with real functions (Python on awslambdaric) under
//! real `esb-supervisor` processes started by the scaffolding agent of `common`, and real
//! clients (HTTPS over hyper, the signed Invoke API, HTTP over the admin unix socket).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use esb_gateway::{FunctionSpec, ReloadReport};
use esb_template::EventKind;
use serde_json::{json, Value};

/// A function reporting its code version `rev` (open route `GET path`).
fn vfn(name: &str, rev: &str, path: &str) -> FunctionSpec {
    let mut f = spec(name, "python:gwfn.version");
    f.revision = format!("sha256:{rev}");
    f.env = vec![("ESB_TEST_REV".into(), rev.into())];
    f.events = vec![event(EventKind::Api, "GET", path, true)];
    f
}

fn admin_path(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

async fn status(b: &TestBox) -> Value {
    let (code, v) = admin_get(&admin_path(b.dir.path()), "/status").await;
    assert_eq!(code, 200, "{v}");
    v
}

fn function<'v>(status: &'v Value, name: &str) -> Option<&'v Value> {
    status["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
}

/// Ids of the function's idle and busy workers.
fn worker_ids(status: &Value, name: &str) -> Vec<String> {
    let Some(f) = function(status, name) else {
        return Vec::new();
    };
    f["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn start(functions: Vec<FunctionSpec>) -> TestBox {
    TestBox::start(functions, |c| {
        c.admin_socket = Some(admin_path(&c.data_dir));
        c.pool_acquire_timeout = Duration::from_secs(60);
    })
    .await
}

/// Polls the admin status until `f` holds (generous deadline, no timing assertion).
async fn status_until(b: &TestBox, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(b).await;
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_changes_functions_and_routes() {
    let b = start(vec![
        vfn("a", "1", "/a"),
        vfn("b", "1", "/b"),
        vfn("c", "1", "/c"),
    ])
    .await;
    let c = b.client();
    for p in ["/a", "/b", "/c"] {
        let r = c.get(p, &[]).await;
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        assert_eq!(r.json()["rev"], "1");
    }
    let before = status(&b).await;
    let a_workers = worker_ids(&before, "a");
    let b_workers = worker_ids(&before, "b");
    let c_workers = worker_ids(&before, "c");
    assert_eq!(a_workers.len(), 1, "{before}");
    assert_eq!(c_workers.len(), 1, "{before}");

    let mut d = vfn("d", "1", "/d");
    d.events
        .push(event(EventKind::HttpApi, "POST", "/d/{x}", true));
    let report = b
        .reloader
        .as_ref()
        .unwrap()
        .reload(vec![vfn("a", "1", "/a"), vfn("c", "2", "/c"), d])
        .await
        .expect("reload");
    assert_eq!(
        report,
        ReloadReport {
            added: names(&["d"]),
            changed: names(&["c"]),
            removed: names(&["b"]),
            unchanged: names(&["a"]),
        }
    );

    // Routes: the removed one is gone, the changed one serves the new code, the new ones
    // exist.
    assert_eq!(c.get("/b", &[]).await.status, 404);
    let r = c.get("/c", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rev"], "2");
    let r = c.get("/d", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.send("POST", "/d/x", &[], b"{}".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get("/a", &[]).await.status, 200);
    // The Invoke API follows too (by name and by logical id).
    let r = c.invoke("b", b"{}", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.header("x-amzn-errortype").as_deref(),
        Some("ResourceNotFoundException")
    );
    let r = c.invoke("dFunction", b"{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rev"], "1");
    let r = c.invoke("c", b"{}", &[]).await;
    assert_eq!(r.json()["rev"], "2");

    let after = status(&b).await;
    assert_eq!(after["reloads"], 1);
    let listed: Vec<&str> = after["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["a", "c", "d"]);
    // The unchanged function kept its worker; the changed one has new workers.
    assert_eq!(worker_ids(&after, "a"), a_workers, "{after}");
    let c_new = worker_ids(&after, "c");
    assert!(!c_new.is_empty(), "{after}");
    assert!(c_new.iter().all(|w| !c_workers.contains(w)), "{after}");
    assert_eq!(function(&after, "c").unwrap()["revision"], "sha256:2");
    assert_eq!(
        function(&after, "d").unwrap()["routes"],
        json!(["GET /d", "POST /d/{x}"])
    );
    // The old versions' workers are destroyed.
    let old: Vec<String> = b_workers.iter().chain(&c_workers).cloned().collect();
    wait_until("old workers destroyed", Duration::from_secs(60), || {
        let running = b.agent.running();
        old.iter().all(|w| !running.contains(w))
    })
    .await;
    assert!(b.agent.running().contains(&a_workers[0]));
    // Metrics follow the current set.
    let m = c.get("/metrics", &[]).await.text();
    assert!(
        !m.contains("esb_gateway_pool_workers{function=\"b\""),
        "{m}"
    );
    assert!(
        m.contains("esb_gateway_pool_workers{function=\"d\",state=\"idle\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("esb_gateway_pool_workers{function=\"c\",state=\"idle\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_continuous_load_fails_no_request() {
    let mk = |rev: &str| {
        let mut f = vfn("live", rev, "/live");
        // Each invocation takes a while, so that some are in flight during the swap.
        f.env.push(("ESB_TEST_SLEEP".into(), "0.05".into()));
        // Fewer places than clients: some requests always wait in the pool's queue, and
        // the reload moves those to the new pool.
        f.reserved = Some(2);
        f.provisioned = 1;
        f
    };
    let b = start(vec![mk("1")]).await;
    status_until(&b, "the provisioned worker", |s| {
        function(s, "live").unwrap()["pool"]["idle"] == 1
    })
    .await;

    // (started, ended, status or error, rev) of every request.
    type Log = Arc<Mutex<Vec<(Instant, Instant, Result<u16, String>, Option<String>)>>>;
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (client, log, stop) = (b.client(), log.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                // Half the clients use the API route, half the Invoke API.
                let r = if i % 2 == 0 {
                    client.try_send("GET", "/live", &[], Vec::new()).await
                } else {
                    Ok(client.invoke("live", b"{}", &[]).await)
                };
                let entry = match r {
                    Ok(r) => {
                        let rev = serde_json::from_slice::<Value>(&r.body)
                            .ok()
                            .and_then(|v| v["rev"].as_str().map(str::to_string));
                        (started, Instant::now(), Ok(r.status), rev)
                    }
                    Err(e) => (started, Instant::now(), Err(e), None),
                };
                log.lock().unwrap().push(entry);
            }
        }));
    }
    let count = |after: Option<Instant>| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(t, ..)| after.is_none_or(|a| *t > a))
            .count()
    };
    wait_until(
        "requests before the reload",
        Duration::from_secs(120),
        || count(None) >= 20,
    )
    .await;
    let reloading = Instant::now();
    let report = b
        .reloader
        .as_ref()
        .unwrap()
        .reload(vec![mk("2")])
        .await
        .expect("reload");
    let reloaded = Instant::now();
    assert_eq!(report.changed, names(&["live"]));
    wait_until(
        "requests after the reload",
        Duration::from_secs(120),
        || count(Some(reloaded)) >= 20,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    let failed: Vec<_> = log.iter().filter(|(_, _, s, _)| *s != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        log.len()
    );
    let old = log
        .iter()
        .filter(|(.., r)| r.as_deref() == Some("1"))
        .count();
    assert!(old >= 20, "{log:?}");
    // Some requests were in flight across the swap, and they succeeded too.
    let across = log
        .iter()
        .filter(|(s, e, ..)| *s < reloading && *e > reloaded)
        .count();
    assert!(across > 0, "{log:?}");
    eprintln!(
        "{} requests, {old} on the old version, {across} in flight across the swap",
        log.len()
    );
    let stale: Vec<_> = log
        .iter()
        .filter(|(t, .., r)| *t > reloaded && r.as_deref() != Some("2"))
        .collect();
    assert!(
        stale.is_empty(),
        "requests started after reload() returned were served by the old version: {stale:?}"
    );

    // Only new workers remain: the old ones were destroyed as their requests ended.
    let s = status(&b).await;
    let now: BTreeSet<String> = worker_ids(&s, "live").into_iter().collect();
    wait_until("old workers destroyed", Duration::from_secs(60), || {
        let running: BTreeSet<String> = b.agent.running().into_iter().collect();
        running.is_subset(&now) || running == now
    })
    .await;
    assert_eq!(function(&s, "live").unwrap()["revision"], "sha256:2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_changes_nothing() {
    let b = start(vec![vfn("a", "1", "/a"), vfn("b", "1", "/b")]).await;
    let c = b.client();
    assert_eq!(c.get("/a", &[]).await.status, 200);
    let workers = worker_ids(&status(&b).await, "a");
    let reloader = b.reloader.clone().unwrap();

    let mut too_many = vfn("a", "2", "/a");
    too_many.reserved = Some(1);
    too_many.provisioned = 2;
    let mut bad_path = vfn("b", "2", "/b");
    bad_path
        .events
        .push(event(EventKind::Api, "GET", "nope", true));
    let cases: Vec<(Vec<FunctionSpec>, &str)> = vec![
        (
            vec![vfn("a", "2", "/a"), vfn("b", "2", "/a")],
            "route GET /a is declared twice (functions a and b)",
        ),
        (
            vec![vfn("a", "2", "/a"), vfn("a", "3", "/x")],
            "two functions are named \"a\"",
        ),
        (
            vec![too_many, vfn("b", "2", "/b")],
            "function a: ProvisionedConcurrency 2 exceeds its concurrency 1",
        ),
        (
            vec![vfn("a", "2", "/a"), bad_path],
            "function b event GETnope",
        ),
    ];
    for (specs, want) in cases {
        let e = reloader.reload(specs).await.unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should say {want:?}");
        // The old set still serves, unchanged.
        for p in ["/a", "/b"] {
            let r = c.get(p, &[]).await;
            assert_eq!(r.status, 200, "{p}: {}", r.text());
            assert_eq!(r.json()["rev"], "1");
        }
        let s = status(&b).await;
        assert_eq!(s["reloads"], 0);
        assert_eq!(worker_ids(&s, "a"), workers);
        assert_eq!(function(&s, "a").unwrap()["revision"], "sha256:1");
    }
    assert_eq!(c.get("/x", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_event_invocations_follow_the_reload() {
    let mk = |rev: &str| {
        let mut f = vfn("q", rev, "/q");
        f.reserved = Some(1);
        f
    };
    let b = start(vec![mk("1")]).await;
    let dir = b.dir.path().to_path_buf();

    // Holds the only worker until `release` exists, queues an Event invocation behind
    // it, then reloads with `next`.
    let hold_queue_reload = |tag: &'static str, next: Vec<FunctionSpec>| {
        let b = &b;
        let dir = dir.clone();
        async move {
            let release = dir.join(format!("release-{tag}"));
            let record = dir.join(format!("record-{tag}.json"));
            let client = b.client();
            let payload = json!({"wait_for": release.to_str().unwrap()}).to_string();
            let held =
                tokio::spawn(async move { client.invoke("q", payload.as_bytes(), &[]).await });
            status_until(b, "a busy worker", |s| {
                function(s, "q").unwrap()["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|w| w["state"] == "busy")
            })
            .await;
            let r = b
                .client()
                .invoke(
                    "q",
                    json!({"record": record.to_str().unwrap()})
                        .to_string()
                        .as_bytes(),
                    &[("x-amz-invocation-type", "Event")],
                )
                .await;
            assert_eq!(r.status, 202, "{}", r.text());
            status_until(b, "the Event invocation waiting", |s| {
                function(s, "q").unwrap()["pool"]["waiting"] == 1
            })
            .await;
            b.reloader
                .as_ref()
                .unwrap()
                .reload(next)
                .await
                .expect("reload");
            std::fs::write(&release, b"").unwrap();
            // The request in flight finished on its old worker.
            let r = held.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            record
        }
    };

    // Changed: the queued invocation runs on the new version.
    let record = hold_queue_reload("changed", vec![mk("2")]).await;
    wait_until("the Event invocation ran", Duration::from_secs(120), || {
        record.exists()
    })
    .await;
    let out: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(out["rev"], "2");

    // Removed: the queued invocation fails cleanly (counted, logged), nothing runs it.
    let record = hold_queue_reload("removed", vec![vfn("z", "1", "/z")]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = b.client().get("/metrics", &[]).await.text();
        if m.contains("esb_gateway_async_failures_total{function=\"q\"} 1") {
            assert!(m.contains("esb_gateway_event_queue_depth 0"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "no async failure recorded: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!record.exists());
    wait_until("q's workers destroyed", Duration::from_secs(60), || {
        b.agent.running_of("q") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_status_shape_and_mode() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("gw.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let mut s = vfn("s", "1", "/s");
    s.events.push(event(EventKind::Api, "POST", "/s", false));
    s.reserved = Some(3);
    s.provisioned = 1;
    let n = spec("n", "python:gwfn.version");
    let path = sock.clone();
    let mut b = TestBox::start(vec![s, n], move |c| c.admin_socket = Some(path)).await;

    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        admin_get(&sock, "/health").await,
        (200, json!({"status": "healthy"}))
    );
    assert_eq!(admin_get(&sock, "/nothing").await.0, 404);

    let deadline = Instant::now() + Duration::from_secs(120);
    let v = loop {
        let (code, v) = admin_get(&sock, "/status").await;
        assert_eq!(code, 200);
        if v["functions"][0]["pool"]["idle"] == 1 {
            break v;
        }
        assert!(Instant::now() < deadline, "no provisioned worker: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let sorted = |mut k: Vec<&str>| {
        k.sort();
        k.into_iter().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&v),
        sorted(vec![
            "functions",
            "agents",
            "started_at",
            "reloads",
            "logs_dropped"
        ])
    );
    let f = &v["functions"][0];
    assert_eq!(
        keys(f),
        sorted(vec![
            "name",
            "logical_id",
            "image",
            "last_error",
            "last_replacement",
            "replacements",
            "logs_dropped",
            "revision",
            "routes",
            "capacity",
            "reserved",
            "provisioned",
            "pool",
            "breaker",
            "workers"
        ])
    );
    let worker = f["workers"][0]["id"].as_str().unwrap().to_string();
    assert!(b.agent.running().contains(&worker));
    assert_eq!(
        *f,
        json!({
            "name": "s",
            "logical_id": "sFunction",
            "image": "python:gwfn.version",
            "revision": "sha256:1",
            "routes": ["GET /s", "POST /s"],
            "capacity": 3,
            "reserved": 3,
            "provisioned": 1,
            "pool": {"idle": 1, "paused": 0, "busy": 0, "waiting": 0},
            "breaker": "closed",
            "workers": [{"id": worker, "node": "test", "state": "idle"}],
            "last_error": null,
            "replacements": 0,
            "logs_dropped": 0,
            "last_replacement": null,
        })
    );
    let n = &v["functions"][1];
    assert_eq!(n["reserved"], Value::Null);
    assert_eq!(n["capacity"], 10);
    assert_eq!(n["revision"], "");
    assert_eq!(n["routes"], json!([]));
    assert_eq!(n["workers"], json!([]));
    assert_eq!(
        v["agents"],
        json!([{
            "node": "test",
            "endpoint": format!("http://{}", b.agent_addr),
            "up": true,
            "removed": false,
            "workers": 1,
            "memory_mb": 128,
            "max_memory_mb": 0,
        }])
    );
    let started = v["started_at"].as_str().unwrap();
    assert!(
        started.len() == 24 && &started[10..11] == "T" && started.ends_with('Z'),
        "{started}"
    );
    assert_eq!(v["reloads"], 0);

    // A second gateway on the same socket is refused; the first keeps serving.
    let mut cfg = base_config(b.dir.path(), b.agent_addr);
    cfg.admin_socket = Some(sock.clone());
    let e = esb_gateway::Server::bind(cfg, Vec::new())
        .await
        .err()
        .expect("second bind refused")
        .to_string();
    assert!(e.contains("in use"), "{e}");
    assert_eq!(admin_get(&sock, "/health").await.0, 200);
    // A file that is not a socket is never clobbered.
    let file = sock_dir.path().join("file");
    std::fs::write(&file, b"keep").unwrap();
    let mut cfg = base_config(b.dir.path(), b.agent_addr);
    cfg.admin_socket = Some(file.clone());
    let e = esb_gateway::Server::bind(cfg, Vec::new())
        .await
        .err()
        .expect("bind refused")
        .to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");

    // The socket goes away with the gateway.
    b.stop_gateway().await;
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_reload_changes_nothing_and_leaks_no_worker() {
    let b = start(vec![vfn("a", "1", "/a")]).await;
    let c = b.client();
    assert_eq!(c.get("/a", &[]).await.status, 200);
    let workers = worker_ids(&status(&b).await, "a");

    // The new version's provisioned worker takes a second to start; the reload is
    // abandoned while waiting for it.
    let mut next = vfn("a", "2", "/a");
    next.provisioned = 1;
    next.env.push(("ESB_TEST_START_DELAY".into(), "1".into()));
    let reloader = b.reloader.clone().unwrap();
    let r = tokio::time::timeout(Duration::from_millis(200), reloader.reload(vec![next])).await;
    assert!(r.is_err(), "the reload should still be warming up: {r:?}");

    let s = status(&b).await;
    assert_eq!(s["reloads"], 0);
    assert_eq!(function(&s, "a").unwrap()["revision"], "sha256:1");
    assert_eq!(worker_ids(&s, "a"), workers);
    let r = c.get("/a", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rev"], "1");
    // The worker started for the abandoned version is destroyed once it exists.
    wait_until(
        "the abandoned worker created",
        Duration::from_secs(60),
        || *b.agent.created.lock().unwrap() == 2,
    )
    .await;
    wait_until(
        "the abandoned worker destroyed",
        Duration::from_secs(60),
        || b.agent.running() == workers,
    )
    .await;
    // A later reload goes through.
    let report = reloader.reload(vec![vfn("a", "2", "/a")]).await.unwrap();
    assert_eq!(report.changed, names(&["a"]));
    assert_eq!(c.get("/a", &[]).await.json()["rev"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_workers_starting_and_busy() {
    let mut f = vfn("slow", "1", "/slow");
    f.env.push(("ESB_TEST_START_DELAY".into(), "1".into()));
    let b = start(vec![f]).await;
    let dir = b.dir.path().to_path_buf();
    let release = dir.join("release");
    let client = b.client();
    let payload = json!({"wait_for": release.to_str().unwrap()}).to_string();
    let held = tokio::spawn(async move { client.invoke("slow", payload.as_bytes(), &[]).await });
    let s = status_until(&b, "a worker starting", |s| {
        function(s, "slow").unwrap()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["state"] == "starting")
    })
    .await;
    assert_eq!(
        function(&s, "slow").unwrap()["workers"],
        json!([{"id": null, "node": "test", "state": "starting"}])
    );
    let s = status_until(&b, "the worker busy", |s| {
        function(s, "slow").unwrap()["pool"]["busy"] == 1
    })
    .await;
    let w = &function(&s, "slow").unwrap()["workers"][0];
    assert_eq!(w["state"], "busy");
    assert!(w["id"].is_string(), "{s}");
    std::fs::write(&release, b"").unwrap();
    assert_eq!(held.await.unwrap().status, 200);
    status_until(&b, "the worker idle", |s| {
        function(s, "slow").unwrap()["pool"]["idle"] == 1
    })
    .await;
}

/// Compile-time check: the CLI can keep a `Reloader` anywhere and spawn its reloads.
#[allow(dead_code)]
fn reloader_is_send_sync_and_its_future_is_send(r: esb_gateway::Reloader) {
    fn shareable<T: Send + Sync + Clone + 'static>(_: &T) {}
    fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}
    shareable(&r);
    spawnable(async move { r.reload(Vec::new()).await });
}
