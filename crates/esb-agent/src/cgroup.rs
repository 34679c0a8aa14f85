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
}
