"""Drives the log store over HTTP with a real client (requests), asserting exact results.

Usage: client.py BASE_URL SCENARIO [ARGS...]
Each scenario raises (exit status 1) on the first mismatch, printing what differed.
"""

import gzip
import json
import sys
import threading
import time

import requests

BASE = sys.argv[1].rstrip("/")
T0 = "2024-05-01T00:00:0"  # + second digit


def q(query, **args):
    """Runs /select/logsql/query (POST form, like vlogscli), returning parsed JSON lines."""
    r = requests.post(f"{BASE}/select/logsql/query", data={"query": query, **args}, timeout=30)
    assert r.status_code == 200, (query, r.status_code, r.text)
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def msgs(query, **args):
    return [row["_msg"] for row in q(query, **args)]


def expect(query, want, sort=True, **args):
    got = msgs(query, **args)
    if sort:
        got = sorted(got)
        want = sorted(want)
    assert got == want, f"query {query!r} {args}: got {got}, want {want}"


def jsonl(records):
    return "\n".join(json.dumps(r) for r in records) + "\n"


R1 = "GET /orders 200 took 5ms"
R2 = "cannot open file /tmp/x.db: permission denied"
R3 = "GET /users 200 took 7ms"
R4 = "retrying payment: timeout"
R5 = "payment ok"
R6 = "Error: user not found"
R7 = "access GET /orders status=200"
R8 = "upstream error: connection refused"
R9 = "fresh heartbeat"


