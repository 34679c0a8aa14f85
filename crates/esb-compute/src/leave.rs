//! Leaving a box (`esb node leave`): the node process stopped, its leftovers and workers
//! removed, its network and identity deleted. The control node keeps its record.

use std::path::PathBuf;
use std::time::Duration;

use esb_box::containerd::{destroy_workers_blocking, PrivateContainerd};
use esb_box::daemon;
use esb_box::layout::{agent_dir, box_pid_file, cluster_dir, tls_dir};

use crate::join::read_joined;
use crate::node::stop_leftovers;
use crate::{Error, Result};

/// What leaving removed.
#[derive(Debug, Clone, Default)]
pub struct LeaveReport {
    /// Workers an unclean stop had left running.
    pub workers_removed: usize,
}

/// Stops the node at `state` (absolute) and removes its network, workers and identity.
/// `node` is the node network's configuration for that state directory (its worker subnet
/// is taken from the join when there is one); `containerd` is the containerd program.
pub fn leave(
    state: PathBuf,
    mut node: esb_runtime_node::NodeConfig,
    containerd: PathBuf,
) -> Result<LeaveReport> {
    let dir = state;
    if let Some(t) = daemon::read_live(&box_pid_file(&dir)) {
        if !daemon::terminate_and_wait(t, Duration::from_secs(120)) {
            return Err(Error::DidNotStop(t.pid));
        }
    }
    let _ = stop_leftovers(&dir);
    if let Some(j) = read_joined(&dir) {
        node.worker_subnet = j.node.cni_subnet();
    }
    let rn = esb_runtime_node::RuntimeNode::from_state_or(node)?;
    // Workers a killed node left running (their shims outlive containerd): removed through
    // a temporary containerd, as `esb down` does after an unclean stop.
    let mut report = LeaveReport::default();
    let ctd = PrivateContainerd::of(&dir, containerd);
    if rn.status()?.up && ctd.dir.join("config.toml").exists() {
        ctd.start()?;
        let removed = destroy_workers_blocking(agent_dir(&dir), rn.config(), ctd.socket());
        ctd.stop()?;
        report.workers_removed = removed?;
    }
    rn.down()?;
    for p in [cluster_dir(&dir), dir.join("wg"), tls_dir(&dir)] {
        let _ = std::fs::remove_dir_all(p);
    }
    Ok(report)
}
