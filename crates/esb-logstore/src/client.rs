//! A small client of the query API (this store or a real VictoriaLogs), and the one-line
//! formatter `esb logs` prints with.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::time::{format_short, parse_timestamp};

/// A log record as returned by `/select/logsql/query` or `/tail`: field name to value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// All fields (`_time`, `_msg`, `_stream`, ...).
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// A field's value, or "" when missing.
    pub fn get(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }

    /// The first non-empty of several fields.
    pub fn first_of(&self, names: &[&str]) -> &str {
        names
            .iter()
            .map(|n| self.get(n))
            .find(|v| !v.is_empty())
            .unwrap_or("")
    }

    /// Parses one JSON line of the query API.
    pub fn from_json_line(line: &str) -> anyhow::Result<Record> {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .with_context(|| format!("bad JSON line from the log store: {line:?}"))?;
        Ok(Record {
            fields: v
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect(),
        })
    }
}

/// Field names read as the function name, in order of preference.
pub const FUNCTION_FIELDS: &[&str] = &["function_name", "function", "faas.name", "lambda_function"];
/// Field names read as the request id.
pub const REQUEST_ID_FIELDS: &[&str] = &["request_id", "aws_request_id", "requestId", "req_id"];
/// Field names read as the level.
pub const LEVEL_FIELDS: &[&str] = &["level", "log_level", "levelname", "severity"];

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Builds the LogsQL for `esb logs [--function NAME] [--trace ID] [--since 10m] [QUERY]`.
pub fn build_query(
    function: Option<&str>,
    trace: Option<&str>,
    since: Option<&str>,
    query: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    if let Some(s) = since.filter(|s| !s.is_empty()) {
        parts.push(format!("_time:{s}"));
    }
    if let Some(f) = function.filter(|s| !s.is_empty()) {
        let alts: Vec<String> = FUNCTION_FIELDS
            .iter()
            .map(|k| format!("{}:={}", quote_field(k), quote(f)))
            .collect();
        parts.push(format!("({})", alts.join(" OR ")));
    }
    if let Some(t) = trace.filter(|s| !s.is_empty()) {
        parts.push(format!("trace_id:{}", quote(t)));
    }
    if let Some(q) = query.map(str::trim).filter(|s| !s.is_empty()) {
        parts.push(format!("({q})"));
    }
    if parts.is_empty() {
        "*".to_string()
    } else {
        parts.join(" ")
    }
}

fn quote_field(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

/// One pretty line: time, function, level, request id, message (ANSI colours if `color`).
pub fn format_record(r: &Record, color: bool) -> String {
    let time = parse_timestamp(r.get("_time"))
        .map(format_short)
        .unwrap_or_else(|| r.get("_time").to_string());
    let function = r.first_of(FUNCTION_FIELDS);
    let level = r.first_of(LEVEL_FIELDS).to_ascii_uppercase();
    let request = r.first_of(REQUEST_ID_FIELDS);
    let msg = r.get("_msg").trim_end().replace('\n', "\\n");
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let level_txt = format!("{:<5}", or_dash(&level));
    if !color {
        return format!(
            "{time} {} {level_txt} {} {msg}",
            or_dash(function),
            or_dash(request)
        );
    }
    let level_color = match level.as_str() {
        "ERROR" | "FATAL" | "CRITICAL" | "PANIC" => "31",
        "WARN" | "WARNING" => "33",
        "INFO" => "32",
        "DEBUG" | "TRACE" => "34",
        _ => "37",
    };
    format!(
        "\x1b[2m{time}\x1b[0m \x1b[36m{}\x1b[0m \x1b[{level_color}m{level_txt}\x1b[0m \x1b[35m{}\x1b[0m {msg}",
        or_dash(function),
        or_dash(request)
    )
}

fn form(pairs: &[(&str, Option<&str>)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

async fn post(url: &str, body: String) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(url)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("bad log store URL {url:?}"))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the log store at {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "log store answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(resp)
}

/// Runs a LogsQL query (`/select/logsql/query`); with `limit`, the newest records first.
/// `start`/`end` take any form the server accepts (RFC 3339, Unix time, `5m`, `now`).
pub async fn query(
    base_url: &str,
    logsql: &str,
    limit: Option<usize>,
    start: Option<&str>,
    end: Option<&str>,
) -> anyhow::Result<Vec<Record>> {
    let limit_s = limit.map(|l| l.to_string());
    let url = format!("{}/select/logsql/query", base_url.trim_end_matches('/'));
    let body = form(&[
        ("query", Some(logsql)),
        ("limit", limit_s.as_deref()),
        ("start", start),
        ("end", end),
    ]);
    let resp = post(&url, body).await?;
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("reading the query response")?
        .to_bytes();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(Record::from_json_line)
        .collect()
}

/// Follows a LogsQL query live (`/select/logsql/tail`), calling `on_record` for each new
/// record until the server ends the stream or `on_record` returns false. `start_offset`
/// (e.g. `10m`) also returns that much history first.
pub async fn tail(
    base_url: &str,
    logsql: &str,
    start_offset: Option<&str>,
    mut on_record: impl FnMut(Record) -> bool + Send,
) -> anyhow::Result<()> {
    let url = format!("{}/select/logsql/tail", base_url.trim_end_matches('/'));
    let body = form(&[("query", Some(logsql)), ("start_offset", start_offset)]);
    let resp = post(&url, body).await?;
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the live tail")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            if line.trim().is_empty() {
                continue;
            }
            if !on_record(Record::from_json_line(line.trim())?) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_one_line() {
        let r = Record::from_json_line(
            r#"{"_time":"2024-01-02T03:04:05.678901234Z","_msg":"hello\nworld","function_name":"api","level":"error","request_id":"r-1"}"#,
        )
        .unwrap();
        assert_eq!(
            format_record(&r, false),
            "2024-01-02T03:04:05.678Z api ERROR r-1 hello\\nworld"
        );
        let c = format_record(&r, true);
        assert!(c.contains("\x1b[31mERROR"), "{c:?}");
        let bare = Record::from_json_line(r#"{"_time":"x","_msg":"m"}"#).unwrap();
        assert_eq!(format_record(&bare, false), "x - -     - m");
    }

    #[test]
    fn builds_queries() {
        assert_eq!(build_query(None, None, None, None), "*");
        assert_eq!(
            build_query(Some("api"), Some("1-abc"), Some("10m"), Some("error or warn")),
            "_time:10m (function_name:=\"api\" OR function:=\"api\" OR faas.name:=\"api\" OR lambda_function:=\"api\") trace_id:\"1-abc\" (error or warn)"
        );
        crate::logsql::parse(
            &build_query(Some("a\"b"), Some("t"), Some("1h"), Some("x")),
            0,
        )
        .unwrap();
    }
}
