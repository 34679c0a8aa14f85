//! The crate's error: one enum whose variants name what failed. Its `Display` is the
//! context only; the cause is its `source()` (so `{:#}` in anyhow reads "what: cause").

use std::path::PathBuf;

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the box's orchestration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operation on a file, directory or socket failed.
    #[error("{action} {}", path.display())]
    File {
        /// What was done (open, write, create, listen on, connect).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of the box failed (the step named, the cause as source).
    #[error("{step}")]
    Step {
        /// The step (e.g. "node network", "provision tables and buckets").
        step: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// A supervised component did not come up.
    #[error("{component} did not start: {how}; last log lines ({}):\n{tail}", log.display())]
    ComponentStart {
        /// The component.
        component: String,
        /// How it ended.
        how: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of it.
        tail: String,
    },
    /// A component could not be started at all.
    #[error("start {component} ({})", program.display())]
    Spawn {
        /// The component.
        component: String,
        /// Its program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A background process exited before it was ready.
    #[error("{program} exited ({status}); last log lines:\n{tail}")]
    Exited {
        /// The program ("it" for `esb` itself).
        program: String,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        tail: String,
    },
    /// A background process was not ready in time.
    #[error("{}not ready after {secs}s; last log lines:\n{tail}", subject(program))]
    NotReady {
        /// The program (empty for `esb` itself).
        program: String,
        /// The timeout.
        secs: u64,
        /// The last lines of its log.
        tail: String,
    },
    /// The box's lock is held.
    #[error("another box runs on {} (pid {pid})", state.display())]
    BoxRunning {
        /// The state directory.
        state: PathBuf,
        /// The box holding it ("?" when unknown).
        pid: String,
    },
    /// The box did not start: the failing step's error, what was cleaned up, and the
    /// warnings found on the way.
    #[error("the box did not start: {0}")]
    DidNotStart(Box<crate::status::StartReport>),
    /// The box was stopped before it was ready.
    #[error("stopped while starting ({0})")]
    StoppedWhileStarting(&'static str),
    /// The state directory's path is too long for containerd's sockets.
    #[error("ESB_STATE_DIR {} is too long for containerd's socket paths", .0.display())]
    StateDirTooLong(PathBuf),
    /// The gateway process is not running.
    #[error("the gateway is not running")]
    GatewayNotRunning,
    /// The gateway refused a rebuild.
    #[error("the gateway refused the new build: {0}")]
    GatewayRefused(String),
    /// The gateway did not record the outcome of a reload in time.
    #[error("the gateway did not take the new build; see {}", .0.display())]
    GatewayNoReload(PathBuf),
    /// The gateway's admin API answered with an error status.
    #[error("gateway admin status: {0}")]
    GatewayAdmin(u16),
    /// A table or bucket could not be made (or looked up).
    #[error("{resource}: {answer}")]
    Provision {
        /// The resource and what was asked ("table orders (template line 3)").
        resource: String,
        /// The service's answer.
        answer: String,
    },
    /// No box CA yet (a join token needs it).
    #[error("no box CA in {} (run `esb up` first)", .0.display())]
    NoBoxCa(PathBuf, #[source] esb_pki::PkiError),
    /// An HTTP call to one of the box's services failed.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// The node network.
    #[error(transparent)]
    Node(#[from] esb_runtime_node::NodeError),
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] esb_pki::PkiError),
    /// The registry.
    #[error(transparent)]
    Registry(#[from] esb_registry::RegistryError),
    /// Image building, pushing or import.
    #[error(transparent)]
    Image(#[from] esb_image::Error),
    /// The template.
    #[error(transparent)]
    Template(#[from] esb_template::Error),
    /// WireGuard keys and files.
    #[error(transparent)]
    Wireguard(#[from] esb_wireguard::WgError),
    /// Join tokens and the node registry.
    #[error(transparent)]
    Cluster(#[from] esb_cluster::ClusterError),
    /// The agent library (worker removal).
    #[error(transparent)]
    Agent(#[from] esb_agent::AgentError),
    /// Functions' credentials and policies.
    #[error(transparent)]
    Iam(#[from] esb_iam::Error),
    /// JSON of a state file.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Any other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Any error and its causes on one line, joined by ": " (as anyhow's `{:#}`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn subject(program: &str) -> String {
    if program.is_empty() {
        String::new()
    } else {
        format!("{program} ")
    }
}

impl Error {
    /// The error and its causes on one line, joined by ": " (as anyhow's `{:#}`).
    pub fn chain(&self) -> String {
        chain(self)
    }

    /// The step this error belongs to, and the error as lines for a person (what
    /// [`crate::status::Failure`] carries): the outermost step named with
    /// [`Error::Step`] (or the component that did not start); then the cause, with one
    /// line per function that cannot be built and the component's log lines each on its
    /// own. `None` when no step is named.
    pub fn explain(&self) -> (Option<String>, Vec<String>) {
        match self {
            Error::Step { step, source } => (Some(step.clone()), source.lines()),
            Error::ComponentStart { component, .. } | Error::Spawn { component, .. } => {
                (Some(format!("start {component}")), self.lines())
            }
            _ => (None, self.lines()),
        }
    }

    fn lines(&self) -> Vec<String> {
        match self {
            Error::Step { step, source } => {
                let mut inner = source.lines();
                match inner.first_mut() {
                    Some(first) => *first = format!("{step}: {first}"),
                    None => inner.push(step.clone()),
                }
                inner
            }
            Error::Image(esb_image::Error::Build(items)) => items.clone(),
            Error::ComponentStart {
                component,
                how,
                log,
                tail,
            } => {
                let mut v = vec![
                    format!("{component} did not start: {how}"),
                    format!("last lines of {}:", log.display()),
                ];
                v.extend(tail.lines().map(|l| format!("  {l}")));
                v
            }
            _ => self.chain().lines().map(String::from).collect(),
        }
    }

    /// An I/O error on `path`.
    pub fn file(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::File {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Names the step a result belongs to.
pub(crate) trait ResultExt<T> {
    /// Wraps an error as [`Error::Step`].
    fn step(self, step: impl Into<String>) -> Result<T>;
    /// Wraps an error as [`Error::Step`], the step computed only on error.
    fn with_step<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn step(self, step: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step.into(),
            source: Box::new(e.into()),
        })
    }
    fn with_step<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step().into(),
            source: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing_and_chain_the_cause() {
        let e: Result<()> = Err(Error::file(
            "open",
            "/s/logs/box.log",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
        let e = e.step("node network").unwrap_err();
        assert_eq!(e.to_string(), "node network");
        let chain = e.chain();
        assert!(
            chain.starts_with("node network: open /s/logs/box.log: "),
            "{chain}"
        );
        let e = Error::ComponentStart {
            component: "gateway".into(),
            how: "exit status: 1".into(),
            log: "/s/logs/gateway.log".into(),
            tail: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "gateway did not start: exit status: 1; last log lines (/s/logs/gateway.log):\nboom"
        );
        let e = Error::NotReady {
            program: String::new(),
            secs: 10,
            tail: "t".into(),
        };
        assert_eq!(e.to_string(), "not ready after 10s; last log lines:\nt");
    }

    #[test]
    fn explained_errors_name_the_step_and_keep_every_item() {
        let build: Result<()> = Err(Error::Image(esb_image::Error::Build(vec![
            "function A: runtime java21 has no base image".into(),
            "function B: CodeUri nope/ is not a directory".into(),
        ])));
        let (step, lines) = build.step("build the images").unwrap_err().explain();
        assert_eq!(step.as_deref(), Some("build the images"));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].starts_with("function B"));
        let e = Error::ComponentStart {
            component: "gateway".into(),
            how: "exit status: 1".into(),
            log: "/s/logs/gateway.log".into(),
            tail: "line 1\nAddress already in use".into(),
        };
        let (step, lines) = e.explain();
        assert_eq!(step.as_deref(), Some("start gateway"));
        assert_eq!(
            lines,
            [
                "gateway did not start: exit status: 1",
                "last lines of /s/logs/gateway.log:",
                "  line 1",
                "  Address already in use"
            ]
        );
        let nested: Result<()> = Err(Error::Provision {
            resource: "table t (template line 2)".into(),
            answer: "CreateTable refused: {}".into(),
        });
        let (step, lines) = nested
            .step("DynamoDB at x")
            .step("provision tables and buckets")
            .unwrap_err()
            .explain();
        assert_eq!(step.as_deref(), Some("provision tables and buckets"));
        assert_eq!(
            lines,
            ["DynamoDB at x: table t (template line 2): CreateTable refused: {}"]
        );
        let (step, lines) = Error::StoppedWhileStarting("SIGTERM").explain();
        assert_eq!(step, None);
        assert_eq!(lines, ["stopped while starting (SIGTERM)"]);
    }
}
