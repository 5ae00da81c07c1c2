//! comm-ipc's protected channels.
//!
//! comm-ipc's owner sends the password itself (`set_password`), and its
//! server keeps it to check joiners' answers to a challenge. This listener
//! does the same, as comm-ipc's server would, and protects the busline
//! channel with it too, so busline members join with the same password.
//! Messages are signed end to end on each leg: comm-ipc's signatures
//! between its clients and this listener (checked on the calls, sends and
//! broadcasts they sign, made on everything delivered to them, stream
//! chunks and publications included, which comm-ipc itself leaves
//! unsigned), busline's across the broker.

use std::time::{Duration, Instant};

use busline_core::{Error, Result};
use hmac::{Hmac, Mac};
use rmpv::Value;
use sha2::Sha256;

use super::{
    frame::Msg,
    session::Session,
    sign::{derive, verify, Key},
};

/// How long a challenge may be answered (comm-ipc's server: 60 s).
const CHALLENGE_LIFE: Duration = Duration::from_secs(60);

/// Challenges one connection may have outstanding; more are refused.
const MAX_CHALLENGES: usize = 64;

/// Channel passwords one listener keeps; protecting more is refused.
pub(super) const MAX_PASSWORDS: usize = 4096;

/// 32 hex digits from the OS's random source, for challenges: a failing
/// source fails the challenge rather than make a guessable one.
pub(super) fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::transport(std::io::Error::other(format!(
            "no randomness for a challenge: {e}"
        )))
    })?;
    Ok(hex::encode(bytes))
}

/// A channel password this listener knows, as comm-ipc's server keeps it.
pub(super) struct Password {
    pub(super) text: String,
    pub(super) key: Key,
    /// Given to the listener ([`CommIpcBuilder::channel_password`]): kept
    /// when the channel closes, for when it is made again.
    ///
    /// [`CommIpcBuilder::channel_password`]: super::CommIpcBuilder::channel_password
    pub(super) given: bool,
}

/// A challenge sent for a registration on a protected channel.
pub(super) struct Challenge {
    channel: String,
    challenge: String,
    registration: Msg,
    sent: Instant,
}

/// comm-ipc's key derivation, off the async threads.
pub(super) async fn derive_key(channel: &str, password: &str) -> Result<Key> {
    let (channel, password) = (channel.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || derive(&channel, &password))
        .await
        .map_err(|e| Error::Protocol(format!("key derivation failed: {e}")))
}

