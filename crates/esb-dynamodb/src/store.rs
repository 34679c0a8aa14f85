//! Storage on SQLite.
//!
//! One database file (`dynamodb.sqlite3` in the data directory), WAL mode with
//! `synchronous=FULL`: a write is acknowledged only after its transaction is durable.
//! Each DynamoDB table is a SQLite table `t<id>` keyed by (partition hash, encoded
//! partition key, encoded sort key); each secondary index is a table `x<id>` keyed by the
//! index key then the table key. Encoded keys compare as bytes in DynamoDB's order (see
//! [`crate::value::encode_key_value`]), so Query is a range scan.
//!
//! All writes go through one writer thread that groups concurrent requests into one
//! transaction (group commit); each request runs in its own savepoint, so a failed
//! request leaves nothing behind while the others of its group still commit. Reads use a
//! pool of read-only connections and see only committed data; GetItem looks in a small
//! cache of committed items first (see `ItemCache`).

use crate::error::{DdbError, Result};
use crate::table::{StoredKey, TableMeta};
use crate::value::{item_from_json, item_to_json, Item, Value};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

/// Tables by name.
pub type Catalog = HashMap<String, Arc<TableMeta>>;

/// An item's key in the item cache: the table's storage id and the item's stored key.
pub type CacheKey = (i64, StoredKey);

/// Most bytes of items (and their keys) the item cache holds; past it, it starts over.
const ITEM_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Items GetItem read lately, as stored (their wire-format JSON), so that reading one
/// again needs no SQLite statement (nor its file locks). Only committed data gets in, and
/// it never outlives a write:
///
/// - the writer removes the keys a group wrote (everything when the catalog changed)
///   just before its COMMIT and again just after, and `generation` is odd in between;
/// - a reader notes `generation` before its SQLite read and caches what it read only if
///   `generation` is still that same even number, so a read that may have raced a commit
///   is served but not kept.
///
/// So a key a commit touches is absent from the cache from just before the commit until
/// a read after it, and readers of it go to SQLite, whose snapshots are monotonic.
#[derive(Default)]
pub(crate) struct ItemCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    generation: u64,
    items: HashMap<CacheKey, Arc<[u8]>>,
    bytes: usize,
}

impl CacheInner {
    fn forget(&mut self, touched: &[CacheKey], everything: bool) {
        if everything || touched.len() >= self.items.len() {
            self.items.clear();
            self.bytes = 0;
            return;
        }
        for k in touched {
            if let Some(v) = self.items.remove(k) {
                self.bytes -= entry_bytes(k, &v);
            }
        }
    }
}

fn entry_bytes(k: &CacheKey, v: &[u8]) -> usize {
    v.len() + k.1.hk.len() + k.1.rk.len() + 64
}

impl ItemCache {
    fn get(&self, key: &CacheKey) -> Result<Arc<[u8]>, u64> {
        let c = lock(&self.inner);
        match c.items.get(key) {
            Some(v) => Ok(v.clone()),
            None => Err(c.generation),
        }
    }

    fn insert(&self, generation: u64, key: CacheKey, value: Arc<[u8]>) {
        let mut c = lock(&self.inner);
        if c.generation != generation || generation % 2 == 1 {
            return;
        }
        let size = entry_bytes(&key, &value);
        if size > ITEM_CACHE_BYTES / 16 {
            return;
        }
        if c.bytes + size > ITEM_CACHE_BYTES {
            c.items.clear();
            c.bytes = 0;
        }
        let value_len = value.len();
        if let Some(old) = c.items.insert(key, value) {
            // The same key again (two readers raced): count only the new value.
            c.bytes -= size - value_len + old.len();
        }
        c.bytes += size;
    }

    /// Before a group's COMMIT: forget what it wrote; no read is cached until
    /// [`ItemCache::after_commit`].
    fn before_commit(&self, touched: &[CacheKey], everything: bool) {
        let mut c = lock(&self.inner);
        c.forget(touched, everything);
        c.generation += 1;
    }

    /// After the COMMIT (or its failure): forget again and let reads be cached.
    fn after_commit(&self, touched: &[CacheKey], everything: bool) {
        let mut c = lock(&self.inner);
        c.forget(touched, everything);
        c.generation += 1;
    }
}

type JobFn = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<Json> + Send>;

struct Job {
    f: JobFn,
    reply: tokio::sync::oneshot::Sender<Result<Json>>,
}

/// What a write job sees: the connection (inside a transaction) and the writer's catalog.
pub struct WriteCtx<'a> {
    /// The connection, inside the group's transaction and the job's savepoint.
    pub conn: &'a Connection,
    catalog: &'a mut Catalog,
    dirty: bool,
    next_id: &'a mut i64,
    /// Keys of the items this group wrote (for the item cache).
    touched: &'a mut Vec<CacheKey>,
}

