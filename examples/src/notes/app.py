"""The notes API (Bearer token required):

    POST /notes        {"title": "...", "text": "..."}  -> 201 {"id", "title", ...}
    GET  /notes                                         -> 200 {"notes": [...]} (yours)
    GET  /notes/{id}                                    -> 200 {"id", "title", "text", ...}

A note's metadata is an item in DynamoDB (key: owner, id); its text is an object in S3.
Each creation is reported to the audit function with an asynchronous invoke (Event).
"""

import json
import os
import uuid
from datetime import datetime, timezone

from boto3.dynamodb.conditions import Attr, Key
from notes_common import HttpError, api, bucket_name, client, json_body, log, response
from notes_common import table, username

MAX_TITLE = 200
MAX_TEXT = 64 * 1024


def create(event):
    owner = username(event)
    body = json_body(event)
    title, text = body.get("title"), body.get("text")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
        raise HttpError(400, f"title must be a non-empty string of at most {MAX_TITLE} characters")
    if not isinstance(text, str) or len(text.encode()) > MAX_TEXT:
        raise HttpError(400, f"text must be a string of at most {MAX_TEXT} bytes")

    note_id = uuid.uuid4().hex
    key = f"{owner}/{note_id}.txt"
    item = {
        "owner": owner,
        "id": note_id,
        "title": title.strip(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "size": len(text.encode()),
        "s3_key": key,
    }
    # The text first, then the item: a note is visible only once both exist. If the item
    # cannot be written, the object is removed again so nothing is left half-written.
    client("s3").put_object(
        Bucket=bucket_name(), Key=key, Body=text.encode(), ContentType="text/plain; charset=utf-8"
    )
    try:
        table().put_item(Item=item, ConditionExpression=Attr("id").not_exists())
    except Exception:
        client("s3").delete_object(Bucket=bucket_name(), Key=key)
        raise

    try:
        client("lambda").invoke(
            FunctionName=os.environ["AUDIT_FUNCTION"],
            InvocationType="Event",
            Payload=json.dumps({"action": "create", "owner": owner, "id": note_id}).encode(),
        )
    except Exception as e:  # noqa: BLE001 - the note exists; a lost audit line is logged
        log("audit invoke failed", level="WARN", error=repr(e), note_id=note_id)
    log("note created", owner=owner, note_id=note_id, size=item["size"])
    public = {k: v for k, v in item.items() if k != "s3_key"}
    return response(201, public, headers={"location": f"/notes/{note_id}"})


def list_notes(event):
    owner = username(event)
    result = table().query(
        KeyConditionExpression=Key("owner").eq(owner),
        # Placeholders: several of these names are DynamoDB reserved words.
        ProjectionExpression="#i, #t, #c, #s",
        ExpressionAttributeNames={"#i": "id", "#t": "title", "#c": "created_at", "#s": "size"},
        Limit=100,
    )
    notes = sorted(result["Items"], key=lambda n: n["created_at"], reverse=True)
    return response(200, {"notes": notes})


def get(event):
    owner = username(event)
    note_id = (event.get("pathParameters") or {}).get("id", "")
    item = table().get_item(Key={"owner": owner, "id": note_id}).get("Item")
    if not item:
        raise HttpError(404, "note not found")
    text = client("s3").get_object(Bucket=bucket_name(), Key=item["s3_key"])["Body"].read()
    return response(
        200,
        {
            "id": item["id"],
            "title": item["title"],
            "created_at": item["created_at"],
            "text": text.decode("utf-8"),
        },
    )


ROUTES = {
    ("POST", "/notes"): create,
    ("GET", "/notes"): list_notes,
    ("GET", "/notes/{id}"): get,
}


@api
def handler(event, context):
    route = ROUTES.get((event.get("httpMethod"), event.get("resource")))
    if route is None:
        raise HttpError(404, "no such route")
    return route(event)
