//! How `sluice consume` prints a record: a `--format` template with `{key} {value} {offset}
//! {partition} {timestamp} {headers} {topic}` (and `\t`, `\n` escapes), or one JSON object
//! per line. Bytes that are not UTF-8 are shown lossily; a null key or value prints `null`.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sluice_client::ConsumerRecord;

/// A parsed `--format` template.
pub(crate) struct Template {
    parts: Vec<Part>,
}

enum Part {
    Text(String),
    Key,
    Value,
    Offset,
    Partition,
    Timestamp,
    Headers,
    Topic,
}

impl Template {
    /// Parses a template; an unknown `{name}` is an error naming it.
    pub(crate) fn parse(template: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("\\t") {
                text.push('\t');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("\\n") {
                text.push('\n');
                rest = after;
            } else if rest.starts_with('{') {
                let Some(end) = rest.find('}') else {
                    return Err(format!("unclosed '{{' in format '{template}'"));
                };
                let field = match &rest[1..end] {
                    "key" => Part::Key,
                    "value" => Part::Value,
                    "offset" => Part::Offset,
                    "partition" => Part::Partition,
                    "timestamp" => Part::Timestamp,
                    "headers" => Part::Headers,
                    "topic" => Part::Topic,
                    other => {
                        return Err(format!(
                            "unknown field '{{{other}}}' in format (known: {{key}} {{value}} \
                             {{offset}} {{partition}} {{timestamp}} {{headers}} {{topic}})"
                        ));
                    }
                };
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(field);
                rest = &rest[end + 1..];
            } else {
                let c = rest.chars().next().expect("rest is not empty");
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The record rendered (no trailing newline).
    pub(crate) fn render(&self, r: &ConsumerRecord) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Key => out.push_str(&text(&r.key)),
                Part::Value => out.push_str(&text(&r.value)),
                Part::Offset => out.push_str(&r.offset.to_string()),
                Part::Partition => out.push_str(&r.partition.to_string()),
                Part::Timestamp => out.push_str(&r.timestamp.to_string()),
                Part::Topic => out.push_str(&r.topic),
                Part::Headers => {
                    let headers: Vec<String> = r
                        .headers
                        .iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect();
                    out.push_str(&headers.join(","));
                }
            }
        }
        out
    }
}

fn text(bytes: &Option<Bytes>) -> String {
    match bytes {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "null".to_owned(),
    }
}

fn json_text(bytes: &Option<Bytes>) -> Value {
    match bytes {
        Some(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        None => Value::Null,
    }
}

/// `{"topic","partition","offset","timestamp","key","value","headers":{k:v}}`.
pub(crate) fn record_json(r: &ConsumerRecord) -> Value {
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json_text(v)))
        .collect();
    json!({
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": json_text(&r.key),
        "value": json_text(&r.value),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 3,
            offset: 42,
            timestamp: 1000,
            key: Some(Bytes::from("k1")),
            value: Some(Bytes::from("hello")),
            headers: vec![("a".into(), Some(Bytes::from("1"))), ("b".into(), None)],
        }
    }

    #[test]
    fn template_fields_and_escapes() {
        let t = Template::parse("{partition}:{offset}\\t{key}={value} [{headers}] @{timestamp}")
            .expect("parse");
        assert_eq!(t.render(&record()), "3:42\tk1=hello [a=1,b=null] @1000");
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("{value").is_err());
    }

    #[test]
    fn json_shape() {
        let v = record_json(&record());
        assert_eq!(v["key"], "k1");
        assert_eq!(v["value"], "hello");
        assert_eq!(v["offset"], 42);
        assert_eq!(v["headers"]["a"], "1");
        assert!(v["headers"]["b"].is_null());
    }
}
