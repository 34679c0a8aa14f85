"""Concurrent conditional writes to one item: exactly one wins, every time."""
import threading

import boto3
from botocore.config import Config

from conftest import ENDPOINT

ROUNDS = 20
WRITERS = 16


def test_exactly_one_conditional_put_wins(client, make_table):
    t = make_table()
    clients = [boto3.client("dynamodb", endpoint_url=ENDPOINT,
                            config=Config(retries={"max_attempts": 1}, max_pool_connections=2)) for _ in range(WRITERS)]
    for r in range(ROUNDS):
        key = f"race-{r}"
        wins = []
        losses = []
        others = []
        barrier = threading.Barrier(WRITERS)

        def attempt(i):
            c = clients[i]
            barrier.wait()
            try:
                c.put_item(TableName=t, Item={"pk": {"S": key}, "owner": {"N": str(i)}},
                           ConditionExpression="attribute_not_exists(pk)")
                wins.append(i)
            except c.exceptions.ConditionalCheckFailedException:
                losses.append(i)
            except Exception as e:  # noqa: BLE001 - reported below
                others.append(repr(e))

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(WRITERS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert others == []
        assert len(wins) == 1, (r, wins)
        assert len(losses) == WRITERS - 1
        owner = client.get_item(TableName=t, Key={"pk": {"S": key}}, ConsistentRead=True)["Item"]["owner"]["N"]
        assert owner == str(wins[0])


def test_concurrent_counter_increments_are_not_lost(client, make_table):
    t = make_table()
    per_thread = 25
    errors = []

    def bump():
        c = boto3.client("dynamodb", endpoint_url=ENDPOINT, config=Config(retries={"max_attempts": 1}))
        try:
            for _ in range(per_thread):
                c.update_item(TableName=t, Key={"pk": {"S": "counter"}}, UpdateExpression="ADD n :one",
                              ExpressionAttributeValues={":one": {"N": "1"}})
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    n = client.get_item(TableName=t, Key={"pk": {"S": "counter"}}, ConsistentRead=True)["Item"]["n"]["N"]
    assert n == str(8 * per_thread)
