//! `esb trust`: the box CA in the system's trust store, Debian's way: a PEM file under
//! `/usr/local/share/ca-certificates/` and `update-ca-certificates`, so that curl,
//! OpenSSL-based tools and Python's `ssl` default context accept the gateway's
//! certificate without `--cacert`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// Where Debian's `update-ca-certificates` takes local CAs from.
pub const LOCAL_CA_DIR: &str = "/usr/local/share/ca-certificates";

/// The file name of the box CA in [`LOCAL_CA_DIR`] (`.crt`, as the tool requires).
pub const TRUSTED_NAME: &str = "esb-box-ca.crt";

/// What [`install`] or [`remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The CA was written to this path and the store rebuilt.
    Installed(PathBuf),
    /// The same CA was there already (the store was rebuilt anyway).
    AlreadyTrusted(PathBuf),
    /// The CA was removed from this path and the store rebuilt.
    Removed(PathBuf),
    /// There was nothing to remove.
    NotTrusted,
}

/// Puts the CA at `ca` (the box's `tls/ca.pem`) into the trust store under `dir` (normally
/// [`LOCAL_CA_DIR`]) and runs `update-ca-certificates`.
pub fn install(ca: &Path, dir: &Path) -> Result<Trust> {
    // A CA that parses (the box made one: `esb up` ran).
    esb_pki::ca_fingerprint(ca.parent().unwrap_or(Path::new(".")))
        .map_err(|e| Error::NoBoxCa(ca.to_path_buf(), e))?;
    let pem = std::fs::read(ca).map_err(|source| Error::File {
        action: "read the box CA",
        path: ca.to_path_buf(),
        source,
    })?;
    std::fs::create_dir_all(dir).map_err(|source| Error::File {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let target = dir.join(TRUSTED_NAME);
    let same = std::fs::read(&target).is_ok_and(|old| old == pem);
    if !same {
        write_readable(&target, &pem)?;
    }
    update_store(false)?;
    Ok(if same {
        Trust::AlreadyTrusted(target)
    } else {
        Trust::Installed(target)
    })
}

/// Takes the box CA out of the trust store under `dir` and runs `update-ca-certificates
/// --fresh` (so its link in /etc/ssl/certs goes too).
pub fn remove(dir: &Path) -> Result<Trust> {
    let target = dir.join(TRUSTED_NAME);
    match std::fs::remove_file(&target) {
        Ok(()) => {
            update_store(true)?;
            Ok(Trust::Removed(target))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Trust::NotTrusted),
        Err(source) => Err(Error::File {
            action: "remove",
            path: target,
            source,
        }),
    }
}

/// Writes `bytes` to `path` with mode 0644 (a CA is public; the tool reads it as root but
/// other readers of the store may not be), atomically.
fn write_readable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("crt.tmp");
    let io = |source| Error::File {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn update_store(fresh: bool) -> Result<()> {
    let mut cmd = Command::new("update-ca-certificates");
    if fresh {
        cmd.arg("--fresh");
    }
    let out = cmd.output().map_err(|source| Error::Spawn {
        component: "update-ca-certificates (Debian's ca-certificates package)".into(),
        program: PathBuf::from("update-ca-certificates"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Exited {
            program: "update-ca-certificates".into(),
            status: out.status.to_string(),
            tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}
