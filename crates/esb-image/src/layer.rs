//! Layer tarballs: reproducible (sorted entries, fixed owner and time, normalised modes)
//! so that the same input always gives the same digest, and a cheap fingerprint of the
//! input (paths, modes, sizes, modification times) to skip rebuilding unchanged layers.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest as _, Sha256};

use crate::store::{hex, HashingWriter};
use crate::Error;

/// The modification time written into reproducible layers (1980-01-01, as zip does).
pub const FIXED_MTIME: u64 = 315_532_800;

/// What goes into a layer.
#[derive(Debug, Clone)]
pub enum Source {
    /// The contents of a directory, placed under `dest` (an absolute path in the image).
    Dir { src: PathBuf, dest: String },
    /// One file with the given content and mode.
    Bytes {
        dest: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// One file copied from the host (e.g. the supervisor binary).
    File {
        src: PathBuf,
        dest: String,
        mode: u32,
    },
    /// The entries of a zip archive (a `CodeUri`/`ContentUri` `.zip`), unpacked under
    /// `dest` with their unix modes; an entry whose path leaves `dest` is refused.
    Zip { src: PathBuf, dest: String },
}

/// Names skipped when copying code: caches and VCS metadata never belong in an image.
fn skipped(name: &std::ffi::OsStr) -> bool {
    matches!(
        name.to_str(),
        Some("__pycache__" | ".git" | ".aws-sam" | ".esb" | ".DS_Store")
    )
}

/// One entry of a directory walk, relative to its root, in sorted order.
struct Entry {
    rel: PathBuf,
    path: PathBuf,
    meta: fs::Metadata,
}

fn walk(root: &Path, out: &mut Vec<Entry>, rel: &Path) -> Result<(), Error> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::io(&dir, e))?;
    names.sort();
    for name in names {
        if skipped(&name) {
            continue;
        }
        let r = rel.join(&name);
        let path = root.join(&r);
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        let is_dir = meta.is_dir();
        out.push(Entry {
            rel: r.clone(),
            path,
            meta,
        });
        if is_dir {
            walk(root, out, &r)?;
        }
    }
    Ok(())
}

fn entries(src: &Path) -> Result<Vec<Entry>, Error> {
    let meta = fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if !meta.is_dir() {
        return Err(Error::io(src, io::Error::other("not a directory")));
    }
    let mut out = Vec::new();
    walk(src, &mut out, Path::new(""))?;
    Ok(out)
}

fn normal_mode(meta: &fs::Metadata) -> u32 {
    if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// A fingerprint of the sources: changes when any path, type, mode, size, mtime or
/// content given inline changes. Cheap: file contents are not read.
pub fn fingerprint(sources: &[Source]) -> Result<String, Error> {
    let mut h = Sha256::new();
    h.update(b"esb-layer-v1\0");
    for s in sources {
        match s {
            Source::Dir { src, dest } => {
                h.update(format!("dir\0{dest}\0").as_bytes());
                for e in entries(src)? {
                    let m = &e.meta;
                    let link = if m.file_type().is_symlink() {
                        fs::read_link(&e.path)
                            .map_err(|x| Error::io(&e.path, x))?
                            .to_string_lossy()
                            .into_owned()
                    } else {
                        String::new()
                    };
                    h.update(
                        format!(
                            "{}\0{:o}\0{}\0{}.{}\0{link}\0",
                            e.rel.display(),
                            m.mode(),
                            m.len(),
                            m.mtime(),
                            m.mtime_nsec()
                        )
                        .as_bytes(),
                    );
                }
            }
            Source::Bytes { dest, data, mode } => {
                h.update(format!("bytes\0{dest}\0{mode:o}\0{}\0", data.len()).as_bytes());
                h.update(data);
            }
            Source::Zip { src, dest } => {
                let m = fs::metadata(src).map_err(|e| Error::io(src, e))?;
                h.update(
                    format!(
                        "zip\0{dest}\0{}\0{}\0{}.{}\0",
                        src.display(),
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec()
                    )
                    .as_bytes(),
                );
            }
            Source::File { src, dest, mode } => {
                let m = fs::metadata(src).map_err(|e| Error::io(src, e))?;
                h.update(
                    format!(
                        "file\0{dest}\0{mode:o}\0{}\0{}.{}\0",
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec()
                    )
                    .as_bytes(),
                );
            }
        }
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(kind);
    hd.set_mode(mode);
    hd.set_uid(0);
    hd.set_gid(0);
    hd.set_mtime(FIXED_MTIME);
    hd.set_size(size);
    hd
}

/// Adds the parent directories of `dest` (e.g. `var/`, `var/task/`) once each.
fn add_parents<W: Write>(
    b: &mut tar::Builder<W>,
    dest: &str,
    done: &mut Vec<String>,
) -> io::Result<()> {
    let mut acc = String::new();
    for part in dest.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        if !done.contains(&acc) {
            done.push(acc.clone());
            let mut hd = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut hd, format!("{acc}/"), io::empty())?;
        }
    }
    Ok(())
}

