//! The CloudWatch Logs operations, on the store and the catalogue. Blocking: callers run
//! them off the async workers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::catalog::{
    group_stream, ingestion_ns, now_ms, Catalog, GroupMeta, StreamMeta, INGESTION_FIELD,
};
use super::events::{page, Key, PageQuery};
use super::filter::Pattern;
use super::CwError;
use crate::logsql::Filter;
use crate::record::{canonical_stream, StoredRecord};
use crate::store::Store;
use crate::time::{format_rfc3339, now_nanos};

const NANOS_PER_MS: i64 = 1_000_000;
/// PutLogEvents: at most this many events per batch.
const MAX_BATCH_EVENTS: usize = 10_000;
/// PutLogEvents: at most this many bytes per batch, counting 26 bytes per event as AWS.
const MAX_BATCH_BYTES: usize = 1_048_576;
/// Bytes AWS adds to each event's message when sizing a batch or a response.
const EVENT_OVERHEAD: usize = 26;
/// Events older than this (ms) are rejected as too old.
const TOO_OLD_MS: i64 = 14 * 86_400_000;
/// Events further in the future than this (ms) are rejected as too new.
const TOO_NEW_MS: i64 = 2 * 3_600_000;
/// The largest span (ms) of one batch.
const MAX_SPAN_MS: i64 = 86_400_000;
/// Retention periods AWS accepts (days).
pub(crate) const RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Who asks, and where: what ARNs and stamped records need.
pub(crate) struct Ctx<'a> {
    pub store: &'a Store,
    pub catalog: &'a Catalog,
    /// The region of the request's signature.
    pub region: String,
    /// The account in ARNs.
    pub account: String,
    /// The function whose key signed the request (workers' listener).
    pub function: Option<String>,
}

impl Ctx<'_> {
    fn group_arn(&self, group: &str) -> String {
        format!(
            "arn:aws:logs:{}:{}:log-group:{group}",
            self.region, self.account
        )
    }
}

/// Runs operation `op` with its JSON input.
pub(crate) fn dispatch(ctx: &Ctx<'_>, op: &str, req: &Value) -> Result<Value, CwError> {
    ctx.catalog.refresh(ctx.store)?;
    match op {
        "CreateLogGroup" => create_log_group(ctx, req),
        "CreateLogStream" => create_log_stream(ctx, req),
        "DescribeLogGroups" => describe_log_groups(ctx, req),
        "DescribeLogStreams" => describe_log_streams(ctx, req),
        "PutLogEvents" => put_log_events(ctx, req),
        "GetLogEvents" => get_log_events(ctx, req),
        "FilterLogEvents" => filter_log_events(ctx, req),
        "DeleteLogGroup" => delete_log_group(ctx, req),
        "DeleteLogStream" => delete_log_stream(ctx, req),
        "PutRetentionPolicy" => put_retention_policy(ctx, req),
        "DeleteRetentionPolicy" => delete_retention_policy(ctx, req),
        other => Err(CwError::UnknownOperation(format!(
            "Logs_20140328.{other} is not supported by esb's log store"
        ))),
    }
}

/// Whether `op` is one [`dispatch`] runs.
pub(crate) fn known(op: &str) -> bool {
    matches!(
        op,
        "CreateLogGroup"
            | "CreateLogStream"
            | "DescribeLogGroups"
            | "DescribeLogStreams"
            | "PutLogEvents"
            | "GetLogEvents"
            | "FilterLogEvents"
            | "DeleteLogGroup"
            | "DeleteLogStream"
            | "PutRetentionPolicy"
            | "DeleteRetentionPolicy"
    )
}

// ---------- arguments ----------

fn invalid(msg: impl Into<String>) -> CwError {
    CwError::InvalidParameter(msg.into())
}

fn group_not_found() -> CwError {
    CwError::ResourceNotFound("The specified log group does not exist.".into())
}

fn stream_not_found() -> CwError {
    CwError::ResourceNotFound("The specified log stream does not exist.".into())
}

