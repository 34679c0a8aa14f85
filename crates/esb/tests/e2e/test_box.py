"""End-to-end tests of a running box (`esb up` serving template.yaml of this directory).

Driven only through real clients: requests, boto3, the AWS CLI and curl (subprocesses),
and the `esb` binary itself. Configured only by the environment (see README.md):

  E2E_URL      https://localhost:PORT (the gateway)      E2E_CA    the box's CA file
  E2E_API_KEY, E2E_USER, E2E_PASS                          (auth endpoint)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION     (the box's credential pair)
  E2E_S3, E2E_DDB, E2E_LOGS   http://127.0.0.1:PORT of S3, DynamoDB and the log store
  E2E_ESB      the esb binary                              E2E_STATE the box's state dir

A missing variable fails the whole run with its name; nothing is skipped.
"""

import base64
import concurrent.futures
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid

import boto3
import pytest
import requests
from botocore.config import Config

REQUIRED = [
    "E2E_URL",
    "E2E_CA",
    "E2E_API_KEY",
    "E2E_USER",
    "E2E_PASS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "E2E_S3",
    "E2E_DDB",
    "E2E_LOGS",
    "E2E_ESB",
    "E2E_STATE",
]

BUCKET = "e2e-bucket"
TABLE = "e2e-table"
# Generous bounds: they only keep a broken box from hanging the run (cold starts on a
# loaded 2-core CI machine can take seconds); nothing asserts on timing.
HTTP_TIMEOUT = 120
POLL_DEADLINE = 120
AUTH_PATH = "/user/auth/ver1.0"


def _env():
    missing = [k for k in REQUIRED if not os.environ.get(k)]
    if missing:
        pytest.fail("missing environment for the e2e suite: " + ", ".join(missing), pytrace=False)
    return {k: os.environ[k] for k in REQUIRED}


E = None


@pytest.fixture(scope="session", autouse=True)
def env():
    global E
    E = _env()
    return E


def url(path):
    return E["E2E_URL"].rstrip("/") + path


@pytest.fixture(scope="session")
def http():
    s = requests.Session()
    s.verify = E["E2E_CA"]
    # Otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment would replace
    # `verify` (requests' precedence), and proxy variables would apply to loopback.
    s.trust_env = False
    return s


@pytest.fixture(scope="session")
def token(http):
    r = http.post(
        url(AUTH_PATH),
        headers={"x-api-key": E["E2E_API_KEY"]},
        json={"AuthParameters": {"USERNAME": E["E2E_USER"], "PASSWORD": E["E2E_PASS"]}},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    result = r.json()["AuthenticationResult"]
    return result["IdToken"]


def bearer(token):
    return {"Authorization": "Bearer " + token}


def client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=E["AWS_REGION"],
        aws_access_key_id=E["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=E["AWS_SECRET_ACCESS_KEY"],
        verify=E["E2E_CA"] if endpoint.startswith("https") else None,
        # No retries: a retried 5xx would hide what the box answered (and feed breakers).
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            read_timeout=HTTP_TIMEOUT,
            connect_timeout=30,
        ),
    )


@pytest.fixture(scope="session")
def lam():
    return client("lambda", E["E2E_URL"])


@pytest.fixture(scope="session")
def s3():
    return client("s3", E["E2E_S3"])


