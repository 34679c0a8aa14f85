//! Durable storage: an ACID index (redb) plus immutable data files.
//!
//! Layout under the data directory:
//!
//! - `index.redb`: one table `buckets` (name -> bucket record), and per bucket a table
//!   `obj:<bucket>` (object key -> object record) and `mpu:<bucket>`
//!   ((key, upload id) -> multipart upload record). Keys are table keys, never file names,
//!   so any UTF-8 key is stored safely and listed in byte order.
//! - `data/<xx>/<id>`: object and part contents, named by random ids. A file is written,
//!   fsynced (file and directory) and only then referenced by an index commit, so an object
//!   becomes visible whole or not at all. Files are never modified after that: an overwrite
//!   references a new file and unlinks the old one after the commit. Small objects live
//!   inline in their index record.
//! - `store-id`: a random id, also recorded in the index (table `meta`). It ties the index
//!   to its data files: an index that is missing, new, or not the one the data files were
//!   written with makes [`Store::open`] refuse to start (naming the problem) instead of
//!   treating every data file as an orphan. Data files hold object bytes only (the key,
//!   bucket and headers live in the index, small objects wholly), so the index cannot be
//!   rebuilt from them.
//! - On open, data files that no record of the (verified) index references (writes cut by
//!   a crash) are removed. Any doubt (a bucket's table missing or unreadable) keeps them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
/// Store-wide settings: `store_id` (see [`STORE_ID_FILE`]).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The file next to the index that holds the store's id (see the module docs).
pub const STORE_ID_FILE: &str = "store-id";
/// The index file's name.
pub const INDEX_FILE: &str = "index.redb";

/// A bucket's object table: key -> encoded object record (see [`encode_object`]).
type ObjectsDef<'a> = TableDefinition<'a, &'static str, &'static [u8]>;
/// A versioned bucket's version table: (key, `u64::MAX - seq`) -> encoded object record
/// (as in [`ObjectsDef`]; delete markers too), so that a key's versions list newest first.
type VersionsDef<'a> = TableDefinition<'a, (&'static str, u64), &'static [u8]>;
/// A version table opened in a write transaction.
type VersionsTable<'t> = redb::Table<'t, (&'static str, u64), &'static [u8]>;
/// A bucket's multipart-upload table: (key, upload id) -> upload record (JSON).
type UploadsDef<'a> = TableDefinition<'a, (&'static str, &'static str), &'static [u8]>;
/// An object table opened in a write transaction.
type ObjectsTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;
/// An upload table opened in a write transaction.
type UploadsTable<'t> = redb::Table<'t, (&'static str, &'static str), &'static [u8]>;

fn obj_table(bucket: &str) -> String {
    format!("obj:{bucket}")
}
fn mpu_table(bucket: &str) -> String {
    format!("mpu:{bucket}")
}
fn ver_table(bucket: &str) -> String {
    format!("ver:{bucket}")
}

/// The `META` entry holding the last version sequence number handed out.
const VERSION_SEQ: &str = "version_seq";

/// A version id as clients see it: 16 hex digits of the version's sequence number (its
/// place in the version table) and 16 random hex digits.
fn new_version_id(seq: u64) -> String {
    let rnd = uuid::Uuid::new_v4().simple().to_string();
    format!("{seq:016x}{}", &rnd[..16])
}

/// The sequence number in a version id made by [`new_version_id`]; `None` for anything
/// else (including `null`).
pub fn version_seq(id: &str) -> Option<u64> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&id[..16], 16).ok()
}

/// Whether `id` is a version id this store could have made (or `null`).
pub fn valid_version_id(id: &str) -> bool {
    id == "null" || version_seq(id).is_some()
}

/// A bucket's versioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Never configured: one version per key (`null`), no version table.
    Off,
    Enabled,
    Suspended,
}

impl Versioning {
    /// The id of a version written now (sequence number `seq`): a new one, or `null`
    /// while versioning is suspended.
    fn new_version(self, seq: u64) -> String {
        match self {
            Versioning::Enabled => new_version_id(seq),
            _ => "null".to_owned(),
        }
    }

    fn of(rec: &BucketRecord) -> Versioning {
        match rec.versioning.as_deref() {
            Some("Enabled") => Versioning::Enabled,
            Some(_) => Versioning::Suspended,
            None => Versioning::Off,
        }
    }
}

/// Errors of the storage layer; the service maps them to S3 error codes.
#[derive(Debug)]
pub enum StoreError {
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    /// A version id that names no version of the key.
    NoSuchVersion,
    BucketExists,
    BucketNotEmpty,
    PreconditionFailed,
    Internal(anyhow::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Internal(anyhow::Error::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketRecord {
    pub created_ms: i64,
    pub region: String,
    /// `Enabled` or `Suspended`; absent while versioning was never configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<String>,
}

/// A contiguous piece of object data stored in one data file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    pub len: u64,
}

/// Standard HTTP headers stored with an object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StdHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Expires`, as an HTTP date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website_redirect_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// An additional checksum (x-amz-checksum-*) of an object or part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredChecksum {
    /// CRC32, CRC32C, CRC64NVME, SHA1 or SHA256.
    pub algorithm: String,
    /// Base64 value (for multipart objects, `<base64>-<parts>`).
    pub value: String,
    /// COMPOSITE or FULL_OBJECT.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    pub last_modified_ms: i64,
    #[serde(default)]
    pub headers: StdHeaders,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<StoredChecksum>,
    /// Sizes of the parts of a multipart object (empty for single uploads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_sizes: Vec<u64>,
    /// Data files, in order. Empty when the data is inline (or the object is empty).
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// The version id: `None` in a bucket whose versioning was never configured; in a
    /// versioned bucket, a generated id or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// A delete marker (versioned buckets only): no data, never in the object table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_marker: bool,
}

impl ObjectRecord {
    /// The version id as clients see it (`null` for the null version).
    pub fn version(&self) -> &str {
        self.version_id.as_deref().unwrap_or("null")
    }
}

/// An object as read from the index: its record and, for small objects, its bytes.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub record: ObjectRecord,
    pub inline: Option<bytes::Bytes>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    pub size: u64,
    pub etag: String,
    pub last_modified_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<StoredChecksum>,
    pub segment: Option<Segment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRecord {
    pub initiated_ms: i64,
    /// Headers, metadata and tags the completed object will carry.
    pub template: ObjectRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    pub parts: BTreeMap<u32, PartRecord>,
}

impl UploadRecord {
    /// The data files of the upload's parts.
    fn into_part_segments(self) -> impl Iterator<Item = Segment> {
        self.parts.into_values().filter_map(|p| p.segment)
    }
}

/// One entry of an object listing.
pub enum ListEntry {
    Object(String, Box<ObjectRecord>),
    Prefix(String),
}

pub struct ListResult {
    pub entries: Vec<ListEntry>,
    pub truncated: bool,
}

/// One entry of a version listing: a version or delete marker, or a common prefix.
pub enum VersionEntry {
    Version {
        key: String,
        record: Box<ObjectRecord>,
        is_latest: bool,
    },
    Prefix(String),
}

/// One page of ListObjectVersions.
pub struct VersionList {
    pub entries: Vec<VersionEntry>,
    pub truncated: bool,
}

/// What a delete did.
#[derive(Debug, Default)]
pub struct Deleted {
    /// Data files no longer referenced.
    pub unused: Vec<Segment>,
    /// The version concerned: the delete marker a plain delete made in a versioned bucket,
    /// or the version a delete by version id removed (`None`: nothing versioned happened).
    pub version_id: Option<String>,
    /// Whether that version is a delete marker.
    pub delete_marker: bool,
}

fn encode_object(record: &ObjectRecord, inline: &[u8]) -> StoreResult<Vec<u8>> {
    let json = serde_json::to_vec(record).map_err(|e| StoreError::Internal(e.into()))?;
    let len = u32::try_from(json.len()).map_err(|e| StoreError::Internal(e.into()))?;
    let mut out = Vec::with_capacity(4 + json.len() + inline.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(inline);
    Ok(out)
}

/// Splits an encoded object into its record and the bytes after it (inline data).
fn split_object(raw: &[u8]) -> StoreResult<(ObjectRecord, &[u8])> {
    let bad = || StoreError::Internal(anyhow::anyhow!("corrupt object record"));
    let len_bytes: [u8; 4] = raw
        .get(..4)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let json = raw.get(4..4 + len).ok_or_else(bad)?;
    let record = serde_json::from_slice(json).map_err(|e| StoreError::Internal(e.into()))?;
    Ok((record, &raw[4 + len..]))
}

/// The record alone (listings, recovery): skips copying inline data.
fn decode_record(raw: &[u8]) -> StoreResult<ObjectRecord> {
    Ok(split_object(raw)?.0)
}

fn decode_object(raw: &[u8]) -> StoreResult<StoredObject> {
    let (record, rest) = split_object(raw)?;
    let inline = if record.segments.is_empty() {
        Some(bytes::Bytes::copy_from_slice(rest))
    } else {
        None
    };
    Ok(StoredObject { record, inline })
}

fn to_json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Internal(e.into()))
}
fn from_json<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Internal(e.into()))
}

