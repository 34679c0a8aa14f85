//! A private containerd instance for esb, and a client for it.
//!
//! [`Containerd::start`] runs `containerd` as a child process with its own generated
//! `config.toml`, root, state and sockets, all under one state directory, so it never
//! touches (or depends on) a system containerd. [`connect`] gives a [`Client`] bound to the
//! namespace [`NAMESPACE`] that imports OCI images (content store writes, image record,
//! unpack into the overlayfs snapshotter) through containerd's gRPC API.
//!
//! Works with containerd 1.6 (Debian 12) and later: only the stable v1 services are used
//! (content, images, leases, snapshots, diff, version).

mod import;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

pub use import::{chain_ids, ImportedImage, OciImage};

/// The containerd namespace esb's images and workers live in.
pub const NAMESPACE: &str = "esb-runtime";
/// The snapshotter esb uses.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// containerd did not come up.
    #[error("containerd did not start: {0}")]
    Start(String),
    /// Connecting to the socket failed.
    #[error("cannot connect to containerd at {socket}: {message}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        message: String,
    },
    /// A gRPC call failed.
    #[error("containerd {call}: {status}")]
    Rpc {
        /// Which call.
        call: &'static str,
        /// containerd's answer.
        status: Box<tonic::Status>,
    },
    /// The image to import is malformed.
    #[error("image: {0}")]
    Image(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

pub(crate) fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Rpc {
        call,
        status: Box::new(status),
    }
}

/// A running private containerd, stopped by [`Containerd::stop`] or when dropped.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    state_dir: PathBuf,
}

/// The longest path a Unix socket can have (`sun_path` is 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Containerd {
    /// Starts containerd with everything under `state_dir` (created if needed):
    /// `config.toml`, `root/`, `state/`, `containerd.sock` (gRPC), `containerd.sock.ttrpc`
    /// and `containerd.log`. Waits (up to 30 s) until it answers on its socket.
    ///
    /// `state_dir` must be short enough for a Unix socket path (about 80 characters).
    pub async fn start(state_dir: &Path) -> Result<Containerd, Error> {
        std::fs::create_dir_all(state_dir)
            .map_err(io_err(format!("create {}", state_dir.display())))?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(io_err(format!("resolve {}", state_dir.display())))?;
        let socket = state_dir.join("containerd.sock");
        if socket.as_os_str().len() + ".ttrpc".len() > MAX_SOCKET_PATH {
            return Err(Error::Start(format!(
                "state directory {} is too long for a Unix socket path",
                state_dir.display()
            )));
        }
        if socket.exists() {
            if let Ok(c) = connect(&socket).await {
                if c.version().await.is_ok() {
                    return Err(Error::Start(format!(
                        "a containerd already serves {} (stop it first)",
                        socket.display()
                    )));
                }
            }
        }
        for leftover in [socket.clone(), state_dir.join("containerd.sock.ttrpc")] {
            let _ = std::fs::remove_file(leftover);
        }
        let config = state_dir.join("config.toml");
        std::fs::write(&config, config_toml(&state_dir))
            .map_err(io_err(format!("write {}", config.display())))?;
        let log_path = state_dir.join("containerd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io_err(format!("create {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io_err("clone log handle"))?;
        let bin = std::env::var_os("ESB_CONTAINERD").unwrap_or_else(|| "containerd".into());
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("run {bin:?} (Debian package containerd)")))?;
        let mut me = Containerd {
            child: Some(child),
            socket,
            state_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                me.child = None;
                return Err(Error::Start(format!(
                    "exited with {status}; log:\n{}",
                    tail(&log_path)
                )));
            }
            if me.socket.exists() {
                if let Ok(client) = connect(&me.socket).await {
                    if client.version().await.is_ok() {
                        return Ok(me);
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = me.stop();
                return Err(Error::Start(format!(
                    "no answer on its socket within 30 s; log:\n{}",
                    tail(&log_path)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The containerd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops containerd: SIGTERM, then SIGKILL after 10 s. Idempotent. Containers' shims
    /// are separate processes: delete tasks before stopping.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid; it has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The generated configuration: everything under `dir`, CRI and unused snapshotters off.
pub fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Generated by esb: a private containerd instance.
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
    )
}

/// A client bound to one namespace.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) channel: Channel,
    pub(crate) namespace: String,
}

/// Connects to the containerd at `socket`, namespace [`NAMESPACE`].
pub async fn connect(socket: &Path) -> Result<Client, Error> {
    let channel = containerd_client::connect(socket)
        .await
        .map_err(|e| Error::Connect {
            socket: socket.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(Client {
        channel,
        namespace: NAMESPACE.into(),
    })
}

impl Client {
    /// The same connection, another namespace.
    pub fn with_namespace(&self, namespace: &str) -> Client {
        Client {
            channel: self.channel.clone(),
            namespace: namespace.into(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The underlying gRPC channel, for services this crate does not wrap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, Error> {
        let mut c = VersionClient::new(self.channel.clone());
        let v = c.version(()).await.map_err(rpc("version"))?.into_inner();
        Ok(v.version)
    }

    /// A request carrying the namespace (and the lease, when given).
    pub(crate) fn request<T>(&self, msg: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let md = req.metadata_mut();
        md.insert(
            "containerd-namespace",
            self.namespace.parse().expect("namespace is ascii"),
        );
        if let Some(l) = lease {
            md.insert("containerd-lease", l.parse().expect("lease id is ascii"));
        }
        req
    }
}
