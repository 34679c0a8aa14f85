//! The compute-node role (`esb node join`, `esb node leave`), usable without the CLI.
//!
//! A compute node joins a box with a token ([`join`]), then runs in the background like
//! the control box ([`node`]): its node network (worker subnet 10.88.N.0/24 from the
//! control node), its WireGuard interface in the node namespace (10.99.0.N, peer: the
//! control node), a private containerd trusting the box's registry at 10.99.0.1:5010, the
//! local proxy whose backends (s3-storage, database, victorialogs, gateway, esb-registry)
//! are the control node's relays at the control address, dialled over wg0, and the agent,
//! listening only on 10.99.0.N:50051 with mTLS (and its local socket). [`leave`] stops it
//! and removes what it made. Supervision, pid files and the status file come from
//! `esb-box`.

#![warn(missing_docs)]

mod error;
pub mod join;
pub mod leave;
pub mod node;

pub(crate) use error::ResultExt;
pub use error::{Error, Result};
pub use join::{JoinConfig, Joined};
pub use leave::{leave, Deregistration, LeaveReport};
