//! `esb build`: one OCI image per function, layers built in parallel and cached.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use esb_template::{Code, Function, LayerRef, Template};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfiguration, ImageConfigurationBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::{Deserialize, Serialize};

use crate::base::{self, BaseKind};
use crate::layer::{fingerprint, write_layer, Source};
use crate::store::{sha256_digest, write_atomic, Blob, Layout};
use crate::Error;

/// Where the supervisor goes in every image.
pub const SUPERVISOR_PATH: &str = "/usr/local/bin/esb-supervisor";
/// Where esb's Node.js runtime interface client goes in every image (the supervisor's
/// layer): the supervisor runs `node NODE_RIC_DIR/ric.mjs` for `nodejs*` runtimes.
pub const NODE_RIC_DIR: &str = "/var/runtime/esb";
const NODE_RIC_FILES: [(&str, &str); 2] = [
    ("ric.mjs", include_str!("../runtimes/nodejs/ric.mjs")),
    (
        "resolve.mjs",
        include_str!("../runtimes/nodejs/resolve.mjs"),
    ),
];

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The OCI image layout to write (default: `<template dir>/.esb/build`).
    pub out_dir: PathBuf,
    /// Cache of base images (default `$ESB_CACHE_DIR`, `/var/cache/esb`).
    pub cache_dir: PathBuf,
    /// The static `esb-supervisor` binary to put in every image.
    pub supervisor: PathBuf,
    /// Image names are `<repository>/<function name>:<tag>`.
    pub repository: String,
    /// Tag of every image.
    pub tag: String,
    /// Rebuild every layer even when its input did not change (base images stay cached).
    pub no_cache: bool,
    /// Only report what would be built.
    pub dry_run: bool,
    /// Layers built at once.
    pub jobs: usize,
    /// Build only these functions (logical ids); empty means all.
    pub functions: Vec<String>,
}

impl BuildOptions {
    /// Defaults for `template`, with the given supervisor binary.
    pub fn new(template: &Template, supervisor: PathBuf) -> BuildOptions {
        BuildOptions {
            out_dir: template.base_dir.join(".esb/build"),
            cache_dir: crate::default_cache_dir(),
            supervisor,
            repository: "esb.local/functions".into(),
            tag: "latest".into(),
            no_cache: false,
            dry_run: false,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            functions: Vec::new(),
        }
    }
}

/// Progress events, in the order things happen (layers may interleave).
#[derive(Debug, Clone)]
pub enum Progress {
    /// What will be built.
    Planned {
        /// Number of images.
        images: usize,
        /// Number of distinct layers.
        layers: usize,
    },
    /// A line about a base image being prepared.
    Base(String),
    /// A layer is ready.
    Layer {
        /// Which layer (`base python3.11…`, `code HelloFunction`, `layer CommonLayer`, `supervisor`).
        what: String,
        /// Its digest.
        digest: String,
        /// Compressed size.
        size: u64,
        /// Whether it was reused without rebuilding.
        cached: bool,
    },
    /// An image is ready.
    Image {
        /// Function logical id.
        function: String,
        /// Image reference.
        reference: String,
        /// Manifest digest.
        digest: String,
        /// Whether the manifest differs from the previous build.
        changed: bool,
    },
    /// A function is not built (image or S3 code).
    Skipped {
        /// Function logical id.
        function: String,
        /// Why.
        reason: String,
    },
    /// Something to tell the user.
    Warning(String),
}

/// One layer of an image.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Which layer.
    pub what: String,
    /// Digest of the compressed tarball.
    pub digest: String,
    /// Digest of the uncompressed tarball.
    pub diff_id: String,
    /// Compressed size.
    pub size: u64,
    /// Whether this build wrote it (false: reused).
    pub rebuilt: bool,
    /// Its media type (an imported image's layers keep theirs).
    pub media_type: String,
}

/// One built image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Function logical id.
    pub function: String,
    /// Image reference (`esb.local/functions/<name>:latest`).
    pub reference: String,
    /// Manifest digest (empty on a dry run).
    pub manifest_digest: String,
    /// Its layers, bottom first.
    pub layers: Vec<LayerReport>,
    /// Whether the manifest differs from the previous build's.
    pub changed: bool,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The OCI layout written.
    pub layout: PathBuf,
    /// Images, in template order.
    pub images: Vec<ImageReport>,
    /// Functions not built, and why.
    pub skipped: Vec<(String, String)>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Layers written by this build.
    pub layers_built: usize,
    /// Layers reused.
    pub layers_cached: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Task {
    Base(String),
    Supervisor,
    Layer(String),
    Deps(String),
    Code(String),
}