def ingest_all():
    # 1. gzip JSON lines, settings as query args.
    batch = [
        {"ts": T0 + "1Z", "app": "api", "host": "h1", "level": "info", "trace_id": "1-aaa-111",
         "request_id": "req-1", "function_name": "orders", "message": R1},
        {"ts": T0 + "2Z", "app": "api", "host": "h1", "level": "error", "trace_id": "1-aaa-111",
         "request_id": "req-1", "function_name": "orders", "message": R2},
        {"ts": T0 + "3Z", "app": "api", "host": "h2", "level": "info", "trace_id": "1-bbb-222",
         "request_id": "req-2", "function_name": "users", "message": R3},
        {"ts": T0 + "4Z", "app": "worker", "host": "h2", "level": "warn", "trace_id": "1-ccc-333",
         "request_id": "req-3", "function_name": "billing", "message": R4},
    ]
    r = requests.post(
        f"{BASE}/insert/jsonline",
        params={"_stream_fields": "app,host", "_time_field": "ts", "_msg_field": "message"},
        data=gzip.compress(jsonl(batch).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/stream+json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["ingested"] == 4, r.text

    # 2. Plain JSON lines, settings as VL-* headers; nested JSON; a record without time.
    batch = [
        {"time": T0 + "5Z", "app": "worker", "level": "info", "function_name": "billing",
         "request_id": "req-3", "trace_id": "1-ccc-333", "msg": R5, "http": {"status": 200}},
        {"time": "2024-05-01T02:00:06+02:00", "app": "api", "level": "error", "function_name": "users",
         "request_id": "req-4", "trace_id": "1-ddd-444", "msg": R6},
        {"app": "worker", "msg": R9},
    ]
    r = requests.post(
        f"{BASE}/insert/jsonline",
        data=jsonl(batch),
        headers={"VL-Stream-Fields": "app", "VL-Msg-Field": "msg", "VL-Time-Field": "time"},
        timeout=30,
    )
    assert r.status_code == 200, r.text

    # 3. Elasticsearch bulk, as Vector/Filebeat send it.
    body = ""
    for doc in [
        {"@timestamp": T0 + "7Z", "app": "gateway", "level": "info", "message": R7,
         "request_id": "req-5", "trace_id": "1-eee-555"},
        {"@timestamp": 1714521608000, "app": "gateway", "level": "error", "message": R8,
         "request_id": "req-6", "trace_id": "1-fff-666"},
    ]:
        body += json.dumps({"create": {"_index": "logs"}}) + "\n" + json.dumps(doc) + "\n"
    r = requests.post(
        f"{BASE}/insert/elasticsearch/_bulk",
        params={"_stream_fields": "app"},
        data=body,
        headers={"Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    js = r.json()
    assert js["errors"] is False, js
    assert [i["create"]["status"] for i in js["items"]] == [201, 201], js
    # Elasticsearch version probe that shippers make first.
    info = requests.get(f"{BASE}/insert/elasticsearch/", timeout=30)
    assert info.status_code == 200 and info.json()["version"]["number"], info.text


def scenario_ingest_and_query():
    ingest_all()
    # Full record shape: alphabetical fields, _time with nanoseconds, _stream and _stream_id.
    rows = q('"permission denied"')
    assert len(rows) == 1, rows
    row = rows[0]
    assert list(row.keys()) == sorted(row.keys()), row
    sid = row.pop("_stream_id")
    assert len(sid) == 48 and all(c in "0123456789abcdef" for c in sid), sid
    assert row == {
        "_msg": R2, "_stream": '{app="api",host="h1"}', "_time": "2024-05-01T00:00:02.000000000Z",
        "app": "api", "function_name": "orders", "host": "h1", "level": "error",
        "request_id": "req-1", "trace_id": "1-aaa-111",
    }, row
    assert q("http.status:200")[0]["http.status"] == "200"

    # Words, phrases, case sensitivity.
    expect("error", [R8])
    expect("Error", [R6])
    expect('"permission denied"', [R2])
    expect('"open file"', [R2])
    expect("ope", [])
    # Prefixes.
    expect("retry*", [R4])
    expect('"cannot op"*', [R2])
    expect("function_name:bill*", [R4, R5])
    # Field filters.
    expect("level:error", [R2, R6, R8])
    expect("level:=error", [R2, R6, R8])
    expect('level:"error"', [R2, R6, R8])
    expect('trace_id:="1-ccc-333"', [R4, R5])
    expect("trace_id:1-ccc-333", [R4, R5])
    expect("request_id:=req-1", [R1, R2])
    expect("function_name:=bill*", [R4, R5])
    expect("host:*", [R1, R2, R3, R4])
    expect("*", [R1, R2, R3, R4, R5, R6, R7, R8, R9])
    # Boolean logic.
    expect("request_id:req-1 level:error", [R2])
    expect("level:error AND app:api", [R2, R6])
    expect("level:warn OR app:gateway", [R4, R7, R8])
    expect("NOT app:api", [R4, R5, R7, R8, R9])
    expect("-app:api", [R4, R5, R7, R8, R9])
    expect("!app:api level:*", [R4, R5, R7, R8])
    expect("(level:error OR level:warn) -app:gateway", [R2, R4, R6])
    expect("app:(worker OR gateway) level:info", [R5, R7])
    # Time.
    expect("_time:[2024-05-01T00:00:02Z, 2024-05-01T00:00:04Z)", [R2, R3])
    expect("_time:[2024-05-01T00:00:02Z, 2024-05-01T00:00:04Z]", [R2, R3, R4])
    expect("_time:(2024-05-01T00:00:02Z, 2024-05-01T00:00:04Z]", [R3, R4])
    expect("_time:5m", [R9])
    expect("*", [R2, R3], start="2024-05-01T00:00:02Z", end="2024-05-01T00:00:04Z")
    # Streams.
    expect('_stream:{app="worker"}', [R4, R5, R9])
    expect('{app="api",host="h2"}', [R3])
    expect('_stream:{app!="api"}', [R4, R5, R7, R8, R9])
    expect('_stream:{app in("gateway","worker")} level:error', [R8])
    sid = q('"payment ok"')[0]["_stream_id"]
    expect(f"_stream_id:{sid}", [R5, R9])

    # limit arg: the newest N, newest first.
    expect("*", [R9, R8], sort=False, limit="2")
    expect("level:error", [R8, R6, R2], sort=False, limit="3")
    # Pipes.
    rows = q("* | sort by (_time desc) | limit 3 | fields _msg")
    assert rows == [{"_msg": R9}, {"_msg": R8}, {"_msg": R7}], rows
    rows = q("app:api | fields request_id, _time | sort by (request_id desc, _time)")
    assert [list(r.items()) for r in rows] == [
        [("request_id", "req-4"), ("_time", "2024-05-01T00:00:06.000000000Z")],
        [("request_id", "req-2"), ("_time", "2024-05-01T00:00:03.000000000Z")],
        [("request_id", "req-1"), ("_time", "2024-05-01T00:00:01.000000000Z")],
        [("request_id", "req-1"), ("_time", "2024-05-01T00:00:02.000000000Z")],
    ], rows
    rows = q("level:* | stats by (level) count() as n")
    assert rows == [{"level": "error", "n": "3"}, {"level": "info", "n": "4"}, {"level": "warn", "n": "1"}], rows
    rows = q("* | stats count()")
    assert rows == [{"count(*)": "9"}], rows
    rows = q("* | stats count() by (app) | sort by (app)")
    assert rows == [{"app": "api", "count(*)": "4"}, {"app": "gateway", "count(*)": "2"}, {"app": "worker", "count(*)": "3"}], rows
    rows = q("* | stats by (app) count(host) hosts, count_uniq(level) levels | filter -hosts:=0")
    assert rows == [{"app": "api", "hosts": "3", "levels": "2"}, {"app": "worker", "hosts": "1", "levels": "2"}], rows
    rows = q("* | limit 2")
    assert len(rows) == 2, rows
    rows = q("level:* | sort by (_time) limit 2 | fields _msg")
    assert rows == [{"_msg": R1}, {"_msg": R2}], rows
    rows = q("* | stats by (level) count() n | sort by (n desc, level) | limit 2")
    assert rows == [{"level": "info", "n": "4"}, {"level": "error", "n": "3"}], rows

    # hits
    r = requests.get(f"{BASE}/select/logsql/hits", params={
        "query": "*", "start": "2024-05-01T00:00:00Z", "end": "2024-05-01T00:00:10Z", "step": "5s"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"hits": [{
        "fields": {},
        "timestamps": ["2024-05-01T00:00:00.000000000Z", "2024-05-01T00:00:05.000000000Z"],
        "values": [4, 4], "total": 8}]}, r.text
    r = requests.post(f"{BASE}/select/logsql/hits", data=[
        ("query", "level:error OR level:warn"), ("start", "2024-05-01T00:00:00Z"), ("end", "2024-05-01T00:00:10Z"),
        ("step", "1h"), ("field", "level")], timeout=30)
    assert r.json() == {"hits": [
        {"fields": {"level": "error"}, "timestamps": ["2024-05-01T00:00:00.000000000Z"], "values": [3], "total": 3},
        {"fields": {"level": "warn"}, "timestamps": ["2024-05-01T00:00:00.000000000Z"], "values": [1], "total": 1},
    ]}, r.text

    # stats_query / stats_query_range (Prometheus data format, as vmalert and Grafana use)
    r = requests.get(f"{BASE}/select/logsql/stats_query", params={
        "query": "level:* | stats by (level) count() as n", "time": "2024-05-01T00:00:10Z"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "n", "level": "error"}, "value": [1714521610, "3"]},
        {"metric": {"__name__": "n", "level": "info"}, "value": [1714521610, "4"]},
        {"metric": {"__name__": "n", "level": "warn"}, "value": [1714521610, "1"]},
    ]}}, r.text
    r = requests.get(f"{BASE}/select/logsql/stats_query_range", params={
        "query": "level:error | stats count()", "start": "2024-05-01T00:00:00Z",
        "end": "2024-05-01T00:00:10Z", "step": "5s"}, timeout=30)
    assert r.json() == {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"__name__": "count(*)"}, "values": [[1714521600, "1"], [1714521605, "2"]]},
    ]}}, r.text
    r = requests.get(f"{BASE}/select/logsql/stats_query", params={"query": "error"}, timeout=30)
    assert r.status_code == 400 and "stats" in r.text, r.text

    # field_names / field_values / streams
    r = requests.get(f"{BASE}/select/logsql/field_names", params={"query": "app:api"}, timeout=30)
    assert r.json() == {"values": [
        {"value": v, "hits": 4 if v not in ("host",) else 3} for v in
        ["_msg", "_stream", "_stream_id", "_time", "app", "function_name", "host", "level", "request_id", "trace_id"]
    ]}, r.text
    r = requests.get(f"{BASE}/select/logsql/field_values", params={"query": "level:*", "field": "level"}, timeout=30)
    assert r.json() == {"values": [
        {"value": "info", "hits": 4}, {"value": "error", "hits": 3}, {"value": "warn", "hits": 1}]}, r.text
    r = requests.get(f"{BASE}/select/logsql/field_values", params={"query": "*", "field": "app", "limit": "1"}, timeout=30)
    assert r.json() == {"values": [{"value": "api", "hits": 4}]}, r.text
    r = requests.get(f"{BASE}/select/logsql/streams", params={"query": "*"}, timeout=30)
    # Most hits first, then by value.
    assert r.json() == {"values": [
        {"value": '{app="api",host="h1"}', "hits": 2},
        {"value": '{app="gateway"}', "hits": 2},
        {"value": '{app="worker"}', "hits": 2},
        {"value": '{app="api",host="h2"}', "hits": 1},
        {"value": '{app="api"}', "hits": 1},
        {"value": '{app="worker",host="h2"}', "hits": 1},
    ]}, r.text
    print("ok")


