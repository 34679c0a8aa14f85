//! The invocation state machine and the runtime process it drives.
//!
//! One invocation at a time (Lambda's model). The runtime process moves through
//! `Starting` (spawned, init running) → `Ready` (it called `/next` once) and, when it
//! fails, `Dying` (killed or init error reported, exit pending) → restarted or `Failed`
//! (init failed with nobody waiting: restarted by the next invocation).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::logs::{self, LogCtx, Logs};
use crate::util;

/// One invocation as handed to the runtime by `/runtime/invocation/next`.
#[derive(Debug)]
pub struct Invocation {
    /// Lambda request id (a UUID).
    pub id: String,
    /// X-Ray trace header (Lambda-Runtime-Trace-Id).
    pub trace_id: String,
    /// Deadline in epoch milliseconds (Lambda-Runtime-Deadline-Ms), set when the event is
    /// handed to the runtime.
    deadline_ms: AtomicU64,
    /// Client context JSON (decoded from X-Amz-Client-Context), if any.
    pub client_context: Option<String>,
    /// Cognito identity JSON, if any.
    pub cognito_identity: Option<String>,
    /// The event.
    pub body: Bytes,
    /// Return the last 4 KB of the invocation's log with the outcome (X-Amz-Log-Type: Tail).
    pub log_tail: bool,
    timeout: Duration,
    /// Signalled when the deadline moves (the event reached the runtime).
    redeadline: Notify,
    log_ctx: Arc<LogCtx>,
}

impl Invocation {
    /// A new invocation accepted now, with the function's timeout.
    pub fn new(
        id: String,
        trace_id: String,
        timeout: Duration,
        client_context: Option<String>,
        cognito_identity: Option<String>,
        body: Bytes,
    ) -> Invocation {
        let now = SystemTime::now();
        let log_ctx = Arc::new(LogCtx {
            request_id: id.clone(),
            trace_id: trace_id.clone(),
        });
        Invocation {
            id,
            trace_id,
            deadline_ms: AtomicU64::new(util::epoch_ms(now + timeout)),
            client_context,
            cognito_identity,
            body,
            log_tail: false,
            timeout,
            redeadline: Notify::new(),
            log_ctx,
        }
    }

    /// Lambda-Runtime-Deadline-Ms: epoch milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::SeqCst)
    }
}

/// An error reported for an invocation (function error, init error, timeout, crash).
#[derive(Debug, Clone)]
pub struct FnError {
    /// `errorType` (also used in REPORT lines).
    pub error_type: String,
    /// The JSON error document returned to the caller.
    pub body: Bytes,
    /// `X-Amz-Function-Error: Handled` instead of `Unhandled`.
    pub handled: bool,
}

impl FnError {
    /// An error document `{"errorType", "errorMessage"}` built by the supervisor.
    pub fn new(error_type: &str, message: String) -> FnError {
        let body = json!({ "errorType": error_type, "errorMessage": message }).to_string();
        FnError {
            error_type: error_type.to_string(),
            body: Bytes::from(body),
            handled: false,
        }
    }

    /// An error document posted by the runtime (kept as is when it is JSON).
    pub fn from_runtime(error_type: Option<&str>, body: Bytes) -> FnError {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let doc_type = parsed
            .as_ref()
            .and_then(|v| v.get("errorType"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let handled = error_type.is_some_and(|t| t.eq_ignore_ascii_case("Handled"));
        let error_type = doc_type
            .or_else(|| error_type.map(str::to_string))
            .unwrap_or_else(|| "Unhandled".to_string());
        match parsed {
            Some(serde_json::Value::Object(_)) => FnError {
                error_type,
                body,
                handled,
            },
            _ => {
                let mut e = FnError::new(&error_type, String::from_utf8_lossy(&body).into_owned());
                e.handled = handled;
                e
            }
        }
    }
}

/// What the caller of an invocation gets.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The function's result.
    Response(Bytes),
    /// An error, with `X-Amz-Function-Error`.
    Error(FnError),
}

/// What the caller gets: the outcome, and the log tail when it was asked for.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The function's result or error.
    pub outcome: Outcome,
    /// The last 4 KB of the invocation's log (with END and REPORT), if asked for.
    pub log_tail: Option<String>,
}

/// Why an invocation was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another invocation is running (one at a time per worker).
    Busy,
    /// The supervisor is shutting down.
    ShuttingDown,
}

