//! On-disk storage: append-only segment files with a per-segment token index.
//!
//! A segment is `seg-<id>.log`: a sequence of batch frames
//! `[magic u32][payload_len u32][count u32][crc32 u32][payload]`, the payload being records
//! `[len u32][encoded record]`. One ingestion chunk is one frame, written with a single
//! `write` before the request is acknowledged; on start a torn trailing frame (crash during a
//! write) is cut off, so a batch is either wholly there or not at all.
//!
//! Every field but `_msg` whose value is at most [`MAX_INDEXED_VALUE`] bytes has its words
//! indexed: key `hash(field, word)` -> byte offsets of the records holding it. The active
//! segment keeps (key, offset) pairs in memory; when it reaches its size it is sealed: the
//! pairs are sorted and written to `seg-<id>.idx` (a sorted key table plus posting lists,
//! searched with positioned reads, never loaded whole). Each segment also knows its time
//! range, so time filters skip whole segments.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::logsql::Filter;
use crate::record::{for_each_token, token_key, tokens, StoredRecord};

const FRAME_MAGIC: u32 = 0x4553_4231; // "ESB1"
const FRAME_HEADER: usize = 16;
const IDX_MAGIC: &[u8; 8] = b"ESBIDX03";
/// Every this many keys of an index table, one goes into the in-memory sparse index.
const SPARSE: u64 = 256;
/// Values longer than this are not indexed (their field is then scanned in that segment).
pub const MAX_INDEXED_VALUE: usize = 256;
/// Largest accepted frame payload (a guard against reading garbage as a length).
const MAX_FRAME: usize = 1 << 30;

/// Storage tuning.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Seal the active segment once its log reaches this size.
    pub segment_bytes: u64,
    /// Seal the active segment once its in-memory index holds this many entries.
    pub max_index_entries: usize,
    /// The store's size cap: checked after every append, so that the oldest sealed
    /// segments go as soon as the total passes it (not only on the periodic retention
    /// pass); one burst, however large, cannot take the disk.
    pub max_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 << 20,
            max_index_entries: 1_000_000,
            max_bytes: None,
        }
    }
}

/// A sealed (read-only) segment.
#[derive(Debug)]
struct Sealed {
    id: u64,
    log_len: u64,
    idx_len: u64,
    count: u64,
    min_time: i64,
    max_time: i64,
    unindexed: HashSet<String>,
    n_keys: u64,
    table_off: u64,
    /// Every [`SPARSE`]th key of the table: a lookup reads one table block.
    sparse: Vec<u64>,
    /// The open index file.
    idx: File,
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: File,
    len: u64,
    count: u64,
    min_time: i64,
    max_time: i64,
    /// (index key, record offset) pairs, in append order.
    entries: Vec<(u64, u32)>,
    unindexed: HashSet<String>,
}

struct Inner {
    sealed: Vec<Arc<Sealed>>,
    active: Active,
    seq: u64,
}

/// A batch announced to live tailers: its sequence number and records.
pub type TailBatch = Arc<(u64, Vec<StoredRecord>)>;

/// The log store.
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    bytes_total: AtomicU64,
    tail_tx: broadcast::Sender<TailBatch>,
    /// Called with every appended batch once it is written (the CloudWatch Logs catalogue).
    observer: std::sync::OnceLock<Observer>,
    /// Segments dropped by retention so far (lets derived views know they are stale).
    dropped: AtomicU64,
}

/// A callback seeing every appended batch once it is written, see [`Store::set_observer`].
pub type Observer = Box<dyn Fn(&[StoredRecord]) + Send + Sync>;

/// Decides, per segment, whether scanning it can still yield useful records.
pub trait Visitor {
    /// Called with each matching record (in file order within a segment); return false to
    /// stop the scan.
    fn visit(&mut self, rec: StoredRecord) -> bool;
    /// Records older than this are of no use (lets a newest-N scan skip old segments).
    fn min_useful_time(&self) -> i64 {
        i64::MIN
    }
}

impl<F: FnMut(StoredRecord) -> bool> Visitor for F {
    fn visit(&mut self, rec: StoredRecord) -> bool {
        self(rec)
    }
}

/// Which way to walk the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest segment first (ingestion order).
    OldestFirst,
    /// Newest segment first.
    NewestFirst,
}

fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:010}.log"))
}
fn idx_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:010}.idx"))
}

/// Walks the frames of a segment log, returning the length of its valid prefix.
fn walk_frames(path: &Path, mut on_record: impl FnMut(u32, &[u8])) -> io::Result<u64> {
    let file = File::open(path)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut pos: u64 = 0;
    let mut header = [0u8; FRAME_HEADER];
    let mut payload = Vec::new();
    loop {
        if !read_full(&mut r, &mut header)? {
            return Ok(pos);
        }
        let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let plen = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[12..16].try_into().unwrap());
        if magic != FRAME_MAGIC || plen > MAX_FRAME {
            return Ok(pos);
        }
        payload.resize(plen, 0);
        if !read_full(&mut r, &mut payload)? || crc32fast::hash(&payload) != crc {
            return Ok(pos);
        }
        let base = pos + FRAME_HEADER as u64;
        let mut off = 0usize;
        while off + 4 <= plen {
            let rlen = u32::from_le_bytes(payload[off..off + 4].try_into().unwrap()) as usize;
            if off + 4 + rlen > plen {
                break;
            }
            on_record(
                (base + off as u64) as u32,
                &payload[off + 4..off + 4 + rlen],
            );
            off += 4 + rlen;
        }
        pos = base + plen as u64;
    }
}

