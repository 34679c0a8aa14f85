//! Named network namespaces, following iproute2's `ip netns` convention.
//!
//! A named namespace is a bind mount of a namespace file at `/run/netns/NAME`, so
//! `ip netns list` shows it and `ip netns exec NAME …` enters it. This crate creates and
//! removes such namespaces natively (no `ip` process on the hot path), and runs code inside
//! one: a socket keeps the namespace of the thread that created it, so a process can listen
//! in the node namespace while it dials backends from the namespace it started in
//! (`NetNs::run`). [`NetNs::enter_on_exec`] places a child process in the namespace.
//!
//! Everything here needs `CAP_SYS_ADMIN` (root).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces live (iproute2's convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors from namespace operations; each names the namespace and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The name is empty, too long or holds characters a file name cannot.
    #[error("invalid network namespace name {0:?}: use 1-64 characters from [A-Za-z0-9_.-]")]
    InvalidName(String),
    /// No namespace of that name exists.
    #[error("network namespace {0:?} does not exist")]
    NotFound(String),
    /// A system call failed.
    #[error("network namespace {name:?}: {step}: {source}")]
    Sys {
        /// Namespace name.
        name: String,
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn sys(name: &str, step: &'static str, source: impl Into<io::Error>) -> NetNsError {
    NetNsError::Sys {
        name: name.to_string(),
        step,
        source: source.into(),
    }
}

/// Checks a namespace name: what `ip netns` accepts, restricted to a safe character set.
pub fn validate_name(name: &str) -> Result<(), NetNsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetNsError::InvalidName(name.to_string()))
    }
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    /// Path of the named namespace `name` (whether or not it exists).
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// Whether a named namespace exists.
    pub fn exists(name: &str) -> bool {
        validate_name(name).is_ok() && is_nsfs_mount(&Self::path_of(name))
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<NetNs, NetNsError> {
        validate_name(name)?;
        let path = Self::path_of(name);
        if !is_nsfs_mount(&path) {
            return Err(NetNsError::NotFound(name.to_string()));
        }
        let file = File::open(&path).map_err(|e| sys(name, "open", e))?;
        Ok(NetNs {
            name: name.to_string(),
            file,
        })
    }

    /// The namespace of the calling thread (to come back to, or to hand to helpers).
    pub fn current() -> Result<NetNs, NetNsError> {
        let file =
            File::open("/proc/thread-self/ns/net").map_err(|e| sys("<current>", "open", e))?;
        Ok(NetNs {
            name: "<current>".into(),
            file,
        })
    }

    /// Creates the named namespace `name`, or opens it when it already exists.
    ///
    /// Returns the handle and whether it was created now.
    pub fn create(name: &str) -> Result<(NetNs, bool), NetNsError> {
        validate_name(name)?;
        if Self::exists(name) {
            return Ok((Self::open(name)?, false));
        }
        ensure_run_dir(name)?;
        let path = Self::path_of(name);
        // The mount point: an empty file, as iproute2 makes it.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| sys(name, "create mount point", e))?;
        let target = path.clone();
        let owned = name.to_string();
        // unshare() changes the calling thread only: do it on a throwaway thread.
        let made = std::thread::spawn(move || -> Result<(), NetNsError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| sys(&owned, "unshare", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| sys(&owned, "bind mount", e))?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(sys(name, "thread", io::Error::other("panicked"))));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok((Self::open(name)?, true))
    }

    /// Removes the named namespace `name`; a namespace that does not exist is not an error.
    ///
    /// Returns whether something was removed. The namespace itself lives on while a
    /// process or socket still holds it, as with `ip netns del`.
    pub fn delete(name: &str) -> Result<bool, NetNsError> {
        validate_name(name)?;
        let path = Self::path_of(name);
        let mounted = is_nsfs_mount(&path);
        if mounted {
            umount2(&path, MntFlags::MNT_DETACH).map_err(|e| sys(name, "unmount", e))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(mounted),
            Err(e) => Err(sys(name, "remove mount point", e)),
        }
    }

    /// Names of all named namespaces.
    pub fn list() -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| Self::exists(n))
            .collect();
        names.sort();
        names
    }

    /// The namespace's name (`<current>` for [`NetNs::current`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a helper thread that has entered this namespace, and returns its result.
    ///
    /// Sockets created by `f` stay in this namespace for their whole life, wherever they
    /// are used afterwards. Files under `/proc/sys/net` opened by `f` are this namespace's.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|e| sys(&self.name, "setns", e))?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| Err(sys(&self.name, "thread", io::Error::other("panicked"))))
        })
    }

    /// Makes `cmd` start inside this namespace (setns between fork and exec).
    ///
    /// The handle must outlive the spawn of `cmd`.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.file.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Writes a sysctl of this namespace, e.g. `net/ipv4/conf/all/route_localnet`.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetNsError> {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::write(&path, value))?
            .map_err(|e| sys(&self.name, "write sysctl", e))
    }

    /// Reads a sysctl of this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String, NetNsError> {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_string())
            .map_err(|e| sys(&self.name, "read sysctl", e))
    }
}

/// Makes /run/netns a shared mount point, as iproute2 does, so that namespace mounts made
/// here propagate to other mount namespaces (and theirs to us).
fn ensure_run_dir(name: &str) -> Result<(), NetNsError> {
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(|e| sys(name, "create /run/netns", e))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .is_ok()
    {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself, then make it shared.
    mount(
        Some(NETNS_RUN_DIR),
        NETNS_RUN_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| sys(name, "bind /run/netns", e))?;
    mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| sys(name, "make /run/netns shared", e))
}

/// Whether `path` is a namespace file mount (nsfs), i.e. a live named namespace.
fn is_nsfs_mount(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type() == nix::sys::statfs::FsType(NSFS_MAGIC as _),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("esb-node").is_ok());
        assert!(validate_name("w_1.a").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_namespace_is_not_found() {
        assert!(matches!(
            NetNs::open("esb-surely-not-there"),
            Err(NetNsError::NotFound(_))
        ));
        assert!(!NetNs::exists("esb-surely-not-there"));
    }
}
