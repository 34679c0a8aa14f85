"""Writes a `docker save` archive of a Python Lambda image, as a user's Dockerfile makes
it (FROM a Debian Python with awslambdaric and boto3; COPY app.py; ENTRYPOINT python3 -m
awslambdaric; CMD app.handler), without Docker: the base layer is esb's cached
python3.11 base (built by an `esb build` first), the app layer is image-src/.

usage: make_image.py OUT.tar
"""

import glob
import hashlib
import io
import json
import os
import sys
import tarfile

here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1]
cache = os.environ.get("ESB_CACHE_DIR", "/var/cache/esb")
bases = sorted(
    glob.glob(f"{cache}/base-images/python3.11-bookworm-*/meta.json"), key=os.path.getmtime
)
if not bases:
    sys.exit(f"no python3.11 base in {cache}/base-images: run esb build first")
base_dir = os.path.dirname(bases[-1])
base_meta = json.load(open(bases[-1]))

app = io.BytesIO()
with tarfile.open(fileobj=app, mode="w", format=tarfile.GNU_FORMAT) as t:
    for name in ["var", "var/task"]:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        t.addfile(info)
    data = open(os.path.join(here, "image-src/app.py"), "rb").read()
    info = tarfile.TarInfo("var/task/app.py")
    info.size = len(data)
    info.mode = 0o644
    t.addfile(info, io.BytesIO(data))
app_bytes = app.getvalue()
app_diff = "sha256:" + hashlib.sha256(app_bytes).hexdigest()

arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
config = {
    "architecture": arch,
    "os": "linux",
    "config": {
        "Entrypoint": ["python3", "-m", "awslambdaric"],
        "Cmd": ["app.handler"],
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH=/var/runtime",
            "LAMBDA_TASK_ROOT=/var/task",
            "IMAGE_SETTING=set by the image",
        ],
        "WorkingDir": "/var/task",
    },
    "rootfs": {"type": "layers", "diff_ids": [base_meta["diff_id"], app_diff]},
}
config_bytes = json.dumps(config).encode()
config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"

with tarfile.open(out, "w") as t:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        t.addfile(info, io.BytesIO(data))

    add(config_name, config_bytes)
    t.add(os.path.join(base_dir, "layer.tar.gz"), arcname="base/layer.tar")
    add("app/layer.tar", app_bytes)
    add(
        "manifest.json",
        json.dumps(
            [
                {
                    "Config": config_name,
                    "RepoTags": ["my-python-function:latest"],
                    "Layers": ["base/layer.tar", "app/layer.tar"],
                }
            ]
        ).encode(),
    )
print(out)
