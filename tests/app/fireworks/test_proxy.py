"""The test proxy's serialised ``findAndModify``: what the load and database-loss tests rely on.

jongodb does not make ``findAndModify`` atomic; ``TcpProxy(serialize=...)`` runs those
commands one at a time. Four processes reserving documents as fast as they can through
it must each get different documents, as FireWorks workers checking out fireworks would;
without the serialisation they do not (measured: this test fails with ``serialize``
empty).

A previous version of the proxy released the lock when it saw *any* reply after a
serialised command had taken it, including the late-forwarded reply to the client's
command before; the load test then saw a firework launched twice in about one run in
three. This test does not reproduce that timing reliably (it passed against the old
proxy); ten runs of the load test with the fix are the evidence for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from pymongo import MongoClient

from tests.workflows.helpers_faults import TcpProxy

pytestmark = pytest.mark.timeout(300)

N_DOCS = 400
N_CLIENTS = 4

RESERVE = """
import json, sys
from pymongo import MongoClient
coll = MongoClient(sys.argv[1], maxPoolSize=1)[sys.argv[2]]["fireworks"]
mine = []
while doc := coll.find_one_and_update(
    {"state": "READY"}, {"$set": {"state": "RESERVED"}}, sort=[("fw_id", 1)]
):
    coll.find_one({"fw_id": doc["fw_id"]})  # a plain read in between, as FireWorks does
    mine.append(doc["fw_id"])
print(json.dumps(mine))
"""


def test_serialised_find_and_modify_hands_out_each_document_once(mongo_server):
    host, port = mongo_server.removeprefix("mongodb://").split(":")
    proxy = TcpProxy((host, int(port)), serialize=frozenset({"findAndModify"}))
    name = f"proxy_{uuid.uuid4().hex[:8]}"
    try:
        MongoClient(proxy.uri)[name]["fireworks"].insert_many(
            [{"fw_id": i, "state": "READY"} for i in range(N_DOCS)]
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RESERVE, proxy.uri, name], stdout=subprocess.PIPE, text=True
            )
            for _ in range(N_CLIENTS)
        ]
        got = [i for p in procs for i in json.loads(p.communicate(timeout=240)[0])]
        twice = sorted(k for k, n in Counter(got).items() if n > 1)
        assert not twice, f"{len(twice)} documents reserved more than once: {twice[:10]}"
        assert sorted(got) == list(range(N_DOCS))
    finally:
        proxy.cut()