def scenario_bad_input():
    # A malformed line in the middle: the rest of the batch is kept, the bad line reported.
    body = jsonl([{"_msg": "good one", "k": "bad-input"}]) + "{not json\n" + jsonl([{"_msg": "good two", "k": "bad-input"}])
    r = requests.post(f"{BASE}/insert/jsonline", data=body, timeout=30)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["ingested"] == 2 and rep["rejected"] == 1 and rep["errors"][0]["line"] == 2, rep
    assert "JSON" in rep["errors"][0]["error"], rep
    expect("k:bad-input", ["good one", "good two"])
    # A huge line (1 MiB, over the 256 KiB cap) is skipped, not fatal.
    huge = json.dumps({"_msg": "x" * (1 << 20), "k": "huge"})
    body = jsonl([{"_msg": "before huge", "k": "huge"}]) + huge + "\n" + jsonl([{"_msg": "after huge", "k": "huge"}])
    r = requests.post(f"{BASE}/insert/jsonline", data=gzip.compress(body.encode()),
                      headers={"Content-Encoding": "gzip"}, timeout=30)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["ingested"] == 2 and rep["rejected"] == 1 and rep["errors"][0]["line"] == 2, rep
    assert "limit" in rep["errors"][0]["error"], rep
    expect("k:huge", ["before huge", "after huge"])
    # Only bad lines: 400 with the report.
    r = requests.post(f"{BASE}/insert/jsonline", data="[1,2]\nnope\n", timeout=30)
    assert r.status_code == 400 and r.json()["rejected"] == 2, r.text
    # A bad timestamp is a bad line.
    r = requests.post(f"{BASE}/insert/jsonline", data=jsonl([{"_msg": "t", "_time": "yesterday"}]), timeout=30)
    assert r.status_code == 400 and "timestamp" in r.json()["errors"][0]["error"], r.text
    # Corrupt gzip body.
    r = requests.post(f"{BASE}/insert/jsonline", data=b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"}, timeout=30)
    assert r.status_code == 400 and "gzip" in r.text, (r.status_code, r.text)
    # Unsupported encoding.
    r = requests.post(f"{BASE}/insert/jsonline", data=b"x", headers={"Content-Encoding": "br"}, timeout=30)
    assert r.status_code == 415, (r.status_code, r.text)
    # Body over the request cap (the test server caps at 2 MiB).
    r = requests.post(f"{BASE}/insert/jsonline", data=b"{}\n" * (1 << 20), timeout=30)
    assert r.status_code == 413, (r.status_code, r.text)
    # ES bulk with one bad document: errors=true, per-item status.
    body = '{"create":{}}\n{"message":"es ok","k":"esbad"}\n{"create":{}}\n{oops\n'
    r = requests.post(f"{BASE}/insert/elasticsearch/_bulk", data=body, timeout=30)
    js = r.json()
    assert r.status_code == 200 and js["errors"] is True, js
    assert [i["create"]["status"] for i in js["items"]] == [201, 400], js
    expect("k:esbad", ["es ok"])
    # Bad LogsQL: 400 with the position.
    for query, pos in [("error | sortt by (x)", 8), ("(a or b", 7), ('foo "bar', 4), ("_time:[yesterday, now)", 7),
                       ("a and", 5), ("x | limit many", 10), ("level:~\"err\"", 6)]:
        r = requests.get(f"{BASE}/select/logsql/query", params={"query": query}, timeout=30)
        assert r.status_code == 400, (query, r.status_code, r.text)
        assert f"position {pos}" in r.text, (query, r.text)
    r = requests.get(f"{BASE}/select/logsql/query", params={"query": "*", "start": "last tuesday"}, timeout=30)
    assert r.status_code == 400 and "start" in r.text, r.text
    r = requests.get(f"{BASE}/select/logsql/query", params={"query": "*", "limit": "-1"}, timeout=30)
    assert r.status_code == 400, r.text
    r = requests.get(f"{BASE}/select/logsql/tail", params={"query": "* | stats count()"}, timeout=30)
    assert r.status_code == 400, r.text
    # Still healthy.
    assert requests.get(f"{BASE}/health", timeout=30).text == "OK"
    print("ok")


def scenario_tail():
    requests.post(f"{BASE}/insert/jsonline", data=jsonl([{"_msg": "old one", "app": "tailme"}]), timeout=30)
    got = []
    first_line = threading.Event()
    ready = threading.Event()

    def follow():
        with requests.post(f"{BASE}/select/logsql/tail", data={"query": "app:tailme _time:10m", "start_offset": "1h"},
                           stream=True, timeout=60) as r:
            assert r.status_code == 200, r.text
            ready.set()
            for line in r.iter_lines():
                if line:
                    got.append((time.monotonic(), json.loads(line)))
                    first_line.set()
                    if len(got) >= 2:
                        return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert ready.wait(30), "tail did not answer"
    assert first_line.wait(30), "tail did not return history (start_offset)"
    assert got[0][1]["_msg"] == "old one", got
    time.sleep(0.2)
    sent = time.monotonic()
    r = requests.post(f"{BASE}/insert/jsonline",
                      data=jsonl([{"_msg": "other app", "app": "x"}, {"_msg": "live one", "app": "tailme"}]), timeout=30)
    assert r.status_code == 200, r.text
    t.join(30)
    assert len(got) == 2, f"tail did not deliver the new record: {got}"
    assert got[1][1]["_msg"] == "live one", got
    print(f"ok latency_ms={(got[1][0] - sent) * 1000:.1f}")


def scenario_fill():
    """Ingests N batches of ~8 KiB with increasing times; prints nothing on success."""
    n = int(sys.argv[3])
    for i in range(n):
        recs = [{"_msg": f"batch {i} rec {j} " + "y" * 700, "_time": f"2024-05-01T00:{i // 60:02d}:{i % 60:02d}Z",
                 "batch": str(i)} for j in range(10)]
        r = requests.post(f"{BASE}/insert/jsonline", data=jsonl(recs), timeout=30)
        assert r.status_code == 200, r.text
    print("ok")


def scenario_retention_check():
    """After scenario_fill with a small size cap: the oldest batches are gone, the newest kept."""
    n = int(sys.argv[3])
    deadline = time.monotonic() + 60
    while True:
        rows = q("* | stats by (batch) count() as n")
        present = sorted(int(r["batch"]) for r in rows)
        if present and present[0] > 0:
            break
        assert time.monotonic() < deadline, f"retention never dropped anything: {present}"
        time.sleep(0.2)
    assert present[-1] == n - 1, present
    # Oldest first: what is left is a contiguous run of the newest batches.
    assert present == list(range(present[0], n)), present
    assert all(int(r["n"]) == 10 or int(r["batch"]) == present[0] for r in rows), rows
    print(f"ok kept={len(present)} of {n}")


def scenario_age_retention():
    """Server with max_age=1h: a batch stamped two days ago is dropped, today's stays."""
    old = [{"_msg": f"old {i} " + "z" * 500, "k": "age"} for i in range(20)]
    for r in old:
        r["_time"] = "2024-01-01T00:00:00Z"
    r = requests.post(f"{BASE}/insert/jsonline", data=jsonl(old), timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(f"{BASE}/insert/jsonline", data=jsonl([{"_msg": "new", "k": "age"}]), timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while msgs("k:age") != ["new"]:
        assert time.monotonic() < deadline, f"old records still there: {len(msgs('k:age'))}"
        time.sleep(0.2)
    print("ok")


def scenario_crash_writer():
    """Sends batches of 100 records until the server goes away; prints ACK <i> per 200."""
    i = 0
    while True:
        recs = [{"_msg": f"crash batch {i} rec {j}", "batch": str(i), "seq": str(j)} for j in range(100)]
        try:
            r = requests.post(f"{BASE}/insert/jsonline", data=gzip.compress(jsonl(recs).encode()),
                              headers={"Content-Encoding": "gzip"}, timeout=30)
        except requests.RequestException:
            break
        if r.status_code != 200:
            break
        print(f"ACK {i}", flush=True)
        i += 1
    print("DONE", flush=True)


def scenario_crash_check():
    acked = [int(x) for x in sys.argv[3].split(",") if x]
    rows = q("* | stats by (batch) count() as n")
    counts = {int(r["batch"]): int(r["n"]) for r in rows}
    for b in acked:
        assert counts.get(b) == 100, f"acknowledged batch {b} has {counts.get(b)} records"
    partial = {b: n for b, n in counts.items() if n != 100}
    assert not partial, f"partially stored batches: {partial}"
    # Writes work after the restart.
    r = requests.post(f"{BASE}/insert/jsonline", data=jsonl([{"_msg": "after restart"}]), timeout=30)
    assert r.status_code == 200, r.text
    expect('"after restart"', ["after restart"])
    print(f"ok acked={len(acked)} stored={len(counts)}")


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[2]]()
