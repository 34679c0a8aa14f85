//! Query execution: pipes over matching records, and the select endpoints' aggregations.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::io;

use crate::logsql::{Fields, Pipe, Query, Row, StatsFunc};
use crate::record::StoredRecord;
use crate::store::{Order, Store, Visitor};
use crate::time::format_rfc3339;

enum Stage {
    Limit {
        n: usize,
        seen: usize,
    },
    Fields(Vec<String>),
    Filter(crate::logsql::Filter),
    Sort {
        keys: Vec<(String, bool)>,
        limit: Option<usize>,
        rows: Vec<Row>,
    },
    Stats {
        by: Vec<String>,
        funcs: Vec<StatsFunc>,
        groups: HashMap<Vec<String>, Vec<Acc>>,
    },
}

#[derive(Clone)]
enum Acc {
    Count(u64),
    Uniq(HashSet<Vec<String>>),
    Sum(f64, bool),
    Min(Option<f64>),
    Max(Option<f64>),
    Avg(f64, u64),
}

impl Acc {
    fn new(f: &StatsFunc) -> Acc {
        match f.kind.as_str() {
            "count" => Acc::Count(0),
            "count_uniq" => Acc::Uniq(HashSet::new()),
            "sum" => Acc::Sum(0.0, false),
            "min" => Acc::Min(None),
            "max" => Acc::Max(None),
            _ => Acc::Avg(0.0, 0),
        }
    }

    fn add(&mut self, f: &StatsFunc, row: &Row) {
        let nums = || {
            f.fields
                .iter()
                .filter_map(|name| row.field(name).trim().parse::<f64>().ok())
        };
        match self {
            Acc::Count(n) => {
                if f.fields.is_empty()
                    || f.fields.iter().any(|x| x == "*")
                    || f.fields.iter().any(|x| !row.field(x).is_empty())
                {
                    *n += 1;
                }
            }
            Acc::Uniq(set) => {
                let key: Vec<String> = f.fields.iter().map(|x| row.field(x).into_owned()).collect();
                if key.iter().any(|v| !v.is_empty()) {
                    set.insert(key);
                }
            }
            Acc::Sum(s, any) => {
                for v in nums() {
                    *s += v;
                    *any = true;
                }
            }
            Acc::Min(m) => {
                for v in nums() {
                    *m = Some(m.map_or(v, |x: f64| x.min(v)));
                }
            }
            Acc::Max(m) => {
                for v in nums() {
                    *m = Some(m.map_or(v, |x: f64| x.max(v)));
                }
            }
            Acc::Avg(s, n) => {
                for v in nums() {
                    *s += v;
                    *n += 1;
                }
            }
        }
    }

    fn value(&self) -> String {
        match self {
            Acc::Count(n) => n.to_string(),
            Acc::Uniq(s) => s.len().to_string(),
            Acc::Sum(s, any) => {
                if *any {
                    fmt_num(*s)
                } else {
                    "NaN".into()
                }
            }
            Acc::Min(m) | Acc::Max(m) => m.map(fmt_num).unwrap_or_default(),
            Acc::Avg(s, n) => {
                if *n == 0 {
                    "NaN".into()
                } else {
                    fmt_num(s / *n as f64)
                }
            }
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Orders two values: numerically when both are numbers, else as strings.
fn cmp_values(a: &str, b: &str) -> CmpOrdering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(CmpOrdering::Equal),
        _ => a.cmp(b),
    }
}

fn project(row: Row, names: &[String]) -> Row {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(p) = n.strip_suffix('*') {
            for (k, v) in &row {
                if k.starts_with(p) && !out.iter().any(|(o, _): &(String, String)| o == k) {
                    out.push((k.clone(), v.clone()));
                }
            }
        } else if !out.iter().any(|(o, _)| o == n) {
            out.push((n.clone(), row.field(n).into_owned()));
        }
    }
    out
}

/// A pipeline of stages that rows flow through.
pub struct Pipeline {
    stages: Vec<Stage>,
    error: Option<String>,
}

