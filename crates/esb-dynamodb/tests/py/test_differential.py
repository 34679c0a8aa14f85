"""The differential sequence (differential.py) against this server, compared with the
results dynalite gave for it (dynalite_golden.json, recorded by
bench/dynamodb/differential.sh). Differences dynalite is known to have from DynamoDB are
listed in differential.KNOWN_DIFFERENCES and reported, not failed."""
import json
import os

import differential
from conftest import ENDPOINT

GOLDEN = os.path.join(os.path.dirname(__file__), "dynalite_golden.json")


def test_same_results_as_dynalite():
    with open(GOLDEN) as f:
        theirs = json.load(f)
    mine = differential.run(ENDPOINT)
    bad, known, messages = differential.compare(mine, theirs)
    for step, _, _ in known:
        print(f"known difference: {step}: {differential.KNOWN_DIFFERENCES[step]}")
    assert not bad, "\n".join(f"{e[0]}:\n  ours:     {e[1]}\n  dynalite: {e[2]}" for e in bad)
    assert len(mine) == len(theirs)
