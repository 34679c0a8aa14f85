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
    let certs = read_certs(cert)?;
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

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// A rustls client configuration (ALPN h2) for an agent's gRPC: the agent's certificate
/// must chain to the CA(s) in `ca`; `client` is the certificate chain and key presented
/// to the agent, if any.
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("read {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .with_context(|| format!("{}: certificate and key do not match", cert.display()))?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
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
        let ca = dir.path().join(CA_FILE);
        client_config(&ca, None).unwrap();
        client_config(&ca, Some((&c, &k))).unwrap();
        // A key that is not the certificate's, a file without certificates.
        assert!(client_config(&ca, Some((&c, &dir.path().join("ca.key")))).is_err());
        assert!(client_config(&k, None).is_err());
    }
}
