//! The S3 operations, on top of [`Store`] and the streaming helpers in [`crate::io`].
//! Operations not implemented here answer `NotImplemented` (the `s3s` default).
//!
//! The `s3s` request and response types are generated, one per operation, so several of
//! them carry the same fields under the same names (the checksum fields, the standard
//! object headers, the conditional-request headers). The small `impl_*!` macros below
//! implement one trait for each such group of types, so that the field-by-field plumbing
//! is written once.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use time::OffsetDateTime;

use crate::io::{self, Algo, Data, Ingested};
use crate::store::{
    BucketRecord, DeleteItem, ListEntry, ListResult, ObjectRecord, PartRecord, Segment, StdHeaders,
    Store, StoreError, StoredChecksum, StoredObject, UploadRecord, VersionEntry, WriteCondition,
};

const OWNER_ID: &str = "esb";
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;
const MAX_TAGS: usize = 10;
/// The largest page of a listing (keys, parts, uploads), as on S3.
const MAX_PAGE: usize = 1000;

pub struct EsbS3 {
    store: Arc<Store>,
    region: String,
}

impl EsbS3 {
    pub fn new(store: Arc<Store>, region: String) -> Self {
        EsbS3 { store, region }
    }

    /// Runs a blocking store operation off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Internal(anyhow::anyhow!(
                    "store task failed: {e}"
                )))
            })
    }

    /// Runs a blocking store operation on `bucket` and `key` (which it receives back as
    /// arguments); a store error becomes the S3 error that names them.
    async fn on_key<T: Send + 'static>(
        &self,
        bucket: &str,
        key: &str,
        f: impl FnOnce(&Store, &str, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> S3Result<T> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.blocking(move |s| f(s, &b, &k))
            .await
            .map_err(|e| map_err(e, bucket, key))
    }

    /// [`Self::on_key`] for an operation on a whole bucket.
    async fn on_bucket<T: Send + 'static>(
        &self,
        bucket: &str,
        f: impl FnOnce(&Store, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> S3Result<T> {
        self.on_key(bucket, "", move |s, b, _| f(s, b)).await
    }

    /// [`Self::on_key`] for an operation on one multipart upload of `bucket`/`key`.
    async fn on_upload<T: Send + 'static>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        f: impl FnOnce(&Store, &str, &str, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> S3Result<T> {
        let id = upload_id.to_owned();
        self.on_key(bucket, key, move |s, b, k| f(s, b, k, &id))
            .await
    }

    /// Unlinks data files no record references any more (best effort).
    async fn drop_segments(&self, segments: Vec<Segment>) {
        if segments.is_empty() {
            return;
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.remove_segments(&segments)).await;
    }

    /// Passes `result` through; on an error, first removes the data files of `data`, which
    /// nothing references yet.
    async fn discard_on_error<T>(&self, data: &Ingested, result: S3Result<T>) -> S3Result<T> {
        if result.is_err() {
            self.drop_segments(data.segments()).await;
        }
        result
    }

    /// Commits newly written data (`written`) with `commit`, which returns the data files
    /// no longer referenced (those of the version it replaced) and a result; those files
    /// are removed after the commit. When the commit fails, the new files are removed
    /// instead.
    async fn commit_data<T: Send + 'static>(
        &self,
        written: Vec<Segment>,
        bucket: &str,
        key: &str,
        commit: impl FnOnce(&Store, &str, &str) -> Result<(Vec<Segment>, T), StoreError>
            + Send
            + 'static,
    ) -> S3Result<T> {
        match self.on_key(bucket, key, commit).await {
            Ok((old, out)) => {
                self.drop_segments(old).await;
                Ok(out)
            }
            Err(e) => {
                self.drop_segments(written).await;
                Err(e)
            }
        }
    }

    async fn bucket_record(&self, bucket: &str) -> S3Result<BucketRecord> {
        self.on_bucket(bucket, |s, b| s.bucket(b)).await
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        self.bucket_record(bucket).await.map(drop)
    }

    /// Loads the current version of an object, or the version `version_id` names (which
    /// must not be a delete marker: 405 MethodNotAllowed, as on S3).
    async fn load(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<StoredObject> {
        let Some(vid) = version_id else {
            let found = self.on_key(bucket, key, |s, b, k| s.get_object(b, k)).await;
            return match found {
                // The current version is a delete marker: S3 says so in headers.
                Err(e) if *e.code() == S3ErrorCode::NoSuchKey => {
                    let marker = self
                        .on_key(bucket, key, |s, b, k| s.current_marker(b, k))
                        .await
                        .ok()
                        .flatten();
                    Err(match marker {
                        Some(m) => with_marker_headers(e, &m),
                        None => e,
                    })
                }
                other => other,
            };
        };
        check_version_id(vid)?;
        let v = vid.to_owned();
        let obj = self
            .on_key(bucket, key, move |s, b, k| s.get_version(b, k, &v))
            .await?;
        if obj.record.delete_marker {
            let mut e = S3Error::with_message(
                S3ErrorCode::MethodNotAllowed,
                "The specified method is not allowed against this resource.",
            );
            e.set_status_code(http::StatusCode::METHOD_NOT_ALLOWED);
            return Err(with_marker_headers(e, vid));
        }
        Ok(obj)
    }

    /// One page of keys (ListObjects, ListObjectsV2): see [`Store::list_objects`].
    async fn list_keys(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<String>,
        after: Option<String>,
        max: usize,
    ) -> S3Result<ListResult> {
        let prefix = prefix.to_owned();
        self.on_bucket(bucket, move |s, b| {
            s.list_objects(b, &prefix, delimiter.as_deref(), after.as_deref(), max)
        })
        .await
    }

    /// Loads a multipart upload, which must exist.
    async fn load_upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<Upload> {
        let record = self
            .on_upload(bucket, key, upload_id, |s, b, k, i| s.get_upload(b, k, i))
            .await?;
        Ok(Upload {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            id: upload_id.to_owned(),
            record,
        })
    }

    /// Loads an object and opens its data files. A concurrent overwrite may unlink the
    /// files between the two steps; then the newer version is loaded instead.
    async fn load_open(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(StoredObject, io::OpenedData)> {
        for _ in 0..8 {
            let obj = self.load(bucket, key, version_id).await?;
            match io::open_data(&self.store, obj.inline.clone(), &obj.record.segments).await {
                Ok(data) => return Ok((obj, data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io::internal(format!("opening object data: {e}"))),
            }
        }
        Err(io::internal("the object kept changing while being opened"))
    }

    /// Opens the source object of a copy (CopyObject, UploadPartCopy) once the request's
    /// `x-amz-copy-source-if-*` conditions hold for it.
    async fn open_copy_source(
        &self,
        (bucket, key, version_id): &(String, String, Option<String>),
        conditions: ReadConditions<'_>,
    ) -> S3Result<(StoredObject, io::OpenedData)> {
        let (object, data) = self.load_open(bucket, key, version_id.as_deref()).await?;
        conditions.check(&object.record, precondition_failed)?;
        Ok((object, data))
    }

    /// Records a part whose data was just written (uploaded or copied), replacing (and
    /// removing) an earlier part with the same number.
    async fn store_part(
        &self,
        upload: &Upload,
        number: u32,
        data: &Ingested,
        checksum: Option<StoredChecksum>,
    ) -> S3Result<PartRecord> {
        let part = PartRecord {
            size: data.size,
            etag: hex::encode(data.digests.md5),
            last_modified_ms: now_ms(),
            checksum,
            segment: data.segments().into_iter().next(),
        };
        let (id, stored) = (upload.id.clone(), part.clone());
        self.commit_data(
            data.segments(),
            &upload.bucket,
            &upload.key,
            move |s, b, k| {
                s.put_part(b, k, &id, number, stored)
                    .map(|old| (old.into_iter().collect(), ()))
            },
        )
        .await?;
        Ok(part)
    }
}

/// A multipart upload, with the bucket, key and id it was loaded by.
struct Upload {
    bucket: String,
    key: String,
    id: String,
    record: UploadRecord,
}

// ----- helpers ---------------------------------------------------------------------------

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from(
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

fn etag(v: &str) -> ETag {
    ETag::Strong(v.to_owned())
}

/// A size or count as the `i64` of the S3 types (saturating).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn map_err(e: StoreError, bucket: &str, key: &str) -> S3Error {
    match e {
        StoreError::NoSuchBucket => {
            S3Error::with_message(S3ErrorCode::NoSuchBucket, format!("The specified bucket does not exist: {bucket}"))
        }
        StoreError::NoSuchKey => S3Error::with_message(S3ErrorCode::NoSuchKey, format!("The specified key does not exist: {key}")),
        StoreError::NoSuchVersion => S3Error::with_message(
            S3ErrorCode::NoSuchVersion,
            "The specified version does not exist.",
        ),
        StoreError::NoSuchUpload => S3Error::with_message(
            S3ErrorCode::NoSuchUpload,
            "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        ),
        StoreError::BucketExists => S3Error::with_message(
            S3ErrorCode::BucketAlreadyOwnedByYou,
            "Your previous request to create the named bucket succeeded and you already own it.",
        ),
        StoreError::BucketNotEmpty => {
            S3Error::with_message(S3ErrorCode::BucketNotEmpty, "The bucket you tried to delete is not empty.")
        }
        StoreError::PreconditionFailed => precondition_failed(),
        StoreError::Internal(e) => io::internal(format!("{e:#}")),
    }
}

fn precondition_failed() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::PreconditionFailed,
        "At least one of the pre-conditions you specified did not hold",
    )
}

fn not_modified() -> S3Error {
    let mut e = S3Error::new(S3ErrorCode::NotModified);
    e.set_status_code(http::StatusCode::NOT_MODIFIED);
    e
}

fn bad_digest(msg: impl Into<String>) -> S3Error {
    S3Error::with_message(S3ErrorCode::BadDigest, msg.into())
}

fn invalid_argument(msg: impl Into<String>) -> S3Error {
    S3Error::with_message(S3ErrorCode::InvalidArgument, msg.into())
}

fn invalid_range() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::InvalidRange,
        "The requested range is not satisfiable",
    )
}