fn opt_str<'a>(req: &'a Value, k: &str) -> Result<Option<&'a str>, CwError> {
    match req.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(CwError::Serialization(format!("{k}: expected a string"))),
    }
}

fn opt_i64(req: &Value, k: &str) -> Result<Option<i64>, CwError> {
    match req.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| CwError::Serialization(format!("{k}: expected an integer"))),
    }
}

fn opt_bool(req: &Value, k: &str) -> Result<Option<bool>, CwError> {
    match req.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(CwError::Serialization(format!("{k}: expected a boolean"))),
    }
}

fn required<'a>(req: &'a Value, k: &str) -> Result<&'a str, CwError> {
    opt_str(req, k)?.ok_or_else(|| {
        invalid(format!(
            "1 validation error detected: Value null at '{k}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn valid_group_name(name: &str) -> Result<(), CwError> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'logGroupName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\.\\-_/#A-Za-z0-9]+"
        )))
    }
}

fn valid_stream_name(name: &str) -> Result<(), CwError> {
    if name.is_empty() || name.len() > 512 || name.contains([':', '*']) {
        return Err(invalid(format!(
            "1 validation error detected: Value '{name}' at 'logStreamName' failed to satisfy constraint: Member must satisfy regular expression pattern: [^:*]*"
        )));
    }
    Ok(())
}

/// The group of `logGroupName` or `logGroupIdentifier` (a name or an ARN).
fn group_arg(req: &Value) -> Result<String, CwError> {
    let name = opt_str(req, "logGroupName")?;
    let ident = opt_str(req, "logGroupIdentifier")?;
    let group = match (name, ident) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "LogGroup name and LogGroup ARN are mutually exclusive parameters.",
            ))
        }
        (Some(n), None) => n.to_string(),
        (None, Some(i)) => match i.split_once(":log-group:") {
            Some((_, rest)) if i.starts_with("arn:") => {
                rest.strip_suffix(":*").unwrap_or(rest).to_string()
            }
            _ => i.to_string(),
        },
        (None, None) => {
            return Err(invalid(
                "Either logGroupName or logGroupIdentifier must be specified",
            ))
        }
    };
    valid_group_name(&group)?;
    Ok(group)
}

fn limit_arg(req: &Value, max: i64) -> Result<usize, CwError> {
    match opt_i64(req, "limit")? {
        None => Ok(max as usize),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(invalid(format!(
            "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {max}"
        ))),
    }
}

/// An offset token of the Describe operations.
fn offset_token(req: &Value) -> Result<usize, CwError> {
    match opt_str(req, "nextToken")? {
        None => Ok(0),
        Some(t) => t
            .strip_prefix("o/")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| invalid(format!("The specified nextToken is invalid: {t}"))),
    }
}

/// One page of `items` from the request's offset token, with the next token.
/// One page of `items` as the answer `{key: [...], nextToken?}` (the token is an offset).
fn paginate(req: &Value, key: &str, items: Vec<Value>, max: i64) -> Result<Value, CwError> {
    let limit = limit_arg(req, max)?;
    let from = offset_token(req)?;
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(from).take(limit).collect();
    let mut out = Map::new();
    if from + page.len() < total {
        out.insert(
            "nextToken".into(),
            json!(format!("o/{}", from + page.len())),
        );
    }
    out.insert(key.into(), Value::Array(page));
    Ok(Value::Object(out))
}

fn ms_to_ns(ms: i64) -> i64 {
    ms.saturating_mul(NANOS_PER_MS)
}

fn ns_to_ms(ns: i64) -> i64 {
    ns.div_euclid(NANOS_PER_MS)
}

// ---------- groups and streams ----------

