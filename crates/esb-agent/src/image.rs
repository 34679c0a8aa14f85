//! Images as the agent needs them: the run configuration from the image config, and the
//! unpacked root filesystem (a committed snapshot per layer chain), unpacking on first use
//! when the image was imported without it.

use std::collections::HashMap;

use containerd_client::types::Descriptor;
use serde::Deserialize;

use crate::containerd::{Containerd, CtdError};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What the worker runs, from the image config.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// Entrypoint followed by Cmd.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory ("/" when unset).
    pub cwd: String,
}

/// A resolved image: how to run it and the snapshot holding its root filesystem.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Run configuration.
    pub run: RunConfig,
    /// Chain id of the top layer: the parent of each worker's snapshot.
    pub chain_id: String,
    config_digest: String,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Blob>,
    #[serde(default)]
    layers: Vec<Blob>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct Blob {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: i64,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
struct ContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Errors resolving an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such image in the namespace.
    #[error("image not found in containerd: {0}")]
    NotFound(String),
    /// The image's metadata is unusable.
    #[error("image {image:?}: {msg}")]
    Invalid {
        /// Image name.
        image: String,
        /// What is wrong.
        msg: String,
    },
    /// The image could not be pulled from its registry.
    #[error("pull {reference}: {msg}")]
    Pull {
        /// The image reference.
        reference: String,
        /// What the registry (or the way to it) answered.
        msg: String,
    },
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] CtdError),
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

use esb_containerd::chain_ids;

/// Reads the image's manifest and config from containerd.
pub async fn resolve(ctd: &Containerd, name: &str) -> Result<ResolvedImage, ImageError> {
    let invalid = |msg: String| ImageError::Invalid {
        image: name.to_string(),
        msg,
    };
    let target = match ctd.image_target(name).await {
        Ok(t) => t,
        Err(e) if e.not_found() => return Err(ImageError::NotFound(name.to_string())),
        Err(e) => return Err(e.into()),
    };
    let mut digest = target.digest.clone();
    let mut manifest: Manifest = serde_json::from_slice(&ctd.read_blob(&digest).await?)
        .map_err(|e| invalid(format!("manifest: {e}")))?;
    if INDEX_TYPES.contains(&target.media_type.as_str()) || !manifest.manifests.is_empty() {
        let entry = manifest
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == arch())
            })
            .ok_or_else(|| invalid(format!("no manifest for linux/{}", arch())))?;
        digest = entry.digest.clone();
        manifest = serde_json::from_slice(&ctd.read_blob(&digest).await?)
            .map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
    }
    let _ = manifest.media_type;
    let config_blob = manifest
        .config
        .ok_or_else(|| invalid("manifest has no config".into()))?;
    let config: ImageConfig = serde_json::from_slice(&ctd.read_blob(&config_blob.digest).await?)
        .map_err(|e| invalid(format!("config: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() || manifest.layers.is_empty() {
        return Err(invalid(
            "layer count does not match the config's diff_ids".into(),
        ));
    }
    let c = config.config.unwrap_or_default();
    let mut args = c.entrypoint.unwrap_or_default();
    args.extend(c.cmd.unwrap_or_default());
    if args.is_empty() {
        return Err(invalid("no Entrypoint or Cmd".into()));
    }
    let chain = chain_ids(&config.rootfs.diff_ids);
    Ok(ResolvedImage {
        run: RunConfig {
            args,
            env: c.env.unwrap_or_default(),
            cwd: c
                .working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        },
        chain_id: chain.last().cloned().expect("at least one layer"),
        config_digest: config_blob.digest,
        layers: manifest
            .layers
            .into_iter()
            .map(|l| Descriptor {
                media_type: l.media_type,
                digest: l.digest,
                size: l.size,
                annotations: HashMap::new(),
            })
            .collect(),
        diff_ids: config.rootfs.diff_ids,
    })
}

/// Makes sure the image's layers are unpacked into the snapshotter (as `ctr image import`
/// or the image builder normally leave them), unpacking the missing ones under `lease`.
pub async fn ensure_unpacked(
    ctd: &Containerd,
    image: &ResolvedImage,
    lease: &str,
) -> Result<(), ImageError> {
    if ctd.snapshot_exists(&image.chain_id).await? {
        return Ok(());
    }
    let chain = chain_ids(&image.diff_ids);
    let mut parent = String::new();
    for (layer, chain_id) in image.layers.iter().zip(&chain) {
        if !ctd.snapshot_exists(chain_id).await? {
            let key = format!("esb-extract-{}-{}", rand::random::<u32>(), chain_id);
            let mounts = ctd.prepare_snapshot(&key, &parent, Some(lease)).await?;
            let applied = ctd.apply_layer(layer.clone(), mounts, Some(lease)).await;
            let committed = match applied {
                Ok(()) => ctd.commit_snapshot(chain_id, &key, Some(lease)).await,
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                let _ = ctd.remove_snapshot(&key).await;
                // Another worker of the same image may have committed it meanwhile.
                if !ctd.snapshot_exists(chain_id).await? {
                    return Err(e.into());
                }
            }
        }
        parent = chain_id.clone();
    }
    // Keep the unpacked snapshot alive as long as the image is (containerd's GC label).
    let key = format!("containerd.io/gc.ref.snapshot.{}", ctd.snapshotter());
    ctd.label_blob(&image.config_digest, &key, &image.chain_id)
        .await?;
    Ok(())
}
