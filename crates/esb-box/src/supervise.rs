//! Supervised child processes, shared by the box (control) and a compute node: how a
//! component is started (own session, parent-death signal, pid file with start time, log
//! rotated at start), when it counts as ready, and its restart with backoff. Each change
//! is recorded in the status file ([`crate::status`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::daemon;
use crate::layout::{component_pid_file, log_file};
use crate::status::{update, update_component, ComponentStatus, Shared};
use crate::{Error, Result};

/// How a component shows it is ready.
#[derive(Debug, Clone)]
pub enum Ready {
    /// Accepts TCP connections.
    Tcp(SocketAddr),
    /// Accepts connections on a unix socket.
    Unix(PathBuf),
    /// containerd answers its version call.
    Containerd(PathBuf),
    /// Has written its own pid file.
    PidFile(PathBuf),
}

/// Whether process `pid` holds a socket listening on TCP `port` (so a ready port is the
/// component's own, not another program's that took the port meanwhile).
fn listens_on(pid: i32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; st 0A is LISTEN; inode is field 9.
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}

impl Ready {
    async fn check(&self, pid: i32) -> bool {
        match self {
            Ready::Tcp(a) => {
                tokio::net::TcpStream::connect(a).await.is_ok() && listens_on(pid, a.port())
            }
            Ready::Unix(p) => tokio::net::UnixStream::connect(p).await.is_ok(),
            Ready::Containerd(p) => crate::containerd::answers(p).await,
            Ready::PidFile(p) => daemon::read_live(p).is_some_and(|t| t.pid == pid),
        }
    }
}

/// A child process the box runs.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The component's name (status, pid file, log file).
    pub name: &'static str,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment added to the box's.
    pub env: Vec<(String, String)>,
    /// When it counts as ready.
    pub ready: Ready,
    /// How long it may take to be ready.
    pub ready_timeout: Duration,
    /// How long it may take to stop after SIGTERM (then SIGKILL).
    pub stop_grace: Duration,
}

impl ChildSpec {
    /// A component with the usual timeouts (ready in 60 s, 15 s to stop).
    pub fn new(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        ready: Ready,
    ) -> ChildSpec {
        ChildSpec {
            name,
            program,
            args,
            env,
            ready,
            ready_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(15),
        }
    }
}

/// A component's log is rotated when it (re)starts past this size (one old file kept).
const LOG_ROTATE_BYTES: u64 = 16 << 20;

fn spawn_child(spec: &ChildSpec, state: &Path) -> Result<tokio::process::Child> {
    let log = log_file(state, spec.name);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = std::fs::rename(&log, log.with_extension("log.1"));
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| Error::file("open", &log, e))?;
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(false);
    let parent = std::process::id() as i32;
    // containerd keeps the usual umask: its snapshots hold the workers' files, which keep
    // their layers' modes (the box's own umask is 077, see `crate::perms`).
    let umask = (spec.name == "containerd").then_some(crate::perms::CONTAINERD_UMASK);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            libc::setsid();
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawn_error = |source| Error::Spawn {
        component: spec.name.into(),
        program: spec.program.clone(),
        source,
    };
    let child = cmd.spawn().map_err(spawn_error)?;
    let pid = child
        .id()
        .ok_or_else(|| spawn_error(std::io::ErrorKind::NotFound.into()))? as i32;
    let st = daemon::start_time(pid).unwrap_or(0);
    let pf = component_pid_file(state, spec.name);
    let tmp = pf.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {st}\n"))?;
    std::fs::rename(&tmp, &pf)?;
    Ok(child)
}

async fn stop_child(child: &mut tokio::process::Child, grace: Duration) -> String {
    if let Some(pid) = child.id() {
        daemon::signal_pid(pid as i32, libc::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(st)) => st.to_string(),
        _ => {
            let _ = child.start_kill();
            child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default()
        }
    }
}

