//! Where the box keeps things under its state directory (`STATE`). Shared by the control
//! box, a compute node and the CLI, so that every reader finds what a writer put.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `STATE/run`: pid files, status, admin socket.
pub fn run_dir(state: &Path) -> PathBuf {
    state.join("run")
}
/// The box (or compute node) process's pid file.
pub fn box_pid_file(state: &Path) -> PathBuf {
    run_dir(state).join("box.pid")
}
/// The box's exclusive lock.
pub fn box_lock_file(state: &Path) -> PathBuf {
    run_dir(state).join("box.lock")
}
/// The status the box keeps current (`esb status` reads it).
pub fn status_file(state: &Path) -> PathBuf {
    run_dir(state).join("box.json")
}
/// How the last start went: its warnings and, after a failed start, why
/// ([`crate::status::StartReport`]).
pub fn start_report_file(state: &Path) -> PathBuf {
    run_dir(state).join("start.json")
}
/// The gateway's admin socket.
pub fn gateway_admin_socket(state: &Path) -> PathBuf {
    run_dir(state).join("gateway.sock")
}
/// The functions' key pairs and policies (0600; docs/iam.md).
pub fn iam_file(state: &Path) -> PathBuf {
    state.join("iam").join("credentials.json")
}
/// Function name -> image manifest digest of the last build.
pub fn revisions_file(state: &Path) -> PathBuf {
    run_dir(state).join("revisions.json")
}
/// Where `esb gateway` records the outcome of each SIGHUP reload (next to its revisions
/// file).
pub fn reload_outcome_file(revisions: &Path) -> PathBuf {
    revisions.with_file_name("gateway-reload.json")
}
/// The file a component writes once it is ready (`proxy`, `relay`, `wireguard`).
pub fn ready_file(state: &Path, name: &str) -> PathBuf {
    run_dir(state).join(format!("{name}.ready"))
}
/// The WireGuard service's status (each peer's handshake age and traffic).
pub fn wg_status_file(state: &Path) -> PathBuf {
    run_dir(state).join("wg.json")
}
/// The pid file of a component.
pub fn component_pid_file(state: &Path, name: &str) -> PathBuf {
    if name == "containerd" {
        // Shared with `esb node up`'s private containerd.
        return containerd_dir(state).join("containerd.pid");
    }
    run_dir(state).join(format!("{name}.pid"))
}
/// The log file of a component (or of the box itself).
pub fn log_file(state: &Path, name: &str) -> PathBuf {
    state.join("logs").join(format!("{name}.log"))
}
/// The hosts file the local proxy resolves backend names with first.
pub fn hosts_file(state: &Path) -> PathBuf {
    state.join("hosts")
}
/// The agent's gRPC socket.
pub fn agent_socket(state: &Path) -> PathBuf {
    state.join("agent.sock")
}
/// The agent's own state (worker logs, pulls).
pub fn agent_dir(state: &Path) -> PathBuf {
    state.join("agent")
}
/// The private containerd's directory (config, root, state, socket, log).
pub fn containerd_dir(state: &Path) -> PathBuf {
    state.join("containerd")
}
/// The private containerd's gRPC socket.
pub fn containerd_socket(state: &Path) -> PathBuf {
    containerd_dir(state).join("containerd.sock")
}
/// containerd's hosts directory of this host: how its agent reaches and trusts registries.
pub fn hosts_dir(state: &Path) -> esb_registry::HostsDir {
    esb_registry::HostsDir::new(containerd_dir(state).join("certs.d"))
}
/// The box CA and the certificates it issued.
pub fn tls_dir(state: &Path) -> PathBuf {
    state.join("tls")
}
/// The box CA clients trust.
pub fn ca_file(state: &Path) -> PathBuf {
    tls_dir(state).join(esb_pki::CA_FILE)
}
/// Where the box builds images.
pub fn build_dir(state: &Path) -> PathBuf {
    state.join("build")
}
/// The registry's configuration and storage (`STATE/registry`, certificate in `STATE/tls`).
pub fn registry_server(state: &Path, listen: SocketAddr) -> esb_registry::ServerConfig {
    esb_registry::ServerConfig {
        dir: state.join("registry"),
        listen,
        cert: tls_dir(state).join("registry.pem"),
        key: tls_dir(state).join("registry.key"),
    }
}
/// `STATE/cluster`: tokens, nodes, node certificates (and a compute node's `node.json`).
pub fn cluster_dir(state: &Path) -> PathBuf {
    state.join("cluster")
}
/// This machine's WireGuard private key.
pub fn wg_key_file(state: &Path) -> PathBuf {
    state.join("wg/private.key")
}
/// The interface file of `esb wireguard`.
pub fn wg_file(state: &Path) -> PathBuf {
    state.join("wg/wg0.json")
}
/// The gateway's agents file (remote agents, one per line).
pub fn agents_file(state: &Path) -> PathBuf {
    cluster_dir(state).join("agents")
}
/// The join exchange's socket (the gateway forwards `/esb/v1/nodes/` to it).
pub fn cluster_socket(state: &Path) -> PathBuf {
    run_dir(state).join("cluster.sock")
}
/// The gateway's client certificate for agents (certificate, key).
pub fn gateway_client_cert(state: &Path) -> (PathBuf, PathBuf) {
    let tls = tls_dir(state);
    (
        tls.join("gateway-client.pem"),
        tls.join("gateway-client.key"),
    )
}
/// Pid file of the local proxy of a node started by `esb node up` (`node_state` is
/// `STATE/node/NETNS`).
pub fn proxy_pid_file(node_state: &Path) -> PathBuf {
    node_state.join("proxy.pid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_state_directory() {
        let s = Path::new("/var/lib/esb");
        assert_eq!(box_pid_file(s), Path::new("/var/lib/esb/run/box.pid"));
        assert_eq!(status_file(s), Path::new("/var/lib/esb/run/box.json"));
        assert_eq!(
            log_file(s, "gateway"),
            Path::new("/var/lib/esb/logs/gateway.log")
        );
        assert_eq!(
            component_pid_file(s, "gateway"),
            Path::new("/var/lib/esb/run/gateway.pid")
        );
        // containerd's pid file is the one `esb node up` uses too.
        assert_eq!(
            component_pid_file(s, "containerd"),
            Path::new("/var/lib/esb/containerd/containerd.pid")
        );
        assert_eq!(
            reload_outcome_file(&revisions_file(s)),
            Path::new("/var/lib/esb/run/gateway-reload.json")
        );
        assert_eq!(
            hosts_dir(s).path(),
            Path::new("/var/lib/esb/containerd/certs.d")
        );
        assert_eq!(
            cluster_socket(s),
            Path::new("/var/lib/esb/run/cluster.sock")
        );
        assert_eq!(
            ca_file(s),
            Path::new("/var/lib/esb/tls").join(esb_pki::CA_FILE)
        );
    }
}
