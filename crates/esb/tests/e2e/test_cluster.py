"""End-to-end checks of a box whose workers run on compute nodes (crates/esb/tests/cluster.rs
runs this file once two nodes have joined). Same environment as test_box.py.

The gateway's records in the log store name the node of the worker that served each
invocation (`node`, `worker`): that is how a chain is seen to cross nodes.
"""

import json

from test_box import (  # noqa: F401  (fixtures are used by name)
    HTTP_TIMEOUT,
    bearer,
    env,
    http,
    logs_by_trace,
    new_trace_root,
    poll,
    recorder_lines,
    status,
    token,
    url,
)


def gateway_records(root):
    """The gateway's records of one trace that name a worker's node (the access record of
    a synchronous call, the record of an Event call's run), by function."""
    by_function = {}
    for rec in logs_by_trace(root):
        if rec.get("kind") in ("access", "async") and rec.get("function") and rec.get("node"):
            by_function.setdefault(rec["function"], []).append(rec)
    return by_function


def test_chain_across_two_nodes_keeps_one_trace_root(http, token):
    """chain (sync) -> echo and (Event) -> recorder, with chain and echo on two nodes."""
    root = new_trace_root()
    r = http.post(
        url("/chain"),
        json={"note": "across nodes"},
        headers={**bearer(token), "X-Amzn-Trace-Id": f"Root={root};Sampled=1"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    a = r.json()
    assert root in a["trace_id"]
    assert a["sync_status"] == 200 and a["sync_function_error"] is None, a
    echoed = json.loads(a["sync_payload"]["body"])
    assert echoed["payload"] == {"from": "chain", "note": "across nodes"}
    assert root in echoed["trace_id"], "the sync leg did not carry the trace root"
    assert a["event_status"] == 202

    seen = {}

    def found():
        records = logs_by_trace(root)
        recs = gateway_records(root)
        recorded = recorder_lines(records)
        seen["records"] = [
            {k: rec.get(k) for k in ("_msg", "kind", "function", "function_name", "node", "status")}
            for rec in records
        ]
        have = {"chain", "echo", "recorder"} <= set(recs)
        return recs if have and recorded else None

    try:
        recs = poll(f"gateway and recorder records with trace {root}", found)
    except BaseException:
        print("records of the trace:", json.dumps(seen.get("records"), indent=1))
        print("status:", json.dumps(status(), indent=1))
        raise
    nodes = {f: {rec["node"] for rec in recs[f]} for f in ("chain", "echo", "recorder")}
    for f, on in nodes.items():
        assert len(on) == 1, (f, recs[f])
    assert nodes["chain"] != nodes["echo"], f"chain and echo ran on one node: {nodes}"
