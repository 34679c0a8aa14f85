"""bench/pause: echoes its event; with "until" (Unix seconds) it first sleeps until then
(to hold many workers busy at once, so that they all go idle together)."""

import time


def handler(event, context):
    until = (event or {}).get("until")
    if until:
        time.sleep(max(0.0, until - time.time()))
    return {"echo": event}
