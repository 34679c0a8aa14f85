//! A private containerd starts under a temporary directory, answers, imports a small OCI
//! image (content, image record, unpacked snapshot) and stops.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

fn digest(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Writes a one-layer OCI layout holding /hello.txt, named `name`.
fn tiny_layout(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let d = digest(data);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        d
    };
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let body = b"hello from esb\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(315532800);
        b.append_data(&mut h, "hello.txt", &body[..]).unwrap();
        b.finish().unwrap();
    }
    let diff_id = digest(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[tokio::test]
async fn start_import_unpack_stop() {
    esb_testkit::require_root();
    let state = tempfile::Builder::new()
        .prefix("esb-ctd-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut ctd = esb_containerd::Containerd::start(state.path())
        .await
        .expect("start containerd");
    assert!(ctd.pid().is_some());
    assert!(std::fs::read_to_string(state.path().join("config.toml"))
        .unwrap()
        .contains("containerd.sock"));
    // A second instance on the same state directory is refused, the first one untouched.
    let err = esb_containerd::Containerd::start(state.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already serves"), "{err}");
    let client = esb_containerd::connect(ctd.socket()).await.unwrap();
    let version = client.version().await.unwrap();
    assert!(!version.is_empty());

    let layout = tempfile::tempdir().unwrap();
    tiny_layout(layout.path(), "esb.local/test/tiny:latest");
    let image =
        esb_containerd::OciImage::from_layout(layout.path(), "esb.local/test/tiny:latest").unwrap();
    let first = client
        .import(&image, "esb.local/test/tiny:latest")
        .await
        .expect("import");
    assert_eq!(first.blobs_written, 3);
    assert_eq!(first.layers_unpacked, 1);
    assert!(client
        .image_exists("esb.local/test/tiny:latest")
        .await
        .unwrap());
    assert!(client.snapshot_exists(&first.chain_id).await.unwrap());

    // A second import writes and unpacks nothing.
    let again = client
        .import(&image, "esb.local/test/tiny:latest")
        .await
        .unwrap();
    assert_eq!((again.blobs_written, again.layers_unpacked), (0, 0));

    // Another namespace does not see it.
    assert!(!client
        .with_namespace("other")
        .image_exists("esb.local/test/tiny:latest")
        .await
        .unwrap());

    client
        .remove_image("esb.local/test/tiny:latest")
        .await
        .unwrap();
    assert!(!client
        .image_exists("esb.local/test/tiny:latest")
        .await
        .unwrap());
    ctd.stop().unwrap();
    assert!(ctd.pid().is_none());
    assert!(!ctd.socket().exists());
}

#[tokio::test]
async fn a_bad_state_dir_is_a_clear_error() {
    let long = format!("/tmp/{}", "x".repeat(120));
    let err = esb_containerd::Containerd::start(Path::new(&long))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
    let _ = std::fs::remove_dir_all(&long);
}
