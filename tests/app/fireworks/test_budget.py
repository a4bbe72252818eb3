"""The shared label budget under concurrency, on a real MongoDB wire-protocol server."""

from __future__ import annotations

import subprocess
import sys

from tests.app.fireworks.helpers import worker_env

DRAWER = """
import json, sys, time
from active_mlip.stores.budget import LabelBudget, draw
from active_mlip.stores.job_store import StoreSettings, make_job_store
store = make_job_store(StoreSettings(mongo_uri=sys.argv[1], database=sys.argv[2]))
store.connect()
budget = LabelBudget(name="race", total=100)
draw(store, LabelBudget(name="warm-up", total=1), sys.argv[3], 0)  # connections open
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # all start drawing together
print(json.dumps([draw(store, budget, f"{sys.argv[3]}:{i}", 1) for i in range(60)]))
"""


def test_four_processes_never_overdraw_the_pool(mongo_server, db_env):
    import json
    import time

    from active_mlip.stores.budget import LabelBudget, used
    from active_mlip.stores.job_store import StoreSettings, make_job_store

    db = db_env["ACTIVE_MLIP_MONGO_DB"]
    start = f"{time.time() + 8:.3f}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRAWER, mongo_server, db, f"worker{k}", start],
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env({"ACTIVE_MLIP_MONGO_DB": db}),
        )
        for k in range(4)
    ]
    grants = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # 4 x 60 draws of one label want 240; the pool holds 100: exactly 100 are granted,
    # and every worker got some (they drew at the same time).
    assert sum(map(sum, grants)) == 100
    assert all(sum(g) > 0 for g in grants)
    store = make_job_store(StoreSettings(mongo_uri=mongo_server, database=db))
    store.connect()
    assert used(store, LabelBudget(name="race", total=100)) == 100
