//! esb's embedded log store: VictoriaLogs' HTTP API on local, append-only, indexed storage.
//!
//! Shippers send logs to `/insert/jsonline` (JSON lines, optionally gzip) or to the
//! Elasticsearch bulk endpoint `/insert/elasticsearch/_bulk`; clients query with LogsQL at
//! `/select/logsql/{query,hits,field_names,field_values,streams,tail}`. The same ports answer
//! the CloudWatch Logs API (`POST /` with `X-Amz-Target: Logs_20140328.*`, SigV4), whose
//! events are records of the store. See `docs/logstore.md`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = esb_logstore::Config { data_dir: "/tmp/logs".into(), ..Default::default() };
//! esb_logstore::serve(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod client;
mod cloudwatch;
mod http;
pub mod ingest;
pub mod logsql;
pub mod query;
pub mod record;
pub mod store;
pub mod time;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

pub use client::{build_query, format_record, query as query_logs, tail as tail_logs, Record};
pub use store::{Store, StoreOptions};

/// What to keep: records are dropped whole segments at a time, oldest first.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Drop segments whose newest record is older than this (VictoriaLogs' default: 7 days).
    pub max_age: Option<Duration>,
    /// Keep the store's total size on disk under this many bytes.
    pub max_bytes: Option<u64>,
    /// How often retention is enforced (it also runs at start).
    pub check_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(7 * 86_400)),
            max_bytes: None,
            check_interval: Duration::from_secs(60),
        }
    }
}

/// The box's own key pair: what the CloudWatch Logs API on the main listener accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct BoxKey {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl std::fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxKey")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Log store settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to serve the HTTP API (default 127.0.0.1:9428).
    pub listen: SocketAddr,
    /// Where the segments live.
    pub data_dir: PathBuf,
    /// Retention by age and size.
    pub retention: Retention,
    /// Longest accepted log line; longer lines are skipped and reported (default 256 KiB,
    /// as VictoriaLogs' `-insert.maxLineSizeBytes`).
    pub max_line_bytes: usize,
    /// Largest accepted request body, compressed size (default 64 MiB).
    pub max_request_bytes: usize,
    /// Largest decompressed size of a gzip request body, counted as it inflates (default
    /// 1 GiB): a gzip bomb stops there with 413.
    pub max_decompressed_bytes: u64,
    /// Segment size at which the active segment is sealed and indexed (default 64 MiB;
    /// capped at a quarter of `retention.max_bytes` so size retention has something to drop).
    pub segment_bytes: u64,
    /// How often written records are fsync'ed (default 1 s). Records are written before a
    /// request is acknowledged, so a crash of the process loses nothing; this bounds what a
    /// power loss can take.
    pub fsync_interval: Duration,
    /// Ingestion requests processed at once (each holds its body in memory, up to
    /// `max_request_bytes`); more wait their turn (default 4).
    pub max_concurrent_inserts: usize,
    /// The workers' listener: ingestion only, signed with a function's key from
    /// `iam_file`, records stamped with the function's name (`None`: no such listener).
    pub worker_listen: Option<SocketAddr>,
    /// The box's credentials file of functions' keys (needed by `worker_listen`).
    pub iam_file: Option<PathBuf>,
    /// The box's own key pair, which the CloudWatch Logs API on the main listener accepts
    /// (`None`: that API answers `UnrecognizedClientException` there; functions' keys are
    /// accepted on the workers' listener either way).
    pub box_key: Option<BoxKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9428)),
            data_dir: PathBuf::from("/var/lib/esb/logstore"),
            retention: Retention::default(),
            max_line_bytes: 256 << 10,
            max_request_bytes: 64 << 20,
            max_decompressed_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            fsync_interval: Duration::from_secs(1),
            max_concurrent_inserts: 4,
            worker_listen: None,
            iam_file: None,
            box_key: None,
        }
    }
}

/// A bound, not yet running, log store server.
pub struct Server {
    listener: tokio::net::TcpListener,
    workers: Option<(tokio::net::TcpListener, Arc<esb_iam::CredentialStore>)>,
    store: Arc<Store>,
    catalog: Arc<cloudwatch::Catalog>,
    config: Arc<Config>,
    limits: esb_serve::Limits,
    _lock: std::fs::File,
}

