//! Base images, chosen by a function's `Runtime`, built once and cached under
//! `$ESB_CACHE_DIR/base-images/<key>/` (outside any clone, so CI reruns reuse them).
//!
//! Every managed base is Debian minbase from this machine's apt mirror (debootstrap),
//! trimmed (no apt lists, docs, man pages, locales), on the Debian release whose packaged
//! interpreter is the runtime's, or the nearest one (with a warning naming it):
//!
//! | runtime | base |
//! |---|---|
//! | `python3.9`–`python3.11` | bookworm, Python 3.11 |
//! | `python3.12`, `python3.13` | trixie, Python 3.13 |
//! | `nodejs18.x` | bookworm, Node.js 18 |
//! | `nodejs20.x`, `nodejs22.x` | trixie, Node.js 20 |
//! | `provided`, `provided.al2`, `provided.al2023` | the host's glibc loader and core libraries, CA certificates, a minimal `/etc` |
//!
//! Python bases carry `awslambdaric` and `boto3` from PyPI in `/var/runtime` (on
//! `PYTHONPATH`); Node.js bases carry the AWS SDK for JavaScript v3 clients (S3, DynamoDB
//! and its document client, Lambda) in `/var/runtime/node_modules`, installed with npm from
//! the lock file kept beside this crate, as Lambda's own Node.js runtimes do. The Node.js
//! runtime interface client itself is esb's own and lives in the supervisor's layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::layer::write_rootfs;
use crate::store::{file_digest, tmp_path, write_atomic, HashingWriter};
use crate::Error;

/// The Python version of the bookworm base (the oldest kept base, and the default).
pub const BASE_PYTHON: &str = "3.11";

/// Python packages installed into every python base.
pub const PYTHON_PACKAGES: &[&str] = &["awslambdaric", "boto3"];

/// The npm manifest and lock file of the SDK in Node.js bases (`/var/runtime/node_modules`).
const NODE_SDK_PACKAGE: &str = include_str!("../runtimes/nodejs/sdk/package.json");
const NODE_SDK_LOCK: &str = include_str!("../runtimes/nodejs/sdk/package-lock.json");

/// The Debian release a base is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// Debian 12: Python 3.11, Node.js 18.
    Bookworm,
    /// Debian 13: Python 3.13, Node.js 20.
    Trixie,
}

impl Release {
    /// The suite name.
    pub fn suite(self) -> &'static str {
        match self {
            Release::Bookworm => "bookworm",
            Release::Trixie => "trixie",
        }
    }

    /// The Python version Debian packages in this release.
    pub fn python(self) -> &'static str {
        match self {
            Release::Bookworm => "3.11",
            Release::Trixie => "3.13",
        }
    }

    /// The Node.js major version Debian packages in this release.
    pub fn node(self) -> u32 {
        match self {
            Release::Bookworm => 18,
            Release::Trixie => 20,
        }
    }
}

/// Which base a runtime needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BaseKind {
    /// Debian minbase + python3 + awslambdaric/boto3.
    Python(Release),
    /// Debian minbase + nodejs + the AWS SDK for JavaScript v3 clients.
    Node(Release),
    /// Minimal glibc base for custom runtimes.
    Provided,
}

impl BaseKind {
    /// The cache key (directory name) of this base on this machine's architecture.
    pub fn key(&self) -> String {
        let arch = std::env::consts::ARCH;
        match self {
            // v2: bases built by a process with umask 077 (the box, since v1) had
            // directories only root could read; v2 bases are built with explicit modes.
            BaseKind::Python(r) => format!("python{}-{}-{arch}-v2", r.python(), r.suite()),
            // v3: /var/node_modules, the SDK for ES modules without a resolve hook.
            BaseKind::Node(r) => format!("nodejs{}-{}-{arch}-v3", r.node(), r.suite()),
            BaseKind::Provided => format!("provided-bookworm-{arch}-v2"),
        }
    }

