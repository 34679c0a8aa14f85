//! Images the node's containerd lacks, pulled from the registry their reference names
//! (a compute node's only source of images: `10.99.0.1:5010/esb/functions/F@sha256:…`).
//!
//! Where a registry is served and which CA its certificate is checked with come from
//! containerd's hosts directory (`certs.d/HOST/hosts.toml`, the file `ctr images pull
//! --hosts-dir` reads too); a host without one is not pulled from. The connection is made
//! from the configured namespace (the runtime-node's on a compute node, where wg0 lives).
//! containerd 1.6 pulls client-side, so does the agent: the manifest, the config and the
//! layers containerd does not hold yet go to a scratch layout, then into containerd under
//! the reference (blobs, image record, unpacked layers), and the scratch goes. Concurrent
//! cold starts of one image share one pull; images of older revisions of a function go
//! once no worker uses them ([`Puller::prune`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use esb_registry::{HostsDir, ImageRef};

use crate::containerd::Containerd;
use crate::image::ImageError;

/// How the agent pulls.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// containerd's hosts directory (`certs.d`).
    pub hosts_dir: PathBuf,
    /// Namespace to dial registries from (`None`: the agent's own).
    pub netns: Option<String>,
    /// Where scratch layouts go while a pull runs.
    pub work_dir: PathBuf,
}

/// Pulls images, one pull per reference at a time.
pub(crate) struct Puller {
    cfg: PullConfig,
    socket: PathBuf,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Puller {
    pub(crate) fn new(cfg: PullConfig, containerd_socket: &Path) -> Puller {
        Puller {
            cfg,
            socket: containerd_socket.to_path_buf(),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure containerd holds `reference`, pulling it when it does not and its host
    /// is configured. Errors name the reference and what the registry answered.
    pub(crate) async fn ensure(&self, ctd: &Containerd, reference: &str) -> Result<(), ImageError> {
        let not_found = |why: String| ImageError::NotFound(format!("{reference} ({why})"));
        let Ok(image) = ImageRef::parse(reference) else {
            return Err(not_found(
                "not a registry reference: build or import it".into(),
            ));
        };
        let hosts = HostsDir::new(&self.cfg.hosts_dir);
        let endpoints = hosts
            .lookup(&image.host)
            .map_err(|e| pull_error(reference, e.to_string()))?
            .ok_or_else(|| {
                not_found(format!(
                    "no {} to pull it from",
                    hosts.file(&image.host).display()
                ))
            })?;
        // One pull per reference: later callers wait for it, then find the image.
        let gate = self
            .inflight
            .lock()
            .unwrap()
            .entry(reference.to_string())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        let result = async {
            if ctd.image_target(reference).await.is_ok() {
                return Ok(());
            }
            self.pull(&image, reference, &endpoints).await
        }
        .await;
        let mut inflight = self.inflight.lock().unwrap();
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(reference);
        }
        result
    }

    async fn pull(
        &self,
        image: &ImageRef,
        reference: &str,
        endpoints: &[esb_registry::Endpoint],
    ) -> Result<(), ImageError> {
        let client = esb_containerd::connect(&self.socket)
            .await
            .map_err(|e| pull_error(reference, e.to_string()))?;
        let have: HashSet<String> = client
            .content_digests()
            .await
            .map_err(|e| pull_error(reference, e.to_string()))?;
        let scratch = self.cfg.work_dir.join(format!(
            "pull-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let started = std::time::Instant::now();
        let result = async {
            let layout = esb_image::Layout::open(&scratch)
                .map_err(|e| pull_error(reference, e.to_string()))?;
            let mut errors = Vec::new();
            for e in endpoints {
                let mut registry = esb_image::Registry::from_setting(&e.url)
                    .map_err(|err| pull_error(reference, err.to_string()))?;
                registry.ca_file = e.ca.first().cloned();
                registry.netns = self.cfg.netns.clone();
                match esb_image::pull_missing(
                    &layout,
                    &registry,
                    &image.repository,
                    &image.reference,
                    reference,
                    &have,
                )
                .await
                {
                    Ok(report) => {
                        let oci = esb_containerd::OciImage {
                            layout: scratch.clone(),
                            manifest_digest: report.digest.clone(),
                        };
                        if image.is_digest() && report.digest != image.reference {
                            return Err(pull_error(
                                reference,
                                format!("{} answered manifest {}", e.url, report.digest),
                            ));
                        }
                        client
                            .import(&oci, reference)
                            .await
                            .map_err(|err| pull_error(reference, err.to_string()))?;
                        tracing::info!(
                            image = reference,
                            from = %e.url,
                            fetched = report.blobs_fetched,
                            ms = started.elapsed().as_millis() as u64,
                            "pulled"
                        );
                        return Ok(());
                    }
                    Err(err) => errors.push(format!("{}: {err}", e.url)),
                }
            }
            Err(pull_error(reference, errors.join("; ")))
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// Deletes the images of `reference`'s repository that no container uses, but the
    /// newest (the current revision: the last one imported or pulled): containerd then
    /// collects their content and snapshots.
    pub(crate) async fn prune(&self, ctd: &Containerd, reference: &str) {
        let Ok(image) = ImageRef::parse(reference) else {
            return;
        };
        let prefix = format!("{}/{}@", image.host, image.repository);
        let Ok(client) = esb_containerd::connect(&self.socket).await else {
            return;
        };
        let client = client.with_namespace(ctd.namespace());
        let Ok(mut images) = client.images_with_prefix(&prefix).await else {
            return;
        };
        if images.len() < 2 {
            return;
        }
        images.sort_by_key(|(_, updated)| *updated);
        images.pop();
        let Ok(containers) = ctd.containers("").await else {
            return;
        };
        let used: HashSet<String> = containers.into_iter().map(|c| c.image).collect();
        for (name, _) in images.iter().filter(|(n, _)| !used.contains(n)) {
            match client.remove_image(name).await {
                Ok(()) => tracing::info!(image = %name, "removed an older revision"),
                Err(e) => tracing::warn!(image = %name, "remove an older revision: {e}"),
            }
        }
    }
}

fn pull_error(reference: &str, msg: String) -> ImageError {
    ImageError::Pull {
        reference: reference.to_string(),
        msg,
    }
}
