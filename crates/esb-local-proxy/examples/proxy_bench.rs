//! Benchmark client and backend for the local proxy against HAProxy (see bench/proxy/run.sh).
//!
//! `proxy_bench backend ADDR…` serves a tiny protocol on each ADDR: the client sends an
//! 8-byte big-endian N; N = 0 gets one byte back (a request), N > 0 gets N bytes (bulk).
//! `proxy_bench client NAME=ADDR…` measures, through each proxy in turn (alternating, three
//! rounds, median reported): bulk download with 1 and 64 streams, and new connections per
//! second with p50/p99 of connect + first byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 256 * 1024;

async fn backend(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.expect("bind backend");
    let data = vec![0x5au8; CHUNK];
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let data = data.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let n = match s.read_u64().await {
                Ok(n) => n,
                Err(_) => return,
            };
            if n == 0 {
                let _ = s.write_all(b"x").await;
                return;
            }
            let mut left = n as usize;
            while left > 0 {
                let k = left.min(CHUNK);
                if s.write_all(&data[..k]).await.is_err() {
                    return;
                }
                left -= k;
            }
            let _ = s.shutdown().await;
        });
    }
}

/// Downloads `per_stream` bytes on each of `streams` connections; returns MB/s.
async fn bulk(addr: SocketAddr, streams: usize, per_stream: u64) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_u64(per_stream).await.unwrap();
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            assert_eq!(got, per_stream, "short bulk read");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (streams as u64 * per_stream) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Opens `total` connections, `concurrency` at a time, each: connect, request, first byte.
/// Returns (connections/s, p50 µs, p99 µs).
async fn connects(addr: SocketAddr, total: usize, concurrency: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).unwrap();
                s.write_u64(0).await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.expect("first byte");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    (rate, pct(0.50), pct(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[derive(Default, Clone)]
struct Figures {
    bulk1: Vec<f64>,
    bulk64: Vec<f64>,
    cps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("backend") => {
            for a in &args[1..] {
                tokio::spawn(backend(a.parse().expect("backend address")));
            }
            std::future::pending::<()>().await;
        }
        Some("client") => {
            let peers: Vec<(String, SocketAddr)> = args[1..]
                .iter()
                .map(|a| {
                    let (n, addr) = a.split_once('=').expect("NAME=ADDR");
                    (n.to_string(), addr.parse().expect("address"))
                })
                .collect();
            let rounds: usize = std::env::var("ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(3);
            let conns: usize = std::env::var("CONNS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(10_000);
            let mut figs = vec![Figures::default(); peers.len()];
            for round in 0..rounds {
                for (i, (name, addr)) in peers.iter().enumerate() {
                    let f = &mut figs[i];
                    f.bulk1.push(bulk(*addr, 1, 1 << 30).await);
                    f.bulk64.push(bulk(*addr, 64, 16 << 20).await);
                    let (cps, p50, p99) = connects(*addr, conns, 16).await;
                    f.cps.push(cps);
                    f.p50.push(p50);
                    f.p99.push(p99);
                    eprintln!(
                        "round {round} {name}: bulk1 {:.0} MB/s, bulk64 {:.0} MB/s, {:.0} conn/s, p50 {:.0} µs, p99 {:.0} µs",
                        f.bulk1[round], f.bulk64[round], cps, p50, p99
                    );
                }
            }
            println!("| proxy | bulk 1 stream (MB/s) | bulk 64 streams (MB/s) | new conn/s | p50 connect+first byte (µs) | p99 (µs) |");
            println!("|---|---|---|---|---|---|");
            let med: Vec<[f64; 5]> = figs
                .iter()
                .map(|f| {
                    [
                        median(f.bulk1.clone()),
                        median(f.bulk64.clone()),
                        median(f.cps.clone()),
                        median(f.p50.clone()),
                        median(f.p99.clone()),
                    ]
                })
                .collect();
            for ((name, _), m) in peers.iter().zip(&med) {
                println!(
                    "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    m[0], m[1], m[2], m[3], m[4]
                );
            }
            if med.len() == 2 {
                let (a, b) = (&med[0], &med[1]);
                println!(
                    "| ratio {}/{} | {:.2}x | {:.2}x | {:.2}x | {:.2}x (lower is better) | {:.2}x (lower is better) |",
                    peers[0].0, peers[1].0, a[0] / b[0], a[1] / b[1], a[2] / b[2], a[3] / b[3], a[4] / b[4]
                );
            }
        }
        _ => {
            eprintln!("usage: proxy_bench backend ADDR… | proxy_bench client NAME=ADDR…");
            std::process::exit(2);
        }
    }
}