impl Pipeline {
    /// Builds the pipeline for a query's pipes.
    pub fn new(pipes: &[Pipe]) -> Pipeline {
        let stages = pipes
            .iter()
            .map(|p| match p {
                Pipe::Limit(n) => Stage::Limit { n: *n, seen: 0 },
                Pipe::Fields(f) => Stage::Fields(f.clone()),
                Pipe::Filter(f) => Stage::Filter(f.clone()),
                Pipe::Sort { keys, limit } => Stage::Sort {
                    keys: keys.clone(),
                    limit: *limit,
                    rows: Vec::new(),
                },
                Pipe::Stats { by, funcs } => Stage::Stats {
                    by: by.clone(),
                    funcs: funcs.clone(),
                    groups: HashMap::new(),
                },
            })
            .collect();
        Pipeline {
            stages,
            error: None,
        }
    }

    /// Pushes a row in; false once no more input is wanted.
    pub fn push(&mut self, row: Row, out: &mut dyn FnMut(Row) -> bool) -> bool {
        push(&mut self.stages, row, out, &mut self.error)
    }

    /// Flushes accumulating stages (sort, stats) at the end of input.
    pub fn finish(&mut self, out: &mut dyn FnMut(Row) -> bool) {
        finish(&mut self.stages, out, &mut self.error)
    }
}

/// Rows a `sort` without `limit` may hold, and groups a `stats` may hold: past these the
/// query fails with a clear message instead of exhausting memory.
pub const MAX_SORT_ROWS: usize = 1_000_000;
/// See [`MAX_SORT_ROWS`].
pub const MAX_STATS_GROUPS: usize = 1_000_000;

fn sort_rows(rows: &mut [Row], keys: &[(String, bool)]) {
    rows.sort_by(|a, b| {
        for (k, desc) in keys.iter() {
            let o = cmp_values(&a.field(k), &b.field(k));
            let o = if *desc { o.reverse() } else { o };
            if o != CmpOrdering::Equal {
                return o;
            }
        }
        CmpOrdering::Equal
    });
}

fn push(
    stages: &mut [Stage],
    row: Row,
    out: &mut dyn FnMut(Row) -> bool,
    err: &mut Option<String>,
) -> bool {
    let Some((first, rest)) = stages.split_first_mut() else {
        return out(row);
    };
    match first {
        Stage::Limit { n, seen } => {
            if *seen >= *n {
                return false;
            }
            *seen += 1;
            let more = push(rest, row, out, err);
            more && *seen < *n
        }
        Stage::Fields(names) => push(rest, project(row, names), out, err),
        Stage::Filter(f) => {
            if f.matches(&row) {
                push(rest, row, out, err)
            } else {
                true
            }
        }
        Stage::Sort { keys, limit, rows } => {
            rows.push(row);
            match *limit {
                // With a limit only the best `l` rows matter: trim now and then.
                Some(l) if rows.len() >= 2 * l + 1024 => {
                    sort_rows(rows, keys);
                    rows.truncate(l);
                }
                None if rows.len() > MAX_SORT_ROWS => {
                    *err = Some(format!(
                        "sort needs more than {MAX_SORT_ROWS} rows; narrow the query or add `limit N` to the sort pipe"
                    ));
                    return false;
                }
                _ => {}
            }
            true
        }
        Stage::Stats { by, funcs, groups } => {
            let key: Vec<String> = by.iter().map(|b| row.field(b).into_owned()).collect();
            let accs = groups
                .entry(key)
                .or_insert_with(|| funcs.iter().map(Acc::new).collect());
            for (acc, f) in accs.iter_mut().zip(funcs.iter()) {
                acc.add(f, &row);
            }
            if groups.len() > MAX_STATS_GROUPS {
                *err = Some(format!(
                    "stats has more than {MAX_STATS_GROUPS} groups; group by fewer values"
                ));
                return false;
            }
            true
        }
    }
}

