#!/usr/bin/env bash
# Debian's s3cmd and rclone against the embedded S3 store: sync a tree of a few thousand
# files with odd names up and back down with each tool, and compare SHA-256 sums.
# Usage: sync_tools.sh rclone|s3cmd
# Environment: PYTHON, ESB_S3_ENDPOINT, ESB_S3_ACCESS_KEY, ESB_S3_SECRET_KEY, FILES (count).
set -euo pipefail
tool=${1:?usage: sync_tools.sh rclone|s3cmd}
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v "$tool" >/dev/null || fail "$tool is missing: run scripts/prereqs.sh (crates/esb-s3/deps/apt.txt)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hostport=${ESB_S3_ENDPOINT#http://}
region=${ESB_S3_REGION:-ap-northeast-1}
b=sync-$RANDOM$RANDOM

# A tree with odd names: spaces, unicode, URL-special characters, dots, deep nesting.
"$PYTHON" - "$work/src" "${FILES:-2000}" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
parts = ["plain", "with space", "ünïcødé", "キー", "emoji😀", "a+b", "x&y=z", "per%cent", "hash#tag",
         "q?mark", "semi;colon", "comma,", "(paren)", "[br]", "{cb}", "tilde~", "at@", "dollar$",
         "quote'", "..dots", ".hidden", "-dash", "_under", "UPPER", "mixed.Case.ext", "  lead", "trail  "]
made = set()
while len(made) < count:
    depth = rnd.randint(0, 4)
    segs = [rnd.choice(parts) + ("" if rnd.random() < 0.5 else str(rnd.randint(0, 9))) for _ in range(depth)]
    name = rnd.choice(parts) + "-%d" % len(made) + rnd.choice(["", ".txt", ".bin", ".tar.gz"])
    rel = os.path.join(*segs, name) if segs else name
    if rel in made:
        continue
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    size = rnd.choice([0, 1, 100, 4096, 20000, 70000])
    with open(path, "wb") as f:
        f.write(rnd.randbytes(size))
    made.add(rel)
PY
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
sums "$work/src" > "$work/src.sums"
n=$(wc -l < "$work/src.sums")

if [ "$tool" = rclone ]; then
export RCLONE_CONFIG_ESB_TYPE=s3 RCLONE_CONFIG_ESB_PROVIDER=Other RCLONE_CONFIG_ESB_ENDPOINT=$ESB_S3_ENDPOINT
export RCLONE_CONFIG_ESB_ACCESS_KEY_ID=$ESB_S3_ACCESS_KEY RCLONE_CONFIG_ESB_SECRET_ACCESS_KEY=$ESB_S3_SECRET_KEY
export RCLONE_CONFIG_ESB_REGION=$region RCLONE_CONFIG=/dev/null
# rclone 1.60 cannot combine AWS_CA_BUNDLE with its own HTTP transport; plain HTTP needs no CA.
unset AWS_CA_BUNDLE
rclone mkdir "esb:$b"
rclone sync --transfers 8 --checkers 8 "$work/src" "esb:$b/rclone"
rclone check --one-way "$work/src" "esb:$b/rclone" || fail "rclone check after upload"
[ "$(rclone lsf -R --files-only "esb:$b/rclone" | wc -l)" -eq "$n" ] || fail "rclone lists a different count"
rclone sync --transfers 8 "esb:$b/rclone" "$work/rclone-back"
sums "$work/rclone-back" | diff "$work/src.sums" - || fail "rclone round trip differs"
# A change and a deletion propagate; an unchanged tree copies nothing.
victim=$(cd "$work/src" && find . -type f | sort | awk "NR == 1")
rm "$work/src/$victim"
echo changed > "$work/src/new file.txt"
rclone sync "$work/src" "esb:$b/rclone"
rclone check "$work/src" "esb:$b/rclone" || fail "rclone check after change"
rclone purge "esb:$b"
echo "rclone: $n files synced both ways"
fi

if [ "$tool" = s3cmd ]; then
cat > "$work/s3cfg" <<CFG
[default]
access_key = $ESB_S3_ACCESS_KEY
secret_key = $ESB_S3_SECRET_KEY
host_base = $hostport
host_bucket = $hostport
bucket_location = $region
use_https = False
signature_v2 = False
check_ssl_certificate = False
CFG
s3() { s3cmd -c "$work/s3cfg" --no-progress "$@"; }
s3 mb "s3://$b" >/dev/null
s3 sync "$work/src/" "s3://$b/s3cmd/" >/dev/null
[ "$(s3 ls -r "s3://$b/s3cmd/" | wc -l)" -eq "$n" ] || fail "s3cmd lists a different count"
s3 sync "s3://$b/s3cmd/" "$work/s3cmd-back/" >/dev/null
sums "$work/s3cmd-back" | diff "$work/src.sums" - || fail "s3cmd round trip differs"
out=$(s3 sync --dry-run "$work/src/" "s3://$b/s3cmd/" | grep -c "^upload:" || true)
[ "$out" -eq 0 ] || fail "s3cmd wants to re-upload $out unchanged files"
# s3cmd info / put / get / del of a multipart object (s3cmd's chunk is 15 MiB)
head -c $((20 * 1024 * 1024)) /dev/urandom > "$work/large"
s3 put --multipart-chunk-size-mb=5 "$work/large" "s3://$b/large" >/dev/null
s3 get "s3://$b/large" "$work/large.back" >/dev/null
cmp "$work/large" "$work/large.back" || fail "s3cmd multipart round trip"
s3 del --recursive --force "s3://$b/" >/dev/null
s3 rb "s3://$b" >/dev/null
echo "s3cmd: $n files synced both ways"
fi
