//! How function images are named in the registry: repository `esb/functions/NAME`, tag
//! the revision (the manifest digest's first 12 hex digits), and the reference the gateway
//! and agents use, always pinned by digest: `HOST/esb/functions/NAME@sha256:…`.

use crate::RegistryError;

/// The repository of a function's images: `esb/functions/` + the name in lower case, with
/// every character the distribution spec does not allow (and `_`, which it allows only
/// between alphanumerics) turned into `-`.
pub fn function_repository(function: &str) -> String {
    let mut name: String = function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    // A component must start and end with an alphanumeric character.
    while name.starts_with('-') {
        name.remove(0);
    }
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        name.push('x');
    }
    format!("esb/functions/{name}")
}

/// The tag of a revision: the first 12 hex digits of its manifest digest.
pub fn revision_tag(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// `HOST/esb/functions/NAME@DIGEST`: what the gateway asks agents to run.
pub fn image_reference(host: &str, function: &str, digest: &str) -> String {
    format!("{host}/{}@{digest}", function_repository(function))
}

/// An image reference split into registry host, repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` of the registry.
    pub host: String,
    /// Repository path.
    pub repository: String,
    /// `sha256:…` or a tag.
    pub reference: String,
}

impl ImageRef {
    /// Parses `HOST/REPO@DIGEST` or `HOST/REPO:TAG`. The first component must look like a
    /// registry host (it has a `.` or a `:`, or is `localhost`), as containerd reads it.
    pub fn parse(r: &str) -> Result<ImageRef, RegistryError> {
        let bad = || RegistryError::Reference(r.to_string());
        let (host, rest) = r.split_once('/').ok_or_else(bad)?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad());
        }
        let (repository, reference) = if let Some((repo, d)) = rest.split_once('@') {
            if !d.starts_with("sha256:") || d.len() != 71 {
                return Err(bad());
            }
            (repo, d)
        } else {
            let (repo, tag) = rest.rsplit_once(':').ok_or_else(bad)?;
            if repo.contains(':') {
                return Err(bad());
            }
            (repo, tag)
        };
        if repository.is_empty() || reference.is_empty() {
            return Err(bad());
        }
        Ok(ImageRef {
            host: host.to_string(),
            repository: repository.to_string(),
            reference: reference.to_string(),
        })
    }

    /// Whether the reference pins a digest.
    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn repositories_are_valid_distribution_names() {
        assert_eq!(function_repository("hello"), "esb/functions/hello");
        assert_eq!(
            function_repository("Hello_World"),
            "esb/functions/hello-world"
        );
        assert_eq!(function_repository("_x_"), "esb/functions/x");
        assert_eq!(function_repository("__"), "esb/functions/x");
        assert_eq!(revision_tag(D), "0123456789ab");
    }

    #[test]
    fn references_parse() {
        let r = image_reference("10.99.0.1:5010", "Echo_Fn", D);
        assert_eq!(r, format!("10.99.0.1:5010/esb/functions/echo-fn@{D}"));
        let p = ImageRef::parse(&r).unwrap();
        assert_eq!(p.host, "10.99.0.1:5010");
        assert_eq!(p.repository, "esb/functions/echo-fn");
        assert!(p.is_digest());
        let t = ImageRef::parse("registry.example/a/b:v1").unwrap();
        assert_eq!((t.repository.as_str(), t.reference.as_str()), ("a/b", "v1"));
        assert!(!t.is_digest());
        for bad in [
            "esb.local",
            "esb/functions/x:latest",
            "host:5000/x@sha256:12",
            "host:5000/x",
            "host:5000/:tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