fn missing_body() -> S3Error {
    s3_error!(IncompleteBody, "The request body is missing")
}

/// An error about a delete marker, with S3's headers naming it.
fn with_marker_headers(mut e: S3Error, version_id: &str) -> S3Error {
    let mut h = http::HeaderMap::new();
    h.insert(
        "x-amz-delete-marker",
        http::HeaderValue::from_static("true"),
    );
    if let Ok(v) = http::HeaderValue::from_str(version_id) {
        h.insert("x-amz-version-id", v);
    }
    e.set_headers(h);
    e
}

/// A version id that this store cannot have made answers 400 InvalidArgument, as on S3.
fn check_version_id(version_id: &str) -> S3Result<()> {
    if !crate::store::valid_version_id(version_id) {
        return Err(invalid_argument("Invalid version id specified"));
    }
    Ok(())
}

/// Object tagging works on the current version only: a `versionId` naming another one
/// answers NotImplemented rather than tagging the wrong version.
fn current_version_only(version_id: Option<&str>, current: &ObjectRecord) -> S3Result<()> {
    match version_id {
        Some(v) if v != current.version() => Err(s3_error!(
            NotImplemented,
            "Tagging a noncurrent object version is not supported"
        )),
        _ => Ok(()),
    }
}

/// A response with status 204 No Content.
fn no_content<T>(output: T) -> S3Result<S3Response<T>> {
    let mut resp = S3Response::new(output);
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

/// One failed key of a DeleteObjects answer.
fn delete_error(key: String, err: &S3Error, version_id: Option<String>) -> Error {
    Error {
        code: Some(err.code().as_str().to_owned()),
        key: Some(key),
        message: err.message().map(str::to_owned),
        version_id,
    }
}

fn etag_matches(cond: &ETagCondition, current: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == current,
    }
}

/// An `If-Match` condition as the store checks it: the ETag, or `*` for "exists".
fn if_match_value(cond: &ETagCondition) -> String {
    match cond {
        ETagCondition::Any => "*".to_owned(),
        ETagCondition::ETag(e) => e.value().to_owned(),
    }
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// The conditional headers of a read (GetObject, HeadObject) or of a copy source
/// (`x-amz-copy-source-if-*`).
struct ReadConditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_unmodified_since: Option<&'a Timestamp>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
}

impl ReadConditions<'_> {
    /// Evaluates If-Match / If-Unmodified-Since / If-None-Match / If-Modified-Since
    /// (RFC 9110 §13.2.2); a failed "none match" or "modified since" answers
    /// `not_modified_err` (304 for a read, 412 for a copy source).
    fn check(&self, rec: &ObjectRecord, not_modified_err: fn() -> S3Error) -> S3Result<()> {
        let lm = secs(rec.last_modified_ms);
        let to_secs = |t: &Timestamp| OffsetDateTime::from(t.clone()).unix_timestamp();
        if let Some(c) = self.if_match {
            if !etag_matches(c, &rec.etag) {
                return Err(precondition_failed());
            }
        } else if let Some(t) = self.if_unmodified_since {
            if lm > to_secs(t) {
                return Err(precondition_failed());
            }
        }
        if let Some(c) = self.if_none_match {
            if etag_matches(c, &rec.etag) {
                return Err(not_modified_err());
            }
        } else if let Some(t) = self.if_modified_since {
            // A date in the future is invalid (RFC 7232 §3.3) and ignored, as S3 does.
            let since = to_secs(t);
            if since <= OffsetDateTime::now_utc().unix_timestamp() && lm <= since {
                return Err(not_modified_err());
            }
        }
        Ok(())
    }
}

fn parse_tag_header(h: Option<&str>) -> S3Result<Vec<(String, String)>> {
    let Some(h) = h else { return Ok(Vec::new()) };
    let tags: Vec<(String, String)> = form_urlencoded::parse(h.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    validate_tags(&tags)?;
    Ok(tags)
}

fn validate_tags(tags: &[(String, String)]) -> S3Result<()> {
    let invalid = |m: &str| S3Error::with_message(S3ErrorCode::InvalidTag, m.to_owned());
    if tags.len() > MAX_TAGS {
        return Err(invalid("Object tags cannot be greater than 10"));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(invalid("The TagKey you have provided is invalid"));
        }
        if v.chars().count() > 256 {
            return Err(invalid("The TagValue you have provided is invalid"));
        }
        if !seen.insert(k) {
            return Err(invalid("Cannot provide multiple Tags with the same key"));
        }
    }
    Ok(())
}

fn tagging_to_vec(t: Tagging) -> S3Result<Vec<(String, String)>> {
    let tags: Vec<(String, String)> = t
        .tag_set
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
        .collect();
    validate_tags(&tags)?;
    Ok(tags)
}

/// The Content-Encoding to store: without `aws-chunked`, which only describes how the
/// body was sent (S3 drops it too).
fn stored_content_encoding(v: Option<String>) -> Option<String> {
    let v = v?;
    let kept: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// S3 refuses an upload without `Content-Length` (411 MissingContentLength), unless it
/// is an aws-chunked body that gives its length in `x-amz-decoded-content-length`.
///
/// Also refuses an empty `Content-MD5` header (400 InvalidDigest, which s3s would read as
/// no header at all), before any of the body is read.
fn check_upload_headers(headers: &http::HeaderMap) -> S3Result<()> {
    if headers
        .get("content-md5")
        .is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace))
    {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidDigest,
            "The Content-MD5 you specified was invalid.",
        ));
    }
    if headers.contains_key(http::header::CONTENT_LENGTH)
        || headers.contains_key("x-amz-decoded-content-length")
    {
        return Ok(());
    }
    Err(S3Error::with_message(
        S3ErrorCode::MissingContentLength,
        "You must provide the Content-Length HTTP header.",
    ))
}

fn expires_str(t: Option<&Timestamp>) -> Option<String> {
    let t = t?;
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).ok()?;
    String::from_utf8(buf).ok()
}

fn expires_ts(s: Option<&str>) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, s?).ok()
}

/// User metadata, keys lower-cased; at most 2 KiB in total, as on S3.
fn metadata_map(m: Option<Metadata>) -> S3Result<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = m
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect()
        })
        .unwrap_or_default();
    let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 2048 {
        return Err(S3Error::with_message(
            S3ErrorCode::MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size (2 KiB).",
        ));
    }
    Ok(map)
}