/// Writes a reproducible, gzip-compressed layer tarball of `sources` into `out`, and
/// returns the diff id (digest of the uncompressed tar).
pub fn write_layer(sources: &[Source], out: &mut dyn Write) -> Result<String, Error> {
    let gz = GzEncoder::new(out, Compression::new(6));
    let mut b = tar::Builder::new(HashingWriter::new(gz));
    let mut dirs = Vec::new();
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| Error::io(&p, e)
    };
    for s in sources {
        match s {
            Source::Dir { src, dest } => {
                add_parents(&mut b, dest, &mut dirs).map_err(io_err(src))?;
                let base = dest.trim_matches('/');
                for e in entries(src)? {
                    let name = format!("{base}/{}", e.rel.display());
                    let ft = e.meta.file_type();
                    if ft.is_dir() {
                        let mut hd = header(tar::EntryType::Directory, 0o755, 0);
                        b.append_data(&mut hd, format!("{name}/"), io::empty())
                            .map_err(io_err(&e.path))?;
                    } else if ft.is_symlink() {
                        let target = fs::read_link(&e.path).map_err(io_err(&e.path))?;
                        let mut hd = header(tar::EntryType::Symlink, 0o777, 0);
                        b.append_link(&mut hd, &name, &target)
                            .map_err(io_err(&e.path))?;
                    } else if ft.is_file() {
                        let f = fs::File::open(&e.path).map_err(io_err(&e.path))?;
                        let mut hd =
                            header(tar::EntryType::Regular, normal_mode(&e.meta), e.meta.len());
                        b.append_data(&mut hd, &name, f).map_err(io_err(&e.path))?;
                    }
                }
            }
            Source::Bytes { dest, data, mode } => {
                let (parent, _) = dest
                    .trim_start_matches('/')
                    .rsplit_once('/')
                    .unwrap_or(("", ""));
                add_parents(&mut b, parent, &mut dirs).map_err(io_err(Path::new(dest)))?;
                let mut hd = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut hd, dest.trim_start_matches('/'), &data[..])
                    .map_err(io_err(Path::new(dest)))?;
            }
            Source::File { src, dest, mode } => {
                let (parent, _) = dest
                    .trim_start_matches('/')
                    .rsplit_once('/')
                    .unwrap_or(("", ""));
                add_parents(&mut b, parent, &mut dirs).map_err(io_err(src))?;
                let f = fs::File::open(src).map_err(io_err(src))?;
                let len = f.metadata().map_err(io_err(src))?.len();
                let mut hd = header(tar::EntryType::Regular, *mode, len);
                b.append_data(&mut hd, dest.trim_start_matches('/'), f)
                    .map_err(io_err(src))?;
            }
            Source::Zip { src, dest } => {
                add_parents(&mut b, dest, &mut dirs).map_err(io_err(src))?;
                append_zip(&mut b, src, dest.trim_matches('/'), &mut dirs)?;
            }
        }
    }
    let hw = b
        .into_inner()
        .map_err(|e| Error::io(Path::new("layer"), e))?;
    let (gz, diff_id, _) = hw.finish();
    gz.finish().map_err(|e| Error::io(Path::new("layer"), e))?;
    Ok(diff_id)
}

