"""boto3 against the embedded S3 store: every supported operation, errors included."""

import base64
import datetime
import hashlib
import io
import os
import threading
import urllib.error
import urllib.request
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import ENDPOINT, REGION, make_client


def err(exc_info):
    e = exc_info.value
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


# ----- buckets ---------------------------------------------------------------------------


def test_bucket_lifecycle(s3):
    name = "life-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    head = s3.head_bucket(Bucket=name)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == REGION
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == REGION

    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name)
    assert err(e) == ("BucketAlreadyOwnedByYou", 409)

    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert err(e) == ("BucketNotEmpty", 409)

    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=name)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_create_bucket_with_location_constraint(s3):
    name = "loc-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.delete_bucket(Bucket=name)


@pytest.mark.parametrize("name", ["ab", "Upper-Case", "under_score", "-leading", "a" * 64, "192.168.5.4", "dots..dots"])
def test_invalid_bucket_names(s3, name):
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name)
    code, status = err(e)
    assert (code, status) == ("InvalidBucketName", 400), (name, code, status)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_unknown_bucket_and_key(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="no-such-bucket-" + uuid.uuid4().hex[:8], Key="k")
    assert err(e) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="no-such-bucket-" + uuid.uuid4().hex[:8], Key="k", Body=b"x")
    assert err(e) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="no-such-bucket-" + uuid.uuid4().hex[:8])
    assert err(e) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="missing")
    assert err(e) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="missing")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # Deleting a missing key succeeds, as on S3.
    s3.delete_object(Bucket=bucket, Key="missing")


# ----- objects ---------------------------------------------------------------------------


def test_put_get_head_with_headers_and_metadata(s3, bucket):
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    body = b"hello, world"
    put = s3.put_object(
        Bucket=bucket,
        Key="dir/file.txt",
        Body=body,
        ContentType="text/plain; charset=utf-8",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="f.txt"',
        ContentEncoding="identity",
        ContentLanguage="ja",
        Expires=expires,
        Metadata={"Color": "blue", "n": "1"},
    )
    assert put["ETag"] == '"%s"' % md5_hex(body)
    for resp in (s3.get_object(Bucket=bucket, Key="dir/file.txt"), s3.head_object(Bucket=bucket, Key="dir/file.txt")):
        assert resp["ContentType"] == "text/plain; charset=utf-8"
        assert resp["CacheControl"] == "max-age=60"
        assert resp["ContentDisposition"] == 'attachment; filename="f.txt"'
        assert resp["ContentEncoding"] == "identity"
        assert resp["ContentLanguage"] == "ja"
        assert resp["Expires"] == expires
        assert resp["Metadata"] == {"color": "blue", "n": "1"}
        assert resp["ETag"] == put["ETag"]
        assert resp["ContentLength"] == len(body)
        assert resp["AcceptRanges"] == "bytes"
        assert isinstance(resp["LastModified"], datetime.datetime)
    assert s3.get_object(Bucket=bucket, Key="dir/file.txt")["Body"].read() == body


