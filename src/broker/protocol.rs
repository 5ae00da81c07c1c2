//! What broker clients and the broker say to each other, on top of the RPC
//! layer.
//!
//! Control calls are ordinary calls to `busline.`-prefixed methods whose
//! arguments are the broker's own (it decodes them). Everything else is a
//! routed call: the method `<channel>/<method>` goes to a provider of that
//! method on that channel, with its payload forwarded byte for byte, and
//! the provider's answer comes back the same way. The broker never decodes
//! a routed payload.

use busline_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Join (and create, if new) a channel.
pub(crate) const OPEN: &str = "busline.open";
/// Leave a channel.
pub(crate) const LEAVE: &str = "busline.leave";
/// Serve a method on a channel.
pub(crate) const PROVIDE: &str = "busline.provide";
/// Stop serving a method on a channel.
pub(crate) const UNPROVIDE: &str = "busline.unprovide";
/// Describe a channel: owner, members, providers.
pub(crate) const DESCRIBE: &str = "busline.describe";

/// Longest channel name accepted.
pub const MAX_CHANNEL_NAME: usize = 256;

/// Arguments naming a channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChannelArgs {
    pub(crate) channel: String,
}

/// The answer to [`OPEN`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Opened {
    /// Whether the caller owns the channel (it opened it first).
    pub(crate) owner: bool,
}

/// Arguments naming one method of a channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MethodArgs {
    pub(crate) channel: String,
    pub(crate) method: String,
}

/// A channel as [`DESCRIBE`] reports it. Clients appear as the broker's
/// numbers for their connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel's name.
    pub name: String,
    /// Connection id of the owner.
    pub owner: u64,
    /// Connection ids of the members, oldest first.
    pub members: Vec<u64>,
    /// Each method served, with the connection ids of its providers.
    pub methods: Vec<(String, Vec<u64>)>,
}

/// Check a channel name: not empty, at most [`MAX_CHANNEL_NAME`] bytes, no
/// `/` (it separates channel from method in routed calls), and not in the
/// `busline.` namespace the broker keeps for itself.
pub fn check_channel_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_CHANNEL_NAME {
        "is longer than 256 bytes"
    } else if name.contains('/') {
        "contains '/', which separates a channel from a method"
    } else if name.starts_with("busline.") {
        "starts with \"busline.\", which is reserved for the broker"
    } else {
        return Ok(());
    };
    Err(Error::Protocol(format!("channel name {name:?} {problem}")))
}

/// The routed method name for `method` on `channel`.
pub(crate) fn routed(channel: &str, method: &str) -> String {
    format!("{channel}/{method}")
}

/// Split a routed method name into channel and method.
pub(crate) fn split_routed(name: &str) -> Option<(&str, &str)> {
    name.split_once('/')
        .filter(|(channel, method)| !channel.is_empty() && !method.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_checked_and_routed_names_split() {
        assert!(check_channel_name("math").is_ok());
        for bad in ["", "a/b", "busline.system", &"x".repeat(257)] {
            assert!(
                matches!(check_channel_name(bad), Err(Error::Protocol(_))),
                "{bad}"
            );
        }
        assert_eq!(
            split_routed(&routed("math", "add/x")),
            Some(("math", "add/x"))
        );
        assert_eq!(split_routed("nochannel"), None);
        assert_eq!(split_routed("/m"), None);
    }
}
