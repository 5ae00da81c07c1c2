//! Mutual HMAC-SHA256 challenge-response over a shared secret.
//!
//! ```text
//! client → server  {"nonce": Nc}                              (32 random bytes)
//! server → client  {"nonce": Ns, "proof": HMAC(k, "busline/1 server" ‖ Nc ‖ Ns)}
//! client → server  {"proof": HMAC(k, "busline/1 client" ‖ Ns ‖ Nc)}
//! ```
//!
//! Both sides contribute a fresh nonce, so a recorded exchange cannot be
//! replayed; the two proofs carry different labels, so one side's proof can
//! never be reflected back as the other's; proofs are compared in constant
//! time. The client checks the server's proof before sending its own, so a
//! client never authenticates to an impostor.

use std::{fmt, path::Path, sync::Arc};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{AuthChannel, Authenticator, Identity};
use crate::{Error, Payload, PeerInfo, Result};

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 32;
const SERVER_LABEL: &[u8] = b"busline/1 server";
const CLIENT_LABEL: &[u8] = b"busline/1 client";

/// HMAC-SHA256 shared-secret authentication (mutual).
///
/// ```
/// use busline_core::SharedSecret;
///
/// let auth = SharedSecret::new("correct horse battery staple")?;
/// assert!(!format!("{auth:?}").contains("horse")); // never printed
/// assert!(SharedSecret::new("hunter2").is_err()); // shorter than MIN_LEN
/// # Ok::<(), busline_core::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedSecret {
    key: Arc<[u8]>,
}

impl SharedSecret {
    /// The shortest secret accepted, in bytes. Anyone who records one
    /// handshake can test guesses offline at the speed of HMAC, so a short
    /// secret is a guessable one.
    pub const MIN_LEN: usize = 16;

    /// Use `secret` as the key. Secrets shorter than [`Self::MIN_LEN`]
    /// bytes are refused.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_LEN {
            return Err(Error::Unauthorized(format!(
                "the shared secret is {} bytes, shorter than the {} required; make one with \
                 `head -c 32 /dev/urandom | base64 > FILE`",
                secret.len(),
                Self::MIN_LEN
            )));
        }
        Ok(SharedSecret {
            key: Arc::from(secret),
        })
    }

    /// Read the key from a file, ignoring one trailing newline.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::new(Self::read_file(path)?).map_err(|e| match e {
            Error::Unauthorized(why) => {
                Error::Unauthorized(format!("secret file {}: {why}", path.display()))
            }
            other => other,
        })
    }

    /// The bytes of a secret file as [`SharedSecret::from_file`] takes
    /// them (one trailing newline dropped), for a protocol that uses the
    /// secret in its own way (comm-ipc's connection secret).
    pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let mut bytes = std::fs::read(path).map_err(|e| {
            Error::transport(std::io::Error::new(
                e.kind(),
                format!("reading secret file {}: {e}", path.display()),
            ))
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(bytes)
    }

    /// Whether `candidate` is this secret, compared in constant time: for
    /// fronts that take the secret itself as a token, such as the HTTP
    /// gateway's `Authorization: Bearer` header.
    pub fn is(&self, candidate: &[u8]) -> bool {
        // Equal macs of both under the key, checked by `verify_slice` in
        // constant time, whatever the candidate's length.
        let expected = self.mac(b"busline-token", &self.key, b"").finalize();
        self.mac(b"busline-token", candidate, b"")
            .verify_slice(&expected.into_bytes())
            .is_ok()
    }

    fn mac(&self, label: &[u8], first: &[u8], second: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(label);
        mac.update(first);
        mac.update(second);
        mac
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSecret")
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Step {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proof: Option<String>,
}

fn fresh_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::Unauthorized(format!("no randomness for a nonce: {e}")))?;
    Ok(nonce)
}

fn send_step(nonce: Option<&[u8]>, proof: Option<&[u8]>) -> Result<Payload> {
    Payload::json(&Step {
        nonce: nonce.map(hex::encode),
        proof: proof.map(hex::encode),
    })
}

fn field(value: Option<String>, what: &str, len: usize) -> Result<Vec<u8>> {
    let bad = || Error::Unauthorized(format!("malformed handshake: bad or missing {what}"));
    let bytes = hex::decode(value.ok_or_else(bad)?).map_err(|_| bad())?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(bad())
    }
}

fn read_step(payload: Payload) -> Result<Step> {
    payload
        .decode()
        .map_err(|_| Error::Unauthorized("malformed handshake step".into()))
}

