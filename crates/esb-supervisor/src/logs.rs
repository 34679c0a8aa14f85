//! Log capture and shipping.
//!
//! Every line the runtime writes on stdout or stderr, and the supervisor's START / END /
//! REPORT lines, becomes a structured record (`_time`, `_msg`, function name, request id,
//! trace id, level; a JSON object line keeps its fields). Records go either to the
//! supervisor's stdout or, with `VICTORIALOGS_URL`, to VictoriaLogs' `/insert/jsonline`
//! endpoint: batched, with a bounded queue, and flushed on request before exit. A batch
//! the endpoint does not take (down, restarting, overloaded) is retried with backoff for
//! as long as it takes while new records queue behind it; only when the queue's bound is
//! reached are records dropped, counted (a notice record once shipping works again, and
//! the `x-esb-logs-dropped` header of invocation answers, which the gateway's status
//! shows).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::util::rfc3339;

/// Longest line kept as one record; longer output is split (Lambda cuts at 256 KiB too).
pub const MAX_LINE: usize = 256 * 1024;
const BATCH_BYTES: usize = 1 << 20;
const BATCH_RECORDS: usize = 2000;
const LINGER: Duration = Duration::from_millis(100);

/// The invocation that log lines are attributed to.
#[derive(Debug)]
pub struct LogCtx {
    /// Lambda request id.
    pub request_id: String,
    /// X-Ray trace header of the invocation.
    pub trace_id: String,
}

/// Where records go.
enum Sink {
    Stdout { json: bool, out: Arc<StdoutWriter> },
    Ship(Arc<Shipper>),
}

/// The log pipeline of one supervisor. Cheap to clone.
#[derive(Clone)]
pub struct Logs {
    inner: Arc<Inner>,
}

struct Inner {
    function_name: String,
    function_version: String,
    /// `/aws/lambda/FUNCTION`: the CloudWatch Logs group of this worker's records.
    log_group: String,
    /// Platform lines are kept out of the records (`SystemLogLevel: WARN`).
    quiet_platform: bool,
    ctx: Mutex<Option<Arc<LogCtx>>>,
    /// The log tail being captured for one invocation (X-Amz-Log-Type: Tail).
    tail: Mutex<Option<(String, String)>>,
    sink: Sink,
}

/// The function's CloudWatch Logs group: `AWS_LAMBDA_LOG_GROUP_NAME` when its
/// `LoggingConfig.LogGroup` set one, else Lambda's `/aws/lambda/FUNCTION`.
pub fn log_group_name(function_name: &str) -> String {
    std::env::var("AWS_LAMBDA_LOG_GROUP_NAME")
        .ok()
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| format!("/aws/lambda/{function_name}"))
}

/// Bytes of log returned as the tail (Lambda's 4 KB).
pub const TAIL_BYTES: usize = 4096;

impl Logs {
    /// Logs printed on the supervisor's stdout (raw lines, or JSON records with `json`), by
    /// a writer thread behind a queue of at most `buffer_bytes`: a stdout that blocks (a
    /// slow log collector) never stalls invocations; lines that do not fit are dropped and
    /// counted.
    pub fn stdout(
        function_name: &str,
        function_version: &str,
        json: bool,
        buffer_bytes: usize,
    ) -> Logs {
        let out = StdoutWriter::start(buffer_bytes.max(64 * 1024));
        Logs::new(function_name, function_version, Sink::Stdout { json, out })
    }

    /// Logs shipped to a VictoriaLogs-compatible endpoint; starts the shipping task.
    pub fn victorialogs(
        function_name: &str,
        function_version: &str,
        url: &str,
        buffer_bytes: usize,
    ) -> Result<Logs, String> {
        let target = Target::parse(url)?;
        let shipper = Arc::new(Shipper {
            target,
            queue: Mutex::new(Queue::default()),
            dropped_total: Default::default(),
            limit: buffer_bytes.max(64 * 1024),
            wake: Notify::new(),
            progress: Notify::new(),
            urgent: AtomicBool::new(false),
            credentials: crate::sign::Credentials::from_env(),
        });
        tokio::spawn(shipper.clone().run());
        Ok(Logs::new(
            function_name,
            function_version,
            Sink::Ship(shipper),
        ))
    }

