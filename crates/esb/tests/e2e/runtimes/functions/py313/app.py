"""Python 3.12+ syntax: a `type` statement (PEP 695) and quotes reused inside an f-string
(PEP 701). Python 3.11 cannot even import this file."""

import os
import sys

type Pair = tuple[str, str]


def handler(event, context):
    words = ["python", "on", "trixie"]
    pair: Pair = ("a", "b")
    return {
        "version": sys.version,
        "major_minor": f"{sys.version_info.major}.{sys.version_info.minor}",
        "joined": f"{" ".join(words)}",
        "pair": list(pair),
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "event": event,
    }