fn metadata_out(m: &BTreeMap<String, String>) -> Option<Metadata> {
    if m.is_empty() {
        None
    } else {
        Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// The stored form of a storage class: none for STANDARD, the default.
fn stored_storage_class(class: &StorageClass) -> Option<String> {
    Some(class.as_str().to_owned()).filter(|s| s != "STANDARD")
}

/// The storage class to report for stored headers.
fn storage_class_name(h: &StdHeaders) -> String {
    h.storage_class
        .clone()
        .unwrap_or_else(|| "STANDARD".to_owned())
}

/// A checksum algorithm the client asked for explicitly.
fn requested_algorithm(a: Option<&ChecksumAlgorithm>) -> S3Result<Option<Algo>> {
    a.map(|a| {
        Algo::parse(a.as_str()).ok_or_else(|| invalid_argument("Unsupported checksum algorithm"))
    })
    .transpose()
}

/// Which checksum to compute for an upload: from a checksum header, the SDK algorithm
/// header, or the `x-amz-trailer` announcement.
fn checksum_plan(
    headers: &http::HeaderMap,
    algorithm: Option<&ChecksumAlgorithm>,
    from_header: Option<(Algo, String)>,
) -> S3Result<(Option<Algo>, Option<String>)> {
    if let Some((a, v)) = from_header {
        return Ok((Some(a), Some(v)));
    }
    if let Some(trailer) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
        let name = trailer.trim().to_ascii_lowercase();
        if let Some(a) = name.strip_prefix("x-amz-checksum-").and_then(Algo::parse) {
            return Ok((Some(a), None));
        }
    }
    if let Some(a) = algorithm {
        let algo = Algo::parse(a.as_str()).ok_or_else(|| {
            invalid_argument(format!("Unsupported checksum algorithm: {}", a.as_str()))
        })?;
        return Ok((Some(algo), None));
    }
    Ok((None, None))
}

/// The whole-object checksum of data just computed: (algorithm, base64 value).
fn full_object_checksum((algo, value): &(Algo, String)) -> StoredChecksum {
    StoredChecksum {
        algorithm: algo.name().to_owned(),
        value: value.clone(),
        kind: "FULL_OBJECT".to_owned(),
    }
}

/// Verifies Content-MD5 and the additional checksum (header or trailer) of ingested data.
fn verify_digests(
    data: &Ingested,
    content_md5: Option<&str>,
    expected: Option<String>,
    trailers: Option<&s3s::TrailingHeaders>,
) -> S3Result<Option<StoredChecksum>> {
    if let Some(md5) = content_md5 {
        let want = io::unb64(md5).filter(|v| v.len() == 16).ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InvalidDigest,
                "The Content-MD5 you specified was invalid.",
            )
        })?;
        if want != data.digests.md5 {
            return Err(bad_digest(
                "The Content-MD5 you specified did not match what we received.",
            ));
        }
    }
    let Some(computed) = &data.digests.checksum else {
        return Ok(None);
    };
    let (algo, got) = computed;
    let expected = expected.or_else(|| {
        trailers.and_then(|t| {
            t.read(|h| {
                h.get(algo.header())
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .flatten()
        })
    });
    if let Some(want) = expected {
        if want.trim() != got {
            return Err(bad_digest(format!(
                "The {} you specified did not match the calculated checksum.",
                algo.name()
            )));
        }
    }
    Ok(Some(full_object_checksum(computed)))
}

/// The checksum response fields for a stored checksum.
struct ChecksumFields {
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    kind: Option<ChecksumType>,
}

fn checksum_fields(c: Option<&StoredChecksum>) -> ChecksumFields {
    let mut f = ChecksumFields {
        crc32: None,
        crc32c: None,
        crc64: None,
        sha1: None,
        sha256: None,
        kind: None,
    };
    if let Some(c) = c {
        let v = Some(c.value.clone());
        match Algo::parse(&c.algorithm) {
            Some(Algo::Crc32) => f.crc32 = v,
            Some(Algo::Crc32c) => f.crc32c = v,
            Some(Algo::Crc64Nvme) => f.crc64 = v,
            Some(Algo::Sha1) => f.sha1 = v,
            Some(Algo::Sha256) => f.sha256 = v,
            None => return f,
        }
        f.kind = Some(ChecksumType::from(c.kind.clone()));
    }
    f
}

/// Percent-encodes a listing value for `encoding-type=url`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A listing value, percent-encoded when the client asked for `encoding-type=url`.
fn encode_if(enc: bool, s: String) -> String {
    if enc {
        url_encode(&s)
    } else {
        s
    }
}

fn maybe_encode(enc: bool, s: Option<String>) -> Option<String> {
    s.map(|s| encode_if(enc, s))
}

fn common_prefix(prefix: String, enc: bool) -> CommonPrefix {
    CommonPrefix {
        prefix: Some(encode_if(enc, prefix)),
    }
}

fn wants_url_encoding(e: Option<&EncodingType>) -> S3Result<bool> {
    match e {
        None => Ok(false),
        Some(e) if e.as_str().eq_ignore_ascii_case("url") => Ok(true),
        Some(e) => Err(invalid_argument(format!(
            "Invalid Encoding Method specified in Request: {}",
            e.as_str()
        ))),
    }
}

/// The page size a listing asked for with `param` (max-keys, max-parts, max-uploads).
fn page_size(v: Option<i32>, param: &str) -> S3Result<usize> {
    match v {
        None => Ok(MAX_PAGE),
        Some(n) if n < 0 => Err(invalid_argument(format!("{param} must not be negative"))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(0).min(MAX_PAGE)),
    }
}

/// What every listing of keys or uploads asks for.
struct ListingRequest {
    /// Names are URL-encoded in the answer (`encoding-type=url`).
    enc: bool,
    /// The page size.
    max: usize,
    prefix: String,
}

/// Validates the common listing parameters; `max` is the page size with the name of its
/// query parameter.
fn listing_request(
    encoding_type: Option<&EncodingType>,
    (max, max_param): (Option<i32>, &str),
    prefix: Option<&str>,
) -> S3Result<ListingRequest> {
    Ok(ListingRequest {
        enc: wants_url_encoding(encoding_type)?,
        max: page_size(max, max_param)?,
        prefix: prefix.unwrap_or_default().to_owned(),
    })
}

/// A page size as reported back in a listing.
fn page_size_out(max: usize) -> i32 {
    i32::try_from(max).unwrap_or(1000)
}

fn owner() -> Owner {
    Owner {
        display_name: Some(OWNER_ID.into()),
        id: Some(OWNER_ID.into()),
    }
}

fn initiator() -> Initiator {
    Initiator {
        display_name: Some(OWNER_ID.into()),
        id: Some(OWNER_ID.into()),
    }
}

fn list_object(key: String, rec: &ObjectRecord, enc: bool, with_owner: bool) -> Object {
    Object {
        checksum_algorithm: rec
            .checksum
            .as_ref()
            .map(|c| vec![ChecksumAlgorithm::from(c.algorithm.clone())]),
        checksum_type: rec
            .checksum
            .as_ref()
            .map(|c| ChecksumType::from(c.kind.clone())),
        e_tag: Some(etag(&rec.etag)),
        key: Some(encode_if(enc, key)),
        last_modified: Some(ts(rec.last_modified_ms)),
        owner: if with_owner { Some(owner()) } else { None },
        restore_status: None,
        size: Some(to_i64(rec.size)),
        storage_class: Some(ObjectStorageClass::from(storage_class_name(&rec.headers))),
    }
}

/// One page of ListObjects (V1 or V2).
struct ListingPage {
    contents: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    /// The last key or common prefix of the page: where the next page starts.
    last: Option<String>,
}

fn listing_page(entries: Vec<ListEntry>, enc: bool, with_owner: bool) -> ListingPage {
    let mut page = ListingPage {
        contents: Vec::new(),
        prefixes: Vec::new(),
        last: None,
    };
    for e in entries {
        match e {
            ListEntry::Object(k, rec) => {
                page.last = Some(k.clone());
                page.contents.push(list_object(k, &rec, enc, with_owner));
            }
            ListEntry::Prefix(p) => {
                page.last = Some(p.clone());
                page.prefixes.push(common_prefix(p, enc));
            }
        }
    }
    page
}

/// Byte range of part `n` (1-based) of a multipart object.
fn part_range(rec: &ObjectRecord, n: i32) -> S3Result<Range<u64>> {
    let invalid = || {
        let mut e = S3Error::with_message(
            S3ErrorCode::Custom("InvalidPartNumber".into()),
            "The requested partnumber is not satisfiable",
        );
        e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
        e
    };
    let idx = usize::try_from(n)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(invalid)?
        - 1;
    if rec.part_sizes.is_empty() {
        return if idx == 0 {
            Ok(0..rec.size)
        } else {
            Err(invalid())
        };
    }
    let size = *rec.part_sizes.get(idx).ok_or_else(invalid)?;
    let start: u64 = rec.part_sizes[..idx].iter().sum();
    Ok(start..start + size)
}

/// What a GetObject or HeadObject request reads of an object: the byte range and the
/// response fields that depend on it.
struct ReadPlan {
    range: Range<u64>,
    /// A Range request or one part of several: the answer is partial content.
    partial: bool,
    /// `Content-Range`, for a partial answer.
    content_range: Option<String>,
    /// The checksum to report: only asked for (`x-amz-checksum-mode: ENABLED`) and only
    /// for the whole object.
    checksum: Option<StoredChecksum>,
    /// The object's part count, reported when a part was asked for.
    parts_count: Option<i32>,
}

/// Plans a GetObject or HeadObject (whose conditions hold) from its Range header or
/// partNumber.
fn plan_read(rec: &ObjectRecord, read: &ReadRequest<'_>) -> S3Result<ReadPlan> {
    let (range, partial) = match (read.range, read.part_number) {
        (Some(r), _) => (r.check(rec.size).map_err(|_| invalid_range())?, true),
        (None, Some(n)) => (part_range(rec, n)?, rec.part_sizes.len() > 1),
        (None, None) => (0..rec.size, false),
    };
    let full = !partial && read.part_number.is_none();
    let checksum_on = read
        .checksum_mode
        .is_some_and(|m| m.as_str().eq_ignore_ascii_case("ENABLED"));
    let content_range = partial.then(|| {
        format!(
            "bytes {}-{}/{}",
            range.start,
            range.end.saturating_sub(1),
            rec.size
        )
    });
    let parts_count = if read.part_number.is_some() && !rec.part_sizes.is_empty() {
        Some(i32::try_from(rec.part_sizes.len()).unwrap_or(i32::MAX))
    } else {
        None
    };
    Ok(ReadPlan {
        range,
        partial,
        content_range,
        checksum: rec.checksum.clone().filter(|_| checksum_on && full),
        parts_count,
    })
}

/// The copy source: bucket, key and version id (`?versionId=`).
fn parse_copy_source(src: &CopySource) -> S3Result<(String, String, Option<String>)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => Ok((
            bucket.to_string(),
            key.to_string(),
            version_id.as_deref().map(str::to_owned),
        )),
        _ => Err(s3_error!(
            NotImplemented,
            "Access point copy sources are not supported"
        )),
    }
}

