//! Joining a box: the token redeemed with the control node (over its gateway, the CA pinned
//! by the token), the node's identity kept in `STATE/cluster/node.json` and `STATE/tls`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use esb_box::layout::{cluster_dir, tls_dir, wg_key_file};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a compute node needs to join and run (plain settings; the CLI fills them in).
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The node's state directory (absolute).
    pub state: PathBuf,
    /// This node's id (default: the host name).
    pub node_id: Option<String>,
    /// WireGuard UDP port of this node.
    pub wg_port: u16,
    /// Memory the workers of this node may use (MiB; 0 = no limit).
    pub max_memory_mb: u32,
    /// The node network's settings for this state directory (the worker subnet is
    /// replaced by the one the control node gives).
    pub node: esb_runtime_node::NodeConfig,
    /// The `esb` executable the components run as.
    pub esb: PathBuf,
    /// The containerd program.
    pub containerd: PathBuf,
}

/// What a node keeps of its join (`STATE/cluster/node.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    /// Its record on the control node.
    pub node: esb_cluster::NodeRecord,
    /// The control node's WireGuard address (10.99.0.1).
    pub control_host: Ipv4Addr,
    /// Where the control node's WireGuard listens.
    pub control_wg_endpoint: String,
    /// Its public key.
    pub control_wg_public_key: String,
    /// The control node's gateway, as the token named it.
    pub control_endpoint: String,
    /// Credentials and region for workers.
    pub credentials: (String, String, String),
    /// Its secret for leaving (hex).
    #[serde(default)]
    pub leave_secret: String,
}

/// Where a node keeps its join.
pub fn joined_file(state: &Path) -> PathBuf {
    cluster_dir(state).join("node.json")
}

/// The node's join as it was kept, if any.
pub fn read_joined(state: &Path) -> Option<Joined> {
    std::fs::read(joined_file(state))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// With a token: joins the box it names (refused when this state directory joined one
/// already). Without: the join kept from before (to restart the node).
pub fn load_or_redeem(cfg: &JoinConfig, token: Option<&str>) -> Result<Joined> {
    match token {
        Some(text) => redeem(cfg, text),
        None => {
            let bytes =
                std::fs::read(joined_file(&cfg.state)).map_err(|source| Error::NotJoined {
                    state: cfg.state.clone(),
                    source,
                })?;
            Ok(serde_json::from_slice(&bytes)?)
        }
    }
}

fn redeem(cfg: &JoinConfig, text: &str) -> Result<Joined> {
    let state = &cfg.state;
    if joined_file(state).exists() {
        return Err(Error::AlreadyJoined(state.clone()));
    }
    let token = esb_cluster::JoinToken::decode(text)?;
    let id = cfg
        .node_id
        .clone()
        .unwrap_or_else(esb_box::cluster::host_name);
    esb_cluster::registry::validate_node_id(&id)?;
    let key = esb_wireguard::ensure_private_key(&wg_key_file(state))?;
    let req = esb_cluster::JoinRequest {
        secret: token.secret.clone(),
        node_id: id,
        wg_public_key: key.public().to_base64(),
        wg_port: cfg.wg_port,
        clock: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        max_memory_mb: cfg.max_memory_mb,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(esb_cluster::join::join(&token, &req))?;
    if answer.control_wg_public_key != token.wg_public_key {
        return Err(Error::WrongControlKey);
    }
    let host = token
        .endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| token.endpoint.clone());
    let t = tls_dir(state);
    std::fs::create_dir_all(&t)?;
    write_private(&t.join(esb_pki::CA_FILE), &answer.ca_pem, false)?;
    write_private(&t.join("node.pem"), &answer.node_cert_pem, false)?;
    write_private(&t.join("node.key"), &answer.node_key_pem, true)?;
    let joined = Joined {
        control_host: answer.control_host.parse().map_err(Error::ControlHost)?,
        control_wg_endpoint: format!("{host}:{}", answer.control_wg_port),
        control_wg_public_key: answer.control_wg_public_key,
        control_endpoint: token.endpoint,
        credentials: answer.credentials,
        leave_secret: answer.leave_secret,
        node: answer.node,
    };
    std::fs::create_dir_all(cluster_dir(state))?;
    write_private(
        &joined_file(state),
        &serde_json::to_string_pretty(&joined)?,
        true,
    )?;
    Ok(joined)
}

/// Writes `text` to `path` atomically, mode 0600 when `private` (esb-pki's writer).
fn write_private(path: &Path, text: &str, private: bool) -> Result<()> {
    esb_pki::write_atomic(path, text, private).map_err(|e| Error::File {
        action: "write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config(state: &Path) -> JoinConfig {
        JoinConfig {
            state: state.to_path_buf(),
            node_id: Some("node-a".into()),
            wg_port: 51820,
            max_memory_mb: 0,
            node: esb_runtime_node::NodeConfig::with_defaults(state.join("node/esb-node")),
            esb: "/usr/local/bin/esb".into(),
            containerd: "containerd".into(),
        }
    }

    #[test]
    fn a_node_without_a_join_says_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_or_redeem(&config(dir.path()), None).unwrap_err();
        assert!(matches!(e, Error::NotJoined { .. }), "{e:?}");
        assert!(e.to_string().contains("esb node token"), "{e}");
    }

    #[test]
    fn a_second_join_is_refused_before_any_network_call() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(cluster_dir(dir.path())).unwrap();
        std::fs::write(joined_file(dir.path()), "{}").unwrap();
        let e = load_or_redeem(&config(dir.path()), Some("esb1.whatever")).unwrap_err();
        assert!(matches!(e, Error::AlreadyJoined(_)), "{e:?}");
        assert!(e.to_string().contains("esb node leave"), "{e}");
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.key");
        write_private(&p, "k", true).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
