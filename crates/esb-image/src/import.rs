//! `esb image import`: an image given as an OCI image layout (directory or tarball) or a
//! `docker save` tarball, copied into esb's layout under a reference.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Descriptor, Digest, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::Serialize;

use crate::store::{file_digest, Blob, Layout};
use crate::Error;

/// What was imported.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The reference it is stored under.
    pub reference: String,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// Number of layers.
    pub layers: usize,
    /// The source format (`oci-layout` or `docker-save`).
    pub format: String,
}

fn imp(m: impl Into<String>) -> Error {
    Error::Import(m.into())
}

/// Imports the image at `source` into `layout`. `reference` names it; when `None`, the name
/// recorded in the source (`io.containerd.image.name`, `org.opencontainers.image.ref.name`
/// or docker's `RepoTags`) is used.
pub fn import(
    layout: &Layout,
    source: &Path,
    reference: Option<&str>,
) -> Result<ImportReport, Error> {
    let (report, manifest) = import_blobs(layout, source, reference)?;
    layout.set_refs(&[(report.reference.clone(), manifest)])?;
    Ok(report)
}

/// Copies the image at `source` into `layout`'s blobs without naming it (the build names
/// an imported function image only once every function has built): its report and its
/// manifest blob.
pub(crate) fn import_blobs(
    layout: &Layout,
    source: &Path,
    reference: Option<&str>,
) -> Result<(ImportReport, Blob), Error> {
    let meta = fs::metadata(source).map_err(|e| Error::io(source, e))?;
    if meta.is_dir() {
        return import_dir(layout, source, reference);
    }
    // A tarball (optionally gzip-compressed): unpack to a scratch directory next to the layout.
    let scratch = tempdir_in(layout.root())?;
    let file = fs::File::open(source).map_err(|e| Error::io(source, e))?;
    let mut magic = [0u8; 2];
    fs::File::open(source)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| Error::io(source, e))?;
    let reader: Box<dyn Read> = if magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.unpack(scratch.path()).map_err(|e| {
        imp(format!(
            "{}: not a readable tar archive: {e}",
            source.display()
        ))
    })?;
    import_dir(layout, scratch.path(), reference)
}

struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempdir_in(dir: &Path) -> Result<Scratch, Error> {
    let p = crate::store::tmp_path(dir, "import");
    fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    Ok(Scratch(p))
}

fn import_dir(
    layout: &Layout,
    dir: &Path,
    reference: Option<&str>,
) -> Result<(ImportReport, Blob), Error> {
    if dir.join("index.json").is_file() {
        import_oci(layout, dir, reference)
    } else if dir.join("manifest.json").is_file() {
        import_docker(layout, dir, reference)
    } else {
        Err(imp(format!("{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)", dir.display())))
    }
}

