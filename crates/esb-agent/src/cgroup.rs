//! Resource figures of a worker, read from its cgroup (v2 unified or v1 controllers).

use std::path::{Path, PathBuf};

/// Figures read from a cgroup; `None` where the file is missing (task gone).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupFigures {
    /// Memory in use (bytes).
    pub memory_current: Option<u64>,
    /// Memory limit (bytes).
    pub memory_max: Option<u64>,
    /// Processes killed by the OOM killer.
    pub oom_kills: Option<u64>,
    /// CPU time used (ns).
    pub cpu_usage_ns: Option<u64>,
}

fn read_u64(path: PathBuf) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

fn read_key(path: PathBuf, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// Whether the machine runs the unified hierarchy (cgroup v2).
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// Whether cgroup v1 accounts swap (memory.memsw.*): only then can swap be pinned.
pub fn swap_accounting(root: &Path) -> bool {
    is_v2(root) || root.join("memory/memory.memsw.limit_in_bytes").exists()
}

/// Makes `rel` (the parent of all workers, e.g. `/esb-runtime`) and sets the ceilings of
/// all workers together: `memory_mb` MiB of memory and `pids` processes.
pub fn set_ceiling(root: &Path, rel: &str, memory_mb: u64, pids: u64) -> Result<(), String> {
    let rel = rel.trim_start_matches('/');
    let write = |path: PathBuf, value: &str| {
        std::fs::write(&path, value)
            .map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
    };
    let mkdir = |path: &PathBuf| {
        std::fs::create_dir_all(path).map_err(|e| format!("create cgroup {}: {e}", path.display()))
    };
    let bytes = (memory_mb << 20).to_string();
    if is_v2(root) {
        // The root delegates memory and pids to its children (systemd does it already).
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
        let dir = root.join(rel);
        mkdir(&dir)?;
        write(dir.join("memory.max"), &bytes)?;
        write(dir.join("pids.max"), &pids.to_string())?;
    } else {
        let mem = root.join("memory").join(rel);
        mkdir(&mem)?;
        // Children count against the parent (always so on recent kernels).
        let _ = std::fs::write(mem.join("memory.use_hierarchy"), "1");
        write(mem.join("memory.limit_in_bytes"), &bytes)?;
        let p = root.join("pids").join(rel);
        mkdir(&p)?;
        write(p.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// Removes the parent cgroup `rel` of the workers in every hierarchy, where it is empty
/// (best effort: a cgroup that still holds a worker stays).
pub fn remove_parent(root: &Path, rel: &str) {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    if is_v2(root) {
        let _ = std::fs::remove_dir(root.join(rel));
        return;
    }
    if let Ok(dirs) = std::fs::read_dir(root) {
        for d in dirs.flatten() {
            let _ = std::fs::remove_dir(d.path().join(rel));
        }
    }
}

/// The freezer file of cgroup `rel` and its frozen / thawed values: `cgroup.freeze`
/// (`1`/`0`) on v2, the freezer controller's `freezer.state` (`FROZEN`/`THAWED`) on v1.
fn freezer(root: &Path, rel: &str) -> (PathBuf, &'static str, &'static str) {
    let rel = rel.trim_start_matches('/');
    if is_v2(root) {
        (root.join(rel).join("cgroup.freeze"), "1", "0")
    } else {
        (
            root.join("freezer").join(rel).join("freezer.state"),
            "FROZEN",
            "THAWED",
        )
    }
}

/// Whether every task of cgroup `rel` is frozen (`frozen 1` in v2's `cgroup.events`,
/// `FROZEN` in v1's `freezer.state`, not `FREEZING`).
fn fully_frozen(root: &Path, rel: &str) -> bool {
    if is_v2(root) {
        let events = root.join(rel.trim_start_matches('/')).join("cgroup.events");
        read_key(events, "frozen ") == Some(1)
    } else {
        let (file, frozen, _) = freezer(root, rel);
        std::fs::read_to_string(file).is_ok_and(|s| s.trim() == frozen)
    }
}

/// Freezes (`frozen`) or thaws every task of cgroup `rel` through the kernel's cgroup
/// freezer — what `runc pause` / `runc resume` write, without a process started per call.
/// Freezing waits, at most `wait`, until the kernel reports every task frozen; if it does
/// not, the cgroup is thawed again and the error is `TimedOut`. A cgroup that does not
/// exist is `NotFound`.
pub fn set_frozen(
    root: &Path,
    rel: &str,
    frozen: bool,
    wait: std::time::Duration,
) -> std::io::Result<()> {
    let (file, on, off) = freezer(root, rel);
    if !file.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no cgroup freezer {}", file.display()),
        ));
    }
    std::fs::write(&file, if frozen { on } else { off })?;
    if !frozen {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + wait;
    while !fully_frozen(root, rel) {
        if std::time::Instant::now() >= deadline {
            let _ = std::fs::write(&file, off);
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} not frozen within {wait:?}", file.display()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// Whether cgroup `rel` is frozen or being frozen; `None` when it has no freezer file
/// (no such cgroup).
pub fn is_frozen(root: &Path, rel: &str) -> Option<bool> {
    let (file, on, _) = freezer(root, rel);
    let s = std::fs::read_to_string(file).ok()?;
    let s = s.trim();
    Some(if is_v2(root) { s == on } else { s != "THAWED" })
}

/// Memory of this machine (MiB), from /proc/meminfo.
pub fn machine_memory_mb() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

/// Reads the figures of cgroup `rel` (e.g. `/esb-runtime/ID`) under `root` (/sys/fs/cgroup).
pub fn read(root: &Path, rel: &str) -> CgroupFigures {
    let rel = rel.trim_start_matches('/');
    if is_v2(root) {
        let d = root.join(rel);
        CgroupFigures {
            memory_current: read_u64(d.join("memory.current")),
            memory_max: read_u64(d.join("memory.max")),
            oom_kills: read_key(d.join("memory.events"), "oom_kill "),
            cpu_usage_ns: read_key(d.join("cpu.stat"), "usage_usec ").map(|us| us * 1000),
        }
    } else {
        let mem = root.join("memory").join(rel);
        CgroupFigures {
            memory_current: read_u64(mem.join("memory.usage_in_bytes")),
            memory_max: read_u64(mem.join("memory.limit_in_bytes")),
            oom_kills: read_key(mem.join("memory.oom_control"), "oom_kill "),
            cpu_usage_ns: read_u64(root.join("cpuacct").join(rel).join("cpuacct.usage")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_layouts() {
        let v1 = tempfile::tempdir().unwrap();
        let m = v1.path().join("memory/esb-runtime/w");
        let c = v1.path().join("cpuacct/esb-runtime/w");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(m.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(m.join("memory.limit_in_bytes"), "134217728\n").unwrap();
        std::fs::write(
            m.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(c.join("cpuacct.usage"), "5000\n").unwrap();
        let f = read(v1.path(), "/esb-runtime/w");
        assert_eq!(f.memory_current, Some(1000));
        assert_eq!(f.memory_max, Some(134217728));
        assert_eq!(f.oom_kills, Some(2));
        assert_eq!(f.cpu_usage_ns, Some(5000));

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory cpu\n").unwrap();
        let d = v2.path().join("esb-runtime/w");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("memory.current"), "42\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        std::fs::write(d.join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        let f = read(v2.path(), "esb-runtime/w");
        assert_eq!(
            f,
            CgroupFigures {
                memory_current: Some(42),
                memory_max: Some(u64::MAX),
                oom_kills: Some(1),
                cpu_usage_ns: Some(7000)
            }
        );
        assert!(swap_accounting(v2.path()));
        assert!(!swap_accounting(v1.path()));
    }

    #[test]
    fn freezer_files_of_v1_and_v2() {
        use std::time::Duration;
        let wait = Duration::from_millis(50);
        // v1: freezer.state, which reads back what was written (a real one says FREEZING
        // until every task is frozen).
        let v1 = tempfile::tempdir().unwrap();
        let f = v1.path().join("freezer/esb-runtime/w");
        std::fs::create_dir_all(&f).unwrap();
        std::fs::write(f.join("freezer.state"), "THAWED\n").unwrap();
        assert_eq!(is_frozen(v1.path(), "/esb-runtime/w"), Some(false));
        set_frozen(v1.path(), "/esb-runtime/w", true, wait).unwrap();
        assert_eq!(
            std::fs::read_to_string(f.join("freezer.state")).unwrap(),
            "FROZEN"
        );
        assert_eq!(is_frozen(v1.path(), "/esb-runtime/w"), Some(true));
        set_frozen(v1.path(), "/esb-runtime/w", false, wait).unwrap();
        assert_eq!(is_frozen(v1.path(), "/esb-runtime/w"), Some(false));
        // No such cgroup.
        assert_eq!(is_frozen(v1.path(), "/esb-runtime/x"), None);
        let e = set_frozen(v1.path(), "/esb-runtime/x", true, wait).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);

        // v2: cgroup.freeze, and cgroup.events says when every task is frozen.
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory cpu\n").unwrap();
        let d = v2.path().join("esb-runtime/w");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.freeze"), "0\n").unwrap();
        std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        // Never reported frozen: times out and thaws back.
        let e = set_frozen(v2.path(), "esb-runtime/w", true, wait).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.freeze")).unwrap(),
            "0"
        );
        std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        set_frozen(v2.path(), "esb-runtime/w", true, wait).unwrap();
        assert_eq!(is_frozen(v2.path(), "esb-runtime/w"), Some(true));
        set_frozen(v2.path(), "esb-runtime/w", false, wait).unwrap();
        assert_eq!(is_frozen(v2.path(), "esb-runtime/w"), Some(false));
    }
}
