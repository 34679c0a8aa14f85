//! `esb image import`: a `docker save` tarball and an OCI image layout (directory or
//! tarball) land in esb's layout under a reference; bad input is refused cleanly.

mod common;

use std::path::Path;

use common::*;

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        sha2::Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A legacy `docker save` archive: manifest.json, a config, one uncompressed layer.
fn docker_save(path: &Path) -> (String, String) {
    let layer = tar_of(&[("hello.txt", b"hi\n".to_vec())]);
    let diff_id = sha(&layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    .to_string();
    let config_name = format!("{}.json", &sha(config.as_bytes())[7..]);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["public.ecr.aws/lambda/python:3.12"],
        "Layers": ["abc/layer.tar"]}])
    .to_string();
    let archive = tar_of(&[
        ("manifest.json", manifest.into_bytes()),
        (&config_name, config.into_bytes()),
        ("abc/layer.tar", layer),
    ]);
    std::fs::write(path, archive).unwrap();
    (diff_id, "public.ecr.aws/lambda/python:3.12".into())
}

#[test]
fn docker_save_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("image.tar");
    let (diff_id, tag) = docker_save(&src);
    let layout = esb_image::Layout::open(&dir.path().join("layout")).unwrap();
    let r = esb_image::import(&layout, &src, None).unwrap();
    assert_eq!(r.reference, tag);
    assert_eq!(r.format, "docker-save");
    assert_eq!(r.layers, 1);
    let manifest = json_blob(layout.root(), &r.manifest_digest);
    // An uncompressed layer keeps its digest: it is its own diff id.
    assert_eq!(manifest["layers"][0]["digest"], diff_id.as_str());
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert!(layout.lookup(&tag).unwrap().is_some());
    // Renamed on import.
    let r2 = esb_image::import(&layout, &src, Some("esb.local/base/python:3.12")).unwrap();
    assert_eq!(r2.manifest_digest, r.manifest_digest);
    assert!(layout
        .lookup("esb.local/base/python:3.12")
        .unwrap()
        .is_some());
    // No scratch left behind.
    let leftovers: Vec<_> = std::fs::read_dir(layout.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn oci_layout_directory_and_tarball() {
    esb_testkit::require_root();
    let app = fixture("rust-fn");
    std::fs::create_dir_all(app.path().join("bootstrap-dir")).unwrap();
    std::fs::write(app.path().join("bootstrap-dir/bootstrap"), "#!/bin/sh\n").unwrap();
    let t = esb_template::load(&app.path().join("template.yaml"), &Default::default()).unwrap();
    let built = tempfile::tempdir().unwrap();
    let (report, _) = build(&t, &options(&t, built.path(), &fake_supervisor(app.path())));
    let reference = report.images[0].reference.clone();

    // From the layout directory.
    let dest = tempfile::tempdir().unwrap();
    let layout = esb_image::Layout::open(dest.path()).unwrap();
    let r = esb_image::import(&layout, built.path(), Some(&reference)).unwrap();
    assert_eq!(r.format, "oci-layout");
    assert_eq!(r.manifest_digest, report.images[0].manifest_digest);
    assert_eq!(r.layers, 3);

    // From a tarball of it (gzip), under another name.
    let tgz = built
        .path()
        .parent()
        .unwrap()
        .join(format!("layout-{}.tar.gz", std::process::id()));
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(built.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let r2 = esb_image::import(&layout, &tgz, Some(&reference));
    std::fs::remove_file(&tgz).unwrap();
    let r2 = r2.unwrap();
    assert_eq!(r2.manifest_digest, r.manifest_digest);
}

#[test]
fn not_an_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, tar_of(&[("readme.txt", b"no image here".to_vec())])).unwrap();
    let layout = esb_image::Layout::open(&dir.path().join("layout")).unwrap();
    let err = esb_image::import(&layout, &junk, None).unwrap_err();
    assert!(
        err.to_string().contains("neither an OCI image layout"),
        "{err}"
    );
    assert!(!dir.path().join("layout/index.json").exists());
}