/// Precondition checked against the current version inside the write transaction.
#[derive(Debug, Clone, Default)]
pub struct WriteCondition {
    /// Fail when the key exists (`If-None-Match: *`).
    pub if_none_match_any: bool,
    /// Fail unless the current ETag is this one (`If-Match`); `Some("*")` means "exists".
    pub if_match: Option<String>,
}

impl WriteCondition {
    fn check(&self, current: Option<&ObjectRecord>) -> StoreResult<()> {
        if self.if_none_match_any && current.is_some() {
            return Err(StoreError::PreconditionFailed);
        }
        if let Some(want) = &self.if_match {
            match current {
                None => return Err(StoreError::NoSuchKey),
                Some(rec) if want != "*" && *want != rec.etag => {
                    return Err(StoreError::PreconditionFailed)
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

pub struct Store {
    root: PathBuf,
    db: Arc<Database>,
    writer: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    /// Stops the writer thread (after its last batch) so that the index file is closed
    /// when the store is gone and can be reopened at once.
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

/// Called once the batch holding a job committed (`None`) or failed (`Some(error)`).
type Done = Box<dyn FnOnce(Option<&str>) + Send>;
/// A write: runs inside the batch transaction; returns whether it failed fatally (an
/// index I/O error, which aborts the whole batch) and its completion.
type Job = Box<dyn FnOnce(&WriteTransaction) -> (bool, Done) + Send>;

const MAX_BATCH: usize = 512;

/// Group commit: concurrent writes share one transaction and one durable commit. Every
/// job validates before it mutates, so a job that fails (say, NoSuchKey) leaves nothing
/// behind in the shared transaction.
fn writer_loop(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the jobs drops their reply channels: each caller sees an error.
                tracing::error!(%e, "index: cannot begin a write transaction");
                continue;
            }
        };
        let mut dones = Vec::with_capacity(batch.len());
        let mut fatal = false;
        for job in batch {
            if fatal {
                break; // remaining jobs are dropped: their callers get an error
            }
            let (f, done) = job(&txn);
            fatal |= f;
            dones.push(done);
        }
        let outcome = if fatal {
            let _ = txn.abort();
            Some("index write failed; the batch was rolled back".to_owned())
        } else {
            txn.commit()
                .err()
                .map(|e| format!("index commit failed: {e}"))
        };
        if let Some(e) = &outcome {
            tracing::error!(error = %e, "index write batch failed");
        }
        for done in dones {
            done(outcome.as_deref());
        }
    }
}

impl Store {
    /// Opens the store under `root` (creating it), then removes orphaned data files.
    ///
    /// Refuses to start, changing nothing, when the index is missing or new while data
    /// files exist, when it is not the index of these data files (its id differs from
    /// `store-id`), or when a bucket's table cannot be read.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        let index_path = root.join(INDEX_FILE);
        let data_files = count_data_files(root)?;
        if !index_path.exists() && (data_files > 0 || root.join(STORE_ID_FILE).exists()) {
            anyhow::bail!(
                "{}: the index is missing but the store exists ({} data file(s) under {}); \
                 refusing to start so that nothing is deleted (data files hold object bytes \
                 only, small objects live in the index: it cannot be rebuilt from them). \
                 Restore {INDEX_FILE} from a backup, or move {} aside to start an empty store",
                index_path.display(),
                data_files,
                root.join("data").display(),
                root.display()
            );
        }
        std::fs::create_dir_all(root.join("data"))
            .with_context(|| format!("creating {}", root.display()))?;
        for i in 0..=255u8 {
            let dir = root.join("data").join(format!("{i:02x}"));
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        fsync_dir(&root.join("data"))?;
        let db = Database::builder()
            .set_cache_size(16 * 1024 * 1024)
            .create(&index_path)
            .with_context(|| format!("opening the index ({})", index_path.display()))?;
        check_identity(&db, root, data_files)?;
        {
            let txn = db.begin_write()?;
            txn.open_table(BUCKETS)?;
            txn.commit()?;
        }
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        let writer_thread = std::thread::Builder::new()
            .name("esb-s3-index-writer".into())
            .spawn(move || writer_loop(writer_db, rx))
            .context("starting the index writer thread")?;
        let store = Store {
            root: root.to_owned(),
            db,
            writer: std::sync::Mutex::new(Some(tx)),
            writer_thread: Some(writer_thread),
        };
        let removed = store
            .collect_garbage()
            .context("removing orphaned data files")?;
        if removed > 0 {
            tracing::info!(removed, "removed data files left by interrupted writes");
        }
        Ok(store)
    }

    /// Path of the data file with this id.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.root.join("data").join(&id[..2]).join(id)
    }

    /// A fresh data file id.
    pub fn new_data_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Removes data files that no index record references. A bucket whose table cannot be
    /// read fails the open (naming the bucket); one whose table is missing keeps every data
    /// file (nothing can be proven unreferenced then).
    fn collect_garbage(&self) -> anyhow::Result<usize> {
        let mut live: HashSet<String> = HashSet::new();
        let txn = self.db.begin_read()?;
        let buckets = txn.open_table(BUCKETS)?;
        for item in buckets.iter()? {
            let (name, _) = item?;
            let name = name.value().to_owned();
            let (objects, versions, uploads) =
                (obj_table(&name), ver_table(&name), mpu_table(&name));
            let mut record_segments = |v: &[u8]| -> anyhow::Result<()> {
                let rec = decode_record(v).map_err(store_anyhow)?;
                live.extend(rec.segments.into_iter().map(|s| s.id));
                Ok(())
            };
            if !scan_records(
                &txn,
                ObjectsDef::new(&objects),
                &name,
                "object",
                &mut record_segments,
            )? {
                tracing::warn!(bucket = %name, "the bucket's object table is missing: keeping every data file");
                return Ok(0);
            }
            // Buckets whose versioning was never configured have no version table.
            let versions = VersionsDef::new(&versions);
            scan_records(&txn, versions, &name, "version", &mut record_segments)?;
            let present = scan_records(
                &txn,
                UploadsDef::new(&uploads),
                &name,
                "multipart upload",
                |v| {
                    let up: UploadRecord = from_json(v).map_err(store_anyhow)?;
                    live.extend(up.into_part_segments().map(|s| s.id));
                    Ok(())
                },
            )?;
            if !present {
                tracing::warn!(bucket = %name, "the bucket's multipart table is missing: keeping every data file");
                return Ok(0);
            }
        }
        drop(txn);
        let mut removed = 0;
        for sub in std::fs::read_dir(self.root.join("data"))? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if !live.contains(&name) {
                    std::fs::remove_file(f.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Unlinks data files that are no longer referenced (after the commit that dropped them).
    pub fn remove_segments(&self, segments: &[Segment]) {
        for s in segments {
            if let Err(err) = std::fs::remove_file(self.data_path(&s.id)) {
                tracing::warn!(id = %s.id, %err, "could not remove an unreferenced data file");
            }
        }
    }

    /// Runs `f` in the next group-commit batch and waits until that batch is durable.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<StoreResult<T>>(1);
        let job: Job = Box::new(move |txn| {
            let result = f(txn);
            let fatal = matches!(result, Err(StoreError::Internal(_)));
            let done: Done = Box::new(move |batch_error| {
                let out = match batch_error {
                    Some(e) => Err(StoreError::Internal(anyhow::anyhow!("{e}"))),
                    None => result,
                };
                let _ = tx.send(out);
            });
            (fatal, done)
        });
        let sent = self
            .writer
            .lock()
            .map_err(|_| internal_err("writer lock poisoned"))?
            .as_ref()
            .ok_or_else(|| internal_err("the store is closing"))?
            .send(job);
        sent.map_err(|_| internal_err("the index writer stopped"))?;
        rx.recv()
            .map_err(|_| internal_err("the index write batch failed"))?
    }

    /// Runs `f` on the tables of `bucket` (which must exist) in the next write batch.
    fn write_objects<T: Send + 'static>(
        &self,
        bucket: &str,
        f: impl FnOnce(&mut Tables<'_>) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let bucket = bucket.to_owned();
        self.write(move |txn| f(&mut Tables::open(txn, &bucket)?))
    }

    /// Runs `f` on the upload table of `bucket` (which must exist) in the next write batch;
    /// `f` also gets the transaction and the upload's table key (key, upload id).
    fn write_upload<T: Send + 'static>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        f: impl FnOnce(&WriteTransaction, &mut UploadsTable<'_>, (&str, &str)) -> StoreResult<T>
            + Send
            + 'static,
    ) -> StoreResult<T> {
        let (bucket, key, upload_id) = (bucket.to_owned(), key.to_owned(), upload_id.to_owned());
        self.write(move |txn| {
            require_bucket(txn, &bucket)?;
            let mut uploads = txn.open_table(UploadsDef::new(&mpu_table(&bucket)))?;
            f(txn, &mut uploads, (&key, &upload_id))
        })
    }

    // ----- buckets -----------------------------------------------------------------

    pub fn create_bucket(&self, name: &str, region: &str, now_ms: i64) -> StoreResult<()> {
        let (name, region) = (name.to_owned(), region.to_owned());
        self.write(move |txn| {
            let (name, region) = (name.as_str(), region.as_str());
            let mut t = txn.open_table(BUCKETS)?;
            if t.get(name)?.is_some() {
                return Err(StoreError::BucketExists);
            }
            let rec = BucketRecord {
                created_ms: now_ms,
                region: region.to_owned(),
                versioning: None,
            };
            t.insert(name, to_json(&rec)?.as_slice())?;
            txn.open_table(ObjectsDef::new(&obj_table(name)))?;
            txn.open_table(UploadsDef::new(&mpu_table(name)))?;
            Ok(())
        })
    }

    pub fn bucket(&self, name: &str) -> StoreResult<BucketRecord> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BUCKETS)?;
        let v = t.get(name)?.ok_or(StoreError::NoSuchBucket)?;
        from_json(v.value())
    }

