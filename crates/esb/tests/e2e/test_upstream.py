"""Upstream ESB's contracts against `esb up` serving upstream/template.yaml with its .env
(crates/esb/tests/upstream.rs). Real clients only: requests, boto3 (lambda, logs), Debian's
AWS CLI v2 (`aws logs tail`) and the log store's LogsQL API.

Environment as test_box.py's (README.md), E2E_API_KEY being the .env's X_API_KEY.
"""

import base64
import json
import os
import re
import subprocess
import time
import uuid

import boto3
import pytest
import requests

for name in ["E2E_URL", "E2E_CA", "E2E_API_KEY", "E2E_USER", "E2E_PASS", "E2E_LOGS",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]:
    if not os.environ.get(name):
        raise SystemExit(f"{name} is not set")

URL = os.environ["E2E_URL"]
CA = os.environ["E2E_CA"]
LOGS = os.environ["E2E_LOGS"]
DEADLINE = 120


def login(path, api_key=None, password=None):
    return requests.post(
        URL + path,
        headers={"x-api-key": api_key or os.environ["E2E_API_KEY"]},
        json={"AuthParameters": {"USERNAME": os.environ["E2E_USER"],
                                 "PASSWORD": password or os.environ["E2E_PASS"]}},
        verify=CA, timeout=30)


