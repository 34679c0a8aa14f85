//! Ingestion formats: JSON lines (`/insert/jsonline`) and the Elasticsearch bulk API.

use std::io::{self, BufRead};

use serde_json::Value;

use crate::record::{canonical_stream, StoredRecord};
use crate::time::{now_nanos, parse_timestamp};

/// Per-request ingestion settings (`_msg_field`, `_time_field`, `_stream_fields`,
/// `ignore_fields`, `extra_fields`, as query args or `VL-*` headers).
#[derive(Debug, Clone, Default)]
pub struct IngestParams {
    /// Fields holding the message, first non-empty wins (default `_msg`, then `message`).
    pub msg_fields: Vec<String>,
    /// Field holding the timestamp (default `_time`, then `@timestamp`).
    pub time_field: Option<String>,
    /// Fields forming the stream.
    pub stream_fields: Vec<String>,
    /// Fields to drop (a trailing `*` matches a prefix).
    pub ignore_fields: Vec<String>,
    /// Fields to add to every record.
    pub extra_fields: Vec<(String, String)>,
}

/// A line that was not ingested, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    /// 1-based line number in the (decompressed) body.
    pub line: usize,
    /// The reason.
    pub error: String,
}

/// The outcome of one ingestion request.
#[derive(Debug, Default, serde::Serialize)]
pub struct IngestReport {
    /// Records stored.
    pub ingested: usize,
    /// Lines rejected (the first 100 are listed).
    pub rejected: usize,
    /// Details of the first rejected lines.
    pub errors: Vec<Rejected>,
    /// Elasticsearch bulk: per-document outcome (status code, error), in order.
    #[serde(skip)]
    pub bulk_items: Vec<(u16, Option<String>)>,
}

impl IngestReport {
    fn reject(&mut self, line: usize, error: String) {
        self.rejected += 1;
        if self.errors.len() < 100 {
            self.errors.push(Rejected { line, error });
        }
    }
}

/// Body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    JsonLine,
    /// Elasticsearch `_bulk`: action line, then document line.
    EsBulk,
}

/// Reads one line into `buf` (without the newline), keeping at most `max` bytes. Returns
/// `None` at the end, or `Some(too_long)`.
fn read_line_capped<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(if any { Some(too_long) } else { None });
        }
        any = true;
        let (part, done) = match memchr(b'\n', chunk) {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(too_long));
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