    /// The interpreter this base provides, as a user reads it (`Python 3.13 (Debian
    /// trixie)`); `None` for the custom-runtime base.
    pub fn interpreter(&self) -> Option<String> {
        match self {
            BaseKind::Python(r) => Some(format!("Python {} (Debian {})", r.python(), r.suite())),
            BaseKind::Node(r) => Some(format!("Node.js {} (Debian {})", r.node(), r.suite())),
            BaseKind::Provided => None,
        }
    }

    /// The Python version of a Python base (`3.11`), for installing wheels that match it.
    pub fn python_version(&self) -> Option<&'static str> {
        match self {
            BaseKind::Python(r) => Some(r.python()),
            _ => None,
        }
    }
}

/// The base for `runtime`, and a warning when the base only approximates it (naming the
/// interpreter used).
pub fn base_for_runtime(runtime: &str) -> Result<(BaseKind, Option<String>), String> {
    if let Some(v) = runtime.strip_prefix("python") {
        let release = match v {
            "3.9" | "3.10" | "3.11" => Release::Bookworm,
            "3.12" | "3.13" => Release::Trixie,
            _ => {
                return Err(format!(
                    "runtime {runtime} is not supported (python3.9 to python3.13)"
                ))
            }
        };
        let kind = BaseKind::Python(release);
        let warn = (v != release.python()).then(|| {
            format!(
                "runtime {runtime} runs on {}, the nearest Python this machine can build a \
                 base from; code that needs exactly {v} (or binary wheels built only for {v}) \
                 may not run",
                kind.interpreter().unwrap_or_default()
            )
        });
        return Ok((kind, warn));
    }
    if let Some(v) = runtime.strip_prefix("nodejs") {
        let (release, wanted) = match v {
            "18.x" => (Release::Bookworm, 18),
            "20.x" => (Release::Trixie, 20),
            "22.x" => (Release::Trixie, 22),
            _ => {
                return Err(format!(
                    "runtime {runtime} is not supported (nodejs18.x, nodejs20.x, nodejs22.x)"
                ))
            }
        };
        let kind = BaseKind::Node(release);
        let warn = (wanted != release.node()).then(|| {
            format!(
                "runtime {runtime} runs on {}, the nearest Node.js this machine can build a \
                 base from; code that needs Node.js {wanted} features may not run",
                kind.interpreter().unwrap_or_default()
            )
        });
        return Ok((kind, warn));
    }
    match runtime {
        "provided" | "provided.al2" | "provided.al2023" => Ok((BaseKind::Provided, None)),
        other => Err(format!(
            "runtime {other} has no base image: use python3.9 to python3.13, nodejs18.x to \
             nodejs22.x or provided.*, or PackageType Image with an image imported by \
             `esb image import`"
        )),
    }
}

/// A cached base layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseLayer {
    /// Digest of the compressed tarball.
    pub digest: String,
    /// Digest of the uncompressed tarball.
    pub diff_id: String,
    /// Size of the compressed tarball.
    pub size: u64,
    /// How it was made.
    pub description: String,
    /// The tarball, in the cache.
    #[serde(skip)]
    pub path: PathBuf,
}

