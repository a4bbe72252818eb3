"""The shared label budget under concurrency, on a real MongoDB wire-protocol server."""

from __future__ import annotations

import subprocess
import sys

from tests.fireworks.helpers import worker_env

DRAWER = """
import json, sys
from active_mlip.budget import LabelBudget, draw
from active_mlip.stores import StoreSettings, make_job_store
store = make_job_store(StoreSettings(mongo_uri=sys.argv[1], database=sys.argv[2]))
store.connect()
budget = LabelBudget(name="race", total=50)
print(json.dumps([draw(store, budget, f"{sys.argv[3]}:{i}", 3) for i in range(10)]))
"""


def test_four_processes_never_overdraw_the_pool(mongo_server, db_env):
    import json

    from active_mlip.budget import LabelBudget, used
    from active_mlip.stores import StoreSettings, make_job_store

    db = db_env["ACTIVE_MLIP_MONGO_DB"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRAWER, mongo_server, db, f"worker{k}"],
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env({"ACTIVE_MLIP_MONGO_DB": db}),
        )
        for k in range(4)
    ]
    grants = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # 4 x 10 draws of 3 labels want 120; the pool holds 50: exactly 50 are granted.
    assert sum(map(sum, grants)) == 50
    store = make_job_store(StoreSettings(mongo_uri=mongo_server, database=db))
    store.connect()
    assert used(store, LabelBudget(name="race", total=50)) == 50
