//! Importing an OCI image into containerd: blobs into the content store (under a lease, with
//! the garbage-collection labels containerd's own client sets), the image record, and the
//! layers unpacked into the snapshotter (prepare, apply diff, commit by chain id), so the
//! image is ready to run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, Info,
    InfoRequest, ListContentRequest, ListImagesRequest, UpdateImageRequest, UpdateRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use crate::{io_err, rpc, Client, Error, SNAPSHOTTER};

/// An image stored in an OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// The manifest's digest.
    pub manifest_digest: String,
}

impl OciImage {
    /// The image stored under `reference` (annotation `io.containerd.image.name` or
    /// `org.opencontainers.image.ref.name`) in the layout's `index.json`.
    pub fn from_layout(layout: &Path, reference: &str) -> Result<OciImage, Error> {
        let index_path = layout.join("index.json");
        let text =
            std::fs::read(&index_path).map_err(io_err(format!("read {}", index_path.display())))?;
        let index: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::Image(format!("{}: {e}", index_path.display())))?;
        let found = index["manifests"].as_array().and_then(|ms| {
            ms.iter().find(|d| {
                d["annotations"]["io.containerd.image.name"] == reference
                    || d["annotations"]["org.opencontainers.image.ref.name"] == reference
            })
        });
        let d = found.ok_or_else(|| {
            Error::Image(format!("{reference} is not in {}", index_path.display()))
        })?;
        let digest = d["digest"]
            .as_str()
            .ok_or_else(|| Error::Image("index entry without digest".into()))?;
        Ok(OciImage {
            layout: layout.to_path_buf(),
            manifest_digest: digest.to_string(),
        })
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn json(&self, digest: &str) -> Result<(serde_json::Value, u64), Error> {
        let p = self.blob(digest);
        let bytes = std::fs::read(&p).map_err(io_err(format!("read {}", p.display())))?;
        let v =
            serde_json::from_slice(&bytes).map_err(|e| Error::Image(format!("{digest}: {e}")))?;
        Ok((v, bytes.len() as u64))
    }
}

/// What [`Client::import`] did.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// The image name in containerd.
    pub name: String,
    /// The manifest digest.
    pub digest: String,
    /// The chain id of the top layer (the snapshot a container starts from).
    pub chain_id: String,
    /// Blobs written to the content store (others were already there).
    pub blobs_written: usize,
    /// Layers unpacked (others were already unpacked).
    pub layers_unpacked: usize,
}

fn desc(media_type: &str, digest: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.into(),
        size: size as i64,
        ..Default::default()
    }
}

/// The chain ids of a layer stack (OCI image spec: `ChainID(L0|…|Ln) = sha256(ChainID(…Ln-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = Sha256::digest(format!("{prev} {d}").as_bytes());
                format!(
                    "sha256:{}",
                    h.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            }
        };
        out.push(next);
    }
    out
}

fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}", std::process::id())
}

