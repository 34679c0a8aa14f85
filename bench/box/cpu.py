#!/usr/bin/env python3
"""CPU time of a running esb box's processes, by process name, for a per-request breakdown.

Usage: cpu.py STATE_DIR                  -> JSON {name: clock ticks} of every box process now
       cpu.py STATE_DIR BEFORE.json      -> JSON {name: ticks since BEFORE} (processes that
                                            exited meanwhile are not counted)

The box's processes are found as in mem.py (the box process, its descendants, and every
process naming STATE on its command line: containerd shims, hence the workers under them).
Worker processes are named after their executable (containerd-shim-runc-v2, esb-supervisor,
python3); esb components after their subcommand (gateway, logstore, ...).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mem import box_processes, name_of  # noqa: E402


def ticks(pid):
    stat = open(f"/proc/{pid}/stat").read()
    f = stat[stat.rindex(")") + 2 :].split()
    return int(f[11]) + int(f[12])  # utime + stime, all threads


def snapshot(state):
    box, pids = box_processes(state)
    out = {}
    for pid in pids:
        try:
            out[str(pid)] = {"name": name_of(pid, box), "ticks": ticks(pid)}
        except (OSError, ValueError, IndexError):
            pass
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: cpu.py STATE_DIR [BEFORE.json]")
    state = os.path.abspath(sys.argv[1])
    now = snapshot(state)
    if len(sys.argv) == 2:
        print(json.dumps(now))
        return
    before = json.load(open(sys.argv[2]))
    by_name = {}
    for pid, p in now.items():
        start = before.get(pid, {}).get("ticks", 0)
        by_name[p["name"]] = by_name.get(p["name"], 0) + p["ticks"] - start
    print(json.dumps({"clk_tck": os.sysconf("SC_CLK_TCK"), "ticks": by_name}))


if __name__ == "__main__":
    main()