fn finish(stages: &mut [Stage], out: &mut dyn FnMut(Row) -> bool, err: &mut Option<String>) {
    if err.is_some() {
        return;
    }
    let Some((first, rest)) = stages.split_first_mut() else {
        return;
    };
    let drained: Option<Vec<Row>> = match first {
        Stage::Sort { keys, limit, rows } => {
            let mut rows = std::mem::take(rows);
            sort_rows(&mut rows, keys);
            if let Some(l) = limit {
                rows.truncate(*l);
            }
            Some(rows)
        }
        Stage::Stats { by, funcs, groups } => {
            let mut g: Vec<_> = std::mem::take(groups).into_iter().collect();
            g.sort_by(|a, b| a.0.cmp(&b.0));
            if g.is_empty() && by.is_empty() {
                g.push((Vec::new(), funcs.iter().map(Acc::new).collect()));
            }
            Some(
                g.into_iter()
                    .map(|(key, accs)| {
                        let mut row: Row = by.iter().cloned().zip(key).collect();
                        row.extend(
                            funcs
                                .iter()
                                .zip(accs.iter())
                                .map(|(f, a)| (f.name.clone(), a.value())),
                        );
                        row
                    })
                    .collect(),
            )
        }
        _ => None,
    };
    if let Some(rows) = drained {
        for r in rows {
            if !push(rest, r, out, err) {
                break;
            }
        }
    }
    finish(rest, out, err)
}

/// Runs a query, handing output rows to `out` (which returns false to stop early).
///
/// With `limit`, like VictoriaLogs: without pipes that reorder or aggregate, the `limit`
/// newest matching records are returned newest first; otherwise the pipeline's output is
/// cut after `limit` rows. Without `limit`, records come in storage (ingestion) order.
pub fn run(
    store: &Store,
    q: &Query,
    start: i64,
    end: i64,
    limit: Option<usize>,
    out: &mut dyn FnMut(Row) -> bool,
) -> io::Result<()> {
    let mut pipeline = Pipeline::new(&q.pipes);
    if let (Some(n), true) = (limit, q.is_streamable()) {
        // Newest-N: keep a min-heap of the N newest rows seen.
        struct TopN<'a> {
            n: usize,
            heap: BinaryHeap<std::cmp::Reverse<(i64, u64, RowOrd)>>,
            pipeline: &'a mut Pipeline,
            counter: u64,
        }
        impl Visitor for TopN<'_> {
            fn visit(&mut self, rec: StoredRecord) -> bool {
                if self.n == 0 {
                    return false;
                }
                if self.heap.len() >= self.n && self.heap.peek().is_some_and(|m| rec.time <= m.0 .0)
                {
                    return true;
                }
                let t = rec.time;
                let mut produced = None;
                self.pipeline.push(rec.to_row(), &mut |r| {
                    produced = Some(r);
                    true
                });
                if let Some(r) = produced {
                    self.counter += 1;
                    // Later-ingested rows win ties (newer), via the counter.
                    self.heap
                        .push(std::cmp::Reverse((t, self.counter, RowOrd(r))));
                    if self.heap.len() > self.n {
                        self.heap.pop();
                    }
                }
                true
            }
            fn min_useful_time(&self) -> i64 {
                if self.heap.len() >= self.n {
                    self.heap.peek().map_or(i64::MIN, |m| m.0 .0)
                } else {
                    i64::MIN
                }
            }
        }
        let mut top = TopN {
            n,
            heap: BinaryHeap::new(),
            pipeline: &mut pipeline,
            counter: 0,
        };
        store.scan(&q.filter, start, end, Order::NewestFirst, &mut top)?;
        let mut rows: Vec<_> = top.heap.into_vec();
        rows.sort_by(|a, b| b.0 .0.cmp(&a.0 .0).then(b.0 .1.cmp(&a.0 .1)));
        for r in rows {
            if !out(r.0 .2 .0) {
                break;
            }
        }
        return Ok(());
    }
    let mut emitted = 0usize;
    let mut stopped = false;
    {
        let mut sink = |row: Row| {
            if limit.is_some_and(|l| emitted >= l) {
                stopped = true;
                return false;
            }
            emitted += 1;
            if !out(row) {
                stopped = true;
                return false;
            }
            true
        };
        let mut visit = |rec: StoredRecord| pipeline.push(rec.to_row(), &mut sink);
        store.scan(&q.filter, start, end, Order::OldestFirst, &mut visit)?;
    }
    if let Some(e) = pipeline.error.take() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
    }
    if !stopped {
        let mut sink = |row: Row| {
            if limit.is_some_and(|l| emitted >= l) {
                return false;
            }
            emitted += 1;
            out(row)
        };
        pipeline.finish(&mut sink);
    }
    Ok(())
}