    fn new(function_name: &str, function_version: &str, sink: Sink) -> Logs {
        Logs {
            inner: Arc::new(Inner {
                function_name: function_name.to_string(),
                function_version: function_version.to_string(),
                log_group: log_group_name(function_name),
                // SystemLogLevel WARN: Lambda's START/END/REPORT (INFO) are not shipped.
                quiet_platform: std::env::var("ESB_SYSTEM_LOG_LEVEL")
                    .is_ok_and(|l| l.eq_ignore_ascii_case("WARN")),
                ctx: Mutex::new(None),
                tail: Mutex::new(None),
                sink,
            }),
        }
    }

    /// Attributes the following lines to an invocation (kept until the next one).
    pub fn set_context(&self, ctx: Arc<LogCtx>) {
        *self.inner.ctx.lock().unwrap() = Some(ctx);
    }

    /// Starts capturing the log lines of invocation `id` for its tail.
    pub fn start_tail(&self, id: &str) {
        *self.inner.tail.lock().unwrap() = Some((id.to_string(), String::new()));
    }

    /// Stops capturing and returns the last [`TAIL_BYTES`] of invocation `id`'s log.
    pub fn take_tail(&self, id: &str) -> Option<String> {
        let mut tail = self.inner.tail.lock().unwrap();
        match tail.take() {
            Some((tid, text)) if tid == id => Some(text),
            other => {
                *tail = other;
                None
            }
        }
    }

    fn capture(&self, id: Option<&str>, text: &str) {
        let mut tail = self.inner.tail.lock().unwrap();
        if let Some((tid, buf)) = tail.as_mut() {
            if Some(tid.as_str()) == id {
                buf.push_str(text);
                buf.push('\n');
                if buf.len() > 2 * TAIL_BYTES {
                    let mut cut = buf.len() - TAIL_BYTES;
                    while !buf.is_char_boundary(cut) {
                        cut += 1;
                    }
                    buf.drain(..cut);
                }
            }
        }
    }

    /// Records one line the function wrote (`stream` is `stdout` or `stderr`).
    pub fn function_line(&self, stream: &'static str, line: &[u8]) {
        let ctx = self.inner.ctx.lock().unwrap().clone();
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        self.capture(ctx.as_ref().map(|c| c.request_id.as_str()), text);
        match &self.inner.sink {
            Sink::Stdout { json: false, out } => out.push(text),
            _ => {
                let rec = self.record(text, stream, ctx.as_deref(), true, Vec::new());
                self.emit(rec);
            }
        }
    }

    /// Records one message the runtime sent as a telemetry frame (`_LAMBDA_TELEMETRY_LOG_FD`,
    /// awslambdaric's and the Node client's framing): one record even when it spans lines
    /// (a traceback), with the frame's level and timestamp.
    pub fn function_frame(&self, frame_type: u32, timestamp_us: u64, message: &[u8]) {
        let ctx = self.inner.ctx.lock().unwrap().clone();
        let text = String::from_utf8_lossy(message);
        let text = text.trim_end_matches(['\n', '\r']);
        self.capture(ctx.as_ref().map(|c| c.request_id.as_str()), text);
        match &self.inner.sink {
            Sink::Stdout { json: false, out } => out.push(text),
            _ => {
                let is_json = frame_type & 1 == 0;
                let mut fields = Vec::new();
                if !is_json {
                    if let Some(level) = frame_level(frame_type) {
                        fields.push(("level", Value::String(level.into())));
                    }
                }
                let time = std::time::UNIX_EPOCH + Duration::from_micros(timestamp_us);
                fields.push(("_time", Value::String(rfc3339(time))));
                let rec = self.record(text, "stdout", ctx.as_deref(), is_json, fields);
                self.emit(rec);
            }
        }
    }