fn copy_blob(layout: &Layout, src_root: &Path, digest: &str) -> Result<Blob, Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| imp(format!("unsupported digest {digest}")))?;
    let src = src_root.join("blobs/sha256").join(hex);
    if !src.is_file() {
        return Err(imp(format!("blob {digest} is missing from the source")));
    }
    layout.put_file(&src, digest)
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn import_oci(
    layout: &Layout,
    dir: &Path,
    reference: Option<&str>,
) -> Result<(ImportReport, Blob), Error> {
    let index = ImageIndex::from_file(dir.join("index.json"))
        .map_err(|e| imp(format!("index.json: {e}")))?;
    let mut candidates: Vec<Descriptor> = index.manifests().clone();
    if candidates.is_empty() {
        return Err(imp("index.json lists no image"));
    }
    if candidates.len() > 1 {
        if let Some(r) = reference {
            let named: Vec<Descriptor> = candidates
                .iter()
                .filter(|d| {
                    d.annotations()
                        .as_ref()
                        .is_some_and(|a| a.values().any(|v| v == r))
                })
                .cloned()
                .collect();
            if !named.is_empty() {
                candidates = named;
            }
        }
    }
    let mut desc = candidates[0].clone();
    let name = reference.map(str::to_string).or_else(|| {
        desc.annotations().as_ref().and_then(|a| {
            a.get("io.containerd.image.name")
                .or_else(|| a.get("org.opencontainers.image.ref.name"))
                .cloned()
        })
    });
    // A multi-platform index: choose this machine's platform.
    if *desc.media_type() == MediaType::ImageIndex {
        copy_blob(layout, dir, desc.digest().as_ref())?;
        let inner = ImageIndex::from_reader(
            fs::File::open(dir.join("blobs/sha256").join(desc.digest().digest()))
                .map_err(|e| Error::io(dir, e))?,
        )
        .map_err(|e| imp(format!("nested index: {e}")))?;
        desc = inner
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == host_platform()
                })
            })
            .cloned()
            .ok_or_else(|| {
                imp(format!(
                    "the image has no linux/{} variant",
                    host_platform()
                ))
            })?;
    }
    let manifest_digest = desc.digest().to_string();
    let manifest_path = dir.join("blobs/sha256").join(desc.digest().digest());
    let manifest =
        ImageManifest::from_file(&manifest_path).map_err(|e| imp(format!("manifest: {e}")))?;
    copy_blob(layout, dir, manifest.config().digest().as_ref())?;
    for l in manifest.layers() {
        copy_blob(layout, dir, l.digest().as_ref())?;
    }
    let blob = copy_blob(layout, dir, &manifest_digest)?;
    let reference =
        name.ok_or_else(|| imp("the image has no name: give one (esb image import PATH NAME)"))?;
    Ok((
        ImportReport {
            reference,
            manifest_digest: blob.digest.clone(),
            layers: manifest.layers().len(),
            format: "oci-layout".into(),
        },
        blob,
    ))
}

fn import_docker(
    layout: &Layout,
    dir: &Path,
    reference: Option<&str>,
) -> Result<(ImportReport, Blob), Error> {
    let text = fs::read(dir.join("manifest.json")).map_err(|e| Error::io(dir, e))?;
    let entries: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| imp(format!("manifest.json: {e}")))?;
    let entry = entries
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| {
                    reference.is_some_and(|r| {
                        e["RepoTags"]
                            .as_array()
                            .is_some_and(|t| t.iter().any(|x| x == r))
                    })
                })
                .or_else(|| a.first())
        })
        .ok_or_else(|| imp("manifest.json lists no image"))?;
    let config_rel = entry["Config"]
        .as_str()
        .ok_or_else(|| imp("manifest.json: no Config"))?;
    let config_path = dir.join(config_rel);
    let config_digest = file_digest(&config_path)?;
    let config = layout.put_file(&config_path, &config_digest)?;
    let mut layers = Vec::new();
    for l in entry["Layers"]
        .as_array()
        .ok_or_else(|| imp("manifest.json: no Layers"))?
    {
        let rel = l
            .as_str()
            .ok_or_else(|| imp("manifest.json: bad layer entry"))?;
        let path = dir.join(rel);
        let mut magic = [0u8; 2];
        fs::File::open(&path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|e| Error::io(&path, e))?;
        let media = if magic == [0x1f, 0x8b] {
            MediaType::ImageLayerGzip
        } else {
            MediaType::ImageLayer
        };
        let digest = file_digest(&path)?;
        let blob = layout.put_file(&path, &digest)?;
        layers.push(Descriptor::new(
            media,
            blob.size,
            Digest::from_str(&blob.digest).map_err(|e| imp(e.to_string()))?,
        ));
    }
    let n = layers.len();
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config.size,
            Digest::from_str(&config.digest).map_err(|e| imp(e.to_string()))?,
        ))
        .layers(layers)
        .build()
        .map_err(|e| imp(e.to_string()))?;
    let blob = layout.put_bytes(&serde_json::to_vec(&manifest).map_err(|e| imp(e.to_string()))?)?;
    let reference = reference
        .map(str::to_string)
        .or_else(|| {
            entry["RepoTags"]
                .as_array()
                .and_then(|t| t.first())
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .ok_or_else(|| imp("the image has no RepoTags: give it a name"))?;
    Ok((
        ImportReport {
            reference,
            manifest_digest: blob.digest.clone(),
            layers: n,
            format: "docker-save".into(),
        },
        blob,
    ))
}