def test_metadata_too_large_writes_nothing(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="meta", Body=b"x" * 100000, Metadata={"big": "v" * 2100})
    assert err(e) == ("MetadataTooLarge", 400)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_empty_and_overwrite(s3, bucket):
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    r = s3.get_object(Bucket=bucket, Key="empty")
    assert r["Body"].read() == b"" and r["ContentLength"] == 0
    assert r["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    big = os.urandom(300 * 1024)
    s3.put_object(Bucket=bucket, Key="k", Body=big)
    s3.put_object(Bucket=bucket, Key="k", Body=b"small now")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"small now"
    s3.put_object(Bucket=bucket, Key="k", Body=big)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == big


def test_large_single_put_streams(s3, bucket):
    data = os.urandom(48 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="large", Body=io.BytesIO(data))
    got = s3.get_object(Bucket=bucket, Key="large")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


# CRC32C and CRC64NVME need botocore[crt], which the venv does not carry.
@pytest.mark.parametrize("algo", ["CRC32", "SHA1", "SHA256"])
def test_checksums(s3, bucket, algo):
    body = os.urandom(100 * 1024)
    put = s3.put_object(Bucket=bucket, Key="c", Body=body, ChecksumAlgorithm=algo)
    field = "Checksum" + algo
    assert field in put
    got = s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert got[field] == put[field]
    assert got["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert head[field] == put[field]


def test_checksum_values_are_correct(s3, bucket):
    body = b"The quick brown fox"
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    sha1 = base64.b64encode(hashlib.sha1(body).digest()).decode()
    assert s3.put_object(Bucket=bucket, Key="a", Body=body, ChecksumSHA256=sha256)["ChecksumSHA256"] == sha256
    assert s3.put_object(Bucket=bucket, Key="b", Body=body, ChecksumSHA1=sha1)["ChecksumSHA1"] == sha1


def test_bad_checksums_and_md5_write_nothing(s3, bucket):
    body = b"some content"
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad-sha", Body=body, ChecksumSHA256=base64.b64encode(b"x" * 32).decode())
    assert err(e) == ("BadDigest", 400)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad-md5", Body=body, ContentMD5=base64.b64encode(b"y" * 16).decode())
    assert err(e) == ("BadDigest", 400)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad-md5-2", Body=body, ContentMD5="not base64!")
    assert err(e)[0] in ("InvalidDigest", "BadDigest")
    ok = s3.put_object(Bucket=bucket, Key="good-md5", Body=body, ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())
    assert ok["ETag"] == '"%s"' % md5_hex(body)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["good-md5"]


def test_range_requests(s3, bucket):
    body = bytes(range(256)) * 1000
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    r = s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert r["Body"].read() == body[10:20]
    assert r["ContentRange"] == "bytes 10-19/%d" % len(body)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-5")["Body"].read() == body[-5:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=255990-")["Body"].read() == body[255990:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=0-999999999")["Body"].read() == body
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=%d-" % len(body))
    assert err(e) == ("InvalidRange", 416)
    # Small (inline) objects too.
    s3.put_object(Bucket=bucket, Key="s", Body=b"0123456789")
    assert s3.get_object(Bucket=bucket, Key="s", Range="bytes=2-4")["Body"].read() == b"234"


def test_conditional_get(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"v1")
    etag = put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"v1"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert err(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    assert s3.get_object(Bucket=bucket, Key="c", IfNoneMatch='"0000"')["Body"].read() == b"v1"
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    # (A future If-Modified-Since is ignored, as on AWS: test_conformance.py.)
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"v1"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert err(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_conditional_put(s3, bucket):
    s3.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert err(e) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"


def test_response_overrides(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"x", ContentType="text/plain")
    r = s3.get_object(
        Bucket=bucket,
        Key="o",
        ResponseContentType="application/json",
        ResponseContentDisposition="inline",
        ResponseCacheControl="no-cache",
        ResponseContentLanguage="fr",
        ResponseContentEncoding="gzip",
        ResponseExpires=datetime.datetime(2031, 1, 1, tzinfo=datetime.timezone.utc),
    )
    h = r["ResponseMetadata"]["HTTPHeaders"]
    assert h["content-type"] == "application/json"
    assert h["content-disposition"] == "inline"
    assert h["cache-control"] == "no-cache"
    assert h["content-language"] == "fr"
    assert h["content-encoding"] == "gzip"
    assert "2031" in h["expires"]


def test_delete_objects(s3, bucket):
    for k in ["a", "b", "c/d"]:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "c/d"}, {"Key": "nope"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["a", "c/d", "nope"]
    assert "Errors" not in r
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["b"]
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "b", "ETag": '"0000"'}]})
    assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("b", "PreconditionFailed")]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["b"]
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "b"}], "Quiet": True})
    assert not r.get("Deleted")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_copy_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"payload" * 10000, ContentType="text/x", Metadata={"a": "1"}, Tagging="t=1")
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == '"%s"' % md5_hex(b"payload" * 10000)
    h = s3.head_object(Bucket=bucket, Key="dst")
    assert h["ContentType"] == "text/x" and h["Metadata"] == {"a": "1"}
    assert s3.get_object_tagging(Bucket=bucket, Key="dst")["TagSet"] == [{"Key": "t", "Value": "1"}]

    s3.copy_object(
        Bucket=bucket,
        Key="dst2",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        ContentType="text/y",
        Metadata={"b": "2"},
        TaggingDirective="REPLACE",
        Tagging="u=2",
    )
    h = s3.head_object(Bucket=bucket, Key="dst2")
    assert h["ContentType"] == "text/y" and h["Metadata"] == {"b": "2"}
    assert s3.get_object_tagging(Bucket=bucket, Key="dst2")["TagSet"] == [{"Key": "u", "Value": "2"}]
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == b"payload" * 10000

    # Replace metadata in place.
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"}, MetadataDirective="REPLACE", Metadata={"c": "3"})
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"c": "3"}
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert err(e) == ("InvalidRequest", 400)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert err(e) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch='"0000"')
    assert err(e) == ("PreconditionFailed", 412)
    # Odd characters in the copy source.
    s3.put_object(Bucket=bucket, Key="sp ace/ü?&=+", Body=b"odd")
    s3.copy_object(Bucket=bucket, Key="odd-copy", CopySource={"Bucket": bucket, "Key": "sp ace/ü?&=+"})
    assert s3.get_object(Bucket=bucket, Key="odd-copy")["Body"].read() == b"odd"