fn parse_copy_range(s: &str, size: u64) -> S3Result<Range<u64>> {
    let bad = || {
        invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")
    };
    let spec = s.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last: u64 = b.trim().parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(invalid_range());
    }
    Ok(first..last + 1)
}

/// Whether a CopyObject metadata or tagging `directive` (`what`) replaces the source's.
fn replaces(directive: Option<&str>, what: &str) -> S3Result<bool> {
    match directive {
        None | Some("COPY") => Ok(false),
        Some("REPLACE") => Ok(true),
        Some(other) => Err(invalid_argument(format!(
            "Unknown {what} directive: {other}"
        ))),
    }
}

fn check_part_number(n: i32) -> S3Result<u32> {
    if !(1..=MAX_PART_NUMBER).contains(&n) {
        return Err(invalid_argument(
            "Part number must be an integer between 1 and 10000, inclusive",
        ));
    }
    Ok(u32::try_from(n).unwrap_or(1))
}

fn strip_quotes(s: &str) -> &str {
    s.trim().trim_matches('"')
}

fn new_upload_id() -> String {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    format!("{:016x}{}", nanos as u64, uuid::Uuid::new_v4().simple())
}

// ----- fields shared by several s3s request and response types --------------------------

/// What GetObject and HeadObject requests have in common.
struct ReadRequest<'a> {
    conditions: ReadConditions<'a>,
    range: Option<&'a s3s::dto::Range>,
    part_number: Option<i32>,
    checksum_mode: Option<&'a ChecksumMode>,
}

/// GetObjectInput and HeadObjectInput.
trait ObjectReadInput {
    fn read_request(&self) -> ReadRequest<'_>;
}

macro_rules! impl_object_read_input {
    ($($t:ty),* $(,)?) => {$(
        impl ObjectReadInput for $t {
            fn read_request(&self) -> ReadRequest<'_> {
                ReadRequest {
                    conditions: ReadConditions {
                        if_match: self.if_match.as_ref(),
                        if_unmodified_since: self.if_unmodified_since.as_ref(),
                        if_none_match: self.if_none_match.as_ref(),
                        if_modified_since: self.if_modified_since.as_ref(),
                    },
                    range: self.range.as_ref(),
                    part_number: self.part_number,
                    checksum_mode: self.checksum_mode.as_ref(),
                }
            }
        }
    )*};
}
impl_object_read_input!(GetObjectInput, HeadObjectInput);

/// CopyObjectInput and UploadPartCopyInput: the `x-amz-copy-source-if-*` conditions.
trait CopyInput {
    fn copy_source_conditions(&self) -> ReadConditions<'_>;
}

macro_rules! impl_copy_input {
    ($($t:ty),* $(,)?) => {$(
        impl CopyInput for $t {
            fn copy_source_conditions(&self) -> ReadConditions<'_> {
                ReadConditions {
                    if_match: self.copy_source_if_match.as_ref(),
                    if_unmodified_since: self.copy_source_if_unmodified_since.as_ref(),
                    if_none_match: self.copy_source_if_none_match.as_ref(),
                    if_modified_since: self.copy_source_if_modified_since.as_ref(),
                }
            }
        }
    )*};
}
impl_copy_input!(CopyObjectInput, UploadPartCopyInput);

/// Requests that set an object's standard headers (PutObject, CopyObject with
/// `REPLACE`, CreateMultipartUpload).
trait StdHeadersInput {
    /// Takes the standard headers out of the request, in their stored form.
    fn take_std_headers(&mut self) -> StdHeaders;
}

macro_rules! impl_std_headers_input {
    ($($t:ty),* $(,)?) => {$(
        impl StdHeadersInput for $t {
            fn take_std_headers(&mut self) -> StdHeaders {
                StdHeaders {
                    content_type: self.content_type.take(),
                    content_encoding: stored_content_encoding(self.content_encoding.take()),
                    content_disposition: self.content_disposition.take(),
                    content_language: self.content_language.take(),
                    cache_control: self.cache_control.take(),
                    expires: expires_str(self.expires.as_ref()),
                    website_redirect_location: self.website_redirect_location.take(),
                    storage_class: self.storage_class.as_ref().and_then(stored_storage_class),
                }
            }
        }
    )*};
}
impl_std_headers_input!(PutObjectInput, CopyObjectInput, CreateMultipartUploadInput);

/// Requests that upload data (PutObject, UploadPart).
trait UploadInput {
    /// The checksum value the client sent in an `x-amz-checksum-*` header, if any.
    fn header_checksum(&self) -> Option<(Algo, String)>;
}

macro_rules! impl_upload_input {
    ($($t:ty),* $(,)?) => {$(
        impl UploadInput for $t {
            fn header_checksum(&self) -> Option<(Algo, String)> {
                [
                    (Algo::Crc32, &self.checksum_crc32),
                    (Algo::Crc32c, &self.checksum_crc32c),
                    (Algo::Crc64Nvme, &self.checksum_crc64nvme),
                    (Algo::Sha1, &self.checksum_sha1),
                    (Algo::Sha256, &self.checksum_sha256),
                ]
                .into_iter()
                .find_map(|(a, v)| v.as_ref().map(|v| (a, v.clone())))
            }
        }
    )*};
}
impl_upload_input!(PutObjectInput, UploadPartInput);

/// Responses that report an object's or a part's additional checksum.
trait WithChecksum {
    /// Sets the `checksum_*` fields (and `checksum_type`, where the type has one).
    fn with_checksum(self, c: Option<&StoredChecksum>) -> Self;
}

