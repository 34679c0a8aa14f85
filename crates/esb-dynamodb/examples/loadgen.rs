//! Load generator for bench/dynamodb: the same client drives the box and its peer
//! (dynalite). Each client is one keep-alive HTTP/1.1 connection sending signed requests
//! back to back.
//!
//! ```text
//! loadgen ENDPOINT setup TABLE                         create the table (pk S, sk N)
//! loadgen ENDPOINT load TABLE ITEMS ITEM_BYTES [PARTS] BatchWriteItem ITEMS items
//! loadgen ENDPOINT put|get|query TABLE CLIENTS SECONDS ITEMS [PARTS]
//! ```
//! Prints one JSON line per run with the operation count and ops/s.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/signing.rs"]
mod signing;

struct Target {
    host: String,
    key: String,
    secret: String,
}

impl Target {
    fn request(&self, op: &str, body: &Value) -> hyper::Request<Full<Bytes>> {
        let payload = serde_json::to_vec(body).unwrap();
        let headers = signing::signed_headers(
            &self.host,
            op,
            &payload,
            (&self.key, &self.secret),
            "ap-northeast-1",
        );
        let mut req = hyper::Request::post("/");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.body(Full::new(Bytes::from(payload))).unwrap()
    }
}

struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(host: &str) -> Conn {
        let stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { sender }
    }

    /// One request; a transport error counts as status 0 and reconnects.
    async fn call(&mut self, t: &Target, op: &str, body: &Value) -> (u16, Value) {
        let result = async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(t.request(op, body)).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        }
        .await;
        match result {
            Ok(r) => r,
            Err(e) => {
                *self = Conn::open(&t.host).await;
                (0, Value::String(e.to_string()))
            }
        }
    }
}

fn item(i: u64, part: u64, size: usize) -> Value {
    json!({"pk": {"S": format!("p{part}")}, "sk": {"N": i.to_string()},
           "payload": {"S": "x".repeat(size)}, "n": {"N": (i % 1000).to_string()}})
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoint = args[0]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let t = Arc::new(Target {
        host: endpoint.clone(),
        key: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "esb".into()),
        secret: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "esb-secret".into()),
    });
    let op = args[1].as_str();
    let table = args[2].clone();
    match op {
        "setup" => {
            let mut c = Conn::open(&endpoint).await;
            let (s, out) = c
                .call(&t, "CreateTable", &json!({
                    "TableName": table, "BillingMode": "PAY_PER_REQUEST",
                    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "N"}]
                }))
                .await;
            assert_eq!(s, 200, "{out}");
            // Wait until ACTIVE (dynalite creates tables asynchronously).
            for _ in 0..100 {
                let (_, d) = c
                    .call(&t, "DescribeTable", &json!({"TableName": table}))
                    .await;
                if d["Table"]["TableStatus"] == "ACTIVE" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("table never became ACTIVE");
        }
        "load" => {
            let items: u64 = args[3].parse().unwrap();
            let size: usize = args[4].parse().unwrap();
            let parts: u64 = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(1);
            let workers = 8u64;
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..workers {
                let t = t.clone();
                let endpoint = endpoint.clone();
                let table = table.clone();
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(&endpoint).await;
                    let mut i = w * 25;
                    while i < items {
                        let reqs: Vec<Value> = (i..(i + 25).min(items))
                            .map(|j| json!({"PutRequest": {"Item": item(j, j % parts, size)}}))
                            .collect();
                        let (s, out) = c
                            .call(
                                &t,
                                "BatchWriteItem",
                                &json!({"RequestItems": {table.as_str(): reqs}}),
                            )
                            .await;
                        assert_eq!(s, 200, "{out}");
                        assert!(out["UnprocessedItems"]
                            .as_object()
                            .is_none_or(|m| m.is_empty()));
                        i += workers * 25;
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            println!(
                "{}",
                json!({"op": "load", "items": items, "secs": start.elapsed().as_secs_f64()})
            );
        }
        "put" | "get" | "query" => {
            let clients: u64 = args[3].parse().unwrap();
            let seconds: f64 = args[4].parse().unwrap();
            let items: u64 = args[5].parse().unwrap();
            let parts: u64 = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(1);
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for cid in 0..clients {
                let (t, endpoint, table, op) =
                    (t.clone(), endpoint.clone(), table.clone(), op.to_owned());
                let (stop, count, errors) = (stop.clone(), count.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(&endpoint).await;
                    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (cid + 1);
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let (name, body) = match op.as_str() {
                            "put" => {
                                seq += 1;
                                let mut it = item(seq, 1_000_000 + cid, 100);
                                it["sk"] = json!({"N": seq.to_string()});
                                ("PutItem", json!({"TableName": table, "Item": it}))
                            }
                            "get" => {
                                // Items were loaded with sk = i in partition p{i % PARTS}.
                                let i = x % items;
                                let pk = format!("p{}", i % parts);
                                ("GetItem", json!({"TableName": table, "Key": {"pk": {"S": pk}, "sk": {"N": i.to_string()}}}))
                            }
                            _ => {
                                let pk = format!("p{}", x % parts);
                                let start = (x >> 8) % items.saturating_sub(100 * parts).max(1);
                                ("Query", json!({"TableName": table, "Limit": 100,
                                    "KeyConditionExpression": "pk = :p AND sk >= :s",
                                    "ExpressionAttributeValues": {":p": {"S": pk}, ":s": {"N": start.to_string()}}}))
                            }
                        };
                        let (s, out) = c.call(&t, name, &body).await;
                        if s != 200 || (name == "Query" && out["Count"].as_u64() != Some(100)) || (name == "GetItem" && out.get("Item").is_none()) {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("{name} -> {s} {}", out.to_string().chars().take(300).collect::<String>());
                            }
                            continue;
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            let start = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            let done = count.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                let _ = task.await;
            }
            println!(
                "{}",
                json!({"op": op, "clients": clients, "ops": done, "secs": secs,
                "ops_per_sec": (done as f64 / secs).round(), "errors": errors.load(Ordering::Relaxed)})
            );
        }
        other => panic!("unknown command {other}"),
    }
}