def test_copy_between_buckets(s3, bucket):
    other = "o-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=bucket, Key="k", Body=b"z" * 100)
    s3.copy_object(Bucket=other, Key="k2", CopySource={"Bucket": bucket, "Key": "k"})
    assert s3.get_object(Bucket=other, Key="k2")["Body"].read() == b"z" * 100
    s3.delete_object(Bucket=other, Key="k2")
    s3.delete_bucket(Bucket=other)


# ----- listing ---------------------------------------------------------------------------

ODD_KEYS = [
    "a",
    "a/b",
    "a/b/c",
    "a//b",
    "a/c",
    "b c",
    "b+c",
    "ünïcødé/キー",
    "emoji/😀",
    "percent%20",
    "amp&er=sand?",
    "../escape",
    "./dot",
    "..",
    "x/../../../../etc/passwd",
    "tab\there",
    "trailing/",
    "z" * 1024,
]


def test_list_order_prefix_delimiter(s3, bucket):
    for k in ODD_KEYS:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    expected = sorted(ODD_KEYS, key=lambda k: k.encode())
    v2 = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in v2["Contents"]] == expected
    v1 = s3.list_objects(Bucket=bucket)
    assert [o["Key"] for o in v1["Contents"]] == expected
    for k in ODD_KEYS:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode()

    r = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["a/b", "a/c"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a//", "a/b/"]
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == sorted(
        {k.split("/")[0] + "/" for k in ODD_KEYS if "/" in k}, key=lambda k: k.encode()
    )
    r = s3.list_objects(Bucket=bucket, Prefix="a", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["a", "amp&er=sand?"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/"]


def test_list_pagination(s3, bucket):
    keys = ["p/%03d" % i for i in range(25)] + ["q/%d/x" % i for i in range(5)] + ["r"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"")
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 7}))
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == sorted(keys)
    assert all(p["KeyCount"] <= 7 for p in pages)
    pages = list(s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4}))
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == sorted(keys)
    # Delimiter with pagination: common prefixes are returned once.
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}))
    prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
    assert prefixes == ["p/", "q/"]
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == ["r"]
    r = s3.list_objects_v2(Bucket=bucket, StartAfter="p/020", MaxKeys=3)
    assert [o["Key"] for o in r["Contents"]] == ["p/021", "p/022", "p/023"]
    assert r["IsTruncated"] is True
    r = s3.list_objects(Bucket=bucket, Marker="q/4/x")
    assert [o["Key"] for o in r["Contents"]] == ["r"]
    r = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
    assert r["KeyCount"] == 0


