//! One-time join tokens. The text a user copies (`esb1.` + base64url of JSON) carries the
//! control node's endpoint, its WireGuard public key, the CA fingerprint and a secret; the
//! control node keeps only the secret's SHA-256, its expiry and whether it was used
//! (`STATE/cluster/tokens.json`, 0600).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{now_secs, sha256_hex, ClusterError};

const PREFIX: &str = "esb1.";

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// `host:port` of the control node's gateway (where the join goes).
    pub endpoint: String,
    /// The control node's WireGuard UDP port.
    pub wg_port: u16,
    /// Its WireGuard public key (base64).
    pub wg_public_key: String,
    /// `sha256:HEX` of the box CA certificate (DER).
    pub ca_fingerprint: String,
    /// The one-time secret (hex).
    pub secret: String,
}

impl JoinToken {
    /// The text to copy.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("serializable");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses the text.
    pub fn decode(text: &str) -> Result<JoinToken, ClusterError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| ClusterError::BadToken("wrong prefix".into()))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| ClusterError::BadToken(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| ClusterError::BadToken(e.to_string()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    secret_sha256: String,
    expires_at: i64,
    used_at: Option<i64>,
    used_by: Option<String>,
}

/// The control node's tokens.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// The store in `STATE/cluster`.
    pub fn new(cluster_dir: &Path) -> TokenStore {
        TokenStore {
            path: cluster_dir.join("tokens.json"),
        }
    }

    fn load(&self) -> Vec<Entry> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// A new secret valid for `ttl_secs`; returns it (hex) to put in a token.
    pub fn issue(&self, ttl_secs: i64) -> Result<String, ClusterError> {
        let secret = crate::random_hex()?;
        let now = now_secs();
        let mut all = self.load();
        // Forget what expired a day ago.
        all.retain(|e| e.expires_at > now - 86_400);
        all.push(Entry {
            secret_sha256: sha256_hex(secret.as_bytes()),
            expires_at: now + ttl_secs,
            used_at: None,
            used_by: None,
        });
        crate::write_private_json(&self.path, &all)?;
        Ok(secret)
    }

    /// Redeems `secret` for node `by`: once, before it expires.
    pub fn redeem(&self, secret: &str, by: &str) -> Result<(), ClusterError> {
        let now = now_secs();
        let hash = sha256_hex(secret.as_bytes());
        let mut all = self.load();
        let e = all
            .iter_mut()
            .find(|e| e.secret_sha256 == hash)
            .ok_or(ClusterError::UnknownToken)?;
        if e.used_at.is_some() {
            return Err(ClusterError::UsedToken);
        }
        if e.expires_at <= now {
            return Err(ClusterError::ExpiredToken);
        }
        e.used_at = Some(now);
        e.used_by = Some(by.to_string());
        crate::write_private_json(&self.path, &all)
    }

    /// Gives a redeemed secret back (the join failed after the redeem).
    pub fn release(&self, secret: &str) -> Result<(), ClusterError> {
        let hash = sha256_hex(secret.as_bytes());
        let mut all = self.load();
        if let Some(e) = all.iter_mut().find(|e| e.secret_sha256 == hash) {
            e.used_at = None;
            e.used_by = None;
        }
        crate::write_private_json(&self.path, &all)
    }
}

/// Parses a duration like `1h`, `30m`, `90s`, `2d` (seconds).
pub fn parse_ttl(s: &str) -> Result<i64, ClusterError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| ClusterError::Invalid {
        field: "--ttl",
        msg: format!("{s:?} is not a duration (30m, 1h, 2d)"),
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(ClusterError::Invalid {
                field: "--ttl",
                msg: format!("{s:?}: the unit is s, m, h or d"),
            })
        }
    };
    if n <= 0 {
        return Err(ClusterError::Invalid {
            field: "--ttl",
            msg: "must be positive".into(),
        });
    }
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_encode_and_redeem_once() {
        let t = JoinToken {
            endpoint: "192.168.1.10:443".into(),
            wg_port: 51820,
            wg_public_key: "k".into(),
            ca_fingerprint: "sha256:ab".into(),
            secret: "s".into(),
        };
        assert_eq!(JoinToken::decode(&t.encode()).unwrap(), t);
        assert!(JoinToken::decode("esb1.!!").is_err());
        assert!(JoinToken::decode("hello").is_err());

        let d = tempfile::tempdir().unwrap();
        let store = TokenStore::new(d.path());
        let secret = store.issue(3600).unwrap();
        assert!(matches!(
            store.redeem("nope", "n"),
            Err(ClusterError::UnknownToken)
        ));
        store.redeem(&secret, "node-a").unwrap();
        assert!(matches!(
            store.redeem(&secret, "node-b"),
            Err(ClusterError::UsedToken)
        ));
        store.release(&secret).unwrap();
        store.redeem(&secret, "node-b").unwrap();
        let old = store.issue(-1).unwrap();
        assert!(matches!(
            store.redeem(&old, "n"),
            Err(ClusterError::ExpiredToken)
        ));
        let text = std::fs::read_to_string(d.path().join("tokens.json")).unwrap();
        assert!(!text.contains(&secret), "the store keeps hashes only");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(d.path().join("tokens.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0s").is_err());
    }
}
