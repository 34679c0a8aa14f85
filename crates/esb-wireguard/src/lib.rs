//! WireGuard for the box (system.md §4, the seed's Phase B), in userspace: these kernels have
//! no WireGuard module, and users' edge kernels may not either.
//!
//! The protocol is boringtun's ([`boringtun::noise::Tunn`], one per peer); this crate
//! supplies what boringtun's own device layer cannot do for us: the TUN interface (`wg0`) is
//! created inside an esb namespace (the control namespace on control, the runtime-node
//! namespace on a compute node) while the UDP socket is made in the host namespace, the one
//! place the outside world reaches. A socket keeps the namespace it was made in, so one
//! process moves packets between the two ([`Tunnel`]).
//!
//! Also here: x25519 keys in WireGuard's base64 form ([`Key`]), and the control side's route
//! correction: the peers' AllowedIPs become `ip route replace CIDR dev wg0` in the control
//! namespace, keeping only RFC 1918 subnets and /32 hosts ([`routes`]).

pub mod key;
pub mod routes;
pub mod service;
mod tun;
pub mod tunnel;

pub use key::Key;
pub use routes::{route_plan, RoutePlan};
pub use service::{ensure_private_key, PeerEntry, WgFile};
pub use tunnel::{PeerConfig, PeerStats, Tunnel, TunnelConfig};

/// Errors of the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// A key is not 32 bytes of base64.
    #[error("{what}: not a WireGuard key (44 characters of base64)")]
    Key {
        /// Which key.
        what: String,
    },
    /// A setting is invalid.
    #[error("{setting}: {msg}")]
    Config {
        /// The setting.
        setting: String,
        /// What is wrong.
        msg: String,
    },
    /// The namespace could not be entered.
    #[error(transparent)]
    NetNs(#[from] esb_netns::NetNsError),
    /// A system call or command failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An `ip` command failed.
    #[error("ip {args}: {msg}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it said.
        msg: String,
    },
}

pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> WgError {
    let step = step.into();
    move |source| WgError::Io { step, source }
}

/// Runs `ip -n NETNS ARGS…`.
pub(crate) fn ip(netns: &str, args: &[&str]) -> Result<String, WgError> {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .map_err(io("run ip"))?;
    if !out.status.success() {
        return Err(WgError::Ip {
            args: format!("-n {netns} {}", args.join(" ")),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
