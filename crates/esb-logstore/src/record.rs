//! A stored log record, its binary encoding, tokens and hashes.

use crate::time::format_rfc3339;

/// One log entry as the store keeps it.
///
/// `_time` and `_stream` are held apart; `_stream_id` is derived from `_stream`. `fields`
/// holds every other non-empty field, `_msg` included, in ingestion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// `_time`, nanoseconds since the epoch.
    pub time: i64,
    /// Canonical `_stream`, e.g. `{app="api",host="a"}` (`{}` for none).
    pub stream: String,
    /// The other fields (name, value), `_msg` included.
    pub fields: Vec<(String, String)>,
}

impl StoredRecord {
    /// Value of a field, including the virtual `_time`, `_stream` and `_stream_id`; missing
    /// fields read as the empty string, as in VictoriaLogs.
    pub fn get(&self, name: &str) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match name {
            "_time" => Cow::Owned(format_rfc3339(self.time)),
            "_stream" => Cow::Borrowed(&self.stream),
            "_stream_id" => Cow::Owned(stream_id(&self.stream)),
            _ => self
                .fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Cow::Borrowed(v.as_str()))
                .unwrap_or(Cow::Borrowed("")),
        }
    }

    /// All fields as output rows see them: the stored ones plus `_time`, `_stream`,
    /// `_stream_id`.
    pub fn to_row(&self) -> Vec<(String, String)> {
        let mut row = Vec::with_capacity(self.fields.len() + 3);
        row.push(("_time".to_string(), format_rfc3339(self.time)));
        row.push(("_stream".to_string(), self.stream.clone()));
        row.push(("_stream_id".to_string(), stream_id(&self.stream)));
        row.extend(self.fields.iter().cloned());
        row
    }

    /// Appends the binary encoding (without the length prefix) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time.to_le_bytes());
        put_str(out, &self.stream);
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        for (k, v) in &self.fields {
            put_str(out, k);
            put_str(out, v);
        }
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(mut b: &[u8]) -> Option<Self> {
        let time = i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        let stream = get_str(&mut b)?;
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
        let mut fields = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let k = get_str(&mut b)?;
            let v = get_str(&mut b)?;
            fields.push((k, v));
        }
        Some(StoredRecord {
            time,
            stream,
            fields,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    let n = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
    String::from_utf8(take(b, n)?.to_vec()).ok()
}

/// Whether `c` belongs to a word: letters, digits and `_` (as LogsQL's word filter defines).
pub fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits a value into its words.
pub fn tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !is_token_char(c))
        .filter(|t| !t.is_empty())
}

/// FNV-1a, 64 bits: stable across builds, so it can live in index files.
pub fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A fast 64-bit hash of byte strings, eight bytes at a time; stable across builds, so it
/// can live in index files.
pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for p in parts {
        let mut chunks = p.chunks_exact(8);
        for c in &mut chunks {
            h = mix64(h ^ u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rem = chunks.remainder();
        let mut last = [0u8; 8];
        last[..rem.len()].copy_from_slice(rem);
        h = mix64(h ^ u64::from_le_bytes(last) ^ ((p.len() as u64) << 56));
    }
    h
}

/// Index key of a word of a field's value.
pub fn token_key(field: &str, token: &str) -> u64 {
    hash64(&[field.as_bytes(), token.as_bytes()])
}

/// Calls `f` with each word of `s` (the same words as [`tokens`], faster for ASCII).
pub fn for_each_token(s: &str, mut f: impl FnMut(&str)) {
    if !s.is_ascii() {
        tokens(s).for_each(f);
        return;
    }
    let b = s.as_bytes();
    let mut start = None;
    for (i, c) in b.iter().enumerate() {
        let word = c.is_ascii_alphanumeric() || *c == b'_';
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                f(&s[st..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        f(&s[st..]);
    }
}

/// Index key of a record's stream.
pub fn stream_key(stream: &str) -> u64 {
    fnv1a(0, &[b"\x00_stream", stream.as_bytes()])
}

/// `_stream_id` of a canonical stream: 48 hex digits (a zero tenant part, then a 128-bit
/// hash), shaped like VictoriaLogs' ids.
pub fn stream_id(stream: &str) -> String {
    let a = fnv1a(0x5151_5151, &[stream.as_bytes()]);
    let b = fnv1a(0x9e37_79b9_7f4a_7c15, &[stream.as_bytes()]);
    format!("0000000000000000{a:016x}{b:016x}")
}

/// Builds the canonical `_stream` value from (name, value) pairs: sorted by name, empty
/// values dropped, values quoted with JSON-style escapes.
pub fn canonical_stream(mut pairs: Vec<(String, String)>) -> String {
    pairs.retain(|(_, v)| !v.is_empty());
    pairs.sort();
    pairs.dedup_by(|a, b| a.0 == b.0);
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    s.push('}');
    s
}

/// Parses a canonical `_stream` back into (name, value) pairs.
pub fn parse_stream(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut rest = inner;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        rest = &rest[eq + 1..];
        if !rest.starts_with('"') {
            break;
        }
        // Find the closing quote, honouring escapes.
        let bytes = rest.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        let quoted = &rest[..(i + 1).min(rest.len())];
        let value: String = serde_json::from_str(quoted).unwrap_or_default();
        out.push((name, value));
        rest = &rest[(i + 1).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trip() {
        let r = StoredRecord {
            time: 42,
            stream: "{app=\"a\"}".into(),
            fields: vec![("_msg".into(), "hello".into()), ("k".into(), "v é".into())],
        };
        let mut b = Vec::new();
        r.encode(&mut b);
        assert_eq!(StoredRecord::decode(&b), Some(r));
        assert_eq!(StoredRecord::decode(&b[..5]), None);
    }

    #[test]
    fn streams() {
        let s = canonical_stream(vec![
            ("host".into(), "h\"1".into()),
            ("app".into(), "api".into()),
            ("empty".into(), String::new()),
        ]);
        assert_eq!(s, r#"{app="api",host="h\"1"}"#);
        assert_eq!(
            parse_stream(&s),
            vec![("app".into(), "api".into()), ("host".into(), "h\"1".into())]
        );
        assert_eq!(stream_id(&s).len(), 48);
        assert_eq!(canonical_stream(vec![]), "{}");
    }

    #[test]
    fn fast_words_match_words() {
        for s in [
            "GET /api/v1?x=1 took 5ms, trace_id=abc-123",
            "a",
            "",
            "--",
            "é-x_y",
            "x.y z",
        ] {
            let mut fast = Vec::new();
            for_each_token(s, |t| fast.push(t.to_string()));
            let slow: Vec<String> = tokens(s).map(str::to_string).collect();
            assert_eq!(fast, slow, "{s:?}");
        }
        assert_ne!(hash64(&[b"ab", b"c"]), hash64(&[b"a", b"bc"]));
        assert_ne!(token_key("f", "12345678"), token_key("f", "123456789"));
    }

    #[test]
    fn words() {
        let t: Vec<_> = tokens("GET /api/v1?x=1 took 5ms, trace_id=abc-123").collect();
        assert_eq!(
            t,
            ["GET", "api", "v1", "x", "1", "took", "5ms", "trace_id", "abc", "123"]
        );
    }
}