fn create_log_group(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    valid_group_name(group)?;
    if opt_str(req, "kmsKeyId")?.is_some() {
        return Err(invalid(
            "kmsKeyId: esb's log store does not encrypt log groups with KMS keys",
        ));
    }
    ctx.catalog.update(|st| {
        if st.group_exists(group) {
            return Err(CwError::ResourceAlreadyExists(
                "The specified log group already exists".into(),
            ));
        }
        st.meta
            .groups
            .entry(group.to_string())
            .or_default()
            .created_ms = Some(now_ms());
        Ok(json!({}))
    })
}

fn create_log_stream(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    let stream = required(req, "logStreamName")?;
    valid_group_name(group)?;
    valid_stream_name(stream)?;
    ctx.catalog.update(|st| {
        if !st.group_exists(group) {
            return Err(group_not_found());
        }
        if st.stream_exists(group, stream) {
            return Err(CwError::ResourceAlreadyExists(
                "The specified log stream already exists".into(),
            ));
        }
        let g = st.meta.groups.entry(group.to_string()).or_default();
        g.streams.entry(stream.to_string()).or_default().created_ms = Some(now_ms());
        Ok(json!({}))
    })
}

fn describe_log_groups(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let prefix = opt_str(req, "logGroupNamePrefix")?;
    let pattern = opt_str(req, "logGroupNamePattern")?;
    if prefix.is_some() && pattern.is_some() {
        return Err(invalid(
            "LogGroup name prefix and LogGroup name pattern are mutually exclusive parameters.",
        ));
    }
    let groups = ctx.catalog.read(|st| {
        st.group_names()
            .into_iter()
            .filter(|n| prefix.is_none_or(|p| n.starts_with(p)))
            .filter(|n| pattern.is_none_or(|p| n.to_lowercase().contains(&p.to_lowercase())))
            .map(|n| {
                let arn = ctx.group_arn(&n);
                let mut g = Map::new();
                g.insert("logGroupName".into(), json!(n));
                g.insert("creationTime".into(), json!(st.group_created_ms(&n)));
                if let Some(d) = st.meta.groups.get(&n).and_then(|g| g.retention_days) {
                    g.insert("retentionInDays".into(), json!(d));
                }
                g.insert("metricFilterCount".into(), json!(0));
                g.insert("arn".into(), json!(format!("{arn}:*")));
                g.insert("logGroupArn".into(), json!(arn));
                g.insert("storedBytes".into(), json!(0));
                g.insert("logGroupClass".into(), json!("STANDARD"));
                Value::Object(g)
            })
            .collect::<Vec<_>>()
    });
    paginate(req, "logGroups", groups, 50)
}

fn describe_log_streams(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = group_arg(req)?;
    let prefix = opt_str(req, "logStreamNamePrefix")?;
    let by_time = match opt_str(req, "orderBy")? {
        None | Some("LogStreamName") => false,
        Some("LastEventTime") => true,
        Some(o) => {
            return Err(invalid(format!(
                "1 validation error detected: Value '{o}' at 'orderBy' failed to satisfy constraint: Member must satisfy enum value set: [LogStreamName, LastEventTime]"
            )))
        }
    };
    if by_time && prefix.is_some() {
        return Err(invalid(
            "Cannot order by LastEventTime with a logStreamNamePrefix.",
        ));
    }
    let descending = opt_bool(req, "descending")?.unwrap_or(false);
    let mut streams = ctx.catalog.read(|st| {
        if !st.group_exists(&group) {
            return Err(group_not_found());
        }
        Ok(st.streams(&group))
    })?;
    streams.retain(|(n, _, _)| prefix.is_none_or(|p| n.starts_with(p)));
    if by_time {
        // A stream without events sorts as the oldest, as on AWS.
        streams.sort_by_key(|(n, _, s)| (s.map_or(i64::MIN, |s| s.last_event), n.clone()));
    }
    if descending {
        streams.reverse();
    }
    let arn = ctx.group_arn(&group);
    let items: Vec<Value> = streams
        .into_iter()
        .map(|(n, created, stats)| {
            let mut s = Map::new();
            s.insert("logStreamName".into(), json!(n));
            s.insert("creationTime".into(), json!(created));
            if let Some(x) = stats {
                s.insert("firstEventTimestamp".into(), json!(ns_to_ms(x.first_event)));
                s.insert("lastEventTimestamp".into(), json!(ns_to_ms(x.last_event)));
                s.insert(
                    "lastIngestionTime".into(),
                    json!(ns_to_ms(x.last_ingestion)),
                );
            }
            s.insert("arn".into(), json!(format!("{arn}:log-stream:{n}")));
            s.insert("storedBytes".into(), json!(0));
            Value::Object(s)
        })
        .collect();
    paginate(req, "logStreams", items, 50)
}

