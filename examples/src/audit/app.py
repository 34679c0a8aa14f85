"""Audit trail: invoked asynchronously (InvocationType=Event) by the notes function.

It writes one structured line per event; find them with
`esb logs --function audit` or LogsQL `function_name:=audit action:create`.
"""

import os

from notes_common import log


def handler(event, context):
    log(
        "audit",
        action=event.get("action"),
        owner=event.get("owner"),
        note_id=event.get("id"),
        trace_id=os.environ.get("_X_AMZN_TRACE_ID"),
    )
    return {"audited": True}
