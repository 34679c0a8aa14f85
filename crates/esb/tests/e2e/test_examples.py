"""The example application (examples/ at the repository root) served by `esb up`.

The README's walk-through, through real clients: the public route that calls the Rust
greeter, a token, the notes routes (DynamoDB + S3 + an Event invoke of `audit`, whose log
line is then found in the log store), bad input, and the data seen from the host with boto3.
Same environment as test_box.py (E2E_URL, E2E_CA, E2E_API_KEY, E2E_USER, E2E_PASS,
AWS_*, E2E_S3, E2E_DDB, E2E_LOGS); the box must serve examples/template.yaml with its
default parameters (Stage=dev).
"""

import json
import os
import time
import uuid

import boto3
import pytest
import requests

REQUIRED = [
    "E2E_URL", "E2E_CA", "E2E_API_KEY", "E2E_USER", "E2E_PASS", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "E2E_S3", "E2E_DDB", "E2E_LOGS",
]
TIMEOUT = 120
TABLE = "notes-dev"
BUCKET = "notes-dev-bodies"


@pytest.fixture(scope="module")
def env():
    missing = [k for k in REQUIRED if not os.environ.get(k)]
    if missing:
        pytest.fail("missing environment for the examples suite: " + ", ".join(missing),
                    pytrace=False)
    return {k: os.environ[k] for k in REQUIRED}


@pytest.fixture(scope="module")
def http(env):
    s = requests.Session()
    s.verify = env["E2E_CA"]
    s.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace `verify`
    return s


@pytest.fixture(scope="module")
def url(env):
    return lambda path: env["E2E_URL"].rstrip("/") + path


@pytest.fixture(scope="module")
def auth(env, http, url):
    r = http.post(
        url("/user/auth/ver1.0"),
        headers={"x-api-key": env["E2E_API_KEY"]},
        json={"AuthParameters": {"USERNAME": env["E2E_USER"], "PASSWORD": env["E2E_PASS"]}},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["AuthenticationResult"]["IdToken"]}


def aws(env, service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def test_hello_is_public_and_calls_the_rust_greeter(http, url):
    r = http.get(url("/hello?name=edge"), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "Hello, edge!"
    assert body["greeter"]["from"] == "greeter"


def test_hello_refuses_a_long_name(http, url):
    r = http.get(url("/hello?name=" + "x" * 65), timeout=TIMEOUT)
    assert r.status_code == 400
    assert "longer" in r.json()["message"]


def test_notes_need_a_token(http, url):
    assert http.get(url("/notes"), timeout=TIMEOUT).status_code == 401
    r = http.post(url("/notes"), json={"title": "t", "text": "x"}, timeout=TIMEOUT)
    assert r.status_code == 401


def test_create_list_get_a_note(env, http, url, auth):
    text = f"hello from the edge {uuid.uuid4().hex}"
    r = http.post(url("/notes"), json={"title": "first", "text": text}, headers=auth,
                  timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    note = r.json()
    assert r.headers["location"] == f"/notes/{note['id']}"
    assert note["owner"] == env["E2E_USER"] and note["title"] == "first"

    r = http.get(url("/notes"), headers=auth, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert note["id"] in [n["id"] for n in r.json()["notes"]]

    r = http.get(url(f"/notes/{note['id']}"), headers=auth, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == text

    # The same data, seen from the host with boto3.
    item = aws(env, "dynamodb", env["E2E_DDB"]).get_item(
        TableName=TABLE,
        Key={"owner": {"S": env["E2E_USER"]}, "id": {"S": note["id"]}},
    )["Item"]
    assert item["title"]["S"] == "first"
    obj = aws(env, "s3", env["E2E_S3"]).get_object(Bucket=BUCKET, Key=item["s3_key"]["S"])
    assert obj["Body"].read().decode() == text

    # The audit function got the Event invoke and logged it.
    deadline = time.monotonic() + TIMEOUT
    while True:
        r = requests.post(env["E2E_LOGS"].rstrip("/") + "/select/logsql/query",
                          data={"query": f"function_name:=audit note_id:{note['id']}"},
                          timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        if any(json.loads(line).get("action") == "create" for line in r.text.splitlines()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no audit record for note {note['id']} in the log store", pytrace=False)
        time.sleep(1)


def test_unknown_note_is_404(http, url, auth):
    r = http.get(url("/notes/nope"), headers=auth, timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.json() == {"message": "note not found"}


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "the body is not valid JSON"),
        (b'["a list"]', "the body must be a JSON object"),
        (b'{"text": "no title"}', "title must be"),
        (b'{"title": "t", "text": 5}', "text must be"),
    ],
)
def test_bad_notes_get_400_and_write_nothing(env, http, url, auth, body, message):
    before = http.get(url("/notes"), headers=auth, timeout=TIMEOUT).json()["notes"]
    r = http.post(url("/notes"), data=body,
                  headers={**auth, "content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    after = http.get(url("/notes"), headers=auth, timeout=TIMEOUT).json()["notes"]
    assert len(after) == len(before)