/// Implements [`WithChecksum`]; a type followed by `: checksum_type` also carries the
/// checksum type.
macro_rules! impl_with_checksum {
    ($($t:ty $(: $kind:ident)?),* $(,)?) => {$(
        impl WithChecksum for $t {
            fn with_checksum(self, c: Option<&StoredChecksum>) -> Self {
                let f = checksum_fields(c);
                Self {
                    checksum_crc32: f.crc32,
                    checksum_crc32c: f.crc32c,
                    checksum_crc64nvme: f.crc64,
                    checksum_sha1: f.sha1,
                    checksum_sha256: f.sha256,
                    $($kind: f.kind,)?
                    ..self
                }
            }
        }
    )*};
}
impl_with_checksum!(
    PutObjectOutput: checksum_type,
    GetObjectOutput: checksum_type,
    HeadObjectOutput: checksum_type,
    CopyObjectResult: checksum_type,
    CompleteMultipartUploadOutput: checksum_type,
    UploadPartOutput,
    CopyPartResult,
    Part,
);

/// CopyObjectResult and CopyPartResult: what a copy wrote.
trait CopyResult {
    fn copied(etag_value: &str, last_modified_ms: i64, checksum: Option<&StoredChecksum>) -> Self;
}

macro_rules! impl_copy_result {
    ($($t:ty),* $(,)?) => {$(
        impl CopyResult for $t {
            fn copied(
                etag_value: &str,
                last_modified_ms: i64,
                checksum: Option<&StoredChecksum>,
            ) -> Self {
                Self {
                    e_tag: Some(etag(etag_value)),
                    last_modified: Some(ts(last_modified_ms)),
                    ..Default::default()
                }
                .with_checksum(checksum)
            }
        }
    )*};
}
impl_copy_result!(CopyObjectResult, CopyPartResult);

/// GetObjectOutput and HeadObjectOutput: the object's headers as read by a [`ReadPlan`].
trait ObjectReadOutput {
    fn describe(rec: &ObjectRecord, plan: &ReadPlan) -> Self;
}

macro_rules! impl_object_read_output {
    ($($t:ty),* $(,)?) => {$(
        impl ObjectReadOutput for $t {
            fn describe(rec: &ObjectRecord, plan: &ReadPlan) -> Self {
                let h = &rec.headers;
                Self {
                    accept_ranges: Some("bytes".into()),
                    cache_control: h.cache_control.clone(),
                    content_disposition: h.content_disposition.clone(),
                    content_encoding: h.content_encoding.clone(),
                    content_language: h.content_language.clone(),
                    content_length: Some(to_i64(plan.range.end - plan.range.start)),
                    content_range: plan.content_range.clone(),
                    content_type: Some(
                        h.content_type
                            .clone()
                            .unwrap_or_else(|| "binary/octet-stream".into()),
                    ),
                    e_tag: Some(etag(&rec.etag)),
                    expires: expires_ts(h.expires.as_deref()),
                    last_modified: Some(ts(rec.last_modified_ms)),
                    metadata: metadata_out(&rec.metadata),
                    parts_count: plan.parts_count,
                    version_id: rec.version_id.clone(),
                    storage_class: h.storage_class.clone().map(StorageClass::from),
                    website_redirect_location: h.website_redirect_location.clone(),
                    ..Default::default()
                }
                .with_checksum(plan.checksum.as_ref())
            }
        }
    )*};
}
impl_object_read_output!(GetObjectOutput, HeadObjectOutput);

// ----- the S3 trait ---------------------------------------------------------------------

