"""The embedded S3 store against AWS S3's documented (or, where the documentation is
silent, observed) behaviour, one test per behaviour (issue 19; the table in docs/s3.md).

Each test's docstring names the AWS behaviour it checks. Requests that boto3 cannot make
(chunked bodies, Expect: 100-continue, empty Authorization, skewed clocks) are signed
with botocore's SigV4 signer and sent with http.client or a raw socket.
"""

import base64
import datetime
import email.header
import hashlib
import json
import os
import re
import socket
import urllib.parse
import uuid
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import ACCESS_KEY, DATA_DIR, ENDPOINT, REGION, SECRET_KEY, make_client

MiB = 1024 * 1024


def err(exc_info):
    e = exc_info.value
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


def keys_of(s3, bucket):
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def data_files():
    n = 0
    for _, _, files in os.walk(os.path.join(DATA_DIR, "data")):
        n += len(files)
    return n


# ----- raw HTTP helpers ------------------------------------------------------------------


def sign(method, path, headers=None, body=b"", at=None, payload="UNSIGNED-PAYLOAD"):
    """A SigV4-signed request (botocore's signer), at the time `at` (default now)."""
    req = AWSRequest(method=method, url=ENDPOINT + path, data=body, headers=dict(headers or {}))
    req.headers["X-Amz-Content-SHA256"] = payload
    auth = S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION)
    auth.payload = lambda _req: payload  # sign with the given payload hash
    if at is None:
        auth.add_auth(req)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=at):
            auth.add_auth(req)
    return req


def _read_head(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before an answer")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest


def send(method, path, headers, body=None, chunks=None):
    """Sends exactly the given headers over a raw socket; returns (status, headers, body).

    A request with a body says `Expect: 100-continue` and sends the body only after the
    100: a server that refuses the request first (as these tests often expect) answers
    without reading the body, and the answer is not lost to a reset connection.
    """
    u = urllib.parse.urlsplit(ENDPOINT)
    payload = b""
    if body:
        payload = body
    if chunks is not None:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    if "host" not in {k.lower() for k in headers}:
        head += "Host: %s\r\n" % u.netloc
    if payload and "expect" not in {k.lower() for k in headers}:
        head += "Expect: 100-continue\r\n"
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "Connection: close\r\n\r\n"
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    try:
        sock.sendall(head.encode("latin-1"))
        status, hdrs, rest = _read_head(sock, b"") if payload else (None, None, b"")
        if status == 100:
            sock.sendall(payload)
            status, hdrs, rest = _read_head(sock, rest)
        elif status is None:
            status, hdrs, rest = _read_head(sock, b"")
        data = rest
        if method != "HEAD" and status not in (204, 304):
            want = int(hdrs.get("content-length", "-1"))
            while want < 0 or len(data) < want:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return status, hdrs, data
    finally:
        sock.close()


def send_signed(req, **kw):
    u = urllib.parse.urlsplit(req.url)
    path = u.path + ("?" + u.query if u.query else "")
    return send(req.method, path, dict(req.headers.items()), **kw)


def xml_field(body, name):
    m = re.search(r"<%s>(.*?)</%s>" % (name, name), body.decode())
    return m.group(1) if m else None


# ----- versioning ------------------------------------------------------------------------


def test_versioning_status_is_absent_then_enabled_then_suspended(s3, bucket):
    """GetBucketVersioning: no Status until versioning is configured; PutBucketVersioning
    sets Enabled or Suspended (API_GetBucketVersioning, API_PutBucketVersioning); any
    other status is MalformedXML."""
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    with pytest.raises(ClientError) as e:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "On"})
    assert err(e) == ("MalformedXML", 400)
    with pytest.raises(ClientError) as e:
        s3.get_bucket_versioning(Bucket="no-such-bucket-" + uuid.uuid4().hex[:8])
    assert err(e) == ("NoSuchBucket", 404)


