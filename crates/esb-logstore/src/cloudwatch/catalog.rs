//! Log groups and streams: the ones created through the API (a small metadata file,
//! `cloudwatch.json` in the data directory, written atomically with mode 0600) and the ones
//! that records name in their `log_group`/`log_stream` fields (an in-memory catalogue built
//! by one scan of the store and kept current by the store's append observer).
//!
//! Deleting a group or stream leaves a tombstone: the time of the deletion. Records ingested
//! up to then are hidden from the CloudWatch Logs API (LogsQL still sees them until
//! retention drops them), so a group created again under the same name starts empty.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::logsql::Filter;
use crate::record::StoredRecord;
use crate::store::{Order, Store};
use crate::time::{now_nanos, parse_timestamp};

/// The field holding a CloudWatch event's ingestion time (RFC 3339); records without it
/// count as ingested at their `_time`.
pub(crate) const INGESTION_FIELD: &str = "ingestion_time";

const META_FILE: &str = "cloudwatch.json";
const NANOS_PER_MS: i64 = 1_000_000;

/// A stream as the API knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StreamMeta {
    /// Creation through CreateLogStream (ms), `None` when not created that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
    /// Records ingested up to this time (ns) belong to a deleted stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_ns: Option<i64>,
}

/// A group as the API knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GroupMeta {
    /// Creation through CreateLogGroup (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
    /// PutRetentionPolicy's days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Records ingested up to this time (ns) belong to a deleted group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_ns: Option<i64>,
    /// Streams created or deleted through the API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub streams: BTreeMap<String, StreamMeta>,
}

impl GroupMeta {
    fn is_empty(&self) -> bool {
        self.created_ms.is_none()
            && self.retention_days.is_none()
            && self.deleted_ns.is_none()
            && self.streams.is_empty()
    }
}

/// What the metadata file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Groups by name.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupMeta>,
}

/// What the records of one stream show (times in ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamStats {
    pub first_event: i64,
    pub last_event: i64,
    pub first_ingestion: i64,
    pub last_ingestion: i64,
}

impl StreamStats {
    fn merge(&mut self, o: &StreamStats) {
        self.first_event = self.first_event.min(o.first_event);
        self.last_event = self.last_event.max(o.last_event);
        self.first_ingestion = self.first_ingestion.min(o.first_ingestion);
        self.last_ingestion = self.last_ingestion.max(o.last_ingestion);
    }
}

/// Streams seen in records, by group then stream name.
pub(crate) type Seen = BTreeMap<String, BTreeMap<String, StreamStats>>;

/// Metadata and catalogue, under one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub meta: Meta,
    pub seen: Seen,
}

/// The ingestion time (ns) of a record.
pub(crate) fn ingestion_ns(rec: &StoredRecord) -> i64 {
    rec.fields
        .iter()
        .find(|(k, _)| k == INGESTION_FIELD)
        .and_then(|(_, v)| parse_timestamp(v))
        .unwrap_or(rec.time)
}

/// The (group, stream) a record belongs to, if it names both.
pub(crate) fn group_stream(rec: &StoredRecord) -> Option<(&str, &str)> {
    let mut g = None;
    let mut s = None;
    for (k, v) in &rec.fields {
        match k.as_str() {
            "log_group" => g = Some(v.as_str()),
            "log_stream" => s = Some(v.as_str()),
            _ => {}
        }
    }
    Some((g.filter(|g| !g.is_empty())?, s.filter(|s| !s.is_empty())?))
}

impl State {
    /// Whether a record of `group`/`stream` ingested at `ingested` (ns) is hidden by a
    /// deletion.
    pub(crate) fn deleted(&self, group: &str, stream: &str, ingested: i64) -> bool {
        let Some(g) = self.meta.groups.get(group) else {
            return false;
        };
        g.deleted_ns.is_some_and(|t| ingested <= t)
            || g.streams
                .get(stream)
                .and_then(|s| s.deleted_ns)
                .is_some_and(|t| ingested <= t)
    }

    /// Adds records to the catalogue (idempotent: stats are minima and maxima).
    fn observe(&mut self, recs: &[StoredRecord]) {
        for rec in recs {
            let Some((g, s)) = group_stream(rec) else {
                continue;
            };
            let ing = ingestion_ns(rec);
            if self.deleted(g, s, ing) {
                continue;
            }
            let st = StreamStats {
                first_event: rec.time,
                last_event: rec.time,
                first_ingestion: ing,
                last_ingestion: ing,
            };
            merge_into(&mut self.seen, g, s, &st);
        }
    }