/// Whether the bytes of `path` after `valid` (up to `len`) are one frame cut short by a
/// crash (a partial header, or a header whose payload runs past the end), as opposed to
/// damage that may be followed by more frames.
fn is_torn_tail(path: &Path, valid: u64, len: u64) -> io::Result<bool> {
    if len - valid < FRAME_HEADER as u64 {
        return Ok(true);
    }
    let mut header = [0u8; FRAME_HEADER];
    File::open(path)?.read_exact_at(&mut header, valid)?;
    let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let plen = u32::from_le_bytes(header[4..8].try_into().unwrap()) as u64;
    Ok(
        magic == FRAME_MAGIC
            && plen <= MAX_FRAME as u64
            && valid + FRAME_HEADER as u64 + plen > len,
    )
}

/// Fills `buf` completely; false on a clean or torn end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Index entries of one record: (key, offset) pairs, and fields left unindexed.
fn index_record(
    rec: &StoredRecord,
    off: u32,
    entries: &mut Vec<(u64, u32)>,
    unindexed: &mut HashSet<String>,
) {
    let start = entries.len();
    for (k, v) in &rec.fields {
        if k == "_msg" {
            continue;
        }
        if v.len() > MAX_INDEXED_VALUE {
            if !unindexed.contains(k) {
                unindexed.insert(k.clone());
            }
            continue;
        }
        for_each_token(v, |t| {
            let key = token_key(k, t);
            if !entries[start..].iter().any(|e| e.0 == key) {
                entries.push((key, off));
            }
        });
    }
}

fn sorted_intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn sorted_union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.sort_unstable();
    out.dedup();
    out
}

/// Index keys any matching record must hold, for a leaf filter on an indexed field.
fn leaf_keys(field: &str, text: &str, last_is_prefix: bool) -> Option<Vec<u64>> {
    if field == "_msg" || field.starts_with('_') || text.is_empty() {
        return None;
    }
    let mut toks: Vec<&str> = tokens(text).collect();
    if last_is_prefix
        && text
            .chars()
            .next_back()
            .is_some_and(crate::record::is_token_char)
    {
        toks.pop();
    }
    if toks.is_empty() {
        return None;
    }
    // Longest words first: they are the likeliest to be rare, and an absent word ends the
    // lookup at once.
    toks.sort_by_key(|t| std::cmp::Reverse(t.len()));
    Some(toks.into_iter().map(|t| token_key(field, t)).collect())
}

/// A segment's index: posting list lengths and contents by key.
trait Postings {
    fn len(&mut self, key: u64) -> io::Result<usize>;
    fn get(&mut self, key: u64) -> io::Result<Vec<u32>>;
}

struct ActivePostings<'a>(&'a [(u64, u32)]);

impl Postings for ActivePostings<'_> {
    fn len(&mut self, key: u64) -> io::Result<usize> {
        Ok(self.0.iter().filter(|e| e.0 == key).count())
    }
    fn get(&mut self, key: u64) -> io::Result<Vec<u32>> {
        Ok(self.0.iter().filter(|e| e.0 == key).map(|e| e.1).collect())
    }
}

struct SealedPostings<'a>(&'a Sealed);

impl Postings for SealedPostings<'_> {
    fn len(&mut self, key: u64) -> io::Result<usize> {
        Ok(self.0.find(key)?.map_or(0, |(_, len)| len))
    }
    fn get(&mut self, key: u64) -> io::Result<Vec<u32>> {
        self.0.lookup(key)
    }
}

/// The candidate record offsets for a filter in one segment (`None`: no index help, scan).
fn candidates(
    f: &Filter,
    unindexed: &HashSet<String>,
    lookup: &mut dyn Postings,
) -> io::Result<Option<Vec<u32>>> {
    let keys_for = |field: &str, text: &str, prefix: bool| -> Option<Vec<u64>> {
        if unindexed.contains(field) {
            return None;
        }
        leaf_keys(field, text, prefix)
    };
    let keys = match f {
        Filter::Phrase { field, phrase } => keys_for(field, phrase, false),
        Filter::Exact { field, value } => keys_for(field, value, false),
        Filter::Prefix { field, prefix } => keys_for(field, prefix, true),
        Filter::ExactPrefix { field, prefix } => keys_for(field, prefix, true),
        Filter::Stream(ms) => {
            let mut all = Vec::new();
            for (name, op) in ms {
                if let crate::logsql::StreamOp::Eq(v) = op {
                    if let Some(k) = keys_for(name, v, false) {
                        all.extend(k);
                    }
                }
            }
            if all.is_empty() {
                None
            } else {
                Some(all)
            }
        }
        Filter::And(fs) => {
            let mut acc: Option<Vec<u32>> = None;
            for sub in fs {
                if let Some(c) = candidates(sub, unindexed, lookup)? {
                    acc = Some(match acc {
                        None => c,
                        Some(a) => sorted_intersect(&a, &c),
                    });
                    if acc.as_ref().is_some_and(Vec::is_empty) {
                        break;
                    }
                }
            }
            return Ok(acc);
        }
        Filter::Or(fs) => {
            let mut acc = Vec::new();
            for sub in fs {
                match candidates(sub, unindexed, lookup)? {
                    None => return Ok(None),
                    Some(c) => acc = sorted_union(&acc, &c),
                }
            }
            return Ok(Some(acc));
        }
        _ => None,
    };
    let Some(keys) = keys else { return Ok(None) };
    // Every key must be present; the shortest posting list is a superset of the matches
    // (records are checked anyway), so reading the long ones (e.g. the word "1" of every
    // trace id) would be wasted work.
    let mut best: Option<(usize, u64)> = None;
    for k in keys {
        let n = lookup.len(k)?;
        if n == 0 {
            return Ok(Some(Vec::new()));
        }
        if best.is_none_or(|(bn, _)| n < bn) {
            best = Some((n, k));
        }
    }
    match best {
        Some((_, k)) => Ok(Some(lookup.get(k)?)),
        None => Ok(None),
    }
}

