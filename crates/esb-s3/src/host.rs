//! Virtual-host-style addressing: which `Host` headers name a bucket.
//!
//! A request whose host is `<bucket>.<base>` for one of the base domains below addresses
//! `<bucket>`; every other host (IP addresses, `localhost`, `s3-storage`, anything
//! unknown) is path-style. Ports are ignored.

use s3s::host::{S3Host, VirtualHost};
use s3s::S3Result;

pub struct BoxHost {
    /// Base domains, longest first so that `b.s3.localhost` resolves to bucket `b`.
    bases: Vec<String>,
}

impl BoxHost {
    pub fn new(region: &str) -> Self {
        let mut bases: Vec<String> = vec![
            format!("s3.{region}.amazonaws.com"),
            format!("s3.{region}.localhost"),
            "s3.amazonaws.com".into(),
            "s3.localhost".into(),
            "localhost".into(),
            "s3-storage".into(),
        ];
        bases.sort_by_key(|b| std::cmp::Reverse(b.len()));
        BoxHost { bases }
    }

    /// The bucket named by `host`, if it is virtual-host style.
    pub fn bucket_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = strip_port(host);
        if self.bases.iter().any(|b| b == name) {
            return None; // the endpoint itself
        }
        for base in &self.bases {
            if let Some(bucket) = name
                .strip_suffix(base.as_str())
                .and_then(|h| h.strip_suffix('.'))
            {
                if !bucket.is_empty() {
                    return Some(bucket);
                }
            }
        }
        None
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // IPv6 literal: path style, handled by s3s before us
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl S3Host for BoxHost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(host).with_bucket(bucket.to_ascii_lowercase()),
            None => VirtualHost::new(host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_and_path_style_hosts() {
        let h = BoxHost::new("ap-northeast-1");
        assert_eq!(h.bucket_of("photos.localhost:9000"), Some("photos"));
        assert_eq!(
            h.bucket_of("my.dotted.bucket.localhost"),
            Some("my.dotted.bucket")
        );
        assert_eq!(h.bucket_of("b.s3.localhost:9000"), Some("b"));
        assert_eq!(h.bucket_of("b.s3.ap-northeast-1.amazonaws.com"), Some("b"));
        assert_eq!(h.bucket_of("b.s3-storage:9000"), Some("b"));
        assert_eq!(h.bucket_of("localhost:9000"), None);
        assert_eq!(h.bucket_of("s3-storage:9000"), None);
        assert_eq!(h.bucket_of("s3.localhost"), None);
        assert_eq!(h.bucket_of("example.com"), None);
        assert_eq!(h.bucket_of("10.88.0.1:9000"), None);
    }
}
