//! TLS: the box's own CA and server certificate (made with rcgen on first start, kept in
//! the data directory), or a certificate given by path; rustls with HTTP/2 and HTTP/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the box's CA certificate in the data directory (what clients trust).
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server.key";
const SANS_FILE: &str = "server.sans";

/// Path of the CA certificate clients should trust, for a data directory.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_FILE)
}

/// The default subject alternative names plus `extra`.
pub fn default_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "10.88.0.1", "10.99.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            sans.push(h.to_string());
        }
    }
    for e in extra {
        if !sans.contains(e) {
            sans.push(e.clone());
        }
    }
    sans
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "Edge Serverless Box CA");
    p.distinguished_name.push(DnType::OrganizationName, "esb");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Writes a file atomically (temporary file, then rename), with mode 0600 for keys.
fn write_atomic(path: &Path, data: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// Makes sure the data directory holds a CA and a server certificate for `sans`;
/// returns the paths of the server certificate and key.
pub fn ensure_box_certs(data_dir: &Path, sans: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let ca_cert = data_dir.join(CA_FILE);
    let ca_key = data_dir.join(CA_KEY_FILE);
    let (cert, key, sans_file) = (
        data_dir.join(CERT_FILE),
        data_dir.join(KEY_FILE),
        data_dir.join(SANS_FILE),
    );
    let mut fresh_ca = false;
    if !(ca_cert.is_file() && ca_key.is_file()) {
        let key = KeyPair::generate()?;
        let c = ca_params()?.self_signed(&key)?;
        write_atomic(&ca_key, &key.serialize_pem(), true)?;
        write_atomic(&ca_cert, &c.pem(), false)?;
        fresh_ca = true;
    }
    let wanted = sans.join(",");
    let current = std::fs::read_to_string(&sans_file).unwrap_or_default();
    if fresh_ca || !cert.is_file() || !key.is_file() || current != wanted {
        let ca_key_pem = std::fs::read_to_string(&ca_key)?;
        let issuer = Issuer::new(
            ca_params()?,
            KeyPair::from_pem(&ca_key_pem).map_err(|e| anyhow!("{}: {e}", ca_key.display()))?,
        );
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "esb gateway");
        for s in sans {
            p.subject_alt_names
                .push(match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(s.as_str().try_into()?),
                });
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        let skey = KeyPair::generate()?;
        let c = p.signed_by(&skey, &issuer)?;
        write_atomic(&key, &skey.serialize_pem(), true)?;
        write_atomic(&cert, &c.pem(), false)?;
        write_atomic(&sans_file, &wanted, false)?;
    }
    Ok((cert, key))
}

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
    fn certs_made_once_and_reissued_for_new_sans() {
        let dir = tempfile::tempdir().unwrap();
        let sans = default_sans(&["box.example".into()]);
        let (c, k) = ensure_box_certs(dir.path(), &sans).unwrap();
        server_config(&c, &k).unwrap();
        let ca = std::fs::read(dir.path().join(CA_FILE)).unwrap();
        let first = std::fs::read(&c).unwrap();
        ensure_box_certs(dir.path(), &sans).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), first);
        let more = default_sans(&["other.example".into()]);
        ensure_box_certs(dir.path(), &more).unwrap();
        assert_ne!(std::fs::read(&c).unwrap(), first);
        assert_eq!(std::fs::read(dir.path().join(CA_FILE)).unwrap(), ca);
        assert!(server_config(&c, &dir.path().join(CA_FILE)).is_err());
    }
}