    /// Whether `group` exists for the API.
    pub(crate) fn group_exists(&self, group: &str) -> bool {
        self.meta
            .groups
            .get(group)
            .is_some_and(|g| g.created_ms.is_some())
            || self.seen.get(group).is_some_and(|s| !s.is_empty())
    }

    /// Whether `stream` of `group` exists for the API.
    pub(crate) fn stream_exists(&self, group: &str, stream: &str) -> bool {
        self.meta
            .groups
            .get(group)
            .and_then(|g| g.streams.get(stream))
            .is_some_and(|s| s.created_ms.is_some())
            || self.seen.get(group).is_some_and(|s| s.contains_key(stream))
    }

    /// The retention cutoff of `group` (ns): events older than this are hidden.
    pub(crate) fn retention_cutoff(&self, group: &str, now: i64) -> i64 {
        self.meta
            .groups
            .get(group)
            .and_then(|g| g.retention_days)
            .map_or(i64::MIN, |d| {
                now.saturating_sub(i64::from(d) * 86_400_000 * NANOS_PER_MS)
            })
    }

    /// Every group name the API shows, sorted.
    pub(crate) fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .meta
            .groups
            .iter()
            .filter(|(_, g)| g.created_ms.is_some())
            .map(|(n, _)| n.clone())
            .chain(
                self.seen
                    .iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(n, _)| n.clone()),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The creation time (ms) of a group: when it was created, else when its first record
    /// arrived.
    pub(crate) fn group_created_ms(&self, group: &str) -> i64 {
        let created = self.meta.groups.get(group).and_then(|g| g.created_ms);
        let seen = self
            .seen
            .get(group)
            .and_then(|s| s.values().map(|st| st.first_ingestion).min())
            .map(|ns| ns.div_euclid(NANOS_PER_MS));
        match (created, seen) {
            (Some(c), _) => c,
            (None, Some(s)) => s,
            (None, None) => 0,
        }
    }

    /// The streams of `group`: (name, creation ms, stats of its records), sorted by name.
    pub(crate) fn streams(&self, group: &str) -> Vec<(String, i64, Option<StreamStats>)> {
        let mut out: BTreeMap<String, (i64, Option<StreamStats>)> = BTreeMap::new();
        if let Some(g) = self.meta.groups.get(group) {
            for (n, s) in &g.streams {
                if let Some(c) = s.created_ms {
                    out.insert(n.clone(), (c, None));
                }
            }
        }
        if let Some(seen) = self.seen.get(group) {
            for (n, st) in seen {
                let e = out
                    .entry(n.clone())
                    .or_insert((st.first_ingestion.div_euclid(NANOS_PER_MS), None));
                e.1 = Some(*st);
            }
        }
        out.into_iter().map(|(n, (c, st))| (n, c, st)).collect()
    }
}

fn merge_into(seen: &mut Seen, g: &str, s: &str, st: &StreamStats) {
    let streams = match seen.get_mut(g) {
        Some(x) => x,
        None => seen.entry(g.to_string()).or_default(),
    };
    match streams.get_mut(s) {
        Some(x) => x.merge(st),
        None => {
            streams.insert(s.to_string(), *st);
        }
    }
}

/// The metadata file and the catalogue, shared by the API handlers and the store's
/// observer.
pub(crate) struct Catalog {
    path: PathBuf,
    state: Mutex<State>,
    /// `Some(dropped segments)` once the catalogue was built from the store.
    built: Mutex<Option<u64>>,
}

impl Catalog {
    /// Loads the metadata file of `dir` (absent: empty) and hooks the catalogue to `store`.
    pub(crate) fn open(dir: &Path, store: &Store) -> io::Result<Arc<Catalog>> {
        let path = dir.join(META_FILE);
        let meta = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        let cat = Arc::new(Catalog {
            path,
            state: Mutex::new(State {
                meta,
                seen: Seen::new(),
            }),
            built: Mutex::new(None),
        });
        let c = cat.clone();
        store.set_observer(Box::new(move |recs| {
            if recs.iter().any(|r| group_stream(r).is_some()) {
                c.state.lock().unwrap().observe(recs);
            }
        }));
        Ok(cat)
    }

