//! TLS: the box's server certificate from its CA (crate esb-pki, kept in the data
//! directory), or a certificate given by path; rustls with HTTP/2 and HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use esb_pki::{ca_path, default_sans, ensure_box_certs, CA_FILE};

/// A rustls server configuration (ALPN h2, http/1.1) from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_from_the_box_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = ensure_box_certs(dir.path(), &default_sans(&[])).unwrap();
        server_config(&c, &k).unwrap();
        assert!(server_config(&c, &dir.path().join(CA_FILE)).is_err());
    }
}