/// Returns the cached base, building it first when absent. `log` receives progress lines.
pub fn ensure(
    kind: &BaseKind,
    cache_dir: &Path,
    log: &(dyn Fn(String) + Sync),
) -> Result<BaseLayer, Error> {
    let dir = cache_dir.join("base-images").join(kind.key());
    if let Some(b) = cached(&dir)? {
        return Ok(b);
    }
    fs::create_dir_all(cache_dir.join("base-images")).map_err(|e| Error::io(cache_dir, e))?;
    // One builder at a time per base (other processes and threads wait, then reuse it).
    let lock_path = cache_dir
        .join("base-images")
        .join(format!("{}.lock", kind.key()));
    let lock = fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if let Some(b) = cached(&dir)? {
        return Ok(b);
    }
    let work = tmp_path(&cache_dir.join("base-images"), &kind.key());
    let _cleanup = RemoveOnDrop(work.clone());
    fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let rootfs = work.join("rootfs");
    let description = match kind {
        BaseKind::Python(release) => build_python(*release, &rootfs, cache_dir, log)?,
        BaseKind::Node(release) => build_node(*release, &rootfs, &work, log)?,
        BaseKind::Provided => build_provided(&rootfs)?,
    };
    log(format!("base {}: writing layer", kind.key()));
    let tarball = work.join("layer.tar.gz");
    let file = fs::File::create(&tarball).map_err(|e| Error::io(&tarball, e))?;
    let mut w = HashingWriter::new(std::io::BufWriter::new(file));
    let diff_id = write_rootfs(&rootfs, &mut w)?;
    let (buf, digest, size) = w.finish();
    buf.into_inner()
        .map_err(|e| Error::io(&tarball, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(&tarball, e))?;
    let meta = BaseLayer {
        digest,
        diff_id,
        size,
        description,
        path: PathBuf::new(),
    };
    write_atomic(
        &work.join("meta.json"),
        &serde_json::to_vec_pretty(&meta).unwrap(),
    )?;
    // Keep only the tarball and its description; the rootfs is large and not needed again.
    remove_tree(&rootfs);
    match fs::rename(&work, &dir) {
        Ok(()) => {}
        // Another build finished first: use its result.
        Err(_) if dir.join("meta.json").exists() => {}
        Err(e) => return Err(Error::io(&dir, e)),
    }
    log(format!("base {}: cached in {}", kind.key(), dir.display()));
    cached(&dir)?
        .ok_or_else(|| Error::Base(format!("{}: base vanished after building", dir.display())))
}

fn cached(dir: &Path) -> Result<Option<BaseLayer>, Error> {
    let meta_path = dir.join("meta.json");
    let Ok(bytes) = fs::read(&meta_path) else {
        return Ok(None);
    };
    let mut meta: BaseLayer = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", meta_path.display())))?;
    meta.path = dir.join("layer.tar.gz");
    if !meta.path.is_file() {
        return Ok(None);
    }
    Ok(Some(meta))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            remove_tree(&self.0);
        }
    }
}

fn remove_tree(p: &Path) {
    let _ = fs::remove_dir_all(p);
}

/// Gives a child that writes into a base's root filesystem the umask of a package
/// manager (022), whatever the calling process has (the box runs with 077): a base's
/// files must stay readable by the unprivileged user workers run as.
fn base_umask(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask(2) is async-signal-safe and cannot fail; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

/// Sets `mode` on `path` (files and directories esb itself creates in a base, whose
/// default mode would follow the process umask).
fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = base_umask(cmd)
        .output()
        .map_err(|e| Error::Base(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail: String = format!("{stdout}\n{stderr}")
            .lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::Base(format!(
            "{what} failed ({}):\n{tail}",
            out.status
        )));
    }
    Ok(())
}

/// The Debian mirror and suite this machine's apt uses (`deb` lines of sources.list and
/// `URIs:`/`Suites:` of deb822 `.sources` files), skipping security and update suites.
pub fn apt_mirror() -> (String, String) {
    let suite_default = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "bookworm".into());
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if f.extension().is_some_and(|e| e == "sources") {
            for stanza in text.split("\n\n") {
                let field = |name: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                };
                let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                    continue;
                };
                if let Some(types) = field("Types:") {
                    if !types.split_whitespace().any(|t| t == "deb") {
                        continue;
                    }
                }
                if suites.split_whitespace().any(|s| s == suite_default) {
                    if let Some(uri) = uris.split_whitespace().next() {
                        return (uri.to_string(), suite_default);
                    }
                }
            }
        } else {
            for line in text.lines() {
                let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
                if words.next() != Some("deb") {
                    continue;
                }
                let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
                    continue;
                };
                if suite == suite_default {
                    return (uri.to_string(), suite_default);
                }
            }
        }
    }
    ("http://deb.debian.org/debian".into(), suite_default)
}

