//! The box's private containerd (`STATE/containerd`: generated config, socket, pid file)
//! and the removal of the workers it still runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon;
use crate::layout::containerd_dir;
use crate::{Error, Result, ResultExt};

/// Whether the containerd at `socket` answers its version call.
pub async fn answers(socket: &Path) -> bool {
    match esb_containerd::connect(socket).await {
        Ok(c) => c.version().await.is_ok(),
        Err(_) => false,
    }
}

/// The box's private containerd: directory, socket and pid file.
#[derive(Debug, Clone)]
pub struct PrivateContainerd {
    /// Its directory (config, root, state, socket, log).
    pub dir: PathBuf,
    /// The containerd program (`ESB_CONTAINERD`, default `containerd`).
    pub program: PathBuf,
}

impl PrivateContainerd {
    /// The private containerd of the box at `state`, run with `program`.
    pub fn of(state: &Path, program: impl Into<PathBuf>) -> PrivateContainerd {
        PrivateContainerd {
            dir: containerd_dir(state),
            program: program.into(),
        }
    }
    /// Its gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
    /// The running instance, if any.
    pub fn running(&self) -> Option<daemon::Tracked> {
        daemon::read_live(&self.pid_file())
    }

    /// Starts it in the background unless it runs; returns its PID.
    pub fn start(&self) -> Result<i32> {
        if let Some(t) = self.running() {
            return Ok(t.pid);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::file("create", &self.dir, e))?;
        let dir = std::fs::canonicalize(&self.dir)?;
        if dir.join("containerd.sock.ttrpc").as_os_str().len() > 107 {
            return Err(Error::StateDirTooLong(dir));
        }
        for stale in ["containerd.sock", "containerd.sock.ttrpc"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, esb_containerd::config_toml(&dir))
            .map_err(|e| Error::file("write", &config, e))?;
        let socket = self.socket();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ready = || socket.exists() && rt.block_on(answers(&socket));
        let t = daemon::spawn_program(
            &self.program.display().to_string(),
            &["--config".into(), config.display().to_string()],
            &self.pid_file(),
            &dir.join("containerd.log"),
            Duration::from_secs(30),
            ready,
        )
        .step("the private containerd did not start (Debian package containerd)")?;
        Ok(t.pid)
    }

    /// Stops it (SIGTERM, then SIGKILL) if it runs; returns the PID it had.
    pub fn stop(&self) -> Result<Option<i32>> {
        daemon::stop(&self.pid_file(), Duration::from_secs(10))
    }
}

/// Destroys every worker the node's containerd runs, through the agent library (so that no
/// task, snapshot or namespace outlives the node); stops at the first failure. Returns how
/// many there were.
pub async fn destroy_workers(
    agent_dir: PathBuf,
    node: esb_runtime_node::NodeConfig,
    containerd_socket: PathBuf,
) -> Result<usize> {
    let cfg = esb_agent::AgentConfig::with_defaults(agent_dir, node, containerd_socket);
    async {
        let agent = esb_agent::Agent::connect(cfg).await?;
        let workers = agent.list().await?;
        for w in &workers {
            agent.destroy(&w.id).await?;
        }
        Ok::<_, esb_agent::AgentError>(workers.len())
    }
    .await
    .step("remove the workers")
}

/// [`destroy_workers`] on a runtime of its own (for synchronous callers).
pub fn destroy_workers_blocking(
    agent_dir: PathBuf,
    node: &esb_runtime_node::NodeConfig,
    containerd_socket: PathBuf,
) -> Result<usize> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(destroy_workers(agent_dir, node.clone(), containerd_socket))
}

/// Destroys what workers the node's containerd still runs, as far as it can (after the
/// agent stopped, while containerd runs): failures are skipped. Returns how many it
/// destroyed.
pub async fn destroy_leftover_workers(
    agent_dir: PathBuf,
    node: esb_runtime_node::NodeConfig,
    containerd_socket: PathBuf,
) -> usize {
    if !containerd_socket.exists() {
        return 0;
    }
    let mut destroyed = 0;
    let cfg = esb_agent::AgentConfig::with_defaults(agent_dir, node, containerd_socket);
    if let Ok(agent) = esb_agent::Agent::connect(cfg).await {
        if let Ok(list) = agent.list().await {
            for w in list {
                if agent.destroy(&w.id).await.is_ok() {
                    destroyed += 1;
                }
            }
        }
    }
    destroyed
}