#[async_trait::async_trait]
impl S3 for EsbS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let input = req.input;
        let all = self
            .blocking(|s| s.list_buckets())
            .await
            .map_err(|e| map_err(e, "", ""))?;
        // max-buckets 1..=10000 as on S3; without it every bucket, on one page.
        let max = match input.max_buckets {
            None => usize::MAX,
            Some(n) if (1..=10_000).contains(&n) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                return Err(invalid_argument(
                    "The value of max-buckets must be between 1 and 10000.",
                ))
            }
        };
        // The continuation token is the last name of the previous page, hex-encoded.
        let after = match input
            .continuation_token
            .as_deref()
            .filter(|t| !t.is_empty())
        {
            Some(tok) => Some(
                hex::decode(tok)
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .ok_or_else(|| {
                        invalid_argument("The continuation token provided is incorrect")
                    })?,
            ),
            None => None,
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let region = input.bucket_region.clone();
        let mut matching = all.into_iter().filter(|(n, rec)| {
            n.starts_with(&prefix)
                && after.as_ref().is_none_or(|a| n > a)
                && region.as_ref().is_none_or(|r| *r == rec.region)
        });
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut more = false;
        for (name, rec) in matching.by_ref() {
            if buckets.len() == max {
                more = true;
                break;
            }
            buckets.push(Bucket {
                bucket_region: Some(rec.region),
                creation_date: Some(ts(rec.created_ms)),
                name: Some(name),
            });
        }
        let continuation_token = if more {
            buckets
                .last()
                .and_then(|b| b.name.as_ref())
                .map(hex::encode)
        } else {
            None
        };
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            continuation_token,
            owner: Some(owner()),
            prefix: input.prefix,
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        let region = self.region.clone();
        let created = self
            .on_bucket(&bucket, move |s, b| s.create_bucket(b, &region, now_ms()))
            .await;
        match created {
            // In us-east-1 (only), S3 answers 200 to re-creating a bucket one already owns
            // (a legacy behaviour); every other region answers 409 BucketAlreadyOwnedByYou.
            Err(e)
                if self.region == "us-east-1"
                    && *e.code() == S3ErrorCode::BucketAlreadyOwnedByYou => {}
            other => other?,
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let rec = self.bucket_record(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(rec.region),
            ..Default::default()
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.on_bucket(&req.input.bucket, |s, b| s.delete_bucket(b))
            .await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let rec = self.bucket_record(&req.input.bucket).await?;
        let location_constraint = if rec.region == "us-east-1" {
            None
        } else {
            Some(BucketLocationConstraint::from(rec.region))
        };
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let mut input = req.input;
        if input.write_offset_bytes.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "Appending writes are not supported"
            ));
        }
        if input.sse_customer_algorithm.is_some() {
            return Err(s3_error!(NotImplemented, "SSE-C is not supported"));
        }
        check_upload_headers(&req.headers)?;
        self.require_bucket(&input.bucket).await?;
        let tags = parse_tag_header(input.tagging.as_deref())?;
        let metadata = metadata_map(input.metadata.take())?;
        let (algo, expected) = checksum_plan(
            &req.headers,
            input.checksum_algorithm.as_ref(),
            input.header_checksum(),
        )?;
        let cond = WriteCondition {
            if_none_match_any: match &input.if_none_match {
                None => false,
                Some(ETagCondition::Any) => true,
                Some(_) => {
                    return Err(s3_error!(
                        NotImplemented,
                        "If-None-Match on PUT supports only '*'"
                    ))
                }
            },
            if_match: input.if_match.as_ref().map(if_match_value),
        };
        let body = input.body.take().ok_or_else(missing_body)?;
        let data = io::ingest(&self.store, body, algo).await?;
        let declared_length = input.content_length;
        let verified = verify_digests(
            &data,
            input.content_md5.as_deref(),
            expected,
            req.trailing_headers.as_ref(),
        )
        .and_then(|checksum| match declared_length {
            Some(len) if u64::try_from(len).ok() != Some(data.size) => Err(s3_error!(
                IncompleteBody,
                "The body length does not match Content-Length"
            )),
            _ => Ok(checksum),
        });
        let checksum = self.discard_on_error(&data, verified).await?;
        let record = ObjectRecord {
            size: data.size,
            etag: hex::encode(data.digests.md5),
            last_modified_ms: now_ms(),
            headers: input.take_std_headers(),
            metadata,
            tags,
            checksum,
            part_sizes: Vec::new(),
            segments: data.segments(),
            version_id: None,
            delete_marker: false,
        };
        let inline = match &data.data {
            Data::Inline(b) => b.clone(),
            Data::File(_) => bytes::Bytes::new(),
        };
        let rec2 = record.clone();
        let version_id = self
            .commit_data(
                data.segments(),
                &input.bucket,
                &input.key,
                move |s, b, k| s.put_object(b, k, &rec2, &inline, &cond),
            )
            .await?;
        Ok(S3Response::new(
            PutObjectOutput {
                e_tag: Some(etag(&record.etag)),
                size: Some(to_i64(record.size)),
                version_id,
                ..Default::default()
            }
            .with_checksum(record.checksum.as_ref()),
        ))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (obj, opened) = self
            .load_open(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        let rec = &obj.record;
        let read = input.read_request();
        read.conditions.check(rec, not_modified)?;
        if input.part_number.is_some() && input.range.is_some() {
            return Err(invalid_argument(
                "Cannot specify both Range header and partNumber query parameter",
            ));
        }
        let plan = plan_read(rec, &read)?;
        let body = io::read_stream(opened, plan.range.clone());
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            tag_count: if rec.tags.is_empty() {
                None
            } else {
                Some(i32::try_from(rec.tags.len()).unwrap_or(0))
            },
            ..GetObjectOutput::describe(rec, &plan)
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let obj = self
            .load(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        let rec = &obj.record;
        let read = input.read_request();
        read.conditions.check(rec, not_modified)?;
        let plan = plan_read(rec, &read)?;
        let mut resp = S3Response::new(HeadObjectOutput::describe(rec, &plan));
        if plan.partial {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        if let Some(v) = input.version_id.as_deref() {
            check_version_id(v)?;
        }
        let if_match = input.if_match.as_ref().map(if_match_value);
        let version = input.version_id.clone();
        let done = self
            .on_key(&input.bucket, &input.key, move |s, b, k| {
                s.delete_object(b, k, if_match.as_deref(), version.as_deref())
            })
            .await?;
        self.drop_segments(done.unused).await;
        no_content(DeleteObjectOutput {
            delete_marker: done.delete_marker.then_some(true),
            version_id: done.version_id,
            ..Default::default()
        })
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        if input.delete.objects.len() > 1000 {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                "A DeleteObjects request may name at most 1000 keys",
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        let mut items = Vec::new();
        for obj in input.delete.objects {
            if let Some(Err(err)) = obj.version_id.as_deref().map(check_version_id) {
                errors.push(delete_error(obj.key, &err, obj.version_id));
                continue;
            }
            items.push(DeleteItem {
                if_match: obj.e_tag.as_ref().map(|e| e.value().to_owned()),
                key: obj.key,
                version_id: obj.version_id,
            });
        }
        let keys: Vec<(String, Option<String>)> = items
            .iter()
            .map(|i| (i.key.clone(), i.version_id.clone()))
            .collect();
        let results = self
            .on_bucket(&input.bucket, move |s, b| s.delete_objects(b, items))
            .await?;
        let mut unused = Vec::new();
        for ((key, requested), result) in keys.into_iter().zip(results) {
            match result {
                Ok(done) => {
                    unused.extend(done.unused);
                    if !quiet {
                        // A marker made by this delete is reported as DeleteMarkerVersionId,
                        // a version removed by id as VersionId (as S3 does).
                        let made_marker = requested.is_none() && done.delete_marker;
                        deleted.push(DeletedObject {
                            key: Some(key),
                            delete_marker: done.delete_marker.then_some(true),
                            delete_marker_version_id: if made_marker {
                                done.version_id.clone()
                            } else {
                                None
                            },
                            version_id: if made_marker { None } else { requested },
                        });
                    }
                }
                Err(e) => {
                    let err = map_err(e, &input.bucket, &key);
                    errors.push(delete_error(key, &err, requested));
                }
            }
        }
        self.drop_segments(unused).await;
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: if errors.is_empty() {
                None
            } else {
                Some(errors)
            },
            request_charged: None,
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let mut input = req.input;
        let source = parse_copy_source(&input.copy_source)?;
        let (src_bucket, src_key) = (source.0.clone(), source.1.clone());
        self.require_bucket(&input.bucket).await?;
        let (src, opened) = self
            .open_copy_source(&source, input.copy_source_conditions())
            .await?;
        let replace_meta = replaces(
            input
                .metadata_directive
                .as_ref()
                .map(MetadataDirective::as_str),
            "metadata",
        )?;
        let replace_tags = replaces(
            input
                .tagging_directive
                .as_ref()
                .map(TaggingDirective::as_str),
            "tagging",
        )?;
        if src_bucket == input.bucket
            && src_key == input.key
            && source.2.is_none()
            && !replace_meta
            && !replace_tags
        {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
            ));
        }
        let algo = requested_algorithm(input.checksum_algorithm.as_ref())?.or_else(|| {
            src.record
                .checksum
                .as_ref()
                .filter(|c| c.kind == "FULL_OBJECT")
                .and_then(|c| Algo::parse(&c.algorithm))
        });
        let size = src.record.size;
        // Validate the replacement metadata and tags before copying any data.
        let new_metadata = if replace_meta {
            Some(metadata_map(input.metadata.take())?)
        } else {
            None
        };
        let new_tags = if replace_tags {
            Some(parse_tag_header(input.tagging.as_deref())?)
        } else {
            None
        };
        let data = io::copy_range(&self.store, opened, 0..size, algo, false).await?;
        let mut record = src.record;
        record.last_modified_ms = now_ms();
        record.segments = data.segments();
        record.checksum = data.digests.checksum.as_ref().map(full_object_checksum);
        if replace_meta {
            record.headers = input.take_std_headers();
            record.metadata = new_metadata.unwrap_or_default();
        } else if let Some(sc) = input.storage_class.as_ref() {
            record.headers.storage_class = stored_storage_class(sc);
        }
        if let Some(tags) = new_tags {
            record.tags = tags;
        }
        let inline = data.inline().to_vec();
        record.version_id = None;
        record.delete_marker = false;
        let rec2 = record.clone();
        let version_id = self
            .commit_data(
                data.segments(),
                &input.bucket,
                &input.key,
                move |s, b, k| s.put_object(b, k, &rec2, &inline, &WriteCondition::default()),
            )
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult::copied(
                &record.etag,
                record.last_modified_ms,
                record.checksum.as_ref(),
            )),
            copy_source_version_id: source.2.clone(),
            version_id,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let ListingRequest { enc, max, prefix } = listing_request(
            input.encoding_type.as_ref(),
            (input.max_keys, "max-keys"),
            input.prefix.as_deref(),
        )?;
        let marker = input.marker.clone().filter(|m| !m.is_empty());
        // An empty delimiter is no delimiter, and is not echoed (as on S3).
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let res = self
            .list_keys(&input.bucket, &prefix, delimiter.clone(), marker, max)
            .await?;
        let page = listing_page(res.entries, enc, true);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(encode_if(enc, prefix)),
            marker: maybe_encode(enc, input.marker),
            max_keys: Some(page_size_out(max)),
            is_truncated: Some(res.truncated),
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes),
            // S3 returns NextMarker only when a delimiter was given (clients otherwise
            // resume after the last key).
            next_marker: if res.truncated && delimiter.is_some() {
                maybe_encode(enc, page.last)
            } else {
                None
            },
            delimiter: maybe_encode(enc, delimiter),
            encoding_type: input.encoding_type,
            request_charged: None,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let ListingRequest { enc, max, prefix } = listing_request(
            input.encoding_type.as_ref(),
            (input.max_keys, "max-keys"),
            input.prefix.as_deref(),
        )?;
        let after = match input.continuation_token.as_deref() {
            Some(tok) => {
                let bad_token = || invalid_argument("The continuation token provided is incorrect");
                let raw = hex::decode(tok).map_err(|_| bad_token())?;
                Some(String::from_utf8(raw).map_err(|_| bad_token())?)
            }
            None => input.start_after.clone().filter(|s| !s.is_empty()),
        };
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let res = self
            .list_keys(&input.bucket, &prefix, delimiter.clone(), after, max)
            .await?;
        let with_owner = input.fetch_owner.unwrap_or(false);
        let page = listing_page(res.entries, enc, with_owner);
        let key_count =
            i32::try_from(page.contents.len() + page.prefixes.len()).unwrap_or(i32::MAX);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode_if(enc, prefix)),
            max_keys: Some(page_size_out(max)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(res.truncated),
            next_continuation_token: if res.truncated {
                page.last.map(hex::encode)
            } else {
                None
            },
            contents: Some(page.contents),
            common_prefixes: Some(page.prefixes),
            delimiter: maybe_encode(enc, delimiter),
            encoding_type: input.encoding_type,
            start_after: maybe_encode(enc, input.start_after),
            request_charged: None,
        }))
    }

    // ----- versioning ---------------------------------------------------------------------

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let input = req.input;
        if input.versioning_configuration.mfa_delete.is_some() || input.mfa.is_some() {
            return Err(s3_error!(NotImplemented, "MFA delete is not supported"));
        }
        let status = match input.versioning_configuration.status.as_ref().map(|s| s.as_str()) {
            Some(s @ ("Enabled" | "Suspended")) => s.to_owned(),
            _ => {
                return Err(S3Error::with_message(
                    S3ErrorCode::MalformedXML,
                    "The XML you provided was not well-formed or did not validate against our published schema",
                ))
            }
        };
        self.on_bucket(&input.bucket, move |s, b| s.set_versioning(b, &status))
            .await?;
        Ok(S3Response::new(PutBucketVersioningOutput {}))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let status = self
            .on_bucket(&req.input.bucket, |s, b| s.versioning(b))
            .await?;
        Ok(S3Response::new(GetBucketVersioningOutput {
            mfa_delete: None,
            status: status.map(BucketVersioningStatus::from),
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        let ListingRequest { enc, max, prefix } = listing_request(
            input.encoding_type.as_ref(),
            (input.max_keys, "max-keys"),
            input.prefix.as_deref(),
        )?;
        let key_marker = input.key_marker.clone().filter(|m| !m.is_empty());
        let version_marker = input.version_id_marker.clone().filter(|m| !m.is_empty());
        if version_marker.is_some() && key_marker.is_none() {
            return Err(invalid_argument(
                "A version-id marker cannot be specified without a key marker.",
            ));
        }
        if let Some(v) = version_marker.as_deref() {
            check_version_id(v)?;
        }
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let (p, d) = (prefix.clone(), delimiter.clone());
        let res = self
            .on_bucket(&input.bucket, move |s, b| {
                s.list_versions(
                    b,
                    &p,
                    d.as_deref(),
                    key_marker.as_deref(),
                    version_marker.as_deref(),
                    max,
                )
            })
            .await?;
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        let mut prefixes = Vec::new();
        let mut last: Option<(String, Option<String>)> = None;
        for e in res.entries {
            match e {
                VersionEntry::Version {
                    key,
                    record,
                    is_latest,
                } => {
                    last = Some((key.clone(), Some(record.version().to_owned())));
                    if record.delete_marker {
                        markers.push(DeleteMarkerEntry {
                            is_latest: Some(is_latest),
                            key: Some(encode_if(enc, key)),
                            last_modified: Some(ts(record.last_modified_ms)),
                            owner: Some(owner()),
                            version_id: Some(record.version().to_owned()),
                        });
                    } else {
                        let o = list_object(key, &record, enc, true);
                        versions.push(ObjectVersion {
                            checksum_algorithm: o.checksum_algorithm,
                            checksum_type: o.checksum_type,
                            e_tag: o.e_tag,
                            is_latest: Some(is_latest),
                            key: o.key,
                            last_modified: o.last_modified,
                            owner: o.owner,
                            restore_status: None,
                            size: o.size,
                            storage_class: Some(ObjectVersionStorageClass::from(
                                storage_class_name(&record.headers),
                            )),
                            version_id: Some(record.version().to_owned()),
                        });
                    }
                }
                VersionEntry::Prefix(p) => {
                    last = Some((p.clone(), None));
                    prefixes.push(common_prefix(p, enc));
                }
            }
        }
        let (next_key, next_version) = match (res.truncated, last) {
            (true, Some((k, v))) => (Some(k), v),
            _ => (None, None),
        };
        Ok(S3Response::new(ListObjectVersionsOutput {
            common_prefixes: Some(prefixes),
            delete_markers: Some(markers),
            delimiter: maybe_encode(enc, delimiter),
            encoding_type: input.encoding_type,
            is_truncated: Some(res.truncated),
            key_marker: Some(encode_if(enc, input.key_marker.unwrap_or_default())),
            max_keys: Some(page_size_out(max)),
            name: Some(input.bucket),
            next_key_marker: maybe_encode(enc, next_key),
            next_version_id_marker: next_version,
            prefix: Some(encode_if(enc, prefix)),
            request_charged: None,
            version_id_marker: Some(input.version_id_marker.unwrap_or_default()),
            versions: Some(versions),
        }))
    }

    // ----- tagging ------------------------------------------------------------------------

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let obj = self.load(&req.input.bucket, &req.input.key, None).await?;
        current_version_only(req.input.version_id.as_deref(), &obj.record)?;
        let tag_set = obj
            .record
            .tags
            .into_iter()
            .map(|(k, v)| Tag {
                key: Some(k),
                value: Some(v),
            })
            .collect();
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set,
            version_id: None,
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let input = req.input;
        if input.version_id.is_some() {
            let obj = self.load(&input.bucket, &input.key, None).await?;
            current_version_only(input.version_id.as_deref(), &obj.record)?;
        }
        let tags = tagging_to_vec(input.tagging)?;
        self.on_key(&input.bucket, &input.key, move |s, b, k| {
            s.set_tags(b, k, tags)
        })
        .await?;
        Ok(S3Response::new(PutObjectTaggingOutput { version_id: None }))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let input = req.input;
        if input.version_id.is_some() {
            let obj = self.load(&input.bucket, &input.key, None).await?;
            current_version_only(input.version_id.as_deref(), &obj.record)?;
        }
        self.on_key(&input.bucket, &input.key, |s, b, k| {
            s.set_tags(b, k, Vec::new())
        })
        .await?;
        no_content(DeleteObjectTaggingOutput { version_id: None })
    }

    // ----- multipart uploads -------------------------------------------------------------

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let mut input = req.input;
        if input.sse_customer_algorithm.is_some() {
            return Err(s3_error!(NotImplemented, "SSE-C is not supported"));
        }
        let tags = parse_tag_header(input.tagging.as_deref())?;
        let algo = requested_algorithm(input.checksum_algorithm.as_ref())?;
        let checksum_type = input.checksum_type.as_ref().map(|t| t.as_str().to_owned());
        let template = ObjectRecord {
            size: 0,
            etag: String::new(),
            last_modified_ms: 0,
            headers: input.take_std_headers(),
            metadata: metadata_map(input.metadata.take())?,
            tags,
            checksum: None,
            part_sizes: Vec::new(),
            segments: Vec::new(),
            version_id: None,
            delete_marker: false,
        };
        let rec = UploadRecord {
            initiated_ms: now_ms(),
            template,
            checksum_algorithm: algo.map(|a| a.name().to_owned()),
            checksum_type: checksum_type.clone(),
            parts: BTreeMap::new(),
        };
        let id = new_upload_id();
        self.on_upload(&input.bucket, &input.key, &id, move |s, b, k, i| {
            s.create_upload(b, k, i, &rec)
        })
        .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm: algo.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
            checksum_type: checksum_type.map(ChecksumType::from),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let mut input = req.input;
        check_upload_headers(&req.headers)?;
        let number = check_part_number(input.part_number)?;
        let upload = self
            .load_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let upload_algo = upload
            .record
            .checksum_algorithm
            .as_deref()
            .and_then(Algo::parse);
        let (algo, expected) = checksum_plan(
            &req.headers,
            input.checksum_algorithm.as_ref(),
            input.header_checksum(),
        )?;
        let body = input.body.take().ok_or_else(missing_body)?;
        // Parts are always stored in files (never inline): a completed object is a list
        // of part files.
        let data = io::ingest_file(&self.store, body, algo.or(upload_algo)).await?;
        let verified = verify_digests(
            &data,
            input.content_md5.as_deref(),
            expected,
            req.trailing_headers.as_ref(),
        );
        let checksum = self.discard_on_error(&data, verified).await?;
        let part = self.store_part(&upload, number, &data, checksum).await?;
        Ok(S3Response::new(
            UploadPartOutput {
                e_tag: Some(etag(&part.etag)),
                ..Default::default()
            }
            .with_checksum(part.checksum.as_ref()),
        ))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let number = check_part_number(input.part_number)?;
        let source = parse_copy_source(&input.copy_source)?;
        let upload = self
            .load_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let (src, opened) = self
            .open_copy_source(&source, input.copy_source_conditions())
            .await?;
        let range = match input.copy_source_range.as_deref() {
            Some(r) => parse_copy_range(r, src.record.size)?,
            None => 0..src.record.size,
        };
        let algo = upload
            .record
            .checksum_algorithm
            .as_deref()
            .and_then(Algo::parse);
        let data = io::copy_range(&self.store, opened, range, algo, true).await?;
        let checksum = data.digests.checksum.as_ref().map(full_object_checksum);
        let part = self.store_part(&upload, number, &data, checksum).await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult::copied(
                &part.etag,
                part.last_modified_ms,
                part.checksum.as_ref(),
            )),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let requested: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag
                        .map(|e| strip_quotes(e.value()).to_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        if requested.is_empty() {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                "You must specify at least one part",
            ));
        }
        if requested.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidPartOrder,
                "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            ));
        }
        let cond = WriteCondition {
            if_none_match_any: matches!(input.if_none_match, Some(ETagCondition::Any)),
            if_match: input.if_match.as_ref().map(if_match_value),
        };
        let build_err: Arc<std::sync::Mutex<Option<S3Error>>> = Arc::default();
        let build_err2 = build_err.clone();
        let result = self
            .on_upload(
                &input.bucket,
                &input.key,
                &input.upload_id,
                move |s, b, k, i| {
                    s.complete_upload(b, k, i, &cond, move |up| {
                        build_object(up, &requested).map_err(|e| {
                            *build_err2.lock().expect("lock") = Some(e);
                            StoreError::PreconditionFailed
                        })
                    })
                },
            )
            .await;
        let (record, unused) = match result {
            Ok(v) => v,
            Err(e) => return Err(build_err.lock().expect("lock").take().unwrap_or(e)),
        };
        self.drop_segments(unused).await;
        Ok(S3Response::new(
            CompleteMultipartUploadOutput {
                bucket: Some(input.bucket.clone()),
                key: Some(input.key.clone()),
                e_tag: Some(etag(&record.etag)),
                location: Some(format!("/{}/{}", input.bucket, input.key)),
                version_id: record.version_id.clone(),
                ..Default::default()
            }
            .with_checksum(record.checksum.as_ref()),
        ))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let parts = self
            .on_upload(&input.bucket, &input.key, &input.upload_id, |s, b, k, i| {
                s.abort_upload(b, k, i)
            })
            .await?;
        self.drop_segments(parts).await;
        no_content(AbortMultipartUploadOutput::default())
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let up = self
            .load_upload(&input.bucket, &input.key, &input.upload_id)
            .await?
            .record;
        let max = page_size(input.max_parts, "max-parts")?;
        let marker = u32::try_from(input.part_number_marker.unwrap_or(0)).unwrap_or(0);
        let mut parts = Vec::new();
        let mut truncated = false;
        for (n, p) in up.parts.range(marker + 1..) {
            if parts.len() == max {
                truncated = true;
                break;
            }
            parts.push(
                Part {
                    e_tag: Some(etag(&p.etag)),
                    last_modified: Some(ts(p.last_modified_ms)),
                    part_number: Some(i32::try_from(*n).unwrap_or(0)),
                    size: Some(to_i64(p.size)),
                    ..Default::default()
                }
                .with_checksum(p.checksum.as_ref()),
            );
        }
        let next = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            initiator: Some(initiator()),
            owner: Some(owner()),
            is_truncated: Some(truncated),
            max_parts: Some(page_size_out(max)),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            parts: Some(parts),
            storage_class: Some(StorageClass::from(storage_class_name(&up.template.headers))),
            checksum_algorithm: up.checksum_algorithm.clone().map(ChecksumAlgorithm::from),
            checksum_type: up.checksum_type.clone().map(ChecksumType::from),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let ListingRequest { enc, max, prefix } = listing_request(
            input.encoding_type.as_ref(),
            (input.max_uploads, "max-uploads"),
            input.prefix.as_deref(),
        )?;
        let (p, km, im) = (
            prefix.clone(),
            input.key_marker.clone(),
            input.upload_id_marker.clone(),
        );
        let all = self
            .on_bucket(&input.bucket, move |s, b| {
                s.list_uploads(
                    b,
                    &p,
                    km.as_deref().filter(|s| !s.is_empty()),
                    im.as_deref(),
                )
            })
            .await?;
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut next: Option<(String, String)> = None;
        for (key, id, up) in all {
            if let Some(d) = &delimiter {
                if let Some(i) = key[prefix.len()..].find(d.as_str()) {
                    let cp = key[..prefix.len() + i + d.len()].to_owned();
                    if prefixes.last() == Some(&cp) {
                        continue;
                    }
                    if uploads.len() + prefixes.len() == max {
                        truncated = true;
                        break;
                    }
                    next = Some((cp.clone(), String::new()));
                    prefixes.push(cp);
                    continue;
                }
            }
            if uploads.len() + prefixes.len() == max {
                truncated = true;
                break;
            }
            next = Some((key.clone(), id.clone()));
            uploads.push(MultipartUpload {
                checksum_algorithm: up.checksum_algorithm.clone().map(ChecksumAlgorithm::from),
                checksum_type: up.checksum_type.clone().map(ChecksumType::from),
                initiated: Some(ts(up.initiated_ms)),
                initiator: Some(initiator()),
                key: Some(encode_if(enc, key)),
                owner: Some(owner()),
                storage_class: Some(StorageClass::from(storage_class_name(&up.template.headers))),
                upload_id: Some(id),
            });
        }
        let (next_key, next_id) = match (truncated, next) {
            (true, Some((k, i))) => (Some(k), Some(i)),
            _ => (None, None),
        };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| common_prefix(p, enc))
                    .collect(),
            ),
            delimiter: maybe_encode(enc, input.delimiter),
            encoding_type: input.encoding_type,
            is_truncated: Some(truncated),
            key_marker: maybe_encode(enc, input.key_marker),
            max_uploads: Some(page_size_out(max)),
            next_key_marker: maybe_encode(enc, next_key),
            next_upload_id_marker: next_id,
            prefix: Some(encode_if(enc, prefix)),
            upload_id_marker: input.upload_id_marker,
            uploads: Some(uploads),
            request_charged: None,
        }))
    }
}