impl WriteCtx<'_> {
    /// A table, or ResourceNotFoundException.
    pub fn table(&self, name: &str) -> Result<Arc<TableMeta>> {
        self.catalog
            .get(name)
            .cloned()
            .ok_or_else(DdbError::table_not_found)
    }

    /// A table if it exists.
    pub fn try_table(&self, name: &str) -> Option<Arc<TableMeta>> {
        self.catalog.get(name).cloned()
    }

    /// All tables.
    pub fn tables(&self) -> impl Iterator<Item = &Arc<TableMeta>> {
        self.catalog.values()
    }

    /// Writes an item (replacing `old`, the item currently stored under its key, if any)
    /// and maintains the indexes. Every item write goes through here (or
    /// [`WriteCtx::delete`]), so that the item cache forgets what the group changed.
    pub fn put(&mut self, meta: &TableMeta, item: &Item, old: Option<&Item>) -> Result<()> {
        let key = meta.key(item);
        put(self.conn, meta, &key, item, old)?;
        self.touched.push((meta.id, key));
        Ok(())
    }

    /// Deletes a stored item and its index rows.
    pub fn delete(&mut self, meta: &TableMeta, old: &Item) -> Result<()> {
        let key = meta.key(old);
        delete(self.conn, meta, &key, old)?;
        self.touched.push((meta.id, key));
        Ok(())
    }

    /// A fresh storage id.
    pub fn next_id(&mut self) -> i64 {
        *self.next_id += 1;
        *self.next_id
    }

    /// Records new metadata for a table (persisted in this transaction). Call it last in a
    /// job, after everything that can fail.
    pub fn save_table(&mut self, meta: TableMeta) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO catalog (name, meta) VALUES (?1, ?2)",
            params![meta.name, meta.to_json().to_string()],
        )?;
        self.catalog.insert(meta.name.clone(), Arc::new(meta));
        self.dirty = true;
        Ok(())
    }

    /// Forgets a table (persisted in this transaction). Call it last in a job.
    pub fn remove_table(&mut self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM catalog WHERE name = ?1", params![name])?;
        self.catalog.remove(name);
        self.dirty = true;
        Ok(())
    }
}

/// The database: the writer, a pool of readers and the published catalog.
pub struct Db {
    writer: Arc<Writer>,
    wake: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    catalog: Arc<RwLock<Arc<Catalog>>>,
    readers: Mutex<Vec<Connection>>,
    items: Arc<ItemCache>,
    path: PathBuf,
    /// Region reported in ARNs.
    pub region: String,
    /// TransactWriteItems ClientRequestTokens seen in the last 10 minutes: the
    /// transaction each was given with, its answer and when it was first used.
    pub(crate) tx_tokens: Mutex<HashMap<String, TxToken>>,
}

/// One ClientRequestToken of TransactWriteItems, kept for its idempotency window.
pub(crate) struct TxToken {
    /// The TransactItems the token was first used with.
    pub items: Json,
    /// The answer given.
    pub answer: Json,
    /// When the transaction was run.
    pub at: std::time::Instant,
}

/// The single writer: its connection and catalog behind a lock, and the queue of jobs
/// waiting for the next group commit.
struct Writer {
    state: Mutex<WriterState>,
    queue: Mutex<Vec<Job>>,
    publish: Arc<RwLock<Arc<Catalog>>>,
    /// Told what each group wrote, around its COMMIT.
    items: Arc<ItemCache>,
    /// Run a job on the requesting thread when the writer is idle (only when commits do
    /// not fsync: an fsync must not block an async worker).
    inline: bool,
    closed: std::sync::atomic::AtomicBool,
}

struct WriterState {
    conn: Connection,
    catalog: Catalog,
    next_id: i64,
}

const DB_FILE: &str = "dynamodb.sqlite3";
const MAX_GROUP: usize = 128;

fn open(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.set_prepared_statement_cache_capacity(128);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", sync_mode())?;
        // Give the WAL file back to the disk after checkpoints (it grows under bursts).
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    }
    conn.pragma_update(None, "cache_size", -8192)?; // 8 MiB per connection
    conn.pragma_update(None, "mmap_size", 0)?;
    Ok(conn)
}

/// `synchronous` setting of the writer: FULL (the default) makes every acknowledged write
/// survive power loss; `ESB_DYNAMODB_SYNC=normal` only fsyncs at checkpoints, which still
/// keeps acknowledged writes across a crash of the process (kill -9) but not of the machine.
pub fn sync_mode() -> &'static str {
    match std::env::var("ESB_DYNAMODB_SYNC")
        .ok()
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("normal") => "NORMAL",
        _ => "FULL",
    }
}