impl Task {
    fn label(&self) -> String {
        match self {
            Task::Base(k) => format!("base {k}"),
            Task::Supervisor => "supervisor".into(),
            Task::Layer(id) => format!("layer {id}"),
            Task::Deps(id) => format!("deps {id}"),
            Task::Code(id) => format!("code {id}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheRecord {
    fingerprint: String,
    digest: String,
    diff_id: String,
    size: u64,
}

#[derive(Debug, Clone)]
struct Built {
    digest: String,
    diff_id: String,
    size: u64,
    rebuilt: bool,
}

struct Plan<'t> {
    function: &'t Function,
    runtime: String,
    /// The base (`None` for an imported image, which brings its own).
    base: Option<BaseKind>,
    tasks: Vec<Task>,
    /// `PackageType: Image` from an image on disk: its layers and configuration, under
    /// the supervisor's layer.
    imported: Option<Imported>,
}

/// An image brought by `PackageType: Image` with `ImageUri` naming an OCI layout or a
/// `docker save` archive on disk.
struct Imported {
    layers: Vec<LayerReport>,
    config: ImageConfiguration,
    source: String,
}

/// The reference `build` gives a function's image: `<repository>/<name>:<tag>`.
pub fn image_reference(opts: &BuildOptions, function: &Function) -> String {
    format!("{}/{}:{}", opts.repository, image_name(function), opts.tag)
}

fn image_name(function: &Function) -> String {
    function
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "x86_64",
    }
}

/// Builds the images of `template`'s functions.
pub fn build(
    template: &Template,
    opts: &BuildOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<BuildReport, Error> {
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    let mut plans = Vec::new();
    let mut failures = Vec::new();
    for f in &template.functions {
        if !opts.functions.is_empty() && !opts.functions.contains(&f.logical_id) {
            continue;
        }
        if let Code::Image { uri } = &f.code {
            let path = template.base_dir.join(uri);
            if path.exists() {
                if let Some(arch) = f.architectures.first().filter(|a| *a != host_arch()) {
                    failures.push(format!(
                        "function {}: Architectures [{arch}] needs an {arch} machine; this one \
                         is {} and esb does not emulate other architectures",
                        f.logical_id,
                        host_arch()
                    ));
                    continue;
                }
                match plan_imported(f, uri, &path, opts) {
                    Ok(imported) => plans.push(Plan {
                        function: f,
                        runtime: f.runtime.clone().unwrap_or_default(),
                        base: None,
                        tasks: vec![Task::Supervisor],
                        imported: Some(imported),
                    }),
                    Err(e) => failures.push(format!("function {}: {e}", f.logical_id)),
                }
                continue;
            }
        }
        let skip = match &f.code {
            Code::Image { uri } => Some(format!(
                "PackageType Image ({uri}) is not an OCI layout or docker save archive on \
                 disk: bring it in with `esb image import`"
            )),
            Code::S3 { bucket, key } => Some(format!(
                "code in s3://{bucket}/{key} cannot be built locally"
            )),
            _ => None,
        };
        if let Some(reason) = skip {
            progress(&Progress::Skipped {
                function: f.logical_id.clone(),
                reason: reason.clone(),
            });
            skipped.push((f.logical_id.clone(), reason));
            continue;
        }
        if let Some(arch) = f.architectures.first() {
            if arch != host_arch() {
                failures.push(format!(
                    "function {}: Architectures [{arch}] needs an {arch} machine; this one is \
                     {} and esb does not emulate other architectures",
                    f.logical_id,
                    host_arch()
                ));
                continue;
            }
        }
        let runtime = f.runtime.clone().unwrap_or_default();
        let (base, warn) = match base::base_for_runtime(&runtime) {
            Ok(x) => x,
            Err(m) => {
                failures.push(format!("function {}: {m}", f.logical_id));
                continue;
            }
        };
        if let Some(w) = warn {
            let w = format!("{}: {w}", f.logical_id);
            progress(&Progress::Warning(w.clone()));
            warnings.push(w);
        }
        // Bottom to top by how rarely they change, so that a code change alters only the
        // top layer's chain id (one layer to unpack in containerd).
        let mut tasks = vec![Task::Base(base.key()), Task::Supervisor];
        for l in &f.layers {
            match l {
                LayerRef::Resource(id) => tasks.push(Task::Layer(id.clone())),
                LayerRef::Arn(arn) => {
                    let w = format!(
                        "{}: layer {arn} is not in the template and is left out of the image",
                        f.logical_id
                    );
                    progress(&Progress::Warning(w.clone()));
                    warnings.push(w);
                }
            }
        }
        if let Code::Dir { path, uri } = &f.code {
            if !path.is_dir() {
                failures.push(format!(
                    "function {}: CodeUri {uri} ({}) is not a directory",
                    f.logical_id,
                    path.display()
                ));
                continue;
            }
            if runtime.starts_with("python") && path.join("requirements.txt").is_file() {
                tasks.push(Task::Deps(f.logical_id.clone()));
            }
        }
        if let Code::Zip { path, uri } = &f.code {
            if !path.is_file() {
                failures.push(format!(
                    "function {}: CodeUri {uri} ({}) is not a zip file",
                    f.logical_id,
                    path.display()
                ));
                continue;
            }
        }
        tasks.push(Task::Code(f.logical_id.clone()));
        plans.push(Plan {
            function: f,
            runtime,
            base: Some(base),
            tasks,
            imported: None,
        });
    }
    if !failures.is_empty() {
        return Err(Error::Build(failures));
    }
    if !opts.supervisor.is_file() && !opts.dry_run {
        return Err(Error::Base(format!(
            "the supervisor binary {} does not exist (build esb-supervisor statically first)",
            opts.supervisor.display()
        )));
    }

    // Distinct layers, bases first (they take longest).
    let mut all: Vec<Task> = plans.iter().flat_map(|p| p.tasks.iter().cloned()).collect();
    all.sort();
    all.dedup();
    let bases: HashMap<String, BaseKind> = plans
        .iter()
        .filter_map(|p| p.base.as_ref())
        .map(|b| (b.key(), b.clone()))
        .collect();
    progress(&Progress::Planned {
        images: plans.len(),
        layers: all.len(),
    });

    let layout = if opts.dry_run {
        None
    } else {
        Some(Layout::open(&opts.out_dir)?)
    };
    let ctx = Ctx {
        template,
        opts,
        layout: layout.as_ref(),
        bases: &bases,
        progress,
    };
    let results: Mutex<HashMap<Task, Result<Built, Error>>> = Mutex::new(HashMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1).min(all.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(task) = all.get(i) else { break };
                let r = ctx.build_task(task);
                if let Ok(b) = &r {
                    progress(&Progress::Layer {
                        what: task.label(),
                        digest: b.digest.clone(),
                        size: b.size,
                        cached: !b.rebuilt,
                    });
                }
                results.lock().unwrap().insert(task.clone(), r);
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    let mut errors = Vec::new();
    for t in &all {
        if let Some(Err(e)) = results.get(t) {
            errors.push(format!("{}: {e}", t.label()));
        }
    }
    if !errors.is_empty() {
        return Err(Error::Build(errors));
    }
    let built: HashMap<Task, Built> = results.drain().map(|(k, v)| (k, v.unwrap())).collect();
    let layers_built = built.values().filter(|b| b.rebuilt).count();
    let layers_cached = built.len() - layers_built;

    let mut images = Vec::new();
    let mut refs = Vec::new();
    for p in &plans {
        let reference = image_reference(opts, p.function);
        let mut layers: Vec<LayerReport> = p
            .imported
            .as_ref()
            .map(|i| i.layers.clone())
            .unwrap_or_default();
        layers.extend(p.tasks.iter().map(|t| {
            let b = &built[t];
            LayerReport {
                what: t.label(),
                digest: b.digest.clone(),
                diff_id: b.diff_id.clone(),
                size: b.size,
                rebuilt: b.rebuilt,
                media_type: MediaType::ImageLayerGzip.to_string(),
            }
        }));
        let (manifest_digest, changed) = match &layout {
            None => (String::new(), layers.iter().any(|l| l.rebuilt)),
            Some(layout) => {
                let manifest = write_image(layout, p, &layers)?;
                let previous = layout.lookup(&reference)?;
                let changed = previous.as_ref().and_then(|d| d["digest"].as_str())
                    != Some(manifest.digest.as_str());
                refs.push((reference.clone(), manifest.clone()));
                (manifest.digest, changed)
            }
        };
        progress(&Progress::Image {
            function: p.function.logical_id.clone(),
            reference: reference.clone(),
            digest: manifest_digest.clone(),
            changed,
        });
        images.push(ImageReport {
            function: p.function.logical_id.clone(),
            reference,
            manifest_digest,
            layers,
            changed,
        });
    }
    if let Some(layout) = &layout {
        layout.set_refs(&refs)?;
    }
    Ok(BuildReport {
        layout: opts.out_dir.clone(),
        images,
        skipped,
        warnings,
        layers_built,
        layers_cached,
    })
}

struct Ctx<'a> {
    template: &'a Template,
    opts: &'a BuildOptions,
    layout: Option<&'a Layout>,
    bases: &'a HashMap<String, BaseKind>,
    progress: &'a (dyn Fn(&Progress) + Sync),
}

impl Ctx<'_> {
    fn function(&self, id: &str) -> &Function {
        self.template.function(id).expect("planned function exists")
    }

    fn build_task(&self, task: &Task) -> Result<Built, Error> {
        if let Task::Base(key) = task {
            let kind = &self.bases[key];
            if self.opts.dry_run {
                let meta = self
                    .opts
                    .cache_dir
                    .join("base-images")
                    .join(key)
                    .join("meta.json");
                return Ok(Built {
                    digest: String::new(),
                    diff_id: String::new(),
                    size: 0,
                    rebuilt: !meta.exists(),
                });
            }
            let log = |m: String| (self.progress)(&Progress::Base(m));
            let b = base::ensure(kind, &self.opts.cache_dir, &log)?;
            let layout = self.layout.expect("layout when not a dry run");
            let rebuilt = !layout.has_blob(&b.digest);
            layout.put_file_checked(&b.path, &b.digest, false)?;
            return Ok(Built {
                digest: b.digest,
                diff_id: b.diff_id,
                size: b.size,
                rebuilt,
            });
        }
        let sources = self.sources(task)?;
        let fp = fingerprint(&sources)?;
        let record_path = self.opts.out_dir.join("cache").join(format!(
            "{}.json",
            sha256_digest(task.label().as_bytes()).trim_start_matches("sha256:")
        ));
        if !self.opts.no_cache {
            if let Some(rec) = std::fs::read(&record_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<CacheRecord>(&b).ok())
            {
                let present = self.layout.is_none_or(|l| l.has_blob(&rec.digest));
                if rec.fingerprint == fp && present {
                    return Ok(Built {
                        digest: rec.digest,
                        diff_id: rec.diff_id,
                        size: rec.size,
                        rebuilt: false,
                    });
                }
            }
        }
        let Some(layout) = self.layout else {
            return Ok(Built {
                digest: String::new(),
                diff_id: String::new(),
                size: 0,
                rebuilt: true,
            });
        };
        let (blob, diff_id) = layout.put_with(|w| write_layer(&sources, w))?;
        let rec = CacheRecord {
            fingerprint: fp,
            digest: blob.digest.clone(),
            diff_id: diff_id.clone(),
            size: blob.size,
        };
        write_atomic(&record_path, &serde_json::to_vec(&rec).unwrap())?;
        Ok(Built {
            digest: blob.digest,
            diff_id,
            size: blob.size,
            rebuilt: true,
        })
    }

    fn sources(&self, task: &Task) -> Result<Vec<Source>, Error> {
        Ok(match task {
            Task::Base(_) => unreachable!(),
            Task::Supervisor => {
                let mut s = vec![Source::File {
                    src: self.opts.supervisor.clone(),
                    dest: SUPERVISOR_PATH.into(),
                    mode: 0o755,
                }];
                // esb's Node.js runtime interface client, beside the supervisor that runs it.
                for (name, text) in NODE_RIC_FILES {
                    s.push(Source::Bytes {
                        dest: format!("{NODE_RIC_DIR}/{name}"),
                        data: text.as_bytes().to_vec(),
                        mode: 0o644,
                    });
                }
                s
            }
            Task::Layer(id) => {
                let layer = self.template.layer(id).ok_or_else(|| Error::Function {
                    function: id.clone(),
                    message: "no such layer in the template".into(),
                })?;
                let (path, uri) = match &layer.content {
                    Code::Dir { path, uri } => (path, uri),
                    Code::Zip { path, uri } => {
                        if !path.is_file() {
                            return Err(Error::Function {
                                function: id.clone(),
                                message: format!(
                                    "ContentUri {uri} ({}) is not a zip file",
                                    path.display()
                                ),
                            });
                        }
                        // A layer archive unpacks into /opt, as on Lambda.
                        return Ok(vec![Source::Zip {
                            src: path.clone(),
                            dest: "/opt".into(),
                        }]);
                    }
                    _ => {
                        return Err(Error::Function {
                            function: id.clone(),
                            message: "the layer's ContentUri is not a local directory or zip file"
                                .into(),
                        })
                    }
                };
                if !path.is_dir() {
                    return Err(Error::Function {
                        function: id.clone(),
                        message: format!(
                            "ContentUri {uri} ({}) is not a directory",
                            path.display()
                        ),
                    });
                }
                let mut s = vec![Source::Dir {
                    src: path.clone(),
                    dest: "/opt".into(),
                }];
                let req = path.join("requirements.txt");
                if layer
                    .build_method
                    .as_deref()
                    .is_some_and(|m| m.starts_with("python"))
                    && req.is_file()
                {
                    let version = layer
                        .build_method
                        .as_deref()
                        .and_then(|m| base::base_for_runtime(m).ok())
                        .and_then(|(b, _)| b.python_version())
                        .unwrap_or(base::BASE_PYTHON);
                    let staged = self.pip_install(&req, &format!("layer-{id}"), version)?;
                    s.push(Source::Dir {
                        src: staged,
                        dest: "/opt/python".into(),
                    });
                }
                s
            }
            Task::Deps(fid) => {
                let f = self.function(fid);
                let Code::Dir { path, .. } = &f.code else {
                    unreachable!()
                };
                let version = f
                    .runtime
                    .as_deref()
                    .and_then(|r| base::base_for_runtime(r).ok())
                    .and_then(|(b, _)| b.python_version())
                    .unwrap_or(base::BASE_PYTHON);
                let staged = self.pip_install(
                    &path.join("requirements.txt"),
                    &format!("deps-{fid}"),
                    version,
                )?;
                vec![Source::Dir {
                    src: staged,
                    dest: "/var/task".into(),
                }]
            }
            Task::Code(fid) => {
                let f = self.function(fid);
                match &f.code {
                    Code::Dir { path, .. } => vec![Source::Dir {
                        src: path.clone(),
                        dest: "/var/task".into(),
                    }],
                    Code::Zip { path, .. } => vec![Source::Zip {
                        src: path.clone(),
                        dest: "/var/task".into(),
                    }],
                    Code::Inline { source } => {
                        let rt = f.runtime.as_deref().unwrap_or("");
                        let name = if rt.starts_with("python") {
                            "index.py"
                        } else if rt.starts_with("nodejs") {
                            "index.js"
                        } else {
                            "index"
                        };
                        vec![Source::Bytes {
                            dest: format!("/var/task/{name}"),
                            data: source.as_bytes().to_vec(),
                            mode: 0o644,
                        }]
                    }
                    _ => unreachable!("skipped before planning"),
                }
            }
        })
    }

    /// Installs a requirements file with pip into a staging directory kept between builds
    /// (keyed by the file's content and the Python version), for the python base's
    /// interpreter (`python_version`) and platform.
    fn pip_install(
        &self,
        requirements: &Path,
        name: &str,
        python_version: &str,
    ) -> Result<PathBuf, Error> {
        let mut content = std::fs::read(requirements).map_err(|e| Error::io(requirements, e))?;
        content.extend_from_slice(format!("\0python{python_version}").as_bytes());
        let key = sha256_digest(&content);
        let dir = self.opts.out_dir.join("staging").join(name);
        let stamp = dir.join(".esb-requirements");
        let target = dir.join("site");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) && target.is_dir()
        {
            return Ok(target);
        }
        if self.opts.dry_run {
            return Ok(target);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        let arch = match std::env::consts::ARCH {
            "aarch64" => "manylinux2014_aarch64",
            _ => "manylinux2014_x86_64",
        };
        let mut cmd = base::pip_command(&self.opts.cache_dir);
        cmd.args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
        ])
        .arg(&target)
        .args([
            "--platform",
            arch,
            "--python-version",
            python_version,
            "--implementation",
            "cp",
        ])
        .args(["--only-binary=:all:", "-r"])
        .arg(requirements);
        let out = cmd.output().map_err(|e| Error::io(requirements, e))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Function {
                function: name.into(),
                message: format!(
                    "pip install -r {} failed:\n{}",
                    requirements.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let _ = std::fs::remove_dir_all(target.join("bin"));
        write_atomic(&stamp, key.as_bytes())?;
        Ok(target)
    }
}

/// Sorts object keys recursively, so the JSON bytes (and digests) do not depend on map order.
fn canonical(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(canonical).collect())
        }
        other => other,
    }
}

