"""Tries what a worker must not be able to do, and reports how it went."""
import ctypes
import errno
import os
import signal
import subprocess
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SYS_CLONE = 56
SYS_IO_URING_SETUP = 425
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17


def _syscall(*args):
    ctypes.set_errno(0)
    ret = libc.syscall(*[ctypes.c_long(a) for a in args])
    return ret, ctypes.get_errno()


def _clone_newuser():
    ret, err = _syscall(SYS_CLONE, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if ret == 0:  # the child, if the call ever succeeded
        os._exit(0)
    if ret > 0:
        os.waitpid(ret, 0)
        return {"ok": True}
    return {"ok": False, "errno": errno.errorcode.get(err, str(err))}


def _io_uring():
    params = ctypes.create_string_buffer(120)
    ret, err = _syscall(SYS_IO_URING_SETUP, 8, ctypes.addressof(params))
    if ret >= 0:
        os.close(ret)
        return {"ok": True}
    return {"ok": False, "errno": errno.errorcode.get(err, str(err))}


def _unshare_user():
    r = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True)
    return {"ok": r.returncode == 0, "stderr": r.stderr.strip()}


def _console(mib):
    """Writes straight to the worker's console (PID 1's stdout), past the log shipping."""
    line = (b"x" * 1023) + b"\n"
    chunk = line * 1024
    with open("/proc/1/fd/1", "wb", buffering=0) as out:
        for _ in range(mib):
            out.write(chunk)
    return {"written_mib": mib}


def _fork_bomb(seconds):
    children = []
    failed = None
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            pid = os.fork()
        except OSError as e:
            failed = errno.errorcode.get(e.errno, str(e.errno))
            break
        if pid == 0:
            # A small process: the worker's process limit, not its memory, must stop this.
            try:
                os.execv("/bin/sleep", ["sleep", str(seconds + 5)])
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return {"forked": len(children), "failed": failed}


def _hog():
    blocks = []
    while True:
        blocks.append(bytearray(16 << 20))


def _tmpfs(mib):
    block = b"y" * (1 << 20)
    with open("/tmp/fill", "wb") as f:
        for _ in range(mib):
            f.write(block)
    return {"written_mib": mib}


def _neighbor(ip):
    """Calls another worker's invoke endpoint directly, bypassing the gateway."""
    import urllib.request

    req = urllib.request.Request(
        f"http://{ip}:8080/2015-03-31/functions/function/invocations",
        data=b'{"forged": true}',
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return {"reached": True, "status": r.status}
    except Exception as e:  # refused or timed out: the fence held
        return {"reached": False, "error": type(e).__name__}


def _scan(host, ports, timeout):
    """Which TCP ports of `host` accept a connection (many attempts at once)."""
    import asyncio

    async def one(port, sem, found):
        async with sem:
            for _ in range(20):
                try:
                    _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                    found.append(port)
                    w.close()
                    return
                except OSError as e:
                    if e.errno not in (errno.EMFILE, errno.ENFILE, errno.EAGAIN):
                        return  # refused, unreachable
                    await asyncio.sleep(0.05)  # out of descriptors: try again
                except asyncio.TimeoutError:
                    return  # dropped by the fence

    async def run():
        # Well under the worker's 1024 descriptors.
        sem = asyncio.Semaphore(800)
        found = []
        await asyncio.gather(*(one(p, sem, found) for p in ports))
        return sorted(found)

    return {"open": asyncio.run(run())}


def probe(event, context):
    op = event.get("op")
    if op == "escape":
        return {
            "clone_newuser": _clone_newuser(),
            "io_uring_setup": _io_uring(),
            "unshare_user": _unshare_user(),
        }
    if op == "neighbor":
        return _neighbor(event["ip"])
    if op == "scan":
        ports = event.get("ports") or range(1, 65536)
        return _scan(event.get("host", "10.88.0.1"), ports, float(event.get("timeout", 0.5)))
    if op == "console":
        return _console(int(event["mib"]))
    if op == "fork":
        return _fork_bomb(int(event.get("seconds", 10)))
    if op == "hog":
        return _hog()
    if op == "tmpfs":
        return _tmpfs(int(event["mib"]))
    raise ValueError(f"unknown op {op!r}")


def bystander(event, context):
    return {"ok": True, "pid": os.getpid()}