/// A row with a dummy ordering (heap payload).
struct RowOrd(Row);
impl PartialEq for RowOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RowOrd {}
impl PartialOrd for RowOrd {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for RowOrd {
    fn cmp(&self, _: &Self) -> CmpOrdering {
        CmpOrdering::Equal
    }
}

/// Serialises a row as one JSON object (fields sorted by name unless `keep_order`).
pub fn row_json(row: &Row, keep_order: bool) -> String {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    if !keep_order {
        idx.sort_by(|&a, &b| row[a].0.cmp(&row[b].0));
    }
    let mut s = String::with_capacity(256);
    s.push('{');
    let mut first = true;
    for i in idx {
        let (k, v) = &row[i];
        if !keep_order && v.is_empty() {
            continue;
        }
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&serde_json::to_string(k).unwrap_or_default());
        s.push(':');
        s.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    s.push('}');
    s
}

/// `{"values":[{"value":..,"hits":..}]}` entries, most hits first.
#[derive(serde::Serialize)]
pub struct ValueHits {
    /// The value.
    pub value: String,
    /// How many rows hold it.
    pub hits: u64,
}

/// Counts field names over the query's output rows (`/select/logsql/field_names`).
pub fn field_names(
    store: &Store,
    q: &Query,
    start: i64,
    end: i64,
    filter: Option<&str>,
) -> io::Result<Vec<ValueHits>> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    run(store, q, start, end, None, &mut |row| {
        for (k, v) in &row {
            if !v.is_empty() {
                *counts.entry(k.clone()).or_default() += 1;
            }
        }
        true
    })?;
    Ok(counts
        .into_iter()
        .filter(|(k, _)| filter.is_none_or(|f| k.contains(f)))
        .map(|(value, hits)| ValueHits { value, hits })
        .collect())
}

/// Counts the values of one field over the output rows, most frequent first
/// (`/select/logsql/field_values`, and `/select/logsql/streams` with `_stream`).
pub fn field_values(
    store: &Store,
    q: &Query,
    start: i64,
    end: i64,
    field: &str,
    limit: Option<usize>,
    filter: Option<&str>,
) -> io::Result<Vec<ValueHits>> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    run(store, q, start, end, None, &mut |row| {
        let v = row.field(field);
        if !v.is_empty() || field != "_stream" {
            *counts.entry(v.into_owned()).or_default() += 1;
        }
        true
    })?;
    let mut out: Vec<ValueHits> = counts
        .into_iter()
        .filter(|(k, _)| filter.is_none_or(|f| k.contains(f)))
        .map(|(value, hits)| ValueHits { value, hits })
        .collect();
    out.sort_by(|a, b| b.hits.cmp(&a.hits).then_with(|| a.value.cmp(&b.value)));
    if let Some(l) = limit.filter(|l| *l > 0) {
        out.truncate(l);
    }
    Ok(out)
}

/// One group of `/select/logsql/hits`.
#[derive(serde::Serialize)]
pub struct HitsGroup {
    /// The grouping fields' values.
    pub fields: BTreeMap<String, String>,
    /// Bucket start times.
    pub timestamps: Vec<String>,
    /// Hits per bucket.
    pub values: Vec<u64>,
    /// Sum of `values`.
    pub total: u64,
}

