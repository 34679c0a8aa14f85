//! WireGuard benchmark (bench/wireguard/run.sh): TCP throughput and connection round trip
//! through the userspace tunnel against the same veth path without it, measured in one run
//! between two host namespaces made for it (private addresses only inside them; removed at
//! the end).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use esb_netns::NetNs;
use esb_wireguard::{Key, PeerConfig, Tunnel, TunnelConfig};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = NetNs::delete(n);
        }
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sink in `ns` on `addr` that reads everything and answers 1 byte per request line for
/// the round-trip test.
fn server(ns: &NetNs, addr: SocketAddr) {
    let l = ns.run(|| TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if n < 64 && s.write_all(b"k").is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

fn connect(ns: &NetNs, addr: SocketAddr) -> TcpStream {
    let s = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// MB/s sending `mb` MiB.
fn throughput(ns: &NetNs, addr: SocketAddr, mb: usize) -> f64 {
    let mut s = connect(ns, addr);
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..mb {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read(&mut [0u8; 1]);
    mb as f64 / t.elapsed().as_secs_f64()
}

/// Round trips of a 1-byte request/answer on one connection: (median, p99, max) in µs.
fn round_trip(ns: &NetNs, addr: SocketAddr, n: usize) -> (f64, f64, f64) {
    let mut s = connect(ns, addr);
    let mut v = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    (us(v[n / 2]), us(v[n * 99 / 100]), us(v[n - 1]))
}

/// Round trips per round.
const RT_N: usize = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mb: usize = std::env::var("MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let id = std::process::id();
    let names: Vec<String> = ["ha", "hb", "ia", "ib"]
        .iter()
        .map(|n| format!("esbb-wg{n}-{id}"))
        .collect();
    let _guard = Namespaces(names.clone());
    for n in &names {
        NetNs::create(n).unwrap();
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    let (ha, hb, ia, ib) = (&names[0], &names[1], &names[2], &names[3]);
    ip(&[
        "link", "add", "bwa", "netns", ha, "type", "veth", "peer", "name", "bwb", "netns", hb,
    ]);
    ip(&["-n", ha, "addr", "add", "192.168.252.1/24", "dev", "bwa"]);
    ip(&["-n", hb, "addr", "add", "192.168.252.2/24", "dev", "bwb"]);
    ip(&["-n", ha, "link", "set", "bwa", "up"]);
    ip(&["-n", hb, "link", "set", "bwb", "up"]);
    let (ka, kb) = (Key::generate().unwrap(), Key::generate().unwrap());
    let cfg = |inner: &str, host: &str, addr: &str, key: Key, peer: PeerConfig| TunnelConfig {
        ifname: "wg0".into(),
        netns: inner.into(),
        address: addr.parse().unwrap(),
        mtu: 1420,
        private_key: key,
        listen: "0.0.0.0:51820".parse().unwrap(),
        udp_netns: Some(host.into()),
        peers: vec![peer],
    };
    let _a = Tunnel::start(cfg(
        ia,
        ha,
        "10.99.0.1/24",
        ka,
        PeerConfig {
            name: "b".into(),
            public_key: kb.public(),
            endpoint: Some("192.168.252.2:51820".parse().unwrap()),
            allowed_ips: vec!["10.99.0.2/32".parse().unwrap()],
            keepalive: None,
        },
    ))
    .await
    .unwrap();
    let _b = Tunnel::start(cfg(
        ib,
        hb,
        "10.99.0.2/24",
        kb,
        PeerConfig {
            name: "a".into(),
            public_key: ka.public(),
            endpoint: Some("192.168.252.1:51820".parse().unwrap()),
            allowed_ips: vec!["10.99.0.0/24".parse().unwrap()],
            keepalive: None,
        },
    ))
    .await
    .unwrap();
    let (nha, nia) = (NetNs::open(ha).unwrap(), NetNs::open(ia).unwrap());
    let (nhb, nib) = (NetNs::open(hb).unwrap(), NetNs::open(ib).unwrap());
    server(&nhb, "192.168.252.2:7001".parse().unwrap());
    server(&nib, "10.99.0.2:7001".parse().unwrap());
    let plain: SocketAddr = "192.168.252.2:7001".parse().unwrap();
    let wg: SocketAddr = "10.99.0.2:7001".parse().unwrap();
    // Warm up (handshake, caches).
    tokio::task::block_in_place(|| {
        throughput(&nia, wg, 8);
        throughput(&nha, plain, 8);
    });
    let (mut tp_wg, mut tp_plain, mut rt_wg, mut rt_plain) = (vec![], vec![], vec![], vec![]);
    tokio::task::block_in_place(|| {
        for _ in 0..rounds {
            tp_plain.push(throughput(&nha, plain, mb));
            tp_wg.push(throughput(&nia, wg, mb));
            rt_plain.push(round_trip(&nha, plain, RT_N));
            rt_wg.push(round_trip(&nia, wg, RT_N));
        }
    });
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let pick = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
        v.iter().map(f).collect()
    };
    let (tw, tp) = (med(tp_wg), med(tp_plain));
    let (rw, rp) = (med(pick(&rt_wg, |r| r.0)), med(pick(&rt_plain, |r| r.0)));
    let (rw99, rp99) = (med(pick(&rt_wg, |r| r.1)), med(pick(&rt_plain, |r| r.1)));
    let (rwmax, rpmax) = (
        pick(&rt_wg, |r| r.2).into_iter().fold(0.0, f64::max),
        pick(&rt_plain, |r| r.2).into_iter().fold(0.0, f64::max),
    );
    println!("| figure | over WireGuard | same veth, no tunnel | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| TCP throughput, {mb} MiB, median of {rounds} (MiB/s) | {tw:.0} | {tp:.0} | {:.2}x |",
        tw / tp
    );
    println!(
        "| 1-byte request/answer round trip, median of {RT_N} (µs) | {rw:.0} | {rp:.0} | {:.2}x |",
        rw / rp
    );
    println!(
        "| same, p99 (µs), median of {rounds} rounds | {rw99:.0} | {rp99:.0} | {:.2}x |",
        rw99 / rp99
    );
    println!(
        "| same, slowest of {rounds} rounds (µs) | {rwmax:.0} | {rpmax:.0} | {:.2}x |",
        rwmax / rpmax
    );
}
