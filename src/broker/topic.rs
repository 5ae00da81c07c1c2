//! Publication topics and the patterns subscriptions match them with.
//!
//! A topic is dot-separated tokens (`sensors.kitchen.temp`). A pattern is
//! the same, where `*` stands for exactly one token and a final `>` for one
//! or more (`sensors.*.temp`, `sensors.>`), as in NATS.

use busline_core::{Error, Result};

/// Longest topic or pattern accepted.
pub const MAX_TOPIC: usize = 256;

fn check(kind: &str, text: &str, wildcards: bool) -> Result<()> {
    let bad = |why: &str| Err(Error::Protocol(format!("{kind} {text:?} {why}")));
    if text.is_empty() || text.len() > MAX_TOPIC {
        return bad("must be 1 to 256 bytes");
    }
    // Checked on every publication: no allocation, and split by byte ('.'
    // is ASCII, so every token is whole UTF-8).
    let mut tokens = text.as_bytes().split(|&b| b == b'.').peekable();
    while let Some(token) = tokens.next() {
        match token {
            b"" => return bad("has an empty token"),
            b"*" | b">" if !wildcards => return bad("is a topic: no wildcards"),
            b">" if tokens.peek().is_some() => return bad("has '>' before its last token"),
            t if forbidden_in_token(t) => return bad("has whitespace, '#' or '/' in a token"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `token` has whitespace (any Unicode kind), '#' or '/'.
fn forbidden_in_token(token: &[u8]) -> bool {
    if token.is_ascii() {
        return token
            .iter()
            .any(|&b| b.is_ascii_whitespace() || b == b'#' || b == b'/');
    }
    String::from_utf8_lossy(token)
        .chars()
        .any(|c| c.is_whitespace() || c == '#' || c == '/')
}

/// Check a topic to publish on.
pub fn check_topic(topic: &str) -> Result<()> {
    check("topic", topic, false)
}

/// Check a subscription pattern.
pub fn check_pattern(pattern: &str) -> Result<()> {
    check("pattern", pattern, true)
}

/// Whether `topic` matches `pattern` (both already checked).
pub fn matches(pattern: &str, topic: &str) -> bool {
    // By byte: '.' is ASCII, and this runs for every publication and
    // subscription.
    let mut topic = topic.as_bytes().split(|&b| b == b'.');
    for want in pattern.as_bytes().split(|&b| b == b'.') {
        match (want, topic.next()) {
            (b">", Some(_)) => return true,
            (b"*", Some(_)) => {}
            (want, Some(got)) if want == got => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_documented() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.y.c", false),
            ("a.>", "a.x", true),
            ("a.>", "a.x.y", true),
            ("a.>", "a", false),
            ("*", "a", true),
            ("*", "a.b", false),
            (">", "a.b", true),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn bad_topics_and_patterns_are_refused() {
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a#b",
            "a/b",
            "a.b\u{a0}c",
            "é.\u{2003}",
            &"x".repeat(257),
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic("a.*").is_err());
        assert!(check_pattern("a.>.b").is_err());
        assert!(check_pattern("a.*.>").is_ok());
        assert!(check_topic("température.küche").is_ok());
        assert!(matches("température.*", "température.küche"));
        assert!(!matches("température.*", "temperature.küche"));
    }
}