/// Hits per `step`-wide time bucket (aligned to `offset`), grouped by `group_by` fields.
/// Pipes other than filters are ignored (they may not keep `_time`).
#[allow(clippy::too_many_arguments)]
pub fn hits(
    store: &Store,
    q: &Query,
    start: i64,
    end: i64,
    step: i64,
    offset: i64,
    group_by: &[String],
    fields_limit: Option<usize>,
) -> io::Result<Vec<HitsGroup>> {
    let step = step.max(1);
    let filter_pipes: Vec<Pipe> = q
        .pipes
        .iter()
        .filter(|p| matches!(p, Pipe::Filter(_)))
        .cloned()
        .collect();
    let q2 = Query {
        filter: q.filter.clone(),
        pipes: filter_pipes,
    };
    let mut groups: HashMap<Vec<String>, BTreeMap<i64, u64>> = HashMap::new();
    let mut pipeline = Pipeline::new(&q2.pipes);
    let mut visit = |rec: StoredRecord| {
        let t = rec.time;
        let mut keep = None;
        pipeline.push(rec.to_row(), &mut |r| {
            keep = Some(r);
            true
        });
        if let Some(row) = keep {
            let key: Vec<String> = group_by.iter().map(|f| row.field(f).into_owned()).collect();
            let bucket = (t - offset).div_euclid(step) * step + offset;
            *groups.entry(key).or_default().entry(bucket).or_default() += 1;
        }
        true
    };
    store.scan(&q2.filter, start, end, Order::OldestFirst, &mut visit)?;
    let mut out: Vec<(Vec<String>, BTreeMap<i64, u64>)> = groups.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(limit) = fields_limit.filter(|l| *l > 0 && out.len() > *l) {
        out.sort_by(|a, b| {
            b.1.values()
                .sum::<u64>()
                .cmp(&a.1.values().sum::<u64>())
                .then_with(|| a.0.cmp(&b.0))
        });
        let rest = out.split_off(limit);
        let mut other: BTreeMap<i64, u64> = BTreeMap::new();
        for (_, m) in rest {
            for (t, n) in m {
                *other.entry(t).or_default() += n;
            }
        }
        out.push((Vec::new(), other));
    }
    Ok(out
        .into_iter()
        .map(|(key, buckets)| {
            let fields = if key.is_empty() && !group_by.is_empty() && key.len() != group_by.len() {
                BTreeMap::new()
            } else {
                group_by.iter().cloned().zip(key).collect()
            };
            HitsGroup {
                fields,
                timestamps: buckets.keys().map(|t| format_rfc3339(*t)).collect(),
                total: buckets.values().sum(),
                values: buckets.into_values().collect(),
            }
        })
        .collect())
}

/// One series of `/select/logsql/stats_query{,_range}` (Prometheus data format).
#[derive(Debug, serde::Serialize, PartialEq)]
pub struct Series {
    /// `__name__` (the stats result name) and the `by (...)` labels.
    pub metric: BTreeMap<String, String>,
    /// Instant queries: `[unix_seconds, "value"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<(serde_json::Value, String)>,
    /// Range queries: `[[unix_seconds, "value"], ...]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<(serde_json::Value, String)>>,
}

/// Unix seconds as Prometheus prints them: an integer when whole, else a fraction.
fn unix_seconds(nanos: i64) -> serde_json::Value {
    if nanos % 1_000_000_000 == 0 {
        serde_json::Value::from(nanos / 1_000_000_000)
    } else {
        serde_json::Value::from(nanos as f64 / 1e9)
    }
}

/// The labels and result names of a query's last `stats` pipe, if it has one.
pub fn stats_shape(q: &Query) -> Option<(Vec<String>, Vec<String>)> {
    q.pipes.iter().rev().find_map(|p| match p {
        Pipe::Stats { by, funcs } => {
            Some((by.clone(), funcs.iter().map(|f| f.name.clone()).collect()))
        }
        _ => None,
    })
}

fn series_of(
    row: &Row,
    by: &[String],
    names: &[String],
) -> Vec<(BTreeMap<String, String>, String)> {
    names
        .iter()
        .filter(|n| row.iter().any(|(k, _)| k == *n))
        .map(|n| {
            let mut m: BTreeMap<String, String> = by
                .iter()
                .map(|b| (b.clone(), row.field(b).into_owned()))
                .filter(|(_, v)| !v.is_empty())
                .collect();
            m.insert("__name__".into(), n.clone());
            (m, row.field(n).into_owned())
        })
        .collect()
}

/// `/select/logsql/stats_query`: the stats of `q` over `[start, time)`, as an instant vector.
pub fn stats_query(store: &Store, q: &Query, start: i64, time: i64) -> io::Result<Vec<Series>> {
    let (by, names) = stats_shape(q).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the query must contain a `stats` pipe",
        )
    })?;
    let mut out = Vec::new();
    run(store, q, start, time, None, &mut |row| {
        for (metric, v) in series_of(&row, &by, &names) {
            out.push(Series {
                metric,
                value: Some((unix_seconds(time), v)),
                values: None,
            });
        }
        true
    })?;
    Ok(out)
}