impl Db {
    /// Opens (creating when needed) the database under `data_dir` and starts the writer.
    pub fn open(data_dir: &Path, region: &str) -> anyhow::Result<Arc<Db>> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let wal = data_dir.join(format!("{DB_FILE}-wal"));
        if !path.exists() && std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            // A new database next to the old one's write-ahead log would reset that log:
            // committed writes would go. Nothing is created or removed.
            anyhow::bail!(
                "{}: the database is missing but its write-ahead log {} holds data; refusing \
                 to start (nothing was changed). Put the database back, or move {} aside to \
                 start empty",
                path.display(),
                wal.display(),
                data_dir.display()
            );
        }
        let conn = open(&path, false)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS catalog (name TEXT PRIMARY KEY, meta TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v INTEGER NOT NULL);",
        )?;
        let (catalog, next_id) = load_catalog(&conn)?;
        let shared = Arc::new(RwLock::new(Arc::new(catalog.clone())));
        let items = Arc::new(ItemCache::default());
        let writer = Arc::new(Writer {
            items: items.clone(),
            state: Mutex::new(WriterState {
                conn,
                catalog,
                next_id,
            }),
            queue: Mutex::new(Vec::new()),
            publish: shared.clone(),
            inline: sync_mode() == "NORMAL",
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let (wake, rx) = mpsc::channel::<()>();
        let w = writer.clone();
        let thread = std::thread::Builder::new()
            .name("esb-dynamodb-writer".into())
            .spawn(move || writer_thread(&w, rx))?;
        Ok(Arc::new(Db {
            writer,
            wake: Mutex::new(Some(wake)),
            thread: Mutex::new(Some(thread)),
            catalog: shared,
            readers: Mutex::new(Vec::new()),
            items,
            path,
            region: region.to_owned(),
            tx_tokens: Mutex::new(HashMap::new()),
        }))
    }

    /// Runs a write job; resolves once its transaction committed. Jobs queue for the
    /// writer thread, which commits whatever is queued as one group; when commits do not
    /// fsync and the writer is idle, the job runs right here instead.
    pub async fn write<F>(&self, f: F) -> Result<Json>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<Json> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        if self.writer.closed.load(Ordering::Acquire) {
            return Err(DdbError::internal("The server is shutting down"));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        lock(&self.writer.queue).push(Job {
            f: Box::new(f),
            reply,
        });
        let mut wake = true;
        if self.writer.inline {
            if let Ok(mut state) = self.writer.state.try_lock() {
                self.writer.run_pending(&mut state);
                drop(state);
                wake = !lock(&self.writer.queue).is_empty();
            }
        }
        if wake {
            if let Some(tx) = lock(&self.wake).as_ref() {
                let _ = tx.send(());
            }
        }
        rx.await
            .map_err(|_| DdbError::internal("The storage writer stopped"))?
    }

    /// Runs a read job on a pooled read-only connection, inside one read transaction (a
    /// consistent snapshot of committed data). It runs on the calling thread: SQLite reads
    /// from the page cache take microseconds, far less than a hop to a blocking thread.
    pub fn read<T>(&self, f: impl FnOnce(&Connection, &Catalog) -> Result<T>) -> Result<T> {
        self.read_with(true, f)
    }

    /// [`Db::read`] for jobs that run a single statement, which sees a consistent snapshot
    /// on its own (no explicit transaction).
    pub fn read_one<T>(&self, f: impl FnOnce(&Connection, &Catalog) -> Result<T>) -> Result<T> {
        self.read_with(false, f)
    }

    fn read_with<T>(
        &self,
        transaction: bool,
        f: impl FnOnce(&Connection, &Catalog) -> Result<T>,
    ) -> Result<T> {
        let conn = match self.readers.lock().expect("reader pool lock").pop() {
            Some(c) => c,
            None => open(&self.path, true)?,
        };
        let catalog = self.catalog.read().expect("catalog lock").clone();
        if transaction {
            conn.prepare_cached("BEGIN")?.execute([])?;
        }
        let r = f(&conn, &catalog);
        if transaction {
            let _ = conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]));
        }
        let mut pool = self.readers.lock().expect("reader pool lock");
        if pool.len() < 32 {
            pool.push(conn);
        }
        r
    }

    /// Reads one item by key as stored (its wire-format JSON): from the item cache when it
    /// holds it, else with a single statement on a pooled read connection (and the item
    /// is cached, unless a commit may have raced the read).
    pub fn get_item_raw(&self, meta: &TableMeta, key: StoredKey) -> Result<Option<Arc<[u8]>>> {
        let key = (meta.id, key);
        let generation = match self.items.get(&key) {
            Ok(hit) => return Ok(Some(hit)),
            Err(generation) => generation,
        };
        let Some((raw, _)) = self.read_one(|conn, _| get_raw(conn, meta, &key.1))? else {
            return Ok(None);
        };
        let raw: Arc<[u8]> = raw.into();
        self.items.insert(generation, key, raw.clone());
        Ok(Some(raw))
    }

    /// The published catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Stops the writer after the jobs already queued, and waits for it.
    pub fn close(&self) {
        use std::sync::atomic::Ordering;
        self.writer.closed.store(true, Ordering::Release);
        lock(&self.wake).take();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
        // Anything queued by a request that raced the shutdown.
        let mut state = lock(&self.writer.state);
        while self.writer.run_pending(&mut state) > 0 {}
        drop(state);
        lock(&self.readers).clear();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.close();
    }
}