    pub fn list_buckets(&self) -> StoreResult<Vec<(String, BucketRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BUCKETS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), from_json(v.value())?));
        }
        Ok(out)
    }

    /// Deletes an empty bucket; its unfinished multipart uploads go with it.
    pub fn delete_bucket(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        let dropped = self.write(move |txn| {
            let name = name.as_str();
            let mut t = txn.open_table(BUCKETS)?;
            if t.get(name)?.is_none() {
                return Err(StoreError::NoSuchBucket);
            }
            let objs_name = obj_table(name);
            let vers_name = ver_table(name);
            {
                let objs = txn.open_table(ObjectsDef::new(&objs_name))?;
                if !objs.is_empty()? {
                    return Err(StoreError::BucketNotEmpty);
                }
                // Noncurrent versions and delete markers keep a bucket non-empty, as on S3.
                match txn.open_table(VersionsDef::new(&vers_name)) {
                    Ok(v) if !v.is_empty()? => return Err(StoreError::BucketNotEmpty),
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let mpu_name = mpu_table(name);
            let mut dropped = Vec::new();
            {
                let mpus = txn.open_table(UploadsDef::new(&mpu_name))?;
                for item in mpus.iter()? {
                    let (_, v) = item?;
                    let up: UploadRecord = from_json(v.value())?;
                    dropped.extend(up.into_part_segments());
                }
            }
            txn.delete_table(ObjectsDef::new(&objs_name))?;
            txn.delete_table(VersionsDef::new(&vers_name))?;
            txn.delete_table(UploadsDef::new(&mpu_name))?;
            t.remove(name)?;
            Ok(dropped)
        })?;
        self.remove_segments(&dropped);
        Ok(())
    }

    // ----- objects -----------------------------------------------------------------

    pub fn get_object(&self, bucket: &str, key: &str) -> StoreResult<StoredObject> {
        let txn = self.db.begin_read()?;
        let name = obj_table(bucket);
        let t = match txn.open_table(ObjectsDef::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(StoreError::NoSuchBucket),
            Err(e) => return Err(e.into()),
        };
        let v = t.get(key)?.ok_or(StoreError::NoSuchKey)?;
        decode_object(v.value())
    }

    /// Inserts or replaces an object (a new version in a versioned bucket); returns the
    /// data files no longer referenced and the new version's id (see [`Tables::put`]).
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        inline: &[u8],
        cond: &WriteCondition,
    ) -> StoreResult<(Vec<Segment>, Option<String>)> {
        // Encoded here, off the writer thread (re-encoded there only for a versioned bucket).
        let value = encode_object(record, inline)?;
        let (key, cond) = (key.to_owned(), cond.clone());
        self.write_objects(bucket, move |t| {
            let current = current_object(&t.objects, &key)?;
            cond.check(current.as_ref().map(|c| &c.record))?;
            t.put(&key, &value)
        })
    }

    /// Replaces the tags of an existing object.
    pub fn set_tags(
        &self,
        bucket: &str,
        key: &str,
        tags: Vec<(String, String)>,
    ) -> StoreResult<()> {
        let key = key.to_owned();
        self.write_objects(bucket, move |t| {
            let mut obj = current_object(&t.objects, &key)?.ok_or(StoreError::NoSuchKey)?;
            obj.record.tags = tags;
            let value = encode_object(&obj.record, obj.inline.as_deref().unwrap_or_default())?;
            if let Some(versions) = &mut t.versions {
                if let Some(at) = find_version(versions, &key, obj.record.version())? {
                    versions.insert((key.as_str(), at), value.as_slice())?;
                }
            }
            t.objects.insert(key.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// Deletes an object (a missing key is not an error), or with `version_id` that
    /// version of it: see [`Tables::delete`].
    pub fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
        version_id: Option<&str>,
    ) -> StoreResult<Deleted> {
        let item = DeleteItem {
            key: key.to_owned(),
            if_match: if_match.map(str::to_owned),
            version_id: version_id.map(str::to_owned),
        };
        self.write_objects(bucket, move |t| t.delete(&item)?)
    }

    /// Deletes many keys in one commit (DeleteObjects). The outer error concerns the whole
    /// request (no such bucket, index failure); the inner results are per key.
    pub fn delete_objects(
        &self,
        bucket: &str,
        items: Vec<DeleteItem>,
    ) -> StoreResult<Vec<StoreResult<Deleted>>> {
        self.write_objects(bucket, move |t| {
            let mut out = Vec::with_capacity(items.len());
            for item in &items {
                out.push(t.delete(item)?);
            }
            Ok(out)
        })
    }

    /// Sets a bucket's versioning to `Enabled` or `Suspended`. The first time, the bucket's
    /// objects become its `null` versions in the version table.
    pub fn set_versioning(&self, bucket: &str, status: &str) -> StoreResult<()> {
        let (bucket, status) = (bucket.to_owned(), status.to_owned());
        self.write(move |txn| {
            let mut buckets = txn.open_table(BUCKETS)?;
            let mut rec: BucketRecord = match buckets.get(bucket.as_str())? {
                Some(v) => from_json(v.value())?,
                None => return Err(StoreError::NoSuchBucket),
            };
            let first = rec.versioning.is_none();
            rec.versioning = Some(status);
            let value = to_json(&rec)?;
            if first {
                // Every object becomes its key's `null` version, marked as such (so that
                // reads of it in a versioned bucket answer `x-amz-version-id: null`), in
                // both tables; in slices, so that memory stays bounded.
                let mut objects = txn.open_table(ObjectsDef::new(&obj_table(&bucket)))?;
                let mut versions = txn.open_table(VersionsDef::new(&ver_table(&bucket)))?;
                let mut after: Option<String> = None;
                loop {
                    let mut slice: Vec<(String, Vec<u8>)> = Vec::new();
                    let range = match &after {
                        Some(a) => objects.range::<&str>((
                            std::ops::Bound::Excluded(a.as_str()),
                            std::ops::Bound::Unbounded,
                        ))?,
                        None => objects.range::<&str>(..)?,
                    };
                    for item in range.take(1000) {
                        let (k, v) = item?;
                        let (mut record, inline) = split_object(v.value())?;
                        record.version_id = Some("null".to_owned());
                        slice.push((k.value().to_owned(), encode_object(&record, inline)?));
                    }
                    let Some((last, _)) = slice.last() else { break };
                    after = Some(last.clone());
                    for (k, value) in &slice {
                        let seq = next_seq(txn)?;
                        versions.insert((k.as_str(), u64::MAX - seq), value.as_slice())?;
                        objects.insert(k.as_str(), value.as_slice())?;
                    }
                }
            }
            buckets.insert(bucket.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// One version of an object (`null` included); it may be a delete marker.
    pub fn get_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> StoreResult<StoredObject> {
        let txn = self.db.begin_read()?;
        let rec: BucketRecord = {
            let t = txn.open_table(BUCKETS)?;
            let v = t.get(bucket)?.ok_or(StoreError::NoSuchBucket)?;
            from_json(v.value())?
        };
        if Versioning::of(&rec) == Versioning::Off {
            if version_id != "null" {
                return Err(StoreError::NoSuchVersion);
            }
            let t = txn.open_table(ObjectsDef::new(&obj_table(bucket)))?;
            return current_object(&t, key)?.ok_or(StoreError::NoSuchVersion);
        }
        let t = txn.open_table(VersionsDef::new(&ver_table(bucket)))?;
        let at = find_version(&t, key, version_id)?.ok_or(StoreError::NoSuchVersion)?;
        let v = t.get((key, at))?.ok_or(StoreError::NoSuchVersion)?;
        decode_object(v.value())
    }

    /// Lists versions (newest first within a key) after the markers, grouping by
    /// `delimiter`; `max` counts versions, delete markers and common prefixes together.
    /// A bucket whose versioning was never configured lists its objects as `null` versions.
    pub fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        version_marker: Option<&str>,
        max: usize,
    ) -> StoreResult<VersionList> {
        let txn = self.db.begin_read()?;
        let rec: BucketRecord = {
            let t = txn.open_table(BUCKETS)?;
            let v = t.get(bucket)?.ok_or(StoreError::NoSuchBucket)?;
            from_json(v.value())?
        };
        if Versioning::of(&rec) == Versioning::Off {
            drop(txn);
            let r = self.list_objects(bucket, prefix, delimiter, key_marker, max)?;
            let entries = r
                .entries
                .into_iter()
                .map(|e| match e {
                    ListEntry::Object(key, record) => VersionEntry::Version {
                        key,
                        record,
                        is_latest: true,
                    },
                    ListEntry::Prefix(p) => VersionEntry::Prefix(p),
                })
                .collect();
            return Ok(VersionList {
                entries,
                truncated: r.truncated,
            });
        }
        let t = txn.open_table(VersionsDef::new(&ver_table(bucket)))?;
        let mut entries = Vec::new();
        if max == 0 {
            return Ok(VersionList {
                entries,
                truncated: false,
            });
        }
        // Where to start: after one version of the marker key, or after the whole key.
        let after: Option<(&str, u64)> = match (key_marker, version_marker) {
            (Some(k), Some(v)) if !v.is_empty() => {
                let at = match version_seq(v) {
                    Some(seq) => Some(u64::MAX - seq),
                    None => find_version(&t, k, v)?,
                };
                Some((k, at.unwrap_or(u64::MAX)))
            }
            (Some(k), _) => Some((k, u64::MAX)),
            (None, _) => None,
        };
        let start: (&str, u64) = match after {
            Some((k, at)) if k >= prefix => (k, at),
            _ => (prefix, 0),
        };
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut truncated = false;
        let mut last_prefix: Option<String> = None;
        let mut prev_key: Option<String> = None;
        for item in t.range(start..)? {
            let (k, v) = item?;
            let (key, at) = k.value();
            // Up to and including the marker (a key marker alone: every version of it).
            if after.is_some_and(|a| (key, at) <= a) {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            let group = delimiter.and_then(|d| key[prefix.len()..].find(d).map(|i| (i, d.len())));
            let entry = match group {
                Some((i, dlen)) => {
                    let cp = &key[..prefix.len() + i + dlen];
                    // Already returned, or at/before the marker: skip the whole group.
                    if last_prefix.as_deref() == Some(cp) || key_marker.is_some_and(|m| cp <= m) {
                        continue;
                    }
                    last_prefix = Some(cp.to_owned());
                    VersionEntry::Prefix(cp.to_owned())
                }
                None => {
                    let is_latest = match prev_key.as_deref() {
                        Some(p) => p != key,
                        // The first entry of the page: the newest of its key unless an
                        // entry of the same key comes before it.
                        None => t.range((key, 0)..(key, at))?.next().is_none(),
                    };
                    VersionEntry::Version {
                        key: key.to_owned(),
                        record: Box::new(decode_record(v.value())?),
                        is_latest,
                    }
                }
            };
            prev_key = Some(key.to_owned());
            if entries.len() == max {
                truncated = true;
                break;
            }
            entries.push(entry);
        }
        Ok(VersionList { entries, truncated })
    }

    /// The version id of the delete marker that is the newest version of `key`, if it is
    /// one (a GET of the key then answers 404 with `x-amz-delete-marker`, as on S3).
    pub fn current_marker(&self, bucket: &str, key: &str) -> StoreResult<Option<String>> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(VersionsDef::new(&ver_table(bucket))) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let newest = t.range((key, 0)..=(key, u64::MAX))?.next().transpose()?;
        match newest {
            Some((_, v)) => {
                let rec = decode_record(v.value())?;
                Ok(rec.delete_marker.then(|| rec.version().to_owned()))
            }
            None => Ok(None),
        }
    }

    /// The bucket's versioning state as configured (`None`: never configured).
    pub fn versioning(&self, bucket: &str) -> StoreResult<Option<String>> {
        Ok(self.bucket(bucket)?.versioning)
    }

    /// Lists keys in byte order after `after` (exclusive), grouping by `delimiter`.
    /// `max` counts keys and common prefixes together.
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> StoreResult<ListResult> {
        let txn = self.db.begin_read()?;
        require_bucket_read(&txn, bucket)?;
        let t = txn.open_table(ObjectsDef::new(&obj_table(bucket)))?;
        if max == 0 {
            // `max-keys=0`: an empty page that is not truncated, as S3 answers it.
            return Ok(ListResult {
                entries: Vec::new(),
                truncated: false,
            });
        }
        let start: &str = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut last_prefix: Option<String> = None;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        for item in t.range(start..)? {
            let (k, v) = item?;
            let key = k.value();
            if after == Some(key) {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            let entry =
                match delimiter.and_then(|d| key[prefix.len()..].find(d).map(|i| (i, d.len()))) {
                    Some((i, dlen)) => {
                        let cp = &key[..prefix.len() + i + dlen];
                        // Already returned, or at/before the marker: skip the whole group.
                        if last_prefix.as_deref() == Some(cp) || after.is_some_and(|a| cp <= a) {
                            continue;
                        }
                        last_prefix = Some(cp.to_owned());
                        ListEntry::Prefix(cp.to_owned())
                    }
                    None => ListEntry::Object(key.to_owned(), Box::new(decode_record(v.value())?)),
                };
            if entries.len() == max {
                truncated = true;
                break;
            }
            entries.push(entry);
        }
        Ok(ListResult { entries, truncated })
    }

    // ----- multipart uploads ---------------------------------------------------------

    pub fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        rec: &UploadRecord,
    ) -> StoreResult<()> {
        let value = to_json(rec)?;
        self.write_upload(bucket, key, upload_id, move |_, uploads, id| {
            uploads.insert(id, value.as_slice())?;
            Ok(())
        })
    }

    pub fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> StoreResult<UploadRecord> {
        let txn = self.db.begin_read()?;
        require_bucket_read(&txn, bucket)?;
        let t = txn.open_table(UploadsDef::new(&mpu_table(bucket)))?;
        current_upload(&t, (key, upload_id))
    }

    /// Records a part; returns the data file of the part it replaces, if any.
    pub fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: u32,
        part: PartRecord,
    ) -> StoreResult<Option<Segment>> {
        self.write_upload(bucket, key, upload_id, move |_, uploads, id| {
            let mut up = current_upload(uploads, id)?;
            let old = up.parts.insert(number, part).and_then(|p| p.segment);
            uploads.insert(id, to_json(&up)?.as_slice())?;
            Ok(old)
        })
    }

    /// Removes an upload; returns all its part files.
    pub fn abort_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> StoreResult<Vec<Segment>> {
        self.write_upload(bucket, key, upload_id, move |_, uploads, id| {
            let up: UploadRecord = match uploads.remove(id)? {
                Some(v) => from_json(v.value())?,
                None => return Err(StoreError::NoSuchUpload),
            };
            Ok(up.into_part_segments().collect())
        })
    }

    /// Atomically turns an upload into an object. `build` sees the upload record and
    /// returns the object record (or an error, leaving everything unchanged). Returns the
    /// object record and the data files no longer referenced (unused parts, old version).
    pub fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        cond: &WriteCondition,
        build: impl FnOnce(&UploadRecord) -> StoreResult<ObjectRecord> + Send + 'static,
    ) -> StoreResult<(ObjectRecord, Vec<Segment>)> {
        let (bucket_name, cond) = (bucket.to_owned(), cond.clone());
        self.write_upload(bucket, key, upload_id, move |txn, uploads, id| {
            let bucket = bucket_name;
            // Validate everything first: a failure must leave the batch transaction untouched.
            let up = current_upload(uploads, id)?;
            let record = build(&up)?;
            let value = encode_object(&record, &[])?;
            let mut t = Tables::open(txn, &bucket)?;
            let (key, _) = id;
            let current = current_object(&t.objects, key)?;
            cond.check(current.as_ref().map(|c| &c.record))?;
            uploads.remove(id)?;
            let (replaced, version_id) = t.put(key, &value)?;
            let used: HashSet<&str> = record.segments.iter().map(|s| s.id.as_str()).collect();
            let mut unused: Vec<Segment> = up
                .into_part_segments()
                .filter(|s| !used.contains(s.id.as_str()))
                .collect();
            unused.extend(replaced);
            let mut record = record;
            record.version_id = version_id;
            Ok((record, unused))
        })
    }

    /// Lists uploads in (key, upload id) order after the markers.
    pub fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        key_marker: Option<&str>,
        upload_id_marker: Option<&str>,
    ) -> StoreResult<Vec<(String, String, UploadRecord)>> {
        let txn = self.db.begin_read()?;
        require_bucket_read(&txn, bucket)?;
        let t = txn.open_table(UploadsDef::new(&mpu_table(bucket)))?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let (key, id) = k.value();
            if !key.starts_with(prefix) {
                continue;
            }
            if let Some(km) = key_marker {
                let after = match upload_id_marker {
                    Some(im) if !im.is_empty() => (key, id) > (km, im),
                    _ => key > km,
                };
                if !after {
                    continue;
                }
            }
            out.push((key.to_owned(), id.to_owned(), from_json(v.value())?));
        }
        Ok(out)
    }
}

/// The current version of `key` in an object table, if any.
fn current_object(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> StoreResult<Option<StoredObject>> {
    t.get(key)?.map(|v| decode_object(v.value())).transpose()
}

/// The record of an upload, which must exist.
fn current_upload(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    id: (&str, &str),
) -> StoreResult<UploadRecord> {
    match t.get(id)? {
        Some(v) => from_json(v.value()),
        None => Err(StoreError::NoSuchUpload),
    }
}

/// One key of a delete: DeleteObject, or an item of DeleteObjects.
#[derive(Debug, Clone)]
pub struct DeleteItem {
    pub key: String,
    /// `If-Match` / the item's ETag: delete only while the current version has it.
    pub if_match: Option<String>,
    /// Delete this version (permanently) rather than the current object.
    pub version_id: Option<String>,
}

/// A bucket's tables in a write transaction, with its versioning state. The object table
/// holds each key's current version (never a delete marker); a versioned bucket's
/// version table holds every version, the current one included (the same record).
pub(crate) struct Tables<'t> {
    txn: &'t WriteTransaction,
    versioning: Versioning,
    objects: ObjectsTable<'t>,
    /// Open when the bucket's versioning was ever configured.
    versions: Option<VersionsTable<'t>>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, bucket: &str) -> StoreResult<Tables<'t>> {
        let rec: BucketRecord = {
            let buckets = txn.open_table(BUCKETS)?;
            let v = buckets.get(bucket)?.ok_or(StoreError::NoSuchBucket)?;
            from_json(v.value())?
        };
        let versioning = Versioning::of(&rec);
        let objects = txn.open_table(ObjectsDef::new(&obj_table(bucket)))?;
        let versions = match versioning {
            Versioning::Off => None,
            _ => Some(txn.open_table(VersionsDef::new(&ver_table(bucket)))?),
        };
        Ok(Tables {
            txn,
            versioning,
            objects,
            versions,
        })
    }

    /// Makes the object `encoded` (see [`encode_object`]) the current version of `key`.
    /// Returns the data files no longer referenced (the replaced object, or the replaced
    /// `null` version of a suspended bucket) and the new version's id (`null` when
    /// suspended; `None` in a bucket whose versioning was never configured, where the
    /// encoded value is stored as it is).
    fn put(&mut self, key: &str, encoded: &[u8]) -> StoreResult<(Vec<Segment>, Option<String>)> {
        let Some(versions) = &mut self.versions else {
            let old = self
                .objects
                .insert(key, encoded)?
                .map(|v| decode_record(v.value()))
                .transpose()?;
            return Ok((old.map(|o| o.segments).unwrap_or_default(), None));
        };
        let unused = match self.versioning {
            Versioning::Suspended => remove_null(versions, key)?,
            _ => Vec::new(),
        };
        let seq = next_seq(self.txn)?;
        let (mut record, inline) = split_object(encoded)?;
        record.version_id = Some(self.versioning.new_version(seq));
        let value = encode_object(&record, inline)?;
        versions.insert((key, u64::MAX - seq), value.as_slice())?;
        self.objects.insert(key, value.as_slice())?;
        Ok((unused, Some(record.version().to_owned())))
    }

    /// Deletes per `item`. Without a version id: the object (unversioned bucket), or a
    /// new delete marker (versioned: the current version is kept as a noncurrent one;
    /// suspended: the `null` version is replaced by a `null` marker). With a version id:
    /// that version, permanently; when it was the newest, the next one becomes current
    /// (deleting a delete marker restores the object). A version that does not exist is
    /// not an error. The outer error is an index failure (fatal for the batch); the inner
    /// one a per-key answer (NoSuchKey, PreconditionFailed) that changed nothing.
    fn delete(&mut self, item: &DeleteItem) -> StoreResult<StoreResult<Deleted>> {
        let key = item.key.as_str();
        if let Some(vid) = &item.version_id {
            return self.delete_version(key, vid).map(Ok);
        }
        let current = self
            .objects
            .get(key)?
            .map(|v| decode_record(v.value()))
            .transpose()?;
        if let Some(want) = &item.if_match {
            match &current {
                None => return Ok(Err(StoreError::NoSuchKey)),
                Some(c) if want != "*" && *want != c.etag => {
                    return Ok(Err(StoreError::PreconditionFailed))
                }
                Some(_) => {}
            }
        }
        let Some(versions) = &mut self.versions else {
            if current.is_some() {
                self.objects.remove(key)?;
            }
            return Ok(Ok(Deleted {
                unused: current.map(|c| c.segments).unwrap_or_default(),
                ..Deleted::default()
            }));
        };
        let unused = match self.versioning {
            Versioning::Suspended => remove_null(versions, key)?,
            _ => Vec::new(),
        };
        let seq = next_seq(self.txn)?;
        let marker = ObjectRecord {
            size: 0,
            etag: String::new(),
            last_modified_ms: now_ms(),
            headers: StdHeaders::default(),
            metadata: BTreeMap::new(),
            tags: Vec::new(),
            checksum: None,
            part_sizes: Vec::new(),
            segments: Vec::new(),
            version_id: Some(self.versioning.new_version(seq)),
            delete_marker: true,
        };
        versions.insert(
            (key, u64::MAX - seq),
            encode_object(&marker, &[])?.as_slice(),
        )?;
        self.objects.remove(key)?;
        Ok(Ok(Deleted {
            unused,
            version_id: Some(marker.version().to_owned()),
            delete_marker: true,
        }))
    }

    /// Removes one version of `key` (see [`Tables::delete`]).
    fn delete_version(&mut self, key: &str, vid: &str) -> StoreResult<Deleted> {
        let Some(versions) = &mut self.versions else {
            if vid != "null" {
                return Ok(Deleted::default());
            }
            let old = self
                .objects
                .remove(key)?
                .map(|v| decode_record(v.value()))
                .transpose()?;
            return Ok(Deleted {
                unused: old.map(|o| o.segments).unwrap_or_default(),
                version_id: Some("null".to_owned()),
                delete_marker: false,
            });
        };
        let Some(at) = find_version(versions, key, vid)? else {
            return Ok(Deleted {
                version_id: Some(vid.to_owned()),
                ..Deleted::default()
            });
        };
        let removed = versions
            .remove((key, at))?
            .map(|v| decode_record(v.value()))
            .transpose()?
            .ok_or_else(|| internal_err("a version vanished inside its transaction"))?;
        // The newest remaining version, if any, is the current one unless it is a marker.
        let newest = versions
            .range((key, 0)..=(key, u64::MAX))?
            .next()
            .transpose()?
            .map(|(_, v)| v.value().to_vec());
        match newest {
            Some(raw) if !decode_record(&raw)?.delete_marker => {
                self.objects.insert(key, raw.as_slice())?;
            }
            _ => {
                self.objects.remove(key)?;
            }
        }
        Ok(Deleted {
            unused: removed.segments,
            version_id: Some(vid.to_owned()),
            delete_marker: removed.delete_marker,
        })
    }
}

/// The next version sequence number (store-wide, increasing, kept in `META`).
fn next_seq(txn: &WriteTransaction) -> StoreResult<u64> {
    let mut meta = txn.open_table(META)?;
    let last = meta
        .get(VERSION_SEQ)?
        .and_then(|v| v.value().parse::<u64>().ok())
        .unwrap_or(0);
    let next = last + 1;
    meta.insert(VERSION_SEQ, next.to_string().as_str())?;
    Ok(next)
}

/// Where version `vid` (or `null`) of `key` is in a version table.
fn find_version(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    key: &str,
    vid: &str,
) -> StoreResult<Option<u64>> {
    if vid == "null" {
        for item in t.range((key, 0)..=(key, u64::MAX))? {
            let (k, v) = item?;
            if decode_record(v.value())?.version() == "null" {
                return Ok(Some(k.value().1));
            }
        }
        return Ok(None);
    }
    let Some(seq) = version_seq(vid) else {
        return Ok(None);
    };
    let at = u64::MAX - seq;
    match t.get((key, at))? {
        Some(v) if decode_record(v.value())?.version_id.as_deref() == Some(vid) => Ok(Some(at)),
        _ => Ok(None),
    }
}

/// Removes the `null` version of `key` (suspended versioning); returns its data files.
fn remove_null(versions: &mut VersionsTable<'_>, key: &str) -> StoreResult<Vec<Segment>> {
    let Some(at) = find_version(versions, key, "null")? else {
        return Ok(Vec::new());
    };
    let old = versions
        .remove((key, at))?
        .map(|v| decode_record(v.value()))
        .transpose()?;
    Ok(old.map(|o| o.segments).unwrap_or_default())
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// Fails with NoSuchBucket unless the bucket table lists `bucket`.
fn check_bucket(
    buckets: &impl ReadableTable<&'static str, &'static [u8]>,
    bucket: &str,
) -> StoreResult<()> {
    if buckets.get(bucket)?.is_none() {
        return Err(StoreError::NoSuchBucket);
    }
    Ok(())
}

fn require_bucket(txn: &WriteTransaction, bucket: &str) -> StoreResult<()> {
    check_bucket(&txn.open_table(BUCKETS)?, bucket)
}

fn require_bucket_read(txn: &redb::ReadTransaction, bucket: &str) -> StoreResult<()> {
    check_bucket(&txn.open_table(BUCKETS)?, bucket)
}

fn internal_err(msg: &str) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("{msg}"))
}

fn store_anyhow(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Internal(e) => e,
        other => anyhow::anyhow!("{other:?}"),
    }
}