/// Unix file type bits of a zip entry's external attributes.
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Appends the entries of the zip archive `src` under `base`, sorted by name (so the layer
/// is reproducible whatever the archive's order), with the parent directories an archive
/// often leaves out. Modes are the entries' unix modes (0644/0755 when the archive has
/// none); symlinks stay symlinks. An entry whose path is absolute or climbs out with `..`
/// (zip-slip) fails the layer, naming the entry.
fn append_zip<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    base: &str,
    dirs: &mut Vec<String>,
) -> Result<(), Error> {
    let bad = |m: String| Error::Function {
        function: src.display().to_string(),
        message: m,
    };
    let file = fs::File::open(src).map_err(|e| Error::io(src, e))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    let mut order = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("entry {i}: {e}")))?
            .to_string();
        let climbs =
            name.starts_with(['/', '\\']) || name.split(['/', '\\']).any(|part| part == "..");
        let Some(rel) = entry.enclosed_name().filter(|_| !climbs) else {
            return Err(bad(format!(
                "entry {name:?} leaves the directory it unpacks into (an absolute path or \
                 `..`): refused"
            )));
        };
        let rel = rel.to_string_lossy().trim_end_matches('/').to_string();
        if rel.is_empty() {
            continue;
        }
        order.push((rel, i));
    }
    order.sort();
    let err = |e: io::Error| Error::io(src, e);
    for (rel, i) in order {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {rel:?}: {e}")))?;
        let name = if base.is_empty() {
            rel.clone()
        } else {
            format!("{base}/{rel}")
        };
        if let Some((parent, _)) = name.rsplit_once('/') {
            add_parents(b, parent, dirs).map_err(err)?;
        }
        let unix = entry.unix_mode();
        if entry.is_dir() {
            if !dirs.contains(&name) {
                dirs.push(name.clone());
                let mode = unix.map(|m| m & 0o7777).unwrap_or(0o755);
                let mut hd = header(tar::EntryType::Directory, mode, 0);
                b.append_data(&mut hd, format!("{name}/"), io::empty())
                    .map_err(err)?;
            }
        } else if unix.is_some_and(|m| m & S_IFMT == S_IFLNK) {
            let mut target = String::new();
            io::Read::read_to_string(&mut entry, &mut target)
                .map_err(|e| bad(format!("entry {rel:?}: {e}")))?;
            let mut hd = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut hd, &name, &target).map_err(err)?;
        } else {
            let mode = unix.map(|m| m & 0o7777).unwrap_or(0o644);
            let mut hd = header(tar::EntryType::Regular, mode, entry.size());
            b.append_data(&mut hd, &name, &mut entry)
                .map_err(|e| bad(format!("entry {rel:?}: {e}")))?;
        }
    }
    Ok(())
}

/// Writes a gzip-compressed tarball of a whole root filesystem (a base image), keeping
/// owners, modes, times, symlinks and hard links; device nodes, sockets and fifos are left
/// out (the container runtime provides /dev). Returns the diff id.
pub fn write_rootfs(root: &Path, out: &mut dyn Write) -> Result<String, Error> {
    let gz = GzEncoder::new(out, Compression::new(6));
    let mut b = tar::Builder::new(HashingWriter::new(gz));
    b.follow_symlinks(false);
    let mut seen_inodes: std::collections::HashMap<(u64, u64), PathBuf> = Default::default();
    for e in entries_all(root)? {
        let ft = e.meta.file_type();
        let name = e.rel.clone();
        let err = |x: io::Error| Error::io(&e.path, x);
        let mut hd = tar::Header::new_gnu();
        hd.set_metadata_in_mode(&e.meta, tar::HeaderMode::Complete);
        if ft.is_dir() {
            b.append_data(&mut hd, &name, io::empty()).map_err(err)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.path).map_err(err)?;
            b.append_link(&mut hd, &name, &target).map_err(err)?;
        } else if ft.is_file() {
            let key = (e.meta.dev(), e.meta.ino());
            if e.meta.nlink() > 1 {
                if let Some(first) = seen_inodes.get(&key) {
                    hd.set_entry_type(tar::EntryType::Link);
                    hd.set_size(0);
                    b.append_link(&mut hd, &name, first).map_err(err)?;
                    continue;
                }
                seen_inodes.insert(key, name.clone());
            }
            let f = fs::File::open(&e.path).map_err(err)?;
            b.append_data(&mut hd, &name, f).map_err(err)?;
        }
    }
    let hw = b.into_inner().map_err(|e| Error::io(root, e))?;
    let (gz, diff_id, _) = hw.finish();
    gz.finish().map_err(|e| Error::io(root, e))?;
    Ok(diff_id)
}

fn walk_all(root: &Path, out: &mut Vec<Entry>, rel: &Path) -> Result<(), Error> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::io(&dir, e))?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let path = root.join(&r);
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        let is_dir = meta.is_dir();
        out.push(Entry {
            rel: r.clone(),
            path,
            meta,
        });
        if is_dir {
            walk_all(root, out, &r)?;
        }
    }
    Ok(())
}

