//! Load generator for `bench/s3/run.sh`: the same client for every S3 server compared.
//!
//! ```text
//! s3_bench ENDPOINT ACCESS_KEY SECRET_KEY MODE [CLIENTS] [SECONDS]
//!   MODE: small  PUT then GET 4 KiB objects, CLIENTS concurrent connections, SECONDS each
//!         large  PUT then GET one 1 GiB object (streamed, never held in memory)
//! ```
//! Requests are SigV4-signed with `UNSIGNED-PAYLOAD` (path-style). Prints one JSON line per
//! measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{KeyInit as _, Mac as _};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use sha2::Digest as _;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

struct Signer {
    access: String,
    secret: String,
    region: String,
    host: String,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("hmac key");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

impl Signer {
    /// SigV4 header authentication for a path-style request without a query string.
    fn sign(&self, method: &str, path: &str, len: u64) -> Vec<(String, String)> {
        let now = time::OffsetDateTime::now_utc();
        let date = format!(
            "{:04}{:02}{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        );
        let amz_date = format!(
            "{date}T{:02}{:02}{:02}Z",
            now.hour(),
            now.minute(),
            now.second()
        );
        let payload = "UNSIGNED-PAYLOAD";
        let canonical = format!(
            "{method}\n{path}\n\nhost:{}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}",
            self.host
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{}", self.secret).as_bytes(), &date);
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part);
        }
        let sig = hex::encode(hmac(&key, &to_sign));
        vec![
            ("host".into(), self.host.clone()),
            ("x-amz-date".into(), amz_date),
            ("x-amz-content-sha256".into(), payload.into()),
            ("content-length".into(), len.to_string()),
            (
                "authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}",
                    self.access
                ),
            ),
        ]
    }
}

struct Conn {
    tx: hyper::client::conn::http1::SendRequest<BoxBody>,
    host: String,
}

async fn connect(addr: &str) -> Conn {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection error: {e:?}");
        }
    });
    Conn {
        tx,
        host: addr.to_owned(),
    }
}

impl Conn {
    async fn request(
        &mut self,
        signer: &Signer,
        method: &str,
        path: &str,
        body: BoxBody,
        len: u64,
    ) -> (u16, u64) {
        let mut req = http::Request::builder().method(method).uri(path);
        for (k, v) in signer.sign(method, path, len) {
            req = req.header(k, v);
        }
        // Servers may close a kept-alive connection (moto does): then open a new one.
        if self.tx.ready().await.is_err() {
            *self = connect(&self.host).await;
        }
        let resp = self
            .tx
            .send_request(req.body(body).expect("request"))
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body").into_data() {
                n += data.len() as u64;
            }
        }
        (status, n)
    }
}

fn full(b: Bytes) -> BoxBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn json(what: &str, value: f64, unit: &str) {
    println!("{{\"measure\":\"{what}\",\"value\":{value:.1},\"unit\":\"{unit}\"}}");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: s3_bench ENDPOINT ACCESS SECRET small|large [CLIENTS] [SECONDS]";
    let endpoint = args.get(1).expect(usage);
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let signer = Arc::new(Signer {
        access: args.get(2).expect(usage).clone(),
        secret: args.get(3).expect(usage).clone(),
        region: std::env::var("BENCH_REGION").unwrap_or_else(|_| "us-east-1".into()),
        host: host.clone(),
    });
    let mode = args.get(4).expect(usage).clone();
    let clients: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(6).and_then(|s| s.parse().ok()).unwrap_or(10);
    let bucket = format!("bench-{}", std::process::id());

    let mut c = connect(&host).await;
    let (st, _) = c
        .request(&signer, "PUT", &format!("/{bucket}"), full(Bytes::new()), 0)
        .await;
    assert!(st == 200, "create bucket: HTTP {st}");

    if mode == "small" {
        let payload = Bytes::from(vec![b'x'; 4096]);
        let written: Arc<Vec<AtomicU64>> =
            Arc::new((0..clients).map(|_| AtomicU64::new(0)).collect());
        for op in ["PUT", "GET"] {
            let ops = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for id in 0..clients {
                let (signer, ops, payload, bucket, host, written) = (
                    signer.clone(),
                    ops.clone(),
                    payload.clone(),
                    bucket.clone(),
                    host.clone(),
                    written.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut conn = connect(&host).await;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        // GETs cycle over the keys this client wrote.
                        let n = if op == "PUT" {
                            i
                        } else {
                            i % written[id].load(Ordering::Relaxed).max(1)
                        };
                        let key = format!("/{bucket}/c{id}/k{n}");
                        let (st, _) = if op == "PUT" {
                            conn.request(&signer, "PUT", &key, full(payload.clone()), 4096)
                                .await
                        } else {
                            conn.request(&signer, "GET", &key, full(Bytes::new()), 0)
                                .await
                        };
                        assert!(st == 200, "{op} {key}: HTTP {st}");
                        i += 1;
                        ops.fetch_add(1, Ordering::Relaxed);
                        if op == "PUT" {
                            written[id].store(i, Ordering::Relaxed);
                        }
                    }
                }));
            }
            let start = Instant::now();
            for t in tasks {
                t.await.expect("client task");
            }
            let secs = start.elapsed().as_secs_f64();
            json(
                &format!("{}_4k_ops", op.to_lowercase()),
                ops.load(Ordering::Relaxed) as f64 / secs,
                "ops/s",
            );
        }
    } else {
        const SIZE: u64 = 1 << 30;
        const CHUNK: usize = 1 << 20;
        let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let stream = futures::stream::iter(
            (0..SIZE / CHUNK as u64)
                .map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
        );
        let body = StreamBody::new(stream).boxed();
        let key = format!("/{bucket}/large");
        // A fresh connection per transfer, opened before the clock starts.
        let mut c = connect(&host).await;
        let start = Instant::now();
        let (st, _) = c.request(&signer, "PUT", &key, body, SIZE).await;
        assert!(st == 200, "PUT 1 GiB: HTTP {st}");
        json(
            "put_1g",
            SIZE as f64 / start.elapsed().as_secs_f64() / 1e6,
            "MB/s",
        );
        let mut c = connect(&host).await;
        let start = Instant::now();
        let (st, n) = c.request(&signer, "GET", &key, full(Bytes::new()), 0).await;
        assert!(st == 200 && n == SIZE, "GET 1 GiB: HTTP {st}, {n} bytes");
        json(
            "get_1g",
            SIZE as f64 / start.elapsed().as_secs_f64() / 1e6,
            "MB/s",
        );
        let _ = c
            .request(&signer, "DELETE", &key, full(Bytes::new()), 0)
            .await;
    }
}
