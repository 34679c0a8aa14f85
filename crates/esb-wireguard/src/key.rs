//! x25519 keys as WireGuard writes them (`wg genkey`, `wg pubkey`): 32 bytes, base64.

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::WgError;

/// A WireGuard key (private or public), 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material by accident: the public half of a private key is as
        // much as a log needs.
        write!(f, "Key({}…)", &self.to_base64()[..8])
    }
}

impl Key {
    /// A new private key from the kernel's random source, clamped as x25519 wants.
    pub fn generate() -> Result<Key, WgError> {
        use std::io::Read;
        let mut k = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut k))
            .map_err(crate::io("read /dev/urandom"))?;
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        Ok(Key(k))
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        Key(PublicKey::from(&StaticSecret::from(self.0)).to_bytes())
    }

    /// Base64, as in WireGuard configuration files.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses base64; `what` names the key in the error.
    pub fn from_base64(s: &str, what: &str) -> Result<Key, WgError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| WgError::Key { what: what.into() })?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| WgError::Key { what: what.into() })?;
        Ok(Key(arr))
    }

    pub(crate) fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.0)
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_match_wireguards_derivation() {
        // RFC 7748 section 6.1's Alice: private and public key.
        let private = Key(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            private.public().0,
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        let k = Key::generate().unwrap();
        assert_eq!(Key::from_base64(&k.to_base64(), "k").unwrap(), k);
        assert_eq!(k.to_base64().len(), 44);
        assert_ne!(Key::generate().unwrap(), k);
        assert!(Key::from_base64("abc", "ESB_WG_KEY")
            .unwrap_err()
            .to_string()
            .contains("ESB_WG_KEY"));
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
