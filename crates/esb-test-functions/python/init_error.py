"""A handler module whose import fails: exercises the init error path."""

raise RuntimeError("init failed on purpose")


def handler(event, context):  # pragma: no cover - never reached
    return event
