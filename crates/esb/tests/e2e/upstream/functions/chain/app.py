"""The second function of a chained request."""


def handler(event, context):
    print(f"chain called from {event.get('from')} in {context.aws_request_id}")
    return {"request_id": context.aws_request_id}