@pytest.fixture(scope="session")
def ddb():
    return client("dynamodb", E["E2E_DDB"])


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory):
    """Environment for the AWS CLI: the box's pair, no user config files."""
    d = tmp_path_factory.mktemp("awscfg")
    env = dict(os.environ)
    env.update(
        AWS_DEFAULT_REGION=E["AWS_REGION"],
        AWS_CONFIG_FILE=str(d / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(d / "credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )
    return env


def tool(name):
    """A client program: next to this Python (the venv's `aws`), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.access(here, os.X_OK) else shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` not found next to {sys.executable} nor on PATH", pytrace=False)
    return found


def run(argv, env=None, timeout=HTTP_TIMEOUT, check=True):
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(
            f"{argv!r} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}",
            pytrace=False,
        )
    return p


def aws(aws_env, *args):
    return run([tool("aws"), *args], env=aws_env)


def esb(*args, check=True, timeout=HTTP_TIMEOUT):
    return run([E["E2E_ESB"], "--state-dir", E["E2E_STATE"], *args], check=check, timeout=timeout)


def status():
    return json.loads(esb("status", "--json").stdout)


def function_status(name):
    for f in status()["functions"]:
        if f["name"] == name:
            return f
    pytest.fail(f"`esb status --json` lists no function named {name}", pytrace=False)


def poll(what, fn, deadline=POLL_DEADLINE, every=1.0):
    """Calls fn until it returns a truthy value; fails with `what` after the deadline."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"gave up after {deadline} s waiting for {what} (last: {last!r})", pytrace=False)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_trace_root():
    return f"1-{int(time.time()):08x}-{secrets.token_hex(12)}"


def echo_answer(r):
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


# --- gateway basics -----------------------------------------------------------------------


def test_health(http):
    r = http.get(url("/health"), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    assert r.json() == {"status": "healthy"}


def test_health_with_curl():
    p = run([tool("curl"), "-sS", "--fail", "--cacert", E["E2E_CA"], url("/health")])
    assert json.loads(p.stdout) == {"status": "healthy"}


def test_auth_gives_a_bearer_jwt(http):
    r = http.post(
        url(AUTH_PATH),
        headers={"x-api-key": E["E2E_API_KEY"]},
        json={"AuthParameters": {"USERNAME": E["E2E_USER"], "PASSWORD": E["E2E_PASS"]}},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    result = r.json()["AuthenticationResult"]
    assert result["TokenType"] == "Bearer"
    header, claims, sig = result["IdToken"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert claims["cognito:username"] == E["E2E_USER"]
    assert claims["exp"] > claims["iat"]


def test_auth_refuses_bad_api_key_and_bad_password(http):
    body = {"AuthParameters": {"USERNAME": E["E2E_USER"], "PASSWORD": E["E2E_PASS"]}}
    r = http.post(url(AUTH_PATH), headers={"x-api-key": "wrong"}, json=body, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401
    assert "PADMA_USER_AUTHORIZED" not in r.headers
    body["AuthParameters"]["PASSWORD"] = E["E2E_PASS"] + "-wrong"
    r = http.post(
        url(AUTH_PATH), headers={"x-api-key": E["E2E_API_KEY"]}, json=body, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 401
    assert r.headers.get("PADMA_USER_AUTHORIZED") == "true"


def test_route_without_token_is_401(http):
    r = http.get(url("/echo"), timeout=HTTP_TIMEOUT)
    assert r.status_code == 401


def test_route_with_bad_token_is_401(http, token):
    for bad in ["garbage", token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")]:
        r = http.get(url("/echo"), headers=bearer(bad), timeout=HTTP_TIMEOUT)
        assert r.status_code == 401, (bad, r.status_code, r.text)


def test_unknown_route_is_404(http, token):
    r = http.get(url("/no/such/route"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 404


def test_refused_uploads_keep_the_connection_usable():
    """A body sent to a route that refuses it before reading it (401 without a token, 404)
    gets its answer, and the same keep-alive connection serves the next request: 4 clients
    in parallel, 200 KB bodies, half of them with `Expect: 100-continue`."""
    problems = []

    def client():
        s = requests.Session()
        s.verify = E["E2E_CA"]
        s.trust_env = False
        for i in range(40):
            try:
                headers = {"Expect": "100-continue"} if i % 2 else {}
                r = s.post(url("/echo"), data=b"x" * 200_000, headers=headers, timeout=HTTP_TIMEOUT)
                if r.status_code != 401:
                    problems.append(("no token", r.status_code))
                r = s.post(url("/no/such/route"), data=b"y" * 200_000, timeout=HTTP_TIMEOUT)
                if r.status_code != 404:
                    problems.append(("no route", r.status_code))
                r = s.get(url("/public"), timeout=HTTP_TIMEOUT)
                if r.status_code != 200:
                    problems.append(("next request", r.status_code))
            except Exception as e:  # a reset or closed connection
                problems.append(repr(e)[:200])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == [], problems[:5]


def test_public_route_needs_no_token(http):
    r = http.get(url("/public"), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["public"] is True


# --- the echo route -----------------------------------------------------------------------


def test_echo_get_round_trips_the_query(http, token):
    # Percent-encoded as API Gateway decodes it (a literal `+` stays `+`, as on AWS).
    r = http.get(url("/echo?a=1&b=two%20words%2Fs&c=%E4%B8%96"), headers=bearer(token),
                 timeout=HTTP_TIMEOUT)
    a = echo_answer(r)
    assert a["method"] == "GET"
    assert a["path"] == "/echo"
    assert a["query"] == {"a": "1", "b": "two words/s", "c": "世"}
    assert a["username"] == E["E2E_USER"]
    assert a["version"]
    assert a["worker"]
    assert r.headers.get("x-amzn-RequestId")
    assert r.headers.get("X-Amzn-Trace-Id", "").startswith("Root=1-")


def test_echo_post_round_trips_the_body(http, token):
    body = json.dumps({"text": "héllo, 世界", "n": [1, 2, 3]}, ensure_ascii=False)
    r = http.post(
        url("/echo"),
        params={"x": "y"},
        data=body.encode(),
        headers={**bearer(token), "content-type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    a = echo_answer(r)
    assert a["method"] == "POST"
    assert a["body"] == body
    assert a["isBase64Encoded"] is False
    assert a["query"] == {"x": "y"}


def test_echo_with_curl(token):
    p = run([tool("curl"), "-sS", "--fail", "--cacert", E["E2E_CA"],
             "-H", "Authorization: Bearer " + token, url("/echo?via=curl")])
    assert json.loads(p.stdout)["query"] == {"via": "curl"}


# --- chain invoke and traces --------------------------------------------------------------


def logs_by_trace(root):
    r = requests.post(
        E["E2E_LOGS"].rstrip("/") + "/select/logsql/query",
        data={"query": f'trace_id:"{root}"'},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def recorder_lines(records):
    """The recorder's own "recorder: got" lines among a trace's records (a function's
    lines may arrive in more than one batch: wait for this one, not just any record)."""
    return [
        rec for rec in records
        if rec.get("function_name") == "recorder" and "recorder: got" in rec.get("_msg", "")
    ]


def test_chain_sync_and_event_share_one_trace_root(http, token):
    root = new_trace_root()
    r = http.post(
        url("/chain"),
        json={"note": "e2e chain"},
        headers={**bearer(token), "X-Amzn-Trace-Id": f"Root={root};Sampled=1"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert root in r.headers.get("X-Amzn-Trace-Id", "")
    a = r.json()
    assert root in a["trace_id"]
    assert a["sync_status"] == 200 and a["sync_function_error"] is None, a
    echoed = json.loads(a["sync_payload"]["body"])
    assert echoed["payload"] == {"from": "chain", "note": "e2e chain"}
    assert root in echoed["trace_id"], "the sync leg did not carry the trace root"
    assert a["event_status"] == 202

    def found():
        records = logs_by_trace(root)
        names = {rec.get("function_name") for rec in records}
        recorded = recorder_lines(records)
        return recorded if {"chain", "echo", "recorder"} <= names and recorded else None

    recorded = poll(f"log records of chain, echo and recorder with trace {root}", found)
    assert "e2e chain" in recorded[0]["_msg"]


# --- Lambda Invoke API --------------------------------------------------------------------


def test_invoke_api_boto3_request_response(lam):
    r = lam.invoke(FunctionName="echo", Payload=json.dumps({"x": 1}).encode())
    assert r["StatusCode"] == 200
    assert "FunctionError" not in r
    answer = json.loads(r["Payload"].read())
    assert json.loads(answer["body"])["payload"] == {"x": 1}


def test_invoke_api_boto3_event_is_202(lam):
    r = lam.invoke(FunctionName="recorder", InvocationType="Event",
                   Payload=json.dumps({"async": True}).encode())
    assert r["StatusCode"] == 202


def test_invoke_api_unknown_function(lam):
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="no-such-function", Payload=b"{}")


def test_invoke_api_aws_cli(aws_env, tmp_path):
    out = tmp_path / "out.json"
    payload = tmp_path / "payload.json"
    payload.write_text('{"x": 2}')
    # fileb:// reads the payload as bytes in AWS CLI v1 and v2 alike.
    p = aws(aws_env, "lambda", "invoke", "--endpoint-url", E["E2E_URL"],
            "--ca-bundle", E["E2E_CA"], "--region", E["AWS_REGION"],
            "--function-name", "echo", "--payload", f"fileb://{payload}", str(out))
    meta = json.loads(p.stdout)
    assert meta["StatusCode"] == 200
    assert "FunctionError" not in meta
    answer = json.loads(out.read_text())
    assert json.loads(answer["body"])["payload"] == {"x": 2}


def test_esb_invoke_prints_the_answer():
    p = esb("invoke", "echo", "--payload", '{"x":1}')
    answer = json.loads(p.stdout)
    assert json.loads(answer["body"])["payload"] == {"x": 1}


# --- S3 -----------------------------------------------------------------------------------


def storage(http, token, **req):
    r = http.post(url("/storage"), json=req, headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def test_s3_from_the_host_with_boto3(s3):
    prefix = unique("host")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/a.txt", Body=b"alpha")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/b.txt", Body=b"beta")
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}/a.txt")["Body"].read() == b"alpha"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}/a.txt", f"{prefix}/b.txt"]
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/a.txt")
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/b.txt")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["KeyCount"] == 0


def test_s3_from_the_host_with_the_aws_cli(aws_env, tmp_path):
    prefix = unique("cli")
    src = tmp_path / "in.txt"
    src.write_text("from the aws cli\n")
    common = ["--endpoint-url", E["E2E_S3"], "--region", E["AWS_REGION"]]
    aws(aws_env, "s3", "cp", str(src), f"s3://{BUCKET}/{prefix}/in.txt", *common)
    ls = aws(aws_env, "s3", "ls", f"s3://{BUCKET}/{prefix}/", *common).stdout
    assert "in.txt" in ls
    dst = tmp_path / "back.txt"
    aws(aws_env, "s3", "cp", f"s3://{BUCKET}/{prefix}/in.txt", str(dst), *common)
    assert dst.read_text() == "from the aws cli\n"
    aws(aws_env, "s3", "rm", f"s3://{BUCKET}/{prefix}/in.txt", *common)
    # (`aws s3 ls` of an empty prefix exits 1; s3api says it plainly.)
    listed = aws(aws_env, "s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", prefix,
                 *common).stdout
    assert not listed.strip() or "Contents" not in json.loads(listed), listed


def test_s3_from_a_function_and_the_host_see_each_other(http, token, s3):
    prefix = unique("fn")
    # The function writes, reads, lists; the host sees the object.
    a = storage(http, token, op="s3", key=f"{prefix}/from-fn.txt", put="written by a function")
    assert a["get"] == "written by a function"
    assert a["list"] == [f"{prefix}/from-fn.txt"]
    got = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/from-fn.txt")["Body"].read()
    assert got == b"written by a function"
    # The host writes; the function reads it and lists both.
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/from-host.txt", Body=b"written by the host")
    a = storage(http, token, op="s3", key=f"{prefix}/from-host.txt", prefix=prefix + "/")
    assert a["get"] == "written by the host"
    assert a["list"] == [f"{prefix}/from-fn.txt", f"{prefix}/from-host.txt"]
    # The function deletes both; the host sees nothing left.
    for name in ["from-fn.txt", "from-host.txt"]:
        a = storage(http, token, op="s3", key=f"{prefix}/{name}", get=False, delete=True)
        assert a["after_delete"] == []
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["KeyCount"] == 0


# --- DynamoDB -----------------------------------------------------------------------------


def test_dynamodb_from_the_host_and_a_function_see_each_other(http, token, ddb):
    pk = unique("pk")
    ddb.put_item(TableName=TABLE,
                 Item={"pk": {"S": pk}, "sk": {"S": "host"}, "value": {"S": "from host"}})
    got = ddb.get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": "host"}})
    assert got["Item"]["value"]["S"] == "from host"

    # The function gets the host's item, puts its own and queries both.
    a = storage(http, token, op="ddb", pk=pk, sk="host")
    assert a["get"] == "from host"
    a = storage(http, token, op="ddb", pk=pk, sk="function", put="from function")
    assert a["get"] == "from function"
    assert a["query"] == [
        {"sk": "function", "value": "from function"},
        {"sk": "host", "value": "from host"},
    ]

    # The host sees the function's item, by key and by query.
    got = ddb.get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": "function"}})
    assert got["Item"]["value"]["S"] == "from function"
    q = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk",
                  ExpressionAttributeValues={":pk": {"S": pk}})
    assert [i["sk"]["S"] for i in q["Items"]] == ["function", "host"]


def test_the_template_provisioned_the_table_and_bucket(s3, ddb):
    table = ddb.describe_table(TableName=TABLE)["Table"]
    keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
    assert keys == {"pk": "HASH", "sk": "RANGE"}
    s3.head_bucket(Bucket=BUCKET)


# --- pools, scaling, breaker, timeouts ----------------------------------------------------


def test_reserved_concurrency_is_respected(token):
    def call(_):
        # One session (connection) per thread: six requests really in flight at once.
        with requests.Session() as s:
            s.verify, s.trust_env = E["E2E_CA"], False
            r = s.get(url("/limited"), headers=bearer(token), timeout=HTTP_TIMEOUT)
        return r.status_code, (r.json() if r.status_code == 200 else r.text)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(call, range(6)))
    assert all(code == 200 for code, _ in results), results
    instances = {body["instance"] for _, body in results}
    workers = {body["worker"] for _, body in results}
    assert len(instances) <= 2, results
    assert len(workers) <= 2, results
    assert function_status("limited")["capacity"] == 2


def test_scale_to_zero_and_back(http, token):
    echo_answer(http.get(url("/echo"), headers=bearer(token), timeout=HTTP_TIMEOUT))

    def idle():
        return function_status("echo")["workers"] == []

    poll("echo to scale to zero (its workers list in `esb status --json` empty)", idle)
    a = echo_answer(http.get(url("/echo"), params={"back": "1"}, headers=bearer(token),
                             timeout=HTTP_TIMEOUT))
    assert a["query"] == {"back": "1"}


def test_breaker_opens_on_a_failing_function(http, token):
    for i in range(3):
        r = http.get(url("/failing"), headers=bearer(token), timeout=HTTP_TIMEOUT)
        assert r.status_code == 502, (i, r.status_code, r.text)
    r = http.get(url("/failing"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 503, (r.status_code, r.text)
    assert function_status("failing")["breaker"] == "open"


def test_function_timeout_route_504_and_invoke_api_sandbox_timedout(http, token, lam):
    r = http.get(url("/slow"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert r.status_code == 504, (r.status_code, r.text)
    r = lam.invoke(FunctionName="slow", Payload=b"{}")
    assert r["StatusCode"] == 200
    assert r["FunctionError"] == "Unhandled"
    payload = r["Payload"].read().decode()
    assert "Sandbox.Timedout" in payload, payload


# --- esb status ---------------------------------------------------------------------------


def test_status_json_shape():
    s = status()
    assert s["components"], s
    for c in s["components"]:
        assert {"name", "state", "pid", "restarts"} <= c.keys(), c
    by_name = {f["name"]: f for f in s["functions"]}
    expected = {"echo", "public", "chain", "recorder", "storage", "limited", "failing", "slow"}
    assert expected <= by_name.keys(), sorted(by_name)
    for f in s["functions"]:
        assert {"name", "routes", "capacity", "pool", "breaker", "workers"} <= f.keys(), f
        assert {"idle", "busy", "waiting"} <= f["pool"].keys(), f
        for w in f["workers"]:
            assert {"id", "node", "state"} <= w.keys(), w
    assert "/echo" in json.dumps(by_name["echo"]["routes"])
    assert by_name["recorder"]["routes"] in ([], None, {})
