//! A worker's console (what its processes write to their stdout and stderr outside the
//! supervisor's log shipping), kept in a size-capped, rotated file.
//!
//! containerd's shim hands the task's output to a logging binary (`binary://` stdio URI):
//! the agent names its own executable with the argument [`ARG`], and the shim starts it
//! beside the task with the output pipes as fds 3 and 4 ([`run_logger`], through the
//! `containerd-shim-logging` crate). A pipe is bounded: a worker that writes faster than
//! the file takes it waits. The file `workers/ID.log` is rotated to `ID.log.1` when it
//! reaches half the cap, so the two never hold more than the cap (default 10 MiB).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The first argument that makes the `esb` binary (or any binary calling
/// [`run_logger`]) a console logger.
pub const ARG: &str = "_ESB_WORKER_CONSOLE";

/// Default cap of a worker's console files together (bytes).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

/// Smallest cap accepted (bytes).
const MIN_MAX_BYTES: u64 = 8 << 10;

/// The stdio URI that makes containerd's shim run `exe` as the console logger of a worker
/// writing to `log` with at most `max_bytes` on disk.
pub fn uri(exe: &Path, log: &Path, max_bytes: u64) -> String {
    format!(
        "binary://{}?{ARG}={}",
        encode(&exe.to_string_lossy()),
        encode(&format!("{max_bytes}:{}", log.display()))
    )
}

/// Percent-encodes everything but unreserved characters and `/` (URL path and query).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses the logger's argument `MAX_BYTES:PATH`.
fn parse_spec(spec: &str) -> Result<(u64, PathBuf), String> {
    let (max, path) = spec
        .split_once(':')
        .ok_or_else(|| format!("{ARG} {spec:?}: expected MAX_BYTES:PATH"))?;
    let max: u64 = max
        .parse()
        .map_err(|_| format!("{ARG} {spec:?}: {max:?} is not a number of bytes"))?;
    Ok((max.max(MIN_MAX_BYTES), PathBuf::from(path)))
}

/// Two files of at most half the cap each: `path` and `path.1`.
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    half: u64,
}

impl Rotating {
    fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path,
            file,
            size,
            half: max_bytes / 2,
        })
    }

    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            if self.size >= self.half {
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                std::fs::rename(&self.path, &old)?;
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                self.size = 0;
            }
            let room = (self.half - self.size).min(buf.len() as u64) as usize;
            self.file.write_all(&buf[..room])?;
            self.size += room as u64;
            buf = &buf[room..];
        }
        Ok(())
    }
}

/// The console logger as the `containerd-shim-logging` crate drives it.
struct CappedConsole {
    stdout: File,
    stderr: File,
    out: Arc<Mutex<Rotating>>,
}

impl containerd_shim_logging::Driver for CappedConsole {
    type Error = String;

    fn new(config: containerd_shim_logging::Config) -> Result<Self, String> {
        let spec = std::env::args()
            .skip_while(|a| a != ARG)
            .nth(1)
            .ok_or_else(|| format!("{ARG}: no MAX_BYTES:PATH argument"))?;
        let (max, path) = parse_spec(&spec)?;
        let out = Rotating::open(path.clone(), max)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(CappedConsole {
            stdout: config.stdout,
            stderr: config.stderr,
            out: Arc::new(Mutex::new(out)),
        })
    }

    fn run(self) -> Result<(), String> {
        let pump = |mut from: File, out: Arc<Mutex<Rotating>>| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            // A full disk loses console lines, never blocks the worker.
                            let _ = out.lock().expect("console lock").write(&buf[..n]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })
        };
        let a = pump(self.stdout, self.out.clone());
        let b = pump(self.stderr, self.out);
        let _ = a.join();
        let _ = b.join();
        Ok(())
    }
}

/// Runs the console logger of one worker (started by containerd's shim with fds 3, 4 and
/// 5 and the argument [`ARG`] `MAX_BYTES:PATH`); never returns.
pub fn run_logger() -> ! {
    containerd_shim_logging::run::<CappedConsole>();
    std::process::exit(0)
}

/// The files of a worker's console (`ID.log` and its rotated `ID.log.1`).
pub fn files(log: &Path) -> [PathBuf; 2] {
    let mut old = log.to_path_buf().into_os_string();
    old.push(".1");
    [log.to_path_buf(), PathBuf::from(old)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_carries_the_cap_and_the_path() {
        let u = uri(
            Path::new("/usr/local/bin/esb"),
            Path::new("/var/lib/esb/agent/workers/w 1.log"),
            1024,
        );
        assert_eq!(
            u,
            "binary:///usr/local/bin/esb?_ESB_WORKER_CONSOLE=1024%3A/var/lib/esb/agent/workers/w%201.log"
        );
        assert_eq!(
            parse_spec("1024:/a/b:c.log").unwrap(),
            (MIN_MAX_BYTES, PathBuf::from("/a/b:c.log"))
        );
        assert!(parse_spec("x:/a").is_err());
        assert!(parse_spec("/a").is_err());
    }

    #[test]
    fn two_files_never_hold_more_than_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let max = 64 << 10;
        let mut r = Rotating::open(path.clone(), max).unwrap();
        let chunk = vec![b'x'; 10_000];
        for _ in 0..100 {
            r.write(&chunk).unwrap();
        }
        r.write(b"last line\n").unwrap();
        let [a, b] = files(&path);
        let total = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
        assert!(total <= max, "{total} > {max}");
        assert!(std::fs::read_to_string(&a)
            .unwrap()
            .ends_with("last line\n"));
    }
}
