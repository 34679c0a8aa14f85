//! Agents that change at run time (`ESB_AGENTS_FILE`, `Reloader::reload_agents`), a
//! failing new agent, and placement by free memory — with the test scaffolding agent of
//! `common` (real `esb-supervisor` workers on 127.0.0.1).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use esb_gateway::{AgentAddr, AgentReloadReport, Config};
use serde_json::{json, Value};

/// A second scaffolding agent, stopped and cleaned up when dropped.
struct Extra {
    agent: ProcessAgent,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Extra {
    async fn start() -> Extra {
        let agent = ProcessAgent::new();
        let (addr, stop) = agent.serve().await;
        Extra {
            agent,
            addr,
            _stop: stop,
        }
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        self.agent.kill_all();
    }
}

fn admin(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

async fn status(b: &TestBox) -> Value {
    let (code, v) = admin_get(&admin(b.dir.path()), "/status").await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Polls `/status` until `f` holds (generous deadline).
async fn status_until(b: &TestBox, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = status(b).await;
        if f(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `node -> (removed, workers, memory_mb, max_memory_mb)` of the status' agents, in order.
fn agents_of(v: &Value) -> Vec<(String, bool, u64, u64, u64)> {
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["node"].as_str().unwrap().to_string(),
                a["removed"].as_bool().unwrap(),
                a["workers"].as_u64().unwrap(),
                a["memory_mb"].as_u64().unwrap(),
                a["max_memory_mb"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The list `esb gateway` hands over on SIGHUP: the configured agents and the file.
fn agent_list(b: &TestBox, file: &Path, tweak: impl FnOnce(&mut Config)) -> Vec<AgentAddr> {
    let mut c = base_config(b.dir.path(), b.agent_addr);
    c.agents_file = Some(file.to_path_buf());
    tweak(&mut c);
    c.agent_list().unwrap()
}

fn provisioned(name: &str, n: u32, memory_mb: u32, rev: &str) -> esb_gateway::FunctionSpec {
    let mut f = spec(name, "python:gwfn.version");
    f.provisioned = n;
    f.reserved = Some(4);
    f.memory_mb = memory_mb;
    f.revision = format!("sha256:{rev}");
    f.env = vec![("ESB_TEST_REV".into(), rev.into())];
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_file_reload_appends_and_removes_by_node_id() {
    let extra = Extra::start().await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("agents");
    std::fs::write(
        &file,
        format!("# compute nodes\n\nhttp://{},node=b\n", extra.addr),
    )
    .unwrap();
    let f = provisioned("p", 2, 128, "1");
    let path = file.clone();
    let b = TestBox::start(vec![f.clone()], move |c| {
        c.agents_file = Some(path);
        c.admin_socket = Some(admin(&c.data_dir));
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    // The two provisioned workers are spread over the two nodes.
    let v = status_until(&b, "two provisioned workers", |v| {
        v["functions"][0]["pool"]["idle"] == 2
    })
    .await;
    assert_eq!(b.agent.running_of("p"), 1);
    assert_eq!(extra.agent.running_of("p"), 1);
    assert_eq!(
        agents_of(&v),
        [
            ("test".into(), false, 1, 128, 0),
            ("b".into(), false, 1, 128, 0)
        ]
    );
    assert_eq!(v["agents"][1]["endpoint"], format!("http://{}", extra.addr));

    // Bad lists change nothing.
    let reloader = b.reloader.clone().unwrap();
    let mut twice = agent_list(&b, &file, |_| {});
    twice.push(twice[1].clone());
    let e = reloader.reload_agents(twice).await.unwrap_err().to_string();
    assert!(e.contains("two agents have the node id \"b\""), "{e}");
    let mut tls = agent_list(&b, &file, |_| {});
    tls.push(AgentAddr::parse("https://127.0.0.1:9,node=t,ca=/nonexistent/ca.pem", 0).unwrap());
    let e = format!("{:#}", reloader.reload_agents(tls).await.unwrap_err());
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    assert_eq!(status(&b).await["agents"].as_array().unwrap().len(), 2);

    // b leaves the file: marked removed, its idle worker destroyed, the pool topped up on
    // the node left.
    std::fs::write(&file, "# no compute node\n").unwrap();
    let report = reloader
        .reload_agents(agent_list(&b, &file, |_| {}))
        .await
        .unwrap();
    assert_eq!(
        report,
        AgentReloadReport {
            removed: names(&["b"]),
            unchanged: names(&["test"]),
            ..Default::default()
        }
    );
    wait_until("b's worker destroyed", Duration::from_secs(60), || {
        extra.agent.running_of("p") == 0
    })
    .await;
    wait_until(
        "the pool topped up on test",
        Duration::from_secs(120),
        || b.agent.running_of("p") == 2,
    )
    .await;
    let v = status_until(&b, "two idle workers on test", |v| {
        v["functions"][0]["pool"]["idle"] == 2
    })
    .await;
    assert_eq!(
        agents_of(&v),
        [
            ("test".into(), false, 2, 256, 0),
            ("b".into(), true, 0, 0, 0)
        ]
    );
    for w in v["functions"][0]["workers"].as_array().unwrap() {
        assert_eq!(w["node"], "test", "{v:#}");
    }
    let r = b.client().invoke("p", b"{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // b comes back (a new entry: indices never move), then with another spec (the old
    // entry removed, a new one appended).
    std::fs::write(&file, format!("http://{},node=b\n", extra.addr)).unwrap();
    let report = reloader
        .reload_agents(agent_list(&b, &file, |_| {}))
        .await
        .unwrap();
    assert_eq!(report.added, names(&["b"]));
    std::fs::write(&file, format!("http://{},node=b,max=4\n", extra.addr)).unwrap();
    let report = reloader
        .reload_agents(agent_list(&b, &file, |_| {}))
        .await
        .unwrap();
    assert_eq!(
        report,
        AgentReloadReport {
            changed: names(&["b"]),
            unchanged: names(&["test"]),
            ..Default::default()
        }
    );
    let v = status(&b).await;
    let listed: Vec<(String, bool)> = agents_of(&v).into_iter().map(|a| (a.0, a.1)).collect();
    assert_eq!(
        listed,
        [
            ("test".into(), false),
            ("b".into(), true),
            ("b".into(), true),
            ("b".into(), false)
        ]
    );
    // A new version of the function: its provisioned workers go one to each node.
    reloader
        .reload(vec![provisioned("p", 2, 128, "2")])
        .await
        .unwrap();
    wait_until("new version spread", Duration::from_secs(120), || {
        extra.agent.running_of("p") == 1 && b.agent.running_of("p") == 1
    })
    .await;
    let r = b.client().invoke("p", b"{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rev"], "2");
    let v = status(&b).await;
    let nodes: Vec<&str> = v["functions"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["node"].as_str().unwrap())
        .collect();
    assert!(nodes.contains(&"test") && nodes.contains(&"b"), "{v:#}");
    assert_eq!(v["agents"][3]["workers"], 1, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_new_agent_does_not_fail_requests() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("agents");
    let mut f = spec("e", "python:gwfn.version");
    f.reserved = Some(4);
    let b = TestBox::start(vec![f], |c| {
        c.admin_socket = Some(admin(&c.data_dir));
        c.agents[0].max_memory_mb = 1024;
        c.heartbeat = Duration::from_millis(300);
    })
    .await;
    // A node nobody answers for (connection refused), unlimited: the first choice.
    let ghost = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ghost_addr = ghost.local_addr().unwrap();
    drop(ghost);
    std::fs::write(&file, format!("http://{ghost_addr},node=ghost\n")).unwrap();
    let reloader = b.reloader.clone().unwrap();
    let report = reloader
        .reload_agents(agent_list(&b, &file, |c| c.agents[0].max_memory_mb = 1024))
        .await
        .unwrap();
    assert_eq!(report.added, names(&["ghost"]));
    for _ in 0..4 {
        let r = b.client().invoke("e", b"{}", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let h = b.client().get("/health", &[]).await;
    assert_eq!(h.status, 200);
    let v = status(&b).await;
    let ghost = &v["agents"][1];
    assert_eq!(ghost["node"], "ghost");
    assert_eq!(ghost["up"], false, "{v:#}");
    assert_eq!(ghost["workers"], 0, "{v:#}");
    let f = &v["functions"][0];
    assert_eq!(f["breaker"], "closed");
    assert_eq!(f["last_error"], Value::Null);
    assert_eq!(b.agent.running_of("e"), 1);
    // Heartbeats go on (the ghost stays down without holding the others up).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let v = status(&b).await;
    assert_eq!(v["agents"][0]["up"], true);
    assert_eq!(v["agents"][1]["up"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_by_free_memory() {
    let extra = Extra::start().await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("agents");
    std::fs::write(&file, format!("http://{},node=big,mem=1024\n", extra.addr)).unwrap();
    let f = provisioned("m", 3, 256, "1");
    let mut huge = spec("huge", "python:gwfn.version");
    huge.memory_mb = 1024;
    let path = file.clone();
    let b = TestBox::start(vec![f, huge], move |c| {
        c.agents_file = Some(path);
        c.admin_socket = Some(admin(&c.data_dir));
        c.agents[0].max_memory_mb = 512;
    })
    .await;
    // 1024 free on big, 512 on test: big, big (768 > 512), then test (512 = 512 and
    // fewer workers of the function).
    let v = status_until(&b, "three provisioned workers", |v| {
        v["functions"][0]["pool"]["idle"] == 3
    })
    .await;
    assert_eq!(
        agents_of(&v),
        [
            ("test".into(), false, 1, 256, 512),
            ("big".into(), false, 2, 512, 1024)
        ]
    );
    assert_eq!(extra.agent.running_of("m"), 2);
    assert_eq!(b.agent.running_of("m"), 1);
    // 1024 MiB fits nowhere now: 503, and the reason is shown.
    let r = b.client().invoke("huge", b"{}", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = status(&b).await;
    let msg = v["functions"][1]["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("no agent has room"), "{v:#}");
    assert_eq!(
        v["functions"][1]["pool"],
        json!({"idle": 0, "paused": 0, "busy": 0, "waiting": 0})
    );
    // The starting workers counted too: nothing was over-committed.
    assert_eq!(v["agents"][0]["memory_mb"], 256);
    assert_eq!(v["agents"][1]["memory_mb"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_until_a_node_joins() {
    // A control node without workers of its own: ESB_AGENTS empty, the file empty.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("agents");
    std::fs::write(
        &file,
        "# Written by esb: the agents of the joined compute nodes.\n",
    )
    .unwrap();
    let path = file.clone();
    let b = TestBox::start(vec![spec("j", "python:gwfn.version")], move |c| {
        c.agents.clear();
        c.agents_file = Some(path);
        c.admin_socket = Some(admin(&c.data_dir));
    })
    .await;
    assert_eq!(status(&b).await["agents"], json!([]));
    let r = b.client().invoke("j", b"{}", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = status(&b).await;
    let msg = v["functions"][0]["last_error"]["message"].as_str().unwrap();
    assert!(msg.contains("none is configured"), "{msg}");
    // A node joins: the box writes the file and signals the gateway.
    std::fs::write(&file, format!("http://{},node=n2\n", b.agent_addr)).unwrap();
    let list = agent_list(&b, &file, |c| c.agents.clear());
    let report = b
        .reloader
        .clone()
        .unwrap()
        .reload_agents(list)
        .await
        .unwrap();
    assert_eq!(report.added, names(&["n2"]));
    let r = b.client().invoke("j", b"{}", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = status(&b).await;
    assert_eq!(v["functions"][0]["workers"][0]["node"], "n2");
    // It leaves: no agent again.
    std::fs::write(&file, "").unwrap();
    let report = b
        .reloader
        .clone()
        .unwrap()
        .reload_agents(agent_list(&b, &file, |c| c.agents.clear()))
        .await
        .unwrap();
    assert_eq!(report.removed, names(&["n2"]));
    wait_until("the idle worker destroyed", Duration::from_secs(60), || {
        b.agent.running_of("j") == 0
    })
    .await;
}
