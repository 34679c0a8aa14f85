"""Python Lambda handlers used as test fixtures (run by awslambdaric under esb-supervisor)."""

import json
import logging
import os
import subprocess
import time

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def echo(event, context):
    return event


def returned_error(event, context):
    # A handler that returns an error-shaped object: Lambda treats this as a success.
    return {"errorType": "ValidationError", "errorMessage": "bad input"}


def raise_exception(event, context):
    raise ValueError("boom: " + str(event.get("why", "no reason")))


def sleep(event, context):
    time.sleep(event.get("seconds", 600))
    return "woke"


def spawn_and_sleep(event, context):
    child = subprocess.Popen(["sleep", "600"])
    with open(event["pid_file"], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(600)
    return "woke"


def crash(event, context):
    print("about to crash", flush=True)
    os._exit(7)


def big(event, context):
    return "x" * event["size"]


def env(event, context):
    cc = context.client_context
    return {
        "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory": context.memory_limit_in_mb,
        "function_arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "client_context": {"custom": cc.custom, "env": cc.env} if cc else None,
        "region": os.environ.get("AWS_REGION"),
        "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "runtime_api": os.environ.get("AWS_LAMBDA_RUNTIME_API"),
        "handler": os.environ.get("_HANDLER"),
        "cwd": os.getcwd(),
        "event": event,
    }


def log(event, context):
    for i in range(event.get("lines", 3)):
        print(f"stdout line {i} of {context.aws_request_id}")
    logger.info("logged through logging")
    print(json.dumps({"message": "structured", "level": "WARNING", "order": 1}))
    return "logged"


def orphan(event, context):
    """Leaves an orphan behind (double fork) that exits shortly: whoever reaps orphans
    (PID 1, or the supervisor as child subreaper) must collect it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(0.2)
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    return {"orphan": int(os.read(r, 32))}


_ACTIONS = {
    "orphan": orphan,
    "echo": echo,
    "returned_error": returned_error,
    "raise": raise_exception,
    "sleep": sleep,
    "spawn_and_sleep": spawn_and_sleep,
    "crash": crash,
    "big": big,
    "env": env,
    "log": log,
}


def dispatch(event, context):
    """One handler for many tests: runs the handler named by event["action"] (default echo)."""
    action = event.get("action", "echo") if isinstance(event, dict) else "echo"
    return _ACTIONS[action](event, context)