/// Literal byte strings every matching record must contain (a cheap pre-check before
/// decoding during scans).
fn required_literals(f: &Filter, out: &mut Vec<Vec<u8>>) {
    match f {
        Filter::Phrase { field, phrase: t }
        | Filter::Prefix { field, prefix: t }
        | Filter::Exact { field, value: t }
        | Filter::ExactPrefix { field, prefix: t }
            if !t.is_empty() && !field.starts_with('_') || field == "_msg" && !t.is_empty() =>
        {
            out.push(t.as_bytes().to_vec())
        }
        // A stored non-empty field has its name in the record's bytes.
        Filter::NonEmpty { field } if !field.starts_with('_') => {
            out.push(field.as_bytes().to_vec())
        }
        Filter::And(fs) => fs.iter().for_each(|s| required_literals(s, out)),
        _ => {}
    }
}

struct ScanPlan<'a> {
    filter: &'a Filter,
    start: i64,
    end: i64,
    literals: Vec<memchr::memmem::Finder<'static>>,
}

impl ScanPlan<'_> {
    /// Decodes and checks a record's bytes; `None` when it does not match.
    fn check(&self, bytes: &[u8]) -> Option<StoredRecord> {
        let t = i64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        if t < self.start || t >= self.end {
            return None;
        }
        if !self.literals.iter().all(|f| f.find(bytes).is_some()) {
            return None;
        }
        let rec = StoredRecord::decode(bytes)?;
        self.filter.matches(&rec).then_some(rec)
    }
}

/// Reads one record at `off` of a segment log.
fn read_record_at(file: &File, off: u32, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.resize(4096, 0);
    let n = read_at_most(file, buf, u64::from(off))?;
    if n < 4 {
        return Ok(false);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len + 4 > n {
        buf.resize(len + 4, 0);
        let m = read_at_most(file, buf, u64::from(off))?;
        if m < len + 4 {
            return Ok(false);
        }
    }
    buf.copy_within(4..4 + len, 0);
    buf.truncate(len);
    Ok(true)
}

fn read_at_most(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Sealed {
    /// Loads the header of an index file; `None` when missing, stale or damaged.
    fn load(dir: &Path, id: u64) -> Option<Sealed> {
        let log_len = fs::metadata(log_path(dir, id)).ok()?.len();
        let mut f = File::open(idx_path(dir, id)).ok()?;
        let idx_len = f.metadata().ok()?.len();
        let mut head = [0u8; 8 + 32];
        f.read_exact(&mut head).ok()?;
        if &head[0..8] != IDX_MAGIC {
            return None;
        }
        let rd = |i: usize| u64::from_le_bytes(head[8 + i * 8..16 + i * 8].try_into().unwrap());
        if rd(0) != log_len {
            return None;
        }
        let mut n = [0u8; 4];
        f.read_exact(&mut n).ok()?;
        let mut unindexed = HashSet::new();
        let mut pos = 44u64;
        for _ in 0..u32::from_le_bytes(n) {
            let mut l = [0u8; 2];
            f.read_exact(&mut l).ok()?;
            let mut name = vec![0u8; u16::from_le_bytes(l) as usize];
            f.read_exact(&mut name).ok()?;
            pos += 2 + name.len() as u64;
            unindexed.insert(String::from_utf8(name).ok()?);
        }
        let mut nk = [0u8; 8];
        f.read_exact(&mut nk).ok()?;
        let n_keys = u64::from_le_bytes(nk);
        let table_off = pos + 8;
        let n_sparse = n_keys.div_ceil(SPARSE);
        if table_off + n_keys * 16 + n_sparse * 8 > idx_len {
            return None;
        }
        let mut raw = vec![0u8; (n_sparse * 8) as usize];
        f.read_exact_at(&mut raw, idx_len - n_sparse * 8).ok()?;
        let sparse = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Some(Sealed {
            id,
            log_len,
            idx_len,
            count: rd(1),
            min_time: rd(2) as i64,
            max_time: rd(3) as i64,
            unindexed,
            n_keys,
            table_off,
            sparse,
            idx: f,
        })
    }

    /// A key's posting list.
    fn lookup(&self, key: u64) -> io::Result<Vec<u32>> {
        let idx = &self.idx;
        let Some((start, len)) = self.find(key)? else {
            return Ok(Vec::new());
        };
        let mut raw = vec![0u8; len * 4];
        idx.read_exact_at(&mut raw, self.table_off + self.n_keys * 16 + start * 4)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    /// Finds a key's (start, length) in the posting area: the sparse index names the table
    /// block, one read fetches it, a binary search finds the key.
    fn find(&self, key: u64) -> io::Result<Option<(u64, usize)>> {
        let block = self.sparse.partition_point(|&k| k <= key);
        if block == 0 {
            return Ok(None);
        }
        let first = (block as u64 - 1) * SPARSE;
        let n = SPARSE.min(self.n_keys - first) as usize;
        let mut raw = vec![0u8; n * 16];
        self.idx
            .read_exact_at(&mut raw, self.table_off + first * 16)?;
        let ent = |i: usize| &raw[i * 16..i * 16 + 16];
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = ent(mid);
            let k = u64::from_le_bytes(e[0..8].try_into().unwrap());
            match k.cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let start = u64::from(u32::from_le_bytes(e[8..12].try_into().unwrap()));
                    let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as usize;
                    return Ok(Some((start, len)));
                }
            }
        }
        Ok(None)
    }
}

