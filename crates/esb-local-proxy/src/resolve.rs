//! Backend name resolution, per new connection.
//!
//! Order: a literal address; the proxy's hosts file (re-read as soon as it changes, so a
//! re-pointed name is followed by the very next connection); the system resolver
//! (`getaddrinfo`: /etc/hosts, DNS), whose answers are kept for a short TTL at most.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::Backend;

/// Resolves backend names.
#[derive(Debug)]
pub struct Resolver {
    hosts_file: Option<PathBuf>,
    ttl: Duration,
    hosts: Mutex<HostsCache>,
    cache: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

#[derive(Debug, Default)]
struct HostsCache {
    stamp: Option<(SystemTime, u64, u64)>,
    map: HashMap<String, Vec<IpAddr>>,
}

impl Resolver {
    /// A resolver with an optional hosts file (consulted first) and a cache TTL for the
    /// system resolver's answers (zero: no cache).
    pub fn new(hosts_file: Option<PathBuf>, ttl: Duration) -> Resolver {
        Resolver {
            hosts_file,
            ttl,
            hosts: Mutex::new(HostsCache::default()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `backend`, in the order to try them.
    pub async fn resolve(&self, backend: &Backend) -> io::Result<Vec<SocketAddr>> {
        let port = backend.port;
        let with_port = |ips: Vec<IpAddr>| {
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        };
        if let Ok(ip) = backend.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ips) = self.lookup_hosts_file(&backend.host) {
            return Ok(with_port(ips));
        }
        if !self.ttl.is_zero() {
            let cache = self.cache.lock().expect("cache lock");
            if let Some((at, ips)) = cache.get(&backend.host) {
                if at.elapsed() < self.ttl {
                    return Ok(with_port(ips.clone()));
                }
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((backend.host.as_str(), port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "name resolves to no address",
            ));
        }
        if !self.ttl.is_zero() {
            let ips = addrs.iter().map(|a| a.ip()).collect();
            self.cache
                .lock()
                .expect("cache lock")
                .insert(backend.host.clone(), (Instant::now(), ips));
        }
        Ok(addrs)
    }

    fn lookup_hosts_file(&self, name: &str) -> Option<Vec<IpAddr>> {
        let path = self.hosts_file.as_ref()?;
        let mut hosts = self.hosts.lock().expect("hosts lock");
        let stamp = std::fs::metadata(path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        });
        if stamp != hosts.stamp {
            hosts.map = stamp
                .and_then(|_| std::fs::read_to_string(path).ok())
                .map(|text| parse_hosts(&text))
                .unwrap_or_default();
            hosts.stamp = stamp;
        }
        hosts.map.get(name).cloned()
    }
}

/// Parses hosts(5) text: `ADDRESS NAME [ALIAS…]`, `#` comments.
pub fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields {
            let ips = map.entry(name.to_string()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_syntax() {
        let m = parse_hosts("# c\n127.0.0.1 s3-storage database # x\n\n::1 s3-storage\nbad line\n");
        assert_eq!(m["database"], vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(m["s3-storage"].len(), 2);
        assert!(!m.contains_key("bad"));
    }

    #[tokio::test]
    async fn hosts_file_changes_are_followed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 db\n").unwrap();
        let r = Resolver::new(Some(file.clone()), Duration::from_secs(60));
        let b = Backend {
            host: "db".into(),
            port: 8000,
        };
        assert_eq!(
            r.resolve(&b).await.unwrap(),
            vec!["127.0.0.1:8000".parse().unwrap()]
        );
        // Same size, different content: the inode changes with the rename.
        let tmp = dir.path().join("hosts.new");
        std::fs::write(&tmp, "127.0.0.2 db\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(
            r.resolve(&b).await.unwrap(),
            vec!["127.0.0.2:8000".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn literal_addresses_need_no_lookup() {
        let r = Resolver::new(None, Duration::ZERO);
        let b = Backend {
            host: "127.0.0.1".into(),
            port: 1,
        };
        assert_eq!(
            r.resolve(&b).await.unwrap(),
            vec!["127.0.0.1:1".parse().unwrap()]
        );
    }
}
