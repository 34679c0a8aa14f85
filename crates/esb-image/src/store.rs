//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/…`), written so
//! that a crash never leaves a half-written blob or index behind: everything goes to a
//! temporary file first and is renamed into place.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// A content digest and size: what a descriptor needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// Hex encoding of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex(&self.hasher.finalize())),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique temporary path next to `dir` entries.
pub(crate) fn tmp_path(dir: &Path, stem: &str) -> PathBuf {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{stem}-{}-{n}", std::process::id()))
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = tmp_path(dir, "write");
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens (creating when needed) the layout at `root`.
    pub fn open(root: &Path) -> Result<Layout, Error> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the blob with this digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores bytes as a blob.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Blob, Error> {
        let digest = sha256_digest(data);
        let path = self.blob_path(&digest);
        if !path.is_file() {
            write_atomic(&path, data)?;
        }
        Ok(Blob {
            digest,
            size: data.len() as u64,
        })
    }

    /// Stores a blob produced by `fill`, which writes into the given writer; returns the
    /// blob and whatever `fill` returned.
    pub fn put_with<T>(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> Result<T, Error>,
    ) -> Result<(Blob, T), Error> {
        let dir = self.root.join("blobs/sha256");
        let tmp = tmp_path(&dir, "blob");
        let res = (|| {
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = HashingWriter::new(BufWriter::new(file));
            let out = fill(&mut w)?;
            let (buf, digest, size) = w.finish();
            let file = buf
                .into_inner()
                .map_err(|e| Error::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            let path = self.blob_path(&digest);
            fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
            Ok((Blob { digest, size }, out))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Stores the file at `src` as a blob (hard-linked when possible, else copied),
    /// verifying its digest.
    pub fn put_file(&self, src: &Path, expected: &str) -> Result<Blob, Error> {
        self.put_file_checked(src, expected, true)
    }

    /// [`Layout::put_file`], with the digest check optional: skipped for files esb wrote
    /// itself and recorded with their digest (the base image cache).
    pub fn put_file_checked(
        &self,
        src: &Path,
        expected: &str,
        verify: bool,
    ) -> Result<Blob, Error> {
        let path = self.blob_path(expected);
        let size = fs::metadata(src).map_err(|e| Error::io(src, e))?.len();
        if path.is_file() {
            return Ok(Blob {
                digest: expected.to_string(),
                size,
            });
        }
        let dir = self.root.join("blobs/sha256");
        let tmp = tmp_path(&dir, "link");
        if fs::hard_link(src, &tmp).is_err() {
            fs::copy(src, &tmp).map_err(|e| Error::io(src, e))?;
        }
        let got = if verify {
            file_digest(&tmp)?
        } else {
            expected.to_string()
        };
        if got != expected {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Corrupt(format!(
                "{}: digest {got}, expected {expected}",
                src.display()
            )));
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(Blob {
            digest: expected.to_string(),
            size,
        })
    }

    /// Reads a blob.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(digest);
        fs::read(&p).map_err(|e| Error::io(&p, e))
    }

    /// The current `index.json` (empty when absent).
    pub fn index(&self) -> Result<serde_json::Value, Error> {
        let p = self.root.join("index.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(
                serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}),
            ),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// The manifest descriptor stored under the reference `name`, if any.
    pub fn lookup(&self, name: &str) -> Result<Option<serde_json::Value>, Error> {
        let index = self.index()?;
        Ok(index["manifests"]
            .as_array()
            .and_then(|m| m.iter().find(|d| d["annotations"][ANNOTATION_REF] == name))
            .cloned())
    }

    /// Points the references at the given manifests (replacing earlier entries with the
    /// same names, keeping the others) and writes `index.json` atomically.
    pub fn set_refs(&self, refs: &[(String, Blob)]) -> Result<(), Error> {
        // Concurrent builds into one layout: read-modify-write under an exclusive lock.
        let lock_path = self.root.join(".index.lock");
        let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        let mut index = self.index()?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let mut kept: Vec<serde_json::Value> = manifests
            .into_iter()
            .filter(|d| {
                let name = d["annotations"][ANNOTATION_REF].as_str().unwrap_or("");
                !refs.iter().any(|(r, _)| r == name)
            })
            .collect();
        for (name, blob) in refs {
            kept.push(serde_json::json!({
                "mediaType": MEDIA_MANIFEST,
                "digest": blob.digest,
                "size": blob.size,
                "annotations": {ANNOTATION_REF: name, ANNOTATION_CONTAINERD_NAME: name},
            }));
        }
        index["manifests"] = serde_json::Value::Array(kept);
        write_atomic(
            &self.root.join("index.json"),
            &serde_json::to_vec_pretty(&index).unwrap(),
        )
    }
}

/// `sha256:<hex>` of a file's content.
pub(crate) fn file_digest(path: &Path) -> Result<String, Error> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

/// OCI media types used here.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// gzip-compressed layer.
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Uncompressed layer.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The reference-name annotation of `index.json` entries.
pub const ANNOTATION_REF: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd's importer reads for the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_set_refs_keep_every_reference() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::open(d.path()).unwrap();
        std::thread::scope(|s| {
            for i in 0..8 {
                let layout = layout.clone();
                s.spawn(move || {
                    let blob = layout
                        .put_bytes(format!("manifest {i}").as_bytes())
                        .unwrap();
                    layout
                        .set_refs(&[(format!("esb.local/t/f{i}:latest"), blob)])
                        .unwrap();
                });
            }
        });
        for i in 0..8 {
            assert!(
                layout
                    .lookup(&format!("esb.local/t/f{i}:latest"))
                    .unwrap()
                    .is_some(),
                "f{i} lost"
            );
        }
        // Re-pointing a reference replaces its entry.
        let b = layout.put_bytes(b"new").unwrap();
        layout
            .set_refs(&[("esb.local/t/f0:latest".into(), b.clone())])
            .unwrap();
        assert_eq!(
            layout.lookup("esb.local/t/f0:latest").unwrap().unwrap()["digest"],
            b.digest.as_str()
        );
        assert_eq!(
            layout.index().unwrap()["manifests"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
    }
}
