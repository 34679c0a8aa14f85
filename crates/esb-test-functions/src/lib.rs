//! Real Lambda functions used as fixtures by esb's tests (and benchmarks).
//!
//! - `esb-test-function`: a Rust handler on the `lambda_runtime` crate (crates.io). Its
//!   behaviour is chosen by the event's `action` (see [`Action`]); as a custom runtime it
//!   is the `bootstrap` of a `provided.*` function.
//! - `python/handlers.py`: Python handlers for awslambdaric (`handlers.echo`,
//!   `handlers.raise_exception`, …) and `python/init_error.py`, whose import fails.
//! - `shell/bootstrap`: a custom runtime in shell with curl, as in AWS's tutorial.
//!
//! [`rust_function`], [`python_dir`] and [`shell_dir`] locate them from a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;

/// What the Rust test function does with an event, from its `action` field.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Return the event (the default).
    Echo,
    /// Return an error (the runtime posts it to `/error`).
    Error(String),
    /// Panic inside the handler.
    Panic,
    /// Exit the process with this code mid-invocation.
    Crash(i32),
    /// Sleep this many milliseconds, then return "woke".
    Sleep(u64),
    /// Spawn `sleep 600` as a child, write "<own pid> <child pid>" to the file, then sleep.
    SpawnAndSleep(String),
    /// Return a JSON string of this many bytes.
    Big(usize),
    /// Return what the function sees: environment and context.
    Env,
    /// Print this many lines on stdout and stderr, and one JSON line, then return.
    Log(u64),
}

impl Action {
    /// Reads the action from an event (`{"action": "...", ...}`).
    pub fn from_event(event: &Value) -> Action {
        let num = |k: &str, d: u64| event.get(k).and_then(Value::as_u64).unwrap_or(d);
        match event
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("echo")
        {
            "error" => Action::Error(
                event
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("returned error")
                    .into(),
            ),
            "panic" => Action::Panic,
            "crash" => Action::Crash(num("code", 3) as i32),
            "sleep" => Action::Sleep(num("ms", 10_000)),
            "spawn_and_sleep" => Action::SpawnAndSleep(
                event
                    .get("pid_file")
                    .and_then(Value::as_str)
                    .unwrap_or("/tmp/pids")
                    .into(),
            ),
            "big" => Action::Big(num("size", 1024) as usize),
            "env" => Action::Env,
            "log" => Action::Log(num("lines", 3)),
            _ => Action::Echo,
        }
    }
}

/// The echo handler's work, used in-process as the benchmark floor: the event back.
pub fn echo(event: Value) -> Value {
    event
}

/// Directory of the Python handlers (the `LAMBDA_TASK_ROOT` of Python test functions).
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Directory holding the shell custom runtime's `bootstrap` (a `LAMBDA_TASK_ROOT`).
pub fn shell_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("shell")
}

/// Path of the built `esb-test-function` binary, next to the calling test's executable
/// (`target/<profile>/`). The workspace build (`cargo nextest run --workspace`) has built
/// it already; when it is missing or older than its sources (e.g. `cargo test -p` of
/// another crate) it is built with cargo into the same target directory.
pub fn rust_function() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>
    let mut profile_dir = exe.parent().expect("exe dir").to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let bin = profile_dir.join("esb-test-function");
    if is_fresh(&bin) {
        return bin;
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let mut root = profile_dir.parent().expect("target dir").to_path_buf();
    let mut target = None;
    if root
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.matches('-').count() >= 2)
        && root
            .parent()
            .is_some_and(|p| p.join("CACHEDIR.TAG").exists())
    {
        target = root.file_name().map(|n| n.to_owned());
        root.pop();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "esb-test-functions",
            "--bin",
            "esb-test-function",
        ])
        .arg("--target-dir")
        .arg(&root);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = target {
        cmd.arg("--target").arg(t);
    }
    let out = cmd.output().expect("run cargo to build esb-test-function");
    assert!(
        out.status.success(),
        "building esb-test-function failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.is_file(), "cargo did not produce {}", bin.display());
    bin
}

/// Whether `bin` exists and is newer than every source file of this crate.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    newest(&src.join("src")).max(newest(&src.join("Cargo.toml"))) <= built
}

fn newest(p: &Path) -> SystemTime {
    let Ok(meta) = p.metadata() else {
        return SystemTime::UNIX_EPOCH;
    };
    let mut t = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if meta.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            t = t.max(newest(&e.path()));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn actions_from_events() {
        assert_eq!(Action::from_event(&json!({})), Action::Echo);
        assert_eq!(
            Action::from_event(&json!({"action": "sleep", "ms": 5})),
            Action::Sleep(5)
        );
        assert_eq!(
            Action::from_event(&json!({"action": "crash"})),
            Action::Crash(3)
        );
        assert!(python_dir().join("handlers.py").is_file());
    }
}
