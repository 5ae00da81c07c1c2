//! Joining channels: password challenges, opening (and creating) a
//! channel, its password and owner policy, and the membership check every
//! channel operation starts with.

use busline_core::{Error, Result};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    announce, keys, lifecycle, not_member, owned_by,
    protocol::{ChannelEvent, OwnerPolicy},
    too_many, Channel, Happening, State, MAX_PER_CLIENT,
};
use crate::rpc::Client;

impl State {
    /// A fresh nonce for connection `id` to prove it knows `channel`'s
    /// password with (one at a time per connection, good for one try), and
    /// whether the channel exists, so that only its creator sends a key.
    pub(crate) fn challenge(&self, channel: &str, id: u64) -> Result<([u8; 32], bool)> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::transport(std::io::Error::other(format!("no randomness: {e}"))))?;
        let mut inner = self.lock();
        inner.nonces.insert(id, (channel.to_owned(), nonce));
        Ok((nonce, inner.channels.contains_key(channel)))
    }

    /// `peer` joins `channel`; whether it owns it. A new channel is created
    /// with the caller as owner and member, protected by `key` if given,
    /// unless only an `existing` one may be joined. An
    /// existing protected one takes a `proof` for the nonce of the last
    /// challenge; a `proof` for one without a password is refused, so that
    /// nobody believes a channel protected that is not. A member joining
    /// again is not asked again, unless it joins an `existing` one: a
    /// client acting for others (the HTTP gateway) proves each of their
    /// passwords, not only the first.
    pub(crate) fn open(
        &self,
        channel: &str,
        peer: &Client,
        proof: Option<&[u8]>,
        key: Option<[u8; 32]>,
        existing: bool,
    ) -> Result<bool> {
        let mut inner = self.lock();
        let id = peer.connection_id();
        let nonce = match inner.nonces.remove(&id) {
            Some((for_channel, nonce)) if for_channel == channel => Some(nonce),
            _ => None,
        };
        let Some(ch) = inner.channels.get_mut(channel) else {
            if existing {
                return Err(Error::MethodNotFound(format!("channel {channel:?}")));
            }
            if proof.is_some() && key.is_none() {
                return Err(Error::Unauthorized(format!(
                    "channel {channel:?} closed while it was being joined; open it again"
                )));
            }
            let joined = inner
                .channels
                .values()
                .filter(|c| c.members.contains(&id))
                .count();
            if joined >= MAX_PER_CLIENT {
                return Err(too_many("channels"));
            }
            let mut ch = Channel::new(id, key);
            ch.members.push(id);
            inner.channels.insert(channel.to_owned(), ch);
            inner.peers.insert(id, peer.clone());
            let body = json!({"channel": channel, "owner": id, "protected": key.is_some()});
            announce(&inner, Happening::new("channel.opened", body));
            return Ok(true);
        };
        if existing || !ch.members.contains(&id) {
            match (&ch.key, proof) {
                (None, None) => {}
                (None, Some(_)) => {
                    return Err(Error::Unauthorized(format!(
                        "channel {channel:?} has no password: opened with one, it would seem \
                         protected and would not be"
                    )))
                }
                (Some(join_key), proof) => {
                    let proven = matches!((nonce, proof), (Some(nonce), Some(proof))
                        if keys::verify_join(join_key, channel, &nonce, proof));
                    if !proven {
                        return Err(Error::Unauthorized(format!(
                            "channel {channel:?} takes a password, and none or a wrong one was given"
                        )));
                    }
                }
            }
            ch.members.push(id);
        }
        let owner = ch.owner == id;
        inner.peers.insert(id, peer.clone());
        Ok(owner)
    }

    /// Protect `channel` with `key`, or lift its protection; owner only.
    pub(crate) fn set_password(&self, channel: &str, id: u64, key: Option<[u8; 32]>) -> Result<()> {
        let mut inner = self.lock();
        let ch = owned_by(&mut inner, channel, id, "password")?;
        ch.key = key;
        // Members that act for others check passwords themselves (the
        // gateway): they must learn that the one they know is stale.
        let event = ChannelEvent::PasswordChanged {
            channel: channel.to_owned(),
            protected: key.is_some(),
        };
        for member in ch.members.clone() {
            if member != id {
                lifecycle::tell(&inner, member, &event);
            }
        }
        let body = json!({"channel": channel, "protected": key.is_some()});
        announce(&inner, Happening::new("password.changed", body));
        tracing::info!(
            channel,
            protected = key.is_some(),
            "channel password changed"
        );
        Ok(())
    }

    /// Fail unless connection `id` is a member of `channel`; the token
    /// cancelled when the channel closes.
    pub(crate) fn check_member(&self, channel: &str, id: u64) -> Result<CancellationToken> {
        let inner = self.lock();
        match inner.channels.get(channel) {
            Some(ch) if ch.members.contains(&id) => Ok(ch.closed.clone()),
            _ => Err(not_member(channel)),
        }
    }

    /// Set what happens when `channel`'s owner leaves; owner only.
    pub(crate) fn set_policy(&self, channel: &str, id: u64, policy: OwnerPolicy) -> Result<()> {
        let mut inner = self.lock();
        owned_by(&mut inner, channel, id, "policy")?.policy = policy;
        let body = json!({"channel": channel, "policy": policy});
        announce(&inner, Happening::new("policy.changed", body));
        Ok(())
    }
}
