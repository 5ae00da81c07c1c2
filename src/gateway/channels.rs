//! The channels the gateway has joined on behalf of HTTP clients.
//!
//! The gateway is one broker client, a member of each channel it was
//! asked about. Membership alone would let anyone through once one
//! request knew a channel's password, so each request's password is
//! checked here against the one the channel was joined with (a digest of
//! it, compared in constant time); the broker checks each join, even of a
//! channel the gateway is in, and says when a password changes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::StatusCode;
use busline_core::ErrorCode;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::broker::{BrokerClient, Channel, ChannelEvent, ConnectionEvent};

/// How long a wrong password waits for its answer, while no other join
/// goes on.
const WRONG_PASSWORD_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// A digest of a channel's password, as the gateway keeps it.
type PasswordDigest = [u8; 32];

#[derive(Debug)]
struct Joined {
    channel: Channel,
    password: Option<PasswordDigest>,
}

/// Channels joined, by name; one that closes, changes its password or
/// would make the gateway its owner is forgotten.
#[derive(Debug)]
pub(super) struct Channels {
    bus: BrokerClient,
    joined: Arc<Mutex<HashMap<String, Joined>>>,
    /// One join at a time: the broker keeps one password challenge per
    /// connection, and a request must not pass on a join another request
    /// made with another password.
    joining: Arc<tokio::sync::Mutex<()>>,
    /// The task that follows the broker's word about these channels.
    listening: tokio::task::AbortHandle,
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.listening.abort();
    }
}

impl Channels {
    /// Channels joined through `bus`, which must be the gateway's own
    /// client: the gateway leaves channels (when their password changes,
    /// when it would own them), which would take another user's
    /// memberships with them. Call within a tokio runtime.
    pub(super) fn new(bus: BrokerClient) -> Channels {
        let joined: Arc<Mutex<HashMap<String, Joined>>> = Arc::default();
        let joining = Arc::new(tokio::sync::Mutex::new(()));
        let following = follow(bus.clone(), joined.clone(), joining.clone());
        Channels {
            bus,
            joined,
            joining,
            listening: tokio::spawn(following).abort_handle(),
        }
    }

    /// `name`, for a request that gave `password` (or none): joined now if
    /// the gateway is not in it yet; never created. A wrong password is
    /// answered after [`WRONG_PASSWORD_DELAY`], one at a time: guessing
    /// through the gateway is no faster than against the broker.
    pub(super) async fn get(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<Channel, ApiError> {
        let got = self.check(name, password).await;
        if let Err(refusal) = &got {
            if password.is_some() && refusal.status() == StatusCode::FORBIDDEN {
                let _one = self.joining.lock().await;
                tokio::time::sleep(WRONG_PASSWORD_DELAY).await;
            }
        }
        got
    }

    async fn check(&self, name: &str, password: Option<&str>) -> Result<Channel, ApiError> {
        let given = password.map(|p| digest(name, p));
        if let Some(known) = self.known(name, given.as_ref()) {
            return known;
        }
        let _one = self.joining.lock().await;
        if let Some(known) = self.known(name, given.as_ref()) {
            return known;
        }
        // The broker checks the password, even of a channel the gateway is
        // already in (joined as an existing one).
        let channel = self
            .bus
            .open_existing(name, password)
            .await
            .map_err(|e| ApiError::from_error(&e, password.is_some()))?;
        self.lock().insert(
            name.to_owned(),
            Joined {
                channel: channel.clone(),
                password: given,
            },
        );
        Ok(channel)
    }

    /// The gateway's own client of the broker.
    pub(super) fn bus(&self) -> &BrokerClient {
        &self.bus
    }

    /// What the joined channel `name` says to a request that gave the
    /// password whose digest is `given`; `None` if it is not joined.
    fn known(
        &self,
        name: &str,
        given: Option<&PasswordDigest>,
    ) -> Option<Result<Channel, ApiError>> {
        let joined = self.lock();
        let joined = joined.get(name)?;
        Some(match (&joined.password, given) {
            (None, None) => Ok(joined.channel.clone()),
            (Some(kept), Some(given)) if same(kept, given) => Ok(joined.channel.clone()),
            (Some(_), None) => Err(refused(
                StatusCode::UNAUTHORIZED,
                format!("channel {name:?} takes a password (X-Busline-Password)"),
            )),
            (Some(_), Some(_)) => Err(refused(
                StatusCode::FORBIDDEN,
                format!("wrong password for channel {name:?}"),
            )),
            (None, Some(_)) => Err(refused(
                StatusCode::FORBIDDEN,
                format!("channel {name:?} has no password, and one was given"),
            )),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Joined>> {
        lock(&self.joined)
    }
}

fn lock(
    joined: &Mutex<HashMap<String, Joined>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Joined>> {
    joined.lock().unwrap_or_else(|p| p.into_inner())
}

/// Act on what the broker says is no longer so. A channel closed: forget
/// it. Its password changed, or the gateway was made its owner: leave it
/// (the next request joins again, its password checked by the broker; and
/// a gateway acts for others, it must not hold a channel open). After a
/// gap in the news (events missed, the connection restored): leave all,
/// so every password is checked again.
async fn follow(
    bus: BrokerClient,
    joined: Arc<Mutex<HashMap<String, Joined>>>,
    joining: Arc<tokio::sync::Mutex<()>>,
) {
    let (mut events, mut connection) = (bus.events(), bus.connection_events());
    loop {
        let stale: Vec<String> = tokio::select! {
            event = events.next() => match event {
                Some(ChannelEvent::Closed { channel, .. }) => {
                    lock(&joined).remove(&channel);
                    continue;
                }
                Some(ChannelEvent::PasswordChanged { channel, .. })
                | Some(ChannelEvent::OwnerChanged { channel, you_own_it: true }) => vec![channel],
                Some(ChannelEvent::Missed { .. }) => lock(&joined).keys().cloned().collect(),
                Some(_) => continue,
                None => return,
            },
            event = connection.next() => match event {
                Some(ConnectionEvent::Restored | ConnectionEvent::NotRestored { .. }) => {
                    lock(&joined).keys().cloned().collect()
                }
                Some(_) => continue,
                None => return,
            },
        };
        // No join meanwhile: it would be undone by the leave.
        let _one = joining.lock().await;
        for name in stale {
            let Some(left) = lock(&joined).remove(&name) else {
                continue;
            };
            if let Err(e) = left.channel.leave().await {
                tracing::debug!(channel = %name, error = %e, "the gateway could not leave a channel");
            }
        }
    }
}

fn refused(status: StatusCode, message: String) -> ApiError {
    ApiError::new(status, ErrorCode::Unauthorized, message)
}

fn digest(channel: &str, password: &str) -> PasswordDigest {
    let mut hash = Sha256::new();
    hash.update(channel.as_bytes());
    hash.update([0]);
    hash.update(password.as_bytes());
    hash.finalize().into()
}

/// Equal digests, compared without an early exit.
fn same(a: &PasswordDigest, b: &PasswordDigest) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_tell_passwords_and_channels_apart() {
        let a = digest("vault", "s3cret");
        assert!(same(&a, &digest("vault", "s3cret")));
        assert!(!same(&a, &digest("vault", "s3cre")));
        assert!(!same(&a, &digest("vault2", "s3cret")));
        // The separator keeps "ab" + "c" from meeting "a" + "bc".
        assert!(!same(&digest("ab", "c"), &digest("a", "bc")));
    }
}
