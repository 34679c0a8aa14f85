//! The registry program as a box component: its configuration file, where it keeps
//! blobs, and the garbage collection run before it starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, RegistryError};

/// Debian's package name, for messages.
pub const PACKAGE: &str = "docker-registry";

/// The registry program: `ESB_REGISTRY_BIN`, else Debian's `/usr/bin/docker-registry`.
pub fn program() -> Result<PathBuf, RegistryError> {
    if let Some(p) = std::env::var_os("ESB_REGISTRY_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RegistryError::Program(format!(
                "ESB_REGISTRY_BIN: {} does not exist",
                p.display()
            )))
        };
    }
    ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            RegistryError::Program(format!(
                "the registry program is missing: install Debian's {PACKAGE} package \
                 (scripts/prereqs.sh --runtime-only) or set ESB_REGISTRY_BIN"
            ))
        })
}

/// How the box runs its registry.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `STATE/registry`: the configuration file and `data/`.
    pub dir: PathBuf,
    /// Where it listens (the host's loopback: the relay brings the control address here).
    pub listen: SocketAddr,
    /// Server certificate (PEM, from the box CA).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl ServerConfig {
    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yml")
    }

    /// Where blobs and manifests are stored.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The configuration (distribution 2.x YAML): filesystem storage with deletes enabled
    /// (old revisions are deleted by the box, then collected), TLS, no access log.
    pub fn render(&self, secret: &str) -> String {
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: true\n      age: 24h\n      interval: 1h\n      dryrun: false\n\
             http:\n  addr: {listen}\n  secret: {secret}\n  tls:\n    certificate: {cert}\n    key: {key}\n",
            data = yaml_str(&self.data_dir()),
            listen = self.listen,
            cert = yaml_str(&self.cert),
            key = yaml_str(&self.key),
        )
    }

    /// Writes the configuration file (0600: it holds the upload secret) and the data
    /// directory; returns the file's path.
    pub fn write(&self) -> Result<PathBuf, RegistryError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let data = self.data_dir();
        std::fs::create_dir_all(&data).map_err(io_err(&data))?;
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let path = self.config_path();
        let tmp = path.with_extension("yml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(self.render(&secret).as_bytes())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Removes blobs no manifest references and manifests no tag names (`garbage-collect
    /// --delete-untagged`); run while the registry is stopped. Returns its summary line.
    pub fn garbage_collect(&self, program: &Path) -> Result<String, RegistryError> {
        let out = Command::new(program)
            .arg("garbage-collect")
            .arg("--delete-untagged")
            .arg(self.config_path())
            .output()
            .map_err(|e| RegistryError::Program(format!("{}: {e}", program.display())))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(RegistryError::Program(format!(
                "{} garbage-collect: {}: {}",
                program.display(),
                out.status,
                text.lines().last().unwrap_or("")
            )));
        }
        let deleted = text
            .lines()
            .filter(|l| l.contains("blob eligible for deletion"))
            .count();
        Ok(format!("{deleted} blob(s) collected"))
    }
}

fn yaml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Bytes used under `dir` (files only, not following links).
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_written_private_with_deletes_and_tls() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let c = ServerConfig {
            dir: d.path().join("registry"),
            listen: "127.0.0.1:5010".parse().unwrap(),
            cert: PathBuf::from("/s/tls/registry.pem"),
            key: PathBuf::from("/s/tls/registry.key"),
        };
        let p = c.write().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("addr: 127.0.0.1:5010"), "{text}");
        assert!(text.contains("delete:\n    enabled: true"), "{text}");
        assert!(
            text.contains("certificate: \"/s/tls/registry.pem\""),
            "{text}"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(c.data_dir().is_dir());
        std::fs::write(c.data_dir().join("x"), [0u8; 10]).unwrap();
        assert_eq!(disk_usage(&c.dir), 10 + text.len() as u64);
    }
}