impl Client {
    /// Imports `image` as `name`: writes missing blobs, creates or updates the image
    /// record, and unpacks it into the overlayfs snapshotter.
    pub async fn import(&self, image: &OciImage, name: &str) -> Result<ImportedImage, Error> {
        let (manifest, manifest_size) = image.json(&image.manifest_digest)?;
        let config_desc = &manifest["config"];
        let config_digest = config_desc["digest"]
            .as_str()
            .ok_or_else(|| Error::Image("manifest without config".into()))?;
        let (config, _) = image.json(config_digest)?;
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(Error::Image(format!(
                "{} layers but {} diff ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let top = chains.last().cloned().unwrap_or_default();

        let lease = unique("esb-import");
        let mut leases = LeasesClient::new(self.channel.clone());
        leases
            .create(self.request(
                containerd_client::services::v1::CreateRequest {
                    id: lease.clone(),
                    labels: HashMap::new(),
                },
                None,
            ))
            .await
            .map_err(rpc("leases.create"))?;
        let result = self
            .import_leased(
                image,
                name,
                &manifest,
                manifest_size,
                config_digest,
                &layers,
                &diff_ids,
                &chains,
                &lease,
            )
            .await;
        let _ = leases
            .delete(self.request(
                containerd_client::services::v1::DeleteRequest {
                    id: lease,
                    sync: false,
                },
                None,
            ))
            .await;
        let (blobs_written, layers_unpacked) = result?;
        Ok(ImportedImage {
            name: name.into(),
            digest: image.manifest_digest.clone(),
            chain_id: top,
            blobs_written,
            layers_unpacked,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn import_leased(
        &self,
        image: &OciImage,
        name: &str,
        manifest: &serde_json::Value,
        manifest_size: u64,
        config_digest: &str,
        layers: &[serde_json::Value],
        diff_ids: &[String],
        chains: &[String],
        lease: &str,
    ) -> Result<(usize, usize), Error> {
        let mut written = 0;
        // Layers, with their uncompressed digest.
        for (l, diff_id) in layers.iter().zip(diff_ids) {
            let d = l["digest"]
                .as_str()
                .ok_or_else(|| Error::Image("layer without digest".into()))?;
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
            written += usize::from(self.put_blob(&image.blob(d), d, labels, lease).await?);
        }
        // Config, pointing the garbage collector at the unpacked snapshot.
        let mut labels = HashMap::new();
        if let Some(top) = chains.last() {
            labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.clone(),
            );
        }
        written += usize::from(
            self.put_blob(&image.blob(config_digest), config_digest, labels, lease)
                .await?,
        );
        // Manifest, referencing config and layers.
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            config_digest.to_string(),
        )]);
        for (i, l) in layers.iter().enumerate() {
            if let Some(d) = l["digest"].as_str() {
                labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.to_string());
            }
        }
        written += usize::from(
            self.put_blob(
                &image.blob(&image.manifest_digest),
                &image.manifest_digest,
                labels,
                lease,
            )
            .await?,
        );

        let unpacked = self.unpack(layers, chains, lease).await?;

        let media_type = manifest["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let record = Image {
            name: name.into(),
            target: Some(desc(media_type, &image.manifest_digest, manifest_size)),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let created = images
            .create(self.request(
                CreateImageRequest {
                    image: Some(record.clone()),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                images
                    .update(self.request(
                        UpdateImageRequest {
                            image: Some(record),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(rpc("images.update"))?;
            }
            Err(s) => return Err(rpc("images.create")(s)),
        }
        Ok((written, unpacked))
    }

    /// Writes a blob unless present; sets its labels either way. True when written.
    async fn put_blob(
        &self,
        path: &Path,
        digest: &str,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<bool, Error> {
        let mut content = ContentClient::new(self.channel.clone());
        let present = content
            .info(self.request(
                InfoRequest {
                    digest: digest.into(),
                },
                Some(lease),
            ))
            .await
            .is_ok();
        if present {
            let info = Info {
                digest: digest.into(),
                labels,
                ..Default::default()
            };
            content
                .update(self.request(
                    UpdateRequest {
                        info: Some(info),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["labels".into()],
                        }),
                    },
                    Some(lease),
                ))
                .await
                .map_err(rpc("content.update"))?;
            return Ok(false);
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(io_err(format!("open {}", path.display())))?;
        let total = file
            .metadata()
            .await
            .map_err(io_err(format!("stat {}", path.display())))?
            .len() as i64;
        let reference = unique("esb-write");
        // Read all chunks first (bounded by the blob size) so the request stream is simple.
        const CHUNK: usize = 1 << 20;
        let mut reqs = Vec::new();
        let mut offset = 0i64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file
                .read(&mut buf)
                .await
                .map_err(io_err(format!("read {}", path.display())))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            reqs.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.into(),
                offset,
                data: buf,
                labels: HashMap::new(),
            });
            offset += n as i64;
        }
        reqs.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.into(),
            offset,
            data: Vec::new(),
            labels,
        });
        let stream = futures::stream::iter(reqs);
        let res = content.write(self.request(stream, Some(lease))).await;
        match res {
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                loop {
                    match inbound.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                        Err(s) => return Err(rpc("content.write")(s)),
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(rpc("content.write")(s)),
        }
        Ok(true)
    }

    /// Unpacks the layers into the snapshotter: for each chain id not yet present, prepare
    /// an active snapshot on its parent, apply the layer diff, commit it under the chain id.
    async fn unpack(
        &self,
        layers: &[serde_json::Value],
        chains: &[String],
        lease: &str,
    ) -> Result<usize, Error> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        let mut parent = String::new();
        let mut done = 0;
        for (l, chain) in layers.iter().zip(chains) {
            let exists = snaps
                .stat(self.request(
                    StatSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: chain.clone(),
                    },
                    Some(lease),
                ))
                .await
                .is_ok();
            if !exists {
                let key = format!("{} {chain}", unique("extract"));
                let mounts = snaps
                    .prepare(self.request(
                        PrepareSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: key.clone(),
                            parent: parent.clone(),
                            labels: HashMap::new(),
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(rpc("snapshots.prepare"))?
                    .into_inner()
                    .mounts;
                let media = l["mediaType"]
                    .as_str()
                    .unwrap_or("application/vnd.oci.image.layer.v1.tar+gzip");
                let d = l["digest"].as_str().unwrap_or_default();
                let size = l["size"].as_u64().unwrap_or(0);
                let applied = diff
                    .apply(self.request(
                        ApplyRequest {
                            diff: Some(desc(media, d, size)),
                            mounts,
                            payloads: HashMap::new(),
                            sync_fs: false,
                        },
                        Some(lease),
                    ))
                    .await;
                let committed = match applied {
                    Ok(_) => {
                        snaps
                            .commit(self.request(
                                CommitSnapshotRequest {
                                    snapshotter: SNAPSHOTTER.into(),
                                    name: chain.clone(),
                                    key: key.clone(),
                                    labels: HashMap::new(),
                                },
                                Some(lease),
                            ))
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(s) = committed {
                    let _ = snaps
                        .remove(self.request(
                            RemoveSnapshotRequest {
                                snapshotter: SNAPSHOTTER.into(),
                                key,
                            },
                            Some(lease),
                        ))
                        .await;
                    // Another importer committed the same chain id meanwhile: fine.
                    if s.code() != tonic::Code::AlreadyExists {
                        return Err(rpc("unpack layer")(s));
                    }
                }
                done += 1;
            }
            parent = chain.clone();
        }
        Ok(done)
    }

    /// Whether an image of that name exists.
    pub async fn image_exists(&self, name: &str) -> Result<bool, Error> {
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .get(self.request(GetImageRequest { name: name.into() }, None))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(rpc("images.get")(s)),
        }
    }

    /// The digests of every blob in the content store.
    pub async fn content_digests(&self) -> Result<std::collections::HashSet<String>, Error> {
        let mut content = ContentClient::new(self.channel.clone());
        let mut stream = content
            .list(self.request(ListContentRequest { filters: vec![] }, None))
            .await
            .map_err(rpc("content.list"))?
            .into_inner();
        let mut out = std::collections::HashSet::new();
        while let Some(page) = stream.message().await.map_err(rpc("content.list"))? {
            out.extend(page.info.into_iter().map(|i| i.digest));
        }
        Ok(out)
    }

    /// Names of the images whose name starts with `prefix`, with their update time (Unix
    /// seconds).
    pub async fn images_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, Error> {
        let mut images = ImagesClient::new(self.channel.clone());
        let list = images
            .list(self.request(ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(rpc("images.list"))?
            .into_inner();
        Ok(list
            .images
            .into_iter()
            .filter(|i| i.name.starts_with(prefix))
            .map(|i| (i.name, i.updated_at.map(|t| t.seconds).unwrap_or(0)))
            .collect())
    }

    /// Deletes an image record (content and snapshots are garbage-collected later).
    pub async fn remove_image(&self, name: &str) -> Result<(), Error> {
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .delete(self.request(
                DeleteImageRequest {
                    name: name.into(),
                    sync: false,
                    target: None,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(rpc("images.delete")(s)),
        }
    }

    /// Whether the snapshot `key` exists in the overlayfs snapshotter.
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool, Error> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        match snaps
            .stat(self.request(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(rpc("snapshots.stat")(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_one_and_two_layers() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let expect = Sha256::digest(b"sha256:aaaa sha256:bbbb");
        assert_eq!(
            c[1],
            format!(
                "sha256:{}",
                expect
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
    }
}