    /// Records a platform line (START / END / REPORT …) for the given invocation.
    pub fn platform(&self, ctx: &LogCtx, msg: &str, fields: Vec<(&'static str, Value)>) {
        self.capture(Some(&ctx.request_id), msg);
        if self.inner.quiet_platform {
            return;
        }
        match &self.inner.sink {
            Sink::Stdout { json: false, out } => out.push(msg),
            _ => {
                let rec = self.record(msg, "platform", Some(ctx), false, fields);
                self.emit(rec);
            }
        }
    }

    /// Records a platform line that belongs to no invocation (INIT_START, runtime exits).
    pub fn platform_plain(&self, msg: &str, fields: Vec<(&'static str, Value)>) {
        match &self.inner.sink {
            Sink::Stdout { json: false, out } => out.push(msg),
            _ => {
                let rec = self.record(msg, "platform", None, false, fields);
                self.emit(rec);
            }
        }
    }

    /// Records several platform lines at once (one write on stdout).
    pub fn platform_many(&self, ctx: &LogCtx, lines: Vec<(String, Vec<(&'static str, Value)>)>) {
        for (msg, _) in &lines {
            self.capture(Some(&ctx.request_id), msg);
        }
        if self.inner.quiet_platform {
            return;
        }
        match &self.inner.sink {
            Sink::Stdout { json: false, out } => {
                let text: Vec<&str> = lines.iter().map(|(m, _)| m.as_str()).collect();
                out.push(&text.join("\n"));
            }
            _ => {
                for (msg, fields) in lines {
                    let rec = self.record(&msg, "platform", Some(ctx), false, fields);
                    self.emit(rec);
                }
            }
        }
    }

    fn record(
        &self,
        text: &str,
        stream: &'static str,
        ctx: Option<&LogCtx>,
        parse_json: bool,
        fields: Vec<(&'static str, Value)>,
    ) -> Map<String, Value> {
        let mut rec = Map::new();
        let mut level = None;
        let mut msg = None;
        if parse_json && text.starts_with('{') {
            if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
                for key in ["message", "msg", "_msg"] {
                    if let Some(Value::String(s)) = obj.get(key) {
                        msg = Some(s.clone());
                        break;
                    }
                }
                for key in ["level", "levelname", "severity"] {
                    if let Some(Value::String(s)) = obj.get(key) {
                        level = Some(
                            level_of(s).map_or_else(|| s.to_ascii_uppercase(), str::to_string),
                        );
                        break;
                    }
                }
                rec = obj;
            }
        }
        let level = level.unwrap_or_else(|| text_level(text, stream).to_string());
        rec.insert("_time".into(), Value::String(rfc3339(SystemTime::now())));
        rec.insert(
            "_msg".into(),
            Value::String(msg.unwrap_or_else(|| text.to_string())),
        );
        // Upstream ESB's field names (its saved queries work unchanged), and CloudWatch
        // Logs' group and stream (the log store's CloudWatch Logs API lists them).
        rec.insert(
            "container_name".into(),
            Value::String(self.inner.function_name.clone()),
        );
        rec.insert("job".into(), Value::String("lambda".into()));
        rec.insert(
            "function_name".into(),
            Value::String(self.inner.function_name.clone()),
        );
        rec.insert(
            "function_version".into(),
            Value::String(self.inner.function_version.clone()),
        );
        rec.insert(
            "log_group".into(),
            Value::String(self.inner.log_group.clone()),
        );
        rec.insert(
            "log_stream".into(),
            Value::String(crate::util::log_stream_name().into()),
        );
        if let Some(ctx) = ctx {
            rec.insert(
                "aws_request_id".into(),
                Value::String(ctx.request_id.clone()),
            );
            rec.insert("trace_id".into(), Value::String(ctx.trace_id.clone()));
        }
        rec.insert("level".into(), Value::String(level));
        rec.insert("stream".into(), Value::String(stream.into()));
        for (k, v) in fields {
            rec.insert(k.into(), v);
        }
        rec
    }

    fn emit(&self, rec: Map<String, Value>) {
        match &self.inner.sink {
            Sink::Stdout { out, .. } => {
                out.push(&Value::Object(rec).to_string());
            }
            Sink::Ship(s) => {
                let mut line = serde_json::to_vec(&rec).unwrap_or_default();
                line.push(b'\n');
                s.push(line);
            }
        }
    }

    /// Records dropped so far because the buffer was full (or refused by the endpoint).
    pub fn dropped_total(&self) -> u64 {
        match &self.inner.sink {
            Sink::Stdout { out, .. } => out.dropped_total.load(Ordering::Relaxed),
            Sink::Ship(s) => s.dropped_total.load(Ordering::Relaxed),
        }
    }

    /// Ships everything queued so far, waiting at most until `deadline`. Returns whether
    /// the queue was emptied.
    pub async fn flush(&self, deadline: Instant) -> bool {
        match &self.inner.sink {
            Sink::Stdout { out, .. } => out.flush(deadline).await,
            Sink::Ship(s) => s.flush(deadline).await,
        }
    }
}

/// How long the stdout writer waits for more lines before a write.
const STDOUT_LINGER: Duration = Duration::from_millis(5);

/// Writes log lines on stdout from a thread of its own.
struct StdoutWriter {
    tx: std::sync::mpsc::Sender<WriterMsg>,
    queued: std::sync::atomic::AtomicUsize,
    dropped: std::sync::atomic::AtomicU64,
    dropped_total: std::sync::atomic::AtomicU64,
    limit: usize,
}

enum WriterMsg {
    Line(String),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl StdoutWriter {
    fn start(limit: usize) -> Arc<StdoutWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<WriterMsg>();
        let w = Arc::new(StdoutWriter {
            tx,
            queued: Default::default(),
            dropped: Default::default(),
            dropped_total: Default::default(),
            limit,
        });
        let me = w.clone();
        let spawned = std::thread::Builder::new()
            .name("esb-log-stdout".into())
            .stack_size(64 * 1024)
            .spawn(move || me.run(rx));
        if let Err(e) = spawned {
            eprintln!("esb-supervisor: cannot start the stdout log writer: {e}");
        }
        w
    }

    fn push(&self, text: &str) {
        let n = text.len() + 1;
        if self.queued.fetch_add(n, Ordering::SeqCst) + n > self.limit {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            self.dropped.fetch_add(1, Ordering::SeqCst);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut line = String::with_capacity(n);
        line.push_str(text);
        line.push('\n');
        if self.tx.send(WriterMsg::Line(line)).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
        }
    }

    async fn flush(&self, deadline: Instant) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(WriterMsg::Flush(tx)).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout_at(deadline.into(), rx).await,
            Ok(Ok(()))
        )
    }

    fn run(&self, rx: std::sync::mpsc::Receiver<WriterMsg>) {
        use std::io::Write;
        let stdout = std::io::stdout();
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Ok(first) = rx.recv() {
            // Let more lines arrive before writing: fewer writes, and senders do not have to
            // wake this thread for every line (it is not parked in recv meanwhile).
            if matches!(first, WriterMsg::Line(_)) {
                std::thread::sleep(STDOUT_LINGER);
            }
            let mut flushes = Vec::new();
            let mut next = Some(first);
            // Everything already queued goes out in one write.
            while let Some(msg) = next {
                match msg {
                    WriterMsg::Line(l) => {
                        self.queued.fetch_sub(l.len(), Ordering::SeqCst);
                        buf.extend_from_slice(l.as_bytes());
                    }
                    WriterMsg::Flush(done) => flushes.push(done),
                }
                next = if buf.len() < 1 << 20 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let dropped = self.dropped.swap(0, Ordering::SeqCst);
            if dropped > 0 {
                let notice =
                    format!("esb-supervisor: dropped {dropped} log lines (stdout too slow)\n");
                buf.extend_from_slice(notice.as_bytes());
            }
            let mut out = stdout.lock();
            let _ = out.write_all(&buf);
            let _ = out.flush();
            drop(out);
            buf.clear();
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
}

/// The level of a plain text line: awslambdaric's `[LEVEL]` prefix, a leading level word
/// (`ERROR: …`, tracing's `... INFO ...`), else `info`.
fn text_level(text: &str, _stream: &str) -> &'static str {
    let t = text.trim_start();
    let word = if let Some(rest) = t.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        // First or second word (tracing puts the timestamp first).
        let mut words = t.split_whitespace().take(2);
        let first = words.next().unwrap_or("");
        let second = words.next().unwrap_or("");
        if level_of(first.trim_end_matches(':')).is_some() {
            first.trim_end_matches(':')
        } else {
            second.trim_end_matches(':')
        }
    };
    level_of(word).unwrap_or("INFO")
}

/// Lambda's name of a level word (`TRACE` … `FATAL`; Python's `WARNING` and `CRITICAL`
/// too), upper-case as upstream ESB's records have it.
fn level_of(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_uppercase().as_str() {
        "TRACE" => "TRACE",
        "DEBUG" => "DEBUG",
        "INFO" => "INFO",
        "WARN" | "WARNING" => "WARN",
        "ERROR" => "ERROR",
        "CRITICAL" | "FATAL" => "FATAL",
        _ => return None,
    })
}

/// The level a telemetry frame type carries (`0xA55A00xx`: even = JSON, odd = text).
fn frame_level(frame_type: u32) -> Option<&'static str> {
    Some(match frame_type & 0xfe {
        0x0a => "DEBUG",
        0x0e => "INFO",
        0x12 => "WARN",
        0x16 => "ERROR",
        0x1a => "FATAL",
        _ => return None,
    })
}

/// Magic of telemetry log frames (high half of the frame type).
const FRAME_MAGIC: u32 = 0xA55A;
/// Largest frame message kept whole; longer ones are cut (their rest is read and dropped).
const MAX_FRAME: usize = 1 << 20;

/// Reads telemetry log frames (`type: u32 BE | length: u32 BE | timestamp µs: u64 BE |
/// message`) from the runtime's `_LAMBDA_TELEMETRY_LOG_FD` pipe until EOF.
pub async fn pump_frames(logs: Logs, fd: OwnedFd) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("esb-supervisor: cannot read the runtime's telemetry log pipe: {e}");
            return;
        }
    };
    let mut head = [0u8; 16];
    loop {
        if rx.read_exact(&mut head).await.is_err() {
            return;
        }
        let frame_type = u32::from_be_bytes(head[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(head[4..8].try_into().unwrap()) as usize;
        let timestamp_us = u64::from_be_bytes(head[8..16].try_into().unwrap());
        if frame_type >> 16 != FRAME_MAGIC {
            eprintln!(
                "esb-supervisor: bad telemetry log frame {frame_type:#x}; ignoring that pipe"
            );
            let mut sink = [0u8; 4096];
            while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        let mut message = vec![0u8; len.min(MAX_FRAME)];
        if rx.read_exact(&mut message).await.is_err() {
            return;
        }
        let mut rest = len - message.len();
        let mut sink = [0u8; 4096];
        while rest > 0 {
            match rx.read(&mut sink[..rest.min(4096)]).await {
                Ok(n) if n > 0 => rest -= n,
                _ => return,
            }
        }
        logs.function_frame(frame_type, timestamp_us, &message);
    }
}

/// Reads lines from one of the runtime's output pipes until EOF and records them.
pub async fn pump(logs: Logs, stream: &'static str, fd: OwnedFd) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("esb-supervisor: cannot read the runtime's {stream}: {e}");
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match rx.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n == 0 {
            if !buf.is_empty() {
                logs.function_line(stream, &buf);
            }
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            logs.function_line(stream, &buf[start..start + pos]);
            start += pos + 1;
        }
        buf.drain(..start);
        while buf.len() > MAX_LINE {
            logs.function_line(stream, &buf[..MAX_LINE]);
            buf.drain(..MAX_LINE);
        }
    }
}

/// Where the shipper posts: host, port and request target.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("VICTORIALOGS_URL={url:?}: only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("VICTORIALOGS_URL={url:?} has no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("VICTORIALOGS_URL={url:?}: bad IPv6 host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse()
                .map_err(|_| format!("VICTORIALOGS_URL={url:?}: bad port"))?,
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut path = path.trim_end_matches('/').to_string();
        if !path.ends_with("/insert/jsonline") {
            path.push_str("/insert/jsonline");
        }
        let query = query.map(str::to_string).unwrap_or_else(|| {
            "_stream_fields=container_name,job&_msg_field=_msg&_time_field=_time".to_string()
        });
        Ok(Target {
            host,
            port,
            authority: authority.to_string(),
            path: format!("{path}?{query}"),
        })
    }
}