def test_versioned_puts_keep_every_version(s3, bucket):
    """Versioning enabled: each PUT returns a new x-amz-version-id; GET/HEAD with versionId
    read that version; GET without one reads the newest (Versioning.html)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    ids = []
    for i in range(3):
        r = s3.put_object(Bucket=bucket, Key="k", Body=b"v%d" % i)
        ids.append(r["VersionId"])
    assert len(set(ids)) == 3 and "null" not in ids
    for i, vid in enumerate(ids):
        g = s3.get_object(Bucket=bucket, Key="k", VersionId=vid)
        assert g["Body"].read() == b"v%d" % i
        assert g["VersionId"] == vid
        h = s3.head_object(Bucket=bucket, Key="k", VersionId=vid)
        assert h["ContentLength"] == 2 and h["VersionId"] == vid
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v2"
    assert keys_of(s3, bucket) == ["k"]
    vs = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in vs] == [
        (ids[2], True),
        (ids[1], False),
        (ids[0], False),
    ]
    # Tagging works on the current version; a noncurrent one is refused, never mis-tagged.
    tags = {"TagSet": [{"Key": "t", "Value": "v"}]}
    s3.put_object_tagging(Bucket=bucket, Key="k", VersionId=ids[2], Tagging=tags)
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == tags["TagSet"]
    with pytest.raises(ClientError) as e:
        s3.put_object_tagging(Bucket=bucket, Key="k", VersionId=ids[0], Tagging=tags)
    assert err(e) == ("NotImplemented", 501)
    # The tags stay on the version they were put on.
    s3.put_object(Bucket=bucket, Key="k", Body=b"v3")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []


def test_unknown_and_malformed_version_ids(s3, bucket):
    """A well-formed version id that names no version: 404 NoSuchVersion; a malformed one:
    400 InvalidArgument "Invalid version id specified" (as S3 answers both)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    vid = s3.put_object(Bucket=bucket, Key="k", Body=b"x")["VersionId"]
    other = ("0" * 16) + vid[16:]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=other)
    assert err(e) == ("NoSuchVersion", 404)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId="not-a-version")
    assert err(e) == ("InvalidArgument", 400)


def test_delete_makes_a_marker_and_deleting_the_marker_restores(s3, bucket):
    """DeleteObject without versionId in a versioned bucket inserts a delete marker
    (x-amz-delete-marker: true, its version id); the key is gone from listings and GET
    answers 404 with x-amz-delete-marker: true and the marker's version id; GET of the
    marker's version answers 405 MethodNotAllowed; deleting the
    marker by version id makes the previous version current again
    (DeletingObjectVersions.html, RemDelMarker.html)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    d = s3.delete_object(Bucket=bucket, Key="k")
    assert d["DeleteMarker"] is True
    marker = d["VersionId"]
    assert marker and marker != v1
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert err(e) == ("NoSuchKey", 404)
    hdrs = e.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert hdrs["x-amz-delete-marker"] == "true" and hdrs["x-amz-version-id"] == marker
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k")
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    assert keys_of(s3, bucket) == []
    listing = s3.list_object_versions(Bucket=bucket)
    assert [(m["VersionId"], m["IsLatest"]) for m in listing["DeleteMarkers"]] == [(marker, True)]
    assert [(v["VersionId"], v["IsLatest"]) for v in listing["Versions"]] == [(v1, False)]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=marker)
    assert err(e) == ("MethodNotAllowed", 405)
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    # The old version is still readable by id.
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read() == b"one"
    d = s3.delete_object(Bucket=bucket, Key="k", VersionId=marker)
    assert d["DeleteMarker"] is True and d["VersionId"] == marker
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"
    assert keys_of(s3, bucket) == ["k"]


def test_deleting_a_version_permanently(s3, bucket):
    """DeleteObject with versionId removes that version for good; when it was the current
    one the next newest becomes current; a version that does not exist is a 204 no-op."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"1" * 20000)["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"2" * 20000)["VersionId"]
    files = data_files()
    d = s3.delete_object(Bucket=bucket, Key="k", VersionId=v2)
    assert d["VersionId"] == v2 and "DeleteMarker" not in d
    assert data_files() == files - 1
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1" * 20000
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=v2)
    assert err(e) == ("NoSuchVersion", 404)
    r = s3.delete_object(Bucket=bucket, Key="k", VersionId=v2)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    s3.delete_object(Bucket=bucket, Key="k", VersionId=v1)
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)
    assert data_files() == files - 2