fn delete_log_group(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    ctx.catalog.update(|st| {
        if !st.group_exists(group) {
            return Err(group_not_found());
        }
        st.meta.groups.insert(
            group.to_string(),
            GroupMeta {
                deleted_ns: Some(now_nanos()),
                ..Default::default()
            },
        );
        st.seen.remove(group);
        Ok(json!({}))
    })
}

fn delete_log_stream(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    let stream = required(req, "logStreamName")?;
    ctx.catalog.update(|st| {
        if !st.group_exists(group) {
            return Err(group_not_found());
        }
        if !st.stream_exists(group, stream) {
            return Err(stream_not_found());
        }
        let g = st.meta.groups.entry(group.to_string()).or_default();
        g.streams.insert(
            stream.to_string(),
            StreamMeta {
                created_ms: None,
                deleted_ns: Some(now_nanos()),
            },
        );
        if let Some(s) = st.seen.get_mut(group) {
            s.remove(stream);
        }
        Ok(json!({}))
    })
}

fn put_retention_policy(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    let days = opt_i64(req, "retentionInDays")?.unwrap_or(-1);
    let allowed = RETENTION_DAYS.iter().any(|d| i64::from(*d) == days);
    if !allowed {
        let set: Vec<String> = RETENTION_DAYS.iter().map(u32::to_string).collect();
        return Err(invalid(format!(
            "1 validation error detected: Value '{days}' at 'retentionInDays' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            set.join(", ")
        )));
    }
    ctx.catalog.update(|st| {
        if !st.group_exists(group) {
            return Err(group_not_found());
        }
        st.meta
            .groups
            .entry(group.to_string())
            .or_default()
            .retention_days = Some(days as u32);
        Ok(json!({}))
    })
}

fn delete_retention_policy(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    ctx.catalog.update(|st| {
        if !st.group_exists(group) {
            return Err(group_not_found());
        }
        if let Some(g) = st.meta.groups.get_mut(group) {
            g.retention_days = None;
        }
        Ok(json!({}))
    })
}

// ---------- events ----------

/// Gives the events of one PutLogEvents call distinct, ordered nanoseconds below their
/// millisecond, so equal timestamps keep the order they were sent in.
static SUB_MS: AtomicU64 = AtomicU64::new(0);

