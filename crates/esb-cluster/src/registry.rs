//! The control node's record of compute nodes (`STATE/cluster/nodes.json`, 0600): each
//! node's id, number N (its WireGuard address 10.99.0.N and worker subnet 10.88.N.0/24),
//! WireGuard public key and endpoint. A node that joins again with the same id and key keeps
//! its number; another key under a taken id is refused.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{now_secs, ClusterError};

/// A compute node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (`--node-id`, default the host name).
    pub id: String,
    /// Its number N (2..=254; 1 is the control node).
    pub number: u8,
    /// WireGuard public key (base64).
    pub wg_public_key: String,
    /// Where its WireGuard listens, as the control node saw it.
    pub wg_endpoint: Option<SocketAddr>,
    /// When it joined (Unix seconds).
    pub joined_at: i64,
    /// Memory its workers may use (MiB; 0 = unlimited).
    #[serde(default)]
    pub max_memory_mb: u32,
}

impl NodeRecord {
    /// 10.99.0.N.
    pub fn wg_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, self.number)
    }
    /// 10.88.N.0/24.
    pub fn cni_subnet(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, 88, self.number, 0), 24).expect("a /24")
    }
    /// The AllowedIPs of the node as the control node's peer: its address and workers.
    pub fn allowed_ips(&self) -> Vec<String> {
        vec![
            format!("{}/32", self.wg_address()),
            self.cni_subnet().to_string(),
        ]
    }
}

/// Checks a node id: 1-40 of lower-case letters, digits and '-' (it names namespaces and
/// certificates).
pub fn validate_node_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid {
            field: "--node-id",
            msg: format!("{id:?}: 1-40 of lower-case letters, digits and '-'"),
        })
    }
}

/// The registry file.
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
}

impl Registry {
    /// The registry in `STATE/cluster`.
    pub fn new(cluster_dir: &Path) -> Registry {
        Registry {
            path: cluster_dir.join("nodes.json"),
        }
    }

    /// Every node, by number.
    pub fn list(&self) -> Vec<NodeRecord> {
        let mut v: Vec<NodeRecord> = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        v.sort_by_key(|n| n.number);
        v
    }

    /// Admits node `id` with its key (and memory limit for workers): the existing record when it joined before with the
    /// same key, a new number otherwise. `reserved` numbers are never given (the control's
    /// own worker subnet 10.88.R.0/24).
    pub fn admit(
        &self,
        id: &str,
        wg_public_key: &str,
        wg_endpoint: Option<SocketAddr>,
        max_memory_mb: u32,
        reserved: &[u8],
    ) -> Result<NodeRecord, ClusterError> {
        validate_node_id(id)?;
        let mut all = self.list();
        if let Some(n) = all.iter_mut().find(|n| n.id == id) {
            if n.wg_public_key != wg_public_key {
                return Err(ClusterError::IdTaken(id.to_string()));
            }
            n.wg_endpoint = wg_endpoint.or(n.wg_endpoint);
            n.max_memory_mb = max_memory_mb;
            let n = n.clone();
            crate::write_private_json(&self.path, &all)?;
            return Ok(n);
        }
        if all.iter().any(|n| n.wg_public_key == wg_public_key) {
            return Err(ClusterError::Invalid {
                field: "wg_public_key",
                msg: "another node joined with this key".into(),
            });
        }
        let number = (2..=254u8)
            .find(|k| !reserved.contains(k) && !all.iter().any(|n| n.number == *k))
            .ok_or(ClusterError::Full)?;
        let rec = NodeRecord {
            id: id.to_string(),
            number,
            wg_public_key: wg_public_key.to_string(),
            wg_endpoint,
            joined_at: now_secs(),
            max_memory_mb,
        };
        all.push(rec.clone());
        crate::write_private_json(&self.path, &all)?;
        Ok(rec)
    }