fn load_catalog(conn: &Connection) -> Result<(Catalog, i64)> {
    let mut catalog = Catalog::new();
    let mut next_id: i64 = conn
        .query_row("SELECT v FROM settings WHERE k = 'next_id'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);
    let mut stmt = conn.prepare("SELECT meta FROM catalog")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    for row in rows {
        let text = row?;
        let json: Json = serde_json::from_str(&text)
            .map_err(|e| DdbError::internal(format!("corrupt catalog entry: {e}")))?;
        let meta = TableMeta::from_json(&json)
            .ok_or_else(|| DdbError::internal("corrupt catalog entry"))?;
        next_id = next_id.max(meta.id);
        for i in &meta.indexes {
            next_id = next_id.max(i.id);
        }
        catalog.insert(meta.name.clone(), Arc::new(meta));
    }
    Ok((catalog, next_id))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn writer_thread(writer: &Writer, wake: mpsc::Receiver<()>) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {}
        loop {
            let mut state = lock(&writer.state);
            let n = writer.run_pending(&mut state);
            drop(state);
            if n == 0 {
                break;
            }
        }
    }
}

impl Writer {
    /// Commits the jobs queued now (at most MAX_GROUP) as one transaction, each in its own
    /// savepoint, and answers them. Returns how many there were.
    fn run_pending(&self, state: &mut WriterState) -> usize {
        let batch: Vec<Job> = {
            let mut q = lock(&self.queue);
            let n = q.len().min(MAX_GROUP);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            return 0;
        }
        let n = batch.len();
        let WriterState {
            conn,
            catalog,
            next_id,
        } = state;
        let start_id = *next_id;
        let mut touched: Vec<CacheKey> = Vec::new();
        let mut results: Vec<Result<Json>> = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        let mut dirty = false;
        if let Err(e) = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
        {
            let err = DdbError::from(e);
            for job in batch {
                let _ = job.reply.send(Err(err.clone()));
            }
            return n;
        }
        for job in batch {
            replies.push(job.reply);
            if let Err(e) = conn
                .prepare_cached("SAVEPOINT job")
                .and_then(|mut s| s.execute([]))
            {
                results.push(Err(e.into()));
                continue;
            }
            let mut ctx = WriteCtx {
                conn,
                catalog,
                dirty: false,
                next_id,
                touched: &mut touched,
            };
            let f = job.f;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ctx)))
                .unwrap_or_else(|_| {
                    Err(DdbError::internal(
                        "internal error while processing the request",
                    ))
                });
            dirty |= ctx.dirty;
            if r.is_err() {
                let _ = conn.execute_batch("ROLLBACK TO job");
            }
            let _ = conn
                .prepare_cached("RELEASE job")
                .and_then(|mut s| s.execute([]));
            results.push(r);
        }
        if *next_id != start_id {
            let _ = conn.execute(
                "INSERT OR REPLACE INTO settings (k, v) VALUES ('next_id', ?1)",
                params![*next_id],
            );
        }
        // Keys of rolled-back jobs are forgotten too: harmless.
        self.items.before_commit(&touched, dirty);
        if let Err(e) = conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
        {
            tracing::error!(error = %e, "commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            let err = DdbError::from(e);
            results = results.into_iter().map(|_| Err(err.clone())).collect();
            if let Ok((c, id)) = load_catalog(conn) {
                *catalog = c;
                *next_id = id;
            }
            dirty = true;
        }
        if dirty {
            *self.publish.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog.clone());
        }
        self.items.after_commit(&touched, dirty);
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
        n
    }
}

// ---------------------------------------------------------------------------------------
// Item storage

/// Serialises an item for storage.
pub fn encode_item(item: &Item) -> Vec<u8> {
    serde_json::to_vec(&item_to_json(item)).expect("items serialise")
}

