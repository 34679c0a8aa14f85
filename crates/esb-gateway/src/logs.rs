//! Structured JSON logs (access and error records with trace and request ids), written to
//! stderr and shipped in batches to the log store's `/insert/jsonline` (VictoriaLogs API).
//! A bounded queue: when the store is slow, lines are dropped and counted, never piled up.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

const QUEUE: usize = 8192;
const BATCH: usize = 1000;

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
        (Logger { tx, dropped }, run(rx, url, stderr))
    }

    /// Logs one record: `fields` plus `_time`, `_msg`, `level`, `service`.
    pub fn log(&self, level: &str, msg: &str, mut fields: Map<String, Value>) {
        fields.insert(
            "_time".into(),
            crate::ids::rfc3339(crate::ids::now_ms()).into(),
        );
        fields.insert("_msg".into(), msg.into());
        fields.insert("level".into(), level.into());
        fields.insert("service".into(), "esb-gateway".into());
        let line = Value::Object(fields).to_string();
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// How long the shipper waits for more lines once one arrived, so that a quiet stream of
/// requests is shipped in batches rather than one POST per line.
const LINGER: Duration = Duration::from_millis(200);

async fn run(mut rx: mpsc::Receiver<String>, url: Option<String>, stderr: bool) {
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    let mut shipper = url.map(Shipper::new);
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
            for l in &batch {
                body.push_str(l);
                body.push('\n');
            }
            if let Err(e) = s.ship(body).await {
                if stderr {
                    eprintln!("esb-gateway: shipping logs to {}: {e}", s.url);
                }
            }
        }
        batch.clear();
    }
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

    async fn ship(&mut self, body: String) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .ok_or("only http:// log store URLs are supported")?
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
                "{base}/insert/jsonline?_stream_fields=service&_msg_field=_msg&_time_field=_time"
            ))
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/stream+json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}
