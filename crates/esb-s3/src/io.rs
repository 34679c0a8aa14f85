//! Streaming request bodies into data files and data files into response bodies, with
//! bounded memory: a body is hashed and written by a blocking thread fed through a small
//! bounded channel; a response is read by a blocking thread into a small bounded channel.

use std::io::{Read as _, Seek as _, Write as _};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use s3s::crypto::Checksum as _;
use s3s::{S3Error, S3ErrorCode};
use tokio::sync::mpsc;

use crate::store::{fsync_dir, Segment, Store};

/// Objects up to this size are kept inline in the index record.
pub const INLINE_MAX: usize = 16 * 1024;
/// Largest single PUT / part (S3's limit).
pub const MAX_PUT_SIZE: u64 = 5 * 1024 * 1024 * 1024;
const CHANNEL_DEPTH: usize = 8;
const READ_CHUNK: usize = 256 * 1024;

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Additional checksum algorithms (x-amz-checksum-*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algo {
    pub fn parse(s: &str) -> Option<Algo> {
        Some(match s.to_ascii_uppercase().as_str() {
            "CRC32" => Algo::Crc32,
            "CRC32C" => Algo::Crc32c,
            "CRC64NVME" => Algo::Crc64Nvme,
            "SHA1" => Algo::Sha1,
            "SHA256" => Algo::Sha256,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc32 => "CRC32",
            Algo::Crc32c => "CRC32C",
            Algo::Crc64Nvme => "CRC64NVME",
            Algo::Sha1 => "SHA1",
            Algo::Sha256 => "SHA256",
        }
    }
    /// Header carrying this checksum.
    pub fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
        }
    }
    /// Raw digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = Hasher::new(Some(self));
        h.update(data);
        h.algo.map(|a| a.1.finish()).unwrap_or_default()
    }
}

enum AlgoState {
    Crc32(s3s::crypto::Crc32),
    Crc32c(s3s::crypto::Crc32c),
    Crc64(s3s::crypto::Crc64Nvme),
    Sha1(s3s::crypto::Sha1),
    Sha256(s3s::crypto::Sha256),
}

impl AlgoState {
    fn new(a: Algo) -> Self {
        match a {
            Algo::Crc32 => AlgoState::Crc32(s3s::crypto::Crc32::new()),
            Algo::Crc32c => AlgoState::Crc32c(s3s::crypto::Crc32c::new()),
            Algo::Crc64Nvme => AlgoState::Crc64(s3s::crypto::Crc64Nvme::new()),
            Algo::Sha1 => AlgoState::Sha1(s3s::crypto::Sha1::new()),
            Algo::Sha256 => AlgoState::Sha256(s3s::crypto::Sha256::new()),
        }
    }
    fn update(&mut self, d: &[u8]) {
        match self {
            AlgoState::Crc32(h) => h.update(d),
            AlgoState::Crc32c(h) => h.update(d),
            AlgoState::Crc64(h) => h.update(d),
            AlgoState::Sha1(h) => h.update(d),
            AlgoState::Sha256(h) => h.update(d),
        }
    }
    fn finish(self) -> Vec<u8> {
        match self {
            AlgoState::Crc32(h) => h.finalize().as_ref().to_vec(),
            AlgoState::Crc32c(h) => h.finalize().as_ref().to_vec(),
            AlgoState::Crc64(h) => h.finalize().as_ref().to_vec(),
            AlgoState::Sha1(h) => h.finalize().as_ref().to_vec(),
            AlgoState::Sha256(h) => h.finalize().as_ref().to_vec(),
        }
    }
}

/// MD5 (for the ETag) plus at most one additional checksum.
pub struct Hasher {
    md5: s3s::crypto::Md5,
    algo: Option<(Algo, AlgoState)>,
}

impl Hasher {
    pub fn new(algo: Option<Algo>) -> Self {
        Hasher {
            md5: s3s::crypto::Md5::new(),
            algo: algo.map(|a| (a, AlgoState::new(a))),
        }
    }
    pub fn update(&mut self, d: &[u8]) {
        self.md5.update(d);
        if let Some((_, s)) = &mut self.algo {
            s.update(d);
        }
    }
    pub fn finish(self) -> Digests {
        Digests {
            md5: self.md5.finalize(),
            checksum: self.algo.map(|(a, s)| (a, b64(&s.finish()))),
        }
    }
}

pub struct Digests {
    pub md5: [u8; 16],
    /// The additional checksum, base64.
    pub checksum: Option<(Algo, String)>,
}

/// Where ingested data ended up.
pub enum Data {
    Inline(Bytes),
    File(Segment),
}

pub struct Ingested {
    pub size: u64,
    pub digests: Digests,
    pub data: Data,
}