def test_delete_objects_by_version(s3, bucket):
    """DeleteObjects: an item with VersionId deletes that version (Deleted.VersionId);
    one without makes a marker (Deleted.DeleteMarker, DeleteMarkerVersionId)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    va = s3.put_object(Bucket=bucket, Key="a", Body=b"a")["VersionId"]
    s3.put_object(Bucket=bucket, Key="b", Body=b"b")
    r = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a", "VersionId": va}, {"Key": "b"}]}
    )
    got = {d["Key"]: d for d in r["Deleted"]}
    assert got["a"]["VersionId"] == va and "DeleteMarker" not in got["a"]
    assert got["b"]["DeleteMarker"] is True and got["b"]["DeleteMarkerVersionId"]
    listing = s3.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in listing["Versions"]] == ["b"]
    assert [m["Key"] for m in listing["DeleteMarkers"]] == ["b"]


def test_unversioned_bucket_lists_each_object_once_as_null(s3, bucket):
    """ListObjectVersions on a bucket whose versioning was never enabled lists each object
    once, VersionId "null", IsLatest true; versionId=null reads and deletes it."""
    for k in ["a", "b/c", "d"]:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    r = s3.list_object_versions(Bucket=bucket)
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in r["Versions"]] == [
        ("a", "null", True),
        ("b/c", "null", True),
        ("d", "null", True),
    ]
    assert "DeleteMarkers" not in r
    g = s3.get_object(Bucket=bucket, Key="a", VersionId="null")
    # Never versioned: no x-amz-version-id at all, as on S3.
    assert g["Body"].read() == b"a" and "VersionId" not in g
    s3.delete_object(Bucket=bucket, Key="a", VersionId="null")
    assert keys_of(s3, bucket) == ["b/c", "d"]
    page = s3.list_object_versions(Bucket=bucket, MaxKeys=1)
    assert page["IsTruncated"] is True
    assert (page["NextKeyMarker"], page["NextVersionIdMarker"]) == ("b/c", "null")


def test_list_object_versions_pagination_prefix_and_delimiter(s3, bucket):
    """ListObjectVersions pages with key-marker / version-id-marker and max-keys (versions,
    delete markers and common prefixes count together); prefix and delimiter group as in
    ListObjects (API_ListObjectVersions)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    expected = []
    for k, n in [("a", 3), ("b", 2), ("dir/x", 2), ("dir/y", 1), ("e", 1)]:
        vids = [s3.put_object(Bucket=bucket, Key=k, Body=b"x")["VersionId"] for _ in range(n)]
        expected += [(k, v) for v in reversed(vids)]
    marker = s3.delete_object(Bucket=bucket, Key="e")["VersionId"]
    expected.insert(expected.index(("e", expected[-1][1])), ("e", marker))
    seen = []
    pages = 0
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2}
    ):
        pages += 1
        entries = [(v["Key"], v["VersionId"], v["LastModified"]) for v in page.get("Versions", [])]
        entries += [(m["Key"], m["VersionId"], m["LastModified"]) for m in page.get("DeleteMarkers", [])]
        assert len(entries) <= 2
        # Within a page, order by key then newest first (the table order).
        order = {kv: i for i, kv in enumerate(expected)}
        seen += sorted([(k, v) for k, v, _ in entries], key=lambda kv: order[kv])
    assert seen == expected
    assert pages == (len(expected) + 1) // 2
    # Resuming in the middle of a key's versions.
    r = s3.list_object_versions(Bucket=bucket, KeyMarker="a", VersionIdMarker=expected[0][1])
    first = r["Versions"][0]
    assert (first["Key"], first["VersionId"], first["IsLatest"]) == ("a", expected[1][1], False)
    r = s3.list_object_versions(Bucket=bucket, KeyMarker="a")
    assert r["Versions"][0]["Key"] == "b" and r["Versions"][0]["IsLatest"] is True
    # Prefix and delimiter.
    r = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == ["dir/"]
    assert {v["Key"] for v in r["Versions"]} == {"a", "b", "e"}
    r = s3.list_object_versions(Bucket=bucket, Prefix="dir/", MaxKeys=2)
    assert [(v["Key"], v["IsLatest"]) for v in r["Versions"]] == [("dir/x", True), ("dir/x", False)]
    assert r["IsTruncated"] is True and r["NextKeyMarker"] == "dir/x"
    r = s3.list_object_versions(
        Bucket=bucket, Prefix="dir/", KeyMarker=r["NextKeyMarker"], VersionIdMarker=r["NextVersionIdMarker"]
    )
    assert [v["Key"] for v in r["Versions"]] == ["dir/y"] and r["IsTruncated"] is False
    with pytest.raises(ClientError) as e:
        s3.list_object_versions(Bucket=bucket, KeyMarker="a", VersionIdMarker="bogus")
    assert err(e) == ("InvalidArgument", 400)


def test_suspended_versioning_overwrites_the_null_version(s3, bucket):
    """Versioning suspended: a PUT stores the null version, replacing the previous null
    version (not the numbered ones); a DELETE replaces it with a null delete marker
    (VersionSuspendedBehavior.html). Objects from before versioning are null versions."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"before")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"enabled")["VersionId"]
    vids = [(v["VersionId"], v["IsLatest"]) for v in s3.list_object_versions(Bucket=bucket)["Versions"]]
    assert vids == [(v1, True), ("null", False)]
    # In a versioned bucket the null version is reported by that id.
    assert s3.head_object(Bucket=bucket, Key="k", VersionId="null")["VersionId"] == "null"
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert s3.put_object(Bucket=bucket, Key="k", Body=b"s1")["VersionId"] == "null"
    s3.put_object(Bucket=bucket, Key="k", Body=b"s2")
    vs = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in vs] == [("null", True), (v1, False)]
    g = s3.get_object(Bucket=bucket, Key="k")
    assert g["Body"].read() == b"s2" and g["VersionId"] == "null"
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read() == b"enabled"
    d = s3.delete_object(Bucket=bucket, Key="k")
    assert d["DeleteMarker"] is True and d["VersionId"] == "null"
    r = s3.list_object_versions(Bucket=bucket)
    assert [m["VersionId"] for m in r["DeleteMarkers"]] == ["null"]
    assert [v["VersionId"] for v in r["Versions"]] == [v1]


def test_versioned_bucket_with_versions_is_not_empty(s3, bucket):
    """DeleteBucket refuses a bucket that still holds versions or delete markers
    (409 BucketNotEmpty), as S3 does."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="k")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert err(e) == ("BucketNotEmpty", 409)
    for v in s3.list_object_versions(Bucket=bucket)["Versions"]:
        s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
    for m in s3.list_object_versions(Bucket=bucket)["DeleteMarkers"]:
        s3.delete_object(Bucket=bucket, Key=m["Key"], VersionId=m["VersionId"])
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)  # for the fixture's clean-up


