#!/usr/bin/env bash
# The AWS CLI against the embedded S3 store: high-level `aws s3` commands (cp, sync, ls,
# rm, mv, presign; multipart above the 8 MiB threshold) and `aws s3api` calls.
# Environment: AWS (path of the CLI), ESB_S3_ENDPOINT, ESB_S3_ACCESS_KEY, ESB_S3_SECRET_KEY.
set -euo pipefail
export AWS_ACCESS_KEY_ID=$ESB_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$ESB_S3_SECRET_KEY
export AWS_DEFAULT_REGION=${ESB_S3_REGION:-ap-northeast-1} AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
aws() { "$AWS" --endpoint-url "$ESB_S3_ENDPOINT" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
b=cli-$RANDOM$RANDOM

aws s3 mb "s3://$b" >/dev/null
aws s3 ls | grep -q " $b$" || fail "ls does not show the bucket"

# cp small and large (multipart: the CLI switches at 8 MiB)
echo "hello cli" > "$work/small.txt"
head -c $((40 * 1024 * 1024 + 123)) /dev/urandom > "$work/big.bin"
aws s3 cp "$work/small.txt" "s3://$b/dir/small.txt" >/dev/null
aws s3 cp "$work/big.bin" "s3://$b/dir/big.bin" >/dev/null
etag=$(aws s3api head-object --bucket "$b" --key dir/big.bin --query ETag --output text)
[[ $etag == *-* ]] || fail "big.bin was not uploaded with multipart (ETag $etag)"
aws s3 cp "s3://$b/dir/big.bin" "$work/big.back" >/dev/null
cmp "$work/big.bin" "$work/big.back" || fail "big.bin round trip differs"
aws s3 cp "s3://$b/dir/small.txt" - | grep -q "hello cli" || fail "cp to stdout"
aws s3 ls "s3://$b/dir/" | grep -q "small.txt" || fail "ls prefix"

# sync a tree both ways, with odd names
mkdir -p "$work/tree/sub dir/deeper" "$work/tree/ünï"
for i in $(seq 1 30); do echo "file $i" > "$work/tree/sub dir/f $i.txt"; done
echo plus > "$work/tree/a+b=c&d.txt"
echo uni > "$work/tree/ünï/キー.txt"
head -c 100000 /dev/urandom > "$work/tree/sub dir/deeper/blob"
aws s3 sync "$work/tree" "s3://$b/tree" >/dev/null
n=$(aws s3 ls --recursive "s3://$b/tree/" | wc -l)
[ "$n" -eq 33 ] || fail "expected 33 synced objects, got $n"
aws s3 sync "s3://$b/tree" "$work/tree-back" >/dev/null
diff -r "$work/tree" "$work/tree-back" || fail "sync down differs"
# a second sync uploads nothing
out=$(aws s3 sync "$work/tree" "s3://$b/tree")
[ -z "$out" ] || fail "second sync was not a no-op: $out"
rm "$work/tree/sub dir/f 1.txt"
aws s3 sync --delete "$work/tree" "s3://$b/tree" | grep -q "delete: s3://$b/tree/sub dir/f 1.txt" || fail "sync --delete"

# mv, presign, rm
aws s3 mv "s3://$b/dir/small.txt" "s3://$b/moved.txt" >/dev/null
aws s3 ls "s3://$b/dir/small.txt" && fail "mv left the source"
# The CLI presigns with Signature Version 2 unless told otherwise: refused, as SigV2 is
# off (ESB_S3_SIGV2); with `s3.signature_version = s3v4` in its config the URL works.
url=$(aws s3 presign "s3://$b/moved.txt" --expires-in 300)
code=$(curl -sS -o "$work/v2.xml" -w '%{http_code}' "$url")
[ "$code" = 400 ] && grep -q InvalidRequest "$work/v2.xml" || fail "a SigV2 presigned URL was not refused ($code)"
printf '[default]\ns3 =\n    signature_version = s3v4\n' > "$work/config"
url=$(AWS_CONFIG_FILE="$work/config" aws s3 presign "s3://$b/moved.txt" --expires-in 300)
[[ $url == *X-Amz-Signature=* ]] || fail "not a SigV4 URL: $url"
curl -fsS "$url" | grep -q "hello cli" || fail "presigned GET"

# s3api calls
aws s3api put-object --bucket "$b" --key api/obj --body "$work/small.txt" --content-type text/plain \
  --metadata k=v --tagging "t=1" >/dev/null
[ "$(aws s3api head-object --bucket "$b" --key api/obj --query 'Metadata.k' --output text)" = v ] || fail "metadata"
[ "$(aws s3api get-object-tagging --bucket "$b" --key api/obj --query 'TagSet[0].Value' --output text)" = 1 ] || fail "tagging"
aws s3api get-object --bucket "$b" --key api/obj --range bytes=0-4 "$work/range" >/dev/null
[ "$(cat "$work/range")" = hello ] || fail "range get"
aws s3api copy-object --bucket "$b" --key api/copy --copy-source "$b/api/obj" >/dev/null
aws s3api list-objects-v2 --bucket "$b" --prefix api/ --query 'Contents[].Key' --output text | grep -q "api/copy" || fail "list-objects-v2"
aws s3api list-objects --bucket "$b" --delimiter / --query 'CommonPrefixes[].Prefix' --output text | grep -q "api/" || fail "list-objects delimiter"
[ "$(aws s3api get-bucket-location --bucket "$b" --query LocationConstraint --output text)" = "$AWS_DEFAULT_REGION" ] || fail "location"
uid=$(aws s3api create-multipart-upload --bucket "$b" --key api/mp --query UploadId --output text)
head -c $((5 * 1024 * 1024)) /dev/urandom > "$work/p1"
e1=$(aws s3api upload-part --bucket "$b" --key api/mp --upload-id "$uid" --part-number 1 --body "$work/p1" --query ETag --output text)
e2=$(aws s3api upload-part --bucket "$b" --key api/mp --upload-id "$uid" --part-number 2 --body "$work/small.txt" --query ETag --output text)
aws s3api list-parts --bucket "$b" --key api/mp --upload-id "$uid" --query 'Parts[].PartNumber' --output text | grep -q "1.*2" || fail "list-parts"
aws s3api list-multipart-uploads --bucket "$b" --query 'Uploads[].UploadId' --output text | grep -q "$uid" || fail "list-multipart-uploads"
printf '{"Parts":[{"PartNumber":1,"ETag":%s},{"PartNumber":2,"ETag":%s}]}' "$e1" "$e2" > "$work/parts.json"
aws s3api complete-multipart-upload --bucket "$b" --key api/mp --upload-id "$uid" --multipart-upload "file://$work/parts.json" >/dev/null
cat "$work/p1" "$work/small.txt" > "$work/mp.expected"
aws s3 cp "s3://$b/api/mp" "$work/mp.back" >/dev/null
cmp "$work/mp.expected" "$work/mp.back" || fail "multipart via s3api differs"
uid=$(aws s3api create-multipart-upload --bucket "$b" --key api/aborted --query UploadId --output text)
aws s3api abort-multipart-upload --bucket "$b" --key api/aborted --upload-id "$uid"
aws s3api delete-objects --bucket "$b" --delete '{"Objects":[{"Key":"api/obj"},{"Key":"api/copy"}]}' >/dev/null
aws s3api head-object --bucket "$b" --key api/obj 2>/dev/null && fail "delete-objects"

# errors surface with S3 codes
out=$(aws s3api get-object --bucket "$b" --key nope "$work/x" 2>&1) && fail "missing key"
grep -q NoSuchKey <<<"$out" || fail "expected NoSuchKey, got: $out"
out=$(aws s3 rb "s3://$b" 2>&1) && fail "rb of a non-empty bucket"
grep -q BucketNotEmpty <<<"$out" || fail "expected BucketNotEmpty, got: $out"

aws s3 rm --recursive "s3://$b" >/dev/null
aws s3 rb "s3://$b" >/dev/null
aws s3 ls | grep -q " $b$" && fail "rb left the bucket"
echo "awscli: all checks passed"
