//! The channels the gateway has joined on behalf of HTTP clients.
//!
//! The gateway is one broker client, a member of each channel it was
//! asked about. Membership alone would let anyone through once one
//! request knew a channel's password, so each request's password is
//! checked here against the one the channel was joined with (a digest of
//! it, compared in constant time; the broker checked the first).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::StatusCode;
use busline_core::ErrorCode;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::broker::{BrokerClient, Channel, ChannelEvent};

/// A digest of a channel's password, as the gateway keeps it.
type PasswordDigest = [u8; 32];

#[derive(Debug)]
struct Joined {
    channel: Channel,
    password: Option<PasswordDigest>,
}

/// Channels joined, by name; one that closes is forgotten.
#[derive(Debug, Clone)]
pub(super) struct Channels {
    bus: BrokerClient,
    joined: Arc<Mutex<HashMap<String, Joined>>>,
}

impl Channels {
    pub(super) fn new(bus: BrokerClient) -> Channels {
        let channels = Channels {
            bus: bus.clone(),
            joined: Arc::default(),
        };
        let joined = Arc::downgrade(&channels.joined);
        let mut events = bus.events();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(joined) = joined.upgrade() else {
                    return;
                };
                if let ChannelEvent::Closed { channel, .. } = event {
                    joined
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&channel);
                }
            }
        });
        channels
    }

    /// `name`, for a request that gave `password` (or none): joined now if
    /// the gateway is not in it yet; never created.
    pub(super) async fn get(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<Channel, ApiError> {
        let given = password.map(|p| digest(name, p));
        if let Some(joined) = self.lock().get(name) {
            return match (&joined.password, &given) {
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
            };
        }
        let channel = self
            .bus
            .open_existing(name, password)
            .await
            .map_err(|e| ApiError::from_error(&e, password.is_some()))?;
        let mut joined = self.lock();
        // Another request may have joined it meanwhile: keep the first.
        let kept = joined.entry(name.to_owned()).or_insert(Joined {
            channel,
            password: given,
        });
        Ok(kept.channel.clone())
    }

    /// The gateway's own client of the broker.
    pub(super) fn bus(&self) -> &BrokerClient {
        &self.bus
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Joined>> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())
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
