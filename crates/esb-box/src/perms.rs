//! Who may read the state directory: only its owner. The box process runs with umask 077
//! (so what it and its components create is 0600/0700), and every start tightens what an
//! older version, or another umask, left readable to others.
//!
//! Left as they are: containerd's own tree (image snapshots keep the modes their layers
//! give, which workers running as another user need; containerd sets its own directory
//! modes) and the CA certificate (public, bind-mounted into workers); both sit inside the
//! 0700 state directory, so no other host user reaches them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::layout::{containerd_dir, tls_dir};
use crate::{Error, Result};

/// The umask of the box process and its components.
pub const BOX_UMASK: u32 = 0o077;
/// The umask containerd runs with (its snapshots must keep their layers' modes).
pub const CONTAINERD_UMASK: u32 = 0o022;

/// Sets this process's umask to [`BOX_UMASK`] (inherited by every child).
pub fn restrict_umask() {
    // SAFETY: umask(2) only changes this process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(BOX_UMASK as libc::mode_t);
    }
}

/// Makes the state directory 0700 and takes group and other permissions off everything
/// under it (directories 0700, files 0600, owner's execute bit kept), except containerd's
/// tree and the public certificates of `STATE/tls`. Returns how many entries changed.
pub fn secure_state(state: &Path) -> Result<usize> {
    let skip = [containerd_dir(state)];
    let tls = tls_dir(state);
    let mut changed = 0;
    let mut stack = vec![state.to_path_buf()];
    while let Some(dir) = stack.pop() {
        changed += tighten(&dir)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::file("read", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::file("read", &dir, e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| Error::file("stat", &path, e))?;
            if kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                if !skip.contains(&path) {
                    stack.push(path);
                }
                continue;
            }
            if dir == tls && is_public_cert(&path) {
                continue;
            }
            changed += tighten(&path)?;
        }
    }
    Ok(changed)
}

/// A certificate (not a key) of `STATE/tls`: public by nature.
fn is_public_cert(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "pem")
}

/// Takes group and other bits off one entry; 1 when it changed.
fn tighten(path: &Path) -> Result<usize> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        // Removed meanwhile (a component's temporary file).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::file("stat", path, e)),
    };
    let mode = meta.permissions().mode() & 0o7777;
    let want = mode & 0o700;
    if want == mode {
        return Ok(0);
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(want)) {
        Ok(()) => Ok(1),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::file("restrict the permissions of", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn state_is_owner_only_but_for_containerd_and_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        for d in ["s3", "tls", "containerd/root", "logs"] {
            std::fs::create_dir_all(s.join(d)).unwrap();
            set(&s.join(d), 0o755);
        }
        for (f, m) in [
            ("s3/index.redb", 0o644),
            ("secrets.toml", 0o644),
            ("tls/ca.pem", 0o644),
            ("tls/ca.key", 0o640),
            ("containerd/root/file", 0o644),
            ("logs/box.log", 0o664),
            ("tool", 0o755),
        ] {
            std::fs::write(s.join(f), "x").unwrap();
            set(&s.join(f), m);
        }
        set(s, 0o755);
        assert!(secure_state(s).unwrap() > 0);
        assert_eq!(mode(s), 0o700);
        assert_eq!(mode(&s.join("s3")), 0o700);
        assert_eq!(mode(&s.join("s3/index.redb")), 0o600);
        assert_eq!(mode(&s.join("secrets.toml")), 0o600);
        assert_eq!(mode(&s.join("tls/ca.key")), 0o600);
        assert_eq!(mode(&s.join("logs/box.log")), 0o600);
        assert_eq!(mode(&s.join("tool")), 0o700);
        assert_eq!(mode(&s.join("tls/ca.pem")), 0o644);
        assert_eq!(mode(&s.join("containerd/root/file")), 0o644);
        assert_eq!(secure_state(s).unwrap(), 0, "nothing left to change");
    }
}