impl Session {
    /// The registration to act on, once the channel's password is proven:
    /// `None` while a challenge is out. comm-ipc challenges every
    /// registration on a protected channel, and answers a proof with the
    /// registration that was challenged.
    pub(super) async fn authorize(&mut self, reg: Msg) -> Result<Option<Msg>> {
        let channel = reg.required("channel")?.to_owned();
        let password = match self.shared.registry().passwords.get(&channel) {
            Some(password) => (password.text.clone(), password.key),
            None => return Ok(Some(reg)),
        };
        let (text, key) = password;
        let Some(proof) = reg.str("proof") else {
            self.challenge(&channel, reg).await?;
            return Ok(None);
        };
        let id = reg.str("challenge_id").unwrap_or_default();
        // A challenge answers for the channel it was sent for, no other.
        let Some(challenge) = self.challenges.remove(id).filter(|c| c.channel == channel) else {
            return Err(Error::Protocol("Invalid or expired challenge".into()));
        };
        if challenge.sent.elapsed() > CHALLENGE_LIFE {
            return Err(Error::Protocol("Challenge expired".into()));
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(text.as_bytes()).expect("any key");
        mac.update(challenge.challenge.as_bytes());
        let proven = hex::decode(proof).is_ok_and(|proof| mac.verify_slice(&proof).is_ok());
        if !proven {
            return Err(Error::Protocol("Invalid channel password".into()));
        }
        self.keys.insert(channel, key);
        Ok(Some(challenge.registration))
    }

    /// Send an `auth_challenge` for `reg`.
    async fn challenge(&mut self, channel: &str, reg: Msg) -> Result<()> {
        self.challenges
            .retain(|_, c| c.sent.elapsed() <= CHALLENGE_LIFE);
        if self.challenges.len() >= MAX_CHALLENGES {
            return Err(Error::Overloaded(format!(
                "more than {MAX_CHALLENGES} channel challenges unanswered on one connection"
            )));
        }
        // 32 letters and digits, as comm-ipc's; hex is both.
        let challenge = random_hex()?;
        let id = random_hex()?;
        let ask = Msg::new([
            ("type", Value::from("auth_challenge")),
            ("channel", Value::from(channel)),
            ("challenge", Value::from(challenge.as_str())),
            ("challenge_id", Value::from(id.as_str())),
            ("request_id", reg.value("request_id")),
        ]);
        self.challenges.insert(
            id,
            Challenge {
                channel: channel.to_owned(),
                challenge,
                registration: reg,
                sent: Instant::now(),
            },
        );
        self.send(ask).await;
        Ok(())
    }

    /// The password the listener knows for `channel`, if it knows one and
    /// this client has proven it.
    pub(super) fn password_for(&self, channel: &str) -> Option<String> {
        self.keys.get(channel)?;
        let registry = self.shared.registry();
        registry.passwords.get(channel).map(|p| p.text.clone())
    }

    /// On a protected channel, a call, send or broadcast from this client
    /// must carry its comm-ipc signature (comm-ipc's clients sign those,
    /// and nothing else).
    pub(super) fn check_signature(&self, channel: &str, msg: &Msg) -> Result<()> {
        let signed = match self.keys.get(channel) {
            Some(key) => verify(key, msg),
            None => !self.shared.registry().passwords.contains_key(channel),
        };
        if signed {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "Invalid signature for channel {channel}"
            )))
        }
    }

    /// `set_password`: only the channel's owner may; one who opens a new
    /// channel to protect it owns it.
    pub(super) async fn set_password(&mut self, msg: &Msg) -> Result<()> {
        let name = msg.required("channel")?.to_owned();
        let text = msg
            .str("password")
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        self.join(&name, true).await?;
        self.room_for_password(&name)?;
        self.shared.registry().join_quietly(&name, &self.client_id);
        let key = match &text {
            Some(text) => Some(derive_key(&name, text).await?),
            None => None,
        };
        let channel = self.channels.get_mut(&name).expect("joined just above");
        channel
            .set_password(text.as_deref())
            .await
            .map_err(|e| match e {
                Error::Unauthorized(_) => {
                    Error::Protocol("Only the channel owner can set or change the password".into())
                }
                other => other,
            })?;
        self.remember_password(name.clone(), text.zip(key));
        // What this client serves and hears there now takes the new keys.
        let provided: Vec<String> = self
            .shared
            .registry()
            .events
            .iter()
            .filter(|((ch, _), meta)| *ch == name && meta.providers.contains(&self.client_id))
            .map(|((_, event), _)| event.clone())
            .collect();
        let channel = self.channels.get(&name).expect("joined above").clone();
        for event in provided {
            channel
                .provide_service(&event, self.forward(&name, &event))
                .await?;
        }
        self.rehear(&name).await?;
        self.succeeded(msg).await;
        Ok(())
    }

    /// Refuse to protect one more channel past [`MAX_PASSWORDS`], before
    /// the broker's channel is touched.
    fn room_for_password(&self, name: &str) -> Result<()> {
        let registry = self.shared.registry();
        if !registry.passwords.contains_key(name) && registry.passwords.len() >= MAX_PASSWORDS {
            return Err(Error::Overloaded(format!(
                "the comm-ipc listener keeps the passwords of {MAX_PASSWORDS} channels, \
                 and has as many"
            )));
        }
        Ok(())
    }

    /// Keep (or forget) the password this client set on `name`, as
    /// comm-ipc's server does: until no comm-ipc client is left in the
    /// channel ([`Registry::forget`](super::Registry)).
    fn remember_password(&mut self, name: String, password: Option<(String, Key)>) {
        let mut registry = self.shared.registry();
        match password {
            Some((text, key)) => {
                self.keys.insert(name.clone(), key);
                let given = false;
                registry
                    .passwords
                    .insert(name, Password { text, key, given });
            }
            None => {
                self.keys.remove(&name);
                registry.passwords.remove(&name);
            }
        }
    }

    /// Another member changed the channel's password: as comm-ipc's server
    /// does, this client is told to reconnect and leaves the channel.
    pub(super) async fn on_password_changed(&mut self, name: &str) {
        let Some(channel) = self.channels.remove(name) else {
            return;
        };
        self.keys.remove(name);
        self.topics.close_channel(name);
        self.stop_hearing(name);
        let _ = channel.leave().await;
        self.send(Msg::error("Channel password changed, please reconnect"))
            .await;
    }
}
