//! The crate's error: variants name what failed; `Display` is the context, `source()` the
//! cause (so anyhow's `{:#}` reads "what: cause").

use std::path::PathBuf;

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a compute node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory joined a box before.
    #[error("{} joined a box already: `esb node join` with no token restarts it; `esb node leave` first to join another", .0.display())]
    AlreadyJoined(PathBuf),
    /// No token and no earlier join.
    #[error("{} has not joined a box: give the token from `esb node token`", state.display())]
    NotJoined {
        /// The state directory.
        state: PathBuf,
        /// Why `node.json` could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The control node's key is not the one its token names.
    #[error("the control node answered with another WireGuard key than its token's")]
    WrongControlKey,
    /// The control node's answer has no valid control address.
    #[error("control_host")]
    ControlHost(#[source] std::net::AddrParseError),
    /// The control node's WireGuard endpoint does not resolve.
    #[error("resolve the control node {endpoint}")]
    ResolveControl {
        /// HOST:PORT.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The control node's WireGuard endpoint has no IPv4 address.
    #[error("{0} has no IPv4 address")]
    NoIpv4(String),
    /// The background node process ended before it was ready.
    #[error("the node did not start ({status}): {why}")]
    DidNotStart {
        /// Its exit status.
        status: String,
        /// Its status message, or its log's last lines.
        why: String,
    },
    /// The background node process was not ready in time.
    #[error("the node is not ready after 5 minutes; see {}", .0.display())]
    NotReady(PathBuf),
    /// The node process did not stop.
    #[error("the node (pid {0}) did not stop in 2 minutes")]
    DidNotStop(i32),
    /// The node was stopped before it was ready.
    #[error("stopped while starting ({0})")]
    StoppedWhileStarting(&'static str),
    /// A step failed (the step named, the cause as source).
    #[error("{step}")]
    Step {
        /// The step.
        step: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// An operation on a file failed.
    #[error("{action} {}", path.display())]
    File {
        /// What was done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Supervision, pid files, containerd (the box's machinery).
    #[error(transparent)]
    Box(#[from] esb_box::Error),
    /// Tokens and the join exchange.
    #[error(transparent)]
    Cluster(#[from] esb_cluster::ClusterError),
    /// WireGuard keys and files.
    #[error(transparent)]
    Wireguard(#[from] esb_wireguard::WgError),
    /// The node network.
    #[error(transparent)]
    Node(#[from] esb_runtime_node::NodeError),
    /// The node namespace.
    #[error(transparent)]
    NetNs(#[from] esb_netns::NetNsError),
    /// containerd's hosts directory.
    #[error(transparent)]
    Registry(#[from] esb_registry::RegistryError),
    /// `node.json`.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Any other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The error and its causes on one line, joined by ": ".
    pub fn chain(&self) -> String {
        esb_box::chain(self)
    }
}

/// Names the step a result belongs to.
pub(crate) trait ResultExt<T> {
    /// Wraps an error as [`Error::Step`].
    fn step(self, step: &str) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn step(self, step: &str) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step.into(),
            source: Box::new(e.into()),
        })
    }
}
