//! Connection authentication, run once per connection before any call.
//!
//! Every connection starts with a handshake that the [`handshake`] functions
//! drive: the client sends [`Message::Hello`] naming its protocol version and
//! authentication scheme; if the server runs the same scheme, the two
//! [`Authenticator`]s exchange [`Message::Auth`] frames; the server ends
//! with [`Message::Welcome`], or with [`Message::Close`] saying why it
//! refused. A scheme mismatch is therefore a clear `Unauthorized` error on
//! both sides, never a hang, and the whole exchange is bounded by a timeout.

mod peer_allow_list;
mod shared_secret;

pub use peer_allow_list::PeerAllowList;
pub use shared_secret::SharedSecret;

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use crate::{Codec, Error, Io, Message, Payload, PeerInfo, Result, PROTOCOL_VERSION};

/// Default bound on the whole handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a refused connection without a handshake is read (and
/// discarded) after being told why, so the client reads the refusal
/// instead of a reset connection.
const REFUSAL_LINGER: Duration = Duration::from_millis(250);

/// Who the peer proved to be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The scheme that authenticated the peer (`"none"` for [`NoAuth`]).
    pub scheme: String,
    /// Who the scheme says the peer is, if it names peers (a shared secret
    /// only proves membership, so it names nobody).
    pub subject: Option<String>,
    /// What the transport knows of the peer.
    pub peer: PeerInfo,
}

/// Sends and receives the scheme-defined [`Message::Auth`] frames.
#[async_trait]
pub trait AuthChannel: Send {
    /// Send one step.
    async fn send(&mut self, payload: Payload) -> Result<()>;
    /// Receive the peer's next step.
    async fn recv(&mut self) -> Result<Payload>;
}

/// A connection authentication scheme.
///
/// Contract:
/// - Both sides run the same scheme, named by [`Authenticator::scheme`];
///   the handshake refuses a mismatch before either method runs.
/// - [`Authenticator::server`] returns the peer's [`Identity`] or
///   [`Error::Unauthorized`]; the client side returns `Ok` only once it is
///   satisfied with the server (mutual schemes verify the server too).
/// - Implementations never trust frame contents: malformed steps are an
///   `Unauthorized` or `Protocol` error, not a panic.
/// - Secrets never appear in errors, logs or `Debug` output.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Scheme name sent in [`Message::Hello`], e.g. `"hmac-sha256"`.
    fn scheme(&self) -> &'static str;

    /// Client side of the exchange.
    async fn client(&self, channel: &mut dyn AuthChannel) -> Result<()>;

    /// Server side of the exchange.
    async fn server(&self, channel: &mut dyn AuthChannel, peer: PeerInfo) -> Result<Identity>;
}

/// No authentication: every peer is accepted, with an anonymous identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    fn scheme(&self) -> &'static str {
        "none"
    }

    async fn client(&self, _: &mut dyn AuthChannel) -> Result<()> {
        Ok(())
    }

    async fn server(&self, _: &mut dyn AuthChannel, peer: PeerInfo) -> Result<Identity> {
        Ok(Identity {
            scheme: "none".into(),
            subject: None,
            peer,
        })
    }
}

#[async_trait]
impl<A: Authenticator + ?Sized> Authenticator for std::sync::Arc<A> {
    fn scheme(&self) -> &'static str {
        (**self).scheme()
    }

    async fn client(&self, channel: &mut dyn AuthChannel) -> Result<()> {
        (**self).client(channel).await
    }

    async fn server(&self, channel: &mut dyn AuthChannel, peer: PeerInfo) -> Result<Identity> {
        (**self).server(channel, peer).await
    }
}

/// The framed connection seen as an [`AuthChannel`].
struct FramedChannel<'a, I, C> {
    framed: &'a mut Framed<I, C>,
}

async fn next_frame<I: Io, C: Codec>(framed: &mut Framed<I, C>) -> Result<Message> {
    match framed.next().await {
        Some(Ok(Message::Close { error })) => Err(error.map_or_else(
            || Error::Disconnected("peer closed the connection during the handshake".into()),
            |e| e.into_error(),
        )),
        Some(frame) => frame,
        None => Err(Error::Disconnected(
            "peer closed the connection during the handshake".into(),
        )),
    }
}