def test_copy_object_from_a_version_and_multipart_versions(s3, bucket):
    """CopyObject with ?versionId= in x-amz-copy-source copies that version
    (x-amz-copy-source-version-id); CompleteMultipartUpload in a versioned bucket returns
    the new version id."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="src", Body=b"first")["VersionId"]
    s3.put_object(Bucket=bucket, Key="src", Body=b"second")
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src", "VersionId": v1})
    assert r["CopySourceVersionId"] == v1 and r["VersionId"]
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"first"
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=b"m")["ETag"]
    c = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]}
    )
    assert c["VersionId"]
    assert s3.head_object(Bucket=bucket, Key="mp")["VersionId"] == c["VersionId"]


def test_versions_persist_restart_phase1(s3):
    """(Phase 1 of a restart test, run by clients.rs before restarting the server.)"""
    name = "restart-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=name, Key="k", Body=b"one" * 10000)["VersionId"]
    v2 = s3.put_object(Bucket=name, Key="k", Body=b"two")["VersionId"]
    marker = s3.delete_object(Bucket=name, Key="k")["VersionId"]
    with open(os.path.join(DATA_DIR, "restart-test.json"), "w") as f:
        json.dump({"bucket": name, "v1": v1, "v2": v2, "marker": marker}, f)


def test_versions_persist_restart_phase2(s3):
    """Versions, delete markers and the versioning status survive a server restart (the
    index is durable); version ids keep increasing after it."""
    with open(os.path.join(DATA_DIR, "restart-test.json")) as f:
        st = json.load(f)
    b = st["bucket"]
    assert s3.get_bucket_versioning(Bucket=b)["Status"] == "Enabled"
    r = s3.list_object_versions(Bucket=b)
    assert [v["VersionId"] for v in r["Versions"]] == [st["v2"], st["v1"]]
    assert [m["VersionId"] for m in r["DeleteMarkers"]] == [st["marker"]]
    assert s3.get_object(Bucket=b, Key="k", VersionId=st["v1"])["Body"].read() == b"one" * 10000
    v3 = s3.put_object(Bucket=b, Key="k", Body=b"three")["VersionId"]
    r = s3.list_object_versions(Bucket=b)
    assert r["Versions"][0]["VersionId"] == v3 and r["Versions"][0]["IsLatest"] is True


# ----- listing ---------------------------------------------------------------------------


def test_max_keys_zero_is_an_empty_untruncated_page(s3, bucket):
    """max-keys=0: no keys, IsTruncated false (ListObjects, ListObjectsV2,
    ListObjectVersions; ceph s3-tests test_bucket_list_maxkeys_zero)."""
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    r1 = s3.list_objects(Bucket=bucket, MaxKeys=0)
    r2 = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)
    rv = s3.list_object_versions(Bucket=bucket, MaxKeys=0)
    for r in (r1, r2, rv):
        assert r["IsTruncated"] is False and r["MaxKeys"] == 0
        assert "Contents" not in r and "Versions" not in r
    assert r2["KeyCount"] == 0


def test_empty_delimiter_is_no_delimiter(s3, bucket):
    """delimiter="" groups nothing and is not echoed in the answer (ceph s3-tests
    test_bucket_list_delimiter_empty)."""
    for k in ["a/b", "a/c", "d"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    for r in (
        s3.list_objects(Bucket=bucket, Delimiter=""),
        s3.list_objects_v2(Bucket=bucket, Delimiter=""),
    ):
        assert [o["Key"] for o in r["Contents"]] == ["a/b", "a/c", "d"]
        assert "CommonPrefixes" not in r
        assert "Delimiter" not in r


def test_url_encoding_of_keys_that_are_not_xml_text(s3, bucket):
    """encoding-type=url percent-encodes keys, prefixes and markers in v1, v2 and version
    listings, so keys with characters XML 1.0 cannot carry (control characters) list
    (API_ListObjectsV2 EncodingType); boto3 decodes them when it asked for the encoding."""
    odd = ["ctl\x01char", "tab\tkey", "sp ace+plus", "ü/ß"]
    for k in odd:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    want = sorted(odd, key=lambda k: k.encode())
    # boto3 adds EncodingType=url itself and decodes the answer.
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]] == want
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == want
    assert [v["Key"] for v in s3.list_object_versions(Bucket=bucket)["Versions"]] == want
    # Asked for explicitly, the raw encoded form comes back.
    r = s3.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="ctl")
    assert r["EncodingType"] == "url"
    assert [o["Key"] for o in r["Contents"]] == ["ctl%01char"]
    r = s3.list_objects(Bucket=bucket, EncodingType="url", Delimiter="/")
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == ["%C3%BC/"]
    r = s3.list_object_versions(Bucket=bucket, EncodingType="url", Prefix="tab")
    assert [v["Key"] for v in r["Versions"]] == ["tab%09key"]


def test_list_v1_and_v2_answer_fields(s3, bucket):
    """ListObjects (v1) always carries Owner, echoes Marker, gives NextMarker only with a
    delimiter; ListObjectsV2 gives Owner only with fetch-owner=true, KeyCount, StartAfter,
    ContinuationToken / NextContinuationToken (API_ListObjects, API_ListObjectsV2)."""
    for k in ["a", "b", "c/d", "c/e"]:
        s3.put_object(Bucket=bucket, Key=k, Body=b"xy")
    r = s3.list_objects(Bucket=bucket, MaxKeys=1, Marker="a")
    assert r["Name"] == bucket and r["Marker"] == "a" and r["MaxKeys"] == 1
    assert r["IsTruncated"] is True and "NextMarker" not in r
    o = r["Contents"][0]
    assert o["Key"] == "b" and o["Size"] == 2 and o["StorageClass"] == "STANDARD"
    assert o["Owner"]["ID"] and o["ETag"] == '"%s"' % hashlib.md5(b"xy").hexdigest()
    r = s3.list_objects(Bucket=bucket, MaxKeys=2, Delimiter="/")
    assert r["IsTruncated"] is True and r["NextMarker"] == "b"
    r = s3.list_objects_v2(Bucket=bucket, MaxKeys=2, StartAfter="a")
    assert r["KeyCount"] == 2 and r["StartAfter"] == "a" and "Owner" not in r["Contents"][0]
    tok = r["NextContinuationToken"]
    r = s3.list_objects_v2(Bucket=bucket, ContinuationToken=tok, FetchOwner=True)
    assert r["ContinuationToken"] == tok and [o["Key"] for o in r["Contents"]] == ["c/e"]
    assert r["Contents"][0]["Owner"]["ID"]


def test_list_buckets_pagination(s3):
    """ListBuckets with max-buckets pages with a continuation token (API_ListBuckets:
    MaxBuckets, ContinuationToken, Prefix); max-buckets outside 1..10000 is
    InvalidArgument."""
    prefix = "lb-" + uuid.uuid4().hex[:8] + "-"
    names = [prefix + str(i) for i in range(3)]
    for n in names:
        s3.create_bucket(Bucket=n)
    try:
        r = s3.list_buckets(MaxBuckets=2, Prefix=prefix)
        assert [b["Name"] for b in r["Buckets"]] == names[:2] and r["Prefix"] == prefix
        r2 = s3.list_buckets(MaxBuckets=2, Prefix=prefix, ContinuationToken=r["ContinuationToken"])
        assert [b["Name"] for b in r2["Buckets"]] == names[2:] and "ContinuationToken" not in r2
        got = [
            b["Name"]
            for p in s3.get_paginator("list_buckets").paginate(Prefix=prefix, PaginationConfig={"PageSize": 1})
            for b in p["Buckets"]
        ]
        assert got == names
        # boto3 validates the range itself: sent raw.
        for bad in ("0", "10001"):
            status, _, body = send_signed(sign("GET", "/?max-buckets=" + bad))
            assert status == 400 and xml_field(body, "Code") == "InvalidArgument", body
    finally:
        for n in names:
            s3.delete_bucket(Bucket=n)


# ----- uploads ---------------------------------------------------------------------------


def test_chunked_transfer_encoding_without_length_is_not_implemented(s3, bucket):
    """A PUT with Transfer-Encoding: chunked and no length (neither Content-Length nor
    x-amz-decoded-content-length) answers 501 NotImplemented naming the header, as S3
    does ("A header you provided implies functionality that is not implemented",
    <Header>Transfer-Encoding</Header>); nothing is stored."""
    req = sign("PUT", "/%s/chunked" % bucket, {"Transfer-Encoding": "chunked"})
    status, hdrs, body = send_signed(req, chunks=[b"hello ", b"world"])
    assert status == 501, body
    assert xml_field(body, "Code") == "NotImplemented"
    assert xml_field(body, "Header") == "Transfer-Encoding"
    assert keys_of(s3, bucket) == []


def test_aws_chunked_bodies_with_and_without_transfer_encoding(s3, bucket):
    """Content-Encoding: aws-chunked (STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32
    trailer, boto3's default) stores the decoded bytes; aws-chunked is not stored as
    the object's Content-Encoding, other codings are (sigv4-streaming.html); the same body
    sent with Transfer-Encoding: chunked and x-amz-decoded-content-length is accepted."""
    data = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="sdk", Body=data, ContentEncoding="gzip")
    h = s3.head_object(Bucket=bucket, Key="sdk")
    assert h["ContentEncoding"] == "gzip" and h["ContentLength"] == len(data)
    crc = base64.b64encode(__import__("zlib").crc32(data).to_bytes(4, "big")).decode()
    framed = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (len(data), data, crc.encode())
    hdrs = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(data)),
        "X-Amz-Trailer": "x-amz-checksum-crc32",
    }
    req = sign("PUT", "/%s/raw" % bucket, dict(hdrs, **{"Content-Length": str(len(framed))}),
               payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    status, _, body = send_signed(req, body=framed)
    assert status == 200, body
    g = s3.get_object(Bucket=bucket, Key="raw")
    assert g["Body"].read() == data and "ContentEncoding" not in g
    req = sign("PUT", "/%s/raw-te" % bucket, dict(hdrs, **{"Transfer-Encoding": "chunked"}),
               payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    status, _, body = send_signed(req, chunks=[framed[:5000], framed[5000:]])
    assert status == 200, body
    assert s3.get_object(Bucket=bucket, Key="raw-te")["Body"].read() == data


def _raw_exchange(head, body, expect_continue):
    u = urllib.parse.urlsplit(ENDPOINT)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    s.sendall(head)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    first, _, rest = buf.partition(b"\r\n\r\n")
    interim = None
    if first.startswith(b"HTTP/1.1 100"):
        interim = first
        assert expect_continue
        s.sendall(body)
        buf = rest
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        first, _, rest = buf.partition(b"\r\n\r\n")
    s.close()
    return interim, int(first.split(b" ")[1]), first


def test_expect_100_continue(s3, bucket):
    """Expect: 100-continue: the server answers 100 Continue, then takes the body
    (RESTObjectPUT "Expect"); a request refused before its body (no such bucket) gets its
    final answer without a 100 and the body is never read."""
    data = b"z" * 300_000
    path = "/%s/expect" % bucket
    req = sign("PUT", path, {"Expect": "100-continue", "Content-Length": str(len(data))})
    head = "PUT %s HTTP/1.1\r\nHost: %s\r\n" % (path, urllib.parse.urlsplit(ENDPOINT).netloc)
    head += "".join("%s: %s\r\n" % kv for kv in req.headers.items()) + "\r\n"
    interim, status, _ = _raw_exchange(head.encode(), data, True)
    assert interim is not None and status == 200
    assert s3.get_object(Bucket=bucket, Key="expect")["Body"].read() == data
    path = "/no-such-bucket-%s/expect" % uuid.uuid4().hex[:8]
    req = sign("PUT", path, {"Expect": "100-continue", "Content-Length": str(len(data))})
    head = "PUT %s HTTP/1.1\r\nHost: %s\r\n" % (path, urllib.parse.urlsplit(ENDPOINT).netloc)
    head += "".join("%s: %s\r\n" % kv for kv in req.headers.items()) + "\r\n"
    interim, status, _ = _raw_exchange(head.encode(), data, True)
    assert interim is None and status == 404


# ----- conditional GETs ------------------------------------------------------------------


def test_if_none_match_that_matches_is_304(s3, bucket):
    """GET/HEAD with If-None-Match equal to the ETag: 304 Not Modified (RFC 9110, as S3);
    a different ETag: 200."""
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"x")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    assert s3.get_object(Bucket=bucket, Key="k", IfNoneMatch='"other"')["Body"].read() == b"x"


def test_if_modified_since_in_the_future_is_ignored(s3, bucket):
    """If-Modified-Since later than the server's clock is invalid and ignored (RFC 7232
    §3.3): S3 answers 200 with the object; a past date after the object's time: 304."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    assert s3.get_object(Bucket=bucket, Key="k", IfModifiedSince=future)["Body"].read() == b"x"
    assert s3.head_object(Bucket=bucket, Key="k", IfModifiedSince=future)["ContentLength"] == 1
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    import time

    time.sleep(1.2)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", IfModifiedSince=soon)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


