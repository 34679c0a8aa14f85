//! Background components started by the CLI (today the local proxy): spawned detached,
//! tracked by a pid file that records the PID and its start time, and stopped by that PID
//! only after checking the start time (a recycled PID is never signalled).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A process the box started, as its pid file describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

/// Start time of a live process, or `None` when it is gone (or a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Writes this process's pid file (called by the background component once it is ready).
pub fn write_pid_file(path: &Path) -> Result<()> {
    let pid = std::process::id() as i32;
    let st = start_time(pid).context("read own start time")?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {st}\n"))
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// The process a pid file names, if it is still that process.
pub fn read_live(path: &Path) -> Option<Tracked> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.split_whitespace();
    let pid: i32 = f.next()?.parse().ok()?;
    let st: u64 = f.next()?.parse().ok()?;
    (pid > 0 && start_time(pid) == Some(st)).then_some(Tracked {
        pid,
        start_time: st,
    })
}

/// `program ARGS…` ready to start detached: a session of its own (so a terminal's Ctrl-C
/// does not reach it), stdin closed, stdout and stderr appended to `log`.
pub fn detached(program: &std::ffi::OsStr, args: &[String], log: &Path) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd)
}

/// Starts `esb ARGS…` detached (new session, stdin closed, output appended to `log`), and
/// waits until it has written `pid_file` (ready) or has exited (an error with its log tail).
pub fn spawn(args: &[String], pid_file: &Path, log: &Path, timeout: Duration) -> Result<Tracked> {
    let _ = std::fs::remove_file(pid_file);
    let exe = std::env::current_exe().context("locate the esb executable")?;
    let mut child = detached(exe.as_os_str(), args, log)?
        .spawn()
        .context("start background process")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = read_live(pid_file) {
            if t.pid == child.id() as i32 {
                return Ok(t);
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("it exited ({status}); last log lines:\n{}", tail(log, 10));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "not ready after {}s; last log lines:\n{}",
                timeout.as_secs(),
                tail(log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the process named by `pid_file` (SIGTERM, then SIGKILL after `grace`) and removes
/// the file. Returns the PID when one was running.
pub fn stop(pid_file: &Path, grace: Duration) -> Result<Option<i32>> {
    let Some(t) = read_live(pid_file) else {
        let _ = std::fs::remove_file(pid_file);
        return Ok(None);
    };
    signal(t, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while start_time(t.pid) == Some(t.start_time) {
        if Instant::now() > deadline {
            signal(t, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(Some(t.pid))
}

fn signal(t: Tracked, sig: i32) {
    if start_time(t.pid) == Some(t.start_time) {
        // SAFETY: plain kill(2) on a PID we verified to be the process we started.
        unsafe {
            libc::kill(t.pid, sig);
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Pid file of the local proxy of a node.
pub fn proxy_pid_file(node_state: &Path) -> PathBuf {
    node_state.join("proxy.pid")
}

/// Starts an external program detached (new session, output appended to `log`), records
/// its PID and start time in `pid_file`, and waits until `ready()` holds or it exits.
pub fn spawn_program(
    program: &str,
    args: &[String],
    pid_file: &Path,
    log: &Path,
    timeout: Duration,
    ready: impl Fn() -> bool,
) -> Result<Tracked> {
    let mut child = detached(program.as_ref(), args, log)?
        .spawn()
        .with_context(|| format!("run {program}"))?;
    let pid = child.id() as i32;
    let st = start_time(pid).context("read the new process's start time")?;
    let tmp = pid_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {st}\n"))?;
    std::fs::rename(&tmp, pid_file)?;
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(Tracked {
                pid,
                start_time: st,
            });
        }
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(pid_file);
            bail!(
                "{program} exited ({status}); last log lines:\n{}",
                tail(log, 10)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(pid_file);
            bail!(
                "{program} not ready after {}s; last log lines:\n{}",
                timeout.as_secs(),
                tail(log, 10)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
