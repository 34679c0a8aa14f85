//! Runs the store alone (for benchmarks and the differential run; `esb dynamodb` is the
//! real entry point): `serve [LISTEN] [DATA_DIR]`, credentials from ESB_ACCESS_KEY_ID /
//! ESB_SECRET_ACCESS_KEY, functions' keys and policies from ESB_IAM_FILE when set. Stops
//! on Ctrl-C or SIGTERM.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8000".into())
        .parse()?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "./dynamodb-data".into()));
    let key = std::env::var("ESB_ACCESS_KEY_ID").unwrap_or_else(|_| "esb".into());
    let secret = std::env::var("ESB_SECRET_ACCESS_KEY").unwrap_or_else(|_| "esb-secret".into());
    let mut config = esb_dynamodb::Config::new(listen, dir, key, secret);
    config.iam_file = std::env::var_os("ESB_IAM_FILE").map(Into::into);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    esb_dynamodb::serve(config, shutdown).await
}