def test_key_length_limits(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k" * 1024, Body=b"ok")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"no")
    assert err(e) == ("KeyTooLongError", 400)


def test_path_escape_keys_stay_inside_the_store(s3, bucket):
    from conftest import DATA_DIR

    for k in ["../../../../../../tmp/esb-escape", "/abs/path", "..\\..\\win", "a/./b/../c"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"contained " + os.urandom(32 * 1024))
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read().startswith(b"contained ")
    assert not os.path.exists("/tmp/esb-escape")
    # Every file the store made sits in its own layout: index.redb, store-id and
    # data/xx/<hex id>.
    for root, dirs, files in os.walk(DATA_DIR):
        rel = os.path.relpath(root, DATA_DIR)
        for f in files:
            if rel == ".":
                assert f in ("index.redb", "store-id"), f
            else:
                parts = rel.split(os.sep)
                assert parts[0] == "data" and len(parts) == 2 and len(parts[1]) == 2, rel
                assert all(c in "0123456789abcdef" for c in f), f


# ----- multipart -------------------------------------------------------------------------

MiB = 1024 * 1024


def test_multipart_upload(s3, bucket):
    p1, p2, p3 = os.urandom(5 * MiB), os.urandom(5 * MiB + 7), b"tail"
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="video/x", Metadata={"m": "v"})
    uid = up["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("mp", uid)]
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e3 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=3, Body=p3)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, Body=p2)["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, e1, len(p1)), (2, e2, len(p2)), (3, e3, 4)]
    page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid, PartNumberMarker=2)["Parts"]] == [3]

    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e3}]},
    )
    want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))).hexdigest() + "-3"
    assert done["ETag"] == '"%s"' % want
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["ETag"] == done["ETag"]
    assert got["ContentType"] == "video/x" and got["Metadata"] == {"m": "v"}
    assert got["Body"].read() == p1 + p2 + p3
    # Ranges that span parts, and part-number reads.
    assert s3.get_object(Bucket=bucket, Key="mp", Range="bytes=%d-%d" % (5 * MiB - 3, 5 * MiB + 2))["Body"].read() == (p1 + p2)[5 * MiB - 3 : 5 * MiB + 3]
    part2 = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert part2["Body"].read() == p2 and part2["PartsCount"] == 3
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=4, Body=b"late")
    assert err(e) == ("NoSuchUpload", 404)


def test_multipart_with_checksums(s3, bucket):
    data = os.urandom(12 * MiB)
    s3.upload_fileobj(io.BytesIO(data), bucket, "managed")  # s3transfer: CRC32 parts by default
    got = s3.get_object(Bucket=bucket, Key="managed", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    up = s3.create_multipart_upload(Bucket=bucket, Key="sha", ChecksumAlgorithm="SHA256")
    parts = []
    for n, chunk in enumerate([data[: 6 * MiB], data[6 * MiB :]], start=1):
        r = s3.upload_part(Bucket=bucket, Key="sha", UploadId=up["UploadId"], PartNumber=n, Body=chunk, ChecksumAlgorithm="SHA256")
        assert r["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
    done = s3.complete_multipart_upload(Bucket=bucket, Key="sha", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
    composite = hashlib.sha256(b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in parts)).digest()
    assert done["ChecksumSHA256"] == base64.b64encode(composite).decode() + "-2"


def test_upload_part_copy(s3, bucket):
    src = os.urandom(7 * MiB)
    s3.put_object(Bucket=bucket, Key="src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    r1 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1, CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=0-%d" % (5 * MiB - 1))
    r2 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=2, CopySource={"Bucket": bucket, "Key": "src"})
    assert r1["CopyPartResult"]["ETag"] == '"%s"' % md5_hex(src[: 5 * MiB])
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=3, CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=0-%d" % (8 * MiB))
    assert err(e)[0] == "InvalidRange"
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="dst",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": r2["CopyPartResult"]["ETag"]}]},
    )
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == src[: 5 * MiB] + src


