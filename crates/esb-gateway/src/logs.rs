//! Structured JSON logs (access and error records with trace and request ids), written to
//! stderr and shipped in batches to the log store's `/insert/jsonline` (VictoriaLogs API).
//! A batch the store does not take (down, restarting) is retried with backoff until it
//! does, while new lines wait in a bounded queue (room for well over 30 s of a busy
//! gateway); only when that queue is full are lines dropped and counted (the
//! `logs_dropped` metric and `/status` field, and a notice record once shipping resumes).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Lines waiting to be shipped (the queue's bound).
const QUEUE: usize = 65_536;
const BATCH: usize = 1000;
/// Longest wait between two attempts to ship a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Sends log records; cheap to clone.
#[derive(Clone)]
pub struct Logger {
    tx: mpsc::Sender<String>,
    dropped: Counter,
}

impl Logger {
    /// A logger and the task that writes and ships its lines (`url` = VICTORIALOGS_URL).
    pub fn new(
        url: Option<String>,
        stderr: bool,
        dropped: Counter,
    ) -> (Logger, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = run(rx, url, stderr, dropped.clone());
        (Logger { tx, dropped }, task)
    }

    /// Logs one record: `fields` plus `_time`, `_msg`, `level` (upper-case),
    /// `container_name` (`esb-gateway`) and `job` (`gateway`), upstream ESB's field names.
    pub fn log(&self, level: &str, msg: &str, mut fields: Map<String, Value>) {
        fields.insert(
            "_time".into(),
            crate::ids::rfc3339(crate::ids::now_ms()).into(),
        );
        fields.insert("_msg".into(), msg.into());
        fields.insert("level".into(), level.to_ascii_uppercase().into());
        fields.insert("container_name".into(), "esb-gateway".into());
        fields.insert("job".into(), "gateway".into());
        let line = Value::Object(fields).to_string();
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// How long the shipper waits for more lines once one arrived, so that a quiet stream of
/// requests is shipped in batches rather than one POST per line.
const LINGER: Duration = Duration::from_millis(200);

async fn run(mut rx: mpsc::Receiver<String>, url: Option<String>, stderr: bool, dropped: Counter) {
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut shipper = url.map(Shipper::new);
    let mut noticed = 0u64;
    loop {
        let n = rx.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            return;
        }
        if shipper.is_some() {
            // Gather what arrives within the linger (up to a full batch).
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                let room = BATCH - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        if stderr {
            let mut err = std::io::stderr().lock();
            for l in &batch {
                let _ = writeln!(err, "{l}");
            }
        }
        if let Some(s) = &mut shipper {
            let mut body = String::with_capacity(batch.iter().map(|l| l.len() + 1).sum());
            let lost = dropped.get();
            if lost > noticed {
                let notice = serde_json::json!({
                    "_time": crate::ids::rfc3339(crate::ids::now_ms()),
                    "_msg": format!("esb-gateway: dropped {} log records (log queue full)", lost - noticed),
                    "level": "WARN",
                    "container_name": "esb-gateway",
                    "job": "gateway",
                });
                body.push_str(&notice.to_string());
                body.push('\n');
                noticed = lost;
            }
            for l in &batch {
                body.push_str(l);
                body.push('\n');
            }
            ship_until_taken(s, Bytes::from(body), batch.len(), &dropped).await;
        }
        batch.clear();
    }
}

/// Ships one batch, retrying with backoff for as long as the store is unreachable or
/// answers with a transient error; a batch refused for good (another 4xx) is dropped and
/// counted. Problems are reported on stderr (the gateway's own log file), sparingly.
async fn ship_until_taken(s: &mut Shipper, body: Bytes, lines: usize, dropped: &Counter) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match s.ship(body.clone()).await {
            Ok(()) => {
                if failures > 0 {
                    eprintln!("esb-gateway: log shipping to {} works again", s.url);
                }
                return;
            }
            Err(ShipError::Rejected(e)) => {
                eprintln!(
                    "esb-gateway: the log store refused a batch ({e}); {lines} lines dropped"
                );
                dropped.inc_by(lines as u64);
                return;
            }
            Err(ShipError::Failed(e)) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    eprintln!(
                        "esb-gateway: shipping logs to {} failed ({e}); retrying (attempt {failures})",
                        s.url
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Why a batch was not shipped.
enum ShipError {
    /// Worth retrying: no connection, a timeout, 5xx, 408 or 429.
    Failed(String),
    /// Refused for good (another 4xx), or the URL cannot work.
    Rejected(String),
}

/// POSTs lines to `{url}/insert/jsonline` over plain HTTP/1.1, on one kept-alive
/// connection (made again after an error).
struct Shipper {
    url: String,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Shipper {
    fn new(url: String) -> Shipper {
        Shipper { url, conn: None }
    }

    async fn ship(&mut self, body: Bytes) -> Result<(), ShipError> {
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or_else(|| ShipError::Rejected("only http:// log store URLs are supported".into()))?
            .to_string();
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest.as_str(), ""),
        };
        let fut = async {
            let reusable = self.conn.as_mut().is_some_and(|c| !c.is_closed());
            if !reusable {
                self.conn = None;
                let stream = tokio::net::TcpStream::connect(authority)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = stream.set_nodelay(true);
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                self.conn = Some(send);
            }
            let send = self.conn.as_mut().expect("connection");
            send.ready().await.map_err(|e| e.to_string())?;
            let req = http::Request::post(format!(
                "{base}/insert/jsonline?_stream_fields=container_name,job&_msg_field=_msg&_time_field=_time"
            ))
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/stream+json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        let r = match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Err(_) => Err(ShipError::Failed("timed out".into())),
            Ok(Err(e)) => Err(ShipError::Failed(e)),
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) if status.is_client_error() && status != 408 && status != 429 => {
                Err(ShipError::Rejected(format!("status {status}")))
            }
            Ok(Ok(status)) => Err(ShipError::Failed(format!("status {status}"))),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}