#[async_trait]
impl Authenticator for SharedSecret {
    fn scheme(&self) -> &'static str {
        "hmac-sha256"
    }

    async fn client(&self, channel: &mut dyn AuthChannel) -> Result<()> {
        let client_nonce = fresh_nonce()?;
        channel.send(send_step(Some(&client_nonce), None)?).await?;
        let step = read_step(channel.recv().await?)?;
        let server_nonce = field(step.nonce, "nonce", NONCE_LEN)?;
        let proof = field(step.proof, "proof", 32)?;
        self.mac(SERVER_LABEL, &client_nonce, &server_nonce)
            .verify_slice(&proof)
            .map_err(|_| {
                Error::Unauthorized(
                    "shared secret mismatch: the server's proof does not match this client's secret (check both secret files)"
                        .into(),
                )
            })?;
        let ours = self
            .mac(CLIENT_LABEL, &server_nonce, &client_nonce)
            .finalize()
            .into_bytes();
        channel.send(send_step(None, Some(&ours))?).await
    }

    async fn server(&self, channel: &mut dyn AuthChannel, peer: PeerInfo) -> Result<Identity> {
        let step = read_step(channel.recv().await?)?;
        let client_nonce = field(step.nonce, "nonce", NONCE_LEN)?;
        let server_nonce = fresh_nonce()?;
        let ours = self
            .mac(SERVER_LABEL, &client_nonce, &server_nonce)
            .finalize()
            .into_bytes();
        channel
            .send(send_step(Some(&server_nonce), Some(&ours))?)
            .await?;
        let step = read_step(channel.recv().await?)?;
        let proof = field(step.proof, "proof", 32)?;
        self.mac(CLIENT_LABEL, &server_nonce, &client_nonce)
            .verify_slice(&proof)
            .map_err(|_| {
                Error::Unauthorized(
                    "shared secret mismatch: the client's proof does not match".into(),
                )
            })?;
        Ok(Identity {
            scheme: self.scheme().into(),
            subject: None,
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn is_tells_the_secret_from_anything_else() {
        let secret = SharedSecret::new("correct horse battery staple").unwrap();
        assert!(secret.is(b"correct horse battery staple"));
        assert!(!secret.is(b"correct horse battery stapl"));
        assert!(!secret.is(b"correct horse battery staple!"));
        assert!(!secret.is(b""));
    }

    /// One side of an in-process handshake, keeping what it sent.
    struct Pipe {
        tx: mpsc::UnboundedSender<Payload>,
        rx: mpsc::UnboundedReceiver<Payload>,
        sent: Vec<Payload>,
    }

    #[async_trait]
    impl AuthChannel for Pipe {
        async fn send(&mut self, payload: Payload) -> Result<()> {
            self.sent.push(payload.clone());
            self.tx
                .send(payload)
                .map_err(|_| Error::Disconnected("peer gone".into()))
        }
        async fn recv(&mut self) -> Result<Payload> {
            self.rx
                .recv()
                .await
                .ok_or_else(|| Error::Disconnected("peer gone".into()))
        }
    }

    fn pipes() -> (Pipe, Pipe) {
        let (a_tx, b_rx) = mpsc::unbounded_channel();
        let (b_tx, a_rx) = mpsc::unbounded_channel();
        let pipe = |tx, rx| Pipe {
            tx,
            rx,
            sent: Vec::new(),
        };
        (pipe(a_tx, a_rx), pipe(b_tx, b_rx))
    }

    /// Plays back recorded client steps to a server, ignoring its answers.
    struct Replay(VecDeque<Payload>);

    #[async_trait]
    impl AuthChannel for Replay {
        async fn send(&mut self, _: Payload) -> Result<()> {
            Ok(())
        }
        async fn recv(&mut self) -> Result<Payload> {
            self.0
                .pop_front()
                .ok_or_else(|| Error::Disconnected("nothing left to replay".into()))
        }
    }

    #[tokio::test]
    async fn a_recorded_handshake_cannot_be_replayed() {
        let secret = SharedSecret::new("s3cret s3cret s3cret").unwrap();
        let (mut client, mut server) = pipes();
        let (ok_client, ok_server) = tokio::join!(
            secret.client(&mut client),
            secret.server(&mut server, PeerInfo::default())
        );
        ok_client.unwrap();
        ok_server.unwrap();
        // An eavesdropper replays the client's two steps to a new session:
        // the server's fresh nonce makes the recorded proof worthless.
        let mut replay = Replay(client.sent.into_iter().collect());
        let err = secret
            .server(&mut replay, PeerInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_server_proof_reflected_back_is_refused() {
        let secret = SharedSecret::new("s3cret s3cret s3cret").unwrap();
        let (mut client, mut server) = pipes();
        let serving = tokio::spawn(async move {
            let result = secret.server(&mut server, PeerInfo::default()).await;
            (result, server.sent)
        });
        // A client without the secret sends a nonce, then hands the
        // server's own proof back as if it were the client's.
        let nonce = [7u8; NONCE_LEN];
        client
            .send(send_step(Some(&nonce), None).unwrap())
            .await
            .unwrap();
        let step = read_step(client.recv().await.unwrap()).unwrap();
        let reflected = field(step.proof, "proof", 32).unwrap();
        client
            .send(send_step(None, Some(&reflected)).unwrap())
            .await
            .unwrap();
        let (result, _) = serving.await.unwrap();
        assert!(matches!(result, Err(Error::Unauthorized(_))), "{result:?}");
    }
}