def test_multipart_errors(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="e")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=1, Body=b"small")["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=2, Body=b"small")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert err(e) == ("EntityTooSmall", 400)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert err(e) == ("InvalidPartOrder", 400)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"ffff"'}]})
    assert err(e) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 9, "ETag": e1}]})
    assert err(e) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="e", UploadId=uid, PartNumber=10001, Body=b"x")
    assert err(e)[1] == 400
    # Failed completions leave the upload intact; a single last part may be small.
    s3.complete_multipart_upload(Bucket=bucket, Key="e", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})
    assert s3.get_object(Bucket=bucket, Key="e")["Body"].read() == b"small"

    uid = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=1, Body=b"x" * 100)
    s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid)
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket=bucket, Key="ab", UploadId=uid)
    assert err(e) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as e:
        s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId="nonexistent")
    assert err(e) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="ab")


def test_list_multipart_uploads_paging(s3, bucket):
    ids = {}
    for k in ["x/1", "x/2", "y", "z"]:
        ids[k] = s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]
    r = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    assert [u["Key"] for u in r["Uploads"]] == ["x/1", "x/2"] and r["IsTruncated"]
    r = s3.list_multipart_uploads(Bucket=bucket, KeyMarker=r["NextKeyMarker"], UploadIdMarker=r["NextUploadIdMarker"])
    assert [u["Key"] for u in r["Uploads"]] == ["y", "z"]
    r = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["x/"]
    assert [u["Key"] for u in r["Uploads"]] == ["y", "z"]
    r = s3.list_multipart_uploads(Bucket=bucket, Prefix="x/")
    assert [u["Key"] for u in r["Uploads"]] == ["x/1", "x/2"]


# ----- tagging ---------------------------------------------------------------------------


def test_object_tagging(s3, bucket):
    s3.put_object(Bucket=bucket, Key="t", Body=b"x", Tagging="k1=v1&k%202=v%262")
    assert sorted((t["Key"], t["Value"]) for t in s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]) == [("k 2", "v&2"), ("k1", "v1")]
    assert s3.get_object(Bucket=bucket, Key="t")["TagCount"] == 2
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "only", "Value": "one"}]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    with pytest.raises(ClientError) as e:
        s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "k%d" % i, "Value": "v"} for i in range(11)]})
    assert err(e) == ("InvalidTag", 400)
    with pytest.raises(ClientError) as e:
        s3.put_object_tagging(Bucket=bucket, Key="missing", Tagging={"TagSet": []})
    assert err(e) == ("NoSuchKey", 404)


# ----- auth, addressing, unsupported ------------------------------------------------------


def test_wrong_credentials_write_nothing(s3, bucket):
    bad = make_client(secret_key="wrong-secret")
    with pytest.raises(ClientError) as e:
        bad.put_object(Bucket=bucket, Key="sneaky", Body=b"x" * 100000)
    assert err(e) == ("SignatureDoesNotMatch", 403)
    unknown = make_client(access_key="AKIDUNKNOWN")
    with pytest.raises(ClientError) as e:
        unknown.put_object(Bucket=bucket, Key="sneaky2", Body=b"x")
    assert err(e)[1] == 403
    with pytest.raises(ClientError) as e:
        bad.create_bucket(Bucket="sneaky-bucket")
    assert err(e) == ("SignatureDoesNotMatch", 403)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert "sneaky-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    # Anonymous requests are refused.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("%s/%s/" % (ENDPOINT, bucket))
    assert e.value.code == 403


