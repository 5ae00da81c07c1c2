//! End-to-end signatures on password-protected channels.
//!
//! Members sign what they send each other with the channel's signing key,
//! which the broker never holds ([`super::ChannelKeys`]); receivers check
//! before they act. A signed payload is an ordinary binary payload, so the
//! broker forwards it like any other:
//!
//! ```text
//! "BLSG" | version 1 | kind | nonce (16) | time ms (8, BE) | HMAC (32) | encoding | payload
//! ```
//!
//! The HMAC-SHA256 covers the channel, the routed name (method or topic),
//! the kind, a context, the nonce, the time and the payload. A reply or
//! stream item's context is its call's nonce and its position, so it
//! cannot be moved to another call, reordered or replayed; calls and
//! publications carry fresh nonces, which receivers remember for the
//! accepted clock skew, and a time stamp outside that window is refused.
//! Error replies are not signed: a broker can always make a call fail, but
//! it cannot fake a result.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use busline_core::{Encoding, Error, Payload, Result};
use bytes::{BufMut, BytesMut};
use futures::{future::BoxFuture, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tower::{Service, ServiceExt};

use super::keys::ChannelKeys;
use crate::rpc::{CallKind, Reply, Request};

const MAGIC: &[u8; 4] = b"BLSG";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 16 + 8 + 32 + 1;
/// How far a sender's clock may be from ours.
const MAX_SKEW: Duration = Duration::from_secs(120);
/// Nonces remembered at most; past this, new calls are refused rather
/// than memory growing.
const MAX_REMEMBERED: usize = 1 << 20;

/// What a signed payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A call or stream opening, which is answered.
    Call = 1,
    /// The result of a call.
    Reply = 2,
    /// One item of a stream.
    Item = 3,
    /// A publication.
    Publication = 4,
    /// A `send` or `broadcast`, which is not answered: it cannot be turned
    /// into a call, nor a call into one.
    Send = 5,
}

/// A call's nonce and an item's position: what binds answers to calls.
pub(crate) type Context = ([u8; 16], u64);

const NO_CONTEXT: Context = ([0; 16], 0);

/// Signs and checks for one channel.
#[derive(Debug)]
pub(crate) struct Signer {
    key: [u8; 32],
    channel: String,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    nonces: HashSet<[u8; 16]>,
    /// In arrival order, with the time each stops mattering.
    expiry: VecDeque<([u8; 16], u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn refused(why: &str) -> Error {
    Error::Unauthorized(format!("end-to-end signature check failed: {why}"))
}

impl Signer {
    pub(crate) fn new(keys: &ChannelKeys, channel: &str) -> Signer {
        Signer {
            key: *keys.signing_key(),
            channel: channel.to_owned(),
            seen: Mutex::default(),
        }
    }

    fn mac(
        &self,
        kind: Kind,
        name: &str,
        context: Context,
        head: &[u8],
        body: &[u8],
    ) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(b"busline signature v1\0");
        mac.update(self.channel.as_bytes());
        mac.update(b"\0");
        mac.update(name.as_bytes());
        mac.update(&[0, kind as u8]);
        mac.update(&context.0);
        mac.update(&context.1.to_be_bytes());
        mac.update(head);
        mac.update(body);
        mac
    }

    /// Sign a call or publication; its nonce, for checking the answers.
    pub(crate) fn sign_fresh(
        &self,
        kind: Kind,
        name: &str,
        payload: &Payload,
    ) -> Result<(Payload, [u8; 16])> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::transport(std::io::Error::other(format!("no randomness: {e}"))))?;
        Ok((self.sign(kind, name, nonce, (nonce, 0), payload), nonce))
    }

    /// Sign an answer within `context`.
    pub(crate) fn sign_answer(
        &self,
        kind: Kind,
        name: &str,
        context: Context,
        payload: &Payload,
    ) -> Result<Payload> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::transport(std::io::Error::other(format!("no randomness: {e}"))))?;
        Ok(self.sign(kind, name, nonce, context, payload))
    }

    fn sign(
        &self,
        kind: Kind,
        name: &str,
        nonce: [u8; 16],
        context: Context,
        payload: &Payload,
    ) -> Payload {
        let context = if matches!(kind, Kind::Call | Kind::Publication | Kind::Send) {
            NO_CONTEXT
        } else {
            context
        };
        let mut head = Vec::with_capacity(25);
        head.extend_from_slice(&nonce);
        head.extend_from_slice(&now_ms().to_be_bytes());
        head.push(encoding_byte(payload.encoding()));
        let tag = self
            .mac(kind, name, context, &head, payload.bytes())
            .finalize()
            .into_bytes();
        let mut out = BytesMut::with_capacity(HEADER + payload.len());
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(kind as u8);
        out.put_slice(&head[..24]);
        out.put_slice(&tag);
        out.put_u8(head[24]);
        out.put_slice(payload.bytes());
        Payload::from_bytes(Encoding::Binary, out.freeze())
    }

    /// Check a signed payload and take out what was signed; for calls and
    /// publications (`context` none) also that it is fresh and new.
    pub(crate) fn verify(
        &self,
        kind: Kind,
        name: &str,
        context: Option<Context>,
        signed: &Payload,
    ) -> Result<(Payload, [u8; 16])> {
        let b = signed.bytes();
        if signed.encoding() != Encoding::Binary || b.len() < HEADER || &b[..4] != MAGIC {
            return Err(refused("the payload is not signed"));
        }
        if b[4] != VERSION || b[5] != kind as u8 {
            return Err(refused("wrong version or kind"));
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[6..22]);
        let sent_ms = u64::from_be_bytes(b[22..30].try_into().expect("8 bytes"));
        let tag = &b[30..62];
        let mut head = b[6..30].to_vec();
        head.push(b[62]);
        let encoding = encoding_from(b[62]).ok_or_else(|| refused("unknown payload encoding"))?;
        let body = b.slice(HEADER..);
        self.mac(kind, name, context.unwrap_or(NO_CONTEXT), &head, &body)
            .verify_slice(tag)
            .map_err(|_| refused("the payload or its routing was altered, or the key differs"))?;
        if context.is_none() {
            self.remember(nonce, sent_ms)?;
        }
        Ok((Payload::from_bytes(encoding, body), nonce))
    }

    /// Refuse a nonce seen before or a time outside the skew window.
    fn remember(&self, nonce: [u8; 16], sent_ms: u64) -> Result<()> {
        let now = now_ms();
        let skew = MAX_SKEW.as_millis() as u64;
        if sent_ms.abs_diff(now) > skew {
            return Err(refused(
                "signed too long ago or in the future (check the clocks)",
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(old, until)) = seen.expiry.front() {
            if until > now {
                break;
            }
            seen.expiry.pop_front();
            seen.nonces.remove(&old);
        }
        if seen.nonces.len() >= MAX_REMEMBERED {
            return Err(Error::Overloaded(
                "too many signed messages in the replay window".into(),
            ));
        }
        if !seen.nonces.insert(nonce) {
            return Err(refused("replayed"));
        }
        seen.expiry.push_back((nonce, now + 2 * skew));
        Ok(())
    }
}

/// A provider's handler on a protected channel: it checks each call's
/// signature, runs the handler on what was signed, and signs the answers.
#[derive(Clone)]
pub(crate) struct Verified<S> {
    inner: S,
    signer: Arc<Signer>,
}

impl<S> Verified<S> {
    pub(crate) fn new(inner: S, signer: Arc<Signer>) -> Self {
        Verified { inner, signer }
    }
}

impl<S> Service<Request> for Verified<S>
where
    S: Service<Request, Response = Reply, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let (signer, inner) = (self.signer.clone(), self.inner.clone());
        Box::pin(async move {
            let kind = match req.kind {
                CallKind::Notify => Kind::Send,
                CallKind::Unary | CallKind::Stream => Kind::Call,
            };
            let (payload, call) = signer.verify(kind, &req.method, None, &req.payload)?;
            req.payload = payload;
            let name = req.method.clone();
            Ok(match inner.oneshot(req).await? {
                Reply::Unary(p) => {
                    Reply::Unary(signer.sign_answer(Kind::Reply, &name, (call, 0), &p)?)
                }
                Reply::Stream(items) => {
                    Reply::Stream(Box::pin(items.enumerate().map(move |(i, item)| {
                        item.and_then(|p| {
                            signer.sign_answer(Kind::Item, &name, (call, i as u64), &p)
                        })
                    })))
                }
            })
        })
    }
}

