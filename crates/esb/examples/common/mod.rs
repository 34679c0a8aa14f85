//! What the benchmarks of `esb` share: the first invocation of a worker and medians.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use esb_netns::NetNs;

/// Polls the worker until it answers one invocation (from inside the node namespace).
pub fn first_invocation(netns: &NetNs, ip: &str) {
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let conn = netns
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
            .unwrap();
        if let Ok(mut s) = conn {
            let body = r#"{"n":1}"#;
            let req = format!(
                "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nHost: w\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut resp = String::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut resp).is_ok()
                && resp.starts_with("HTTP/1.1 200")
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "worker {ip} never answered");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}