/// Builds the completed object from an upload and the client's part list.
fn build_object(up: &UploadRecord, requested: &[(i32, String)]) -> S3Result<ObjectRecord> {
    let invalid_part = |n: i32| {
        S3Error::with_message(
            S3ErrorCode::InvalidPart,
            format!("One or more of the specified parts could not be found (part {n}). The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."),
        )
    };
    let mut md5s = Vec::with_capacity(requested.len() * 16);
    let mut sums = Vec::new();
    let mut all_have_sums = true;
    let mut segments = Vec::new();
    let mut sizes = Vec::new();
    let mut size = 0u64;
    for (idx, (n, want_etag)) in requested.iter().enumerate() {
        let part = u32::try_from(*n)
            .ok()
            .and_then(|k| up.parts.get(&k))
            .ok_or_else(|| invalid_part(*n))?;
        if !want_etag.is_empty() && *want_etag != part.etag {
            return Err(invalid_part(*n));
        }
        if idx + 1 < requested.len() && part.size < MIN_PART_SIZE {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed object size.",
            ));
        }
        md5s.extend(hex::decode(&part.etag).map_err(|_| io::internal("corrupt part etag"))?);
        match part.checksum.as_ref().and_then(|c| io::unb64(&c.value)) {
            Some(raw) => sums.extend(raw),
            None => all_have_sums = false,
        }
        if let Some(seg) = &part.segment {
            segments.push(seg.clone());
        }
        sizes.push(part.size);
        size += part.size;
    }
    let md5 = {
        let mut h = io::Hasher::new(None);
        h.update(&md5s);
        h.finish().md5
    };
    let algo = up.checksum_algorithm.as_deref().and_then(Algo::parse);
    let checksum = match algo {
        Some(a)
            if all_have_sums
                && up.checksum_type.as_deref() != Some("FULL_OBJECT")
                && a != Algo::Crc64Nvme =>
        {
            Some(StoredChecksum {
                algorithm: a.name().to_owned(),
                value: format!("{}-{}", io::b64(&a.digest(&sums)), requested.len()),
                kind: "COMPOSITE".to_owned(),
            })
        }
        _ => None,
    };
    let mut record = up.template.clone();
    record.size = size;
    record.etag = format!("{}-{}", hex::encode(md5), requested.len());
    record.last_modified_ms = now_ms();
    record.checksum = checksum;
    record.part_sizes = sizes;
    record.segments = segments;
    Ok(record)
}
