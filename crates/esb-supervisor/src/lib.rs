//! `esb-supervisor`: the program inside every esb worker.
//!
//! It makes a stock Lambda runtime client (awslambdaric, the `lambda_runtime` crate, any
//! custom `bootstrap`) believe it runs on AWS Lambda: it serves the Runtime API
//! (2018-06-01) to it, answers invocations on the worker's :8080 in the shape of Lambda's
//! Invoke API, enforces timeouts by killing the runtime's process tree, restarts crashed
//! runtimes, and captures the runtime's output as structured logs (stdout or VictoriaLogs).
//! See `docs/supervisor.md`.
//!
//! The binary is a thin wrapper: [`Config::from_env`] then [`run`].

pub mod config;
pub mod logs;
pub mod server;
pub mod sign;
pub mod static_build;
pub mod supervisor;
mod util;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigError};
pub use static_build::{build_static, is_static_elf};

use logs::Logs;
use server::Conns;
use supervisor::Supervisor;

/// A started supervisor: both endpoints listening, the runtime initialising.
pub struct Running {
    /// Where the invoke endpoint listens.
    pub invoke_addr: SocketAddr,
    /// Where the Runtime API listens (the runtime's AWS_LAMBDA_RUNTIME_API).
    pub runtime_api_addr: SocketAddr,
    sup: Arc<Supervisor>,
    stop_invoke: watch::Sender<bool>,
    conns: Arc<Conns>,
}

/// Binds both endpoints and starts the runtime. Must run inside a tokio runtime with IO
/// and time enabled (the binary uses a current-thread runtime) whose threads live as long
/// as the supervisor: the runtime process gets `PR_SET_PDEATHSIG`, which fires when the
/// thread that spawned it exits.
pub async fn start(cfg: Config) -> io::Result<Running> {
    let invoke = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen)))?;
    let api = TcpListener::bind(cfg.runtime_api_listen)
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", cfg.runtime_api_listen),
            )
        })?;
    let invoke_addr = invoke.local_addr()?;
    let runtime_api_addr = api.local_addr()?;
    let logs = match &cfg.victorialogs_url {
        Some(url) => Logs::victorialogs(
            &cfg.function_name,
            &cfg.function_version,
            url,
            cfg.log_buffer_bytes,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        None => Logs::stdout(
            &cfg.function_name,
            &cfg.function_version,
            cfg.stdout_json,
            cfg.log_buffer_bytes,
        ),
    };
    let sup = Supervisor::new(Arc::new(cfg), logs, runtime_api_addr);
    let (stop_invoke, stop_rx) = watch::channel(false);
    let conns = Arc::new(Conns::default());
    let s = sup.clone();
    // The Runtime API is never stopped: the runtime may still answer during shutdown.
    tokio::spawn(server::serve(api, None, None, move |req| {
        server::runtime_api(s.clone(), req)
    }));
    let s = sup.clone();
    tokio::spawn(server::serve(
        invoke,
        Some(stop_rx),
        Some(conns.clone()),
        move |req| server::invoke_endpoint(s.clone(), req),
    ));
    sup.start()?;
    Ok(Running {
        invoke_addr,
        runtime_api_addr,
        sup,
        stop_invoke,
        conns,
    })
}

impl Running {
    /// Graceful stop (what SIGTERM does): refuse new invocations, let the running one
    /// finish within the grace period, stop the runtime, flush the logs.
    pub async fn shutdown(self) {
        let _ = self.stop_invoke.send(true);
        self.sup.shutdown().await;
        self.conns
            .wait_closed(Instant::now() + Duration::from_secs(1))
            .await;
    }
}

/// Runs the supervisor until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn run(cfg: Config) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = start(cfg).await?;
    eprintln!(
        "esb-supervisor: listening invoke={} runtime-api={}",
        running.invoke_addr, running.runtime_api_addr
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}
