//! Helpers shared by the image builder's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Copies a fixture directory into a fresh temporary directory (tests modify their copy).
pub fn fixture(name: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = tempfile::tempdir().unwrap();
    copy_dir(&src, dst.path());
    dst
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Build options writing into `out`, with `supervisor` as the supervisor binary.
pub fn options(
    t: &esb_template::Template,
    out: &Path,
    supervisor: &Path,
) -> esb_image::BuildOptions {
    let mut o = esb_image::BuildOptions::new(t, supervisor.to_path_buf());
    o.out_dir = out.to_path_buf();
    o
}

/// Builds, collecting progress events.
pub fn build(
    t: &esb_template::Template,
    o: &esb_image::BuildOptions,
) -> (esb_image::BuildReport, Vec<esb_image::Progress>) {
    let events = std::sync::Mutex::new(Vec::new());
    let report = esb_image::build(t, o, &|p: &esb_image::Progress| {
        events.lock().unwrap().push(p.clone())
    })
    .unwrap_or_else(|e| panic!("build failed: {e}"));
    (report, events.into_inner().unwrap())
}

pub fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

pub fn json_blob(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&std::fs::read(blob(layout, digest)).unwrap()).unwrap()
}

/// Paths (and modes) inside a gzip layer blob.
pub fn layer_entries(layout: &Path, digest: &str) -> Vec<(String, u32)> {
    let f = std::fs::File::open(blob(layout, digest)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().mode().unwrap(),
            )
        })
        .collect()
}

/// A stand-in supervisor binary for tests that do not run the image.
pub fn fake_supervisor(dir: &Path) -> PathBuf {
    let p = dir.join("esb-supervisor");
    std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
    p
}