impl Ingested {
    pub fn segments(&self) -> Vec<Segment> {
        match &self.data {
            Data::File(s) => vec![s.clone()],
            Data::Inline(_) => Vec::new(),
        }
    }
    pub fn inline(&self) -> &[u8] {
        match &self.data {
            Data::Inline(b) => b,
            Data::File(_) => &[],
        }
    }
}

enum Msg {
    Data(Bytes),
    Finish,
}

/// A data file being written by a blocking thread.
struct FileWriter {
    tx: mpsc::Sender<Msg>,
    done: tokio::task::JoinHandle<std::io::Result<Hasher>>,
    id: String,
}

impl FileWriter {
    fn start(store: &Store, hasher: Hasher) -> FileWriter {
        let id = Store::new_data_id();
        let path = store.data_path(&id);
        let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_DEPTH);
        let done = tokio::task::spawn_blocking(move || {
            // Hashing (MD5 + checksum) and writing run on two threads, so a large upload
            // is bounded by the slower of the two rather than by their sum.
            std::thread::scope(|scope| {
                let (htx, hrx) = std::sync::mpsc::sync_channel::<Bytes>(CHANNEL_DEPTH);
                let hashing = scope.spawn(move || {
                    let mut hasher = hasher;
                    for chunk in hrx {
                        hasher.update(&chunk);
                    }
                    hasher
                });
                let result = (|| {
                    let file = std::fs::File::create(&path)?;
                    let mut w = std::io::BufWriter::with_capacity(1024 * 1024, file);
                    loop {
                        match rx.blocking_recv() {
                            Some(Msg::Data(chunk)) => {
                                htx.send(chunk.clone())
                                    .map_err(|_| std::io::Error::other("hashing thread stopped"))?;
                                w.write_all(&chunk)?;
                            }
                            Some(Msg::Finish) => break,
                            None => return Err(std::io::Error::other("upload interrupted")),
                        }
                    }
                    let file = w.into_inner().map_err(|e| e.into_error())?;
                    file.sync_all()?;
                    fsync_dir(path.parent().expect("data files live in a directory"))?;
                    Ok(())
                })();
                drop(htx);
                let hasher = hashing
                    .join()
                    .map_err(|_| std::io::Error::other("hashing thread panicked"));
                match result.and(hasher) {
                    Ok(hasher) => Ok(hasher),
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        Err(e)
                    }
                }
            })
        });
        FileWriter { tx, done, id }
    }

    async fn send(&self, chunk: Bytes) -> Result<(), S3Error> {
        if self.tx.send(Msg::Data(chunk)).await.is_err() {
            return Err(internal("the data file writer stopped"));
        }
        Ok(())
    }

    async fn finish(self) -> Result<(String, Hasher), S3Error> {
        let _ = self.tx.send(Msg::Finish).await;
        drop(self.tx);
        let hasher = self
            .done
            .await
            .map_err(|e| internal(format!("writer task: {e}")))?
            .map_err(|e| internal(format!("writing a data file: {e}")))?;
        Ok((self.id, hasher))
    }

    /// Stops the writer and removes its file.
    async fn abort(self) {
        drop(self.tx);
        let _ = self.done.await;
    }
}

pub fn internal(msg: impl std::fmt::Display) -> S3Error {
    tracing::error!(%msg, "internal error");
    S3Error::with_message(S3ErrorCode::InternalError, msg.to_string())
}

/// Maps an error of the request body stream (aws-chunked decoding, payload hash check,
/// client disconnect) to the S3 error the client should see.
fn body_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> S3Error {
    let text = e.to_string();
    if text.contains("Sha256Mismatch") {
        let mut err = S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        err.set_status_code(http::StatusCode::BAD_REQUEST);
        err
    } else if text.contains("SignatureMismatch") {
        S3Error::with_message(
            S3ErrorCode::SignatureDoesNotMatch,
            "A chunk signature does not match.",
        )
    } else {
        S3Error::with_message(
            S3ErrorCode::IncompleteBody,
            format!("Could not read the request body: {text}"),
        )
    }
}

/// Reads a request body to its end: small bodies stay in memory, larger ones stream to a
/// new, fsynced data file. Nothing is left behind on error.
pub async fn ingest<S, E>(store: &Store, body: S, algo: Option<Algo>) -> Result<Ingested, S3Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ingest_with(store, body, algo, INLINE_MAX).await
}

/// Like [`ingest`], but any non-empty body goes to a data file (multipart parts).
pub async fn ingest_file<S, E>(
    store: &Store,
    body: S,
    algo: Option<Algo>,
) -> Result<Ingested, S3Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ingest_with(store, body, algo, 0).await
}

