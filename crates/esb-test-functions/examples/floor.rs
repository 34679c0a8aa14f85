//! Benchmark floor: the Rust test function's echo handler called in a loop inside its own
//! process. Each call does what the runtime does per event around the handler: decode the
//! JSON event, call the handler, encode the result.
//!
//! `floor N BODY` prints `{"n","p50_us","p99_us","mean_us"}`.

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let body = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| r#"{"hello":"world"}"#.into());
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n + 1000 {
        let t0 = Instant::now();
        let event: serde_json::Value = serde_json::from_slice(black_box(body.as_bytes())).unwrap();
        let out = serde_json::to_vec(&esb_test_functions::echo(event)).unwrap();
        black_box(out);
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    let mut samples = samples.split_off(1000);
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / n as f64;
    println!(
        "{{\"n\":{n},\"p50_us\":{:.3},\"p99_us\":{:.3},\"mean_us\":{:.3}}}",
        samples[n / 2] as f64 / 1000.0,
        samples[n * 99 / 100] as f64 / 1000.0,
        mean / 1000.0
    );
}
