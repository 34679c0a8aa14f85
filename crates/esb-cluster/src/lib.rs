//! Control and compute nodes (system.md §4, the seed's Phase B).
//!
//! A compute node joins with a one-time token printed on the control node
//! (`esb node token`): the control node's public endpoint, its WireGuard public key, the
//! fingerprint of the box CA and a secret ([`token`]). The joining node trusts the control
//! node only if the CA it presents has that fingerprint, then redeems the secret; the
//! control node assigns it a number N, the WireGuard address 10.99.0.N and the worker
//! subnet 10.88.N.0/24 ([`registry`]) and answers with everything the node needs: addresses,
//! the control's WireGuard key and endpoint, the CA and the node's certificate ([`join`]).

pub mod join;
pub mod registry;
pub mod token;

pub use join::{JoinAnswer, JoinRequest, LeaveAnswer, LeaveRequest};
pub use registry::{NodeRecord, Registry};
pub use token::{JoinToken, TokenStore};

/// Errors of the cluster exchange; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The token text is not a token.
    #[error("not a join token (it starts with esb1.): {0}")]
    BadToken(String),
    /// The secret is unknown (forged, or from another control node).
    #[error("the join token is not known to this control node (forged, or for another box)")]
    UnknownToken,
    /// The token was redeemed already.
    #[error(
        "the join token was used already (tokens are one-time: `esb node token` makes another)"
    )]
    UsedToken,
    /// The token expired.
    #[error("the join token expired (`esb node token --ttl` makes a longer-lived one)")]
    ExpiredToken,
    /// Clocks differ too much.
    #[error("the clocks of this node and the control node differ by {0} s (more than {1} s): fix the time")]
    ClockSkew(i64, i64),
    /// Another node holds the id.
    #[error("node id {0:?} is taken by another node (another key): choose another --node-id")]
    IdTaken(String),
    /// No node of this id is a member.
    #[error("node {0:?} is not a member of this box (it left, or was never joined)")]
    UnknownNode(String),
    /// A leave request without the node's own secret.
    #[error("node {0:?}: the request does not carry this node's secret (only the node itself may leave)")]
    NodeSecret(String),
    /// No number left.
    #[error("no node number left (at most 253 compute nodes)")]
    Full,
    /// The control node is not the one of the token.
    #[error("the control node at {endpoint} presents a CA with fingerprint {got}, not the token's {want}: not the box this token is for")]
    Fingerprint {
        /// Where.
        endpoint: String,
        /// What it presented.
        got: String,
        /// What the token pins.
        want: String,
    },
    /// The control node could not be reached or answered badly.
    #[error("control node {endpoint}: {msg}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// What happened.
        msg: String,
    },
    /// The control node refused.
    #[error("the control node refused the join: {0}")]
    Refused(String),
    /// The control node refused a leave.
    #[error("the control node refused the leave: {0}")]
    LeaveRefused(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A field is invalid.
    #[error("{field}: {msg}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// 32 random bytes from the kernel, in hex (secrets of tokens and nodes).
pub(crate) fn random_hex() -> Result<String, ClusterError> {
    use std::io::Read;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(io_err(std::path::Path::new("/dev/urandom")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes JSON atomically with mode 0600 (the files hold secrets' hashes and node keys).
pub(crate) fn write_private_json<T: serde::Serialize>(
    path: &std::path::Path,
    value: &T,
) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(&serde_json::to_vec_pretty(value).expect("serializable"))
        .map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
