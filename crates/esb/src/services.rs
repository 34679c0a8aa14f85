//! `esb s3`, `esb dynamodb`, `esb logstore` (each service alone, in the foreground) and
//! `esb logs` (a client of the log store).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::shutdown_signal;
use crate::settings::{Credentials, StateArgs};

/// Where a service listens and keeps its data.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Address to serve on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory of the service's data (default STATE_DIR/<service>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl ServiceArgs {
    fn resolve(
        &self,
        state: &StateArgs,
        name: &str,
        default: &str,
    ) -> Result<(SocketAddr, PathBuf)> {
        let listen = self
            .listen
            .unwrap_or_else(|| default.parse().expect("default address"));
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| state.state_dir.join(name));
        std::fs::create_dir_all(&dir).with_context(|| format!("--data-dir {}", dir.display()))?;
        Ok((listen, dir))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The box's credentials file of functions' keys (`STATE/iam/credentials.json`).
fn iam_file(state: &StateArgs) -> PathBuf {
    esb_box::layout::iam_file(&state.state_dir)
}

/// `esb s3`.
pub fn s3(state: &StateArgs, args: &ServiceArgs, creds: &Credentials, sigv2: bool) -> Result<()> {
    let (listen, data_dir) = args.resolve(state, "s3", "127.0.0.1:9000")?;
    let (access_key, secret_key) = creds.pair()?;
    let cfg = esb_s3::Config {
        listen,
        data_dir,
        access_key,
        secret_key,
        region: creds.region.clone(),
        iam_file: Some(iam_file(state)),
        allow_sigv2: sigv2,
    };
    tracing::info!(%listen, "S3 serving");
    runtime()?.block_on(esb_s3::serve(cfg, shutdown_signal()))
}

/// `esb dynamodb`.
pub fn dynamodb(state: &StateArgs, args: &ServiceArgs, creds: &Credentials) -> Result<()> {
    let (listen, data_dir) = args.resolve(state, "dynamodb", "127.0.0.1:8000")?;
    let (access_key, secret_key) = creds.pair()?;
    let cfg = esb_dynamodb::Config {
        region: creds.region.clone(),
        iam_file: Some(iam_file(state)),
        ..esb_dynamodb::Config::new(listen, data_dir, access_key, secret_key)
    };
    tracing::info!(%listen, "DynamoDB serving");
    runtime()?.block_on(esb_dynamodb::serve(cfg, shutdown_signal()))
}

/// Size limits of the log store.
#[derive(Debug, Clone, Args)]
pub struct LogstoreArgs {
    /// Size of a segment (MiB): the active one's index is held in memory until it is
    /// sealed, so this bounds the store's memory.
    #[arg(long, env = "ESB_LOGSTORE_SEGMENT_MB", default_value_t = 16)]
    pub segment_mb: u64,
    /// Total size on disk (MiB); the oldest segments go first (0 = no limit).
    #[arg(long, env = "ESB_LOGSTORE_MAX_MB", default_value_t = 2048)]
    pub max_mb: u64,
    /// Also serve workers' records on this address: ingestion only, signed with a
    /// function's key from STATE/iam/credentials.json, each record stamped with the
    /// function's name (docs/iam.md).
    #[arg(long)]
    pub worker_listen: Option<SocketAddr>,
    /// Age (days) after which records are dropped.
    #[arg(long, env = "ESB_LOGSTORE_RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u64,
}

/// `esb logstore`.
pub fn logstore(
    state: &StateArgs,
    args: &ServiceArgs,
    limits: &LogstoreArgs,
    creds: &Credentials,
) -> Result<()> {
    let (listen, data_dir) = args.resolve(state, "logstore", "127.0.0.1:9428")?;
    if limits.segment_mb == 0 {
        anyhow::bail!("ESB_LOGSTORE_SEGMENT_MB: must be at least 1");
    }
    let cfg = esb_logstore::Config {
        listen,
        data_dir,
        segment_bytes: limits.segment_mb << 20,
        retention: esb_logstore::Retention {
            max_age: Some(std::time::Duration::from_secs(
                limits.retention_days.max(1) * 86_400,
            )),
            max_bytes: (limits.max_mb > 0).then_some(limits.max_mb << 20),
            ..Default::default()
        },
        worker_listen: limits.worker_listen,
        iam_file: limits.worker_listen.map(|_| iam_file(state)),
        // Without the box's pair (set by `esb up` and esb.toml), the CloudWatch Logs API
        // refuses every host client.
        box_key: creds
            .pair()
            .ok()
            .map(|(access_key, secret_key)| esb_logstore::BoxKey {
                access_key,
                secret_key,
            }),
        ..Default::default()
    };
    tracing::info!(%listen, "log store serving");
    runtime()?.block_on(esb_logstore::serve(cfg, shutdown_signal()))
}