def claims_of(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def token():
    r = login("/user/auth/v1")
    assert r.status_code == 200, r.text
    return r.json()["AuthenticationResult"]["IdToken"]


def logsql(query, limit=1000):
    r = requests.post(LOGS + "/select/logsql/query", data={"query": query, "limit": str(limit)},
                      timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def wait_records(query, pred, what):
    deadline = time.time() + DEADLINE
    recs = []
    while time.time() < deadline:
        recs = logsql(query)
        if pred(recs):
            return recs
        time.sleep(0.5)
    raise AssertionError(f"{what}: not found with {query!r}; got {json.dumps(recs)[:3000]}")


def test_login_on_both_upstream_paths_with_the_authorized_header():
    """Upstream's default auth path (/user/auth/v1) and the seed's (/user/auth/ver1.0) both
    answer; past the API key both success and a wrong password carry
    PADMA_USER_AUTHORIZED: true; a wrong API key does not; JWT_EXPIRES_DELTA from .env."""
    for path in ["/user/auth/v1", "/user/auth/ver1.0"]:
        r = login(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers.get("PADMA_USER_AUTHORIZED") == "true", r.headers
        result = r.json()["AuthenticationResult"]
        c = claims_of(result["IdToken"])
        assert c["exp"] - c["iat"] == 1234, c
        assert result["ExpiresIn"] == 1234
    bad_user = login("/user/auth/v1", password="wrong")
    assert bad_user.status_code == 401
    assert bad_user.headers.get("PADMA_USER_AUTHORIZED") == "true"
    bad_key = login("/user/auth/v1", api_key="not-the-key")
    assert bad_key.status_code == 401
    assert "PADMA_USER_AUTHORIZED" not in bad_key.headers


def test_echo_reads_the_top_level_claim_with_a_raw_token(token):
    """The upstream-style echo function reads requestContext.authorizer["cognito:username"];
    the client sends the IdToken without `Bearer ` as upstream's clients do."""
    r = requests.get(URL + "/echo", headers={"Authorization": token}, verify=CA, timeout=DEADLINE)
    assert r.status_code == 200, r.text
    body = r.json()
    user = os.environ["E2E_USER"]
    assert body["user"] == user
    assert body["claims"]["cognito:username"] == user
    assert body["claims"]["username"] == user
    bearer = requests.get(URL + "/echo", headers={"Authorization": f"Bearer {token}"},
                          verify=CA, timeout=DEADLINE)
    assert bearer.status_code == 200, bearer.text
    assert requests.get(URL + "/echo", headers={"Authorization": "garbage"}, verify=CA,
                        timeout=30).status_code == 401


def test_workers_get_upstream_settings(token):
    """LOG_LEVEL from .env reaches workers (and becomes AWS_LAMBDA_LOG_LEVEL); workers get
    GATEWAY_INTERNAL_URL, AWS_ENDPOINT_URL_LOGS and Lambda's log group and stream names."""
    r = requests.get(URL + "/echo", headers={"Authorization": f"Bearer {token}"},
                     verify=CA, timeout=DEADLINE)
    assert r.status_code == 200, r.text
    env = r.json()["env"]
    assert env["LOG_LEVEL"] == "DEBUG", env
    assert env["AWS_LAMBDA_LOG_LEVEL"] == "DEBUG", env
    assert env["AWS_LAMBDA_LOG_FORMAT"] == "Text", env
    # The .env's GATEWAY_INTERNAL_URL names upstream's container: esb keeps its own.
    assert re.fullmatch(r"https://\d+\.\d+\.\d+\.\d+:\d+", env["GATEWAY_INTERNAL_URL"]), env
    assert env["AWS_ENDPOINT_URL_LOGS"].startswith("http://"), env
    # What boto3's logs client reads (the service id "CloudWatch Logs").
    assert env["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"] == env["AWS_ENDPOINT_URL_LOGS"], env
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/echo", env
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}",
                        env["AWS_LAMBDA_LOG_STREAM_NAME"]), env


def invoke_api(function, payload, auth):
    return requests.post(f"{URL}/2015-03-31/functions/{function}/invocations",
                         headers={"Authorization": auth} if auth else {},
                         data=json.dumps(payload), verify=CA, timeout=DEADLINE)


def test_invoke_api_takes_an_idtoken(token):
    """Scripts call the Invoke API with their IdToken (Bearer); a bad token is refused as
    Lambda refuses a bad credential; an unauthenticated call stays refused (a deliberate
    difference from upstream, docs/migrating.md)."""
    r = invoke_api("chain", {"from": "script"}, f"Bearer {token}")
    assert r.status_code == 200, r.text
    assert re.fullmatch(r"[0-9a-f-]{36}", r.json()["request_id"]), r.text
    bad = invoke_api("chain", {}, "Bearer " + token[:-4] + "AAAA")
    assert bad.status_code == 403, bad.text
    assert bad.headers.get("x-amzn-ErrorType") == "UnrecognizedClientException", bad.headers
    none = invoke_api("chain", {}, None)
    assert none.status_code == 403, none.text
    assert none.headers.get("x-amzn-ErrorType") == "MissingAuthenticationTokenException", (
        none.headers)


def test_log_records_carry_upstream_fields_for_a_chained_request(token):
    """The gateway's and both functions' records of one chained request carry upstream's
    field names: container_name, job, aws_request_id, trace_id (the whole X-Amzn-Trace-Id),
    level upper-case, the text in _msg; the DEBUG line is there (LOG_LEVEL applied)."""
    root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    trace = f"Root={root};Sampled=0"
    r = requests.get(URL + "/echo", headers={"Authorization": f"Bearer {token}",
                                              "X-Amzn-Trace-Id": trace},
                     verify=CA, timeout=DEADLINE)
    assert r.status_code == 200, r.text
    body = r.json()
    echo_id, chain_id = body["request_id"], body["chain"]["request_id"]
    recs = wait_records(
        f'trace_id:"{root}"',
        lambda rs: {("esb-gateway", "gateway"), ("echo", "lambda"), ("chain", "lambda")}
        <= {(x.get("container_name"), x.get("job")) for x in rs},
        "the gateway's and both functions' records of the chained request")
    for x in recs:
        assert x["level"] == x["level"].upper(), x
        assert root in x["trace_id"], x
    gateway = [x for x in recs if x["container_name"] == "esb-gateway"]
    assert any(x.get("aws_request_id") == echo_id for x in gateway), gateway
    # Queries on aws_request_id, container_name and job, as upstream's saved queries are.
    mine = wait_records(f'aws_request_id:"{echo_id}"',
                        lambda rs: any(f"echo served" in x["_msg"] for x in rs),
                        "the echo function's own line")
    assert all(x["container_name"] == "echo" or x["job"] == "gateway" for x in mine), mine
    debug = wait_records(f'container_name:"echo" job:"lambda" aws_request_id:"{echo_id}"',
                         lambda rs: any("debug line from echo" in x["_msg"] for x in rs),
                         "the DEBUG line (LOG_LEVEL=DEBUG from .env)")
    line = next(x for x in debug if "debug line from echo" in x["_msg"])
    assert line["level"] == "DEBUG", line
    wait_records(f'container_name:"chain" aws_request_id:"{chain_id}"',
                 lambda rs: any(f"chain called from {echo_id}" in x["_msg"] for x in rs),
                 "the chained function's line")


def logs_client():
    return boto3.client("logs", endpoint_url=LOGS, region_name=os.environ["AWS_REGION"])


def test_cloudwatch_logs_from_a_function_and_from_the_host(token):
    """A function writes with boto3 logs.put_log_events (AWS_ENDPOINT_URL_CLOUDWATCH_LOGS); the host
    finds it with FilterLogEvents; the function's own lines are the /aws/lambda/echo group,
    one stream per worker; the stock AWS CLI v2 `aws logs tail` shows them."""
    r = requests.get(URL + "/echo", headers={"Authorization": f"Bearer {token}"},
                     verify=CA, timeout=DEADLINE)
    assert r.status_code == 200, r.text
    body = r.json()
    rid = body["request_id"]
    logs = logs_client()
    deadline = time.time() + DEADLINE
    events = []
    while time.time() < deadline:
        events = logs.filter_log_events(logGroupName="/esb/upstream-test",
                                        filterPattern=f'"cloudwatch line from {rid}"')["events"]
        if events:
            break
        time.sleep(0.5)
    assert [e["message"] for e in events] == [f"cloudwatch line from {rid}"], events
    assert events[0]["logStreamName"] == rid
    while time.time() < deadline:
        events = logs.filter_log_events(logGroupName="/aws/lambda/echo",
                                        filterPattern=f'"echo served" {rid}')["events"]
        if events:
            break
        time.sleep(0.5)
    assert events, "the function's own line in /aws/lambda/echo"
    assert events[0]["logStreamName"] == body["log_stream"]
    streams = logs.describe_log_streams(logGroupName="/aws/lambda/echo")["logStreams"]
    assert body["log_stream"] in [s["logStreamName"] for s in streams], streams
    groups = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert "/aws/lambda/echo" in groups and "/esb/upstream-test" in groups, groups
    aws = "/usr/bin/aws"
    assert os.path.exists(aws), "Debian's awscli (v2) is missing: scripts/prereqs.sh installs it"
    out = subprocess.run(
        [aws, "logs", "tail", "/aws/lambda/echo", "--since", "1h", "--endpoint-url", LOGS,
         "--region", os.environ["AWS_REGION"], "--format", "short"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "AWS_PAGER": "", "HOME": os.environ.get("HOME", "/root")})
    assert out.returncode == 0, out.stderr
    assert f"echo served {os.environ['E2E_USER']} in {rid}" in out.stdout, out.stdout[-3000:]


def test_logging_config_json_at_warn():
    """LoggingConfig LogFormat JSON + ApplicationLogLevel WARN (awslambdaric's own settings):
    WARN and ERROR lines arrive as JSON records, DEBUG and INFO do not; SystemLogLevel WARN
    keeps START/END/REPORT out."""
    lam = boto3.client("lambda", endpoint_url=URL, verify=CA, region_name=os.environ["AWS_REGION"])
    tag = uuid.uuid4().hex
    r = lam.invoke(FunctionName="jsonlog", Payload=json.dumps({"tag": tag}).encode())
    assert json.loads(r["Payload"].read()) == {"tag": tag}
    rid = r["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    recs = wait_records(f'container_name:"jsonlog" "{tag}"',
                        lambda rs: len([x for x in rs if tag in x["_msg"]]) >= 2,
                        "the jsonlog WARN and ERROR records")
    time.sleep(2)
    recs = logsql(f'container_name:"jsonlog" "{tag}"')
    levels = sorted(x["level"] for x in recs if tag in x["_msg"])
    assert levels == ["ERROR", "WARN"], recs
    warn = next(x for x in recs if x["level"] == "WARN")
    # awslambdaric's JSON record: its fields kept, the message as _msg.
    assert warn["_msg"] == f"jsonlog warning {tag}", warn
    assert warn.get("requestId") == rid or warn.get("aws_request_id") == rid, warn
    platform = logsql(f'container_name:"jsonlog" aws_request_id:"{rid}" "REPORT"')
    assert not [x for x in platform if x["_msg"].startswith("REPORT")], platform
