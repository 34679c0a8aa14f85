#!/usr/bin/env python3
"""Memory of a running esb box: every process of the box, from /proc.

Usage: mem.py STATE_DIR [LABEL]   (root: /proc/PID/pagemap gives frame numbers only to root)

The box's processes are the box process (STATE/run/box.pid) and all its descendants
(containerd, the esb components), plus any process whose command line names STATE (e.g.
containerd shims, which leave the tree). Per process: RSS, PSS and USS (private pages) from
/proc/PID/smaps_rollup. Totals: summed RSS (counts pages shared between the box's processes
once per process), summed PSS (splits shared pages among every sharer on the machine, also
processes outside the box), and the distinct resident pages of the whole box (the union of
physical frames mapped by any of its processes, from /proc/PID/pagemap): the memory the box
holds, with shared pages counted once. Prints a table on stderr and one JSON line on stdout.
"""
import json
import os
import re
import struct
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def ppid_of(pid):
    stat = read(f"/proc/{pid}/stat")
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def cmdline(pid):
    return read(f"/proc/{pid}/cmdline", "rb").replace(b"\0", b" ").decode(errors="replace").strip()


def box_processes(state):
    box = int(read(os.path.join(state, "run", "box.pid")).split()[0])
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    children = {}
    named = set()
    for p in pids:
        if p == os.getpid():
            continue
        try:
            children.setdefault(ppid_of(p), []).append(p)
            if state in cmdline(p):
                named.add(p)
        except OSError:
            pass
    found, todo = set(), [box] + sorted(named)
    while todo:
        p = todo.pop()
        if p in found:
            continue
        found.add(p)
        todo.extend(children.get(p, []))
    return box, sorted(found)


def name_of(pid, box):
    cmd = cmdline(pid)
    if pid == box:
        return "box (esb up)"
    words = cmd.split()
    exe = os.path.basename(words[0]) if words else "?"
    if exe == "esb":
        # esb --state-dir=DIR COMPONENT ...
        for w in words[1:]:
            if not w.startswith("-"):
                return w
    return exe


def rollup(pid):
    out = {}
    for line in read(f"/proc/{pid}/smaps_rollup").splitlines()[1:]:
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])  # kB
    return out


def frames(pid, by_file):
    """Physical frames of the resident pages of `pid`, split into file-backed and anonymous;
    adds each file's frames and resident KiB to `by_file` (path -> [frames, rss_kib, pids])."""
    file_f, anon_f = set(), set()
    mappings = []  # (start, end, path, rss_kib)
    for line in read(f"/proc/{pid}/smaps").splitlines():
        if HEADER.match(line):
            head = line.split()
            start, end = (int(x, 16) for x in head[0].split("-"))
            mappings.append([start, end, head[5] if len(head) > 5 else "", 0])
        elif line.startswith("Rss:"):
            mappings[-1][3] = int(line.split()[1])
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for start, end, path, rss in mappings:
            if rss == 0:
                continue
            pm.seek(start // PAGE * 8)
            data = pm.read((end - start) // PAGE * 8)
            is_file = path.startswith("/") and not path.startswith("/dev/")
            target = file_f if is_file else anon_f
            mine = set()
            for (e,) in struct.iter_unpack("<Q", data):
                if e >> 63 & 1:  # present
                    pfn = e & ((1 << 55) - 1)
                    if pfn:
                        mine.add(pfn)
            target |= mine
            if is_file:
                entry = by_file.setdefault(path, [set(), 0, set()])
                entry[0] |= mine
                entry[1] += rss
                entry[2].add(pid)
    return file_f, anon_f


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: mem.py STATE_DIR [LABEL]")
    state = os.path.abspath(sys.argv[1])
    label = sys.argv[2] if len(sys.argv) > 2 else "idle"
    box, pids = box_processes(state)
    rows, all_file, all_anon, by_file = [], set(), set(), {}
    for pid in pids:
        try:
            r = rollup(pid)
            f, a = frames(pid, by_file)
        except OSError:
            continue  # exited meanwhile
        all_file |= f
        all_anon |= a
        rows.append(
            {
                "pid": pid,
                "name": name_of(pid, box),
                "rss_kib": r.get("Rss", 0),
                "pss_kib": r.get("Pss", 0),
                "uss_kib": r.get("Private_Clean", 0) + r.get("Private_Dirty", 0),
                "anon_kib": r.get("Anonymous", 0),
            }
        )
    if not all_file and not all_anon:
        sys.exit("mem.py: /proc/PID/pagemap gave no frame numbers (run as root)")
    order = ["box (esb up)", "containerd", "s3", "dynamodb", "logstore", "proxy", "agent", "gateway"]
    rows.sort(key=lambda r: (order.index(r["name"]) if r["name"] in order else 99, r["pid"]))
    tot = {k: sum(r[k] for r in rows) for k in ("rss_kib", "pss_kib", "uss_kib", "anon_kib")}
    distinct = {
        "distinct_kib": (len(all_file | all_anon)) * PAGE // 1024,
        "distinct_file_kib": len(all_file) * PAGE // 1024,
        "distinct_anon_kib": len(all_anon - all_file) * PAGE // 1024,
    }
    mib = lambda k: k / 1024
    print(f"memory of the box ({label}): {len(rows)} processes", file=sys.stderr)
    print(f"  {'process':<14} {'pid':>7} {'RSS MiB':>9} {'PSS MiB':>9} {'USS MiB':>9} {'anon MiB':>9} {'file MiB':>9}", file=sys.stderr)
    for r in rows:
        print(
            f"  {r['name']:<14} {r['pid']:>7} {mib(r['rss_kib']):>9.1f} {mib(r['pss_kib']):>9.1f} "
            f"{mib(r['uss_kib']):>9.1f} {mib(r['anon_kib']):>9.1f} {mib(r['rss_kib'] - r['anon_kib']):>9.1f}",
            file=sys.stderr,
        )
    print(
        f"  {'total':<14} {'':>7} {mib(tot['rss_kib']):>9.1f} {mib(tot['pss_kib']):>9.1f} "
        f"{mib(tot['uss_kib']):>9.1f} {mib(tot['anon_kib']):>9.1f} {mib(tot['rss_kib'] - tot['anon_kib']):>9.1f}",
        file=sys.stderr,
    )
    print(
        f"  distinct resident pages of the box: {mib(distinct['distinct_kib']):.1f} MiB "
        f"(file-backed {mib(distinct['distinct_file_kib']):.1f}, anonymous {mib(distinct['distinct_anon_kib']):.1f})",
        file=sys.stderr,
    )
    files = sorted(
        (
            {
                "path": path,
                "processes": len(e[2]),
                "summed_rss_kib": e[1],
                "distinct_kib": len(e[0]) * PAGE // 1024,
            }
            for path, e in by_file.items()
        ),
        key=lambda f: -f["summed_rss_kib"],
    )[:5]
    print("  files mapped by the most resident pages (summed over processes vs distinct):", file=sys.stderr)
    for f in files:
        print(
            f"    {f['path']}: {f['processes']} processes, summed RSS {mib(f['summed_rss_kib']):.1f} MiB, "
            f"distinct {mib(f['distinct_kib']):.1f} MiB",
            file=sys.stderr,
        )
    print(json.dumps({"label": label, "processes": rows, "total": tot, **distinct, "files": files}))


if __name__ == "__main__":
    main()
