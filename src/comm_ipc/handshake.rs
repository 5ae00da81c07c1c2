//! A comm-ipc connection's first messages: `identify`, and with a secret
//! comm-ipc's connection challenge.

use std::time::Duration;

use busline_core::{Error, Io};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use rmpv::Value;
use sha2::Sha256;
use tokio_util::codec::Framed;

use super::{
    forward::request_id,
    frame::{FrameCodec, Msg},
    password::random_hex,
    Shared,
};
use crate::broker::BrokerClient;

/// How long a client has to answer the connection challenge (comm-ipc's
/// own server gives 10 s).
const PROOF_WAIT: Duration = Duration::from_secs(10);

/// `identify`, and with a secret the connection challenge; then a broker
/// client claiming the client's id. `Err` is what to tell the client.
pub(super) async fn handshake<I: Io>(
    shared: &Shared,
    framed: &mut Framed<I, FrameCodec>,
) -> std::result::Result<(String, BrokerClient), String> {
    let first = next(framed, shared.idle_timeout).await?;
    if first.kind() != Some("identify") {
        return Err("the first message must be identify".into());
    }
    let client_id = match first.str("client_id") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("cli-{}", &request_id()[..8]),
    };
    let mode = first.str("mode").unwrap_or("client").to_owned();
    if let Some(key) = &shared.secret_hash {
        let challenge = random_hex().and_then(|a| Ok(a + &random_hex()?));
        let challenge = challenge.map_err(|e| e.to_string())?;
        let ask = Msg::new([
            ("type", Value::from("conn_challenge")),
            ("challenge", Value::from(challenge.as_str())),
            ("server_id", Value::from(shared.server_id.as_str())),
        ]);
        framed.send(ask).await.map_err(|e| e.to_string())?;
        let answer = next(framed, PROOF_WAIT).await?;
        let proof = answer
            .str("proof")
            .filter(|_| answer.kind() == Some("conn_proof"));
        if !proof.is_some_and(|proof| proves(key, &challenge, proof)) {
            return Err("Authentication failed".into());
        }
    }
    let bus = (shared.connect)(&client_id).await.map_err(|e| match e {
        Error::Unauthorized(_) => format!("Client ID {client_id} already in use"),
        other => format!("the broker refused the connection: {other}"),
    })?;
    shared.registry().modes.insert(client_id.clone(), mode);
    let identified = Msg::new([
        ("type", Value::from("identified")),
        ("client_id", Value::from(client_id.as_str())),
        ("server_id", Value::from(shared.server_id.as_str())),
    ]);
    if let Err(e) = framed.send(identified).await {
        shared.registry().forget(&client_id);
        bus.close();
        return Err(e.to_string());
    }
    Ok((client_id, bus))
}

/// The next message, within `wait`.
async fn next<I: Io>(
    framed: &mut Framed<I, FrameCodec>,
    wait: Duration,
) -> std::result::Result<Msg, String> {
    match tokio::time::timeout(wait, framed.next()).await {
        Ok(Some(Ok(msg))) => Ok(msg),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => Err("the client closed the connection".into()),
        Err(_) => Err(format!("no message within {wait:?}")),
    }
}

/// Whether `proof` is comm-ipc's answer to `challenge`: the hex HMAC-SHA256,
/// keyed with the hex SHA-256 of the secret, of `challenge:"<challenge>"`
/// (its signature text for a message holding only the challenge).
fn proves(key: &str, challenge: &str, proof: &str) -> bool {
    let Ok(proof) = hex::decode(proof) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("challenge:\"{challenge}\"").as_bytes());
    mac.verify_slice(&proof).is_ok()
}