# ----- multipart -------------------------------------------------------------------------


def test_multipart_small_last_part_and_part_reads(s3, bucket):
    """A last part below 5 MiB is allowed; GET/HEAD with partNumber reads one part (206,
    Content-Range, x-amz-mp-parts-count); a part number beyond the object's parts answers
    416 InvalidPartNumber; partNumber=1 of a plain object is the whole object."""
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    p1 = b"a" * (5 * MiB)
    p2 = b"b" * 3
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    g = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert g["Body"].read() == p2 and g["PartsCount"] == 2
    assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert g["ContentRange"] == "bytes %d-%d/%d" % (len(p1), len(p1) + 2, len(p1) + 3)
    h = s3.head_object(Bucket=bucket, Key="mp", PartNumber=1)
    assert h["ContentLength"] == len(p1) and h["PartsCount"] == 2
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=3)
    assert err(e) == ("InvalidPartNumber", 416)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"whole")
    assert s3.get_object(Bucket=bucket, Key="plain", PartNumber=1)["Body"].read() == b"whole"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="plain", PartNumber=2)
    assert err(e) == ("InvalidPartNumber", 416)


def test_multipart_first_part_sent_again_last(s3, bucket):
    """UploadPart of a part number already uploaded replaces it; the first part sent
    again after the others, then CompleteMultipartUpload, gives the object of the latest
    parts, with the ETag of their MD5s (mpuoverview.html)."""
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    old = b"o" * (5 * MiB)
    s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=old)
    p2 = b"2" * 1000
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    p1 = b"n" * (5 * MiB)
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, e1), (2, e2)]
    r = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    md5s = hashlib.md5(hashlib.md5(p1).digest() + hashlib.md5(p2).digest()).hexdigest()
    assert r["ETag"] == '"%s-2"' % md5s
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == p1 + p2


