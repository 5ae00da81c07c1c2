//! comm-ipc's end-to-end signatures on a protected channel.
//!
//! The key is PBKDF2-HMAC-SHA256 of the channel password, salted with the
//! channel name (100,000 rounds, 32 bytes). The signed text joins, in key
//! order, `key:value` for the fields of a message that no hop may change,
//! each value as Python's `json.dumps(v, sort_keys=True,
//! separators=(",", ":"))` writes it; the signature is its hex
//! HMAC-SHA256, in the message's `signature`.

use std::fmt::Write;

use hmac::{Hmac, Mac};
use rmpv::Value;
use sha2::Sha256;

use super::{frame::Msg, now};

/// The fields signed, in the order they are joined.
const SIGNED: [&str; 12] = [
    "challenge",
    "channel",
    "data",
    "event",
    "is_final",
    "is_stream",
    "origin_server_id",
    "request_id",
    "sender_id",
    "sub_name",
    "target_id",
    "timestamp",
];

/// A channel's message key.
pub(super) type Key = [u8; 32];

/// Derive the message key of `password` on `channel` (CPU-heavy on
/// purpose: run it off the async threads).
pub(super) fn derive(channel: &str, password: &str) -> Key {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), channel.as_bytes(), 100_000, &mut key);
    key
}

/// The signed text of the fields `msg` has.
fn text(msg: &Msg) -> String {
    let mut text = String::new();
    for field in SIGNED {
        if let Some(value) = msg.get(field) {
            if !text.is_empty() {
                text.push('|');
            }
            text.push_str(field);
            text.push(':');
            py_json(value, &mut text);
        }
    }
    text
}

fn mac(key: &Key, msg: &Msg) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(text(msg).as_bytes());
    mac
}

/// Sign a message going to a comm-ipc client. Its receiver rebuilds the
/// message with comm-ipc's defaults for missing fields and checks every
/// one, so they are all written out first.
pub(super) fn sign(key: &Key, msg: &mut Msg) {
    let defaults = [
        ("sender_id", Value::from("")),
        ("channel", Value::from("")),
        ("event", Value::from("")),
        ("data", Value::Nil),
        ("timestamp", Value::from(now())),
        ("request_id", Value::Nil),
        ("target_id", Value::Nil),
        ("is_stream", Value::from(false)),
        ("is_final", Value::from(true)),
        ("origin_server_id", Value::Nil),
        ("sub_name", Value::Nil),
    ];
    for (field, default) in defaults {
        if msg.get(field).is_none() {
            msg.set(field, default);
        }
    }
    let signature = hex::encode(mac(key, msg).finalize().into_bytes());
    msg.set("signature", Value::from(signature));
}

/// Whether a comm-ipc client signed `msg` with `key` (compared in
/// constant time).
pub(super) fn verify(key: &Key, msg: &Msg) -> bool {
    let Some(signature) = msg.str("signature").and_then(|s| hex::decode(s).ok()) else {
        return false;
    };
    mac(key, msg).verify_slice(&signature).is_ok()
}

