//! The box's image registry (system.md §2, the seed's "Registry" section).
//!
//! Compute nodes get function images only from here: they pull `10.99.0.1:5010/…` over
//! WireGuard, which the control side relays to `esb-registry:5010`. The registry itself is
//! not ours: it is the CNCF distribution server (Debian's `docker-registry`), run by the
//! box as a supervised component with storage under `STATE/registry` and a certificate from
//! the box CA. This crate knows how to configure and collect it ([`server`]), how function
//! images are named in it ([`names`]), and how a containerd host trusts it: the hosts
//! directory (`certs.d/HOST/hosts.toml`) containerd's own clients read ([`hosts`]).

pub mod hosts;
pub mod names;
pub mod server;

pub use hosts::{Endpoint, HostsDir};
pub use names::{function_repository, image_reference, revision_tag, ImageRef};
pub use server::ServerConfig;

/// The registry's port, on the host's loopback and on the control address.
pub const DEFAULT_PORT: u16 = 5010;
/// The backend name the relay resolves (STATE/hosts, then DNS).
pub const BACKEND_NAME: &str = "esb-registry";
/// Where every node pulls from: the control address over WireGuard (the certificate's SAN).
pub const CONTROL_HOST: &str = "10.99.0.1:5010";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A hosts.toml is not what containerd would accept, or asks for what we refuse.
    #[error("{path}: {msg}")]
    Hosts {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The registry program is missing or failed.
    #[error("{0}")]
    Program(String),
    /// An image reference is not one of ours.
    #[error(
        "{0:?} is not an image reference HOST/REPOSITORY@sha256:DIGEST or HOST/REPOSITORY:TAG"
    )]
    Reference(String),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}
