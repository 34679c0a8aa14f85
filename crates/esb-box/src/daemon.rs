//! Background processes: spawned detached, tracked by a pid file that records the PID and
//! its start time, and stopped by that PID only after checking the start time (a recycled
//! PID is never signalled).

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

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
    let st = start_time(pid).ok_or_else(|| {
        Error::file(
            "read own start time from",
            format!("/proc/{pid}/stat"),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    write_pid(path, pid, st)
}

/// Writes `PID STARTTIME` to `path` (through a temporary file, so readers never see half).
pub fn write_pid(path: &Path, pid: i32, start_time: u64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {start_time}\n"))
        .map_err(|e| Error::file("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file("write", path, e))
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
        std::fs::create_dir_all(dir).map_err(|e| Error::file("create", dir, e))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::file("open", log, e))?;
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

/// Starts `esb ARGS…` (`esb` is the executable) detached (new session, stdin closed, output
/// appended to `log`), and waits until it has written `pid_file` (ready) or has exited (an
/// error with its log tail).
pub fn spawn(
    esb: &Path,
    args: &[String],
    pid_file: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Tracked> {
    let _ = std::fs::remove_file(pid_file);
    let mut child = detached(esb.as_os_str(), args, log)?
        .spawn()
        .map_err(|e| Error::Spawn {
            component: "background process".into(),
            program: esb.to_path_buf(),
            source: e,
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = read_live(pid_file) {
            if t.pid == child.id() as i32 {
                return Ok(t);
            }
        }
        if let Some(status) = child.try_wait()? {
            return Err(Error::Exited {
                program: "it".into(),
                status: status.to_string(),
                tail: tail(log, 10),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::NotReady {
                program: String::new(),
                secs: timeout.as_secs(),
                tail: tail(log, 10),
            });
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

/// Sends `sig` to the tracked process if it is still that process (start time checked).
pub fn signal(t: Tracked, sig: i32) {
    if start_time(t.pid) == Some(t.start_time) {
        // SAFETY: plain kill(2) on a PID we verified to be the process we started.
        unsafe {
            libc::kill(t.pid, sig);
        }
    }
}

/// Sends `sig` to a child of ours (still unreaped, so its PID is not reused).
pub fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child of ours (still unreaped, so the PID is not reused).
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Sends SIGTERM to the tracked process and waits up to `wait` for it to end; `false` when
/// it still runs then.
pub fn terminate_and_wait(t: Tracked, wait: Duration) -> bool {
    signal(t, libc::SIGTERM);
    let deadline = Instant::now() + wait;
    while start_time(t.pid) == Some(t.start_time) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
        .map_err(|e| Error::Spawn {
            component: program.into(),
            program: program.into(),
            source: e,
        })?;
    let pid = child.id() as i32;
    let st = start_time(pid).ok_or_else(|| Error::Exited {
        program: program.into(),
        status: "gone at once".into(),
        tail: tail(log, 10),
    })?;
    write_pid(pid_file, pid, st)?;
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
            return Err(Error::Exited {
                program: program.into(),
                status: status.to_string(),
                tail: tail(log, 10),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(pid_file);
            return Err(Error::NotReady {
                program: program.into(),
                secs: timeout.as_secs(),
                tail: tail(log, 10),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_name_live_processes_only() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("me.pid");
        write_pid_file(&pf).unwrap();
        let me = read_live(&pf).expect("this process is alive");
        assert_eq!(me.pid, std::process::id() as i32);
        // Same PID, another start time: not this process.
        write_pid(&pf, me.pid, me.start_time + 1).unwrap();
        assert!(read_live(&pf).is_none());
        std::fs::write(dir.path().join("log"), "a\nb\nc\n").unwrap();
        assert_eq!(tail(&dir.path().join("log"), 2), "b\nc");
    }
}
