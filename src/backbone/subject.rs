//! The NATS subjects the backbone uses, all under `busline.v1.<namespace>`.
//!
//! A name that is not a plain NATS token (ASCII letters, digits, `_`, `-`)
//! travels as `~` and the hex of its UTF-8 bytes, so that every channel,
//! method, broker id and topic token is exactly one subject token, and
//! NATS wildcards match busline topics token for token.

use std::borrow::Cow;

use busline_core::{Error, Result};

/// The longest namespace accepted.
pub const MAX_NAMESPACE: usize = 64;

/// One name as one subject token.
pub(crate) fn token(name: &str) -> Cow<'_, str> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if plain {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("~{}", hex::encode(name)))
    }
}

/// The name a subject token stands for; `None` if it is not one
/// [`token`] makes.
pub(crate) fn name(token: &str) -> Option<Cow<'_, str>> {
    match token.strip_prefix('~') {
        Some(hex) => {
            let bytes = hex::decode(hex).ok()?;
            let name = String::from_utf8(bytes).ok()?;
            // Only the spelling `token` gives: one name, one subject.
            (!name.is_empty() && self::token(&name) == token).then_some(Cow::Owned(name))
        }
        None => (self::token(token) == token).then_some(Cow::Borrowed(token)),
    }
}

/// A topic (or pattern: `*` and `>` stay NATS's wildcards) as subject
/// tokens.
fn topic_tokens(topic: &str) -> String {
    topic
        .split('.')
        .map(|t| match t {
            "*" | ">" => Cow::Borrowed(t),
            t => token(t),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The subjects of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The subjects of `namespace` (1 to [`MAX_NAMESPACE`] ASCII letters,
    /// digits, `_` or `-`).
    pub(crate) fn new(namespace: &str) -> Result<Subjects> {
        if namespace.is_empty() || namespace.len() > MAX_NAMESPACE || token(namespace) != namespace
        {
            return Err(Error::Protocol(format!(
                "a backbone namespace has 1 to {MAX_NAMESPACE} ASCII letters, digits, '_' or \
                 '-'; got {:?}",
                namespace
                    .chars()
                    .take(MAX_NAMESPACE + 8)
                    .collect::<String>()
            )));
        }
        Ok(Subjects {
            prefix: format!("busline.v1.{namespace}"),
        })
    }

    /// Where each broker tells what it offers and wants.
    pub(crate) fn announce(&self) -> String {
        format!("{}.announce", self.prefix)
    }

    /// Where a broker that joins asks the others to announce at once.
    pub(crate) fn sync(&self) -> String {
        format!("{}.sync", self.prefix)
    }

    /// Calls of `method` on `channel` for broker `broker`.
    pub(crate) fn call(&self, broker: &str, channel: &str, method: &str) -> String {
        format!(
            "{}.call.{}.{}.{}",
            self.prefix,
            token(broker),
            token(channel),
            token(method)
        )
    }

    /// Every call for broker `broker`.
    pub(crate) fn calls_for(&self, broker: &str) -> String {
        format!("{}.call.{}.>", self.prefix, token(broker))
    }

    /// The channel and method of a call subject for `broker`.
    pub(crate) fn parse_call<'a>(
        &self,
        broker: &str,
        subject: &'a str,
    ) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".call.")?
            .strip_prefix(token(broker).as_ref())?
            .strip_prefix('.')?;
        let (channel, method) = rest.split_once('.')?;
        Some((name(channel)?, name(method)?))
    }

    /// Where the answers to broker `broker`'s call `id` come.
    pub(crate) fn reply(&self, broker: &str, id: u64) -> String {
        format!("{}.inbox.{}.{id}", self.prefix, token(broker))
    }

    /// Every answer to broker `broker`'s calls.
    pub(crate) fn replies_for(&self, broker: &str) -> String {
        format!("{}.inbox.{}.*", self.prefix, token(broker))
    }

    /// The id at the end of a reply or control subject.
    pub(crate) fn parse_id(subject: &str) -> Option<u64> {
        subject.rsplit('.').next()?.parse().ok()
    }

    /// Where the caller of call `id` served by broker `broker` keeps it
    /// alive, paces or cancels it.
    pub(crate) fn control(&self, broker: &str, id: u64) -> String {
        format!("{}.ctl.{}.{id}", self.prefix, token(broker))
    }

    /// Every call control for broker `broker`.
    pub(crate) fn controls_for(&self, broker: &str) -> String {
        format!("{}.ctl.{}.*", self.prefix, token(broker))
    }

    /// A publication on `topic` of `channel`.
    pub(crate) fn publication(&self, channel: &str, topic: &str) -> String {
        format!(
            "{}.pub.{}.{}",
            self.prefix,
            token(channel),
            topic_tokens(topic)
        )
    }

    /// Word of lost publications of `channel` (`~` alone is no name's
    /// token, so no topic's).
    pub(crate) fn lost(&self, channel: &str) -> String {
        format!("{}.pub.{}.~", self.prefix, token(channel))
    }

    /// Everything published on `channel`, and word of lost publications.
    pub(crate) fn channel(&self, channel: &str) -> String {
        format!("{}.pub.{}.>", self.prefix, token(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_stay_and_others_are_hex() {
        assert_eq!(token("math"), "math");
        assert_eq!(token("a-b_C9"), "a-b_C9");
        assert_eq!(token("a.b"), "~612e62");
        assert_eq!(token(""), "~");
        assert_eq!(token("~"), "~7e");
        assert_eq!(name("~612e62").as_deref(), Some("a.b"));
        for bad in ["~", "~zz", "~6d617468", "a.b", "~ff", ""] {
            assert_eq!(name(bad), None, "{bad}");
        }
    }

    #[test]
    fn subjects_round_trip_and_topics_keep_their_wildcards() {
        let s = Subjects::new("prod").unwrap();
        let call = s.call("b.1", "math ops", "add");
        assert_eq!(call, "busline.v1.prod.call.~622e31.~6d617468206f7073.add");
        let (channel, method) = s.parse_call("b.1", &call).unwrap();
        assert_eq!((channel.as_ref(), method.as_ref()), ("math ops", "add"));
        assert_eq!(s.parse_call("b-2", &call), None);
        assert_eq!(s.parse_call("b.1", "busline.v1.prod.call.~622e31.x"), None);
        assert_eq!(
            s.publication("news", "sport.ski jumps"),
            "busline.v1.prod.pub.news.sport.~736b69206a756d7073"
        );
        assert_eq!(s.channel("news"), "busline.v1.prod.pub.news.>");
        assert_eq!(topic_tokens("a.*.>"), "a.*.>");
        assert_eq!(Subjects::parse_id(&s.reply("x", 42)), Some(42));
        for bad in ["", "a.b", "a b", "*", &"n".repeat(MAX_NAMESPACE + 1)] {
            assert!(Subjects::new(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_name_is_one_token_and_comes_back(n in "\\PC{0,40}") {
            let t = token(&n);
            prop_assert!(!t.is_empty());
            prop_assert!(!t.contains(['.', '*', '>', ' ', '\t', '\r', '\n']));
            if !n.is_empty() {
                let back = name(&t).map(|b| b.into_owned());
                prop_assert_eq!(back.as_deref(), Some(n.as_str()));
            }
        }
    }
}
