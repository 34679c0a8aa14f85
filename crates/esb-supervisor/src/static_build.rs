//! The static build of the supervisor, callable from tests and from the image builder.
//!
//! The binary goes into every function image, whatever its libc, so it is linked
//! statically: glibc's `crt-static` on the gnu target (musl is not needed):
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!   cargo build --release -p esb-supervisor --target x86_64-unknown-linux-gnu
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target triple of the static build.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The rustflags that make it static.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// Builds the static release binary of `esb-supervisor` from the workspace at `workspace`
/// into `target_dir` (use a directory of its own: the flags differ from a normal build) and
/// returns the path of the binary (stripped, without debug info). Runs `$CARGO` (or
/// `cargo`); fails with cargo's output.
pub fn build_static(workspace: &Path, target_dir: &Path) -> io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "esb-supervisor",
            "--target",
            STATIC_TARGET,
        ])
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", target_dir)
        // It ships in every image: no debug info, symbols stripped.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "static build of esb-supervisor failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let bin = target_dir
        .join(STATIC_TARGET)
        .join("release")
        .join("esb-supervisor");
    if !bin.is_file() {
        return Err(io::Error::other(format!(
            "cargo built no {}",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Whether the ELF file at `path` is statically linked: no program interpreter
/// (`PT_INTERP`) and no shared library dependency (`DT_NEEDED`). Static-PIE binaries,
/// which keep a `PT_DYNAMIC` for self-relocation, count as static.
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let data = std::fs::read(path)?;
    let bad = |m: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {m}", path.display()),
        )
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    if data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let phoff = u64_at(0x20).ok_or_else(|| bad("truncated header"))? as usize;
    let phentsize = u16_at(0x36).ok_or_else(|| bad("truncated header"))? as usize;
    let phnum = u16_at(0x38).ok_or_else(|| bad("truncated header"))? as usize;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph).ok_or_else(|| bad("truncated program header"))?;
        if p_type == PT_INTERP {
            return Ok(false);
        }
        if p_type == PT_DYNAMIC {
            let off = u64_at(ph + 8).ok_or_else(|| bad("truncated program header"))? as usize;
            let size = u64_at(ph + 32).ok_or_else(|| bad("truncated program header"))? as usize;
            let mut d = off;
            while d + 16 <= off + size {
                let tag = u64_at(d).ok_or_else(|| bad("truncated dynamic section"))?;
                if tag == DT_NULL {
                    break;
                }
                if tag == DT_NEEDED {
                    return Ok(false);
                }
                d += 16;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_executables_are_not_static() {
        // The test binary itself is a normal, dynamically linked executable.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(is_static_elf(&f).is_err());
    }
}
