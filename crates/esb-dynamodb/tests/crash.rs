//! Crash safety: writes acknowledged before a `kill -9` are all there after a restart, a
//! transaction is all-or-nothing across the crash, and the store reopens clean.
//!
//! The server runs in a child process: this test binary re-executed with
//! `ESB_DDB_CRASH_CHILD=<data dir>` (see `crash_child_server`).

mod common;

use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ESB_DDB_CRASH_CHILD";

/// Not a test of its own: the server process of `acknowledged_writes_survive_kill_9`.
/// Does nothing unless started by that test.
#[test]
fn crash_child_server() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server =
            esb_dynamodb::Server::bind(common::config(&dir, "127.0.0.1:0".parse().unwrap()))
                .await
                .expect("bind");
        let tmp = dir.join("addr.tmp");
        std::fs::write(&tmp, server.local_addr().to_string()).unwrap();
        std::fs::rename(&tmp, dir.join("addr")).unwrap();
        server.run(std::future::pending()).await.unwrap();
    });
}

struct ChildServer {
    child: Child,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(dir: &Path, sync: &str) -> ChildServer {
        let _ = std::fs::remove_file(dir.join("addr"));
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_server",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir)
            .env("ESB_DYNAMODB_SYNC", sync)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server child");
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(dir.join("addr")) {
                break s.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "child server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        ChildServer { child, addr }
    }

    fn kill9(mut self) {
        // SIGKILL by PID: the child we spawned.
        let pid = self.child.id() as i32;
        let rc = unsafe { libc_kill(pid, 9) };
        assert_eq!(rc, 0, "kill -9 {pid}");
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn ok(addr: SocketAddr, op: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, out) = common::call(addr, op, &body).expect("request");
    assert_eq!(status, 200, "{op}: {out}");
    out
}

/// The default mode: every acknowledged write fsynced (group commit).
#[test]
fn acknowledged_writes_survive_kill_9() {
    crash_and_restart("full");
}

/// `ESB_DYNAMODB_SYNC=normal`: commits not fsynced, writes run inline when the writer is
/// idle; a killed process still loses nothing acknowledged.
#[test]
fn acknowledged_writes_survive_kill_9_sync_normal() {
    crash_and_restart("normal");
}

fn crash_and_restart(sync: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = ChildServer::start(dir, sync);
    let addr = server.addr;
    ok(
        addr,
        "CreateTable",
        json!({
            "TableName": "crash",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "g", "AttributeType": "S"}],
            "GlobalSecondaryIndexes": [{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                        "Projection": {"ProjectionType": "ALL"}}],
            "BillingMode": "PAY_PER_REQUEST"
        }),
    );

    // Writers put items and record which were acknowledged; one also runs transactions
    // writing pairs. The server is killed while they are running.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let tx_acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..4u64 {
        let acked = acked.clone();
        let tx_acked = tx_acked.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                i += 1;
                if w == 0 {
                    let body = json!({"TransactItems": [
                        {"Put": {"TableName": "crash", "Item": {"pk": {"S": format!("txa-{i}")}, "g": {"S": "tx"}}}},
                        {"Put": {"TableName": "crash", "Item": {"pk": {"S": format!("txb-{i}")}, "g": {"S": "tx"}}}}
                    ]});
                    match common::call(addr, "TransactWriteItems", &body) {
                        Ok((200, _)) => {
                            tx_acked.lock().unwrap().insert(i);
                        }
                        _ => break,
                    }
                } else {
                    let key = format!("w{w}-{i}");
                    let body = json!({"TableName": "crash", "Item": {
                        "pk": {"S": key}, "g": {"S": format!("g{}", i % 10)}, "v": {"N": i.to_string()}}});
                    match common::call(addr, "PutItem", &body) {
                        Ok((200, _)) => {
                            acked.lock().unwrap().insert(key);
                        }
                        _ => break,
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 1500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let tx_acked = tx_acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 1500,
        "writers made too little progress: {}",
        acked.len()
    );

    // Restart on the same directory.
    let server = ChildServer::start(dir, sync);
    let addr = server.addr;
    let mut present = BTreeSet::new();
    let mut start: Option<serde_json::Value> = None;
    loop {
        let mut body = json!({"TableName": "crash"});
        if let Some(s) = &start {
            body["ExclusiveStartKey"] = s.clone();
        }
        let out = ok(addr, "Scan", body);
        for item in out["Items"].as_array().unwrap() {
            present.insert(item["pk"]["S"].as_str().unwrap().to_owned());
        }
        match out.get("LastEvaluatedKey") {
            Some(k) => start = Some(k.clone()),
            None => break,
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|k| !present.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for i in &tx_acked {
        assert!(
            present.contains(&format!("txa-{i}")) && present.contains(&format!("txb-{i}")),
            "transaction {i} lost"
        );
    }
    // Every transaction is all-or-nothing, acknowledged or not.
    for k in present.iter().filter(|k| k.starts_with("txa-")) {
        let b = k.replacen("txa-", "txb-", 1);
        assert!(present.contains(&b), "half a transaction: {k} without {b}");
    }
    for k in present.iter().filter(|k| k.starts_with("txb-")) {
        assert!(
            present.contains(&k.replacen("txb-", "txa-", 1)),
            "half a transaction: {k}"
        );
    }
    // The index agrees with the table.
    let mut in_index = 0;
    for g in 0..10 {
        let mut start: Option<serde_json::Value> = None;
        loop {
            let mut body = json!({"TableName": "crash", "IndexName": "by-g", "KeyConditionExpression": "g = :g",
                "ExpressionAttributeValues": {":g": {"S": format!("g{g}")}}, "Select": "COUNT"});
            if let Some(s) = &start {
                body["ExclusiveStartKey"] = s.clone();
            }
            let out = ok(addr, "Query", body);
            in_index += out["Count"].as_u64().unwrap();
            match out.get("LastEvaluatedKey") {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
    }
    let plain = present.iter().filter(|k| k.starts_with('w')).count() as u64;
    assert_eq!(in_index, plain, "GSI and table disagree after the crash");
    // And it keeps working.
    ok(
        addr,
        "PutItem",
        json!({"TableName": "crash", "Item": {"pk": {"S": "after"}, "g": {"S": "x"}}}),
    );
    let out = ok(
        addr,
        "GetItem",
        json!({"TableName": "crash", "Key": {"pk": {"S": "after"}}}),
    );
    assert_eq!(out["Item"]["g"]["S"], "x");
    drop(server);
}