/// A Runtime API request that cannot be honoured: HTTP status, errorType, message.
#[derive(Debug)]
pub struct ApiError(pub u16, pub &'static str, pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No runtime process (not started yet, or stopped for shutdown / backoff).
    Stopped,
    /// Spawned, init running.
    Starting,
    /// Init done: the runtime called `/next`.
    Ready,
    /// Killed after a timeout, restarted once it is gone.
    Killed,
    /// Reported an init error; exit pending.
    InitFailed,
    /// Init failed and nobody waits: the next invocation restarts it.
    Failed,
}

struct Inflight {
    inv: Arc<Invocation>,
    accepted: Instant,
    delivered: Option<Instant>,
    /// When it times out: the function's timeout after delivery; before it, the init
    /// timeout plus the function's timeout after acceptance.
    deadline: Instant,
    /// The caller waiting for the outcome (the :8080 request), answered first; `None` when
    /// it wants the log tail (then [`Supervisor::complete`] answers it after REPORT).
    caller: Option<oneshot::Sender<Answer>>,
    /// The task that enforces the deadline and writes END / REPORT.
    tx: oneshot::Sender<Done>,
}

struct Done {
    outcome: Outcome,
    duration: Duration,
    init_duration: Option<Duration>,
    status: Option<&'static str>,
}

struct State {
    phase: Phase,
    pid: Option<i32>,
    started_at: Instant,
    /// Init duration not yet reported in a REPORT line.
    init_duration: Option<Duration>,
    /// Init error not yet returned to an invocation.
    init_error: Option<FnError>,
    inflight: Option<Inflight>,
    waiter: Option<oneshot::Sender<Arc<Invocation>>>,
    answered: VecDeque<String>,
    peak_rss: u64,
    /// `/proc/<runtime pid>/status`, kept open for REPORT's max memory.
    proc_status: Option<std::fs::File>,
    pumps: Vec<JoinHandle<()>>,
    shutting_down: bool,
}

/// The supervisor: owns the runtime process and the invocation in flight.
pub struct Supervisor {
    cfg: Arc<Config>,
    logs: Logs,
    runtime_api: SocketAddr,
    arn: String,
    st: Mutex<State>,
    exited: Notify,
    idle: Notify,
}

const MAX_ANSWERED: usize = 16;

