//! The broker's own channels, where it reports what happens in it.
//!
//! - `busline.system`: structured events, on topics `client.connected`,
//!   `client.disconnected`, `channel.opened`, `channel.closed`,
//!   `owner.changed`, `provider.added`, `provider.removed`,
//!   `subscription.added`, `subscription.removed`, `policy.changed`,
//!   `password.changed`;
//! - `busline.logs`: the same, as readable lines (topic `info`);
//! - `busline.errors`: refused operations (topic `refused`), with who
//!   asked and why.
//!
//! Clients open and subscribe to them like any channel; only the broker
//! speaks on them (providing or publishing there is refused). Each can be
//! protected with a password given when the broker starts
//! ([`BrokerBuilder::system_password`](super::BrokerBuilder::system_password)).
//! The broker, which holds those passwords, is the sender here, so these
//! publications are not signed end to end.

use serde_json::{json, Value};

/// Structured events.
pub const SYSTEM: &str = "busline.system";
/// Readable log lines.
pub const LOGS: &str = "busline.logs";
/// Refused operations.
pub const ERRORS: &str = "busline.errors";
/// The three system channels.
pub const SYSTEM_CHANNELS: [&str; 3] = [SYSTEM, LOGS, ERRORS];

/// Whether `channel` is one of the broker's own.
pub fn is_system(channel: &str) -> bool {
    SYSTEM_CHANNELS.contains(&channel)
}

/// Something worth telling `busline.system` (and `busline.logs`) about.
#[derive(Debug)]
pub(crate) struct Happening {
    pub(crate) topic: &'static str,
    pub(crate) body: Value,
}

impl Happening {
    pub(crate) fn new(topic: &'static str, body: Value) -> Self {
        Happening { topic, body }
    }

    /// The log line for `busline.logs`.
    pub(crate) fn line(&self) -> Value {
        json!({ "message": format!("{}: {}", self.topic, self.body) })
    }
}