/// Arguments of `esb logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Follow: print new records as they arrive.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this function's records.
    #[arg(long)]
    pub function: Option<String>,
    /// Only records of this trace id.
    #[arg(long)]
    pub trace: Option<String>,
    /// How far back to look (LogsQL duration: 10m, 2h, 1d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// At most this many records (newest first from the store, printed oldest first).
    #[arg(short = 'n', long, default_value_t = 200)]
    pub limit: usize,
    /// Log store URL (default: the running box's, else http://127.0.0.1:9428).
    #[arg(long, env = "ESB_LOGS_URL")]
    pub url: Option<String>,
    /// Extra LogsQL filter.
    pub query: Option<String>,
    /// A component's own log instead of the log store (the seed's `docker logs`): box,
    /// gateway, proxy, agent, s3, dynamodb, logstore, containerd, registry, relay,
    /// wireguard.
    #[arg(long, conflicts_with_all = ["function", "trace", "query"])]
    pub component: Option<String>,
}

/// `esb logs --component NAME`: the last `limit` lines of `STATE/logs/NAME.log`, then, with
/// `follow`, what is appended (from the start again when the file is truncated).
fn component_log(state: &StateArgs, name: &str, limit: usize, follow: bool) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let dir = state.log_dir();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let path = esb_box::layout::log_file(&state.state_dir, name);
    if !valid || !path.is_file() {
        let mut have: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_suffix(".log").map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        anyhow::bail!(
            "--component {name:?}: no such log in {} (there: {})",
            dir.display(),
            if have.is_empty() {
                "none; is the box running here? see --state-dir".to_string()
            } else {
                have.join(", ")
            }
        );
    }
    let mut f = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
    let len = f.metadata()?.len();
    // The tail: the last 4 MiB at most, then its last `limit` lines.
    let start = len.saturating_sub(4 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = std::io::stdout().lock();
    for l in &lines[lines.len().saturating_sub(limit)..] {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(());
    }
    let mut pos = start + buf.len() as u64;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if now < pos {
            // Truncated or replaced: from its start.
            f = std::fs::File::open(&path)?;
            pos = 0;
        }
        if now > pos {
            f.seek(SeekFrom::Start(pos))?;
            let mut more = Vec::new();
            (&mut f).take(now - pos).read_to_end(&mut more)?;
            pos += more.len() as u64;
            let mut out = std::io::stdout().lock();
            out.write_all(&more)?;
            out.flush()?;
        }
    }
}

/// `esb logs`.
pub fn logs(state: &StateArgs, a: &LogsArgs) -> Result<()> {
    if let Some(name) = &a.component {
        return component_log(state, name, a.limit, a.follow);
    }
    let url = a.url.clone().unwrap_or_else(|| {
        esb_box::status::running(&state.state_dir)
            .and_then(|(_, s)| s)
            .and_then(|s| s.endpoints["logs"].as_str().map(String::from))
            .unwrap_or_else(|| "http://127.0.0.1:9428".into())
    });
    let a = &LogsArgs {
        url: Some(url.clone()),
        ..a.clone()
    };
    let url = url.as_str();
    let color = std::io::stdout().is_terminal();
    let since = Some(a.since.as_str());
    runtime()?
        .block_on(async {
            if a.follow {
                let q = esb_logstore::client::build_query(
                    a.function.as_deref(),
                    a.trace.as_deref(),
                    None,
                    a.query.as_deref(),
                );
                esb_logstore::client::tail(url, &q, since, |r| {
                    println!("{}", esb_logstore::client::format_record(&r, color));
                    true
                })
                .await
            } else {
                let q = esb_logstore::client::build_query(
                    a.function.as_deref(),
                    a.trace.as_deref(),
                    since,
                    a.query.as_deref(),
                );
                let mut records =
                    esb_logstore::client::query(url, &q, Some(a.limit), None, None).await?;
                records.reverse();
                for r in &records {
                    println!("{}", esb_logstore::client::format_record(r, color));
                }
                Ok(())
            }
        })
        .with_context(|| format!("log store at {url}"))
}