    /// Forgets a node (and its leave secret); true when it was there.
    pub fn remove(&self, id: &str) -> Result<bool, ClusterError> {
        let mut all = self.list();
        let before = all.len();
        all.retain(|n| n.id != id);
        if all.len() != before {
            crate::write_private_json(&self.path, &all)?;
        }
        let mut secrets = self.secrets();
        if secrets.remove(id).is_some() {
            crate::write_private_json(&self.secrets_path(), &secrets)?;
        }
        Ok(all.len() != before)
    }

    /// `node-secrets.json`: the SHA-256 of each node's leave secret, by id.
    fn secrets_path(&self) -> PathBuf {
        self.path.with_file_name("node-secrets.json")
    }

    fn secrets(&self) -> std::collections::BTreeMap<String, String> {
        std::fs::read(self.secrets_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// A new secret with which node `id` proves itself when it leaves (only its hash is
    /// kept; a join again replaces it).
    pub fn issue_leave_secret(&self, id: &str) -> Result<String, ClusterError> {
        let secret = crate::random_hex()?;
        let mut secrets = self.secrets();
        secrets.insert(id.to_string(), crate::sha256_hex(secret.as_bytes()));
        crate::write_private_json(&self.secrets_path(), &secrets)?;
        Ok(secret)
    }

    /// The record of node `id` if `secret` is its leave secret.
    pub fn check_leave_secret(&self, id: &str, secret: &str) -> Result<NodeRecord, ClusterError> {
        let node = self
            .list()
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ClusterError::UnknownNode(id.to_string()))?;
        // Hashes are compared: how long that takes tells nothing of the secret.
        let want = self.secrets().get(id).cloned().unwrap_or_default();
        if want.is_empty() || want != crate::sha256_hex(secret.as_bytes()) {
            return Err(ClusterError::NodeSecret(id.to_string()));
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_given_once_and_ids_belong_to_one_key() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::new(d.path());
        let a = r.admit("node-a", "KA", None, 0, &[1, 2]).unwrap();
        assert_eq!(a.number, 3);
        assert_eq!(a.wg_address(), Ipv4Addr::new(10, 99, 0, 3));
        assert_eq!(a.cni_subnet().to_string(), "10.88.3.0/24");
        assert_eq!(a.allowed_ips(), ["10.99.0.3/32", "10.88.3.0/24"]);
        let b = r.admit("node-b", "KB", None, 512, &[1, 2]).unwrap();
        assert_eq!(b.number, 4);
        // The same node again keeps its number; another key under its id is refused.
        let ep: SocketAddr = "192.168.1.5:51820".parse().unwrap();
        assert_eq!(
            r.admit("node-a", "KA", Some(ep), 0, &[1, 2])
                .unwrap()
                .number,
            3
        );
        assert_eq!(r.list()[0].wg_endpoint, Some(ep));
        assert!(matches!(
            r.admit("node-a", "KX", None, 0, &[1, 2]),
            Err(ClusterError::IdTaken(_))
        ));
        assert!(r.admit("node-c", "KA", None, 0, &[1, 2]).is_err());
        assert!(r.admit("Bad_Id", "KC", None, 0, &[]).is_err());
        // Leaving takes the node's own secret.
        let secret = r.issue_leave_secret("node-a").unwrap();
        assert_eq!(r.check_leave_secret("node-a", &secret).unwrap().number, 3);
        assert!(matches!(
            r.check_leave_secret("node-a", "0000"),
            Err(ClusterError::NodeSecret(_))
        ));
        assert!(matches!(
            r.check_leave_secret("node-b", &secret),
            Err(ClusterError::NodeSecret(_))
        ));
        assert!(matches!(
            r.check_leave_secret("node-x", &secret),
            Err(ClusterError::UnknownNode(_))
        ));
        assert!(r.remove("node-a").unwrap());
        assert!(!r.remove("node-a").unwrap());
        assert!(matches!(
            r.check_leave_secret("node-a", &secret),
            Err(ClusterError::UnknownNode(_))
        ));
        assert_eq!(r.admit("node-c", "KC", None, 0, &[1, 2]).unwrap().number, 3);
    }
}