/// Reads a stored item.
pub fn decode_item(bytes: &[u8]) -> Result<Item> {
    let json: Json = serde_json::from_slice(bytes)
        .map_err(|e| DdbError::internal(format!("corrupt stored item: {e}")))?;
    item_from_json(&json)
}

/// Creates the storage tables of a table and its indexes.
pub fn create_storage(conn: &Connection, meta: &TableMeta) -> Result<()> {
    let id = meta.id;
    conn.execute_batch(&format!(
        "CREATE TABLE t{id} (h INTEGER NOT NULL, hk BLOB NOT NULL, rk BLOB NOT NULL,
           item BLOB NOT NULL, sz INTEGER NOT NULL, ttl INTEGER,
           PRIMARY KEY (h, hk, rk)) WITHOUT ROWID;
         CREATE INDEX t{id}_ttl ON t{id} (ttl) WHERE ttl IS NOT NULL;"
    ))?;
    for idx in &meta.indexes {
        create_index_storage(conn, idx.id)?;
    }
    Ok(())
}

/// Creates the storage table of one index.
pub fn create_index_storage(conn: &Connection, id: i64) -> Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE x{id} (h INTEGER NOT NULL, hk BLOB NOT NULL, rk BLOB NOT NULL,
           th INTEGER NOT NULL, thk BLOB NOT NULL, trk BLOB NOT NULL, item BLOB NOT NULL,
           sz INTEGER NOT NULL,
           PRIMARY KEY (h, hk, rk, th, thk, trk)) WITHOUT ROWID;"
    ))?;
    Ok(())
}

/// Drops the storage of a table and its indexes.
pub fn drop_storage(conn: &Connection, meta: &TableMeta) -> Result<()> {
    conn.execute_batch(&format!("DROP TABLE IF EXISTS t{}", meta.id))?;
    for idx in &meta.indexes {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS x{}", idx.id))?;
    }
    Ok(())
}

/// Reads one item by key.
pub fn get(conn: &Connection, meta: &TableMeta, key: &StoredKey) -> Result<Option<Item>> {
    get_raw(conn, meta, key)?
        .map(|(b, _)| decode_item(&b))
        .transpose()
}

/// Reads one item by key as stored: its wire-format JSON and its DynamoDB size.
pub fn get_raw(
    conn: &Connection,
    meta: &TableMeta,
    key: &StoredKey,
) -> Result<Option<(Vec<u8>, usize)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT item, sz FROM t{} WHERE h = ?1 AND hk = ?2 AND rk = ?3",
        meta.id
    ))?;
    Ok(stmt
        .query_row(params![key.h, key.hk, key.rk], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))
        })
        .optional()?)
}

fn ttl_of(meta: &TableMeta, item: &Item) -> Option<i64> {
    let attr = meta.ttl.as_ref()?;
    match item.get(attr)? {
        Value::N(n) => Some(n.to_f64().floor() as i64),
        _ => None,
    }
}

/// Writes an item (replacing `old`, the item currently stored under its key, if any) and
/// maintains the indexes. Only through [`WriteCtx::put`] (the item cache must hear of it).
fn put(
    conn: &Connection,
    meta: &TableMeta,
    key: &StoredKey,
    item: &Item,
    old: Option<&Item>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO t{} (h, hk, rk, item, sz, ttl) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        meta.id
    ))?;
    stmt.execute(params![
        key.h,
        key.hk,
        key.rk,
        encode_item(item),
        crate::value::item_size(item) as i64,
        ttl_of(meta, item)
    ])?;
    for idx in &meta.indexes {
        if let Some(old) = old {
            if let Some(ik) = meta.index_key(idx, old) {
                delete_index_row(conn, idx.id, &ik, key)?;
            }
        }
        if let Some(ik) = meta.index_key(idx, item) {
            let projected = meta.index_projection(idx, item);
            insert_index_row(conn, idx.id, &ik, key, &projected)?;
        }
    }
    Ok(())
}

/// Inserts one index row.
pub fn insert_index_row(
    conn: &Connection,
    id: i64,
    ik: &StoredKey,
    tk: &StoredKey,
    item: &Item,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO x{id} (h, hk, rk, th, thk, trk, item, sz) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?;
    stmt.execute(params![
        ik.h,
        ik.hk,
        ik.rk,
        tk.h,
        tk.hk,
        tk.rk,
        encode_item(item),
        crate::value::item_size(item) as i64
    ])?;
    Ok(())
}