enum PostError {
    /// Worth retrying (connection, timeout, 5xx, 408, 429).
    Failed(String),
    /// Refused for good (other 4xx).
    Rejected(String),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped: u64,
    /// Records taken for a batch that is not acknowledged yet.
    in_flight: usize,
}

struct Shipper {
    target: Target,
    queue: Mutex<Queue>,
    /// Records dropped since the start (buffer full, or refused by the endpoint).
    dropped_total: std::sync::atomic::AtomicU64,
    limit: usize,
    wake: Notify,
    progress: Notify,
    urgent: AtomicBool,
    /// The function's key pair: requests are signed with it when set (the box's log store
    /// stamps the records with the function the key belongs to).
    credentials: Option<crate::sign::Credentials>,
}

impl Shipper {
    fn push(&self, line: Vec<u8>) {
        {
            let mut q = self.queue.lock().unwrap();
            if q.bytes + line.len() > self.limit {
                q.dropped += 1;
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.bytes += line.len();
            q.items.push_back(line);
        }
        self.wake.notify_one();
    }

    async fn flush(&self, deadline: Instant) -> bool {
        self.urgent.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        loop {
            let progress = self.progress.notified();
            {
                let q = self.queue.lock().unwrap();
                if q.items.is_empty() && q.in_flight == 0 {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline.into(), progress)
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Takes the next batch (plus a notice of dropped records, if any).
    fn take_batch(&self) -> Option<(Vec<u8>, usize)> {
        let mut q = self.queue.lock().unwrap();
        if q.items.is_empty() && q.dropped == 0 {
            return None;
        }
        let mut body = Vec::new();
        if q.dropped > 0 {
            let notice = serde_json::json!({
                "_time": rfc3339(SystemTime::now()),
                "_msg": format!("esb-supervisor: dropped {} log records (log buffer full)", q.dropped),
                "level": "WARN",
                "stream": "platform",
            });
            body.extend_from_slice(notice.to_string().as_bytes());
            body.push(b'\n');
            q.dropped = 0;
        }
        let mut n = 0;
        while n < BATCH_RECORDS && body.len() < BATCH_BYTES {
            let Some(item) = q.items.pop_front() else {
                break;
            };
            q.bytes -= item.len();
            body.extend_from_slice(&item);
            n += 1;
        }
        q.in_flight = n;
        Some((body, n))
    }

    async fn run(self: Arc<Self>) {
        let mut conn: Option<SendRequest<Full<Bytes>>> = None;
        loop {
            let wake = self.wake.notified();
            let empty = {
                let q = self.queue.lock().unwrap();
                q.items.is_empty() && q.dropped == 0
            };
            if empty {
                wake.await;
                continue;
            }
            if !self.urgent.load(Ordering::SeqCst) {
                // Let a few more lines join the batch.
                let _ = tokio::time::timeout(LINGER, async {
                    loop {
                        let more = self.wake.notified();
                        if self.urgent.load(Ordering::SeqCst)
                            || self.queue.lock().unwrap().bytes >= BATCH_BYTES
                        {
                            return;
                        }
                        more.await;
                    }
                })
                .await;
            }
            let Some((body, n)) = self.take_batch() else {
                continue;
            };
            let body = Bytes::from(body);
            let mut backoff = Duration::from_millis(50);
            let mut failures = 0u32;
            let mut report_at = 1u32;
            loop {
                match self.post(&mut conn, body.clone()).await {
                    Ok(()) => {
                        if failures > 0 {
                            eprintln!("esb-supervisor: log shipping works again");
                        }
                        break;
                    }
                    Err(PostError::Rejected(e)) => {
                        // The endpoint refuses this batch for good (4xx): retrying cannot
                        // help and would block every later record.
                        eprintln!("esb-supervisor: log endpoint rejected a batch ({e}); dropped");
                        self.dropped_total.fetch_add(n as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(PostError::Failed(e)) => {
                        conn = None;
                        failures += 1;
                        if failures >= report_at {
                            report_at = failures + 30;
                            eprintln!(
                                "esb-supervisor: log shipping failed ({e}); retrying (attempt {failures})"
                            );
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            self.queue.lock().unwrap().in_flight = 0;
            self.progress.notify_waiters();
        }
    }

    async fn post(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        body: Bytes,
    ) -> Result<(), PostError> {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = Some(self.connect().await.map_err(PostError::Failed)?);
        }
        let sender = conn.as_mut().expect("connected above");
        let failed = |e: String| PostError::Failed(e);
        sender.ready().await.map_err(|e| failed(e.to_string()))?;
        let mut req = hyper::Request::post(self.target.path.as_str())
            .header(hyper::header::HOST, self.target.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/stream+json");
        if let Some(c) = &self.credentials {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            for (name, value) in
                crate::sign::sign_post(c, &self.target.authority, &self.target.path, &body, now)
            {
                req = req.header(name, value);
            }
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .map_err(|_| failed("timed out".to_string()))?
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() && status != 408 && status != 429 {
            Err(PostError::Rejected(format!("endpoint answered {status}")))
        } else {
            Err(PostError::Failed(format!("endpoint answered {status}")))
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let addr: Result<SocketAddr, _> = match self.target.host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, self.target.port)),
            Err(_) => Err(()),
        };
        let connect = async {
            match addr {
                Ok(a) => tokio::net::TcpStream::connect(a).await,
                Err(()) => {
                    tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port))
                        .await
                }
            }
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect {}: {e}", self.target.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://10.88.0.1:9428").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.88.0.1", 9428));
        assert_eq!(
            t.path,
            "/insert/jsonline?_stream_fields=container_name,job&_msg_field=_msg&_time_field=_time"
        );
        let t = Target::parse("http://logs/vl/insert/jsonline?_stream_fields=a").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("logs", 80));
        assert_eq!(t.path, "/vl/insert/jsonline?_stream_fields=a");
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("http://x:port").is_err());
    }

    #[test]
    fn levels_from_frame_types() {
        assert_eq!(frame_level(0xA55A_0003), None);
        assert_eq!(frame_level(0xA55A_000F), Some("INFO"));
        assert_eq!(frame_level(0xA55A_0016), Some("ERROR"));
        assert_eq!(frame_level(0xA55A_0017), Some("ERROR"));
        assert_eq!(frame_level(0xA55A_001B), Some("FATAL"));
    }

    #[test]
    fn levels_from_text() {
        assert_eq!(
            text_level("[ERROR]\t2024-01-01T00:00:00.000Z\tid\tboom", "stdout"),
            "ERROR"
        );
        assert_eq!(text_level("[WARNING] x", "stdout"), "WARN");
        assert_eq!(
            text_level("2024-01-01T00:00:00Z  INFO handler: hi", "stdout"),
            "INFO"
        );
        assert_eq!(text_level("ERROR: bad", "stderr"), "ERROR");
        assert_eq!(text_level("hello", "stdout"), "INFO");
    }

    #[test]
    fn json_lines_keep_their_fields() {
        let logs = Logs::stdout("f", "$LATEST", true, 1 << 20);
        let ctx = LogCtx {
            request_id: "r".into(),
            trace_id: "t".into(),
        };
        let rec = logs.record(
            r#"{"message":"hi","level":"WARNING","order":7}"#,
            "stdout",
            Some(&ctx),
            true,
            vec![],
        );
        assert_eq!(rec["_msg"], "hi");
        assert_eq!(rec["level"], "WARN");
        assert_eq!(rec["order"], 7);
        assert_eq!(rec["aws_request_id"], "r");
        assert_eq!(rec["trace_id"], "t");
        assert_eq!(rec["function_name"], "f");
        assert_eq!(rec["container_name"], "f");
        assert_eq!(rec["job"], "lambda");
        assert_eq!(rec["log_group"], "/aws/lambda/f");
        let stream = rec["log_stream"].as_str().unwrap();
        assert!(
            stream.contains("/[$LATEST]") && stream.len() == 10 + 1 + 9 + 32,
            "{stream}"
        );
    }
}
