//! Keys derived from a channel password.
//!
//! The password never leaves the client. PBKDF2-HMAC-SHA256 (salted with
//! the channel name, so one password gives unrelated keys on different
//! channels) turns it into a master key, and HMAC-SHA256 splits that into:
//!
//! - the **join key**, which the broker holds to check that a joining
//!   client knows the password: the client answers a fresh broker nonce
//!   with `HMAC(join key, channel ‖ nonce)`, so a proof cannot be replayed;
//! - the **signing key**, which only clients hold: it signs what members
//!   send each other, so that not even the broker can forge or alter it.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// PBKDF2 rounds: slow enough to make guessing a password from a stolen
/// join key expensive, fast enough to join a channel in milliseconds.
const ROUNDS: u32 = 100_000;

/// The keys of one channel's password. `Debug` does not show them.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelKeys {
    join: [u8; 32],
    sign: [u8; 32],
}

impl fmt::Debug for ChannelKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelKeys(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl ChannelKeys {
    /// Derive the keys of `password` on `channel` (CPU-heavy: run it off
    /// the async threads, as [`super::BrokerClient`] does).
    pub fn derive(channel: &str, password: &str) -> Self {
        let salt = format!("busline channel {channel}");
        let mut master = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), ROUNDS, &mut master);
        ChannelKeys {
            join: hmac(&master, &[b"busline join key"]),
            sign: hmac(&master, &[b"busline signing key"]),
        }
    }

    /// The key the broker checks joins with (sent to it by the owner).
    pub fn join_key(&self) -> [u8; 32] {
        self.join
    }

    /// The proof of knowing the password, for the broker's `nonce`.
    pub fn join_proof(&self, channel: &str, nonce: &[u8]) -> [u8; 32] {
        join_proof(&self.join, channel, nonce)
    }

    /// The key members sign with; it never leaves the client.
    pub(crate) fn signing_key(&self) -> &[u8; 32] {
        &self.sign
    }
}

pub(crate) fn join_proof(join_key: &[u8; 32], channel: &str, nonce: &[u8]) -> [u8; 32] {
    hmac(
        join_key,
        &[b"busline join ", channel.as_bytes(), b"\0", nonce],
    )
}

/// Check a join proof in constant time.
pub(crate) fn verify_join(join_key: &[u8; 32], channel: &str, nonce: &[u8], proof: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(join_key).expect("HMAC takes keys of any length");
    for part in [&b"busline join "[..], channel.as_bytes(), b"\0", nonce] {
        mac.update(part);
    }
    mac.verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_password_and_channel_and_proofs_check() {
        let a = ChannelKeys::derive("ch", "pw");
        assert_eq!(a, ChannelKeys::derive("ch", "pw"));
        assert_ne!(a, ChannelKeys::derive("ch", "pw2"));
        assert_ne!(a, ChannelKeys::derive("ch2", "pw"));
        assert_ne!(a.join_key(), *a.signing_key());
        let proof = a.join_proof("ch", b"nonce");
        assert!(verify_join(&a.join_key(), "ch", b"nonce", &proof));
        assert!(!verify_join(&a.join_key(), "ch", b"other", &proof));
        assert!(!verify_join(&a.join_key(), "ch2", b"nonce", &proof));
        assert_eq!(format!("{a:?}"), "ChannelKeys(..)");
    }
}