/// Runs one component: start, wait ready, then restart with backoff whenever it exits,
/// until `stop` turns true. The first start's outcome goes to `first`.
pub async fn supervise(
    spec: ChildSpec,
    state: PathBuf,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
    first: tokio::sync::oneshot::Sender<Result<()>>,
) {
    let mut first = Some(first);
    let mut backoff = Duration::from_secs(1);
    let log = log_file(&state, spec.name);
    loop {
        let started = Instant::now();
        update_component(&state, &shared, spec.name, |c| c.state = "starting".into());
        let mut child = match spawn_child(&spec, &state) {
            Ok(c) => c,
            Err(e) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                    return;
                }
                let e = e.chain();
                tracing::error!(component = spec.name, "restart failed: {e}");
                update_component(&state, &shared, spec.name, |c| {
                    c.state = "restarting".into();
                    c.last_exit = Some(e);
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let pid = child.id().unwrap_or(0) as i32;
        update_component(&state, &shared, spec.name, |c| c.pid = Some(pid));
        // Ready, exited, or stopped.
        let deadline = Instant::now() + spec.ready_timeout;
        let mut exited = None;
        let mut ready = false;
        while !ready && exited.is_none() {
            if *stop.borrow() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st.to_string());
                break;
            }
            if spec.ready.check(pid).await {
                ready = true;
                break;
            }
            if Instant::now() > deadline {
                let how = stop_child(&mut child, Duration::from_secs(5)).await;
                exited = Some(format!(
                    "not ready after {}s ({how})",
                    spec.ready_timeout.as_secs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if ready {
            tracing::info!(component = spec.name, pid, "running");
            update_component(&state, &shared, spec.name, |c| c.state = "running".into());
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            tokio::select! {
                st = child.wait() => {
                    exited = Some(st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                }
                _ = stop.wait_for(|s| *s) => {}
            }
        }
        if *stop.borrow() && exited.is_none() {
            let how = stop_child(&mut child, spec.stop_grace).await;
            let _ = std::fs::remove_file(component_pid_file(&state, spec.name));
            update_component(&state, &shared, spec.name, |c| {
                c.state = "stopped".into();
                c.pid = None;
                c.last_exit = Some(how);
            });
            return;
        }
        let how = exited.unwrap_or_default();
        let _ = std::fs::remove_file(component_pid_file(&state, spec.name));
        if let Some(f) = first.take() {
            let _ = f.send(Err(Error::ComponentStart {
                component: spec.name.into(),
                how: how.clone(),
                log: log.clone(),
                tail: daemon::tail(&log, 15),
            }));
            update_component(&state, &shared, spec.name, |c| {
                c.state = "failed".into();
                c.pid = None;
                c.last_exit = Some(how);
            });
            return;
        }
        if *stop.borrow() {
            update_component(&state, &shared, spec.name, |c| {
                c.state = "stopped".into();
                c.pid = None;
            });
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(component = spec.name, exit = %how, retry_in = ?backoff, "exited; restarting");
        update_component(&state, &shared, spec.name, |c| {
            c.state = "restarting".into();
            c.pid = None;
            c.restarts += 1;
            c.last_exit = Some(how);
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => {
                update_component(&state, &shared, spec.name, |c| c.state = "stopped".into());
                return;
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Stops processes left by a box that did not stop cleanly (their pid files are ours and
/// carry the start time, so only those very processes are signalled): `components` in
/// start order, stopped in reverse. Returns "name (pid N)" for each one stopped.
pub fn stop_leftovers(state: &Path, components: &[&str]) -> Vec<String> {
    let mut stopped = Vec::new();
    for name in components.iter().rev() {
        let pf = component_pid_file(state, name);
        if let Ok(Some(pid)) = daemon::stop(&pf, Duration::from_secs(10)) {
            stopped.push(format!("{name} (pid {pid})"));
        }
    }
    stopped
}

/// Every component as `pending`, for a fresh status file.
pub fn pending_components(state: &Path, specs: &[ChildSpec]) -> Vec<ComponentStatus> {
    specs
        .iter()
        .map(|s| ComponentStatus {
            name: s.name.into(),
            state: "pending".into(),
            pid: None,
            restarts: 0,
            last_exit: None,
            log: log_file(state, s.name).display().to_string(),
        })
        .collect()
}

/// A supervised component: its stop switch and its task.
pub type Running = (watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// Starts `spec` under supervision and waits until it is ready (or failed to start).
pub async fn start(spec: &ChildSpec, state: &Path, shared: &Shared) -> Result<Running> {
    update(state, shared, |s| {
        s.message = format!("starting {}", spec.name)
    });
    let (tx, rx) = watch::channel(false);
    let (ftx, frx) = tokio::sync::oneshot::channel();
    let h = tokio::spawn(supervise(
        spec.clone(),
        state.to_path_buf(),
        shared.clone(),
        rx,
        ftx,
    ));
    let outcome = match frx.await {
        Ok(o) => o,
        Err(_) => {
            // The task ended without a word (it panicked).
            let cause = match h.await {
                Err(j) => Error::Task(j),
                Ok(()) => Error::Io(std::io::Error::other("ended without an answer")),
            };
            return Err(Error::Step {
                step: "supervisor task".into(),
                source: Box::new(cause),
            });
        }
    };
    match outcome {
        Ok(()) => Ok((tx, h)),
        Err(e) => {
            let _ = h.await;
            Err(e)
        }
    }
}