def test_presigned_urls(bucket):
    s3 = make_client(signature_version="s3v4")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pre"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"via presigned put", method="PUT")
    assert urllib.request.urlopen(req).status == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre"}, ExpiresIn=300)
    assert urllib.request.urlopen(get_url).read() == b"via presigned put"
    sig = get_url.split("X-Amz-Signature=")[1][:64]
    tampered = get_url.replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(tampered)
    assert e.value.code == 403
    other_key = get_url.replace("/pre?", "/other?")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(other_key)
    assert e.value.code == 403
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in get_url
    # Seven days at most, as on AWS.
    week = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre"}, ExpiresIn=604800)
    assert urllib.request.urlopen(week).read() == b"via presigned put"
    longer = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre"}, ExpiresIn=604801)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(longer)
    assert e.value.code == 400
    assert b"AuthorizationQueryParametersError" in e.value.read()
    # boto3's legacy default (SigV2 query strings) is refused: SigV2 is off unless enabled.
    v2_url = make_client(signature_version="s3").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "pre"}, ExpiresIn=300
    )
    assert "AWSAccessKeyId=" in v2_url
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(v2_url)
    assert e.value.code == 400
    assert b"InvalidRequest" in e.value.read()
    # And so is a SigV2 header (refused with InvalidRequest once its signature checks out;
    # s3s does not accept boto3's SigV2 header signature in the first place).
    with pytest.raises(ClientError) as e:
        make_client(signature_version="s3").list_objects(Bucket=bucket)
    assert err(e) in (("InvalidRequest", 400), ("SignatureDoesNotMatch", 403))
    assert s3.get_object(Bucket=bucket, Key="pre")["Body"].read() == b"via presigned put"


def test_virtual_host_addressing(s3, bucket):
    port = ENDPOINT.rsplit(":", 1)[1]
    vh = make_client(s3={"addressing_style": "virtual"})
    vh.meta.endpoint_url  # noqa: B018
    # Send virtual-host requests (Host: <bucket>.localhost:<port>) to the loopback address.
    vh_local = __import__("boto3").client(
        "s3",
        endpoint_url="http://localhost:%s" % port,
        aws_access_key_id=vh._request_signer._credentials.access_key,
        aws_secret_access_key=vh._request_signer._credentials.secret_key,
        region_name=REGION,
        config=__import__("botocore.config").config.Config(s3={"addressing_style": "virtual"}),
    )

    def to_loopback(request, **_):
        host = request.url.split("/")[2]
        assert host.startswith(bucket + ".localhost"), host
        request.headers["Host"] = host
        request.url = request.url.replace(host, "127.0.0.1:%s" % port, 1)

    vh_local.meta.events.register("before-send.s3", to_loopback)
    vh_local.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    assert vh_local.get_object(Bucket=bucket, Key="vh/key")["Body"].read() == b"virtual"
    assert [o["Key"] for o in vh_local.list_objects_v2(Bucket=bucket)["Contents"]] == ["vh/key"]
    assert s3.get_object(Bucket=bucket, Key="vh/key")["Body"].read() == b"virtual"


def test_unsupported_operations_say_not_implemented(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.put_bucket_policy(Bucket=bucket, Policy="{}")
    assert err(e) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as e:
        s3.put_bucket_versioning(
            Bucket=bucket,
            VersioningConfiguration={"Status": "Enabled", "MFADelete": "Enabled"},
            MFA="arn:aws:iam::1:mfa/x 123456",
        )
    assert err(e) == ("NotImplemented", 501)
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)


def test_malformed_xml_writes_nothing(s3, bucket):
    import botocore.auth
    import botocore.awsrequest

    s3.put_object(Bucket=bucket, Key="keep", Body=b"x")
    creds = s3._request_signer._credentials

    def signed(method, path, body, headers=None):
        req = botocore.awsrequest.AWSRequest(method=method, url=ENDPOINT + path, data=body, headers=headers or {})
        req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        botocore.auth.S3SigV4Auth(creds, "s3", REGION).add_auth(req)
        p = req.prepare()
        r = urllib.request.Request(p.url, data=body, method=method, headers=dict(p.headers))
        try:
            resp = urllib.request.urlopen(r)
            return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    body = b"<Delete><Object><Key>keep</Key></Object"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    status, text = signed("POST", "/%s?delete" % bucket, body, {"Content-MD5": md5, "Content-Type": "application/xml"})
    assert status == 400 and b"MalformedXML" in text, text
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    status, text = signed("POST", "/%s/m?uploadId=%s" % (bucket, uid), b"<CompleteMultipartUpload><Part>", {})
    assert status == 400 and b"MalformedXML" in text, text
    status, text = signed("PUT", "/%s/keep?tagging" % bucket, b"not xml at all", {})
    assert status == 400 and b"MalformedXML" in text, text
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["keep"]