impl Supervisor {
    /// A supervisor for `cfg` whose runtime reaches the Runtime API at `runtime_api`.
    pub fn new(cfg: Arc<Config>, logs: Logs, runtime_api: SocketAddr) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            arn: cfg.function_arn(),
            cfg,
            logs,
            runtime_api,
            st: Mutex::new(State {
                phase: Phase::Stopped,
                pid: None,
                started_at: Instant::now(),
                init_duration: None,
                init_error: None,
                inflight: None,
                waiter: None,
                answered: VecDeque::new(),
                peak_rss: 0,
                proc_status: None,
                pumps: Vec::new(),
                shutting_down: false,
            }),
            exited: Notify::new(),
            idle: Notify::new(),
        })
    }

    /// The configuration.
    /// Log records dropped so far because the log buffer was full.
    pub fn logs_dropped(&self) -> u64 {
        self.logs.dropped_total()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The invoked function ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the runtime (init at start, so a warm worker has paid it) and the reaper.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
        }
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.reap();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        let mut st = self.lock();
        self.spawn_runtime(&mut st);
        Ok(())
    }

    /// Reaps every exited child (the runtime and orphans adopted as subreaper / PID 1).
    fn reap(self: &Arc<Self>) {
        let mut st = self.lock();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: plain waitpid on any child, non-blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if st.pid == Some(pid) {
                self.on_exit(&mut st, status);
            }
        }
    }

    fn spawn_runtime(self: &Arc<Self>, st: &mut State) {
        st.started_at = Instant::now();
        st.init_duration = None;
        st.peak_rss = 0;
        match spawn_process(&self.cfg, self.runtime_api) {
            Ok((pid, out, err, telemetry)) => {
                let version = if self.cfg.runtime.is_empty() {
                    "custom"
                } else {
                    self.cfg.runtime.as_str()
                };
                self.logs.platform_plain(
                    &format!("INIT_START Runtime Version: {version}"),
                    vec![("type", "platform.initStart".into())],
                );
                st.pid = Some(pid);
                st.proc_status = std::fs::File::open(format!("/proc/{pid}/status")).ok();
                st.phase = Phase::Starting;
                st.pumps.retain(|h| !h.is_finished());
                st.pumps
                    .push(tokio::spawn(logs::pump(self.logs.clone(), "stdout", out)));
                st.pumps
                    .push(tokio::spawn(logs::pump(self.logs.clone(), "stderr", err)));
                if let Some(t) = telemetry {
                    st.pumps
                        .push(tokio::spawn(logs::pump_frames(self.logs.clone(), t)));
                }
            }
            Err(e) => {
                let cmd = self
                    .cfg
                    .command
                    .first()
                    .map(|c| c.to_string_lossy().into_owned());
                eprintln!("esb-supervisor: cannot start the runtime {cmd:?}: {e}");
                st.phase = Phase::Failed;
                let mut msg = format!(
                    "Couldn't start the runtime {}: {e}",
                    cmd.unwrap_or_default()
                );
                if let Some(f) = &st.inflight {
                    msg = format!("RequestId: {} Error: {msg}", f.inv.id);
                }
                let err = FnError::new("Runtime.InvalidEntrypoint", msg);
                if st.inflight.is_some() {
                    self.answer(st, Outcome::Error(err), Some("error"));
                } else {
                    st.init_error = Some(err);
                }
            }
        }
    }

    fn on_exit(self: &Arc<Self>, st: &mut State, status: libc::c_int) {
        let text = util::describe_wait_status(status);
        let prev = st.phase;
        let lived = st.started_at.elapsed();
        st.pid = None;
        st.proc_status = None;
        st.waiter = None;
        self.exited.notify_waiters();
        if st.shutting_down {
            st.phase = Phase::Stopped;
            self.answer_exit(st, &text);
            return;
        }
        if prev == Phase::Starting {
            self.init_report(lived, "Runtime.ExitError");
        } else if prev == Phase::Ready && st.inflight.is_none() {
            self.logs.platform_plain(
                &format!("esb-supervisor: the runtime exited between invocations ({text}); restarting it"),
                vec![("type", "platform.runtimeExit".into())],
            );
        }
        match prev {
            Phase::Starting | Phase::Ready => {
                let delivered = st.inflight.as_ref().map(|f| f.delivered.is_some());
                match delivered {
                    // It died with the invocation in hand (or during the init that an
                    // invocation was waiting for): that invocation gets the exit error.
                    Some(true) => self.answer_exit(st, &text),
                    Some(false) if prev == Phase::Starting => self.answer_exit(st, &text),
                    // An invocation that arrived after the last one was answered but
                    // before the runtime came back to /next waits for the restart.
                    Some(false) => {}
                    None if prev == Phase::Starting => {
                        let msg = format!("Runtime exited with error: {text}");
                        st.init_error = Some(FnError::new("Runtime.ExitError", msg));
                    }
                    None => {}
                }
                if prev == Phase::Ready {
                    if lived >= Duration::from_secs(1) || st.inflight.is_some() {
                        self.spawn_runtime(st);
                    } else {
                        // Crashing right after init: back off a little before the restart
                        // (an invocation arriving meanwhile starts it at once).
                        st.phase = Phase::Stopped;
                        let me = self.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let mut st = me.lock();
                            if st.phase == Phase::Stopped && !st.shutting_down {
                                me.spawn_runtime(&mut st);
                            }
                        });
                    }
                } else {
                    st.phase = Phase::Failed;
                }
            }
            Phase::Killed | Phase::InitFailed => {
                if st.inflight.is_some() || prev == Phase::Killed {
                    self.spawn_runtime(st);
                } else {
                    st.phase = Phase::Failed;
                }
            }
            Phase::Stopped | Phase::Failed => {}
        }
    }

    /// INIT_REPORT for a failed init, like Lambda's.
    fn init_report(&self, took: Duration, error_type: &str) {
        let ms = took.as_secs_f64() * 1000.0;
        self.logs.platform_plain(
            &format!(
                "INIT_REPORT Init Duration: {ms:.2} ms\tPhase: init\tStatus: error\tError Type: {error_type}"
            ),
            vec![
                ("type", "platform.initReport".into()),
                ("init_duration_ms", json!((ms * 100.0).round() / 100.0)),
                ("status", json!("error")),
                ("error_type", json!(error_type)),
            ],
        );
    }

    /// Answers the invocation in flight (if any) with Runtime.ExitError.
    fn answer_exit(&self, st: &mut State, status_text: &str) {
        if let Some(f) = &st.inflight {
            let msg = format!(
                "RequestId: {} Error: Runtime exited with error: {status_text}",
                f.inv.id
            );
            self.answer(
                st,
                Outcome::Error(FnError::new("Runtime.ExitError", msg)),
                Some("error"),
            );
        }
    }

    /// Completes the invocation in flight with `outcome`.
    fn answer(&self, st: &mut State, outcome: Outcome, status: Option<&'static str>) {
        let Some(f) = st.inflight.take() else { return };
        if st.answered.len() >= MAX_ANSWERED {
            st.answered.pop_front();
        }
        st.answered.push_back(f.inv.id.clone());
        let now = Instant::now();
        let duration = now - f.delivered.unwrap_or(f.accepted);
        let init_duration = st.init_duration.take();
        if let Some(caller) = f.caller {
            let _ = caller.send(Answer {
                outcome: outcome.clone(),
                log_tail: None,
            });
        }
        let _ = f.tx.send(Done {
            outcome,
            duration,
            init_duration,
            status,
        });
        self.idle.notify_waiters();
    }

    fn try_deliver(&self, st: &mut State) {
        let Some(f) = st.inflight.as_mut() else {
            return;
        };
        if f.delivered.is_some() {
            return;
        }
        let Some(w) = st.waiter.take() else { return };
        if w.send(f.inv.clone()).is_ok() {
            mark_delivered(f);
        }
    }

    /// Accepts an invocation; the returned receiver yields its outcome. The caller must
    /// then spawn [`Supervisor::complete`] for it (which enforces the timeout and writes
    /// END / REPORT), and may drop the receiver (Event invocations).
    pub fn accept(
        self: &Arc<Self>,
        inv: Invocation,
    ) -> Result<(Accepted, oneshot::Receiver<Answer>), Refusal> {
        let inv = Arc::new(inv);
        let (tx, rx) = oneshot::channel();
        let (caller, outcome) = oneshot::channel();
        let mut st = self.lock();
        if st.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        if st.inflight.is_some() {
            return Err(Refusal::Busy);
        }
        self.logs.set_context(inv.log_ctx.clone());
        let (caller, tail_caller) = if inv.log_tail {
            self.logs.start_tail(&inv.id);
            (None, Some(caller))
        } else {
            (Some(caller), None)
        };
        let now = Instant::now();
        st.inflight = Some(Inflight {
            inv: inv.clone(),
            accepted: now,
            delivered: None,
            deadline: now + self.cfg.init_timeout + inv.timeout,
            caller,
            tx,
        });
        match st.phase {
            Phase::Ready | Phase::Starting => self.try_deliver(&mut st),
            Phase::Failed | Phase::Stopped => {
                if let Some(err) = st.init_error.take() {
                    self.answer(&mut st, Outcome::Error(err), Some("error"));
                } else {
                    self.spawn_runtime(&mut st);
                }
            }
            Phase::Killed | Phase::InitFailed => {}
        }
        Ok((
            Accepted {
                inv,
                rx,
                caller: tail_caller,
            },
            outcome,
        ))
    }

    /// Waits for the outcome of an accepted invocation, enforcing its deadline (a timed-out
    /// invocation is answered and the runtime's process tree killed and restarted), then
    /// writes END and REPORT.
    pub async fn complete(self: Arc<Self>, acc: Accepted) {
        let Accepted {
            inv,
            mut rx,
            caller,
        } = acc;
        // Written here rather than in `accept`: this task runs after the event has gone
        // to the runtime, so the line is off the invocation's critical path.
        self.logs.platform(
            &inv.log_ctx,
            &format!(
                "START RequestId: {} Version: {}",
                inv.id, self.cfg.function_version
            ),
            vec![("type", "platform.start".into())],
        );
        let mut done = None;
        loop {
            let deadline = match &self.lock().inflight {
                Some(f) if f.inv.id == inv.id => f.deadline,
                _ => break, // answered: the outcome is in `rx`
            };
            tokio::select! {
                r = &mut rx => {
                    done = Some(r.ok());
                    break;
                }
                _ = inv.redeadline.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let mut st = self.lock();
                    let due = st
                        .inflight
                        .as_ref()
                        .is_some_and(|f| f.inv.id == inv.id && Instant::now() >= f.deadline);
                    if due {
                        if let Some(pid) = st.pid {
                            kill_group(pid, libc::SIGKILL);
                            st.phase = Phase::Killed;
                        }
                        let secs = self.cfg.timeout.as_secs_f64();
                        let msg = format!(
                            "RequestId: {} Error: Task timed out after {secs:.2} seconds",
                            inv.id
                        );
                        let err = FnError::new("Sandbox.Timedout", msg);
                        self.answer(&mut st, Outcome::Error(err), Some("timeout"));
                    }
                }
            }
        }
        let done = match done {
            Some(d) => d,
            None => rx.await.ok(),
        };
        let done = done.unwrap_or_else(|| Done {
            outcome: Outcome::Error(FnError::new("Runtime.Unknown", "invocation lost".into())),
            duration: Duration::ZERO,
            init_duration: None,
            status: Some("error"),
        });
        let error_type = match &done.outcome {
            Outcome::Error(e) if done.status.is_some() => Some(e.error_type.clone()),
            _ => None,
        };
        if caller.is_some() {
            // The tail should hold what the function wrote before answering: give the
            // output pipes a moment to be read.
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            // Let the caller's response (and the runtime's 202) go out before the END /
            // REPORT bookkeeping.
            tokio::task::yield_now().await;
        }
        let outcome = done.outcome.clone();
        self.report(
            &inv,
            done.duration,
            done.init_duration,
            done.status,
            error_type,
        );
        if let Some(caller) = caller {
            let log_tail = self.logs.take_tail(&inv.id).map(|t| {
                let mut cut = t.len().saturating_sub(logs::TAIL_BYTES);
                while !t.is_char_boundary(cut) {
                    cut += 1;
                }
                t[cut..].to_string()
            });
            let _ = caller.send(Answer { outcome, log_tail });
        }
    }

    fn report(
        &self,
        inv: &Invocation,
        duration: Duration,
        init: Option<Duration>,
        status: Option<&str>,
        error_type: Option<String>,
    ) {
        let peak = {
            let mut st = self.lock();
            if let Some(p) = st.proc_status.as_ref().and_then(util::peak_rss_bytes) {
                st.peak_rss = st.peak_rss.max(p);
            }
            st.peak_rss
        };
        let ms = duration.as_secs_f64() * 1000.0;
        let billed = ms.ceil().max(1.0) as u64;
        let max_mb = peak.div_ceil(1024 * 1024);
        let mut line = format!(
            "REPORT RequestId: {}\tDuration: {ms:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB\tMax Memory Used: {max_mb} MB",
            inv.id, self.cfg.memory_mb
        );
        let mut fields = vec![
            ("type", "platform.report".into()),
            ("duration_ms", json!((ms * 100.0).round() / 100.0)),
            ("billed_duration_ms", json!(billed)),
            ("memory_size_mb", json!(self.cfg.memory_mb)),
            ("max_memory_used_mb", json!(max_mb)),
        ];
        if let Some(init) = init {
            let init_ms = init.as_secs_f64() * 1000.0;
            line.push_str(&format!("\tInit Duration: {init_ms:.2} ms"));
            fields.push(("init_duration_ms", json!((init_ms * 100.0).round() / 100.0)));
        }
        if let Some(s) = status {
            line.push_str(&format!("\tStatus: {s}"));
            fields.push(("status", json!(s)));
        }
        if let Some(t) = error_type {
            line.push_str(&format!("\tError Type: {t}"));
            fields.push(("error_type", json!(t)));
        }
        self.logs.platform_many(
            &inv.log_ctx,
            vec![
                (
                    format!("END RequestId: {}", inv.id),
                    vec![("type", "platform.end".into())],
                ),
                (line, fields),
            ],
        );
    }

    /// `GET /runtime/invocation/next`: the next invocation (long poll).
    pub async fn next(self: &Arc<Self>) -> Result<Arc<Invocation>, ApiError> {
        let rx = {
            let mut st = self.lock();
            match st.phase {
                Phase::Starting => {
                    st.phase = Phase::Ready;
                    st.init_duration = Some(st.started_at.elapsed());
                }
                Phase::Ready => {}
                _ => {
                    return Err(invalid_state(
                        "the runtime is not running (init failed or killed)",
                    ))
                }
            }
            if let Some(f) = st.inflight.as_mut() {
                if f.delivered.is_some() {
                    return Err(invalid_state(&format!(
                        "invocation {} is still running: post its response or error first",
                        f.inv.id
                    )));
                }
                mark_delivered(f);
                return Ok(f.inv.clone());
            }
            let (tx, rx) = oneshot::channel();
            st.waiter = Some(tx);
            rx
        };
        rx.await.map_err(|_| {
            ApiError(
                409,
                "Superseded",
                "another /next call replaced this one".into(),
            )
        })
    }

    fn check_id(&self, st: &State, id: &str) -> Result<(), ApiError> {
        match &st.inflight {
            Some(f) if f.inv.id == id && f.delivered.is_some() => Ok(()),
            _ if st.answered.iter().any(|a| a == id) => Err(invalid_state(&format!(
                "invocation {id} has already been answered or has timed out"
            ))),
            _ => Err(ApiError(
                400,
                "InvalidRequestID",
                format!("Invalid request ID: {id}"),
            )),
        }
    }

    /// `POST /runtime/invocation/{id}/response`.
    pub fn respond(&self, id: &str, body: Bytes) -> Result<(), ApiError> {
        let mut st = self.lock();
        self.check_id(&st, id)?;
        self.answer(&mut st, Outcome::Response(body), None);
        Ok(())
    }

    /// `POST /runtime/invocation/{id}/error`.
    pub fn fail(&self, id: &str, error: FnError) -> Result<(), ApiError> {
        let mut st = self.lock();
        self.check_id(&st, id)?;
        self.answer(&mut st, Outcome::Error(error), None);
        Ok(())
    }

    /// A response over the payload limit: the invocation gets Function.ResponseSizeTooLarge.
    pub fn response_too_large(&self, id: &str, limit: usize) -> ApiError {
        let mut st = self.lock();
        if self.check_id(&st, id).is_ok() {
            let msg = format!(
                "Response payload size exceeded maximum allowed payload size ({limit} bytes)."
            );
            let err = FnError::new("Function.ResponseSizeTooLarge", msg);
            self.answer(&mut st, Outcome::Error(err), None);
        }
        ApiError(
            413,
            "RequestEntityTooLarge",
            format!("Exceeded maximum allowed payload size ({limit} bytes)."),
        )
    }

    /// `POST /runtime/init/error`: init failed; the error goes to the first invocation.
    pub fn init_error(self: &Arc<Self>, error: FnError) -> Result<(), ApiError> {
        let mut st = self.lock();
        if st.phase != Phase::Starting {
            return Err(invalid_state("init has already completed"));
        }
        st.phase = Phase::InitFailed;
        self.init_report(st.started_at.elapsed(), &error.error_type);
        let waiting = st.inflight.as_ref().is_some_and(|f| f.delivered.is_none());
        if waiting {
            self.answer(&mut st, Outcome::Error(error), Some("error"));
        } else {
            st.init_error = Some(error);
        }
        // Lambda resets the sandbox after an init error: give the runtime a moment to
        // exit on its own (awslambdaric does), then kill what is left.
        if let Some(pid) = st.pid {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let st = me.lock();
                if st.pid == Some(pid) {
                    kill_group(pid, libc::SIGKILL);
                }
            });
        }
        Ok(())
    }

    /// Readiness for `GET /health`: `ready`, `initializing`, `failed`, `busy`, `stopped`.
    pub fn status(&self) -> &'static str {
        let st = self.lock();
        if st.shutting_down {
            "stopping"
        } else if st.inflight.is_some() {
            "busy"
        } else {
            match st.phase {
                Phase::Ready => "ready",
                Phase::Starting | Phase::Killed | Phase::InitFailed => "initializing",
                Phase::Failed => "failed",
                Phase::Stopped => "stopped",
            }
        }
    }

    /// SIGTERM handling: refuse new invocations, let the running one finish within the
    /// grace period (else answer it with an error), stop the runtime, drain its output and
    /// flush the logs.
    pub async fn shutdown(self: &Arc<Self>) {
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        self.lock().shutting_down = true;
        loop {
            let idle = self.idle.notified();
            if self.lock().inflight.is_none() {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), idle)
                .await
                .is_err()
            {
                let mut st = self.lock();
                if let Some(f) = &st.inflight {
                    let msg = format!(
                        "RequestId: {} Error: the worker is shutting down; invocation aborted",
                        f.inv.id
                    );
                    let err = FnError::new("Sandbox.Shutdown", msg);
                    self.answer(&mut st, Outcome::Error(err), Some("error"));
                }
                break;
            }
        }
        for (sig, wait) in [(libc::SIGTERM, 500), (libc::SIGKILL, 2000)] {
            let until = Instant::now() + Duration::from_millis(wait);
            loop {
                let exited = self.exited.notified();
                let pid = {
                    let st = self.lock();
                    st.pid
                };
                let Some(pid) = pid else { break };
                kill_group(pid, sig);
                self.reap();
                if self.lock().pid.is_none() {
                    break;
                }
                if tokio::time::timeout_at(until.into(), exited).await.is_err() {
                    break;
                }
            }
        }
        let pumps = std::mem::take(&mut self.lock().pumps);
        let drain_until = Instant::now() + Duration::from_secs(1);
        for p in pumps {
            let _ = tokio::time::timeout_at(drain_until.into(), p).await;
        }
        let flushed = self
            .logs
            .flush(Instant::now() + self.cfg.log_flush_timeout)
            .await;
        if !flushed {
            eprintln!("esb-supervisor: could not ship every log record before exit");
        }
    }
}