#[async_trait]
impl<I: Io, C: Codec> AuthChannel for FramedChannel<'_, I, C> {
    async fn send(&mut self, payload: Payload) -> Result<()> {
        self.framed.send(Message::Auth { payload }).await
    }

    async fn recv(&mut self) -> Result<Payload> {
        match next_frame(self.framed).await? {
            Message::Auth { payload } => Ok(payload),
            other => Err(Error::Protocol(format!(
                "expected an auth step, got {}",
                other.kind()
            ))),
        }
    }
}

/// The two ends of the connection handshake.
pub mod handshake {
    use super::*;

    /// Run the client side: hello, authentication, wait for welcome.
    ///
    /// A server that does not answer within `timeout` gives
    /// [`Error::Timeout`]; a refusal gives the server's reason.
    pub async fn client<I: Io, C: Codec, A: Authenticator + ?Sized>(
        framed: &mut Framed<I, C>,
        auth: &A,
        timeout: Duration,
    ) -> Result<()> {
        if framed.codec().hello_optional() && auth.scheme() == NoAuth.scheme() {
            return Ok(());
        }
        let run = async {
            framed
                .send(Message::Hello {
                    version: PROTOCOL_VERSION,
                    scheme: auth.scheme().to_string(),
                })
                .await?;
            auth.client(&mut FramedChannel { framed }).await?;
            match next_frame(framed).await? {
                Message::Welcome { .. } => Ok(()),
                other => Err(Error::Protocol(format!(
                    "expected welcome, got {}",
                    other.kind()
                ))),
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Run the server side: expect hello, authenticate, send welcome.
    ///
    /// On failure the server tells the client why with [`Message::Close`]
    /// (best effort) before returning the error; the caller then drops the
    /// connection.
    pub async fn server<I: Io, C: Codec, A: Authenticator + ?Sized>(
        framed: &mut Framed<I, C>,
        auth: &A,
        peer: PeerInfo,
        timeout: Duration,
    ) -> Result<Identity> {
        // Without a hello (JSON-RPC, no secret to exchange) calls flow at
        // once, after the checks that need no messages (peer credentials).
        if framed.codec().hello_optional() && auth.scheme() == NoAuth.scheme() {
            let checked =
                tokio::time::timeout(timeout, auth.server(&mut FramedChannel { framed }, peer))
                    .await
                    .unwrap_or(Err(Error::Timeout(timeout)));
            if let Err(e) = &checked {
                let close = Message::Close {
                    error: Some(e.to_remote()),
                };
                let _ = tokio::time::timeout(timeout, framed.send(close)).await;
                // Such a client may already be sending its first call: take
                // it in, briefly, so that closing does not reset the
                // connection before the client has read why.
                let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                    while let Some(Ok(_)) = framed.next().await {}
                })
                .await;
            }
            return checked;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let late = || Error::Unauthorized(format!("handshake not completed within {timeout:?}"));
        let first = tokio::time::timeout_at(deadline, next_frame(framed))
            .await
            .unwrap_or_else(|_| Err(late()));
        let run = async {
            match first? {
                Message::Hello { version, .. } if version != PROTOCOL_VERSION => {
                    Err(Error::Protocol(format!(
                        "client speaks protocol version {version}, this server speaks {PROTOCOL_VERSION}"
                    )))
                }
                Message::Hello { scheme, .. } if scheme != auth.scheme() => {
                    Err(Error::Unauthorized(format!(
                        "this server requires {:?} authentication, the client offered {scheme:?}",
                        auth.scheme()
                    )))
                }
                Message::Hello { .. } => auth.server(&mut FramedChannel { framed }, peer).await,
                other => Err(Error::Unauthorized(format!(
                    "this server requires {:?} authentication: a connection must start with \
                     hello, got {}",
                    auth.scheme(),
                    other.kind()
                ))),
            }
        };
        let result = tokio::time::timeout_at(deadline, run)
            .await
            .unwrap_or_else(|_| Err(late()));
        let reply = match &result {
            Ok(_) => Message::Welcome {
                version: PROTOCOL_VERSION,
            },
            Err(e) => Message::Close {
                error: Some(e.to_remote()),
            },
        };
        // The client may already be gone; the result is what matters.
        let send = tokio::time::timeout(timeout, framed.send(reply)).await;
        match (result, send) {
            (Ok(identity), Ok(Ok(()))) => Ok(identity),
            (Ok(_), Ok(Err(e))) => Err(e),
            (Ok(_), Err(_)) => Err(Error::Timeout(timeout)),
            (Err(e), _) => Err(e),
        }
    }
}
