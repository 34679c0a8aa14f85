//! The box's credentials file (`STATE/iam/credentials.json`, 0600): one key pair per
//! function revision, with its policy. The box writes it ([`issue`]); S3, DynamoDB and the
//! gateway read it ([`CredentialStore`]), again whenever it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Mode, Policy};

/// One function revision's credentials and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Access key id (`ESBF…`, 20 characters).
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// The function.
    pub function: String,
    /// The function's revision the key was issued for.
    pub revision: String,
    /// Whether the template gave the function any policy (none = everything denied).
    pub has_policy: bool,
    /// What the key may do.
    pub policy: Policy,
    /// Unix seconds after which the key is refused (a replaced revision's key lives on for
    /// the workers that still drain); `None` while the revision is current.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsFile {
    /// How denials are handled.
    pub mode: Mode,
    /// The box's account id (principal ARNs in denials).
    #[serde(default)]
    pub account: String,
    /// Every issued key.
    pub principals: Vec<Principal>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Principal {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| now <= t)
    }
}

/// Reads the file; a missing file is an empty one (enforce, no keys).
pub fn read(path: &Path) -> Result<CredentialsFile, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::File {
            path: path.to_path_buf(),
            message: format!("not a credentials file: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CredentialsFile::default()),
        Err(e) => Err(Error::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

fn write(path: &Path, file: &CredentialsFile) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&serde_json::to_vec_pretty(file).expect("serializable"))
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A function to issue credentials for.
#[derive(Debug, Clone)]
pub struct FunctionGrant {
    /// The function's name.
    pub function: String,
    /// Its current revision.
    pub revision: String,
    /// Whether the template gave it any policy.
    pub has_policy: bool,
    /// Its policy.
    pub policy: Policy,
}

/// Writes the credentials of `functions` into `path`: a revision that already has a live
/// key keeps it (with the policy brought up to date), a new revision gets a new key, and
/// the keys of replaced revisions and removed functions stay valid for `grace` more (for
/// workers that drain), then go. Returns the current key of every function.
pub fn issue(
    path: &Path,
    functions: &[FunctionGrant],
    mode: Mode,
    account: &str,
    grace: Duration,
) -> Result<HashMap<String, Principal>, Error> {
    let now = now_secs();
    let old = read(path)?;
    let mut principals: Vec<Principal> = Vec::new();
    let mut current = HashMap::new();
    for f in functions {
        let kept = old.principals.iter().find(|p| {
            p.function == f.function
                && p.revision == f.revision
                && p.expires_at.is_none()
                && p.live(now)
        });
        let p = Principal {
            access_key: kept
                .map(|p| p.access_key.clone())
                .unwrap_or_else(new_access_key),
            secret_key: kept
                .map(|p| p.secret_key.clone())
                .unwrap_or_else(new_secret_key),
            function: f.function.clone(),
            revision: f.revision.clone(),
            has_policy: f.has_policy,
            policy: f.policy.clone(),
            expires_at: None,
        };
        current.insert(f.function.clone(), p.clone());
        principals.push(p);
    }
    for p in old.principals {
        if principals.iter().any(|c| c.access_key == p.access_key) || !p.live(now) {
            continue;
        }
        let mut p = p;
        p.expires_at = Some(p.expires_at.unwrap_or(now + grace.as_secs()));
        principals.push(p);
    }
    write(
        path,
        &CredentialsFile {
            mode,
            account: account.to_string(),
            principals,
        },
    )?;
    Ok(current)
}

const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// A new access key id: `ESBF` and 16 characters, 20 in all as AWS's.
pub fn new_access_key() -> String {
    format!("ESBF{}", random_string(KEY_ALPHABET, 16))
}

fn new_secret_key() -> String {
    random_string(SECRET_ALPHABET, 40)
}

/// The outcome of [`CredentialStore::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The policy allows it (or `ESB_IAM=off`).
    Allowed,
    /// The policy denies it but `ESB_IAM=warn` lets it through: log the message.
    Warned(String),
    /// Refused: answer AWS's access-denied error with this message.
    Denied(String),
}

/// How often a lookup may look at the file's modification time.
const RECHECK: Duration = Duration::from_millis(500);

struct Loaded {
    modified: Option<SystemTime>,
    checked: Instant,
    mode: Mode,
    account: String,
    by_key: HashMap<String, Arc<Principal>>,
}

/// The credentials file as a service reads it: looked up by access key, read again when
/// it changes (checked at most twice a second).
pub struct CredentialStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// A store reading `path` (which may not exist yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<CredentialStore, Error> {
        let store = CredentialStore {
            path: path.into(),
            loaded: Mutex::new(Loaded {
                modified: None,
                checked: Instant::now() - RECHECK * 2,
                mode: Mode::Enforce,
                account: String::new(),
                by_key: HashMap::new(),
            }),
        };
        store.refresh(true)?;
        Ok(store)
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn refresh(&self, force: bool) -> Result<(), Error> {
        let mut l = self.loaded.lock().expect("credentials lock");
        if !force && l.checked.elapsed() < RECHECK {
            return Ok(());
        }
        l.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if !force && modified == l.modified {
            return Ok(());
        }
        let file = read(&self.path)?;
        l.modified = modified;
        l.mode = file.mode;
        l.account = file.account;
        l.by_key = file
            .principals
            .into_iter()
            .map(|p| (p.access_key.clone(), Arc::new(p)))
            .collect();
        Ok(())
    }

    /// The live principal of `access_key`, if it is a function's key.
    pub fn lookup(&self, access_key: &str) -> Option<Arc<Principal>> {
        // A file that became unreadable keeps the last good view.
        let _ = self.refresh(false);
        let l = self.loaded.lock().expect("credentials lock");
        l.by_key
            .get(access_key)
            .filter(|p| p.live(now_secs()))
            .cloned()
    }

    /// The box's account id (`000000000000` when the file names none).
    pub fn account(&self) -> String {
        let _ = self.refresh(false);
        let account = self
            .loaded
            .lock()
            .expect("credentials lock")
            .account
            .clone();
        if account.is_empty() {
            "000000000000".to_string()
        } else {
            account
        }
    }

    /// The ARN AWS names a function's principal by in denials.
    pub fn principal_arn(&self, p: &Principal) -> String {
        let account = self.account();
        format!(
            "arn:aws:sts::{account}:assumed-role/{f}-role/{f}",
            f = p.function
        )
    }

    /// Decides `access` for principal `p` under the file's mode.
    pub fn authorize(&self, p: &Principal, access: &crate::Access) -> Verdict {
        let mode = self.mode();
        if mode == Mode::Off {
            return Verdict::Allowed;
        }
        let (resource, explicit) = match p.policy.evaluate(&access.action, &access.resources) {
            crate::Decision::Allow => return Verdict::Allowed,
            crate::Decision::ImplicitDeny(r) => (r, false),
            crate::Decision::ExplicitDeny(r) => (r, true),
        };
        let message =
            crate::denial_message(&self.principal_arn(p), &access.action, &resource, explicit);
        match mode {
            Mode::Warn => Verdict::Warned(message),
            _ => Verdict::Denied(message),
        }
    }

    /// [`CredentialStore::authorize`] as a service applies it: a would-be denial under
    /// `warn` and a denial are logged (naming the function); `Err` carries the denial's
    /// message for the service's access-denied error.
    pub fn check(&self, p: &Principal, access: &crate::Access) -> Result<(), String> {
        match self.authorize(p, access) {
            Verdict::Allowed => Ok(()),
            Verdict::Warned(m) => {
                tracing::warn!(function = %p.function, "ESB_IAM=warn lets through: {m}");
                Ok(())
            }
            Verdict::Denied(m) => {
                tracing::info!(function = %p.function, "denied: {m}");
                Err(m)
            }
        }
    }

    /// The mode in the file.
    pub fn mode(&self) -> Mode {
        let _ = self.refresh(false);
        self.loaded.lock().expect("credentials lock").mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(f: &str, rev: &str) -> FunctionGrant {
        FunctionGrant {
            function: f.into(),
            revision: rev.into(),
            has_policy: true,
            policy: Policy::default(),
        }
    }

    #[test]
    fn keys_are_kept_per_revision_rotated_on_change_and_old_ones_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iam/credentials.json");
        let grace = Duration::from_secs(600);
        let first = issue(
            &path,
            &[grant("a", "r1"), grant("b", "r1")],
            Mode::Enforce,
            "000000000000",
            grace,
        )
        .unwrap();
        let a1 = first["a"].access_key.clone();
        assert_eq!(a1.len(), 20);
        assert!(a1.starts_with("ESBF"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let store = CredentialStore::open(&path).unwrap();
        assert_eq!(store.lookup(&a1).unwrap().function, "a");
        assert!(store.lookup("AKIANOTAKEY").is_none());
        let p = store.lookup(&a1).unwrap();
        let access = crate::Access::new("s3:GetObject", "arn:aws:s3:::b/k");
        match store.authorize(&p, &access) {
            Verdict::Denied(m) => assert_eq!(
                m,
                "User: arn:aws:sts::000000000000:assumed-role/a-role/a is not authorized to perform: s3:GetObject on resource: arn:aws:s3:::b/k because no identity-based policy allows the s3:GetObject action"
            ),
            other => panic!("{other:?}"),
        }

        // Same revision: same key. New revision of a: new key; the old one has a deadline.
        let again = issue(
            &path,
            &[grant("a", "r1"), grant("b", "r1")],
            Mode::Enforce,
            "000000000000",
            grace,
        )
        .unwrap();
        assert_eq!(again["a"].access_key, a1);
        let next = issue(
            &path,
            &[grant("a", "r2")],
            Mode::Warn,
            "000000000000",
            grace,
        )
        .unwrap();
        assert_ne!(next["a"].access_key, a1);
        let file = read(&path).unwrap();
        assert_eq!(file.mode, Mode::Warn);
        let old = file.principals.iter().find(|p| p.access_key == a1).unwrap();
        assert!(old.expires_at.is_some());
        let b_old = file.principals.iter().find(|p| p.function == "b").unwrap();
        assert!(
            b_old.expires_at.is_some(),
            "a removed function's key expires"
        );

        // An expired key is refused and dropped at the next issue.
        let mut file = read(&path).unwrap();
        for p in &mut file.principals {
            if p.access_key == a1 {
                p.expires_at = Some(1);
            }
        }
        write(&path, &file).unwrap();
        let store = CredentialStore::open(&path).unwrap();
        assert!(store.lookup(&a1).is_none());
        assert_eq!(store.mode(), Mode::Warn);
        issue(
            &path,
            &[grant("a", "r2")],
            Mode::Enforce,
            "000000000000",
            grace,
        )
        .unwrap();
        assert!(!read(&path)
            .unwrap()
            .principals
            .iter()
            .any(|p| p.access_key == a1));
    }
}
