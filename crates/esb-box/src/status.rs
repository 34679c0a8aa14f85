//! The status file (`STATE/run/box.json`) the box or a compute node keeps current, and
//! how `esb status` and other readers find the running box.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::daemon::{self, Tracked};
use crate::layout::{box_pid_file, start_report_file, status_file};

/// One component as `esb status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// `starting`, `running`, `restarting`, `stopped` or `failed`.
    pub state: String,
    /// Current PID.
    pub pid: Option<i32>,
    /// Restarts after a crash.
    pub restarts: u32,
    /// How it last ended.
    pub last_exit: Option<String>,
    /// Its log file.
    pub log: String,
}

/// The whole box as `STATE/run/box.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoxStatus {
    /// The box process.
    pub pid: i32,
    /// `starting`, `ready`, `stopping` or `failed`.
    pub state: String,
    /// Why it failed, or what it is doing.
    pub message: String,
    /// The template served.
    pub template: String,
    /// Client endpoint of the gateway.
    pub gateway_url: String,
    /// Host endpoints of the services.
    pub endpoints: serde_json::Value,
    /// The CA clients trust.
    pub ca: String,
    /// Components in start order.
    pub components: Vec<ComponentStatus>,
    /// Completed rebuilds (SIGHUP / `esb watch`).
    pub generation: u64,
    /// Outcome of the last build and provisioning.
    pub last_build: serde_json::Value,
}

/// The status shared by the box and its supervisor tasks.
pub type Shared = Arc<Mutex<BoxStatus>>;

/// Writes the status file (through a temporary file; failures are ignored: the status is
/// informative).
pub fn save(state: &Path, s: &BoxStatus) {
    let path = status_file(state);
    let tmp = path.with_extension("json.tmp");
    if let Ok(text) = serde_json::to_vec_pretty(s) {
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// Changes the shared status and saves it.
pub fn update(state: &Path, shared: &Shared, f: impl FnOnce(&mut BoxStatus)) {
    let mut s = shared.lock().unwrap();
    f(&mut s);
    save(state, &s);
}

/// Changes one component's status and saves it.
pub fn update_component(
    state: &Path,
    shared: &Shared,
    name: &str,
    f: impl FnOnce(&mut ComponentStatus),
) {
    update(state, shared, |s| {
        if let Some(c) = s.components.iter_mut().find(|c| c.name == name) {
            f(c);
        }
    });
}

/// The status file's content, if it can be read.
pub fn read(state: &Path) -> Option<BoxStatus> {
    std::fs::read(status_file(state))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The running box (or compute node) process and its status file, when the process is
/// alive.
pub fn running(state: &Path) -> Option<(Tracked, Option<BoxStatus>)> {
    let t = daemon::read_live(&box_pid_file(state))?;
    Some((t, read(state)))
}

/// Why the box did not start: the failing step, its error complete (every function that
/// cannot be built, the resource and the service's answer, the component and its log's
/// last lines), and what was cleaned up after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed ("build the images", "start gateway", …).
    pub step: String,
    /// Its error, one line per item.
    pub lines: Vec<String>,
    /// What was stopped or removed after it (empty while cleaning up).
    pub cleaned_up: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed:", self.step)?;
        for l in &self.lines {
            write!(f, "\n  {l}")?;
        }
        if self.cleaned_up.is_empty() {
            write!(f, "\ncleaning up …")
        } else {
            write!(f, "\ncleaned up: {}", self.cleaned_up.join("; "))
        }
    }
}

/// How the last start of the box went (`STATE/run/start.json`, kept after a failed start
/// so that the waiting `esb up` and a later `esb status` can say why): the warnings found
/// while starting and, when it did not start, the [`Failure`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartReport {
    /// The box process that wrote it.
    pub pid: i32,
    /// Warnings found while starting (a runtime served by another interpreter version, a
    /// function left out, drift of a provisioned resource, leftovers stopped, …).
    pub warnings: Vec<String>,
    /// Why it did not start.
    pub failure: Option<Failure>,
}

impl StartReport {
    /// Writes the report (through a temporary file; failures are ignored, as for
    /// [`save`]).
    pub fn save(&self, state: &Path) {
        let path = start_report_file(state);
        let tmp = path.with_extension("json.tmp");
        if let Ok(text) = serde_json::to_vec_pretty(self) {
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    /// The report of the last start, if there is one.
    pub fn read(state: &Path) -> Option<StartReport> {
        std::fs::read(start_report_file(state))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The warnings as lines (`warning: …`), for printing after the rest.
    pub fn warning_lines(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|w| format!("warning: {w}"))
            .collect()
    }
}

impl std::fmt::Display for StartReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        if let Some(failure) = &self.failure {
            write!(f, "{failure}")?;
            first = false;
        }
        for w in self.warning_lines() {
            if !first {
                writeln!(f)?;
            }
            write!(f, "{w}")?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_status_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crate::layout::run_dir(dir.path())).unwrap();
        let shared: Shared = Arc::new(Mutex::new(BoxStatus {
            pid: 1,
            state: "starting".into(),
            message: String::new(),
            template: "t.yaml".into(),
            gateway_url: "https://localhost:443".into(),
            endpoints: serde_json::Value::Null,
            ca: String::new(),
            components: vec![ComponentStatus {
                name: "s3".into(),
                state: "pending".into(),
                pid: None,
                restarts: 0,
                last_exit: None,
                log: String::new(),
            }],
            generation: 0,
            last_build: serde_json::Value::Null,
        }));
        update_component(dir.path(), &shared, "s3", |c| c.state = "running".into());
        let s = read(dir.path()).unwrap();
        assert_eq!(s.components[0].state, "running");
        // No pid file: nothing runs.
        assert!(running(dir.path()).is_none());
    }

    #[test]
    fn a_failed_start_reads_back_error_first_then_cleanup_then_warnings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crate::layout::run_dir(dir.path())).unwrap();
        assert!(StartReport::read(dir.path()).is_none());
        let r = StartReport {
            pid: 7,
            warnings: vec!["Old: runtime python3.9: served by Python 3.11".into()],
            failure: Some(Failure {
                step: "build the images".into(),
                lines: vec![
                    "function A: runtime java21 has no base image".into(),
                    "function B: CodeUri nope/ is not a directory".into(),
                ],
                cleaned_up: vec!["stopped s3, containerd".into()],
            }),
        };
        r.save(dir.path());
        let back = StartReport::read(dir.path()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.to_string(),
            "build the images failed:\n  function A: runtime java21 has no base image\n  \
             function B: CodeUri nope/ is not a directory\ncleaned up: stopped s3, containerd\n\
             warning: Old: runtime python3.9: served by Python 3.11"
        );
    }
}