/// Parses a body, handing records to `sink` in chunks (so memory stays bounded and each
/// chunk is durable before the next is read). `max_line` caps a line's length.
pub fn ingest<R: BufRead>(
    mut reader: R,
    format: Format,
    params: &IngestParams,
    max_line: usize,
    sink: &mut dyn FnMut(Vec<StoredRecord>) -> io::Result<()>,
) -> io::Result<IngestReport> {
    let mut report = IngestReport::default();
    let mut buf = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0usize;
    let mut line_no = 0usize;
    // Elasticsearch bulk: whether the next line is a document (after create/index).
    let mut expect_doc = false;
    let now = now_nanos();
    while let Some(too_long) = read_line_capped(&mut reader, &mut buf, max_line)? {
        line_no += 1;
        if too_long {
            report.reject(
                line_no,
                format!("line longer than the {max_line}-byte limit; skipped"),
            );
            if format == Format::EsBulk {
                if expect_doc {
                    report
                        .bulk_items
                        .push((400, Some("document too large".into())));
                }
                expect_doc = !expect_doc;
            }
            continue;
        }
        let line = trim_ascii(&buf);
        if line.is_empty() {
            continue;
        }
        if format == Format::EsBulk && !expect_doc {
            match serde_json::from_slice::<Value>(line) {
                Ok(Value::Object(m)) if m.contains_key("create") || m.contains_key("index") => {
                    expect_doc = true;
                }
                Ok(Value::Object(m)) if m.contains_key("delete") => {
                    report
                        .bulk_items
                        .push((400, Some("delete is not supported by a log store".into())));
                }
                Ok(_) => {
                    report.reject(
                        line_no,
                        "expected a bulk action line such as {\"create\":{}}".into(),
                    );
                    report
                        .bulk_items
                        .push((400, Some("unsupported bulk action".into())));
                    // Assume a document follows, as a shipper would have sent one.
                    expect_doc = true;
                    continue;
                }
                Err(e) => {
                    report.reject(line_no, format!("cannot parse bulk action line: {e}"));
                    expect_doc = true;
                }
            }
            continue;
        }
        let was_doc = expect_doc;
        expect_doc = false;
        match parse_line(line, params, now, format) {
            Ok(rec) => {
                batch_bytes += line.len();
                batch.push(rec);
                report.ingested += 1;
                if was_doc {
                    report.bulk_items.push((201, None));
                }
                if batch_bytes >= 1 << 20 {
                    sink(std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                }
            }
            Err(e) => {
                if was_doc {
                    report.bulk_items.push((400, Some(e.clone())));
                }
                report.reject(line_no, e);
            }
        }
    }
    if !batch.is_empty() {
        sink(batch)?;
    }
    Ok(report)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Deserialises a JSON value straight into flattened (name, value) pairs: nested objects
/// join names with `.`, arrays stay JSON text, numbers and booleans become strings, nulls
/// are dropped. No intermediate `serde_json::Value` tree.
struct Flat<'a> {
    prefix: &'a str,
    out: &'a mut Vec<(String, String)>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Flat<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Flat<'_> {
    fn push(self, v: String) {
        self.out.push((self.prefix.to_string(), v));
    }
}

/// A map key, borrowed from the input when it holds no escapes.
struct Key;

impl<'de> serde::de::DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

impl<'de> serde::de::Visitor<'de> for Flat<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.push(v.to_string());
        Ok(())
    }
    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.push(v);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.push(v.to_string());
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.push(v.to_string());
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.push(v.to_string());
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.push(
            serde_json::Number::from_f64(v)
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        self.push(Value::Array(items).to_string());
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key_seed(Key)? {
            let name = if self.prefix.is_empty() {
                k.into_owned()
            } else {
                format!("{}.{k}", self.prefix)
            };
            map.next_value_seed(Flat {
                prefix: &name,
                out: self.out,
            })?;
        }
        Ok(())
    }
}

/// Parses one JSON object into flattened fields.
fn parse_object(line: &[u8]) -> Result<Vec<(String, String)>, String> {
    use serde::de::Deserializer as _;
    if line.first() != Some(&b'{') {
        return Err("expected a JSON object".into());
    }
    let mut fields = Vec::with_capacity(16);
    let mut de = serde_json::Deserializer::from_slice(line);
    (&mut de)
        .deserialize_map(Flat {
            prefix: "",
            out: &mut fields,
        })
        .and_then(|_| de.end())
        .map_err(|e| format!("cannot parse JSON: {e}"))?;
    Ok(fields)
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(p) => name.starts_with(p),
        None => pattern == name,
    }
}

