//! The box's certificate authority (`STATE/tls`): a CA made with rcgen on first start and
//! kept, and the server certificates it issues — the gateway's, the registry's — each for
//! the names and addresses its clients use (subject alternative names). A certificate is
//! issued again when the names it must carry change; the CA never is.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File name of the CA certificate in the data directory (what clients trust).
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key or certificate could not be made or read.
    #[error("{0}")]
    Cert(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

/// Path of the CA certificate clients should trust, for a data directory.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_FILE)
}

/// The default subject alternative names of the gateway plus `extra`.
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

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
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
fn write_atomic(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Makes sure `data_dir` holds the CA (certificate and 0600 key); true when made now.
pub fn ensure_ca(data_dir: &Path) -> Result<bool, PkiError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let (ca_cert, ca_key) = (data_dir.join(CA_FILE), data_dir.join(CA_KEY_FILE));
    if ca_cert.is_file() && ca_key.is_file() {
        return Ok(false);
    }
    let key = KeyPair::generate().map_err(cert_err)?;
    let c = ca_params()?.self_signed(&key).map_err(cert_err)?;
    write_atomic(&ca_key, &key.serialize_pem(), true)?;
    write_atomic(&ca_cert, &c.pem(), false)?;
    Ok(true)
}

/// Makes sure `data_dir` holds a server certificate `STEM.pem` (key `STEM.key`, 0600)
/// signed by the CA for `sans` (IP addresses or DNS names), issuing it when missing, when
/// the CA is new, or when the names changed; returns the certificate and key paths.
pub fn ensure_server_cert(
    data_dir: &Path,
    stem: &str,
    common_name: &str,
    sans: &[String],
) -> Result<(PathBuf, PathBuf), PkiError> {
    let fresh_ca = ensure_ca(data_dir)?;
    let (cert, key, sans_file) = (
        data_dir.join(format!("{stem}.pem")),
        data_dir.join(format!("{stem}.key")),
        data_dir.join(format!("{stem}.sans")),
    );
    let wanted = sans.join(",");
    let current = std::fs::read_to_string(&sans_file).unwrap_or_default();
    if !fresh_ca && cert.is_file() && key.is_file() && current == wanted {
        return Ok((cert, key));
    }
    let ca_key = data_dir.join(CA_KEY_FILE);
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let issuer = Issuer::new(
        ca_params()?,
        KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| PkiError::Cert(format!("{}: {e}", ca_key.display())))?,
    );
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    for s in sans {
        p.subject_alt_names
            .push(match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    s.as_str()
                        .try_into()
                        .map_err(|e| PkiError::Cert(format!("name {s:?}: {e}")))?,
                ),
            });
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.use_authority_key_identifier_extension = true;
    let skey = KeyPair::generate().map_err(cert_err)?;
    let c = p.signed_by(&skey, &issuer).map_err(cert_err)?;
    write_atomic(&key, &skey.serialize_pem(), true)?;
    write_atomic(&cert, &c.pem(), false)?;
    write_atomic(&sans_file, &wanted, false)?;
    Ok((cert, key))
}

/// The gateway's certificate (`server.pem`, `server.key`) for `sans`.
pub fn ensure_box_certs(data_dir: &Path, sans: &[String]) -> Result<(PathBuf, PathBuf), PkiError> {
    ensure_server_cert(data_dir, "server", "esb gateway", sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ca_many_certificates_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = ensure_box_certs(dir.path(), &default_sans(&[])).unwrap();
        let ca = std::fs::read(ca_path(dir.path())).unwrap();
        let first = std::fs::read(&c).unwrap();
        let (rc, rk) = ensure_server_cert(
            dir.path(),
            "registry",
            "esb registry",
            &["10.99.0.1".into(), "esb-registry".into()],
        )
        .unwrap();
        assert!(rc.ends_with("registry.pem") && rk.ends_with("registry.key"));
        assert_eq!(std::fs::read(&c).unwrap(), first);
        assert_eq!(std::fs::read(ca_path(dir.path())).unwrap(), ca);
        let again = std::fs::read(&rc).unwrap();
        ensure_server_cert(
            dir.path(),
            "registry",
            "esb registry",
            &["10.99.0.1".into(), "esb-registry".into()],
        )
        .unwrap();
        assert_eq!(std::fs::read(&rc).unwrap(), again);
        ensure_server_cert(
            dir.path(),
            "registry",
            "esb registry",
            &["10.99.0.1".into()],
        )
        .unwrap();
        assert_ne!(std::fs::read(&rc).unwrap(), again);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
