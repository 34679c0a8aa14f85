//! The box's orchestration, usable without the CLI (`esb` parses, wires and prints).
//!
//! - [`control`]: the control box (`esb up`): a [`control::Plan`] checked beforehand, then
//!   every component as a supervised child, builds, provisioning, reloads and shutdown.
//! - [`supervise`], [`status`], [`daemon`]: process supervision shared by the control box
//!   and a compute node (`esb-compute`): children with readiness and restart, the status
//!   file, pid files with start times.
//! - [`cluster`]: the control side of compute nodes (WireGuard file, agents file, joins,
//!   join tokens).
//! - [`images`] and [`provision`]: what a build makes (images pushed, imported, revisions)
//!   and the template's tables and buckets.
//! - [`containerd`]: the box's private containerd and the removal of leftover workers.
//! - [`layout`]: where everything lives under the state directory.
//! - [`perms`]: the state directory readable by its owner only (umask, start-up fix).
//! - [`http`]: the tiny HTTP/1.1 client the box uses for its own services.
//!
//! Every fallible function returns [`Error`], which names the file, component, setting or
//! resource at fault.

#![warn(missing_docs)]

pub mod cluster;
pub mod containerd;
pub mod control;
pub mod daemon;
mod error;
pub mod http;
pub mod iam;
pub mod images;
pub mod layout;
pub mod perms;
pub mod provision;
pub mod status;
pub mod supervise;
pub mod trust;

pub(crate) use error::ResultExt;
pub use error::{chain, Error, Result};
