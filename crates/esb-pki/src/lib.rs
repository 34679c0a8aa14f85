//! The box's certificate authority (`STATE/tls`): a CA made with rcgen on first start and
//! kept, and the certificates it issues — server certificates (the gateway's, the
//! registry's) and node certificates that serve and authenticate as clients alike (a
//! compute node's agent, the gateway calling agents) — each for the names and addresses
//! its peers use (subject alternative names). A certificate is issued again when the names
//! it must carry change; the CA never is.

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

/// Writes a file atomically (temporary file, synced, then renamed), with mode 0600 for
/// keys (`private`), 0644 otherwise whatever the umask (workers, which run as another
/// user, read the CA certificate through a bind mount).
pub fn write_atomic(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
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
    ensure_issued(data_dir, stem, common_name, sans, Usage::Server)
}

/// Makes sure `data_dir` holds a node certificate `STEM.pem` (key `STEM.key`, 0600) signed
/// by the CA for `sans`, usable both to serve TLS and to authenticate as a TLS client
/// (extended key usages ServerAuth and ClientAuth): a compute node's agent serves with it,
/// and the gateway calls agents with its own made the same way. Issued again under the
/// same rules as [`ensure_server_cert`]; returns the certificate and key paths.
pub fn ensure_node_cert(
    data_dir: &Path,
    stem: &str,
    common_name: &str,
    sans: &[String],
) -> Result<(PathBuf, PathBuf), PkiError> {
    ensure_issued(data_dir, stem, common_name, sans, Usage::Node)
}

/// What an issued certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    /// ServerAuth only.
    Server,
    /// ServerAuth and ClientAuth.
    Node,
}

impl Usage {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }

    /// What the `STEM.sans` record holds besides the names, so that a certificate made
    /// for another usage under the same stem is issued again. Server certificates keep
    /// the record they always had (names only).
    fn record(self, sans: &[String]) -> String {
        match self {
            Usage::Server => sans.join(","),
            Usage::Node => format!("usage=server,client;{}", sans.join(",")),
        }
    }
}

/// Issues `STEM.pem`/`STEM.key` for `sans` and `usage` unless the ones in `data_dir` are
/// current (same CA, same names, same usage).
fn ensure_issued(
    data_dir: &Path,
    stem: &str,
    common_name: &str,
    sans: &[String],
    usage: Usage,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let fresh_ca = ensure_ca(data_dir)?;
    let (cert, key, sans_file) = (
        data_dir.join(format!("{stem}.pem")),
        data_dir.join(format!("{stem}.key")),
        data_dir.join(format!("{stem}.sans")),
    );
    let wanted = usage.record(sans);
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
    p.extended_key_usages = usage.extended_key_usages();
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

/// The CA certificate's fingerprint: `sha256:` and the lowercase hex SHA-256 of its DER
/// encoding (what `openssl x509 -fingerprint -sha256` shows, without the colons). A node
/// joining the box can pin the CA with it.
pub fn ca_fingerprint(data_dir: &Path) -> Result<String, PkiError> {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let path = ca_path(data_dir);
    let pem = std::fs::read(&path).map_err(io(&path))?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem)
        .map_err(|e| PkiError::Cert(format!("{}: {e}", path.display())))?;
    let digest = sha2::Sha256::digest(der.as_ref());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
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

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    fn roots(data_dir: &Path) -> Arc<rustls::RootCertStore> {
        let mut r = rustls::RootCertStore::empty();
        r.add(der(&ca_path(data_dir))).unwrap();
        Arc::new(r)
    }

    /// Whether the certificate passes a TLS client's check of a server at `name`.
    fn serves(data_dir: &Path, cert: &Path, name: &str) -> bool {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(data_dir), provider)
                .build()
                .unwrap();
        v.verify_server_cert(
            &der(cert),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    /// Whether the certificate passes a TLS server's check of a client (mutual TLS).
    fn authenticates(data_dir: &Path, cert: &Path) -> bool {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(data_dir), provider)
                .build()
                .unwrap();
        v.verify_client_cert(&der(cert), &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn node_certificates_serve_and_authenticate_as_clients_server_ones_only_serve() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["10.99.0.2".to_string(), "node-2".to_string()];
        let (nc, nk) = ensure_node_cert(dir.path(), "agent", "esb agent node-2", &sans).unwrap();
        assert!(nc.ends_with("agent.pem") && nk.ends_with("agent.key"));
        assert!(serves(dir.path(), &nc, "10.99.0.2"));
        assert!(serves(dir.path(), &nc, "node-2"));
        assert!(!serves(dir.path(), &nc, "10.99.0.3"));
        assert!(authenticates(dir.path(), &nc));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&nk).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // The gateway's server certificate, from the same CA, serves but is no client's.
        let (sc, _) = ensure_box_certs(dir.path(), &default_sans(&[])).unwrap();
        assert!(serves(dir.path(), &sc, "10.99.0.1"));
        assert!(!authenticates(dir.path(), &sc));

        // Kept while nothing changes; issued again for new names, and when a stem that
        // held a server certificate is asked for a node one.
        let first = std::fs::read(&nc).unwrap();
        ensure_node_cert(dir.path(), "agent", "esb agent node-2", &sans).unwrap();
        assert_eq!(std::fs::read(&nc).unwrap(), first);
        ensure_node_cert(dir.path(), "agent", "esb agent node-2", &sans[..1]).unwrap();
        assert_ne!(std::fs::read(&nc).unwrap(), first);
        assert!(!serves(dir.path(), &nc, "node-2"));
        let (gc, _) =
            ensure_node_cert(dir.path(), "server", "esb gateway", &default_sans(&[])).unwrap();
        assert!(authenticates(dir.path(), &gc));
        // ... and back: the server certificate is issued again without ClientAuth.
        ensure_box_certs(dir.path(), &default_sans(&[])).unwrap();
        assert!(!authenticates(dir.path(), &sc));

        // A certificate of another CA is nobody's here.
        let other = tempfile::tempdir().unwrap();
        let (oc, _) = ensure_node_cert(other.path(), "agent", "esb agent node-2", &sans).unwrap();
        assert!(!serves(dir.path(), &oc, "10.99.0.2"));
        assert!(!authenticates(dir.path(), &oc));
    }

    #[test]
    fn ca_fingerprint_is_the_sha256_of_the_ca_der() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ca_fingerprint(dir.path()),
            Err(PkiError::Io { .. })
        ));
        ensure_ca(dir.path()).unwrap();
        let fp = ca_fingerprint(dir.path()).unwrap();
        let hex = fp.strip_prefix("sha256:").expect(&fp);
        assert_eq!(hex.len(), 64, "{fp}");
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // Independently: the DER of the PEM, hashed.
        let der = der(&ca_path(dir.path()));
        use sha2::Digest;
        let want: String = sha2::Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, want);
        // And as openssl shows it, where openssl is installed.
        if let Ok(out) = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(ca_path(dir.path()))
            .output()
        {
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                let colons = text.trim().rsplit('=').next().unwrap();
                assert_eq!(colons.replace(':', "").to_lowercase(), hex);
            }
        }
        // Stable: the CA is kept, and so is its fingerprint, whatever is issued.
        ensure_node_cert(dir.path(), "agent", "a", &["10.99.0.2".into()]).unwrap();
        assert_eq!(ca_fingerprint(dir.path()).unwrap(), fp);
        // Not a certificate: an error naming the file.
        std::fs::write(ca_path(dir.path()), "junk").unwrap();
        let e = ca_fingerprint(dir.path()).unwrap_err();
        assert!(matches!(e, PkiError::Cert(_)), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
