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
    // Checked on every publication: no allocation.
    let mut tokens = text.split('.').peekable();
    while let Some(token) = tokens.next() {
        match token {
            "" => return bad("has an empty token"),
            "*" | ">" if !wildcards => return bad("is a topic: no wildcards"),
            ">" if tokens.peek().is_some() => return bad("has '>' before its last token"),
            t if t.chars().any(|c| c.is_whitespace() || c == '#' || c == '/') => {
                return bad("has whitespace, '#' or '/' in a token")
            }
            _ => {}
        }
    }
    Ok(())
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
    let mut topic = topic.split('.');
    for want in pattern.split('.') {
        match (want, topic.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
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
            &"x".repeat(257),
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic("a.*").is_err());
        assert!(check_pattern("a.>.b").is_err());
        assert!(check_pattern("a.*.>").is_ok());
    }
}
