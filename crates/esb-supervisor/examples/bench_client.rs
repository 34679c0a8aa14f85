//! Benchmark client: sequential warm invocations over one kept-alive connection.
//!
//! `bench_client ADDR N WARMUP BODY` prints `{"n","p50_us","p99_us","mean_us"}` for N timed
//! invocations of `POST /2015-03-31/functions/function/invocations` (after WARMUP untimed
//! ones). Blocking std I/O and a minimal HTTP/1.1 parser keep the client's own cost low.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: bench_client ADDR N WARMUP BODY");
        std::process::exit(2);
    }
    let n: usize = args[2].parse().expect("N");
    let warmup: usize = args[3].parse().expect("WARMUP");
    let body = args[4].as_bytes();
    let stream = TcpStream::connect(&args[1]).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut request = format!(
        "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        args[1],
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);

    let mut samples = Vec::with_capacity(n);
    let mut line = String::new();
    let mut resp_body = Vec::new();
    for i in 0..warmup + n {
        let t0 = Instant::now();
        writer.write_all(&request).unwrap();
        let mut len = 0usize;
        let mut status = 0u16;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
                if k.eq_ignore_ascii_case("x-amz-function-error") {
                    panic!("function error: {l}");
                }
            }
        }
        resp_body.resize(len, 0);
        reader.read_exact(&mut resp_body).unwrap();
        let dt = t0.elapsed();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp_body));
        if i >= warmup {
            samples.push(dt.as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / n as f64;
    println!(
        "{{\"n\":{n},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{:.1}}}",
        samples[n / 2] as f64 / 1000.0,
        samples[n * 99 / 100] as f64 / 1000.0,
        mean / 1000.0
    );
}