async fn ingest_with<S, E>(
    store: &Store,
    mut body: S,
    algo: Option<Algo>,
    inline_max: usize,
) -> Result<Ingested, S3Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut buffered = BytesMut::new();
    let mut writer: Option<FileWriter> = None;
    let mut size: u64 = 0;
    let outcome: Result<(), S3Error> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| body_error(&*e.into()))?;
            size += chunk.len() as u64;
            if size > MAX_PUT_SIZE {
                return Err(S3Error::with_message(
                    S3ErrorCode::EntityTooLarge,
                    "Your proposed upload exceeds the maximum allowed size (5 GiB).",
                ));
            }
            match &writer {
                Some(w) => w.send(chunk).await?,
                None => {
                    buffered.extend_from_slice(&chunk);
                    if buffered.len() > inline_max {
                        let w = FileWriter::start(store, Hasher::new(algo));
                        w.send(buffered.split().freeze()).await?;
                        writer = Some(w);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        if let Some(w) = writer {
            w.abort().await;
        }
        return Err(e);
    }
    match writer {
        Some(w) => {
            let (id, hasher) = w.finish().await?;
            Ok(Ingested {
                size,
                digests: hasher.finish(),
                data: Data::File(Segment { id, len: size }),
            })
        }
        None => {
            let data = buffered.freeze();
            let mut h = Hasher::new(algo);
            h.update(&data);
            Ok(Ingested {
                size,
                digests: h.finish(),
                data: Data::Inline(data),
            })
        }
    }
}

/// Copies `range` of an object's data (inline bytes or segments) into a new data file or
/// inline buffer, computing its digests: used by CopyObject and UploadPartCopy.
pub async fn copy_range(
    store: &Arc<Store>,
    data: OpenedData,
    range: std::ops::Range<u64>,
    algo: Option<Algo>,
    to_file: bool,
) -> Result<Ingested, S3Error> {
    let stream = read_stream(data, range);
    if to_file {
        ingest_file(store, stream, algo).await
    } else {
        ingest(store, stream, algo).await
    }
}

/// A response body streaming `range` of the object data.
pub struct ChannelStream {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

impl Stream for ChannelStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Segments opened up front: once a reader holds the file descriptors, a concurrent
/// overwrite or delete (which unlinks the files) cannot cut its stream short.
pub struct OpenedData {
    inline: Option<Bytes>,
    files: Vec<(Source, u64)>,
}

enum Source {
    Open(std::fs::File),
    /// Beyond [`MAX_OPEN_SEGMENTS`], files are opened as the stream reaches them.
    Path(PathBuf),
}

const MAX_OPEN_SEGMENTS: usize = 256;

/// Opens the data of an object for reading. `Err(NotFound)` means a concurrent writer
/// replaced the object: reload its record and try again.
pub async fn open_data(
    store: &Arc<Store>,
    inline: Option<Bytes>,
    segments: &[Segment],
) -> std::io::Result<OpenedData> {
    if inline.is_some() || segments.is_empty() {
        return Ok(OpenedData {
            inline: Some(inline.unwrap_or_default()),
            files: Vec::new(),
        });
    }
    let list: Vec<(PathBuf, u64)> = segments
        .iter()
        .map(|s| (store.data_path(&s.id), s.len))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut files = Vec::with_capacity(list.len());
        for (i, (path, len)) in list.into_iter().enumerate() {
            if i < MAX_OPEN_SEGMENTS {
                files.push((Source::Open(std::fs::File::open(&path)?), len));
            } else {
                files.push((Source::Path(path), len));
            }
        }
        Ok(OpenedData {
            inline: None,
            files,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Streams `range` of opened object data.
pub fn read_stream(data: OpenedData, range: std::ops::Range<u64>) -> ChannelStream {
    let (tx, rx) = mpsc::channel(4);
    if let Some(data) = data.inline {
        let start = usize::try_from(range.start)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = usize::try_from(range.end)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let slice = data.slice(start..end);
        if !slice.is_empty() {
            let _ = tx.try_send(Ok(slice));
        }
        return ChannelStream { rx };
    }
    let files = data.files;
    tokio::task::spawn_blocking(move || {
        let mut offset = 0u64; // start of the current segment within the object
        for (source, len) in files {
            let seg_start = offset;
            let seg_end = offset + len;
            offset = seg_end;
            if seg_end <= range.start || seg_start >= range.end {
                continue;
            }
            let from = range.start.max(seg_start) - seg_start;
            let to = range.end.min(seg_end) - seg_start;
            let mut file = match source {
                Source::Open(f) => f,
                Source::Path(p) => match std::fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                },
            };
            if from > 0 {
                if let Err(e) = file.seek(std::io::SeekFrom::Start(from)) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            let mut left = to - from;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(READ_CHUNK).min(READ_CHUNK);
                let mut buf = BytesMut::zeroed(n);
                match file.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.blocking_send(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "data file shorter than recorded",
                        )));
                        return;
                    }
                    Ok(got) => {
                        buf.truncate(got);
                        left -= got as u64;
                        if tx.blocking_send(Ok(buf.freeze())).is_err() {
                            return; // client went away
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        }
    });
    ChannelStream { rx }
}
