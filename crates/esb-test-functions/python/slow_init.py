"""A handler module whose import (init) takes SLOW_INIT_SECONDS (default 1.5 s)."""

import os
import time

time.sleep(float(os.environ.get("SLOW_INIT_SECONDS", "1.5")))


def handler(event, context):
    return {"remaining_ms": context.get_remaining_time_in_millis()}
