#!/usr/bin/env bash
# The AWS CLI (v1) `aws s3api` commands for issue 19's behaviours, as AWS S3 answers them
# (docs/s3.md, "Conformance"): versioning, version listings, markers and pagination,
# ListBuckets pages, max-keys=0, part reads, conditional GETs, re-creating one's bucket.
# Environment: AWS (path of the CLI), ESB_S3_ENDPOINT, ESB_S3_ACCESS_KEY, ESB_S3_SECRET_KEY.
set -euo pipefail
export AWS_ACCESS_KEY_ID=$ESB_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$ESB_S3_SECRET_KEY
export AWS_DEFAULT_REGION=${ESB_S3_REGION:-ap-northeast-1} AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
aws() { "$AWS" --endpoint-url "$ESB_S3_ENDPOINT" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
b=clic-$RANDOM$RANDOM

aws s3api create-bucket --bucket "$b" --create-bucket-configuration "LocationConstraint=$AWS_DEFAULT_REGION" >/dev/null
# Re-creating one's own bucket outside us-east-1: BucketAlreadyOwnedByYou (409).
out=$(aws s3api create-bucket --bucket "$b" --create-bucket-configuration "LocationConstraint=$AWS_DEFAULT_REGION" 2>&1) && fail "re-create succeeded"
grep -q BucketAlreadyOwnedByYou <<<"$out" || fail "expected BucketAlreadyOwnedByYou, got: $out"

# Versioning: no status until configured, then Enabled.
[ -z "$(aws s3api get-bucket-versioning --bucket "$b" --output text)" ] || fail "status before configuration"
aws s3api put-bucket-versioning --bucket "$b" --versioning-configuration Status=Enabled
[ "$(aws s3api get-bucket-versioning --bucket "$b" --query Status --output text)" = Enabled ] || fail "status Enabled"
echo one > "$work/one"; echo two > "$work/two"
v1=$(aws s3api put-object --bucket "$b" --key k --body "$work/one" --query VersionId --output text)
v2=$(aws s3api put-object --bucket "$b" --key k --body "$work/two" --query VersionId --output text)
[ "$v1" != "$v2" ] && [ "$v1" != null ] || fail "version ids $v1 $v2"
aws s3api get-object --bucket "$b" --key k --version-id "$v1" "$work/back" >/dev/null
cmp "$work/one" "$work/back" || fail "get-object --version-id"
[ "$(aws s3api head-object --bucket "$b" --key k --version-id "$v2" --query VersionId --output text)" = "$v2" ] || fail "head-object --version-id"
marker=$(aws s3api delete-object --bucket "$b" --key k --query VersionId --output text)
out=$(aws s3api get-object --bucket "$b" --key k "$work/x" 2>&1) && fail "get after delete marker"
grep -q NoSuchKey <<<"$out" || fail "expected NoSuchKey, got: $out"
got=$(aws s3api list-object-versions --bucket "$b" --query '[Versions[].VersionId, DeleteMarkers[].VersionId]' --output text | tr -s '\t\n' '  ')
[ "$got" = "$v2 $v1 $marker " ] || fail "list-object-versions: $got"
# Paginated by the CLI (one entry per page; the marker's page has no Versions): the same.
got=$(aws s3api list-object-versions --bucket "$b" --page-size 1 --query 'Versions[].VersionId' --output text | grep -v '^None$' | tr -s '\t\n' '  ')
[ "$got" = "$v2 $v1 " ] || fail "paginated list-object-versions: $got"
aws s3api delete-object --bucket "$b" --key k --version-id "$marker" >/dev/null
aws s3api get-object --bucket "$b" --key k "$work/back" >/dev/null
cmp "$work/two" "$work/back" || fail "deleting the marker did not restore the object"
aws s3api delete-object --bucket "$b" --key k --version-id "$v2" >/dev/null
aws s3api get-object --bucket "$b" --key k "$work/back" >/dev/null
cmp "$work/one" "$work/back" || fail "deleting the current version did not restore the previous one"
aws s3api put-bucket-versioning --bucket "$b" --versioning-configuration Status=Suspended
[ "$(aws s3api put-object --bucket "$b" --key k --body "$work/two" --query VersionId --output text)" = null ] || fail "suspended PUT version id"

# max-keys=0 and part reads.
[ "$(aws s3api list-objects-v2 --bucket "$b" --max-keys 0 --no-paginate --query '[KeyCount, IsTruncated]' --output text)" = "$(printf '0\tFalse')" ] || fail "max-keys 0"
[ "$(aws s3api head-object --bucket "$b" --key k --part-number 1 --query ContentLength --output text)" = 4 ] || fail "head-object --part-number 1"
out=$(aws s3api get-object --bucket "$b" --key k --part-number 2 "$work/x" 2>&1) && fail "part 2 of a plain object"
grep -q InvalidPartNumber <<<"$out" || fail "expected InvalidPartNumber, got: $out"

# Conditional GET: a matching If-None-Match is 304.
etag=$(aws s3api head-object --bucket "$b" --key k --query ETag --output text)
out=$(aws s3api get-object --bucket "$b" --key k --if-none-match "$etag" "$work/x" 2>&1) && fail "if-none-match matched but 200"
grep -q 304 <<<"$out" || fail "expected 304, got: $out"

# ListBuckets pages.
p=lbc-$RANDOM$RANDOM-
for i in 1 2 3; do aws s3api create-bucket --bucket "$p$i" --create-bucket-configuration "LocationConstraint=$AWS_DEFAULT_REGION" >/dev/null; done
page=$(aws s3api list-buckets --prefix "$p" --max-buckets 2 --no-paginate --output json)
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert [b["Name"] for b in r["Buckets"]]==[sys.argv[2]+"1",sys.argv[2]+"2"] and r["ContinuationToken"], r' "$page" "$p" || fail "list-buckets page"
got=$(aws s3api list-buckets --prefix "$p" --page-size 1 --query 'Buckets[].Name' --output text | tr -s '\t\n' '  ')
[ "$got" = "${p}1 ${p}2 ${p}3 " ] || fail "paginated list-buckets: $got"
for i in 1 2 3; do aws s3api delete-bucket --bucket "$p$i"; done

# Clean up: every version and marker, then the bucket.
for what in Versions DeleteMarkers; do
  aws s3api list-object-versions --bucket "$b" --query "$what[].[Key,VersionId]" --output text |
    while read -r key vid; do
      [ "$key" = None ] || aws s3api delete-object --bucket "$b" --key "$key" --version-id "$vid" >/dev/null
    done
done
aws s3api delete-bucket --bucket "$b"
echo "awscli conformance: all checks passed"
