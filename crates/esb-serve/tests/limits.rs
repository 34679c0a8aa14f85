//! The limits through real sockets on loopback: a slow header is cut at the header
//! timeout, an idle keep-alive connection is closed, and past the connection cap new
//! connections are closed while the open ones are still served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use esb_serve::Limits;
use http_body_util::Full;
use hyper::body::Bytes;

/// A server with `limits` answering every request with `answer(body read with a 1 s idle
/// timeout)`, on a thread of its own.
fn server_with(
    limits: Limits,
    answer: fn(Result<Bytes, esb_serve::BodyError>) -> String,
) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            esb_serve::serve(
                listener,
                limits,
                move |_peer| {
                    hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| async move {
                            let body = esb_serve::read_body(
                                req.into_body(),
                                1 << 20,
                                Duration::from_secs(1),
                            )
                            .await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(answer(body)),
                            )))
                        },
                    )
                },
                std::future::pending(),
            )
            .await;
        });
    });
    rx.recv().unwrap()
}

/// A server answering "ok" with `limits`.
fn server(limits: Limits) -> SocketAddr {
    server_with(limits, |_| "ok".into())
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or similar before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_slow_header_and_an_idle_connection_are_cut_at_the_header_timeout() {
    let mut l = Limits::new("test");
    l.header_read_timeout = Duration::from_secs(1);
    let addr = server(l);

    // Slowloris: a header that never ends, one byte at a time.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(20) {
        if slow.write_all(b"x").is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(200)) {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled header kept its connection for 20 s");

    // An idle keep-alive connection after one request.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(20)),
        "an idle keep-alive connection stayed open"
    );
    // The server still answers.
    assert!(get(addr).starts_with("HTTP/1.1 200"));
}

#[test]
fn past_the_cap_new_connections_are_closed_and_open_ones_still_served() {
    let mut l = Limits::new("test");
    l.max_connections = 3;
    let addr = server(l);
    let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Let the server accept the three.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(10)),
        "a fourth connection was kept past a cap of three"
    );
    // The held ones are served.
    held[0]
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    held[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = held[0].read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Once one ends, a new connection is served again.
    held.remove(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(addr).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_body_that_stops_arriving_is_given_up() {
    let addr = server_with(Limits::new("test"), |body| match body {
        Ok(b) => format!("read {}", b.len()),
        Err(e) => e.to_string(),
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.contains("stalled"), "{answer}");
}

#[test]
fn http2_clients_are_served_within_the_stream_limit() {
    let mut l = Limits::new("test");
    l.h2_max_concurrent_streams = 8;
    let addr = server(l);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        // One request first: by its answer the client has the server's SETTINGS (before
        // them it may open more streams than allowed, which the server refuses).
        let mut first = send.clone();
        first.ready().await.unwrap();
        let req = hyper::Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(first.send_request(req).await.unwrap().status(), 200);
        // 50 requests at once on one connection: the server allows 8 streams at a time,
        // the client waits for free ones, and every request is answered.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                send.ready().await.unwrap();
                let req = hyper::Request::get(format!("http://{addr}/"))
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                send.send_request(req).await.unwrap().status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
    });
}