/// An accepted invocation waiting for its outcome.
pub struct Accepted {
    inv: Arc<Invocation>,
    rx: oneshot::Receiver<Done>,
    caller: Option<oneshot::Sender<Answer>>,
}

impl Accepted {
    /// The invocation.
    pub fn invocation(&self) -> &Invocation {
        &self.inv
    }
}

/// The event is in the runtime's hands: the function's timeout starts now.
fn mark_delivered(f: &mut Inflight) {
    let now = Instant::now();
    f.delivered = Some(now);
    f.deadline = now + f.inv.timeout;
    f.inv.deadline_ms.store(
        util::epoch_ms(SystemTime::now() + f.inv.timeout),
        Ordering::SeqCst,
    );
    f.inv.redeadline.notify_one();
}

fn invalid_state(msg: &str) -> ApiError {
    ApiError(
        403,
        "InvalidStateTransition",
        format!("State transition is not allowed: {msg}"),
    )
}

/// Sends `sig` to the runtime's process group (and the process itself).
fn kill_group(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned (and its process group).
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// Spawns the runtime in its own process group with the Lambda environment; returns its
/// pid and its stdout / stderr pipes. The child is reaped by [`Supervisor::reap`].
/// A started runtime process: pid, stdout, stderr, and the telemetry log pipe if any.
type Spawned = (i32, OwnedFd, OwnedFd, Option<OwnedFd>);

fn spawn_process(cfg: &Config, runtime_api: SocketAddr) -> io::Result<Spawned> {
    let program = cfg
        .command
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no runtime command"))?;
    let mut cmd = Command::new(program);
    cmd.args(&cfg.command[1..])
        .envs(cfg.runtime_env(runtime_api))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if cfg.task_root.is_dir() {
        cmd.current_dir(&cfg.task_root);
    }
    // Managed runtimes (awslambdaric, the Node client) send their log records framed on
    // the descriptor named by _LAMBDA_TELEMETRY_LOG_FD, as on Lambda: a multi-line record
    // (a traceback) stays one record. Custom runtimes (provided.*) do not get it, as on
    // Lambda.
    let telemetry = if cfg.runtime.is_empty() || cfg.runtime.starts_with("provided") {
        None
    } else {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two descriptors, which we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        cmd.env("_LAMBDA_TELEMETRY_LOG_FD", fds[1].to_string());
        Some((r, w))
    };
    let telemetry_w = telemetry.as_ref().map(|(_, w)| {
        use std::os::fd::AsRawFd;
        w.as_raw_fd()
    });
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(w) = telemetry_w {
                // Inherit the telemetry pipe's write end across exec.
                if libc::fcntl(w, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Die with the supervisor even when it is not PID 1 (tests, local runs).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    // Our copy of the write end goes away here, so the read end sees EOF with the runtime.
    let telemetry = telemetry.map(|(r, _w)| r);
    Ok((
        child.id() as i32,
        OwnedFd::from(out),
        OwnedFd::from(err),
        telemetry,
    ))
}
