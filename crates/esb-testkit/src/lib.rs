//! Helpers shared by esb's integration tests.
//!
//! Tests drive esb with real clients (boto3, the AWS CLI, awslambdaric …) from the Python
//! virtualenv that `scripts/prereqs.sh` prepares. Its location reaches the tests through
//! `ESB_VENV`; `scripts/test.sh` sets it. A test that needs the venv and does not find it
//! fails with a message that says how to fix it: nothing is skipped.

pub mod fuzz;

use std::path::PathBuf;

/// The virtualenv holding the real AWS clients (from `ESB_VENV`).
///
/// Panics with a clear message when it is not set up: run the tests through
/// `scripts/test.sh`, or set `ESB_VENV` after running `scripts/prereqs.sh`.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("ESB_VENV").map(PathBuf::from).unwrap_or_else(|| {
        panic!("ESB_VENV is not set: run the tests with scripts/test.sh (it installs the real clients)")
    });
    assert!(
        dir.join("bin/python").exists(),
        "ESB_VENV={} holds no bin/python: run scripts/prereqs.sh",
        dir.display()
    );
    dir
}

/// Path of an executable in the virtualenv (`python`, `aws`, `pytest`, …).
pub fn venv_bin(name: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/prereqs.sh",
        path.display()
    );
    path
}

/// The virtualenv's Python interpreter.
pub fn python() -> PathBuf {
    venv_bin("python")
}

/// Panics unless the test runs as root (CI does); namespace and containerd tests need it.
pub fn require_root() {
    assert!(
        unsafe_geteuid() == 0,
        "this test needs root (network namespaces, nftables, containerd): run it as root, as CI does"
    );
}

fn unsafe_geteuid() -> u32 {
    // Read the effective uid from /proc to avoid a libc dependency in this small crate.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}
