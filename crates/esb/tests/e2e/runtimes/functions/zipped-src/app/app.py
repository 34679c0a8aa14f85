import os

import ziplib  # from the zip layer, unpacked into /opt/python


def handler(event, context):
    script = os.path.join(os.environ["LAMBDA_TASK_ROOT"], "bin", "run.sh")
    return {
        "layer": ziplib.VALUE,
        "script_mode": oct(os.stat(script).st_mode & 0o777),
        "app_mode": oct(os.stat(__file__).st_mode & 0o777),
        # stat needs no read permission: a 0600 file keeps its mode (and, as on Lambda,
        # the unprivileged function could not read it).
        "private_mode": oct(os.stat(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "private.txt")).st_mode & 0o777),
    }
