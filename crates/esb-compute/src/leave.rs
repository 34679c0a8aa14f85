//! Leaving a box (`esb node leave`): the control node told first (it stops placing
//! workers here, drains those it holds, then forgets the node: record, certificate,
//! tunnel peer, route), then the node process stopped, its leftovers and workers removed,
//! its network and identity deleted. An unreachable control node does not keep a node
//! from leaving: the report says so.

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
    /// What the control node said.
    pub control: Deregistration,
}

/// The control node's part of a leave.
#[derive(Debug, Clone, Default)]
pub enum Deregistration {
    /// This state directory had not joined a box.
    #[default]
    NotJoined,
    /// The control node drained and forgot the node.
    Done {
        /// The control node's gateway.
        endpoint: String,
        /// Workers still running there when the drain's time ran out.
        workers_left: usize,
    },
    /// The control node could not be told; it keeps the node's record.
    Failed {
        /// The control node's gateway.
        endpoint: String,
        /// Why.
        why: String,
    },
}

/// Tells the control node this node leaves (with the secret of its join).
fn deregister(dir: &std::path::Path) -> Deregistration {
    let Some(j) = read_joined(dir) else {
        return Deregistration::NotJoined;
    };
    let endpoint = j.control_endpoint.clone();
    let failed = |why: String| Deregistration::Failed {
        endpoint: endpoint.clone(),
        why,
    };
    if j.leave_secret.is_empty() {
        return failed("this node joined before nodes had a leave secret".into());
    }
    let ca = match std::fs::read_to_string(tls_dir(dir).join(esb_pki::CA_FILE)) {
        Ok(c) => c,
        Err(e) => return failed(format!("the box CA: {e}")),
    };
    let req = esb_cluster::LeaveRequest {
        node_id: j.node.id.clone(),
        secret: j.leave_secret.clone(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(e.to_string()),
    };
    match rt.block_on(esb_cluster::join::leave(&endpoint, &ca, &req)) {
        Ok(a) => Deregistration::Done {
            endpoint,
            workers_left: a.workers_left,
        },
        Err(e) => failed(e.to_string()),
    }
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
    let control = deregister(&dir);
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
    let mut report = LeaveReport {
        control,
        ..LeaveReport::default()
    };
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
