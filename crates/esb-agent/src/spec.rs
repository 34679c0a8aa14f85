//! The OCI runtime spec of a worker: what isolates it.
//!
//! Read-only root with a 512 MiB tmpfs at /tmp (Lambda's), the worker's own network
//! namespace (made by the runtime-node), memory limit from MemorySize with swap off, CPU
//! shares in proportion to memory as Lambda does, no capabilities, no new privileges, a
//! non-root user (Lambda's uid 993), a seccomp allowlist ([`crate::seccomp`]), an
//! `oom_score_adj` that makes workers the kernel's first choice, and the box CA mounted
//! read-only.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Lambda's sandbox user and group.
pub const WORKER_UID: u32 = 993;
/// Lambda's sandbox group.
pub const WORKER_GID: u32 = 990;
/// Where the box CA appears inside workers.
pub const CA_PATH_IN_WORKER: &str = "/etc/esb/ca.pem";
/// `oom_score_adj` of every worker process: when the machine runs out of memory, the
/// kernel kills a worker before any component of the box.
pub const OOM_SCORE_ADJ: i32 = 1000;
/// Memory per vCPU on Lambda (MiB): CPU shares scale with memory against it.
const MB_PER_VCPU: u64 = 1769;

/// Everything that varies between workers.
#[derive(Debug, Clone)]
pub struct WorkerSpec<'a> {
    /// Container id (also its cgroup leaf; the hostname stays `localhost`, which the
    /// image's /etc/hosts resolves, as code that resolves its own host name expects).
    pub id: &'a str,
    /// Command line.
    pub args: &'a [String],
    /// `KEY=VALUE` environment.
    pub env: &'a [String],
    /// Working directory.
    pub cwd: &'a str,
    /// Path of the worker's network namespace.
    pub netns: &'a Path,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// The box CA on the host, mounted read-only when set.
    pub ca_file: Option<&'a PathBuf>,
    /// Cgroup parent (`/esb-runtime`).
    pub cgroup_parent: &'a str,
    /// Whether the kernel accounts swap (cgroup v1 memsw); swap is then pinned to the limit.
    pub swap_accounting: bool,
}

/// The spec as JSON (containerd stores it in the container record).
pub fn worker_spec(w: &WorkerSpec<'_>) -> Value {
    let limit = w.memory_mb * 1024 * 1024;
    let shares = (w.memory_mb * 1024 / MB_PER_VCPU).max(2);
    let mut memory = json!({ "limit": limit, "swappiness": 0 });
    if w.swap_accounting {
        memory["swap"] = json!(limit);
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=512m"]}),
    ];
    if let Some(ca) = w.ca_file {
        mounts.push(json!({"destination": CA_PATH_IN_WORKER, "type": "bind", "source": ca, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    let no_caps: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": WORKER_UID, "gid": WORKER_GID },
            "args": w.args,
            "env": w.env,
            "cwd": w.cwd,
            "capabilities": { "bounding": no_caps, "effective": no_caps, "inheritable": no_caps, "permitted": no_caps, "ambient": no_caps },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true,
            "oomScoreAdj": OOM_SCORE_ADJ
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "localhost",
        "mounts": mounts,
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                { "type": "network", "path": w.netns }
            ],
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }],
                "memory": memory,
                "cpu": { "shares": shares },
                "pids": { "limit": 1024 }
            },
            "cgroupsPath": format!("{}/{}", w.cgroup_parent, w.id),
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ],
            "seccomp": crate::seccomp::profile()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_isolation() {
        let args = vec!["/var/runtime/esb-supervisor".to_string()];
        let env = vec!["A=1".to_string()];
        let netns = PathBuf::from("/run/netns/w1");
        let s = worker_spec(&WorkerSpec {
            id: "w1",
            args: &args,
            env: &env,
            cwd: "/var/task",
            netns: &netns,
            memory_mb: 1769,
            ca_file: None,
            cgroup_parent: "/esb-runtime",
            swap_accounting: true,
        });
        assert_eq!(
            s["linux"]["resources"]["memory"]["limit"],
            1769u64 * 1024 * 1024
        );
        assert_eq!(
            s["linux"]["resources"]["memory"]["swap"],
            1769u64 * 1024 * 1024
        );
        assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 1024);
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["process"]["oomScoreAdj"], OOM_SCORE_ADJ);
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["process"]["capabilities"]["effective"], json!([]));
        assert_eq!(s["linux"]["namespaces"][4]["path"], "/run/netns/w1");
        assert_eq!(s["linux"]["cgroupsPath"], "/esb-runtime/w1");
        let tmp = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/tmp")
            .unwrap();
        assert!(tmp["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=512m")));
    }
}