fn delete_index_row(conn: &Connection, id: i64, ik: &StoredKey, tk: &StoredKey) -> Result<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "DELETE FROM x{id} WHERE h = ?1 AND hk = ?2 AND rk = ?3 AND th = ?4 AND thk = ?5 AND trk = ?6"
    ))?;
    stmt.execute(params![ik.h, ik.hk, ik.rk, tk.h, tk.hk, tk.rk])?;
    Ok(())
}

/// Deletes a stored item and its index rows. Only through [`WriteCtx::delete`].
fn delete(conn: &Connection, meta: &TableMeta, key: &StoredKey, old: &Item) -> Result<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "DELETE FROM t{} WHERE h = ?1 AND hk = ?2 AND rk = ?3",
        meta.id
    ))?;
    stmt.execute(params![key.h, key.hk, key.rk])?;
    for idx in &meta.indexes {
        if let Some(ik) = meta.index_key(idx, old) {
            delete_index_row(conn, idx.id, &ik, key)?;
        }
    }
    Ok(())
}

/// Visits every item of a table (used for backfills), in key order, in chunks.
pub fn for_each_item(
    conn: &Connection,
    meta: &TableMeta,
    mut f: impl FnMut(&Item) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT item FROM t{}", meta.id))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let bytes: Vec<u8> = row.get(0)?;
        f(&decode_item(&bytes)?)?;
    }
    Ok(())
}

/// Item count and stored bytes.
pub type Stats = (i64, i64);

