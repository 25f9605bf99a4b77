//! How the CLI prints things: messages as JSON lines, bytes as text or base64, and tables.
//!
//! JSON encoding of bytes (keys, values, header values): a JSON string when the bytes are
//! valid UTF-8, otherwise an object `{"base64": "..."}` (standard alphabet, padded). A reader
//! can tell the two apart by type, and no byte is lost.

use base64::Engine as _;
use drawbridge_client::Message;
use serde_json::{json, Map, Value};

/// Bytes as JSON (module docs).
pub fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

/// A timestamp in nanoseconds as RFC 3339 (UTC, nanosecond precision); `null` for 0.
fn time_json(ns: i64) -> Value {
    if ns <= 0 {
        return Value::Null;
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.unsigned_abs());
    Value::String(humantime::format_rfc3339_nanos(t).to_string())
}

/// One message as a JSON object: offset, partition, timestamp (RFC 3339) and timestamp_ns,
/// subject, key (`null` when empty), headers, value.
pub fn message_json(m: &Message) -> Value {
    let headers: Map<String, Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), bytes_json(v)))
        .collect();
    json!({
        "offset": m.offset,
        "partition": m.partition,
        "timestamp": time_json(m.timestamp_ns),
        "timestamp_ns": m.timestamp_ns,
        "subject": m.subject,
        "key": if m.key.is_empty() { Value::Null } else { bytes_json(&m.key) },
        "headers": headers,
        "value": bytes_json(&m.value),
    })
}

/// A markdown table with a header row; cells are printed as given.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!(
        "|{}\n",
        header.iter().map(|_| "---|").collect::<String>()
    ));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::HashMap;

    fn msg(value: &'static [u8], key: &'static [u8]) -> Message {
        let mut headers = HashMap::new();
        headers.insert("subject".to_string(), Bytes::from_static(b"orders"));
        headers.insert("bin".to_string(), Bytes::from_static(&[0xff, 0x00]));
        Message {
            offset: 42,
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
            timestamp_ns: 1_767_225_600_000_000_001,
            stream: "orders".into(),
            partition: 1,
            subject: "orders".into(),
            reply_subject: String::new(),
            headers,
        }
    }

    #[test]
    fn json_lines_text_and_binary() {
        let v = message_json(&msg(b"hello", b"k1"));
        assert_eq!(
            v.to_string(),
            concat!(
                r#"{"headers":{"bin":{"base64":"/wA="},"subject":"orders"},"key":"k1","offset":42,"#,
                r#""partition":1,"subject":"orders","timestamp":"2026-01-01T00:00:00.000000001Z","#,
                r#""timestamp_ns":1767225600000000001,"value":"hello"}"#
            )
        );
        let v = message_json(&msg(&[0xc3, 0x28], b""));
        assert_eq!(v["value"], json!({"base64": "wyg="}));
        assert_eq!(v["key"], Value::Null);
        assert_eq!(bytes_json("héllo".as_bytes()), json!("héllo"));
        assert_eq!(time_json(0), Value::Null);
    }

    #[test]
    fn tables() {
        let t = markdown_table(
            &["a", "b"],
            &[vec!["1".into(), "2".into()], vec!["x".into(), "y".into()]],
        );
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n| x | y |\n");
    }
}