fn oci_err(e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("OCI structure: {e}"))
}

/// The image environment: the standard Lambda variables, then the template's.
pub(crate) fn image_env(f: &Function, runtime: &str) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "LANG=C.UTF-8".into(),
        "TZ=:UTC".into(),
        "LAMBDA_TASK_ROOT=/var/task".into(),
        "LAMBDA_RUNTIME_DIR=/var/runtime".into(),
        format!("ESB_RUNTIME={runtime}"),
        format!("_HANDLER={}", f.handler.clone().unwrap_or_default()),
        format!("AWS_LAMBDA_FUNCTION_NAME={}", f.name),
        format!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE={}", f.memory_size),
        format!("AWS_LAMBDA_FUNCTION_TIMEOUT={}", f.timeout),
        "AWS_LAMBDA_FUNCTION_VERSION=$LATEST".into(),
    ];
    if runtime.starts_with("python") {
        env.push("PYTHONPATH=/var/runtime".into());
    }
    for (k, v) in &f.environment {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    env
}

/// Copies an image on disk (`ImageUri`) into the layout's blobs and reads what the
/// function image needs of it: its layers and its configuration.
fn plan_imported(
    f: &Function,
    uri: &str,
    path: &Path,
    opts: &BuildOptions,
) -> Result<Imported, Error> {
    let source = format!("ImageUri {uri} ({})", path.display());
    let in_source = |e: Error| Error::Import(format!("{source}: {e}"));
    if opts.dry_run {
        return Ok(Imported {
            layers: Vec::new(),
            config: ImageConfiguration::default(),
            source,
        });
    }
    let layout = Layout::open(&opts.out_dir)?;
    let (_, manifest_blob) =
        crate::import::import_blobs(&layout, path, Some(&image_reference(opts, f)))
            .map_err(in_source)?;
    let manifest: ImageManifest = serde_json::from_slice(&layout.read_blob(&manifest_blob.digest)?)
        .map_err(|e| Error::Import(format!("{source}: manifest: {e}")))?;
    let config: ImageConfiguration =
        serde_json::from_slice(&layout.read_blob(manifest.config().digest().as_ref())?)
            .map_err(|e| Error::Import(format!("{source}: image configuration: {e}")))?;
    let want = if host_arch() == "arm64" {
        Arch::ARM64
    } else {
        Arch::Amd64
    };
    if *config.architecture() != want {
        return Err(Error::Import(format!(
            "{source} is a linux/{} image; this machine runs linux/{want} and esb does not \
             emulate other architectures",
            config.architecture()
        )));
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Import(format!(
            "{source}: {} layers but {} diff ids in its configuration",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let runs = config.config().as_ref().is_some_and(|c| {
        c.entrypoint().as_ref().is_some_and(|e| !e.is_empty())
            || c.cmd().as_ref().is_some_and(|c| !c.is_empty())
    });
    if !runs {
        return Err(Error::Import(format!(
            "{source} has neither ENTRYPOINT nor CMD: nothing to run as the function's runtime"
        )));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (d, diff_id))| LayerReport {
            what: format!("image layer {}", i + 1),
            digest: d.digest().to_string(),
            diff_id: diff_id.clone(),
            size: d.size(),
            rebuilt: false,
            media_type: d.media_type().to_string(),
        })
        .collect();
    Ok(Imported {
        layers,
        config,
        source,
    })
}

/// The configuration of a function image made from an imported one: the supervisor is
/// the entrypoint and runs the image's own ENTRYPOINT + CMD as the runtime (an AWS base
/// image's `/lambda-entrypoint.sh handler`, or `python -m awslambdaric handler`); the
/// image's environment, then the Lambda variables and the template's.
fn imported_config(
    f: &Function,
    imported: &Imported,
    labels: HashMap<String, String>,
) -> Result<oci_spec::image::Config, Error> {
    let own = imported.config.config().clone().unwrap_or_default();
    let mut command: Vec<String> = own.entrypoint().clone().unwrap_or_default();
    command.extend(own.cmd().clone().unwrap_or_default());
    let mut env: Vec<String> = own.env().clone().unwrap_or_default();
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    for e in image_env(f, "") {
        let k = key(&e);
        let image_keeps = matches!(
            k.as_str(),
            "PATH" | "LANG" | "TZ" | "LAMBDA_TASK_ROOT" | "LAMBDA_RUNTIME_DIR"
        ) && env.iter().any(|x| key(x) == k);
        if image_keeps || (k == "ESB_RUNTIME" || k == "_HANDLER") && e.ends_with('=') {
            continue;
        }
        env.retain(|x| key(x) != k);
        env.push(e);
    }
    let working_dir = own
        .working_dir()
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/var/task".into());
    let mut all_labels = own.labels().clone().unwrap_or_default();
    all_labels.extend(labels);
    all_labels.insert("esb.image-source".into(), imported.source.clone());
    ConfigBuilder::default()
        .entrypoint(vec![SUPERVISOR_PATH.to_string()])
        .cmd(command)
        .env(env)
        .working_dir(working_dir)
        .exposed_ports(vec!["8080/tcp".to_string()])
        .labels(all_labels)
        .build()
        .map_err(oci_err)
}

fn write_image(layout: &Layout, p: &Plan, layers: &[LayerReport]) -> Result<Blob, Error> {
    let f = p.function;
    let mut labels = HashMap::new();
    labels.insert("esb.function".to_string(), f.logical_id.clone());
    labels.insert("esb.function-name".to_string(), f.name.clone());
    labels.insert("esb.runtime".to_string(), p.runtime.clone());
    labels.insert("esb.timeout".to_string(), f.timeout.to_string());
    labels.insert("esb.memory-size".to_string(), f.memory_size.to_string());
    let config = match &p.imported {
        Some(imported) => imported_config(f, imported, labels)?,
        None => ConfigBuilder::default()
            .entrypoint(vec![SUPERVISOR_PATH.to_string()])
            .env(image_env(f, &p.runtime))
            .working_dir("/var/task".to_string())
            .exposed_ports(vec!["8080/tcp".to_string()])
            .labels(labels)
            .build()
            .map_err(oci_err)?,
    };
    let arch = if host_arch() == "arm64" {
        Arch::ARM64
    } else {
        Arch::Amd64
    };
    let image_config = ImageConfigurationBuilder::default()
        .architecture(arch)
        .os(Os::Linux)
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers".to_string())
                .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
                .build()
                .map_err(oci_err)?,
        )
        .build()
        .map_err(oci_err)?;
    let config_bytes = serde_json::to_vec(&canonical(
        serde_json::to_value(&image_config).map_err(oci_err)?,
    ))
    .unwrap();
    let config_blob = layout.put_bytes(&config_bytes)?;
    let digest = |d: &str| Digest::from_str(d).map_err(oci_err);
    let layer_descs = layers
        .iter()
        .map(|l| {
            Ok(Descriptor::new(
                MediaType::from(l.media_type.as_str()),
                l.size,
                digest(&l.digest)?,
            ))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_blob.size,
            digest(&config_blob.digest)?,
        ))
        .layers(layer_descs)
        .build()
        .map_err(oci_err)?;
    let manifest_bytes = serde_json::to_vec(&canonical(
        serde_json::to_value(&manifest).map_err(oci_err)?,
    ))
    .unwrap();
    layout.put_bytes(&manifest_bytes)
}
