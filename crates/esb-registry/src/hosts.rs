//! containerd's hosts directory: `DIR/HOST/hosts.toml` says where an image host is served
//! and which CA its certificate is checked with (containerd's `config_path`, also read by
//! `ctr images pull --hosts-dir DIR`). The box writes one for its registry; the agent reads
//! it to pull, so the trust of a node lives in one file that containerd's own tools honour.
//!
//! Written and accepted: `server`, and `[host."URL"]` tables with `capabilities` and `ca`.
//! Refused: `skip_verify = true` (a registry is trusted through its CA, never blindly).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{io_err, RegistryError};

/// A place to pull from, in the order containerd would try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:port` (or `http://` for a plain registry).
    pub url: String,
    /// CA certificate files to check the server with (empty: the system roots).
    pub ca: Vec<PathBuf>,
}

/// A hosts directory (`certs.d`).
#[derive(Debug, Clone)]
pub struct HostsDir {
    dir: PathBuf,
}

#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize)]
struct HostEntry {
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ca: Option<toml::Value>,
    #[serde(default)]
    skip_verify: Option<bool>,
}

impl HostsDir {
    /// The hosts directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> HostsDir {
        HostsDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The hosts.toml of `host` (`host:port`, containerd's directory naming).
    pub fn file(&self, host: &str) -> PathBuf {
        self.dir.join(host).join("hosts.toml")
    }

    /// Writes the hosts.toml of `host`: served at `url`, checked with `ca`.
    pub fn write(&self, host: &str, url: &str, ca: &Path) -> Result<PathBuf, RegistryError> {
        let path = self.file(host);
        let dir = path.parent().expect("hosts.toml has a parent");
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let text = format!(
            "# Written by esb: the box's registry, trusted through the box CA.\n\
             server = {url:?}\n\n[host.{url:?}]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {:?}\n",
            ca.display().to_string()
        );
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Where `host`'s images are pulled from: its hosts.toml's hosts with the pull
    /// capability, then its `server`. `None` when the directory has no file for `host`.
    pub fn lookup(&self, host: &str) -> Result<Option<Vec<Endpoint>>, RegistryError> {
        let path = self.file(host);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let bad = |msg: String| RegistryError::Hosts {
            path: path.clone(),
            msg,
        };
        let file: HostsFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let mut out = Vec::new();
        for (url, entry) in file.host {
            let entry: HostEntry = entry
                .try_into()
                .map_err(|e| bad(format!("[host.{url:?}]: {e}")))?;
            if entry.skip_verify == Some(true) {
                return Err(bad(format!(
                    "[host.{url:?}]: skip_verify is refused; give the registry's CA with `ca`"
                )));
            }
            let pulls = entry
                .capabilities
                .as_ref()
                .is_none_or(|c| c.iter().any(|c| c == "pull"));
            if !pulls {
                continue;
            }
            let ca = match entry.ca {
                None => vec![],
                Some(toml::Value::String(s)) => vec![base.join(s)],
                Some(toml::Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(|s| base.join(s))
                            .ok_or_else(|| bad(format!("[host.{url:?}]: ca must be strings")))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(bad(format!("[host.{url:?}]: ca must be a path"))),
            };
            out.push(Endpoint {
                url: normalise(&url, &bad)?,
                ca,
            });
        }
        if let Some(server) = file.server {
            let url = normalise(&server, &bad)?;
            if !out.iter().any(|e| e.url == url) {
                out.push(Endpoint { url, ca: vec![] });
            }
        }
        if out.is_empty() {
            return Err(bad(
                "no host to pull from (no server, no host with pull)".into()
            ));
        }
        Ok(Some(out))
    }
}

fn normalise(url: &str, bad: &impl Fn(String) -> RegistryError) -> Result<String, RegistryError> {
    let u = url.trim_end_matches('/');
    let u = u.strip_suffix("/v2").unwrap_or(u);
    if !(u.starts_with("https://") || u.starts_with("http://")) {
        return Err(bad(format!("{url:?}: a host must be an http(s) URL")));
    }
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let h = HostsDir::new(d.path());
        let p = h
            .write(
                "10.99.0.1:5010",
                "https://10.99.0.1:5010",
                Path::new("/s/tls/ca.pem"),
            )
            .unwrap();
        assert!(p.ends_with("10.99.0.1:5010/hosts.toml"));
        let e = h.lookup("10.99.0.1:5010").unwrap().unwrap();
        assert_eq!(
            e,
            vec![Endpoint {
                url: "https://10.99.0.1:5010".into(),
                ca: vec![PathBuf::from("/s/tls/ca.pem")]
            }]
        );
        assert!(h.lookup("other:5000").unwrap().is_none());
    }

    #[test]
    fn containerd_forms_are_read_and_skip_verify_refused() {
        let d = tempfile::tempdir().unwrap();
        let h = HostsDir::new(d.path());
        let host = "reg.example:5000";
        std::fs::create_dir_all(d.path().join(host)).unwrap();
        std::fs::write(
            h.file(host),
            "server = \"https://reg.example:5000\"\n[host.\"https://mirror:5000/v2\"]\ncapabilities = [\"pull\"]\nca = [\"ca.pem\"]\n[host.\"https://push-only\"]\ncapabilities = [\"push\"]\n",
        )
        .unwrap();
        let e = h.lookup(host).unwrap().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].url, "https://mirror:5000");
        assert_eq!(e[0].ca, vec![d.path().join(host).join("ca.pem")]);
        assert_eq!(e[1].url, "https://reg.example:5000");
        std::fs::write(
            h.file(host),
            "[host.\"https://reg.example:5000\"]\nskip_verify = true\n",
        )
        .unwrap();
        let err = h.lookup(host).unwrap_err().to_string();
        assert!(err.contains("skip_verify"), "{err}");
        std::fs::write(h.file(host), "server = 5\n").unwrap();
        assert!(h.lookup(host).is_err());
    }
}