/// `/select/logsql/stats_query_range`: the stats of `q` per `step` bucket of `[start, end)`,
/// as a range matrix.
pub fn stats_query_range(
    store: &Store,
    q: &Query,
    start: i64,
    end: i64,
    step: i64,
) -> io::Result<Vec<Series>> {
    let (by, names) = stats_shape(q).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the query must contain a `stats` pipe",
        )
    })?;
    let step = step.max(1);
    let origin = if start == i64::MIN { 0 } else { start };
    let mut buckets: BTreeMap<i64, Pipeline> = BTreeMap::new();
    let mut error = None;
    let mut visit = |rec: StoredRecord| {
        let b = (rec.time - origin).div_euclid(step) * step + origin;
        let p = buckets.entry(b).or_insert_with(|| Pipeline::new(&q.pipes));
        p.push(rec.to_row(), &mut |_| true);
        if let Some(e) = p.error.take() {
            error = Some(e);
            return false;
        }
        if buckets.len() > 11_000 {
            error = Some("more than 11000 steps in the range; use a bigger step".to_string());
            return false;
        }
        true
    };
    store.scan(&q.filter, start, end, Order::OldestFirst, &mut visit)?;
    if let Some(e) = error {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
    }
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(serde_json::Value, String)>> =
        BTreeMap::new();
    for (t, mut p) in buckets {
        p.finish(&mut |row| {
            for (metric, v) in series_of(&row, &by, &names) {
                series.entry(metric).or_default().push((unix_seconds(t), v));
            }
            true
        });
    }
    Ok(series
        .into_iter()
        .map(|(metric, values)| Series {
            metric,
            value: None,
            values: Some(values),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logsql::parse;

    fn run_rows(q: &str, rows: Vec<Row>) -> Vec<Row> {
        let q = parse(q, 0).unwrap();
        let mut p = Pipeline::new(&q.pipes);
        let mut out = Vec::new();
        for r in rows {
            if !p.push(r, &mut |r| {
                out.push(r);
                true
            }) {
                break;
            }
        }
        p.finish(&mut |r| {
            out.push(r);
            true
        });
        out
    }

    fn row(pairs: &[(&str, String)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn sort_with_limit_keeps_the_best_rows_while_trimming() {
        let rows: Vec<Row> = (0..10_000)
            .map(|i| row(&[("n", ((i * 7919) % 10_000).to_string())]))
            .collect();
        let out = run_rows("* | sort by (n desc) limit 3 | fields n", rows);
        assert_eq!(
            out,
            vec![
                row(&[("n", "9999".into())]),
                row(&[("n", "9998".into())]),
                row(&[("n", "9997".into())])
            ]
        );
    }

    #[test]
    fn stats_series() {
        let q = parse("* | stats by (level) count() as n", 0).unwrap();
        let (by, names) = stats_shape(&q).unwrap();
        let s = series_of(
            &row(&[("level", "info".into()), ("n", "3".into())]),
            &by,
            &names,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0.get("__name__").map(String::as_str), Some("n"));
        assert_eq!(s[0].0.get("level").map(String::as_str), Some("info"));
        assert_eq!(s[0].1, "3");
        assert!(stats_shape(&parse("*", 0).unwrap()).is_none());
    }

    #[test]
    fn stats_functions() {
        let rows: Vec<Row> = (1..=4)
            .map(|i| {
                row(&[
                    ("g", if i % 2 == 0 { "even" } else { "odd" }.into()),
                    ("v", i.to_string()),
                ])
            })
            .collect();
        let out = run_rows(
            "* | stats by (g) count() c, sum(v) s, min(v) lo, max(v) hi, avg(v) a, count_uniq(v) u",
            rows,
        );
        assert_eq!(
            out,
            vec![
                row(&[
                    ("g", "even".into()),
                    ("c", "2".into()),
                    ("s", "6".into()),
                    ("lo", "2".into()),
                    ("hi", "4".into()),
                    ("a", "3".into()),
                    ("u", "2".into())
                ]),
                row(&[
                    ("g", "odd".into()),
                    ("c", "2".into()),
                    ("s", "4".into()),
                    ("lo", "1".into()),
                    ("hi", "3".into()),
                    ("a", "2".into()),
                    ("u", "2".into())
                ]),
            ]
        );
        assert_eq!(
            run_rows("* | stats count() n", vec![]),
            vec![row(&[("n", "0".into())])]
        );
        assert_eq!(
            run_rows("* | limit 2", vec![row(&[]), row(&[]), row(&[])]).len(),
            2
        );
    }
}
