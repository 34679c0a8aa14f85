//! The S3 operations, on top of [`Store`] and the streaming helpers in [`crate::io`].
//! Operations not implemented here answer `NotImplemented` (the `s3s` default).

use std::collections::BTreeMap;
use std::sync::Arc;

use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use time::OffsetDateTime;

use crate::io::{self, Algo, Data, Ingested};
use crate::store::{
    ObjectRecord, PartRecord, Segment, StdHeaders, Store, StoreError, StoredChecksum, StoredObject,
    UploadRecord, WriteCondition,
};

const OWNER_ID: &str = "esb";
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;
const MAX_TAGS: usize = 10;

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

    async fn drop_segments(&self, segments: Vec<Segment>) {
        if segments.is_empty() {
            return;
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.remove_segments(&segments)).await;
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        let b = bucket.to_owned();
        self.blocking(move |s| s.bucket(&b))
            .await
            .map_err(|e| map_err(e, bucket, ""))?;
        Ok(())
    }

    async fn load(&self, bucket: &str, key: &str) -> S3Result<StoredObject> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.blocking(move |s| s.get_object(&b, &k))
            .await
            .map_err(|e| map_err(e, bucket, key))
    }

    /// Loads an object and opens its data files. A concurrent overwrite may unlink the
    /// files between the two steps; then the newer version is loaded instead.
    async fn load_open(&self, bucket: &str, key: &str) -> S3Result<(StoredObject, io::OpenedData)> {
        for _ in 0..8 {
            let obj = self.load(bucket, key).await?;
            match io::open_data(&self.store, obj.inline.clone(), &obj.record.segments).await {
                Ok(data) => return Ok((obj, data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io::internal(format!("opening object data: {e}"))),
            }
        }
        Err(io::internal("the object kept changing while being opened"))
    }
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

fn map_err(e: StoreError, bucket: &str, key: &str) -> S3Error {
    match e {
        StoreError::NoSuchBucket => {
            S3Error::with_message(S3ErrorCode::NoSuchBucket, format!("The specified bucket does not exist: {bucket}"))
        }
        StoreError::NoSuchKey => S3Error::with_message(S3ErrorCode::NoSuchKey, format!("The specified key does not exist: {key}")),
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

fn etag_matches(cond: &ETagCondition, current: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == current,
    }
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// Evaluates If-Match / If-Unmodified-Since / If-None-Match / If-Modified-Since (RFC 9110 §13.2.2).
fn check_read_conditions(
    rec: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    not_modified_err: fn() -> S3Error,
) -> S3Result<()> {
    let lm = secs(rec.last_modified_ms);
    let to_secs = |t: &Timestamp| OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match {
        if !etag_matches(c, &rec.etag) {
            return Err(precondition_failed());
        }
    } else if let Some(t) = if_unmodified_since {
        if lm > to_secs(t) {
            return Err(precondition_failed());
        }
    }
    if let Some(c) = if_none_match {
        if etag_matches(c, &rec.etag) {
            return Err(not_modified_err());
        }
    } else if let Some(t) = if_modified_since {
        if lm <= to_secs(t) {
            return Err(not_modified_err());
        }
    }
    Ok(())
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

/// Checksum values the client sent in headers: (algorithm, base64 value).
fn header_checksum(
    crc32: &Option<String>,
    crc32c: &Option<String>,
    crc64: &Option<String>,
    sha1: &Option<String>,
    sha256: &Option<String>,
) -> Option<(Algo, String)> {
    [
        (Algo::Crc32, crc32),
        (Algo::Crc32c, crc32c),
        (Algo::Crc64Nvme, crc64),
        (Algo::Sha1, sha1),
        (Algo::Sha256, sha256),
    ]
    .into_iter()
    .find_map(|(a, v)| v.as_ref().map(|v| (a, v.clone())))
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
    let Some((algo, got)) = &data.digests.checksum else {
        return Ok(None);
    };
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
    Ok(Some(StoredChecksum {
        algorithm: algo.name().to_owned(),
        value: got.clone(),
        kind: "FULL_OBJECT".to_owned(),
    }))
}

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

#[allow(clippy::too_many_arguments)]
fn headers_from(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<&Timestamp>,
    website_redirect_location: Option<String>,
    storage_class: Option<&StorageClass>,
) -> StdHeaders {
    StdHeaders {
        content_type,
        content_encoding,
        content_disposition,
        content_language,
        cache_control,
        expires: expires_str(expires),
        website_redirect_location,
        storage_class: storage_class
            .map(|s| s.as_str().to_owned())
            .filter(|s| s != "STANDARD"),
    }
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

fn maybe_encode(enc: bool, s: Option<String>) -> Option<String> {
    if enc {
        s.map(|s| url_encode(&s))
    } else {
        s
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

fn max_keys(v: Option<i32>) -> S3Result<usize> {
    match v {
        None => Ok(1000),
        Some(n) if n < 0 => Err(invalid_argument("max-keys must not be negative")),
        Some(n) => Ok(usize::try_from(n).unwrap_or(0).min(1000)),
    }
}

fn owner() -> Owner {
    Owner {
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
        key: Some(if enc { url_encode(&key) } else { key }),
        last_modified: Some(ts(rec.last_modified_ms)),
        owner: if with_owner { Some(owner()) } else { None },
        restore_status: None,
        size: Some(i64::try_from(rec.size).unwrap_or(i64::MAX)),
        storage_class: Some(ObjectStorageClass::from(
            rec.headers
                .storage_class
                .clone()
                .unwrap_or_else(|| "STANDARD".to_owned()),
        )),
    }
}

/// Byte range of part `n` (1-based) of a multipart object.
fn part_range(rec: &ObjectRecord, n: i32) -> S3Result<std::ops::Range<u64>> {
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

fn parse_copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            if version_id.as_deref().is_some_and(|v| v != "null") {
                return Err(s3_error!(
                    NotImplemented,
                    "Object versions are not supported"
                ));
            }
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3_error!(
            NotImplemented,
            "Access point copy sources are not supported"
        )),
    }
}

fn parse_copy_range(s: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        invalid_argument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")
    };
    let spec = s.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last: u64 = b.trim().parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidRange,
            "The requested range is not satisfiable",
        ));
    }
    Ok(first..last + 1)
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

// ----- the S3 trait ---------------------------------------------------------------------

#[async_trait::async_trait]
impl S3 for EsbS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let all = self
            .blocking(|s| s.list_buckets())
            .await
            .map_err(|e| map_err(e, "", ""))?;
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let buckets = all
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(name, rec)| Bucket {
                bucket_region: Some(rec.region),
                creation_date: Some(ts(rec.created_ms)),
                name: Some(name),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            continuation_token: None,
            owner: Some(owner()),
            prefix: req.input.prefix,
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket.clone();
        let region = self.region.clone();
        let b = bucket.clone();
        self.blocking(move |s| s.create_bucket(&b, &region, now_ms()))
            .await
            .map_err(|e| map_err(e, &bucket, ""))?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let b = req.input.bucket.clone();
        let rec = self
            .blocking(move |s| s.bucket(&b))
            .await
            .map_err(|e| map_err(e, &req.input.bucket, ""))?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(rec.region),
            ..Default::default()
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let b = req.input.bucket.clone();
        self.blocking(move |s| s.delete_bucket(&b))
            .await
            .map_err(|e| map_err(e, &req.input.bucket, ""))?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let b = req.input.bucket.clone();
        let rec = self
            .blocking(move |s| s.bucket(&b))
            .await
            .map_err(|e| map_err(e, &req.input.bucket, ""))?;
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
        self.require_bucket(&input.bucket).await?;
        let tags = parse_tag_header(input.tagging.as_deref())?;
        let metadata = metadata_map(input.metadata.take())?;
        let from_header = header_checksum(
            &input.checksum_crc32,
            &input.checksum_crc32c,
            &input.checksum_crc64nvme,
            &input.checksum_sha1,
            &input.checksum_sha256,
        );
        let (algo, expected) =
            checksum_plan(&req.headers, input.checksum_algorithm.as_ref(), from_header)?;
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
            if_match: input.if_match.as_ref().map(|c| match c {
                ETagCondition::Any => "*".to_owned(),
                ETagCondition::ETag(e) => e.value().to_owned(),
            }),
        };
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "The request body is missing"))?;
        let data = io::ingest(&self.store, body, algo).await?;
        let checksum = match verify_digests(
            &data,
            input.content_md5.as_deref(),
            expected,
            req.trailing_headers.as_ref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.drop_segments(data.segments()).await;
                return Err(e);
            }
        };
        if let Some(len) = input.content_length {
            if u64::try_from(len).ok() != Some(data.size) {
                self.drop_segments(data.segments()).await;
                return Err(s3_error!(
                    IncompleteBody,
                    "The body length does not match Content-Length"
                ));
            }
        }
        let record = ObjectRecord {
            size: data.size,
            etag: hex::encode(data.digests.md5),
            last_modified_ms: now_ms(),
            headers: headers_from(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.expires.as_ref(),
                input.website_redirect_location,
                input.storage_class.as_ref(),
            ),
            metadata,
            tags,
            checksum: checksum.clone(),
            part_sizes: Vec::new(),
            segments: data.segments(),
        };
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let inline = match &data.data {
            Data::Inline(b) => b.clone(),
            Data::File(_) => bytes::Bytes::new(),
        };
        let rec2 = record.clone();
        let result = self
            .blocking(move |s| s.put_object(&bucket, &key, &rec2, &inline, &cond))
            .await;
        let old = match result {
            Ok(old) => old,
            Err(e) => {
                self.drop_segments(data.segments()).await;
                return Err(map_err(e, &input.bucket, &input.key));
            }
        };
        self.drop_segments(old).await;
        let f = checksum_fields(checksum.as_ref());
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&record.etag)),
            checksum_crc32: f.crc32,
            checksum_crc32c: f.crc32c,
            checksum_crc64nvme: f.crc64,
            checksum_sha1: f.sha1,
            checksum_sha256: f.sha256,
            checksum_type: f.kind,
            size: Some(i64::try_from(record.size).unwrap_or(i64::MAX)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(
                NotImplemented,
                "Object versions are not supported"
            ));
        }
        let (obj, opened) = self.load_open(&input.bucket, &input.key).await?;
        let rec = &obj.record;
        check_read_conditions(
            rec,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            not_modified,
        )?;
        if input.part_number.is_some() && input.range.is_some() {
            return Err(invalid_argument(
                "Cannot specify both Range header and partNumber query parameter",
            ));
        }
        let (range, partial) = match (&input.range, input.part_number) {
            (Some(r), _) => match r.check(rec.size) {
                Ok(r) => (r, true),
                Err(_) => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidRange,
                        "The requested range is not satisfiable",
                    ));
                }
            },
            (None, Some(n)) => (
                part_range(rec, n)?,
                !rec.part_sizes.is_empty() && rec.part_sizes.len() > 1,
            ),
            (None, None) => (0..rec.size, false),
        };
        let full = !partial && input.part_number.is_none();
        let content_range = partial.then(|| {
            format!(
                "bytes {}-{}/{}",
                range.start,
                range.end.saturating_sub(1),
                rec.size
            )
        });
        let len = range.end - range.start;
        let body = io::read_stream(opened, range);
        let checksum_on = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str().eq_ignore_ascii_case("ENABLED"));
        let f = checksum_fields(if checksum_on && full {
            rec.checksum.as_ref()
        } else {
            None
        });
        let parts_count = if rec.part_sizes.is_empty() {
            None
        } else {
            Some(i32::try_from(rec.part_sizes.len()).unwrap_or(i32::MAX))
        };
        let h = &rec.headers;
        Ok(S3Response::new(GetObjectOutput {
            accept_ranges: Some("bytes".into()),
            body: Some(StreamingBlob::wrap(body)),
            cache_control: h.cache_control.clone(),
            checksum_crc32: f.crc32,
            checksum_crc32c: f.crc32c,
            checksum_crc64nvme: f.crc64,
            checksum_sha1: f.sha1,
            checksum_sha256: f.sha256,
            checksum_type: f.kind,
            content_disposition: h.content_disposition.clone(),
            content_encoding: h.content_encoding.clone(),
            content_language: h.content_language.clone(),
            content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
            content_range,
            content_type: Some(
                h.content_type
                    .clone()
                    .unwrap_or_else(|| "binary/octet-stream".into()),
            ),
            e_tag: Some(etag(&rec.etag)),
            expires: expires_ts(h.expires.as_deref()),
            last_modified: Some(ts(rec.last_modified_ms)),
            metadata: metadata_out(&rec.metadata),
            parts_count: if input.part_number.is_some() {
                parts_count
            } else {
                None
            },
            storage_class: h.storage_class.clone().map(StorageClass::from),
            tag_count: if rec.tags.is_empty() {
                None
            } else {
                Some(i32::try_from(rec.tags.len()).unwrap_or(0))
            },
            website_redirect_location: h.website_redirect_location.clone(),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(
                NotImplemented,
                "Object versions are not supported"
            ));
        }
        let obj = self.load(&input.bucket, &input.key).await?;
        let rec = &obj.record;
        check_read_conditions(
            rec,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            not_modified,
        )?;
        let (range, partial) = match (&input.range, input.part_number) {
            (Some(r), _) => match r.check(rec.size) {
                Ok(r) => (r, true),
                Err(_) => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidRange,
                        "The requested range is not satisfiable",
                    ));
                }
            },
            (None, Some(n)) => (part_range(rec, n)?, rec.part_sizes.len() > 1),
            (None, None) => (0..rec.size, false),
        };
        let full = !partial && input.part_number.is_none();
        let checksum_on = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str().eq_ignore_ascii_case("ENABLED"));
        let f = checksum_fields(if checksum_on && full {
            rec.checksum.as_ref()
        } else {
            None
        });
        let parts_count = if rec.part_sizes.is_empty() {
            None
        } else {
            Some(i32::try_from(rec.part_sizes.len()).unwrap_or(i32::MAX))
        };
        let h = &rec.headers;
        let mut resp = S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            cache_control: h.cache_control.clone(),
            checksum_crc32: f.crc32,
            checksum_crc32c: f.crc32c,
            checksum_crc64nvme: f.crc64,
            checksum_sha1: f.sha1,
            checksum_sha256: f.sha256,
            checksum_type: f.kind,
            content_disposition: h.content_disposition.clone(),
            content_encoding: h.content_encoding.clone(),
            content_language: h.content_language.clone(),
            content_length: Some(i64::try_from(range.end - range.start).unwrap_or(i64::MAX)),
            content_range: partial.then(|| {
                format!(
                    "bytes {}-{}/{}",
                    range.start,
                    range.end.saturating_sub(1),
                    rec.size
                )
            }),
            content_type: Some(
                h.content_type
                    .clone()
                    .unwrap_or_else(|| "binary/octet-stream".into()),
            ),
            e_tag: Some(etag(&rec.etag)),
            expires: expires_ts(h.expires.as_deref()),
            last_modified: Some(ts(rec.last_modified_ms)),
            metadata: metadata_out(&rec.metadata),
            parts_count: if input.part_number.is_some() {
                parts_count
            } else {
                None
            },
            storage_class: h.storage_class.clone().map(StorageClass::from),
            website_redirect_location: h.website_redirect_location.clone(),
            ..Default::default()
        });
        if partial {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(
                NotImplemented,
                "Object versions are not supported"
            ));
        }
        let if_match = input.if_match.as_ref().map(|c| match c {
            ETagCondition::Any => "*".to_owned(),
            ETagCondition::ETag(e) => e.value().to_owned(),
        });
        let (b, k) = (input.bucket.clone(), input.key.clone());
        let old = self
            .blocking(move |s| s.delete_object(&b, &k, if_match.as_deref()))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        self.drop_segments(old).await;
        let mut resp = S3Response::new(DeleteObjectOutput::default());
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
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
            if obj.version_id.as_deref().is_some_and(|v| v != "null") {
                errors.push(Error {
                    code: Some("NotImplemented".into()),
                    key: Some(obj.key),
                    message: Some("Object versions are not supported".into()),
                    version_id: obj.version_id,
                });
                continue;
            }
            let if_match = obj.e_tag.as_ref().map(|e| e.value().to_owned());
            items.push((obj.key, if_match));
        }
        let keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        let b = input.bucket.clone();
        let results = self
            .blocking(move |s| s.delete_objects(&b, items))
            .await
            .map_err(|e| map_err(e, &input.bucket, ""))?;
        let mut unused = Vec::new();
        for (key, result) in keys.into_iter().zip(results) {
            match result {
                Ok(old) => {
                    unused.extend(old);
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let err = map_err(e, &input.bucket, &key);
                    errors.push(Error {
                        code: Some(err.code().as_str().to_owned()),
                        key: Some(key),
                        message: err.message().map(str::to_owned),
                        version_id: None,
                    });
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
        let (src_bucket, src_key) = parse_copy_source(&input.copy_source)?;
        self.require_bucket(&input.bucket).await?;
        let (src, opened) = self.load_open(&src_bucket, &src_key).await?;
        check_read_conditions(
            &src.record,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            precondition_failed,
        )?;
        let replace_meta = match input
            .metadata_directive
            .as_ref()
            .map(MetadataDirective::as_str)
        {
            None | Some("COPY") => false,
            Some("REPLACE") => true,
            Some(other) => {
                return Err(invalid_argument(format!(
                    "Unknown metadata directive: {other}"
                )))
            }
        };
        let replace_tags = match input
            .tagging_directive
            .as_ref()
            .map(TaggingDirective::as_str)
        {
            None | Some("COPY") => false,
            Some("REPLACE") => true,
            Some(other) => {
                return Err(invalid_argument(format!(
                    "Unknown tagging directive: {other}"
                )))
            }
        };
        if src_bucket == input.bucket && src_key == input.key && !replace_meta && !replace_tags {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
            ));
        }
        let algo = match input.checksum_algorithm.as_ref() {
            Some(a) => Some(
                Algo::parse(a.as_str())
                    .ok_or_else(|| invalid_argument("Unsupported checksum algorithm"))?,
            ),
            None => src
                .record
                .checksum
                .as_ref()
                .filter(|c| c.kind == "FULL_OBJECT")
                .and_then(|c| Algo::parse(&c.algorithm)),
        };
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
        let mut record = src.record.clone();
        record.last_modified_ms = now_ms();
        record.segments = data.segments();
        record.checksum = data.digests.checksum.as_ref().map(|(a, v)| StoredChecksum {
            algorithm: a.name().to_owned(),
            value: v.clone(),
            kind: "FULL_OBJECT".to_owned(),
        });
        if replace_meta {
            record.headers = headers_from(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.expires.as_ref(),
                input.website_redirect_location,
                input.storage_class.as_ref(),
            );
            record.metadata = new_metadata.unwrap_or_default();
        } else if let Some(sc) = input.storage_class.as_ref() {
            record.headers.storage_class = Some(sc.as_str().to_owned()).filter(|s| s != "STANDARD");
        }
        if let Some(tags) = new_tags {
            record.tags = tags;
        }
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let inline = data.inline().to_vec();
        let rec2 = record.clone();
        let old = match self
            .blocking(move |s| {
                s.put_object(&bucket, &key, &rec2, &inline, &WriteCondition::default())
            })
            .await
        {
            Ok(old) => old,
            Err(e) => {
                self.drop_segments(data.segments()).await;
                return Err(map_err(e, &input.bucket, &input.key));
            }
        };
        self.drop_segments(old).await;
        let f = checksum_fields(record.checksum.as_ref());
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                checksum_crc32: f.crc32,
                checksum_crc32c: f.crc32c,
                checksum_crc64nvme: f.crc64,
                checksum_sha1: f.sha1,
                checksum_sha256: f.sha256,
                checksum_type: f.kind,
                e_tag: Some(etag(&record.etag)),
                last_modified: Some(ts(record.last_modified_ms)),
            }),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let enc = wants_url_encoding(input.encoding_type.as_ref())?;
        let max = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let (b, p, d, m) = (
            input.bucket.clone(),
            prefix.clone(),
            input.delimiter.clone(),
            input.marker.clone(),
        );
        let res = self
            .blocking(move |s| {
                s.list_objects(
                    &b,
                    &p,
                    d.as_deref(),
                    m.as_deref().filter(|m| !m.is_empty()),
                    max,
                )
            })
            .await
            .map_err(|e| map_err(e, &input.bucket, ""))?;
        let mut contents = Vec::new();
        let mut prefixes = Vec::new();
        let mut last = None;
        for e in res.entries {
            match e {
                crate::store::ListEntry::Object(k, rec) => {
                    last = Some(k.clone());
                    contents.push(list_object(k, &rec, enc, true));
                }
                crate::store::ListEntry::Prefix(p) => {
                    last = Some(p.clone());
                    prefixes.push(CommonPrefix {
                        prefix: Some(if enc { url_encode(&p) } else { p }),
                    });
                }
            }
        }
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(maybe_encode(enc, Some(prefix)).unwrap_or_default()),
            marker: maybe_encode(enc, input.marker),
            max_keys: Some(i32::try_from(max).unwrap_or(1000)),
            is_truncated: Some(res.truncated),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            delimiter: maybe_encode(enc, input.delimiter),
            next_marker: if res.truncated {
                maybe_encode(enc, last)
            } else {
                None
            },
            encoding_type: input.encoding_type,
            request_charged: None,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let enc = wants_url_encoding(input.encoding_type.as_ref())?;
        let max = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = match input.continuation_token.as_deref() {
            Some(tok) => {
                let raw = hex::decode(tok).map_err(|_| {
                    invalid_argument("The continuation token provided is incorrect")
                })?;
                Some(String::from_utf8(raw).map_err(|_| {
                    invalid_argument("The continuation token provided is incorrect")
                })?)
            }
            None => input.start_after.clone().filter(|s| !s.is_empty()),
        };
        let (b, p, d) = (
            input.bucket.clone(),
            prefix.clone(),
            input.delimiter.clone(),
        );
        let res = self
            .blocking(move |s| s.list_objects(&b, &p, d.as_deref(), after.as_deref(), max))
            .await
            .map_err(|e| map_err(e, &input.bucket, ""))?;
        let with_owner = input.fetch_owner.unwrap_or(false);
        let mut contents = Vec::new();
        let mut prefixes = Vec::new();
        let mut last = None;
        for e in res.entries {
            match e {
                crate::store::ListEntry::Object(k, rec) => {
                    last = Some(k.clone());
                    contents.push(list_object(k, &rec, enc, with_owner));
                }
                crate::store::ListEntry::Prefix(p) => {
                    last = Some(p.clone());
                    prefixes.push(CommonPrefix {
                        prefix: Some(if enc { url_encode(&p) } else { p }),
                    });
                }
            }
        }
        let key_count = i32::try_from(contents.len() + prefixes.len()).unwrap_or(i32::MAX);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(maybe_encode(enc, Some(prefix)).unwrap_or_default()),
            max_keys: Some(i32::try_from(max).unwrap_or(1000)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(res.truncated),
            next_continuation_token: if res.truncated {
                last.map(hex::encode)
            } else {
                None
            },
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            delimiter: maybe_encode(enc, input.delimiter),
            encoding_type: input.encoding_type,
            start_after: maybe_encode(enc, input.start_after),
            request_charged: None,
        }))
    }

    // ----- tagging ------------------------------------------------------------------------

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let obj = self.load(&req.input.bucket, &req.input.key).await?;
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
        let tags = tagging_to_vec(input.tagging)?;
        let (b, k) = (input.bucket.clone(), input.key.clone());
        self.blocking(move |s| s.set_tags(&b, &k, tags))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        Ok(S3Response::new(PutObjectTaggingOutput { version_id: None }))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let input = req.input;
        let (b, k) = (input.bucket.clone(), input.key.clone());
        self.blocking(move |s| s.set_tags(&b, &k, Vec::new()))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        let mut resp = S3Response::new(DeleteObjectTaggingOutput { version_id: None });
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    }

    // ----- multipart uploads -------------------------------------------------------------

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        if input.sse_customer_algorithm.is_some() {
            return Err(s3_error!(NotImplemented, "SSE-C is not supported"));
        }
        let tags = parse_tag_header(input.tagging.as_deref())?;
        let algo = match input.checksum_algorithm.as_ref() {
            Some(a) => Some(
                Algo::parse(a.as_str())
                    .ok_or_else(|| invalid_argument("Unsupported checksum algorithm"))?,
            ),
            None => None,
        };
        let checksum_type = input.checksum_type.as_ref().map(|t| t.as_str().to_owned());
        let template = ObjectRecord {
            size: 0,
            etag: String::new(),
            last_modified_ms: 0,
            headers: headers_from(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.expires.as_ref(),
                input.website_redirect_location,
                input.storage_class.as_ref(),
            ),
            metadata: metadata_map(input.metadata)?,
            tags,
            checksum: None,
            part_sizes: Vec::new(),
            segments: Vec::new(),
        };
        let rec = UploadRecord {
            initiated_ms: now_ms(),
            template,
            checksum_algorithm: algo.map(|a| a.name().to_owned()),
            checksum_type: checksum_type.clone(),
            parts: BTreeMap::new(),
        };
        let id = new_upload_id();
        let (b, k, i) = (input.bucket.clone(), input.key.clone(), id.clone());
        self.blocking(move |s| s.create_upload(&b, &k, &i, &rec))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
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
        let input = req.input;
        let number = check_part_number(input.part_number)?;
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        let up = self
            .blocking(move |s| s.get_upload(&b, &k, &i))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        let from_header = header_checksum(
            &input.checksum_crc32,
            &input.checksum_crc32c,
            &input.checksum_crc64nvme,
            &input.checksum_sha1,
            &input.checksum_sha256,
        );
        let upload_algo = up.checksum_algorithm.as_deref().and_then(Algo::parse);
        let (mut algo, expected) =
            checksum_plan(&req.headers, input.checksum_algorithm.as_ref(), from_header)?;
        if algo.is_none() {
            algo = upload_algo;
        }
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "The request body is missing"))?;
        let data = ingest_to_file(&self.store, body, algo).await?;
        let checksum = match verify_digests(
            &data,
            input.content_md5.as_deref(),
            expected,
            req.trailing_headers.as_ref(),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.drop_segments(data.segments()).await;
                return Err(e);
            }
        };
        let part = PartRecord {
            size: data.size,
            etag: hex::encode(data.digests.md5),
            last_modified_ms: now_ms(),
            checksum: checksum.clone(),
            segment: data.segments().into_iter().next(),
        };
        let etag_value = part.etag.clone();
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        match self
            .blocking(move |s| s.put_part(&b, &k, &i, number, part))
            .await
        {
            Ok(old) => self.drop_segments(old.into_iter().collect()).await,
            Err(e) => {
                self.drop_segments(data.segments()).await;
                return Err(map_err(e, &input.bucket, &input.key));
            }
        }
        let f = checksum_fields(checksum.as_ref());
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&etag_value)),
            checksum_crc32: f.crc32,
            checksum_crc32c: f.crc32c,
            checksum_crc64nvme: f.crc64,
            checksum_sha1: f.sha1,
            checksum_sha256: f.sha256,
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let number = check_part_number(input.part_number)?;
        let (src_bucket, src_key) = parse_copy_source(&input.copy_source)?;
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        let up = self
            .blocking(move |s| s.get_upload(&b, &k, &i))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        let (src, opened) = self.load_open(&src_bucket, &src_key).await?;
        check_read_conditions(
            &src.record,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            precondition_failed,
        )?;
        let range = match input.copy_source_range.as_deref() {
            Some(r) => parse_copy_range(r, src.record.size)?,
            None => 0..src.record.size,
        };
        let algo = up.checksum_algorithm.as_deref().and_then(Algo::parse);
        let data = io::copy_range(&self.store, opened, range, algo, true).await?;
        let part = PartRecord {
            size: data.size,
            etag: hex::encode(data.digests.md5),
            last_modified_ms: now_ms(),
            checksum: data.digests.checksum.as_ref().map(|(a, v)| StoredChecksum {
                algorithm: a.name().to_owned(),
                value: v.clone(),
                kind: "FULL_OBJECT".to_owned(),
            }),
            segment: data.segments().into_iter().next(),
        };
        let out_part = part.clone();
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        match self
            .blocking(move |s| s.put_part(&b, &k, &i, number, part))
            .await
        {
            Ok(old) => self.drop_segments(old.into_iter().collect()).await,
            Err(e) => {
                self.drop_segments(data.segments()).await;
                return Err(map_err(e, &input.bucket, &input.key));
            }
        }
        let f = checksum_fields(out_part.checksum.as_ref());
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                checksum_crc32: f.crc32,
                checksum_crc32c: f.crc32c,
                checksum_crc64nvme: f.crc64,
                checksum_sha1: f.sha1,
                checksum_sha256: f.sha256,
                e_tag: Some(etag(&out_part.etag)),
                last_modified: Some(ts(out_part.last_modified_ms)),
            }),
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
            if_match: input.if_match.as_ref().map(|c| match c {
                ETagCondition::Any => "*".to_owned(),
                ETagCondition::ETag(e) => e.value().to_owned(),
            }),
        };
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        let build_err: Arc<std::sync::Mutex<Option<S3Error>>> = Arc::default();
        let build_err2 = build_err.clone();
        let result = self
            .blocking(move |s| {
                s.complete_upload(&b, &k, &i, &cond, move |up| {
                    build_object(up, &requested).map_err(|e| {
                        *build_err2.lock().expect("lock") = Some(e);
                        StoreError::PreconditionFailed
                    })
                })
            })
            .await;
        let (record, unused) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(err) = build_err.lock().expect("lock").take() {
                    return Err(err);
                }
                return Err(map_err(e, &input.bucket, &input.key));
            }
        };
        self.drop_segments(unused).await;
        let f = checksum_fields(record.checksum.as_ref());
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&record.etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            checksum_crc32: f.crc32,
            checksum_crc32c: f.crc32c,
            checksum_crc64nvme: f.crc64,
            checksum_sha1: f.sha1,
            checksum_sha256: f.sha256,
            checksum_type: f.kind,
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        let parts = self
            .blocking(move |s| s.abort_upload(&b, &k, &i))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        self.drop_segments(parts).await;
        let mut resp = S3Response::new(AbortMultipartUploadOutput::default());
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let (b, k, i) = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        let up = self
            .blocking(move |s| s.get_upload(&b, &k, &i))
            .await
            .map_err(|e| map_err(e, &input.bucket, &input.key))?;
        let max = match input.max_parts {
            None => 1000,
            Some(n) if n < 0 => return Err(invalid_argument("max-parts must not be negative")),
            Some(n) => usize::try_from(n).unwrap_or(0).min(1000),
        };
        let marker = u32::try_from(input.part_number_marker.unwrap_or(0)).unwrap_or(0);
        let mut parts = Vec::new();
        let mut truncated = false;
        for (n, p) in up.parts.range(marker + 1..) {
            if parts.len() == max {
                truncated = true;
                break;
            }
            let f = checksum_fields(p.checksum.as_ref());
            parts.push(Part {
                checksum_crc32: f.crc32,
                checksum_crc32c: f.crc32c,
                checksum_crc64nvme: f.crc64,
                checksum_sha1: f.sha1,
                checksum_sha256: f.sha256,
                e_tag: Some(etag(&p.etag)),
                last_modified: Some(ts(p.last_modified_ms)),
                part_number: Some(i32::try_from(*n).unwrap_or(0)),
                size: Some(i64::try_from(p.size).unwrap_or(i64::MAX)),
            });
        }
        let next = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            initiator: Some(Initiator {
                display_name: Some(OWNER_ID.into()),
                id: Some(OWNER_ID.into()),
            }),
            owner: Some(owner()),
            is_truncated: Some(truncated),
            max_parts: Some(i32::try_from(max).unwrap_or(1000)),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            parts: Some(parts),
            storage_class: Some(StorageClass::from(
                up.template
                    .headers
                    .storage_class
                    .clone()
                    .unwrap_or_else(|| "STANDARD".into()),
            )),
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
        let enc = wants_url_encoding(input.encoding_type.as_ref())?;
        let max = match input.max_uploads {
            None => 1000,
            Some(n) if n < 0 => return Err(invalid_argument("max-uploads must not be negative")),
            Some(n) => usize::try_from(n).unwrap_or(0).min(1000),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let (b, p, km, im) = (
            input.bucket.clone(),
            prefix.clone(),
            input.key_marker.clone(),
            input.upload_id_marker.clone(),
        );
        let all = self
            .blocking(move |s| {
                s.list_uploads(
                    &b,
                    &p,
                    km.as_deref().filter(|s| !s.is_empty()),
                    im.as_deref(),
                )
            })
            .await
            .map_err(|e| map_err(e, &input.bucket, ""))?;
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
                initiator: Some(Initiator {
                    display_name: Some(OWNER_ID.into()),
                    id: Some(OWNER_ID.into()),
                }),
                key: Some(if enc { url_encode(&key) } else { key }),
                owner: Some(owner()),
                storage_class: Some(StorageClass::from(
                    up.template
                        .headers
                        .storage_class
                        .clone()
                        .unwrap_or_else(|| "STANDARD".into()),
                )),
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
                    .map(|p| CommonPrefix {
                        prefix: Some(if enc { url_encode(&p) } else { p }),
                    })
                    .collect(),
            ),
            delimiter: maybe_encode(enc, input.delimiter),
            encoding_type: input.encoding_type,
            is_truncated: Some(truncated),
            key_marker: maybe_encode(enc, input.key_marker),
            max_uploads: Some(i32::try_from(max).unwrap_or(1000)),
            next_key_marker: maybe_encode(enc, next_key),
            next_upload_id_marker: next_id,
            prefix: Some(maybe_encode(enc, Some(prefix)).unwrap_or_default()),
            upload_id_marker: input.upload_id_marker,
            uploads: Some(uploads),
            request_charged: None,
        }))
    }
}

/// Parts are always stored in files (never inline), so a completed object is a list of
/// part files.
async fn ingest_to_file<S, E>(store: &Arc<Store>, body: S, algo: Option<Algo>) -> S3Result<Ingested>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    io::ingest_file(store, body, algo).await
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