/// Writes the index file of a segment (atomically: temp file, fsync, rename). Sorts
/// `entries` in place and streams the file out, so sealing needs no extra memory.
#[allow(clippy::too_many_arguments)]
fn write_index(
    dir: &Path,
    id: u64,
    log_len: u64,
    count: u64,
    min_time: i64,
    max_time: i64,
    unindexed: &HashSet<String>,
    entries: &mut [(u64, u32)],
) -> io::Result<()> {
    entries.sort_unstable();
    let mut n_keys = 0u64;
    for i in 0..entries.len() {
        if i == 0 || entries[i].0 != entries[i - 1].0 {
            n_keys += 1;
        }
    }
    let tmp = dir.join(format!("seg-{id:010}.idx.tmp"));
    {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(IDX_MAGIC)?;
        for v in [log_len, count, min_time as u64, max_time as u64] {
            out.write_all(&v.to_le_bytes())?;
        }
        out.write_all(&(unindexed.len() as u32).to_le_bytes())?;
        for name in unindexed {
            let b = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
            out.write_all(&(b.len() as u16).to_le_bytes())?;
            out.write_all(b)?;
        }
        out.write_all(&n_keys.to_le_bytes())?;
        // Key table: (key, first posting, posting count); a repeated (key, offset) pair
        // counts once.
        let mut posted = 0u32;
        let mut i = 0;
        while i < entries.len() {
            let k = entries[i].0;
            let start = posted;
            let mut j = i;
            while j < entries.len() && entries[j].0 == k {
                if j == i || entries[j].1 != entries[j - 1].1 {
                    posted += 1;
                }
                j += 1;
            }
            out.write_all(&k.to_le_bytes())?;
            out.write_all(&start.to_le_bytes())?;
            out.write_all(&(posted - start).to_le_bytes())?;
            i = j;
        }
        // Postings, in key order, offsets ascending.
        for i in 0..entries.len() {
            if i == 0 || entries[i] != entries[i - 1] {
                out.write_all(&entries[i].1.to_le_bytes())?;
            }
        }
        // Sparse index: every SPARSE-th key of the table.
        let mut n = 0u64;
        for i in 0..entries.len() {
            if i == 0 || entries[i].0 != entries[i - 1].0 {
                if n.is_multiple_of(SPARSE) {
                    out.write_all(&entries[i].0.to_le_bytes())?;
                }
                n += 1;
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, idx_path(dir, id))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Active {
    /// Opens (recovering) or creates the log of segment `id`, rebuilding its index.
    fn open(dir: &Path, id: u64) -> io::Result<Active> {
        let path = log_path(dir, id);
        if !path.exists() {
            File::create(&path)?;
            sync_dir(dir);
        }
        let mut a = Active {
            id,
            file: OpenOptions::new().append(true).open(&path)?,
            len: 0,
            count: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            entries: Vec::new(),
            unindexed: HashSet::new(),
        };
        let (mut entries, mut unindexed) = (Vec::new(), HashSet::new());
        let (mut count, mut min_t, mut max_t) = (0u64, i64::MAX, i64::MIN);
        let valid = walk_frames(&path, |off, bytes| {
            if let Some(rec) = StoredRecord::decode(bytes) {
                index_record(&rec, off, &mut entries, &mut unindexed);
                count += 1;
                min_t = min_t.min(rec.time);
                max_t = max_t.max(rec.time);
            }
        })?;
        let actual = a.file.metadata()?.len();
        if actual > valid && !is_torn_tail(&path, valid, actual)? {
            // Not a write cut short but damage: the bytes after it may hold acknowledged
            // records, so they are kept aside rather than deleted.
            let aside = dir.join(format!("seg-{id:010}.damaged-{valid}"));
            let mut src = File::open(&path)?;
            io::Seek::seek(&mut src, io::SeekFrom::Start(valid))?;
            let mut dst = File::create(&aside)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            sync_dir(dir);
            tracing::error!(
                segment = id,
                kept = valid,
                moved = actual - valid,
                file = %aside.display(),
                "damaged log segment: the bytes after the damage were moved aside"
            );
        }
        if actual > valid {
            tracing::warn!(
                segment = id,
                kept = valid,
                dropped = actual - valid,
                "cutting a torn write off the end of the log"
            );
            a.file.set_len(valid)?;
            a.file.sync_all()?;
        }
        a.len = valid;
        a.count = count;
        a.min_time = min_t;
        a.max_time = max_t;
        a.entries = entries;
        a.unindexed = unindexed;
        Ok(a)
    }

    /// Writes the index file that seals this segment (see [`write_index`]).
    fn write_index(&mut self, dir: &Path) -> io::Result<()> {
        write_index(
            dir,
            self.id,
            self.len,
            self.count,
            self.min_time,
            self.max_time,
            &self.unindexed,
            &mut self.entries,
        )
    }
}

/// Storage statistics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    /// Number of segments (sealed and active).
    pub segments: usize,
    /// Records stored.
    pub records: u64,
    /// Bytes on disk (logs and indexes).
    pub bytes: u64,
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path, opts: StoreOptions) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        // Leftover temporary index files from a crash during sealing.
        for e in fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".idx.tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut sealed = Vec::new();
        let mut active = None;
        for (n, &id) in ids.iter().enumerate() {
            let last = n + 1 == ids.len();
            if let Some(s) = Sealed::load(dir, id) {
                sealed.push(Arc::new(s));
                continue;
            }
            let mut a = Active::open(dir, id)?;
            if last {
                active = Some(a);
            } else {
                // A segment that was being sealed when the process stopped: finish the job.
                a.write_index(dir)?;
                sealed.push(Arc::new(
                    Sealed::load(dir, id)
                        .ok_or_else(|| io::Error::other("index rebuild failed"))?,
                ));
            }
        }
        let active = match active {
            Some(a) => a,
            None => Active::open(dir, ids.last().map_or(1, |l| l + 1))?,
        };
        let (tail_tx, _) = broadcast::channel(1024);
        let store = Store {
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(Inner {
                sealed,
                active,
                seq: 0,
            }),
            dirty: AtomicBool::new(false),
            bytes_total: AtomicU64::new(0),
            tail_tx,
            observer: std::sync::OnceLock::new(),
            dropped: AtomicU64::new(0),
        };
        store.recount_bytes();
        Ok(store)
    }

    fn recount_bytes(&self) {
        let inner = self.inner.lock().unwrap();
        let total: u64 = inner
            .sealed
            .iter()
            .map(|s| s.log_len + s.idx_len)
            .sum::<u64>()
            + inner.active.len;
        self.bytes_total.store(total, Ordering::Relaxed);
    }

    /// Appends records as one frame; returns once they are written (visible to the OS, so
    /// they survive a crash of this process; [`sync`](Self::sync) makes them survive a crash
    /// of the machine).
    pub fn append(&self, recs: Vec<StoredRecord>) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        // Build the frame and the index entries (offsets relative to the frame's payload)
        // outside the lock, so concurrent requests encode and tokenize in parallel.
        let mut frame = Vec::with_capacity(FRAME_HEADER + recs.len() * 256);
        frame.extend_from_slice(&[0; FRAME_HEADER]);
        let mut entries = Vec::with_capacity(recs.len() * 8);
        let mut unindexed = HashSet::new();
        let (mut min_t, mut max_t) = (i64::MAX, i64::MIN);
        for r in &recs {
            let at = frame.len();
            frame.extend_from_slice(&[0; 4]);
            r.encode(&mut frame);
            let len = (frame.len() - at - 4) as u32;
            frame[at..at + 4].copy_from_slice(&len.to_le_bytes());
            index_record(r, (at - FRAME_HEADER) as u32, &mut entries, &mut unindexed);
            min_t = min_t.min(r.time);
            max_t = max_t.max(r.time);
        }
        let plen = frame.len() - FRAME_HEADER;
        if plen > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "batch too large",
            ));
        }
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        frame[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        frame[8..12].copy_from_slice(&(recs.len() as u32).to_le_bytes());
        frame[12..16].copy_from_slice(&crc.to_le_bytes());

        let mut inner = self.inner.lock().unwrap();
        if inner.active.len + frame.len() as u64 > u64::from(u32::MAX) {
            self.seal_locked(&mut inner)?;
        }
        let a = &mut inner.active;
        let base = a.len + FRAME_HEADER as u64;
        if let Err(e) = a.file.write_all(&frame) {
            // Leave nothing half-written.
            let _ = a.file.set_len(a.len);
            return Err(e);
        }
        a.len += frame.len() as u64;
        if a.entries.capacity() == 0 {
            // One allocation for the segment's whole index (pages are only touched as it
            // fills): no doubling copies, no 2x memory spike.
            a.entries
                .reserve(self.opts.max_index_entries + entries.len());
        }
        a.entries.extend(
            entries
                .into_iter()
                .map(|(k, off)| (k, (base + u64::from(off)) as u32)),
        );
        a.unindexed.extend(unindexed);
        a.min_time = a.min_time.min(min_t);
        a.max_time = a.max_time.max(max_t);
        a.count += recs.len() as u64;
        inner.seq += 1;
        let seq = inner.seq;
        self.dirty.store(true, Ordering::Relaxed);
        self.bytes_total
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if inner.active.len >= self.opts.segment_bytes
            || inner.active.entries.len() >= self.opts.max_index_entries
        {
            self.seal_locked(&mut inner)?;
        }
        drop(inner);
        if let Some(observe) = self.observer.get() {
            observe(&recs);
        }
        if self.tail_tx.receiver_count() > 0 {
            let _ = self.tail_tx.send(Arc::new((seq, recs)));
        }
        if let Some(max) = self.opts.max_bytes {
            if self.bytes_total.load(Ordering::Relaxed) > max {
                self.enforce_retention(0, None, Some(max))?;
            }
        }
        Ok(())
    }

    fn seal_locked(&self, inner: &mut Inner) -> io::Result<()> {
        let a = &mut inner.active;
        if a.len == 0 {
            return Ok(());
        }
        a.file.sync_all()?;
        a.write_index(&self.dir)?;
        let sealed = Sealed::load(&self.dir, a.id)
            .ok_or_else(|| io::Error::other("cannot reload a sealed index"))?;
        self.bytes_total
            .fetch_add(sealed.idx_len, Ordering::Relaxed);
        let next = Active::open(&self.dir, a.id + 1)?;
        inner.sealed.push(Arc::new(sealed));
        inner.active = next;
        Ok(())
    }

    /// Seals the active segment now (tests, shutdown).
    pub fn seal(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.seal_locked(&mut inner)
    }

    /// Flushes written records to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        if self.dirty.swap(false, Ordering::Relaxed) {
            let f = self.inner.lock().unwrap().active.file.try_clone()?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// Installs the callback that sees every batch appended from now on, right after it is
    /// written and before [`append`](Self::append) returns. Only one may be installed;
    /// `false` if there already is one.
    pub fn set_observer(&self, observer: Observer) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// How many segments retention has dropped since the store was opened.
    pub fn dropped_segments(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Subscribes to newly appended batches (live tailing).
    pub fn subscribe(&self) -> broadcast::Receiver<TailBatch> {
        self.tail_tx.subscribe()
    }

    /// Bytes on disk.
    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock().unwrap();
        Stats {
            segments: inner.sealed.len() + 1,
            records: inner.sealed.iter().map(|s| s.count).sum::<u64>() + inner.active.count,
            bytes: self.bytes_total.load(Ordering::Relaxed),
        }
    }

    /// Drops whole sealed segments, oldest first: those whose newest record is older than
    /// `now - max_age`, then more until the total size is at most `max_bytes`. The active
    /// segment is sealed first when it alone would keep the store over `max_bytes`.
    /// Returns the number of segments dropped.
    pub fn enforce_retention(
        &self,
        now: i64,
        max_age: Option<i64>,
        max_bytes: Option<u64>,
    ) -> io::Result<usize> {
        let mut victims = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap();
            if let Some(cutoff) = max_age.map(|a| now.saturating_sub(a)) {
                if inner.active.count > 0 && inner.active.max_time < cutoff {
                    self.seal_locked(&mut inner)?;
                }
                while inner.sealed.first().is_some_and(|s| s.max_time < cutoff) {
                    victims.push(inner.sealed.remove(0));
                }
                // Older segments behind a newer-stamped one are dropped too when expired.
                let (keep, expired): (Vec<_>, Vec<_>) =
                    inner.sealed.drain(..).partition(|s| s.max_time >= cutoff);
                inner.sealed = keep;
                victims.extend(expired);
            }
            if let Some(max) = max_bytes {
                let mut total: u64 = self.bytes_total.load(Ordering::Relaxed)
                    - victims.iter().map(|s| s.log_len + s.idx_len).sum::<u64>();
                if total > max && inner.sealed.is_empty() && inner.active.len > 0 {
                    self.seal_locked(&mut inner)?;
                    total = inner.sealed.iter().map(|s| s.log_len + s.idx_len).sum();
                }
                while total > max && !inner.sealed.is_empty() {
                    let s = inner.sealed.remove(0);
                    total -= s.log_len + s.idx_len;
                    victims.push(s);
                }
            }
        }
        for s in &victims {
            tracing::info!(
                segment = s.id,
                records = s.count,
                "retention: dropping segment"
            );
            let _ = fs::remove_file(idx_path(&self.dir, s.id));
            fs::remove_file(log_path(&self.dir, s.id))?;
            self.bytes_total
                .fetch_sub(s.log_len + s.idx_len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if !victims.is_empty() {
            sync_dir(&self.dir);
        }
        Ok(victims.len())
    }

    /// Scans for records matching `filter` within `[start, end)`, using the indexes where
    /// they help. Returns the append sequence number the scan saw (for live tailing).
    pub fn scan(
        &self,
        filter: &Filter,
        start: i64,
        end: i64,
        order: Order,
        v: &mut dyn Visitor,
    ) -> io::Result<u64> {
        let (fs, fe) = filter.time_range();
        let (start, end) = (start.max(fs), end.min(fe));
        let mut lits = Vec::new();
        required_literals(filter, &mut lits);
        let plan = ScanPlan {
            filter,
            start,
            end,
            literals: lits
                .into_iter()
                .map(|l| memchr::memmem::Finder::new(&l).into_owned())
                .collect(),
        };
        // Snapshot under the lock: sealed segments, and the active one's candidates.
        let (sealed, active_id, active_len, active_range, active_cands, seq) = {
            let inner = self.inner.lock().unwrap();
            let a = &inner.active;
            let cands = if a.count > 0 && a.max_time >= start && a.min_time < end {
                candidates(filter, &a.unindexed, &mut ActivePostings(&a.entries))?
            } else {
                None
            };
            (
                inner.sealed.clone(),
                a.id,
                a.len,
                (a.min_time, a.max_time, a.count),
                cands,
                inner.seq,
            )
        };
        if start >= end {
            return Ok(seq);
        }
        // Segments as (id, log_len, min, max, candidates-source).
        enum Src {
            Sealed(Arc<Sealed>),
            Active(Option<Vec<u32>>),
        }
        let mut segs: Vec<(u64, u64, i64, i64, Src)> = sealed
            .iter()
            .map(|s| {
                (
                    s.id,
                    s.log_len,
                    s.min_time,
                    s.max_time,
                    Src::Sealed(s.clone()),
                )
            })
            .collect();
        if active_range.2 > 0 {
            segs.push((
                active_id,
                active_len,
                active_range.0,
                active_range.1,
                Src::Active(active_cands),
            ));
        }
        if order == Order::NewestFirst {
            segs.reverse();
        }
        let mut buf = Vec::new();
        for (id, len, min_t, max_t, src) in segs {
            if max_t < start || min_t >= end || max_t < v.min_useful_time() {
                continue;
            }
            let cands = match src {
                Src::Active(c) => c,
                Src::Sealed(s) => candidates(filter, &s.unindexed, &mut SealedPostings(&s))?,
            };
            if cands.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            let log = match File::open(log_path(&self.dir, id)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match cands {
                Some(offs) => {
                    for off in offs {
                        if u64::from(off) >= len || !read_record_at(&log, off, &mut buf)? {
                            continue;
                        }
                        if let Some(rec) = plan.check(&buf) {
                            if !v.visit(rec) {
                                return Ok(seq);
                            }
                        }
                    }
                }
                None => {
                    let mut stop = false;
                    scan_log(log, len, &mut |bytes| {
                        if stop {
                            return;
                        }
                        if let Some(rec) = plan.check(bytes) {
                            if !v.visit(rec) {
                                stop = true;
                            }
                        }
                    })?;
                    if stop {
                        return Ok(seq);
                    }
                }
            }
        }
        Ok(seq)
    }
}

/// Reads the records of a log up to `len` bytes.
fn scan_log(file: File, len: u64, on_record: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, file.take(len));
    let mut header = [0u8; FRAME_HEADER];
    let mut payload = Vec::new();
    loop {
        if !read_full(&mut r, &mut header)? {
            return Ok(());
        }
        let plen = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        if u32::from_le_bytes(header[0..4].try_into().unwrap()) != FRAME_MAGIC || plen > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "damaged segment frame",
            ));
        }
        payload.resize(plen, 0);
        if !read_full(&mut r, &mut payload)? {
            return Ok(());
        }
        let mut off = 0usize;
        while off + 4 <= plen {
            let rlen = u32::from_le_bytes(payload[off..off + 4].try_into().unwrap()) as usize;
            if off + 4 + rlen > plen {
                break;
            }
            on_record(&payload[off + 4..off + 4 + rlen]);
            off += 4 + rlen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logsql::parse;

    fn rec(t: i64, msg: &str, fields: &[(&str, &str)]) -> StoredRecord {
        let mut f = vec![("_msg".to_string(), msg.to_string())];
        f.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        StoredRecord {
            time: t,
            stream: "{}".into(),
            fields: f,
        }
    }

    fn find(store: &Store, q: &str) -> Vec<String> {
        let q = parse(q, 0).unwrap();
        let mut out = Vec::new();
        store
            .scan(
                &q.filter,
                i64::MIN,
                i64::MAX,
                Order::OldestFirst,
                &mut |r: StoredRecord| {
                    out.push(r.get("_msg").into_owned());
                    true
                },
            )
            .unwrap();
        out
    }

    #[test]
    fn index_and_scan_across_segments_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            segment_bytes: 300,
            max_index_entries: 1000,
            max_bytes: None,
        };
        {
            let s = Store::open(dir.path(), opts.clone()).unwrap();
            for i in 0..20 {
                let tid = format!("trace-{i}");
                s.append(vec![rec(
                    i,
                    &format!("m{i} hello"),
                    &[("trace_id", &tid), ("level", "info")],
                )])
                .unwrap();
            }
            assert!(s.stats().segments > 3);
            assert_eq!(find(&s, "trace_id:trace-7"), ["m7 hello"]);
            assert_eq!(find(&s, "trace_id:=\"trace-1\""), ["m1 hello"]);
            assert_eq!(find(&s, "m3").len(), 1);
            assert_eq!(find(&s, "hello").len(), 20);
            assert_eq!(find(&s, "trace_id:trace-1*").len(), 11);
        }
        // Torn write at the end of the active log is cut off on reopen.
        let last = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&FRAME_MAGIC.to_le_bytes()).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 0]).unwrap();
        drop(f);
        let s = Store::open(dir.path(), opts).unwrap();
        assert_eq!(find(&s, "trace_id:trace-19"), ["m19 hello"]);
        assert_eq!(s.stats().records, 20);
        s.append(vec![rec(100, "after", &[])]).unwrap();
        assert_eq!(find(&s, "after"), ["after"]);
        let torn_aside = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".damaged-"));
        assert!(!torn_aside, "a torn tail is cut, not kept");
    }

    #[test]
    fn damage_inside_a_log_keeps_the_bytes_after_it_aside() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions::default();
        {
            let s = Store::open(dir.path(), opts.clone()).unwrap();
            for i in 0..3 {
                s.append(vec![rec(i, &format!("m{i}"), &[])]).unwrap();
            }
        }
        let log = log_path(dir.path(), 1);
        let before = fs::read(&log).unwrap();
        let second = walk_len(&log, 1);
        // Flip a payload byte of the second frame: its checksum fails, frame 3 follows.
        let mut bytes = before.clone();
        bytes[second as usize + FRAME_HEADER + 2] ^= 0xff;
        fs::write(&log, &bytes).unwrap();
        let s = Store::open(dir.path(), opts).unwrap();
        assert_eq!(find(&s, "m0"), ["m0"]);
        let aside = dir.path().join(format!("seg-{:010}.damaged-{second}", 1));
        assert_eq!(fs::read(aside).unwrap(), &bytes[second as usize..]);
    }

    /// Offset of the end of the first `frames` frames of a log.
    fn walk_len(path: &Path, frames: usize) -> u64 {
        let bytes = fs::read(path).unwrap();
        let mut pos = 0usize;
        for _ in 0..frames {
            let plen = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            pos += FRAME_HEADER + plen;
        }
        pos as u64
    }

    #[test]
    fn concurrent_appends_seals_and_queries() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(
            Store::open(
                dir.path(),
                StoreOptions {
                    segment_bytes: 8 << 10,
                    max_index_entries: 1000,
                    max_bytes: None,
                },
            )
            .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) || rounds == 0 {
                    let n = find(&s, "w:*").len();
                    assert!(n <= 4000);
                    rounds += 1;
                }
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for b in 0..50 {
                        let recs = (0..20)
                            .map(|r| {
                                let tid = format!("t-{w}-{b}-{r}");
                                rec(
                                    b * 100 + r,
                                    &format!("w{w}"),
                                    &[("w", &w.to_string()), ("trace_id", &tid)],
                                )
                            })
                            .collect();
                        s.append(recs).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert!(s.stats().segments > 10);
        assert_eq!(find(&s, "w:*").len(), 4000);
        assert_eq!(find(&s, "w:=2").len(), 1000);
        assert_eq!(find(&s, "trace_id:=t-3-49-19"), ["w3"]);
        assert_eq!(find(&s, "trace_id:=t-0-0-0"), ["w0"]);
        // And after a restart.
        drop(s);
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(find(&s, "w:*").len(), 4000);
        assert_eq!(find(&s, "trace_id:=t-1-25-7"), ["w1"]);
    }

    #[test]
    fn sealed_lookup_over_many_table_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let recs: Vec<StoredRecord> = (0..3000)
            .map(|i| {
                rec(
                    i,
                    &format!("m{i}"),
                    &[("trace_id", &format!("t{i:05}x")), ("n", &i.to_string())],
                )
            })
            .collect();
        s.append(recs).unwrap();
        s.seal().unwrap();
        for i in [0, 1, 255, 256, 1500, 2999] {
            assert_eq!(find(&s, &format!("trace_id:t{i:05}x")), [format!("m{i}")]);
            assert_eq!(find(&s, &format!("n:={i}")), [format!("m{i}")]);
        }
        assert!(find(&s, "trace_id:t99999x").is_empty());
        assert_eq!(find(&s, "trace_id:t0000*").len(), 10);
    }

    #[test]
    fn retention_drops_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            StoreOptions {
                segment_bytes: 1,
                max_index_entries: 1000,
                max_bytes: None,
            },
        )
        .unwrap();
        for i in 0..10 {
            s.append(vec![rec(i * 1000, &format!("r{i}"), &[])])
                .unwrap();
        }
        // By age: everything with time < 5000 goes.
        let dropped = s.enforce_retention(10_000, Some(5_001), None).unwrap();
        assert!(dropped > 0);
        let left = find(&s, "*");
        assert_eq!(left.first().map(String::as_str), Some("r5"), "{left:?}");
        // By size: keep dropping the oldest.
        let before = s.stats().bytes;
        s.enforce_retention(10_000, None, Some(before / 2)).unwrap();
        let left2 = find(&s, "*");
        assert!(left2.len() < left.len());
        assert_eq!(left2.last().map(String::as_str), Some("r9"));
        assert!(s.stats().bytes <= before / 2);
    }
}