fn entries_all(root: &Path) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    walk_all(root, &mut out, Path::new(""))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_bytes(sources: &[Source]) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        let diff = write_layer(sources, &mut out).unwrap();
        (out, diff)
    }

    #[test]
    fn reproducible_and_sorted() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("pkg")).unwrap();
        fs::write(d.path().join("b.py"), "b").unwrap();
        fs::write(d.path().join("a.py"), "a").unwrap();
        fs::write(d.path().join("pkg/m.py"), "m").unwrap();
        fs::create_dir_all(d.path().join("__pycache__")).unwrap();
        fs::write(d.path().join("__pycache__/x.pyc"), "x").unwrap();
        let src = [Source::Dir {
            src: d.path().to_path_buf(),
            dest: "/var/task".into(),
        }];
        let (one, diff1) = layer_bytes(&src);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(d.path().join("a.py"), "a").unwrap(); // same content, new mtime
        let (two, diff2) = layer_bytes(&src);
        assert_eq!(one, two);
        assert_eq!(diff1, diff2);

        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&one[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "var/",
                "var/task/",
                "var/task/a.py",
                "var/task/b.py",
                "var/task/pkg/",
                "var/task/pkg/m.py"
            ]
        );
    }

    #[test]
    fn fingerprint_follows_changes() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.py"), "a").unwrap();
        let src = [Source::Dir {
            src: d.path().to_path_buf(),
            dest: "/var/task".into(),
        }];
        let f1 = fingerprint(&src).unwrap();
        assert_eq!(f1, fingerprint(&src).unwrap());
        fs::write(d.path().join("a.py"), "changed").unwrap();
        assert_ne!(f1, fingerprint(&src).unwrap());
    }

    fn zip_file(dir: &Path, name: &str, entries: &[(&str, u32, &[u8])]) -> PathBuf {
        use zip::write::SimpleFileOptions;
        let path = dir.join(name);
        let mut w = zip::ZipWriter::new(fs::File::create(&path).unwrap());
        for (n, mode, data) in entries {
            let o = SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .unix_permissions(*mode);
            w.start_file(*n, o).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn tar_entries(layer: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(layer));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                io::Read::read_to_end(&mut e, &mut data).unwrap();
                (name, mode, data)
            })
            .collect()
    }

    #[test]
    fn zip_unpacks_sorted_with_its_modes_and_parents() {
        let d = tempfile::tempdir().unwrap();
        let z = zip_file(
            d.path(),
            "app.zip",
            &[
                ("lib/util.py", 0o644, b"u"),
                ("bootstrap", 0o755, b"#!/bin/sh"),
                ("app.py", 0o600, b"a"),
            ],
        );
        let src = [Source::Zip {
            src: z.clone(),
            dest: "/var/task".into(),
        }];
        let (one, diff1) = layer_bytes(&src);
        let (_, diff2) = layer_bytes(&src);
        assert_eq!(diff1, diff2, "reproducible");
        let got: Vec<(String, u32)> = tar_entries(&one)
            .into_iter()
            .map(|(n, m, _)| (n, m))
            .collect();
        assert_eq!(
            got,
            [
                ("var/".to_string(), 0o755),
                ("var/task/".into(), 0o755),
                ("var/task/app.py".into(), 0o600),
                ("var/task/bootstrap".into(), 0o755),
                ("var/task/lib/".into(), 0o755),
                ("var/task/lib/util.py".into(), 0o644),
            ]
        );
        let f1 = fingerprint(&src).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        zip_file(d.path(), "app.zip", &[("app.py", 0o644, b"changed")]);
        assert_ne!(f1, fingerprint(&src).unwrap());
    }

    #[test]
    fn zip_slip_entries_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        for evil in ["../../etc/cron.d/x", "/etc/passwd"] {
            let z = zip_file(
                d.path(),
                "evil.zip",
                &[("ok.py", 0o644, b"x"), (evil, 0o644, b"y")],
            );
            let src = [Source::Zip {
                src: z,
                dest: "/var/task".into(),
            }];
            let mut out = Vec::new();
            let err = write_layer(&src, &mut out).unwrap_err().to_string();
            assert!(err.contains(evil) && err.contains("refused"), "{err}");
        }
        fs::write(d.path().join("not.zip"), "plain text").unwrap();
        let src = [Source::Zip {
            src: d.path().join("not.zip"),
            dest: "/opt".into(),
        }];
        let err = write_layer(&src, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("not a readable zip archive"), "{err}");
    }
}