/// Item count and total stored size of a table and of each index.
pub fn stats(conn: &Connection, meta: &TableMeta) -> Result<(Stats, Vec<Stats>)> {
    let q = |t: String| -> Result<(i64, i64)> {
        Ok(conn.query_row(
            &format!("SELECT count(*), coalesce(sum(length(item)), 0) FROM {t}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    };
    let table = q(format!("t{}", meta.id))?;
    let mut idx = Vec::new();
    for i in &meta.indexes {
        idx.push(q(format!("x{}", i.id))?);
    }
    Ok((table, idx))
}

/// Bounds and direction of a range read over one table or index.
#[derive(Debug, Default)]
pub struct Range {
    /// Restrict to one partition (Query) — (hash, encoded partition key).
    pub partition: Option<(i64, Vec<u8>)>,
    /// Lower bound on the encoded sort key (value, inclusive).
    pub lower: Option<(Vec<u8>, bool)>,
    /// Upper bound on the encoded sort key (value, inclusive).
    pub upper: Option<(Vec<u8>, bool)>,
    /// Restrict a scan to partition hashes in [lo, hi).
    pub segment: Option<(i64, i64)>,
    /// Descending order.
    pub backward: bool,
    /// Continue strictly after this position: the table key, and for an index the index
    /// key first.
    pub after: Option<(Option<StoredKey>, StoredKey)>,
}

/// Walks the rows of a table (`index` None) or index in order, calling `f` with each
/// stored item (wire-format JSON) and its size until it returns false.
pub fn walk(
    conn: &Connection,
    table_id: i64,
    index: Option<i64>,
    range: &Range,
    mut f: impl FnMut(&[u8], usize) -> Result<bool>,
) -> Result<()> {
    let mut sql = String::with_capacity(200);
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let dir = if range.backward { "DESC" } else { "ASC" };
    let is_index = index.is_some();
    let tname = match index {
        Some(i) => format!("x{i}"),
        None => format!("t{table_id}"),
    };
    sql.push_str(&format!("SELECT item, sz FROM {tname} WHERE 1"));
    let arg = |v: rusqlite::types::Value, args: &mut Vec<rusqlite::types::Value>| -> String {
        args.push(v);
        format!("?{}", args.len())
    };
    use rusqlite::types::Value as V;
    if let Some((h, hk)) = &range.partition {
        let a = arg(V::Integer(*h), &mut args);
        let b = arg(V::Blob(hk.clone()), &mut args);
        sql.push_str(&format!(" AND h = {a} AND hk = {b}"));
    }
    if let Some((lo, hi)) = range.segment {
        let a = arg(V::Integer(lo), &mut args);
        let b = arg(V::Integer(hi), &mut args);
        sql.push_str(&format!(" AND h >= {a} AND h < {b}"));
    }
    if let Some((v, inclusive)) = &range.lower {
        let a = arg(V::Blob(v.clone()), &mut args);
        sql.push_str(&format!(
            " AND rk {} {a}",
            if *inclusive { ">=" } else { ">" }
        ));
    }
    if let Some((v, inclusive)) = &range.upper {
        let a = arg(V::Blob(v.clone()), &mut args);
        sql.push_str(&format!(
            " AND rk {} {a}",
            if *inclusive { "<=" } else { "<" }
        ));
    }
    let cmp = if range.backward { "<" } else { ">" };
    if let Some((ik, tk)) = &range.after {
        let mut cols: Vec<&str> = Vec::new();
        let mut vals: Vec<String> = Vec::new();
        let mut push = |c: &'static str, v: V, args: &mut Vec<V>| {
            cols.push(c);
            vals.push(arg(v, args));
        };
        match (is_index, ik) {
            (true, Some(ik)) => {
                if range.partition.is_none() {
                    push("h", V::Integer(ik.h), &mut args);
                    push("hk", V::Blob(ik.hk.clone()), &mut args);
                }
                push("rk", V::Blob(ik.rk.clone()), &mut args);
                push("th", V::Integer(tk.h), &mut args);
                push("thk", V::Blob(tk.hk.clone()), &mut args);
                push("trk", V::Blob(tk.rk.clone()), &mut args);
            }
            _ => {
                if range.partition.is_none() {
                    push("h", V::Integer(tk.h), &mut args);
                    push("hk", V::Blob(tk.hk.clone()), &mut args);
                }
                push("rk", V::Blob(tk.rk.clone()), &mut args);
            }
        }
        sql.push_str(&format!(
            " AND ({}) {cmp} ({})",
            cols.join(", "),
            vals.join(", ")
        ));
    }
    let order_cols = match (is_index, range.partition.is_some()) {
        (true, true) => "rk, th, thk, trk",
        (true, false) => "h, hk, rk, th, thk, trk",
        (false, true) => "rk",
        (false, false) => "h, hk, rk",
    };
    let order: Vec<String> = order_cols
        .split(", ")
        .map(|c| format!("{c} {dir}"))
        .collect();
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    while let Some(row) = rows.next()? {
        let bytes = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        let size: i64 = row.get(1)?;
        if !f(bytes, size as usize)? {
            break;
        }
    }
    Ok(())
}

/// Keys of items whose TTL passed, at most `limit`.
pub fn expired(conn: &Connection, meta: &TableMeta, now: i64, limit: usize) -> Result<Vec<Item>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT item FROM t{} WHERE ttl IS NOT NULL AND ttl <= ?1 LIMIT ?2",
        meta.id
    ))?;
    let mut rows = stmt.query(params![now, limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let bytes: Vec<u8> = row.get(0)?;
        out.push(decode_item(&bytes)?);
    }
    Ok(out)
}

/// Recomputes the TTL column of every item (after TTL was enabled or disabled).
pub fn refresh_ttl(conn: &Connection, meta: &TableMeta) -> Result<()> {
    let mut updates = Vec::new();
    for_each_item(conn, meta, |item| {
        updates.push((meta.key(item), ttl_of(meta, item)));
        Ok(())
    })?;
    let mut stmt = conn.prepare(&format!(
        "UPDATE t{} SET ttl = ?4 WHERE h = ?1 AND hk = ?2 AND rk = ?3",
        meta.id
    ))?;
    for (k, ttl) in updates {
        stmt.execute(params![k.h, k.hk, k.rk, ttl])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn call(db: &Arc<Db>, op: &str, req: Json) -> Json {
        match crate::ops::dispatch(db, op, req).await {
            Ok(crate::ops::Reply::Json(j)) => j,
            Ok(crate::ops::Reply::Raw(b)) => serde_json::from_slice(&b).unwrap(),
            Err(e) => panic!("{op}: {} {}", e.kind, e.message),
        }
    }

    async fn create(db: &Arc<Db>, name: &str) {
        call(
            db,
            "CreateTable",
            json!({"TableName": name, "BillingMode": "PAY_PER_REQUEST",
                   "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                   "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}]}),
        )
        .await;
    }

    async fn get(db: &Arc<Db>, name: &str) -> Json {
        call(
            db,
            "GetItem",
            json!({"TableName": name, "Key": {"pk": {"S": "k"}}}),
        )
        .await
    }

    #[tokio::test]
    async fn cached_items_never_outlive_a_write() {
        // Inline writes (sync=normal) go through the same `run_pending` as the writer
        // thread's.
        {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), "r").unwrap();
            create(&db, "tbl").await;
            let put =
                |v: &str| json!({"TableName": "tbl", "Item": {"pk": {"S": "k"}, "v": {"S": v}}});
            call(&db, "PutItem", put("1")).await;
            for round in 0..3 {
                let want = format!("{}", round + 2);
                // Read twice (the second from the cache), then write: the next read sees it.
                assert_eq!(
                    get(&db, "tbl").await["Item"]["v"]["S"],
                    format!("{}", round + 1)
                );
                assert_eq!(
                    get(&db, "tbl").await["Item"]["v"]["S"],
                    format!("{}", round + 1)
                );
                call(&db, "PutItem", put(&want)).await;
                assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], want);
            }
            call(
                &db,
                "UpdateItem",
                json!({"TableName": "tbl", "Key": {"pk": {"S": "k"}},
                       "UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"S": "u"}}}),
            )
            .await;
            assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], "u");
            call(
                &db,
                "TransactWriteItems",
                json!({"TransactItems": [{"Put": {"TableName": "tbl",
                        "Item": {"pk": {"S": "k"}, "v": {"S": "tx"}}}}]}),
            )
            .await;
            assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], "tx");
            call(
                &db,
                "BatchWriteItem",
                json!({"RequestItems": {"tbl": [{"DeleteRequest": {"Key": {"pk": {"S": "k"}}}}]}}),
            )
            .await;
            assert_eq!(get(&db, "tbl").await, json!({}));
            call(&db, "PutItem", put("again")).await;
            assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], "again");
            call(
                &db,
                "DeleteItem",
                json!({"TableName": "tbl", "Key": {"pk": {"S": "k"}}}),
            )
            .await;
            assert_eq!(get(&db, "tbl").await, json!({}));
            // A table deleted and made again under the same name starts empty.
            call(&db, "PutItem", put("old table")).await;
            assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], "old table");
            call(&db, "DeleteTable", json!({"TableName": "tbl"})).await;
            create(&db, "tbl").await;
            assert_eq!(get(&db, "tbl").await, json!({}));
            // A failed conditional write changes nothing, cached or not.
            call(&db, "PutItem", put("kept")).await;
            assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], "kept");
            let refused = crate::ops::dispatch(
                &db,
                "PutItem",
                json!({"TableName": "tbl", "Item": {"pk": {"S": "k"}, "v": {"S": "no"}},
                       "ConditionExpression": "attribute_not_exists(pk)"}),
            )
            .await;
            assert!(refused.is_err());
            assert_eq!(get(&db, "tbl").await["Item"]["v"]["S"], "kept");
            db.close();
        }
    }

    #[test]
    fn reads_that_may_have_raced_a_commit_are_not_cached() {
        let cache = ItemCache::default();
        let key = |i: u8| {
            (
                1,
                StoredKey {
                    h: 0,
                    hk: vec![i],
                    rk: Vec::new(),
                },
            )
        };
        let value: Arc<[u8]> = Arc::from(&b"{}"[..]);
        // A read that began before a commit started is not kept...
        let g = cache.get(&key(1)).unwrap_err();
        cache.before_commit(&[key(1)], false);
        cache.insert(g, key(1), value.clone());
        assert!(cache.get(&key(1)).is_err());
        // ...nor one that began during it...
        let during = cache.get(&key(1)).unwrap_err();
        cache.insert(during, key(1), value.clone());
        assert!(cache.get(&key(1)).is_err());
        cache.after_commit(&[key(1)], false);
        cache.insert(during, key(1), value.clone());
        assert!(cache.get(&key(1)).is_err());
        // ...while one that began after it is.
        let after = cache.get(&key(1)).unwrap_err();
        cache.insert(after, key(1), value.clone());
        assert!(cache.get(&key(1)).is_ok());
        // A commit forgets what it wrote and keeps the rest.
        let g = cache.get(&key(2)).unwrap_err();
        cache.insert(g, key(2), value.clone());
        cache.before_commit(&[key(1)], false);
        assert!(cache.get(&key(1)).is_err() && cache.get(&key(2)).is_ok());
        cache.after_commit(&[key(1)], false);
        // A catalog change forgets everything.
        cache.before_commit(&[], true);
        cache.after_commit(&[], true);
        assert!(cache.get(&key(2)).is_err());
        // Bounded by bytes.
        let big: Arc<[u8]> = vec![b' '; 100_000].into();
        for i in 0..=255u8 {
            let g = cache.get(&key(i)).unwrap_err();
            cache.insert(g, key(i), big.clone());
            assert!(lock(&cache.inner).bytes <= ITEM_CACHE_BYTES);
        }
        let c = lock(&cache.inner);
        let counted: usize = c.items.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        assert_eq!(counted, c.bytes);
    }

    #[test]
    fn a_missing_database_next_to_its_log_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{DB_FILE}-wal")), b"frames").unwrap();
        let err = format!("{:#}", Db::open(dir.path(), "r").err().unwrap());
        assert!(
            err.contains("write-ahead log") && err.contains("refusing"),
            "{err}"
        );
        assert!(!dir.path().join(DB_FILE).exists(), "nothing was created");
        assert_eq!(
            std::fs::read(dir.path().join(format!("{DB_FILE}-wal"))).unwrap(),
            b"frames"
        );
    }
}