# ----- metadata and keys -----------------------------------------------------------------


def test_non_ascii_user_metadata(s3, bucket):
    """Non-ASCII user metadata travels RFC 2047-encoded (UsingMetadata.html: S3 decodes
    such values and returns them encoded); the decoded text round-trips."""
    text = "日本語 ünïcödé"
    encoded = email.header.Header(text, "utf-8").encode()
    s3.put_object(Bucket=bucket, Key="m", Body=b"x", Metadata={"title": encoded, "plain": "ascii"})
    got = s3.head_object(Bucket=bucket, Key="m")["Metadata"]
    assert got["plain"] == "ascii"
    decoded = "".join(
        part.decode(cs or "ascii") if isinstance(part, bytes) else part
        for part, cs in email.header.decode_header(got["title"])
    )
    assert decoded == text


def test_keys_with_special_characters(s3, bucket):
    """Keys with characters S3 documents as needing care (object-keys.html: & $ @ = ; : +
    space , ? and non-ASCII, plus % and #, backslash, ~) round-trip through PUT, GET,
    HEAD, COPY, DELETE and listings."""
    keys = ["a&b$c@d=e;f:g+h i,j?k", "100% #1", "back\\slash", "~tilde/ünï", "x//y/../z", "a\rb"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    for k in keys:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode()
        assert s3.head_object(Bucket=bucket, Key=k)["ContentLength"] == len(k.encode())
    assert keys_of(s3, bucket) == sorted(keys, key=lambda k: k.encode())
    s3.copy_object(Bucket=bucket, Key=keys[0] + "-copy", CopySource={"Bucket": bucket, "Key": keys[0]})
    assert s3.get_object(Bucket=bucket, Key=keys[0] + "-copy")["Body"].read() == keys[0].encode()
    for k in keys + [keys[0] + "-copy"]:
        s3.delete_object(Bucket=bucket, Key=k)
    assert keys_of(s3, bucket) == []


def test_create_existing_own_bucket(s3, bucket):
    """CreateBucket of a bucket one already owns, outside us-east-1 (this server's region
    is not us-east-1): 409 BucketAlreadyOwnedByYou, contents unchanged
    (API_CreateBucket errors; us-east-1 alone answers 200 for legacy reasons)."""
    assert REGION != "us-east-1"
    s3.put_object(Bucket=bucket, Key="keep", Body=b"kept")
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    assert err(e) == ("BucketAlreadyOwnedByYou", 409)
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"kept"


# ----- requests and errors ---------------------------------------------------------------


def test_request_id_header_equals_error_body(s3, bucket):
    """Every answer carries x-amz-request-id (and x-amz-id-2); an error body's RequestId
    and HostId equal those headers (ErrorResponses.html)."""
    req = sign("GET", "/%s/missing" % bucket)
    status, hdrs, body = send_signed(req)
    assert status == 404 and xml_field(body, "Code") == "NoSuchKey"
    assert re.fullmatch(r"[0-9A-F]{16}", hdrs["x-amz-request-id"])
    assert xml_field(body, "RequestId") == hdrs["x-amz-request-id"]
    assert xml_field(body, "HostId") == hdrs["x-amz-id-2"]
    r = s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    rid = r["ResponseMetadata"]["RequestId"]
    assert re.fullmatch(r"[0-9A-F]{16}", rid)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="missing")
    assert e.value.response["ResponseMetadata"]["RequestId"]
    assert e.value.response["ResponseMetadata"]["RequestId"] != rid