fn put_log_events(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = required(req, "logGroupName")?;
    let stream = required(req, "logStreamName")?;
    valid_group_name(group)?;
    valid_stream_name(stream)?;
    let events = req
        .get("logEvents")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("1 validation error detected: Value null at 'logEvents' failed to satisfy constraint: Member must not be null"))?;
    if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
        return Err(invalid(format!(
            "1 validation error detected: Value at 'logEvents' failed to satisfy constraint: Member must have length between 1 and {MAX_BATCH_EVENTS}"
        )));
    }
    let mut parsed: Vec<(i64, &str)> = Vec::with_capacity(events.len());
    let mut bytes = 0usize;
    for e in events {
        let ts = opt_i64(e, "timestamp")?
            .ok_or_else(|| invalid("1 validation error detected: Value null at 'logEvents.member.timestamp' failed to satisfy constraint: Member must not be null"))?;
        let msg = opt_str(e, "message")?.unwrap_or("");
        if msg.is_empty() {
            return Err(invalid("1 validation error detected: Value at 'logEvents.member.message' failed to satisfy constraint: Member must have length greater than or equal to 1"));
        }
        bytes += msg.len() + EVENT_OVERHEAD;
        parsed.push((ts, msg));
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(invalid(format!(
            "Upload too large: {bytes} bytes exceeds limit of {MAX_BATCH_BYTES}"
        )));
    }
    if parsed.windows(2).any(|w| w[1].0 < w[0].0) {
        return Err(invalid(
            "Log events in a single PutLogEvents request must be in chronological order.",
        ));
    }
    if parsed[parsed.len() - 1].0 - parsed[0].0 > MAX_SPAN_MS {
        return Err(invalid(
            "The batch of log events in a single PutLogEvents request cannot span more than 24 hours.",
        ));
    }
    let cutoff = ctx.catalog.read(|st| {
        if !st.group_exists(group) {
            return Err(group_not_found());
        }
        if !st.stream_exists(group, stream) {
            return Err(stream_not_found());
        }
        Ok(st.retention_cutoff(group, now_nanos()))
    })?;
    let now = now_ms();
    let too_old = parsed
        .iter()
        .take_while(|(t, _)| *t < now - TOO_OLD_MS)
        .count();
    let expired = parsed
        .iter()
        .take_while(|(t, _)| ms_to_ns(*t) < cutoff)
        .count();
    let too_new_from = parsed
        .iter()
        .position(|(t, _)| *t > now + TOO_NEW_MS)
        .unwrap_or(parsed.len());
    let first_ok = too_old.max(expired).min(too_new_from);
    let container = group.strip_prefix("/aws/lambda/").unwrap_or(group);
    // On the workers' listener the caller's key says which function it is, as for the
    // records it ships; from the host, a Lambda group names its function.
    let function = ctx
        .function
        .clone()
        .or_else(|| group.strip_prefix("/aws/lambda/").map(str::to_string));
    let stream_label = canonical_stream(vec![
        ("container_name".into(), container.to_string()),
        ("job".into(), "cloudwatch".into()),
    ]);
    let n = (too_new_from - first_ok) as u64;
    let base = SUB_MS.fetch_add(n, Ordering::Relaxed);
    let ingested = format_rfc3339(now_nanos());
    let recs: Vec<StoredRecord> = parsed[first_ok..too_new_from]
        .iter()
        .enumerate()
        .map(|(i, (ts, msg))| {
            let sub = ((base + i as u64) % NANOS_PER_MS as u64) as i64;
            let mut fields = vec![
                ("_msg".to_string(), msg.to_string()),
                ("log_group".to_string(), group.to_string()),
                ("log_stream".to_string(), stream.to_string()),
                ("container_name".to_string(), container.to_string()),
                ("job".to_string(), "cloudwatch".to_string()),
            ];
            if let Some(f) = &function {
                fields.push(("function_name".to_string(), f.clone()));
            }
            fields.push((INGESTION_FIELD.to_string(), ingested.clone()));
            StoredRecord {
                time: ms_to_ns(*ts).saturating_add(sub),
                stream: stream_label.clone(),
                fields,
            }
        })
        .collect();
    ctx.store.append(recs)?;
    let mut out = json!({ "nextSequenceToken": format!("{:056}", now_nanos()) });
    let mut rejected = Map::new();
    if too_new_from < parsed.len() {
        rejected.insert("tooNewLogEventStartIndex".into(), json!(too_new_from));
    }
    if too_old > 0 {
        rejected.insert("tooOldLogEventEndIndex".into(), json!(too_old));
    }
    if expired > 0 {
        rejected.insert("expiredLogEventEndIndex".into(), json!(expired));
    }
    if !rejected.is_empty() {
        out["rejectedLogEventsInfo"] = Value::Object(rejected);
    }
    Ok(out)
}

/// Which records of a group the API shows: not deleted, not past the group's retention.
struct Visible {
    group_deleted: Option<i64>,
    stream_deleted: BTreeMap<String, i64>,
    cutoff: i64,
}

