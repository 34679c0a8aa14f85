//! Base images, chosen by a function's `Runtime`, built once and cached under
//! `$ESB_CACHE_DIR/base-images/<key>/` (outside any clone, so CI reruns reuse them).
//!
//! - `python3.x`: Debian minbase from this machine's apt sources (debootstrap) with
//!   `python3` and `ca-certificates`, trimmed (no apt lists, docs, man pages, locales), plus
//!   `awslambdaric` and `boto3` from PyPI in `/var/runtime` (on `PYTHONPATH`).
//! - `provided.al2`, `provided.al2023`, `provided`: the host's glibc loader and core
//!   libraries, CA certificates and a minimal `/etc`: what a static or glibc binary needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::layer::write_rootfs;
use crate::store::{file_digest, tmp_path, write_atomic, HashingWriter};
use crate::Error;

/// The Python version the Debian (bookworm) base provides.
pub const BASE_PYTHON: &str = "3.11";

/// Python packages installed into every python base.
pub const PYTHON_PACKAGES: &[&str] = &["awslambdaric", "boto3"];

/// Which base a runtime needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BaseKind {
    /// Debian minbase + python3 + awslambdaric/boto3.
    Python,
    /// Minimal glibc base for custom runtimes.
    Provided,
}

impl BaseKind {
    /// The cache key (directory name) of this base on this machine's architecture.
    pub fn key(&self) -> String {
        match self {
            BaseKind::Python => {
                format!("python{BASE_PYTHON}-bookworm-{}-v1", std::env::consts::ARCH)
            }
            BaseKind::Provided => format!("provided-bookworm-{}-v1", std::env::consts::ARCH),
        }
    }
}

/// The base for `runtime`, and a warning when the base only approximates it.
pub fn base_for_runtime(runtime: &str) -> Result<(BaseKind, Option<String>), String> {
    if let Some(v) = runtime.strip_prefix("python") {
        const KNOWN: &[&str] = &["3.9", "3.10", "3.11", "3.12", "3.13"];
        if !KNOWN.contains(&v) {
            return Err(format!(
                "runtime {runtime} is not supported (python3.9 to python3.13)"
            ));
        }
        let warn = (v != BASE_PYTHON).then(|| {
            format!(
                "runtime {runtime}: the python base provides Python {BASE_PYTHON} (Debian bookworm); \
                 code needing {v}-only features or binary wheels for {v} will not run"
            )
        });
        return Ok((BaseKind::Python, warn));
    }
    match runtime {
        "provided" | "provided.al2" | "provided.al2023" => Ok((BaseKind::Provided, None)),
        other => Err(format!(
            "runtime {other} has no base image: use python3.x or provided.*, or PackageType Image \
             with an image imported by `esb image import`"
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
        BaseKind::Python => build_python(&rootfs, cache_dir, log)?,
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

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
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

fn build_python(
    rootfs: &Path,
    cache_dir: &Path,
    log: &(dyn Fn(String) + Sync),
) -> Result<String, Error> {
    let (mirror, suite) = apt_mirror();
    log(format!(
        "base python{BASE_PYTHON}: debootstrap --variant=minbase {suite} from {mirror}"
    ));
    run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg("--include=python3,ca-certificates")
            .arg(&suite)
            .arg(rootfs)
            .arg(&mirror),
        "debootstrap (is the debootstrap package installed? it needs root)",
    )?;
    // Trim what a function never needs.
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
    let arch = match std::env::consts::ARCH {
        "aarch64" => "manylinux2014_aarch64",
        _ => "manylinux2014_x86_64",
    };
    log(format!(
        "base python{BASE_PYTHON}: pip install {} into /var/runtime",
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
                BASE_PYTHON,
                "--implementation",
                "cp",
                "--only-binary=:all:",
            ])
            .args(PYTHON_PACKAGES),
        "pip install of the python runtime packages",
    )?;
    remove_tree(&target.join("bin"));
    // Precompile with the image's own interpreter: faster cold starts.
    let _ = Command::new("chroot")
        .arg(rootfs)
        .args(["python3", "-m", "compileall", "-q", "/var/runtime"])
        .output();
    Ok(format!(
        "debian {suite} minbase + python3 ({BASE_PYTHON}) + ca-certificates from {mirror}; {} in /var/runtime",
        PYTHON_PACKAGES.join(", ")
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
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(|e| Error::io(rootfs, e))?;
    Ok(format!("glibc loader and core libraries of this Debian host ({triplet}), CA certificates, minimal /etc"))
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
        assert_eq!(
            base_for_runtime("python3.11").unwrap(),
            (BaseKind::Python, None)
        );
        for v in ["python3.9", "python3.10", "python3.12", "python3.13"] {
            let (kind, warn) = base_for_runtime(v).unwrap();
            assert_eq!(kind, BaseKind::Python);
            assert!(warn.unwrap().contains("Python 3.11"), "{v}");
        }
        assert!(base_for_runtime("python3.8").is_err());
        assert!(base_for_runtime("python2.7").is_err());
        for v in ["provided", "provided.al2", "provided.al2023"] {
            assert_eq!(base_for_runtime(v).unwrap(), (BaseKind::Provided, None));
        }
        assert!(base_for_runtime("nodejs20.x")
            .unwrap_err()
            .contains("esb image import"));
    }

    #[test]
    fn mirror_comes_from_this_machine() {
        let (uri, suite) = apt_mirror();
        assert!(uri.starts_with("http"), "{uri}");
        assert!(!suite.is_empty());
    }
}