fn encoding_byte(e: Encoding) -> u8 {
    match e {
        Encoding::Json => 0,
        Encoding::Cbor => 1,
        Encoding::Binary => 2,
    }
}

fn encoding_from(b: u8) -> Option<Encoding> {
    Some(match b {
        0 => Encoding::Json,
        1 => Encoding::Cbor,
        2 => Encoding::Binary,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(&ChannelKeys::derive("ch", "pw"), "ch")
    }

    #[test]
    fn signed_payloads_check_and_tampering_fails() {
        let s = signer();
        let p = Payload::json(&[1, 2]).unwrap();
        let (signed, nonce) = s.sign_fresh(Kind::Call, "ch/add", &p).unwrap();
        let (back, got) = s.verify(Kind::Call, "ch/add", None, &signed).unwrap();
        assert_eq!((back, got), (p.clone(), nonce));
        // Replayed, redirected, re-kinded, altered, or unsigned: refused.
        assert!(s.verify(Kind::Call, "ch/add", None, &signed).is_err());
        let (signed, _) = s.sign_fresh(Kind::Call, "ch/add", &p).unwrap();
        assert!(s.verify(Kind::Call, "ch/sub", None, &signed).is_err());
        assert!(s
            .verify(Kind::Publication, "ch/add", None, &signed)
            .is_err());
        let mut bytes = signed.bytes().to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        let altered = Payload::from_bytes(Encoding::Binary, bytes);
        assert!(s.verify(Kind::Call, "ch/add", None, &altered).is_err());
        assert!(s.verify(Kind::Call, "ch/add", None, &p).is_err());
        let other = Signer::new(&ChannelKeys::derive("ch", "other"), "ch");
        let (forged, _) = other.sign_fresh(Kind::Call, "ch/add", &p).unwrap();
        assert!(s.verify(Kind::Call, "ch/add", None, &forged).is_err());
    }

    #[test]
    fn answers_are_bound_to_their_call_and_position() {
        let s = signer();
        let call = [7u8; 16];
        let item = Payload::json(&"x").unwrap();
        let signed = s
            .sign_answer(Kind::Item, "ch/feed", (call, 3), &item)
            .unwrap();
        assert!(s
            .verify(Kind::Item, "ch/feed", Some((call, 3)), &signed)
            .is_ok());
        assert!(s
            .verify(Kind::Item, "ch/feed", Some((call, 4)), &signed)
            .is_err());
        assert!(s
            .verify(Kind::Item, "ch/feed", Some(([8; 16], 3)), &signed)
            .is_err());
    }
}