/// Number of files under `root/data/xx/` (0 when there is no data directory).
fn count_data_files(root: &Path) -> anyhow::Result<usize> {
    let data = root.join("data");
    let entries = match std::fs::read_dir(&data) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", data.display()))),
    };
    let mut n = 0;
    for sub in entries {
        let sub = sub?;
        if sub.file_type()?.is_dir() {
            n += std::fs::read_dir(sub.path())
                .with_context(|| format!("reading {}", sub.path().display()))?
                .count();
        }
    }
    Ok(n)
}

/// Checks that the index belongs to the data files under `root` (see the module docs),
/// recording a new id in both when the store is new (or was made before ids existed).
fn check_identity(db: &Database, root: &Path, data_files: usize) -> anyhow::Result<()> {
    let file = root.join(STORE_ID_FILE);
    let on_disk = match std::fs::read_to_string(&file) {
        Ok(s) => Some(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
    };
    let in_index = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => meta.get("store_id")?.map(|v| v.value().to_owned()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(anyhow::Error::new(e).context("reading the index's store id")),
        }
    };
    let index = root.join(INDEX_FILE);
    match (in_index, on_disk) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(a), Some(b)) => anyhow::bail!(
            "{}: this index (store id {a}) is not the one the data files were written with \
             ({} says {b}); refusing to start so that no data file is deleted. Put back the \
             store's own {INDEX_FILE}",
            index.display(),
            file.display()
        ),
        (Some(a), None) if data_files > 0 => anyhow::bail!(
            "{} is missing while {} names store id {a} and {data_files} data file(s) exist; \
             refusing to start (no data file was deleted). Write {a} into {} if this index \
             belongs to these data files",
            file.display(),
            index.display(),
            file.display()
        ),
        (None, Some(b)) if data_files > 0 => anyhow::bail!(
            "{}: the index is new or was replaced (it has no store id) while {} names store \
             {b} and {data_files} data file(s) exist; refusing to start so that nothing is \
             deleted. Put back the store's own {INDEX_FILE}",
            index.display(),
            file.display()
        ),
        (Some(a), None) => write_store_id(root, &a),
        (None, None) if data_files > 0 && index_is_empty(db)? => anyhow::bail!(
            "{}: the index is empty while {data_files} data file(s) exist; refusing to start \
             so that nothing is deleted. Put back the store's own {INDEX_FILE}",
            index.display()
        ),
        (None, known) => {
            // A new store, or one made before ids existed (its index is the authority):
            // record the id in the file first, then in the index.
            let id = known.unwrap_or_else(Store::new_data_id);
            write_store_id(root, &id)?;
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert("store_id", id.as_str())?;
            txn.commit()?;
            Ok(())
        }
    }
}

