//! Runs the embedded S3 server alone (for benchmarks and manual testing).
//!
//! `cargo run --release -p esb-s3 --example s3_server -- 127.0.0.1:9000 /tmp/s3data`
//! Credentials come from ESB_ACCESS_KEY_ID / ESB_SECRET_ACCESS_KEY (default esb / esb-secret).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()?;
    let data_dir = args.next().unwrap_or_else(|| "/tmp/esb-s3".into()).into();
    let config = esb_s3::Config {
        listen,
        data_dir,
        access_key: std::env::var("ESB_ACCESS_KEY_ID").unwrap_or_else(|_| "esb".into()),
        secret_key: std::env::var("ESB_SECRET_ACCESS_KEY").unwrap_or_else(|_| "esb-secret".into()),
        region: std::env::var("ESB_REGION").unwrap_or_else(|_| esb_s3::DEFAULT_REGION.into()),
        iam_file: None,
        allow_sigv2: std::env::var("ESB_S3_SIGV2").is_ok_and(|v| v == "1"),
    };
    esb_s3::serve(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