impl Server {
    /// Opens the store (recovering it after a crash) and binds the listener. Bind to port 0
    /// and read [`local_addr`](Self::local_addr) to learn the port (tests).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let lock = lock_dir(&config.data_dir)?;
        let mut opts = StoreOptions {
            segment_bytes: config.segment_bytes.max(4096),
            ..Default::default()
        };
        if let Some(max) = config.retention.max_bytes {
            opts.segment_bytes = opts.segment_bytes.min((max / 4).max(4096));
            opts.max_bytes = Some(max);
        }
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, opts))
            .await?
            .with_context(|| {
                format!("cannot open the log store in {}", config.data_dir.display())
            })?;
        let catalog = cloudwatch::Catalog::open(&config.data_dir, &store).with_context(|| {
            format!(
                "cannot read the CloudWatch Logs metadata in {}",
                config.data_dir.display()
            )
        })?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let workers = match config.worker_listen {
            None => None,
            Some(addr) => {
                let file = config.iam_file.clone().context(
                    "the workers' listener needs the credentials file of functions' keys",
                )?;
                let keys = esb_iam::CredentialStore::open(file)
                    .map_err(|e| anyhow::anyhow!("the credentials file: {e}"))?;
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (workers)"))?;
                Some((l, Arc::new(keys)))
            }
        };
        let limits = esb_serve::Limits::from_env("logstore").map_err(anyhow::Error::msg)?;
        Ok(Server {
            listener,
            workers,
            store: Arc::new(store),
            catalog,
            config: Arc::new(config),
            limits,
            _lock: lock,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The address the workers' listener actually bound, if there is one.
    pub fn worker_addr(&self) -> Option<SocketAddr> {
        self.workers.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The underlying store.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then stops (open tails are ended) and syncs.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = http::AppState {
            store: self.store.clone(),
            logs: cloudwatch::Logs::new(self.store.clone(), self.catalog.clone()),
            config: self.config.clone(),
            shutdown: stop_rx.clone(),
            ingest_pool: Arc::new(http::WorkPool::new(
                self.config
                    .max_concurrent_inserts
                    .min(std::thread::available_parallelism().map_or(2, |n| n.get()))
                    .max(1),
            )),
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(
                self.config.max_concurrent_inserts.max(1),
            )),
        };
        let worker_task = self.workers.take().map(|(listener, keys)| {
            let app = workers::router(workers::WorkerState {
                app: state.clone(),
                keys,
            });
            let mut stop = stop_rx.clone();
            tracing::info!(addr = ?listener.local_addr().ok(), "log store listening for workers' records");
            let limits = self.limits.clone();
            tokio::spawn(async move {
                esb_serve::serve(
                    listener,
                    limits,
                    move |_peer| hyper_util::service::TowerToHyperService::new(app.clone()),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await;
            })
        });
        let app = http::router(state);
        let bg = tokio::spawn(background(
            self.store.clone(),
            self.config.clone(),
            stop_rx.clone(),
        ));
        tracing::info!(addr = %self.local_addr(), dir = %self.config.data_dir.display(), "log store listening");
        let stop_tx2 = stop_tx.clone();
        // (esb_serve sets TCP_NODELAY: a query's few lines must not wait for delayed ACKs.)
        esb_serve::serve(
            self.listener,
            self.limits.clone(),
            move |_peer| hyper_util::service::TowerToHyperService::new(app.clone()),
            async move {
                shutdown.await;
                let _ = stop_tx2.send(true);
            },
        )
        .await;
        let _ = stop_tx.send(true);
        if let Some(t) = worker_task {
            let _ = t.await;
        }
        let _ = bg.await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.sync()).await??;
        Ok(())
    }
}

fn lock_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!("{} is in use by another log store process", dir.display());
    }
    Ok(f)
}

async fn background(store: Arc<Store>, config: Arc<Config>, mut stop: watch::Receiver<bool>) {
    let mut fsync = tokio::time::interval(config.fsync_interval.max(Duration::from_millis(10)));
    let mut retention = tokio::time::interval(
        config
            .retention
            .check_interval
            .max(Duration::from_millis(10)),
    );
    let max_age = config
        .retention
        .max_age
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64);
    let max_bytes = config.retention.max_bytes;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = fsync.tick() => {
                let s = store.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.sync()).await {
                    tracing::error!(error = %e, "fsync of the log store failed");
                }
            }
            _ = retention.tick() => {
                if max_age.is_none() && max_bytes.is_none() {
                    continue;
                }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.enforce_retention(time::now_nanos(), max_age, max_bytes)).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
                    Ok(Ok(n)) if n > 0 => tracing::info!(segments = n, "retention dropped old segments"),
                    _ => {}
                }
            }
        }
    }
}

/// Runs the log store until `shutdown` completes.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}
