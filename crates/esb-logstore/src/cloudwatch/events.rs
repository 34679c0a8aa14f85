//! Reading events for GetLogEvents and FilterLogEvents: a total order on records (time, then
//! a hash of the record), page tokens that name a position in it, and a bounded collection
//! of the records of one page.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;

use crate::logsql::Filter;
use crate::record::{hash64, StoredRecord};
use crate::store::{Order, Store};

/// A record's position: its time (ns) and a hash of its bytes (also its `eventId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub time: i64,
    pub hash: u64,
}

impl Key {
    /// The lowest position.
    pub(crate) const MIN: Key = Key {
        time: i64::MIN,
        hash: 0,
    };

    /// The position of `rec`.
    pub(crate) fn of(rec: &StoredRecord) -> Key {
        let mut b = Vec::with_capacity(256);
        rec.encode(&mut b);
        Key {
            time: rec.time,
            hash: hash64(&[&b]),
        }
    }

    /// The token text of the position (after a `f/`, `b/` prefix).
    pub(crate) fn token(&self) -> String {
        format!("{}/{:016x}", self.time, self.hash)
    }

    /// Parses [`token`](Self::token)'s text.
    pub(crate) fn parse(s: &str) -> Option<Key> {
        let (t, h) = s.split_once('/')?;
        Some(Key {
            time: t.parse().ok()?,
            hash: u64::from_str_radix(h, 16).ok()?,
        })
    }

    /// The `eventId` of the record at this position: digits, as AWS's.
    pub(crate) fn event_id(&self) -> String {
        format!("{:020}{:020}", self.time.max(0), self.hash)
    }
}

/// What one page asks for.
pub(crate) struct PageQuery<'a> {
    /// The store filter (group, streams, time); the indexes narrow the scan with it.
    pub filter: &'a Filter,
    /// Further checks on each record (visibility, filter pattern).
    pub keep: &'a dyn Fn(&StoredRecord) -> bool,
    /// Only records after this position.
    pub after: Option<Key>,
    /// Only records before this position.
    pub before: Option<Key>,
    /// At most this many records.
    pub limit: usize,
    /// The last `limit` records of the range rather than the first.
    pub from_end: bool,
}

/// A page: records in ascending order, and whether more matched beyond it (in the
/// direction read).
pub(crate) struct Page {
    pub records: Vec<(Key, StoredRecord)>,
    pub more: bool,
}

struct Entry(Key, StoredRecord);
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}

/// Reads one page; memory holds at most `limit + 1` records whatever the range holds.
pub(crate) fn page(store: &Store, q: &PageQuery<'_>) -> io::Result<Page> {
    let (start, end) = (
        q.after.map_or(i64::MIN, |k| k.time),
        q.before.map_or(i64::MAX, |k| k.time.saturating_add(1)),
    );
    let cap = q.limit.max(1);
    let mut seen = 0usize;
    // Forward: keep the smallest keys (a max-heap pops the largest); from the end: the
    // largest (a min-heap).
    let mut low: BinaryHeap<Entry> = BinaryHeap::new();
    let mut high: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    store.scan(
        q.filter,
        start,
        end,
        Order::OldestFirst,
        &mut |rec: StoredRecord| {
            if !(q.keep)(&rec) {
                return true;
            }
            let k = Key::of(&rec);
            if q.after.is_some_and(|a| k <= a) || q.before.is_some_and(|b| k >= b) {
                return true;
            }
            seen += 1;
            if q.from_end {
                high.push(Reverse(Entry(k, rec)));
                if high.len() > cap {
                    high.pop();
                }
            } else {
                low.push(Entry(k, rec));
                if low.len() > cap {
                    low.pop();
                }
            }
            true
        },
    )?;
    let mut records: Vec<(Key, StoredRecord)> = if q.from_end {
        high.into_iter()
            .map(|Reverse(Entry(k, r))| (k, r))
            .collect()
    } else {
        low.into_iter().map(|Entry(k, r)| (k, r)).collect()
    };
    records.sort_by_key(|(k, _)| *k);
    Ok(Page {
        more: seen > records.len(),
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_forward_and_backward_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let recs: Vec<StoredRecord> = (0..10)
            .map(|i| StoredRecord {
                time: 100 + i / 2, // pairs share a time
                stream: "{}".into(),
                fields: vec![
                    ("_msg".into(), format!("m{i}")),
                    ("log_group".into(), "g".into()),
                ],
            })
            .collect();
        store.append(recs).unwrap();
        let filter = Filter::Exact {
            field: "log_group".into(),
            value: "g".into(),
        };
        let keep = |_: &StoredRecord| true;
        let mut after = None;
        let mut got = Vec::new();
        loop {
            let p = page(
                &store,
                &PageQuery {
                    filter: &filter,
                    keep: &keep,
                    after,
                    before: None,
                    limit: 3,
                    from_end: false,
                },
            )
            .unwrap();
            got.extend(
                p.records
                    .iter()
                    .map(|(k, r)| (*k, r.get("_msg").to_string())),
            );
            if !p.more {
                break;
            }
            after = p.records.last().map(|(k, _)| *k);
        }
        assert_eq!(got.len(), 10);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        let mut before = None;
        let mut back = Vec::new();
        loop {
            let p = page(
                &store,
                &PageQuery {
                    filter: &filter,
                    keep: &keep,
                    after: None,
                    before,
                    limit: 4,
                    from_end: true,
                },
            )
            .unwrap();
            back.splice(
                0..0,
                p.records
                    .iter()
                    .map(|(k, r)| (*k, r.get("_msg").to_string())),
            );
            if !p.more {
                break;
            }
            before = p.records.first().map(|(k, _)| *k);
        }
        assert_eq!(back, got);
        let k = got[3].0;
        assert_eq!(Key::parse(&k.token()), Some(k));
    }
}
