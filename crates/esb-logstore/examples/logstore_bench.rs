//! Benchmark driver for the log store (see bench/logstore/run.sh).
//!
//! ```text
//! logstore_bench serve DIR ADDR_FILE            run a store in DIR on 127.0.0.1:0
//! logstore_bench gen FILE N BYTES               write N JSON lines of about BYTES each
//! logstore_bench ingest URL FILE BATCH CONC     gzip FILE in BATCH-line requests, post them
//!                                               with CONC connections; also time the floors
//! logstore_bench lookup URL TRACE_ID...         time `trace_id:=ID` queries
//! ```

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "request",
    "handled",
    "user",
    "order",
    "payment",
    "cache",
    "miss",
    "hit",
    "db",
    "query",
    "took",
    "ms",
    "retry",
    "upstream",
    "timeout",
    "connection",
    "reset",
    "ok",
    "created",
    "updated",
    "item",
    "cart",
    "session",
    "token",
];

/// The trace id of record `i` (four records per trace).
fn trace_id(i: u64) -> String {
    let t = i / 4;
    format!(
        "1-{:08x}-{:024x}",
        0x6650_0000 + (t >> 8) as u32,
        t.wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128
    )
}

fn gen(path: &str, n: u64, bytes: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let base = 1_714_521_600u64; // 2024-05-01T00:00:00Z
    let levels = ["info", "info", "info", "warn", "error", "debug"];
    for i in 0..n {
        let secs = base + i / 1000;
        let ms = i % 1000;
        let mut msg = String::new();
        let head = format!(
            "{{\"_time\":\"{}.{ms:03}Z\",\"function_name\":\"fn-{}\",\"level\":\"{}\",\"request_id\":\"{:016x}-{:04x}\",\"trace_id\":\"{}\",\"_msg\":\"",
            esb_logstore::time::format_rfc3339(secs as i64 * 1_000_000_000).trim_end_matches(".000000000Z"),
            rng.next() % 20,
            levels[(rng.next() % 6) as usize],
            rng.next(),
            i % 10_000,
            trace_id(i)
        );
        while head.len() + msg.len() + 3 < bytes {
            msg.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            msg.push(' ');
            if rng.next().is_multiple_of(4) {
                msg.push_str(&format!("{} ", rng.next() % 100_000));
            }
        }
        msg.truncate(bytes.saturating_sub(head.len() + 3).max(1));
        writeln!(out, "{head}{}\"}}", msg.trim_end())?;
    }
    out.flush()?;
    Ok(())
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    body: Bytes,
    gzip: bool,
) -> anyhow::Result<()> {
    let mut req = hyper::Request::post(url);
    if gzip {
        req = req.header("Content-Encoding", "gzip");
    }
    let resp = client.request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn ingest(url: &str, path: &str, batch: usize, conc: usize) -> anyhow::Result<()> {
    // Prepare the request bodies up front (the shipper's side is not measured).
    let mut raw_batches: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::new();
    let mut n = 0usize;
    let mut records = 0usize;
    for line in BufReader::with_capacity(1 << 20, std::fs::File::open(path)?).split(b'\n') {
        let line = line?;
        cur.extend_from_slice(&line);
        cur.push(b'\n');
        n += 1;
        records += 1;
        if n == batch {
            raw_batches.push(std::mem::take(&mut cur));
            n = 0;
        }
    }
    if !cur.is_empty() {
        raw_batches.push(cur);
    }
    let raw_bytes: usize = raw_batches.iter().map(Vec::len).sum();
    let gz: Vec<Bytes> = raw_batches.iter().map(|b| Bytes::from(gzip(b))).collect();
    let gz_bytes: usize = gz.iter().map(Bytes::len).sum();
    drop(raw_batches);
    eprintln!(
        "{records} records, {raw_bytes} bytes raw, {gz_bytes} gzip, {} requests",
        gz.len()
    );

    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let gz = Arc::new(gz);
    let url = format!("{url}/insert/jsonline");
    let (mut t_gz, mut t_raw, mut t_esb) = (Vec::new(), Vec::new(), Vec::new());
    // Rounds alternate floor and esb, so machine noise hits both alike; medians are reported.
    for round in 0..rounds {
        let dir = tempfile::tempdir()?;
        // Floor 1: append the received gzip bodies to a file, as they come.
        let t = Instant::now();
        {
            let mut f = std::fs::File::create(dir.path().join("floor-gz"))?;
            for b in gz.iter() {
                f.write_all(b)?;
            }
        }
        t_gz.push(t.elapsed());
        // Floor 2: decompress each body and append the JSON lines to a file.
        let t = Instant::now();
        {
            let mut f = std::fs::File::create(dir.path().join("floor-raw"))?;
            let mut buf = Vec::new();
            for b in gz.iter() {
                buf.clear();
                std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(&b[..]),
                    &mut buf,
                )?;
                f.write_all(&buf)?;
            }
        }
        t_raw.push(t.elapsed());
        drop(dir);
        // esb: post them over HTTP with `conc` connections.
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (client, gz, next, url) = (client.clone(), gz.clone(), next.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = gz.get(i) else {
                        return anyhow::Ok(());
                    };
                    post(&client, &url, b.clone(), true).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        t_esb.push(t.elapsed());
        eprintln!(
            "round {round}: esb {:.2}s gz-append {:.2}s gunzip-append {:.2}s",
            t_esb[round].as_secs_f64(),
            t_gz[round].as_secs_f64(),
            t_raw[round].as_secs_f64()
        );
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (floor_gz, floor_raw, esb) = (median(&mut t_gz), median(&mut t_raw), median(&mut t_esb));
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    println!(
        "ingest rounds={rounds} records={records} esb_rps={:.0} floor_gz_append_rps={:.0} floor_gunzip_append_rps={:.0} ratio_vs_gz_append={:.3} ratio_vs_gunzip_append={:.3} esb_MBps_raw={:.1}",
        rate(esb),
        rate(floor_gz),
        rate(floor_raw),
        floor_gz.as_secs_f64() / esb.as_secs_f64(),
        floor_raw.as_secs_f64() / esb.as_secs_f64(),
        raw_bytes as f64 / esb.as_secs_f64() / 1e6
    );
    Ok(())
}

async fn lookup(url: &str, ids: &[String]) -> anyhow::Result<()> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut times = Vec::new();
    for id in ids {
        for round in 0..11 {
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &format!("trace_id:=\"{id}\""))
                .finish();
            let req = hyper::Request::post(format!("{url}/select/logsql/query"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body)))?;
            let t = Instant::now();
            let resp = client.request(req).await?;
            let text = resp.into_body().collect().await?.to_bytes();
            let d = t.elapsed();
            let hits = text
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            anyhow::ensure!(hits > 0, "trace {id} not found");
            if round > 0 {
                times.push(d);
            }
            if round < 2 {
                eprintln!(
                    "lookup {id}: {hits} records in {:.2} ms",
                    d.as_secs_f64() * 1e3
                );
            }
        }
    }
    times.sort();
    println!(
        "lookup median_ms={:.3}",
        times[times.len() / 2].as_secs_f64() * 1e3
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let config = esb_logstore::Config {
                listen: "127.0.0.1:0".parse()?,
                data_dir: args[2].clone().into(),
                retention: esb_logstore::Retention {
                    max_age: None,
                    ..Default::default()
                },
                ..Default::default()
            };
            let server = esb_logstore::Server::bind(config).await?;
            std::fs::write(&args[3], server.local_addr().to_string())?;
            server
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        }
        Some("gen") => gen(&args[2], args[3].parse()?, args[4].parse()?),
        Some("ingest") => ingest(&args[2], &args[3], args[4].parse()?, args[5].parse()?).await,
        Some("lookup") => lookup(&args[2], &args[3..]).await,
        Some("trace") => {
            println!("{}", trace_id(args[2].parse()?));
            Ok(())
        }
        _ => anyhow::bail!("usage: see the doc comment of examples/logstore_bench.rs"),
    }
}
