//! Function images without Docker.
//!
//! [`build`] turns every function of a [`Template`] into an OCI image in one OCI image
//! layout directory: the base image chosen by `Runtime` ([`base`]), then each of the
//! function's template layers under `/opt`, then its code under `/var/task`, then the
//! supervisor; the image config carries the entrypoint, environment and working directory.
//! Layers are content-addressed and cached by a fingerprint of their input, so an unchanged
//! function is not rebuilt and a changed file rebuilds only the layer that holds it. Layers
//! are built in parallel.
//!
//! [`import`] brings an existing image (OCI layout or `docker save` tarball) into the same
//! layout, for `PackageType: Image` functions and AWS's base images fetched elsewhere.

pub mod base;
mod build;
mod import;
pub mod layer;
mod registry;
pub mod store;

use std::path::{Path, PathBuf};

pub use build::{
    build, image_reference, BuildOptions, BuildReport, ImageReport, LayerReport, Progress,
};
pub use import::{import, ImportReport};
pub use registry::{
    catalog, delete_manifest, pull, pull_missing, push, push_mounting, tagged_digests, PullReport,
    PushReport, Registry,
};
pub use store::{Blob, Layout};

/// Errors of the image builder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A function cannot be built as declared.
    #[error("function {function}: {message}")]
    Function {
        /// Logical id.
        function: String,
        /// What is wrong.
        message: String,
    },
    /// Functions (or their layers) cannot be built: one entry per function or layer,
    /// naming it and what is wrong (every one found, not only the first).
    #[error("cannot build: {}", .0.join("; "))]
    Build(Vec<String>),
    /// Building a base image failed.
    #[error("base image: {0}")]
    Base(String),
    /// Stored data does not match its digest or format.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// An image to import is not in a supported format.
    #[error("import: {0}")]
    Import(String),
    /// The registry refused or could not be reached.
    #[error("registry: {0}")]
    Registry(String),
    /// containerd refused or failed.
    #[error(transparent)]
    Containerd(#[from] esb_containerd::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Imports images of the layout at `layout_dir` (by reference, as [`build`] named them)
/// into the containerd at `socket`, namespace `esb-runtime`, unpacked for the overlayfs
/// snapshotter.
pub async fn import_to_containerd(
    layout_dir: &Path,
    references: &[String],
    socket: &Path,
) -> Result<Vec<esb_containerd::ImportedImage>, Error> {
    let client = esb_containerd::connect(socket).await?;
    let mut out = Vec::new();
    for r in references {
        let image = esb_containerd::OciImage::from_layout(layout_dir, r)?;
        out.push(client.import(&image, r).await?);
    }
    Ok(out)
}

/// Imports images of the layout at `layout_dir` into the containerd at `socket`, each
/// `(layout reference, name in containerd)` pair under its own name (the box names images
/// by their registry reference with digest, so that the agent finds them as a pull would
/// have left them).
pub async fn import_named(
    layout_dir: &Path,
    images: &[(String, String)],
    socket: &Path,
) -> Result<Vec<esb_containerd::ImportedImage>, Error> {
    let client = esb_containerd::connect(socket).await?;
    let mut out = Vec::new();
    for (r, name) in images {
        let image = esb_containerd::OciImage::from_layout(layout_dir, r)?;
        out.push(client.import(&image, name).await?);
    }
    Ok(out)
}

/// [`import_to_containerd`] for callers outside an async runtime.
pub fn import_to_containerd_blocking(
    layout_dir: &Path,
    references: &[String],
    socket: &Path,
) -> Result<Vec<esb_containerd::ImportedImage>, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(socket, e))?;
    rt.block_on(import_to_containerd(layout_dir, references, socket))
}

/// `$ESB_CACHE_DIR`, default `/var/cache/esb`: where base images are cached.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("ESB_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/esb"))
}