/// `value` as Python's `json.dumps(value, sort_keys=True,
/// separators=(",", ":"))` writes it: ASCII only, `\uXXXX` escapes, floats
/// as `repr`.
fn py_json(value: &Value, out: &mut String) {
    match value {
        Value::Nil => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F32(x) => py_float(f64::from(*x), out),
        Value::F64(x) => py_float(*x, out),
        Value::String(s) => py_string(&String::from_utf8_lossy(s.as_bytes()), out),
        // Python cannot sign bytes (json.dumps refuses them); written as
        // text they at least sign as something.
        Value::Binary(b) => py_string(&String::from_utf8_lossy(b), out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                py_json(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            let mut keyed: Vec<(String, &Value)> = entries
                .iter()
                .map(|(k, v)| {
                    let key = match k.as_str() {
                        Some(s) => s.to_owned(),
                        None => {
                            let mut s = String::new();
                            py_json(k, &mut s);
                            s.trim_matches('"').to_owned()
                        }
                    };
                    (key, v)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (key, value)) in keyed.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                py_string(&key, out);
                out.push(':');
                py_json(value, out);
            }
            out.push('}');
        }
        Value::Ext(_, bytes) => py_string(&hex::encode(bytes), out),
    }
}

fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A float as Python's `repr`: the shortest digits that read back the
/// same, fixed-point for exponents from -4 to 15 (always with a decimal
/// point), else `d.ddde+XX`.
fn py_float(x: f64, out: &mut String) {
    if x.is_nan() {
        return out.push_str("NaN");
    }
    if x.is_infinite() {
        return out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
    }
    // Rust's `{:e}` gives the same shortest digits: "-1.5e16", "1e-5".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} has a numeric exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat((-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.push_str(&"0".repeat(point as usize - digits.len()));
            out.push_str(".0");
        } else {
            let (int, frac) = digits.split_at(point as usize);
            let _ = write!(out, "{int}.{frac}");
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn floats_read_as_pythons_repr() {
        // What Python 3.11 printed for repr() of each.
        let cases = [
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (1e22, "1e+22"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (x, want) in cases {
            let mut got = String::new();
            py_float(x, &mut got);
            assert_eq!(got, want, "{x:?}");
        }
    }

    /// The text, key and signature Python's comm_ipc.security gave for
    /// this message (run against comm-ipc 0.1.16).
    #[test]
    fn signatures_are_the_ones_comm_ipc_computes() {
        let key = derive("vault", "s3cret");
        assert_eq!(
            hex::encode(key),
            "eb868aacf8fdf04d8e600c487799fc7c492ded3591defdb212778ad6e42c8522"
        );
        let data = map(&[
            (
                "b",
                Value::Array(vec![
                    Value::from(1),
                    Value::F64(2.5),
                    Value::Nil,
                    Value::from(true),
                ]),
            ),
            ("a", Value::from("grüße ✓ 😀\n\"x\"")),
            ("f", Value::F64(1e16)),
            ("g", Value::F64(1.0)),
            ("h", Value::F64(1e-5)),
            ("i", Value::F64(-0.0)),
            ("j", Value::from(123456789012u64)),
            ("k", Value::F64(0.1)),
        ]);
        let Value::Map(entries) = map(&[
            ("type", Value::from("call")),
            ("channel", Value::from("vault")),
            ("event", Value::from("get")),
            ("data", data),
            ("sender_id", Value::from("py")),
            ("origin_server_id", Value::from("srv")),
            ("timestamp", Value::from(1_700_000_000)),
            ("request_id", Value::from("r1")),
            ("target_id", Value::Nil),
            ("is_stream", Value::from(false)),
            ("is_final", Value::from(true)),
            ("sub_name", Value::Nil),
        ]) else {
            unreachable!()
        };
        let mut msg = Msg(entries);
        assert_eq!(
            text(&msg),
            r#"channel:"vault"|data:{"a":"gr\u00fc\u00dfe \u2713 \ud83d\ude00\n\"x\"","b":[1,2.5,null,true],"f":1e+16,"g":1.0,"h":1e-05,"i":-0.0,"j":123456789012,"k":0.1}|event:"get"|is_final:true|is_stream:false|origin_server_id:"srv"|request_id:"r1"|sender_id:"py"|sub_name:null|target_id:null|timestamp:1700000000"#
        );
        let signature = "3e8794f0daf7e19e3a87520abb720e03c8c415ce9f17e9e1ca9af7d18b3e69cc";
        msg.set("signature", Value::from(signature));
        assert!(verify(&key, &msg));
        msg.set("data", Value::from("altered"));
        assert!(!verify(&key, &msg));
        let mut resigned = msg.clone();
        sign(&key, &mut resigned);
        assert!(verify(&key, &resigned));
        assert!(!verify(&derive("vault", "other"), &resigned));
    }

    #[test]
    fn signing_writes_out_every_field_the_receiver_checks() {
        let key = derive("c", "pw");
        let mut msg = Msg::new([("type", Value::from("receive"))]);
        sign(&key, &mut msg);
        for field in SIGNED.iter().filter(|f| **f != "challenge") {
            assert!(msg.get(field).is_some(), "{field} missing");
        }
        assert!(verify(&key, &msg));
    }
}
