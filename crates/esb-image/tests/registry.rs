//! Pushing built images to a real registry (the CNCF distribution server, Debian package
//! docker-registry) on 127.0.0.1: plain HTTP, then HTTPS with a CA the test makes; the
//! pushed image is pulled back by containerd, and a second push sends no blob.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A registry process on 127.0.0.1, killed (by PID) on drop.
struct RegistryProcess {
    child: Child,
    port: u16,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_registry(dir: &Path, tls: Option<(&Path, &Path)>) -> RegistryProcess {
    let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("docker-registry is not installed (crates/esb-image/deps/apt.txt): run scripts/prereqs.sh");
    let port = free_port();
    let tls_conf = match tls {
        Some((cert, key)) => format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_conf}",
        dir.join("data").display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let reg = RegistryProcess { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the registry did not listen on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    reg
}

fn built_image(app: &Path, out: &Path) -> String {
    std::fs::create_dir_all(app.join("bootstrap-dir")).unwrap();
    std::fs::write(app.join("bootstrap-dir/bootstrap"), "#!/bin/sh\necho hi\n").unwrap();
    let t = esb_template::load(&app.join("template.yaml"), &Default::default()).unwrap();
    let (r, _) = build(&t, &options(&t, out, &fake_supervisor(app)));
    r.images[0].reference.clone()
}

#[test]
fn push_over_http_then_pull_with_containerd() {
    esb_testkit::require_root();
    let app = fixture("rust-fn");
    let out = tempfile::tempdir().unwrap();
    let local = built_image(app.path(), out.path());
    let layout = esb_image::Layout::open(out.path()).unwrap();
    let regdir = tempfile::tempdir().unwrap();
    let registry = start_registry(regdir.path(), None);
    let target =
        esb_image::Registry::from_setting(&format!("http://127.0.0.1:{}", registry.port)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    let first = rt
        .block_on(esb_image::push(
            &layout,
            &local,
            &target,
            "esb/functions/hello-rust",
            "v1",
        ))
        .unwrap();
    assert_eq!(
        (first.blobs_uploaded, first.blobs_present),
        (4, 0),
        "{first:?}"
    );
    assert_eq!(
        first.reference,
        format!("127.0.0.1:{}/esb/functions/hello-rust:v1", registry.port)
    );
    let again = rt
        .block_on(esb_image::push(
            &layout,
            &local,
            &target,
            "esb/functions/hello-rust",
            "v1",
        ))
        .unwrap();
    assert_eq!((again.blobs_uploaded, again.blobs_present), (0, 4));
    assert_eq!(again.digest, first.digest);

    // The registry serves the manifest under its digest (checked with curl).
    let out = Command::new("curl")
        .args([
            "-sS",
            "-I",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://127.0.0.1:{}/v2/esb/functions/hello-rust/manifests/v1",
            registry.port
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.contains(&format!("docker-content-digest: {}", first.digest)),
        "{head}"
    );

    // esb pulls it back into another layout: same manifest, every blob fetched once.
    let other = tempfile::tempdir().unwrap();
    let other_layout = esb_image::Layout::open(other.path()).unwrap();
    let pulled = rt
        .block_on(esb_image::pull(
            &other_layout,
            &target,
            "esb/functions/hello-rust",
            "v1",
            "esb.local/pulled/hello:v1",
        ))
        .unwrap();
    assert_eq!(pulled.digest, first.digest);
    assert_eq!((pulled.blobs_fetched, pulled.blobs_present), (4, 0));
    let by_digest = rt
        .block_on(esb_image::pull(
            &other_layout,
            &target,
            "esb/functions/hello-rust",
            &first.digest,
            "esb.local/pulled/hello:v1",
        ))
        .unwrap();
    assert_eq!((by_digest.blobs_fetched, by_digest.blobs_present), (0, 4));
    let missing = rt.block_on(esb_image::pull(
        &other_layout,
        &target,
        "esb/functions/hello-rust",
        "nope",
        "x:y",
    ));
    assert!(missing.is_err());

    // containerd pulls and unpacks it from the registry.
    let state = tempfile::Builder::new()
        .prefix("esb-reg-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut ctd = rt
        .block_on(esb_containerd::Containerd::start(state.path()))
        .unwrap();
    let out = Command::new("ctr")
        .arg("--address")
        .arg(ctd.socket())
        .args([
            "--namespace",
            esb_containerd::NAMESPACE,
            "image",
            "pull",
            "--plain-http",
        ])
        .arg(&first.reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr pull: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let client = rt.block_on(esb_containerd::connect(ctd.socket())).unwrap();
    assert!(rt.block_on(client.image_exists(&first.reference)).unwrap());
    ctd.stop().unwrap();

    // Bad input.
    let err = rt
        .block_on(esb_image::push(
            &layout,
            "esb.local/functions/nope:latest",
            &target,
            "x",
            "v1",
        ))
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let err = rt
        .block_on(esb_image::push(
            &layout,
            &local,
            &target,
            "Upper/Case",
            "v1",
        ))
        .unwrap_err();
    assert!(err.to_string().contains("repository name"), "{err}");
}

#[test]
fn push_over_https_with_the_box_ca() {
    esb_testkit::require_root();
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let certs = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        certs.path().join("ca.pem"),
        certs.path().join("cert.pem"),
        certs.path().join("key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let app = fixture("rust-fn");
    let out = tempfile::tempdir().unwrap();
    let local = built_image(app.path(), out.path());
    let layout = esb_image::Layout::open(out.path()).unwrap();
    let regdir = tempfile::tempdir().unwrap();
    let registry = start_registry(regdir.path(), Some((&cert_path, &key_path)));
    let rt = tokio::runtime::Runtime::new().unwrap();

    // CONTAINER_REGISTRY=host:port means HTTPS; the system roots do not trust the box's CA.
    let mut target =
        esb_image::Registry::from_setting(&format!("127.0.0.1:{}", registry.port)).unwrap();
    let err = rt
        .block_on(esb_image::push(
            &layout,
            &local,
            &target,
            "esb/hello",
            "latest",
        ))
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    target.ca_file = Some(ca_path);
    let r = rt
        .block_on(esb_image::push(
            &layout,
            &local,
            &target,
            "esb/hello",
            "latest",
        ))
        .unwrap();
    assert_eq!(r.blobs_uploaded, 4);
}

/// `ctr images pull --hosts-dir DIR REF` against the containerd of `state` (containerd's
/// own client reading the same hosts.toml the agent reads).
fn ctr_pull(socket: &Path, hosts: &Path, reference: &str) -> std::process::Output {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", esb_containerd::NAMESPACE, "images", "pull"])
        .arg("--hosts-dir")
        .arg(hosts)
        .arg(reference)
        .output()
        .unwrap()
}

/// esb's pull as the agent does it: the endpoints and CA from the hosts directory.
fn esb_pull(
    rt: &tokio::runtime::Runtime,
    hosts: &Path,
    host: &str,
    repo: &str,
    digest: &str,
) -> Result<esb_image::PullReport, String> {
    let endpoints = esb_registry::HostsDir::new(hosts)
        .lookup(host)
        .map_err(|e| e.to_string())?
        .ok_or("no hosts.toml")?;
    let e = &endpoints[0];
    let mut reg = esb_image::Registry::from_setting(&e.url).unwrap();
    reg.ca_file = e.ca.first().cloned();
    let out = tempfile::tempdir().unwrap();
    let layout = esb_image::Layout::open(out.path()).unwrap();
    rt.block_on(esb_image::pull(&layout, &reg, repo, digest, "x.local/t:1"))
        .map_err(|e| e.to_string())
}

#[test]
fn registry_trust_comes_from_the_hosts_dir_and_a_wrong_ca_or_name_is_refused() {
    esb_testkit::require_root();
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    // The box CA issues the good certificate (SAN 127.0.0.1) and one for another name only.
    let tls = tempfile::tempdir().unwrap();
    let (good_cert, good_key) =
        esb_pki::ensure_server_cert(tls.path(), "registry", "r", &["127.0.0.1".into()]).unwrap();
    let (nosan_cert, nosan_key) = esb_pki::ensure_server_cert(
        tls.path(),
        "other",
        "r",
        &["esb-registry".into(), "10.99.0.1".into()],
    )
    .unwrap();
    let box_ca = esb_pki::ca_path(tls.path());
    // A CA that signed none of them.
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let wrong_ca = tls.path().join("wrong-ca.pem");
    std::fs::write(
        &wrong_ca,
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem(),
    )
    .unwrap();

    // Two registries on one storage: the good certificate, and the one without the SAN.
    let good_dir = tempfile::tempdir().unwrap();
    let good = start_registry(good_dir.path(), Some((&good_cert, &good_key)));
    let nosan_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(good_dir.path().join("data"), nosan_dir.path().join("data"))
        .unwrap();
    let nosan = start_registry(nosan_dir.path(), Some((&nosan_cert, &nosan_key)));

    let app = fixture("rust-fn");
    let out = tempfile::tempdir().unwrap();
    let local = built_image(app.path(), out.path());
    let layout = esb_image::Layout::open(out.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut target =
        esb_image::Registry::from_setting(&format!("127.0.0.1:{}", good.port)).unwrap();
    target.ca_file = Some(box_ca.clone());
    let pushed = rt
        .block_on(esb_image::push(
            &layout,
            &local,
            &target,
            "esb/functions/t",
            "v1",
        ))
        .unwrap();
    let repo = "esb/functions/t";

    let state = tempfile::Builder::new()
        .prefix("esb-trust-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut ctd = rt
        .block_on(esb_containerd::Containerd::start(state.path()))
        .unwrap();
    let hosts_for = |port: u16, ca: &Path| {
        let d = tempfile::tempdir().unwrap();
        let host = format!("127.0.0.1:{port}");
        esb_registry::HostsDir::new(d.path())
            .write(&host, &format!("https://{host}"), ca)
            .unwrap();
        (d, host)
    };

    // The box CA in hosts.toml, the right name: containerd and esb both pull.
    let (ok_hosts, ok_host) = hosts_for(good.port, &box_ca);
    let reference = format!("{ok_host}/{repo}@{}", pushed.digest);
    let out = ctr_pull(ctd.socket(), ok_hosts.path(), &reference);
    assert!(
        out.status.success(),
        "ctr pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    esb_pull(&rt, ok_hosts.path(), &ok_host, repo, &pushed.digest).unwrap();

    // A CA that did not sign the certificate: refused by both.
    let (bad_hosts, bad_host) = hosts_for(good.port, &wrong_ca);
    let out = ctr_pull(
        ctd.socket(),
        bad_hosts.path(),
        &format!("{bad_host}/{repo}@{}", pushed.digest),
    );
    let msg = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a wrong CA was accepted by containerd"
    );
    assert!(msg.contains("x509") || msg.contains("certificate"), "{msg}");
    let err = esb_pull(&rt, bad_hosts.path(), &bad_host, repo, &pushed.digest).unwrap_err();
    assert!(
        err.contains("TLS") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // The box CA, but a certificate without the address in its SANs: refused by both.
    let (nosan_hosts, nosan_host) = hosts_for(nosan.port, &box_ca);
    let out = ctr_pull(
        ctd.socket(),
        nosan_hosts.path(),
        &format!("{nosan_host}/{repo}@{}", pushed.digest),
    );
    let msg = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a certificate without the SAN was accepted"
    );
    assert!(msg.contains("x509") || msg.contains("certificate"), "{msg}");
    let err = esb_pull(&rt, nosan_hosts.path(), &nosan_host, repo, &pushed.digest).unwrap_err();
    assert!(
        err.contains("TLS") && err.contains("not valid for name"),
        "{err}"
    );

    // skip_verify is never honoured.
    std::fs::write(
        esb_registry::HostsDir::new(bad_hosts.path()).file(&bad_host),
        format!("[host.\"https://{bad_host}\"]\nskip_verify = true\n"),
    )
    .unwrap();
    let err = esb_pull(&rt, bad_hosts.path(), &bad_host, repo, &pushed.digest).unwrap_err();
    assert!(err.contains("skip_verify"), "{err}");
    ctd.stop().unwrap();
}