impl Visible {
    fn of(ctx: &Ctx<'_>, group: &str) -> Visible {
        ctx.catalog.read(|st| {
            let g = st.meta.groups.get(group);
            Visible {
                group_deleted: g.and_then(|g| g.deleted_ns),
                stream_deleted: g
                    .map(|g| {
                        g.streams
                            .iter()
                            .filter_map(|(n, s)| Some((n.clone(), s.deleted_ns?)))
                            .collect()
                    })
                    .unwrap_or_default(),
                cutoff: st.retention_cutoff(group, now_nanos()),
            }
        })
    }

    fn shows(&self, rec: &StoredRecord) -> bool {
        if rec.time < self.cutoff {
            return false;
        }
        if self.group_deleted.is_none() && self.stream_deleted.is_empty() {
            return true;
        }
        let ing = ingestion_ns(rec);
        if self.group_deleted.is_some_and(|t| ing <= t) {
            return false;
        }
        let stream = group_stream(rec).map_or("", |(_, s)| s);
        self.stream_deleted.get(stream).is_none_or(|t| ing > *t)
    }
}

fn exact(field: &str, value: &str) -> Filter {
    Filter::Exact {
        field: field.into(),
        value: value.into(),
    }
}

/// The `[startTime, endTime)` of a request, in ns.
fn time_range(req: &Value) -> Result<Filter, CwError> {
    let start = opt_i64(req, "startTime")?.map_or(i64::MIN, ms_to_ns);
    let end = opt_i64(req, "endTime")?.map_or(i64::MAX, ms_to_ns);
    Ok(Filter::Time { start, end })
}

/// An event as the API shows it.
fn event_json(key: &Key, rec: &StoredRecord, with_stream: bool) -> Value {
    let mut e = Map::new();
    if with_stream {
        let stream = group_stream(rec).map_or("", |(_, s)| s);
        e.insert("logStreamName".into(), json!(stream));
    }
    e.insert("timestamp".into(), json!(ns_to_ms(rec.time)));
    e.insert("message".into(), json!(rec.get("_msg")));
    e.insert("ingestionTime".into(), json!(ns_to_ms(ingestion_ns(rec))));
    if with_stream {
        e.insert("eventId".into(), json!(key.event_id()));
    }
    Value::Object(e)
}