def test_empty_or_missing_authorization_is_access_denied(s3, bucket):
    """An empty Authorization header, or none (anonymous), on a private bucket: 403
    AccessDenied, nothing written (ceph s3-tests test_object_create_bad_authorization_empty
    / _none)."""
    for headers in ({"Authorization": "", "Content-Length": "3"}, {"Content-Length": "3"}):
        status, _, body = send("PUT", "/%s/anon" % bucket, headers, body=b"abc")
        assert status == 403, body
        assert xml_field(body, "Code") == "AccessDenied"
    assert keys_of(s3, bucket) == []


def test_empty_content_md5_is_invalid_digest(s3, bucket):
    """An empty Content-MD5 header: 400 InvalidDigest, nothing written (ceph s3-tests
    test_object_create_bad_md5_empty)."""
    files = data_files()
    for size in (3, 100_000):
        req = sign("PUT", "/%s/md5" % bucket, {"Content-MD5": "", "Content-Length": str(size)})
        status, _, body = send_signed(req, body=b"a" * size)
        assert status == 400 and xml_field(body, "Code") == "InvalidDigest", body
    assert keys_of(s3, bucket) == [] and data_files() == files


def test_missing_content_length_is_411(s3, bucket):
    """A PUT object (or UploadPart) without Content-Length: 411 MissingContentLength,
    nothing written (ceph s3-tests test_object_create_bad_contentlength_none)."""
    req = sign("PUT", "/%s/nolen" % bucket)
    status, _, body = send_signed(req)
    assert status == 411 and xml_field(body, "Code") == "MissingContentLength", body
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    req = sign("PUT", "/%s/mp?partNumber=1&uploadId=%s" % (bucket, up))
    status, _, body = send_signed(req)
    assert status == 411, body
    assert keys_of(s3, bucket) == []
    assert "Parts" not in s3.list_parts(Bucket=bucket, Key="mp", UploadId=up)