    /// Makes sure the catalogue reflects the store: built once by a scan of the records
    /// naming a `log_group`, and again after retention dropped segments. Blocking.
    pub(crate) fn refresh(&self, store: &Store) -> io::Result<()> {
        let mut built = self.built.lock().unwrap();
        let dropped = store.dropped_segments();
        if *built == Some(dropped) {
            return Ok(());
        }
        // Clear first, then scan: a batch written after the scan's snapshot reaches the
        // live catalogue through the observer, one written before is in the scan.
        self.state.lock().unwrap().seen.clear();
        let filter = Filter::NonEmpty {
            field: "log_group".into(),
        };
        let mut local: Vec<StoredRecord> = Vec::new();
        let mut scanned = Seen::new();
        let flush = |local: &mut Vec<StoredRecord>, scanned: &mut Seen| {
            let st = self.state.lock().unwrap();
            for rec in local.drain(..) {
                if let Some((g, s)) = group_stream(&rec) {
                    let ing = ingestion_ns(&rec);
                    if !st.deleted(g, s, ing) {
                        let x = StreamStats {
                            first_event: rec.time,
                            last_event: rec.time,
                            first_ingestion: ing,
                            last_ingestion: ing,
                        };
                        merge_into(scanned, g, s, &x);
                    }
                }
            }
        };
        store.scan(
            &filter,
            i64::MIN,
            i64::MAX,
            Order::OldestFirst,
            &mut |rec: StoredRecord| {
                local.push(rec);
                if local.len() >= 4096 {
                    flush(&mut local, &mut scanned);
                }
                true
            },
        )?;
        flush(&mut local, &mut scanned);
        let mut st = self.state.lock().unwrap();
        for (g, streams) in scanned {
            for (s, x) in streams {
                merge_into(&mut st.seen, &g, &s, &x);
            }
        }
        *built = Some(dropped);
        Ok(())
    }

    /// Runs `f` on the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Runs `f` on the state; when it succeeds the metadata is saved (atomically) before
    /// anything else sees the change.
    pub(crate) fn update<T, E: From<io::Error>>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut st = self.state.lock().unwrap();
        let before = st.meta.clone();
        let out = f(&mut st)?;
        st.meta.groups.retain(|_, g| !g.is_empty());
        if let Err(e) = save(&self.path, &st.meta) {
            st.meta = before;
            return Err(e.into());
        }
        Ok(out)
    }
}

/// Writes `meta` to `path` atomically (temporary file, fsync, rename), mode 0600.
fn save(path: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Now, in ms.
pub(crate) fn now_ms() -> i64 {
    now_nanos().div_euclid(NANOS_PER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: i64, g: &str, s: &str) -> StoredRecord {
        StoredRecord {
            time: t,
            stream: "{}".into(),
            fields: vec![
                ("_msg".into(), "m".into()),
                ("log_group".into(), g.into()),
                ("log_stream".into(), s.into()),
            ],
        }
    }

    #[test]
    fn records_make_groups_and_tombstones_hide_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        store.append(vec![rec(5, "/g", "a")]).unwrap();
        let cat = Catalog::open(dir.path(), &store).unwrap();
        store
            .append(vec![rec(7, "/g", "b"), rec(3, "/g", "a")])
            .unwrap();
        cat.refresh(&store).unwrap();
        cat.read(|st| {
            assert!(st.group_exists("/g"));
            assert!(st.stream_exists("/g", "a"));
            let a = st.seen["/g"]["a"];
            assert_eq!((a.first_event, a.last_event), (3, 5));
            assert_eq!(st.group_names(), vec!["/g".to_string()]);
        });
        cat.update(|st| {
            st.meta.groups.entry("/g".into()).or_default().deleted_ns = Some(10);
            st.seen.remove("/g");
            Ok::<_, io::Error>(())
        })
        .unwrap();
        let mode = std::fs::metadata(dir.path().join(META_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let st = State {
            meta: serde_json::from_slice(&std::fs::read(dir.path().join(META_FILE)).unwrap())
                .unwrap(),
            seen: Seen::new(),
        };
        assert!(st.deleted("/g", "a", 10));
        assert!(!st.deleted("/g", "a", 11));
    }
}
