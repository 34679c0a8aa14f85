//! A TUN interface created inside a named namespace (so its address and routes live there),
//! read and written from any thread through its file descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use esb_netns::NetNs;
use tokio::io::unix::AsyncFd;

use crate::WgError;

/// `TUNSETIFF` from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The open interface. It disappears when this is dropped (it is not persistent), so a
/// tunnel that stops leaves no link behind.
pub(crate) struct Tun {
    fd: AsyncFd<OwnedFd>,
}

fn open(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: open(2) with a constant NUL-terminated path; the result is checked.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as and
    // outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

impl Tun {
    /// Creates interface `name` inside `netns`. Must run inside a tokio runtime.
    pub(crate) fn create(netns: &NetNs, name: &str) -> Result<Tun, WgError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(WgError::Config {
                setting: "interface".into(),
                msg: format!("{name:?} is not an interface name (1-15 characters)"),
            });
        }
        let fd = netns
            .run(|| open(name))?
            .map_err(crate::io(format!("create TUN {name} in {}", netns.name())))?;
        // SAFETY: `fd` is an open descriptor owned by the AsyncFd for its whole life
        // (OwnedFd always reports the same descriptor and closes it only on drop).
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| WgError::Io {
            step: "register the TUN descriptor".into(),
            source: e.into(),
        })?;
        Ok(Tun { fd })
    }

    /// Reads one packet.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                // SAFETY: read(2) into `buf`, which is valid for `buf.len()` bytes.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet.
    pub(crate) async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: write(2) of `packet`, valid for its length.
                let n =
                    unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}