def test_x_amz_date_takes_precedence_over_date(s3, bucket):
    """SigV4 takes the request time from x-amz-date when both it and Date are present
    (sigv4-date-handling.html): a stale Date beside a current x-amz-date is accepted; a
    stale x-amz-date beside a current Date is RequestTimeTooSkewed."""
    stale = datetime.datetime.utcnow() - datetime.timedelta(hours=2)
    now_http = email.utils.formatdate(usegmt=True)
    req = sign("PUT", "/%s/dated" % bucket, {"Content-Length": "1"})
    req.headers["Date"] = email.utils.format_datetime(stale.replace(tzinfo=datetime.timezone.utc), usegmt=True)
    status, _, body = send_signed(req, body=b"x")
    assert status == 200, body
    req = sign("PUT", "/%s/dated2" % bucket, {"Content-Length": "1"}, at=stale)
    req.headers["Date"] = now_http
    status, _, body = send_signed(req, body=b"x")
    assert status == 403 and xml_field(body, "Code") == "RequestTimeTooSkewed", body
    assert keys_of(s3, bucket) == ["dated"]


def test_skewed_and_expired_signatures(s3, bucket):
    """A header-signed request more than 15 minutes off the server's clock (either way):
    403 RequestTimeTooSkewed with S3's message, RequestTime, ServerTime and
    MaxAllowedSkewMilliseconds; 10 minutes off is accepted. A presigned URL past its
    X-Amz-Expires: 403 AccessDenied "Request has expired" (RESTAuthentication)."""
    now = datetime.datetime.utcnow()
    for off, want in ((-20, 403), (20, 403), (-10, 200)):
        req = sign("GET", "/%s" % bucket, at=now + datetime.timedelta(minutes=off))
        status, _, body = send_signed(req)
        assert status == want, (off, body)
        if want == 403:
            assert xml_field(body, "Code") == "RequestTimeTooSkewed"
            assert xml_field(body, "Message") == (
                "The difference between the request time and the current time is too large."
            )
            assert xml_field(body, "MaxAllowedSkewMilliseconds") == "900000"
            assert xml_field(body, "RequestTime") == req.headers["X-Amz-Date"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", xml_field(body, "ServerTime"))
    s3.put_object(Bucket=bucket, Key="p", Body=b"x")
    v4 = make_client(signature_version="s3v4")
    with mock.patch("botocore.auth.get_current_datetime", return_value=now - datetime.timedelta(hours=1)):
        url = v4.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    u = urllib.parse.urlsplit(url)
    status, _, body = send("GET", u.path + "?" + u.query, {})
    assert status == 403 and xml_field(body, "Code") == "AccessDenied", body
    assert xml_field(body, "Message") == "Request has expired"