/// The pip to install the runtime packages with: `$ESB_PIP`, else the esb virtualenv's,
/// else `python3 -m pip`.
pub(crate) fn pip_command(cache_dir: &Path) -> Command {
    if let Some(p) = std::env::var_os("ESB_PIP") {
        return Command::new(p);
    }
    for venv in [
        std::env::var_os("ESB_VENV").map(PathBuf::from),
        Some(cache_dir.join("venv")),
    ]
    .into_iter()
    .flatten()
    {
        let pip = venv.join("bin/pip");
        if pip.is_file() {
            return Command::new(pip);
        }
    }
    let mut c = Command::new("python3");
    c.args(["-m", "pip"]);
    c
}

/// Debian minbase of `release` with `packages`, trimmed of what a function never needs.
/// Returns the mirror used.
fn debootstrap(
    release: Release,
    packages: &str,
    label: &str,
    rootfs: &Path,
    log: &(dyn Fn(String) + Sync),
) -> Result<String, Error> {
    let (mirror, _) = apt_mirror();
    let suite = release.suite();
    log(format!(
        "base {label}: debootstrap --variant=minbase --include={packages} {suite} from {mirror}"
    ));
    run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={packages}"))
            .arg(suite)
            .arg(rootfs)
            .arg(&mirror),
        &format!(
            "base {label}: debootstrap of Debian {suite} (is the debootstrap package installed, \
             and does it know {suite}? it needs root)"
        ),
    )?;
    for rel in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/lintian",
        "var/log",
        "debootstrap",
    ] {
        let p = rootfs.join(rel);
        if p.is_dir() {
            for e in fs::read_dir(&p).map_err(|e| Error::io(&p, e))?.flatten() {
                let path = e.path();
                if path.is_dir() && !path.is_symlink() {
                    remove_tree(&path);
                } else {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    Ok(mirror)
}

fn build_python(
    release: Release,
    rootfs: &Path,
    cache_dir: &Path,
    log: &(dyn Fn(String) + Sync),
) -> Result<String, Error> {
    let version = release.python();
    let label = format!("python{version}");
    let mirror = debootstrap(release, "python3,ca-certificates", &label, rootfs, log)?;
    let arch = match std::env::consts::ARCH {
        "aarch64" => "manylinux2014_aarch64",
        _ => "manylinux2014_x86_64",
    };
    log(format!(
        "base {label}: pip install {} into /var/runtime",
        PYTHON_PACKAGES.join(" ")
    ));
    let target = rootfs.join("var/runtime");
    run(
        pip_command(cache_dir)
            .args([
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
                version,
                "--implementation",
                "cp",
                "--only-binary=:all:",
            ])
            .args(PYTHON_PACKAGES),
        &format!("base {label}: pip install of the python runtime packages"),
    )?;
    remove_tree(&target.join("bin"));
    // Precompile with the image's own interpreter: faster cold starts.
    let _ = base_umask(Command::new("chroot").arg(rootfs))
        .args(["python3", "-m", "compileall", "-q", "/var/runtime"])
        .output();
    Ok(format!(
        "debian {} minbase + python3 ({version}) + ca-certificates from {mirror}; {} in /var/runtime",
        release.suite(),
        PYTHON_PACKAGES.join(", ")
    ))
}

/// The npm to install the Node.js SDK with: `$ESB_NPM`, else `npm` on PATH.
fn npm_command() -> Command {
    Command::new(std::env::var_os("ESB_NPM").unwrap_or_else(|| "npm".into()))
}

fn build_node(
    release: Release,
    rootfs: &Path,
    work: &Path,
    log: &(dyn Fn(String) + Sync),
) -> Result<String, Error> {
    let major = release.node();
    let label = format!("nodejs{major}");
    let mirror = debootstrap(release, "nodejs,ca-certificates", &label, rootfs, log)?;
    // The SDK is plain JavaScript: the host's npm installs it, from the lock file, into a
    // staging directory that then becomes /var/runtime/node_modules.
    let staging = work.join("node-sdk");
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    write_atomic(&staging.join("package.json"), NODE_SDK_PACKAGE.as_bytes())?;
    write_atomic(&staging.join("package-lock.json"), NODE_SDK_LOCK.as_bytes())?;
    log(format!(
        "base {label}: npm ci of the AWS SDK for JavaScript v3 clients into /var/runtime/node_modules"
    ));
    run(
        npm_command()
            .current_dir(&staging)
            .args([
                "ci",
                "--omit=dev",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ]),
        &format!("base {label}: npm ci of the Node.js SDK (is npm installed? scripts/prereqs.sh installs it)"),
    )?;
    let runtime = rootfs.join("var/runtime");
    fs::create_dir_all(&runtime).map_err(|e| Error::io(&runtime, e))?;
    set_mode(&runtime, 0o755)?;
    let from = staging.join("node_modules");
    let to = runtime.join("node_modules");
    fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
    // ES modules ignore NODE_PATH: an import from /var/task finds the SDK by walking up
    // to /var/node_modules, at no cost to start-up.
    let link = rootfs.join("var/node_modules");
    std::os::unix::fs::symlink("runtime/node_modules", &link).map_err(|e| Error::io(&link, e))?;
    // Check the interpreter the base really has, and that it loads the SDK.
    let out = Command::new("chroot")
        .arg(rootfs)
        .args([
            "env",
            "NODE_PATH=/var/runtime/node_modules",
            "node",
            "-e",
            "require('@aws-sdk/client-s3'); process.stdout.write(process.versions.node)",
        ])
        .output()
        .map_err(|e| Error::Base(format!("base {label}: cannot run chroot: {e}")))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !version.starts_with(&format!("{major}.")) {
        return Err(Error::Base(format!(
            "base {label}: the built base's node does not run Node.js {major} with the SDK \
             (version {version:?}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(format!(
        "debian {} minbase + nodejs ({version}) + ca-certificates from {mirror}; AWS SDK for \
         JavaScript v3 (client-s3, client-dynamodb, lib-dynamodb, client-lambda) in \
         /var/runtime/node_modules",
        release.suite()
    ))
}

fn build_provided(rootfs: &Path) -> Result<String, Error> {
    let (triplet, loader) = match std::env::consts::ARCH {
        "aarch64" => ("aarch64-linux-gnu", "ld-linux-aarch64.so.1"),
        _ => ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
    };
    let libdir = rootfs.join("usr/lib").join(triplet);
    for d in [
        libdir.as_path(),
        &rootfs.join("etc/ssl/certs"),
        &rootfs.join("tmp"),
        &rootfs.join("var/runtime"),
        &rootfs.join("usr/bin"),
    ] {
        fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let libs = [
        loader,
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libresolv.so.2",
        "libnss_files.so.2",
        "libnss_dns.so.2",
        "libutil.so.1",
    ];
    for lib in libs {
        let src = [
            Path::new("/usr/lib").join(triplet).join(lib),
            Path::new("/lib").join(triplet).join(lib),
        ]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::Base(format!(
                "host library {lib} not found (package libc6 / libgcc-s1)"
            ))
        })?;
        fs::copy(&src, libdir.join(lib)).map_err(|e| Error::io(&src, e))?;
    }
    let link = |target: &str, at: &str| -> Result<(), Error> {
        let p = rootfs.join(at);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::os::unix::fs::symlink(target, &p).map_err(|e| Error::io(&p, e))
    };
    link("usr/lib", "lib")?;
    link("usr/bin", "bin")?;
    if triplet.starts_with("x86_64") {
        link("usr/lib64", "lib64")?;
        link(
            &format!("/lib/{triplet}/{loader}"),
            &format!("usr/lib64/{loader}"),
        )?;
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        fs::copy(ca, rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .map_err(|e| Error::io(ca, e))?;
    }
    let files: [(&str, &str); 4] = [
        ("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/nsswitch.conf", "hosts: files dns\npasswd: files\ngroup: files\n"),
        ("etc/os-release", "NAME=\"esb provided base\"\nID=esb-provided\n"),
    ];
    for (rel, text) in files {
        fs::write(rootfs.join(rel), text).map_err(|e| Error::io(&rootfs.join(rel), e))?;
    }
    // Everything here was made by esb, under whatever umask this process has: give it the
    // modes of a packaged system, readable by the unprivileged user workers run as.
    open_modes(rootfs)?;
    set_mode(&rootfs.join("tmp"), 0o1777)?;
    Ok(format!("glibc loader and core libraries of this Debian host ({triplet}), CA certificates, minimal /etc"))
}

/// Sets 0755 on every directory and executable file under `dir` and 0644 on every other
/// file (symlinks untouched).
fn open_modes(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    set_mode(dir, 0o755)?;
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            open_modes(&path)?;
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            set_mode(&path, if exec { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

/// Verifies a cached base tarball against its recorded digest (used by `esb doctor`-style checks and tests).
pub fn verify(b: &BaseLayer) -> Result<(), Error> {
    let got = file_digest(&b.path)?;
    if got != b.digest {
        return Err(Error::Corrupt(format!(
            "{}: digest {got}, recorded {}",
            b.path.display(),
            b.digest
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_map_is_explicit_and_warns_on_mismatch() {
        use Release::*;
        assert_eq!(
            base_for_runtime("python3.11").unwrap(),
            (BaseKind::Python(Bookworm), None)
        );
        assert_eq!(
            base_for_runtime("python3.13").unwrap(),
            (BaseKind::Python(Trixie), None)
        );
        for v in ["python3.9", "python3.10"] {
            let (kind, warn) = base_for_runtime(v).unwrap();
            assert_eq!(kind, BaseKind::Python(Bookworm));
            assert!(
                warn.unwrap().contains("Python 3.11 (Debian bookworm)"),
                "{v}"
            );
        }
        let (kind, warn) = base_for_runtime("python3.12").unwrap();
        assert_eq!(kind, BaseKind::Python(Trixie));
        assert!(warn.unwrap().contains("Python 3.13 (Debian trixie)"));
        assert_eq!(
            base_for_runtime("nodejs18.x").unwrap(),
            (BaseKind::Node(Bookworm), None)
        );
        assert_eq!(
            base_for_runtime("nodejs20.x").unwrap(),
            (BaseKind::Node(Trixie), None)
        );
        let (kind, warn) = base_for_runtime("nodejs22.x").unwrap();
        assert_eq!(kind, BaseKind::Node(Trixie));
        assert!(warn.unwrap().contains("Node.js 20 (Debian trixie)"));
        for bad in [
            "python3.8",
            "python2.7",
            "python3.14",
            "nodejs16.x",
            "nodejs24.x",
        ] {
            assert!(base_for_runtime(bad).unwrap_err().contains(bad), "{bad}");
        }
        for v in ["provided", "provided.al2", "provided.al2023"] {
            assert_eq!(base_for_runtime(v).unwrap(), (BaseKind::Provided, None));
        }
        assert!(base_for_runtime("java21")
            .unwrap_err()
            .contains("esb image import"));
        assert!(BaseKind::Python(Bookworm)
            .key()
            .starts_with("python3.11-bookworm-"));
    }

    #[test]
    fn a_base_built_under_a_strict_umask_is_readable_by_workers() {
        // The box builds bases with umask 077 (its state is owner-only); workers run
        // unprivileged, so every directory and file of a base must still be readable.
        // (nextest runs each test in its own process: the umask stays here.)
        // SAFETY: umask(2) only changes this process's file mode creation mask.
        unsafe { libc::umask(0o077) };
        let cache = tempfile::tempdir().unwrap();
        let base = ensure(&BaseKind::Provided, cache.path(), &|_| {}).unwrap();
        let file = fs::File::open(&base.path).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut checked = 0;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            if h.entry_type().is_symlink() {
                continue;
            }
            let mode = h.mode().unwrap();
            let path = e.path().unwrap().display().to_string();
            assert_eq!(mode & 0o004, 0o004, "{path} is {mode:o}");
            if h.entry_type().is_dir() {
                assert_eq!(mode & 0o001, 0o001, "{path} is {mode:o}");
            }
            checked += 1;
        }
        assert!(checked > 10);
    }

    #[test]
    fn mirror_comes_from_this_machine() {
        let (uri, suite) = apt_mirror();
        assert!(uri.starts_with("http"), "{uri}");
        assert!(!suite.is_empty());
    }
}