/// Turns one JSON document into a record.
pub fn parse_line(
    line: &[u8],
    params: &IngestParams,
    now: i64,
    format: Format,
) -> Result<StoredRecord, String> {
    let mut fields = parse_object(line)?;
    fields.retain(|(k, v)| !v.is_empty() && !k.is_empty());
    if !params.ignore_fields.is_empty() {
        fields.retain(|(k, _)| !params.ignore_fields.iter().any(|p| name_matches(p, k)));
    }
    for (k, v) in &params.extra_fields {
        fields.retain(|(f, _)| f != k);
        fields.push((k.clone(), v.clone()));
    }
    // Time.
    let default_time_fields = ["_time", "@timestamp"];
    let time_candidates: Vec<&str> = match &params.time_field {
        Some(f) => vec![f.as_str()],
        None if format == Format::EsBulk => default_time_fields.to_vec(),
        None => vec!["_time"],
    };
    let mut time = now;
    if let Some(pos) = fields
        .iter()
        .position(|(k, _)| time_candidates.contains(&k.as_str()))
    {
        let (k, raw) = fields.remove(pos);
        if raw != "0" {
            time = parse_timestamp(&raw)
                .ok_or_else(|| format!("cannot parse {k:?} value {raw:?} as a timestamp"))?;
        }
    }
    // Message.
    let default_msg = ["_msg".to_string(), "message".to_string()];
    let msg_fields: &[String] = if params.msg_fields.is_empty() {
        &default_msg
    } else {
        &params.msg_fields
    };
    let msg_pos = msg_fields
        .iter()
        .find_map(|m| fields.iter().position(|(k, _)| k == m));
    let msg = match msg_pos {
        Some(p) => fields.remove(p).1,
        None => "missing _msg field; see https://docs.victoriametrics.com/victorialogs/keyconcepts/#message-field"
            .to_string(),
    };
    fields.retain(|(k, _)| k != "_msg" && k != "_stream" && k != "_stream_id" && k != "_time");
    let stream_pairs: Vec<(String, String)> = params
        .stream_fields
        .iter()
        .filter_map(|s| fields.iter().find(|(k, _)| k == s).cloned())
        .collect();
    let stream = canonical_stream(stream_pairs);
    let mut all = Vec::with_capacity(fields.len() + 1);
    all.push(("_msg".to_string(), msg));
    all.extend(fields);
    Ok(StoredRecord {
        time,
        stream,
        fields: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        body: &str,
        format: Format,
        params: &IngestParams,
        max: usize,
    ) -> (Vec<StoredRecord>, IngestReport) {
        let mut out = Vec::new();
        let rep = ingest(body.as_bytes(), format, params, max, &mut |b| {
            out.extend(b);
            Ok(())
        })
        .unwrap();
        (out, rep)
    }

    #[test]
    fn jsonline_with_bad_and_huge_lines() {
        let params = IngestParams {
            stream_fields: vec!["app".into()],
            ..Default::default()
        };
        let long = format!("{{\"_msg\":\"{}\"}}", "x".repeat(500));
        let body = format!(
            "{{\"_msg\":\"a\",\"_time\":\"2024-01-01T00:00:00Z\",\"app\":\"x\",\"n\":{{\"k\":1,\"e\":\"\"}}}}\nnot json\n\n{long}\n{{\"message\":\"b\",\"arr\":[1,2]}}"
        );
        let (recs, rep) = run(&body, Format::JsonLine, &params, 200);
        assert_eq!(rep.ingested, 2);
        assert_eq!(rep.rejected, 2);
        assert_eq!(rep.errors[0].line, 2);
        assert_eq!(rep.errors[1].line, 4);
        assert_eq!(recs[0].stream, "{app=\"x\"}");
        assert_eq!(recs[0].get("n.k"), "1");
        assert_eq!(recs[0].get("n.e"), "");
        assert_eq!(recs[0].get("_time"), "2024-01-01T00:00:00.000000000Z");
        assert_eq!(recs[1].get("_msg"), "b");
        assert_eq!(recs[1].get("arr"), "[1,2]");
        let f =
            parse_object(br#"{"a":{"b":{"c":"x\"y"},"n":null,"f":1.5,"t":true},"e\u0041":"z"}"#)
                .unwrap();
        assert_eq!(
            f,
            [
                ("a.b.c".to_string(), "x\"y".to_string()),
                ("a.f".into(), "1.5".into()),
                ("a.t".into(), "true".into()),
                ("eA".into(), "z".into())
            ]
        );
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{\"a\":1} x").is_err());
    }

    #[test]
    fn es_bulk() {
        let body = "{\"create\":{}}\n{\"message\":\"m1\",\"@timestamp\":\"2024-01-01T00:00:01Z\"}\n{\"index\":{\"_index\":\"x\"}}\n{bad\n{\"create\":{}}\n{\"_msg\":\"m3\"}\n";
        let (recs, rep) = run(body, Format::EsBulk, &IngestParams::default(), 1000);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].get("_msg"), "m1");
        assert_eq!(recs[0].time, 1_704_067_201_000_000_000);
        assert_eq!(rep.bulk_items.len(), 3);
        assert_eq!(rep.bulk_items[1].0, 400);
    }
}