/// How many of `records` (from the front, or the back with `from_end`) fit in one
/// response of 1 MiB as AWS counts it.
fn fitting(records: &[(Key, StoredRecord)], from_end: bool) -> usize {
    let mut bytes = 0usize;
    let mut n = 0usize;
    let iter: Box<dyn Iterator<Item = &(Key, StoredRecord)>> = if from_end {
        Box::new(records.iter().rev())
    } else {
        Box::new(records.iter())
    };
    for (_, r) in iter {
        bytes += r.get("_msg").len() + EVENT_OVERHEAD;
        if bytes > MAX_BATCH_BYTES && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

fn get_log_events(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = group_arg(req)?;
    let stream = required(req, "logStreamName")?;
    ctx.catalog.read(|st| {
        if !st.group_exists(&group) {
            return Err(group_not_found());
        }
        if !st.stream_exists(&group, stream) {
            return Err(stream_not_found());
        }
        Ok(())
    })?;
    let limit = limit_arg(req, 10_000)?;
    let token = opt_str(req, "nextToken")?;
    let (after, before, from_end) = match token {
        Some(t) => {
            let bad = || invalid(format!("The specified nextToken is invalid: {t}"));
            if let Some(k) = t.strip_prefix("f/") {
                (Some(Key::parse(k).ok_or_else(bad)?), None, false)
            } else if let Some(k) = t.strip_prefix("b/") {
                (None, Some(Key::parse(k).ok_or_else(bad)?), true)
            } else {
                return Err(bad());
            }
        }
        None if opt_bool(req, "startFromHead")?.unwrap_or(false) => (None, None, false),
        None => (None, None, true),
    };
    let filter = Filter::And(vec![
        exact("log_group", &group),
        exact("log_stream", stream),
        time_range(req)?,
    ]);
    let vis = Visible::of(ctx, &group);
    let keep = |r: &StoredRecord| vis.shows(r);
    let mut p = page(
        ctx.store,
        &PageQuery {
            filter: &filter,
            keep: &keep,
            after,
            before,
            limit,
            from_end,
        },
    )?;
    let fit = fitting(&p.records, from_end);
    if from_end {
        p.records.drain(..p.records.len() - fit);
    } else {
        p.records.truncate(fit);
    }
    let events: Vec<Value> = p
        .records
        .iter()
        .map(|(k, r)| event_json(k, r, false))
        .collect();
    let (fwd, bwd) = match (p.records.first(), p.records.last()) {
        (Some((first, _)), Some((last, _))) => (last.token(), first.token()),
        _ => {
            // Nothing here: the token asked with comes back (the end is reached); without
            // one, both point at the start of the stream.
            let k = after.or(before).unwrap_or(Key::MIN).token();
            (k.clone(), k)
        }
    };
    Ok(json!({
        "events": events,
        "nextForwardToken": format!("f/{fwd}"),
        "nextBackwardToken": format!("b/{bwd}"),
    }))
}

fn filter_log_events(ctx: &Ctx<'_>, req: &Value) -> Result<Value, CwError> {
    let group = group_arg(req)?;
    if !ctx.catalog.read(|st| st.group_exists(&group)) {
        return Err(group_not_found());
    }
    let names: Option<Vec<String>> = match req.get("logStreamNames") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| CwError::Serialization("logStreamNames: strings".into()))
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(CwError::Serialization("logStreamNames: a list".into())),
    };
    let prefix = opt_str(req, "logStreamNamePrefix")?;
    if names.is_some() && prefix.is_some() {
        return Err(invalid(
            "Cannot specify both logStreamNames and logStreamNamePrefix.",
        ));
    }
    let pattern = Pattern::parse(opt_str(req, "filterPattern")?.unwrap_or(""))
        .map_err(|e| invalid(e.to_string()))?;
    let limit = limit_arg(req, 10_000)?;
    let after = match opt_str(req, "nextToken")? {
        None => None,
        Some(t) => Some(
            Key::parse(t.strip_prefix("n/").unwrap_or(t))
                .ok_or_else(|| invalid(format!("The specified nextToken is invalid: {t}")))?,
        ),
    };
    let mut parts = vec![exact("log_group", &group), time_range(req)?];
    if let Some(names) = &names {
        if names.is_empty() {
            return Err(invalid(
                "1 validation error detected: Value '[]' at 'logStreamNames' failed to satisfy constraint: Member must have length greater than or equal to 1",
            ));
        }
        parts.push(Filter::Or(
            names.iter().map(|n| exact("log_stream", n)).collect(),
        ));
    }
    if let Some(p) = prefix {
        parts.push(Filter::ExactPrefix {
            field: "log_stream".into(),
            prefix: p.into(),
        });
    }
    let filter = Filter::And(parts);
    let vis = Visible::of(ctx, &group);
    let keep =
        |r: &StoredRecord| vis.shows(r) && (pattern.is_all() || pattern.matches(&r.get("_msg")));
    let mut p = page(
        ctx.store,
        &PageQuery {
            filter: &filter,
            keep: &keep,
            after,
            before: None,
            limit,
            from_end: false,
        },
    )?;
    let fit = fitting(&p.records, false);
    if fit < p.records.len() {
        p.records.truncate(fit);
        p.more = true;
    }
    let events: Vec<Value> = p
        .records
        .iter()
        .map(|(k, r)| event_json(k, r, true))
        .collect();
    let mut out = json!({ "events": events });
    if p.more {
        if let Some((k, _)) = p.records.last() {
            out["nextToken"] = json!(format!("n/{}", k.token()));
        }
    }
    Ok(out)
}