def test_parallel_writers_of_one_key(s3, bucket):
    bodies = [bytes([i]) * (256 * 1024 + i) for i in range(8)]
    errors = []

    def put(b):
        try:
            make_client().put_object(Bucket=bucket, Key="contended", Body=b)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=put, args=(b,)) for b in bodies for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = s3.get_object(Bucket=bucket, Key="contended")
    data = got["Body"].read()
    assert data in bodies
    assert got["ETag"] == '"%s"' % md5_hex(data)


def test_parallel_readers_during_overwrites(s3, bucket):
    versions = [bytes([65 + i]) * (2 * 1024 * 1024 + i) for i in range(3)]
    s3.put_object(Bucket=bucket, Key="hot", Body=versions[0])
    stop = threading.Event()
    problems = []

    def writer():
        c = make_client()
        i = 0
        while not stop.is_set():
            i += 1
            c.put_object(Bucket=bucket, Key="hot", Body=versions[i % 3])

    def reader():
        c = make_client()
        for _ in range(15):
            r = c.get_object(Bucket=bucket, Key="hot")
            data = r["Body"].read()
            if data not in versions or r["ETag"] != '"%s"' % md5_hex(data):
                problems.append((len(data), r["ETag"]))

    w = threading.Thread(target=writer)
    readers = [threading.Thread(target=reader) for _ in range(3)]
    w.start()
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    w.join()
    assert not problems, problems


def test_parallel_error_before_body_does_not_spoil_the_connection():
    """A PUT refused before its body is read (no such bucket) answers `Connection: close`,
    so the client does not reuse a connection the server drops: the next request on each
    client (no retries) gets its own answer, never a closed connection or a foreign one."""
    problems = []

    def worker(n):
        # Legacy retry mode with no attempts: a dropped connection surfaces as an error.
        import boto3
        from botocore.config import Config

        from conftest import ACCESS_KEY, SECRET_KEY

        c = boto3.client(
            "s3",
            endpoint_url=ENDPOINT,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(retries={"max_attempts": 0}),
        )
        missing = f"missing-{uuid.uuid4().hex[:12]}"
        for _ in range(300):
            for call in (
                lambda: c.get_object(Bucket=missing, Key="k"),
                lambda: c.put_object(Bucket=missing, Key="k", Body=b"x" * 2000),
                lambda: c.list_objects_v2(Bucket=missing),
            ):
                try:
                    call()
                    problems.append("no error for a missing bucket")
                except ClientError as e:
                    if e.response["Error"]["Code"] != "NoSuchBucket":
                        problems.append(e.response["Error"]["Code"])
                except Exception as e:  # a closed connection, a parse error, ...
                    problems.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == [], problems[:5]


def test_health_without_credentials_and_a_bucket_named_health(s3):
    """GET /health answers anonymously (as RustFS does); signed, /health is a bucket."""
    import json
    import urllib.request

    from conftest import ENDPOINT

    with urllib.request.urlopen(ENDPOINT + "/health", timeout=10) as r:
        assert r.status == 200
        assert json.loads(r.read())["status"] == "ok"
    s3.create_bucket(Bucket="health")
    try:
        s3.put_object(Bucket="health", Key="k", Body=b"v")
        assert s3.get_object(Bucket="health", Key="k")["Body"].read() == b"v"
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert "health" in names
    finally:
        s3.delete_object(Bucket="health", Key="k")
        s3.delete_bucket(Bucket="health")
