//! Two hosts as network namespaces joined by a veth pair (private addresses only inside
//! them), each with a tunnel whose interface sits in an inner namespace and whose UDP socket
//! is the host's: TCP through wg0 both ways, handshakes reported, the route correction
//! installed from AllowedIPs, and a peer with an unknown key gets nowhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use esb_netns::NetNs;
use esb_wireguard::{Key, PeerConfig, Tunnel, TunnelConfig};

/// Namespaces made by the test, deleted on drop (also when it fails).
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

fn ipn(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(
    inner: &str,
    host: &str,
    address: &str,
    key: Key,
    peers: Vec<PeerConfig>,
) -> TunnelConfig {
    TunnelConfig {
        ifname: "wg0".into(),
        netns: inner.into(),
        address: address.parse().unwrap(),
        mtu: 1420,
        private_key: key,
        listen: "0.0.0.0:51820".parse().unwrap(),
        udp_netns: Some(host.into()),
        peers,
    }
}

/// An echo server in `ns` on `addr` (a thread; it serves until the process ends).
fn echo_server(ns: &NetNs, addr: SocketAddr) {
    let l = ns.run(|| TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
}

/// Sends `data` to `addr` from inside `ns` and reads the echo back.
fn round_trip(ns: &NetNs, addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let data2 = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data2).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    writer.join().unwrap();
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_talk_through_wg0_and_routes_follow_allowed_ips() {
    esb_testkit::require_root();
    let id = std::process::id();
    let names: Vec<String> = ["ha", "hb", "ia", "ib", "ic"]
        .iter()
        .map(|n| format!("esbt-wg{n}-{id}"))
        .collect();
    let _guard = Namespaces(names.clone());
    let (ha, hb, ia, ib, ic) = (&names[0], &names[1], &names[2], &names[3], &names[4]);
    for n in &names {
        NetNs::create(n).unwrap();
        ipn(n, &["link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", "wga", "netns", ha, "type", "veth", "peer", "name", "wgb", "netns", hb,
    ]);
    ipn(ha, &["addr", "add", "192.168.250.1/24", "dev", "wga"]);
    ipn(hb, &["addr", "add", "192.168.250.2/24", "dev", "wgb"]);
    ipn(ha, &["link", "set", "wga", "up"]);
    ipn(hb, &["link", "set", "wgb", "up"]);

    let (ka, kb) = (Key::generate().unwrap(), Key::generate().unwrap());
    let a = Tunnel::start(config(
        ia,
        ha,
        "10.99.0.1/24",
        ka,
        vec![PeerConfig {
            name: "node-b".into(),
            public_key: kb.public(),
            endpoint: None,
            allowed_ips: vec![
                "10.99.0.2/32".parse().unwrap(),
                "10.88.2.0/24".parse().unwrap(),
            ],
            keepalive: None,
        }],
    ))
    .await
    .unwrap();
    let b = Tunnel::start(config(
        ib,
        hb,
        "10.99.0.2/24",
        kb,
        vec![PeerConfig {
            name: "control".into(),
            public_key: ka.public(),
            endpoint: Some("192.168.250.1:51820".parse().unwrap()),
            allowed_ips: vec!["10.99.0.0/24".parse().unwrap()],
            keepalive: Some(25),
        }],
    ))
    .await
    .unwrap();
    assert_eq!(a.public_key(), ka.public());
    // Room for bursts: the UDP socket's buffers past the kernel's default (a datagram the
    // socket drops costs a flow in the tunnel a ~200 ms retransmission), a long TUN queue.
    let sockets = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "exec", ha, "ss", "-uanm", "sport", "= :51820"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let rb: u64 = sockets
        .split("rb")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no receive buffer in ss's answer:\n{sockets}"));
    assert!(rb >= 7 << 20, "UDP receive buffer {rb}:\n{sockets}");
    let link = ipn(ia, &["link", "show", "wg0"]);
    assert!(link.contains("qlen 4096"), "{link}");

    // B knows where A is; A learns B's endpoint from B's first packet.
    let nb = NetNs::open(ib).unwrap();
    let na = NetNs::open(ia).unwrap();
    echo_server(&nb, "10.99.0.2:7000".parse().unwrap());
    echo_server(&na, "10.99.0.1:7000".parse().unwrap());
    let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    let back = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            let nb = NetNs::open(&format!("esbt-wgib-{}", std::process::id())).unwrap();
            round_trip(&nb, "10.99.0.1:7000".parse().unwrap(), &data)
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(back == data, "1 MiB from B to A came back changed");
    let back = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            let na = NetNs::open(&format!("esbt-wgia-{}", std::process::id())).unwrap();
            round_trip(&na, "10.99.0.2:7000".parse().unwrap(), &data)
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(back == data, "1 MiB from A to B came back changed");
    println!("2 MiB echoed both ways in {:?}", t.elapsed());
    let sa = a.stats();
    assert_eq!(sa.len(), 1);
    assert!(sa[0].last_handshake.is_some(), "{sa:?}");
    assert_eq!(sa[0].endpoint, Some("192.168.250.2:51820".parse().unwrap()));
    assert!(
        sa[0].rx_bytes > 1 << 20 && sa[0].tx_bytes > 1 << 20,
        "{sa:?}"
    );
    assert!(b.stats()[0].last_handshake.is_some());

    // The interfaces live in the inner namespaces, nowhere else.
    assert!(ipn(ia, &["-o", "addr", "show", "dev", "wg0"]).contains("10.99.0.1/24"));
    assert!(!ipn(ha, &["-o", "link"]).contains("wg0"));

    // Route correction from A's peers: the worker subnet goes through wg0.
    let peers = vec![(
        "node-b".to_string(),
        vec![
            "10.88.2.0/24".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ],
    )];
    let existing = esb_wireguard::routes::other_routes(ia, "wg0").unwrap();
    let plan = esb_wireguard::route_plan(&peers, &existing, None);
    esb_wireguard::routes::apply(ia, "wg0", &plan).unwrap();
    let routes = ipn(ia, &["-4", "route"]);
    assert!(routes.contains("10.88.2.0/24 dev wg0"), "{routes}");
    assert!(!routes.contains("default"), "{routes}");

    // A third party with a key A does not know gets no answer.
    let kc = Key::generate().unwrap();
    ip(&[
        "link", "add", "wgc", "netns", ic, "type", "veth", "peer", "name", "wgc2", "netns", ha,
    ]);
    ipn(ic, &["addr", "add", "192.168.251.2/24", "dev", "wgc"]);
    ipn(ha, &["addr", "add", "192.168.251.1/24", "dev", "wgc2"]);
    ipn(ic, &["link", "set", "wgc", "up"]);
    ipn(ha, &["link", "set", "wgc2", "up"]);
    let c_inner = format!("esbt-wgic-{id}");
    let c = Tunnel::start(TunnelConfig {
        udp_netns: Some(c_inner.clone()),
        ..config(
            &c_inner,
            &c_inner,
            "10.99.0.9/24",
            kc,
            vec![PeerConfig {
                name: "control".into(),
                public_key: ka.public(),
                endpoint: Some("192.168.251.1:51820".parse().unwrap()),
                allowed_ips: vec!["10.99.0.0/24".parse().unwrap()],
                keepalive: None,
            }],
        )
    })
    .await
    .unwrap();
    let refused = tokio::task::spawn_blocking(move || {
        let nc = NetNs::open(&format!("esbt-wgic-{}", std::process::id())).unwrap();
        round_trip(&nc, "10.99.0.1:7000".parse().unwrap(), b"hello")
    })
    .await
    .unwrap();
    assert!(refused.is_err(), "an unknown key reached the control side");
    assert!(c.stats()[0].last_handshake.is_none());
    assert_eq!(a.stats().len(), 1);
    drop((a, b, c));
    // The interfaces go with their tunnels.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ipn(ia, &["-o", "link"]).contains("wg0"));
}