/// Whether the index lists no bucket at all (or has no bucket table yet).
fn index_is_empty(db: &Database) -> anyhow::Result<bool> {
    let txn = db.begin_read()?;
    match txn.open_table(BUCKETS) {
        Ok(t) => Ok(t.is_empty()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
        Err(e) => Err(anyhow::Error::new(e).context("reading the index's bucket table")),
    }
}

/// Writes `root/store-id` durably (temporary file, fsync, rename, fsync of the directory).
fn write_store_id(root: &Path, id: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = root.join(STORE_ID_FILE);
    let tmp = root.join(format!("{STORE_ID_FILE}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    fsync_dir(root)?;
    Ok(())
}

/// fsync a directory so that entries created in it survive a crash.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Calls `each` with every value of bucket `bucket`'s table `def` (its `what` records);
/// false when the table does not exist. An unreadable table or record fails, naming both.
fn scan_records<K: redb::Key + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, &'static [u8]>,
    bucket: &str,
    what: &str,
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let t = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "bucket {bucket:?}: cannot open its {what} table in the index; refusing to \
                 start (no data file was removed)"
            )))
        }
    };
    for item in t.iter()? {
        let (_, v) = item?;
        each(v.value())
            .with_context(|| format!("bucket {bucket:?}: reading its {what} records"))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(etag: &str) -> ObjectRecord {
        ObjectRecord {
            size: 1,
            etag: etag.into(),
            last_modified_ms: 0,
            headers: StdHeaders::default(),
            metadata: BTreeMap::new(),
            tags: Vec::new(),
            checksum: None,
            part_sizes: Vec::new(),
            segments: Vec::new(),
            version_id: None,
            delete_marker: false,
        }
    }

    fn keys(r: &ListResult) -> Vec<String> {
        r.entries
            .iter()
            .map(|e| match e {
                ListEntry::Object(k, _) => k.clone(),
                ListEntry::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }

    #[test]
    fn failing_writes_in_a_batch_leave_the_others_intact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.create_bucket("bkt", "r", 0).unwrap();
        store
            .put_object(
                "bkt",
                "exists",
                &record("e0"),
                b"x",
                &WriteCondition::default(),
            )
            .unwrap();
        // Many concurrent writers: successes and precondition failures share batches.
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let s = store.clone();
                std::thread::spawn(move || {
                    let cond = WriteCondition {
                        if_none_match_any: i % 2 == 0,
                        if_match: None,
                    };
                    let key = if i % 2 == 0 {
                        "exists".to_owned()
                    } else {
                        format!("k{i:02}")
                    };
                    s.put_object("bkt", &key, &record("e1"), b"y", &cond)
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let r = h.join().unwrap();
            if i % 2 == 0 {
                assert!(
                    matches!(r, Err(StoreError::PreconditionFailed)),
                    "{i}: {r:?}"
                );
            } else {
                assert!(r.is_ok(), "{i}: {r:?}");
            }
        }
        assert_eq!(store.get_object("bkt", "exists").unwrap().record.etag, "e0");
        let all = store.list_objects("bkt", "", None, None, 1000).unwrap();
        assert_eq!(all.entries.len(), 33);
        assert!(matches!(
            store.put_object("nope", "k", &record("e"), b"", &WriteCondition::default()),
            Err(StoreError::NoSuchBucket)
        ));
        assert!(matches!(
            store.delete_bucket("bkt"),
            Err(StoreError::BucketNotEmpty)
        ));
    }

    #[test]
    fn listing_groups_prefixes_and_resumes_after_markers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_bucket("bkt", "r", 0).unwrap();
        for k in ["a", "a/1", "a/2", "a/b/3", "b", "c/x", "c/y", "d"] {
            store
                .put_object("bkt", k, &record("e"), b"", &WriteCondition::default())
                .unwrap();
        }
        let r = store
            .list_objects("bkt", "", Some("/"), None, 1000)
            .unwrap();
        assert_eq!(keys(&r), ["a", "a/*", "b", "c/*", "d"]);
        let r = store.list_objects("bkt", "", Some("/"), None, 2).unwrap();
        assert_eq!(keys(&r), ["a", "a/*"]);
        assert!(r.truncated);
        // Resuming after a common prefix skips the whole group.
        let r = store
            .list_objects("bkt", "", Some("/"), Some("a/"), 2)
            .unwrap();
        assert_eq!(keys(&r), ["b", "c/*"]);
        let r = store
            .list_objects("bkt", "a/", Some("/"), None, 1000)
            .unwrap();
        assert_eq!(keys(&r), ["a/1", "a/2", "a/b/*"]);
        let r = store.list_objects("bkt", "", None, Some("a/2"), 3).unwrap();
        assert_eq!(keys(&r), ["a/b/3", "b", "c/x"]);
        let r = store.list_objects("bkt", "zzz", None, None, 10).unwrap();
        assert!(r.entries.is_empty() && !r.truncated);
    }

    #[test]
    fn reopening_removes_unreferenced_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = Store::open(dir.path()).unwrap();
            store.create_bucket("bkt", "r", 0).unwrap();
            let kept = Store::new_data_id();
            std::fs::write(store.data_path(&kept), b"kept").unwrap();
            let mut rec = record("e");
            rec.segments = vec![Segment {
                id: kept.clone(),
                len: 4,
            }];
            store
                .put_object("bkt", "k", &rec, b"", &WriteCondition::default())
                .unwrap();
            let orphan = Store::new_data_id();
            std::fs::write(store.data_path(&orphan), b"orphan").unwrap();
            (kept, orphan)
        };
        let store = Store::open(dir.path()).unwrap();
        assert!(store.data_path(&id.0).exists());
        assert!(!store.data_path(&id.1).exists());
    }

    #[test]
    fn versions_markers_and_their_files_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cond = WriteCondition::default();
        let file_id = Store::new_data_id();
        let (v1, v2) = {
            let store = Store::open(dir.path()).unwrap();
            store.create_bucket("bkt", "r", 0).unwrap();
            // An object from before versioning becomes the null version.
            store
                .put_object("bkt", "k", &record("e0"), b"0", &cond)
                .unwrap();
            store.set_versioning("bkt", "Enabled").unwrap();
            std::fs::write(store.data_path(&file_id), b"big").unwrap();
            let mut rec = record("e1");
            rec.segments = vec![Segment {
                id: file_id.clone(),
                len: 3,
            }];
            let v1 = store.put_object("bkt", "k", &rec, b"", &cond).unwrap();
            let v2 = store
                .put_object("bkt", "k", &record("e2"), b"2", &cond)
                .unwrap();
            assert!(
                v1.0.is_empty() && v2.0.is_empty(),
                "versions keep their files"
            );
            let d = store.delete_object("bkt", "k", None, None).unwrap();
            assert!(d.delete_marker && d.unused.is_empty());
            assert!(matches!(
                store.get_object("bkt", "k"),
                Err(StoreError::NoSuchKey)
            ));
            (v1.1.unwrap(), v2.1.unwrap())
        };
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store.data_path(&file_id).exists(),
            "a noncurrent version's file is kept"
        );
        let l = store
            .list_versions("bkt", "", None, None, None, 1000)
            .unwrap();
        let got: Vec<(String, bool, bool)> = l
            .entries
            .iter()
            .map(|e| match e {
                VersionEntry::Version {
                    record, is_latest, ..
                } => (
                    record.version().to_owned(),
                    record.delete_marker,
                    *is_latest,
                ),
                VersionEntry::Prefix(p) => (p.clone(), false, false),
            })
            .collect();
        assert_eq!(got.len(), 4);
        assert!(got[0].1 && got[0].2, "the marker is the latest");
        assert_eq!(
            got[1..],
            [
                (v2.clone(), false, false),
                (v1.clone(), false, false),
                ("null".to_owned(), false, false)
            ]
        );
        // Deleting the marker makes v2 current again; deleting v1 frees its file.
        store
            .delete_object("bkt", "k", None, Some(&got[0].0))
            .unwrap();
        assert_eq!(store.get_object("bkt", "k").unwrap().record.etag, "e2");
        let d = store.delete_object("bkt", "k", None, Some(&v1)).unwrap();
        assert_eq!(d.unused.len(), 1);
        assert!(matches!(
            store.delete_bucket("bkt"),
            Err(StoreError::BucketNotEmpty)
        ));
    }

    /// A store with one bucket, a large object (in a data file) and a small one (inline).
    fn filled(dir: &Path) -> String {
        let store = Store::open(dir).unwrap();
        store.create_bucket("bkt", "r", 0).unwrap();
        let id = Store::new_data_id();
        std::fs::write(store.data_path(&id), b"big").unwrap();
        let mut rec = record("e");
        rec.segments = vec![Segment {
            id: id.clone(),
            len: 3,
        }];
        let cond = WriteCondition::default();
        store.put_object("bkt", "big", &rec, b"", &cond).unwrap();
        store
            .put_object("bkt", "small", &record("s"), b"x", &cond)
            .unwrap();
        id
    }

    #[test]
    fn a_missing_index_refuses_to_start_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let id = filled(dir.path());
        let index = dir.path().join(INDEX_FILE);
        let saved = std::fs::read(&index).unwrap();
        std::fs::remove_file(&index).unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().unwrap());
        assert!(
            err.contains("index.redb") && err.contains("refusing"),
            "{err}"
        );
        assert!(!index.exists(), "no new index was created");
        assert!(dir.path().join("data").join(&id[..2]).join(&id).exists());
        // Put back, everything is there.
        std::fs::write(&index, saved).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.get_object("bkt", "big").unwrap().record.segments[0].id,
            id
        );
        assert!(store.data_path(&id).exists());
        assert_eq!(
            &store.get_object("bkt", "small").unwrap().inline.unwrap()[..],
            b"x"
        );
    }

    #[test]
    fn a_foreign_or_new_index_refuses_to_start_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let id = filled(dir.path());
        // Another store's index in its place.
        let other = tempfile::tempdir().unwrap();
        drop(Store::open(other.path()).unwrap());
        let index = dir.path().join(INDEX_FILE);
        let saved = std::fs::read(&index).unwrap();
        std::fs::copy(other.path().join(INDEX_FILE), &index).unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().unwrap());
        assert!(err.contains("not the one"), "{err}");
        assert!(dir.path().join("data").join(&id[..2]).join(&id).exists());
        // An empty file in its place (a new index): refused too.
        std::fs::write(&index, b"").unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().unwrap());
        assert!(err.contains("refusing"), "{err}");
        assert!(dir.path().join("data").join(&id[..2]).join(&id).exists());
        std::fs::write(&index, saved).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.get_object("bkt", "big").is_ok());
        assert!(store.data_path(&id).exists());
    }

    #[test]
    fn an_empty_index_of_a_store_made_before_store_ids_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let id = filled(dir.path());
        std::fs::remove_file(dir.path().join(STORE_ID_FILE)).unwrap();
        std::fs::write(dir.path().join(INDEX_FILE), b"").unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().unwrap());
        assert!(err.contains("index is empty"), "{err}");
        assert!(dir.path().join("data").join(&id[..2]).join(&id).exists());
    }

    #[test]
    fn a_store_made_before_store_ids_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let id = filled(dir.path());
        std::fs::remove_file(dir.path().join(STORE_ID_FILE)).unwrap();
        // An index without the id (as older versions wrote it).
        {
            let db = Database::create(dir.path().join(INDEX_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(META).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.data_path(&id).exists());
        drop(store);
        assert!(dir.path().join(STORE_ID_FILE).exists());
        Store::open(dir.path()).unwrap();
    }
}
