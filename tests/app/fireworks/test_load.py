"""Load: a campaign of 50 materials, 4 concurrent workers, one MongoDB wire-protocol server.

Why a toy flow: the real loop trains MACE ensembles (about a minute per tiny material on
2 CPU cores), so 50 materials would take most of an hour. What this test is about is the
orchestration under load -- many workflows submitted through ``to_workflow`` with the
loop's routing categories, fireworks created at run time by a controller that replaces
itself, four workers pulling concurrently from one database, labels cached by content
in the job store -- and the toy flow (``tests/app/fireworks/helpers.py``, labels keyed by
material) has exactly the loop's shape (label -> train -> evaluate -> decide, decide
replacing itself with the next iteration) and caching, at a fraction of a second per job.
Every label actually computed is appended to a log, so a label computed twice (two
workers running the same firework, a lost or repeated launch) shows as a repeated line.

The workers reach jongodb through ``helpers_faults.TcpProxy`` with ``findAndModify``
serialised: jongodb does not make that command atomic (four processes reserving 400
documents got 706 reservations), so two workers could check out the same firework,
which MongoDB's single-document atomicity rules out. Without the proxy this test sees
a few fireworks launched twice.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.submit import submit_flows
from tests.app.fireworks.helpers import (
    start_worker,
    stop,
    toy_flow,
    wait_for,
    workflow_done,
    write_worker,
)
from tests.workflows.helpers_faults import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

N_MATERIALS = 50
N_ITEMS = 4  # frames per iteration; iteration 1 shares half of them with iteration 0
N_ITERATIONS = 2


def _describe(lp, fw_ids: list[int]) -> str:
    """Name, state history and launches of ``fw_ids``: what debugging a duplicate launch needs."""
    lines = []
    for fw_id in fw_ids:
        fw = lp.fireworks.find_one({"fw_id": fw_id}, {"name": 1, "state": 1, "created_on": 1})
        lines.append(f"fw {fw_id} {fw['name']!r} {fw['state']} created {fw['created_on']}")
        for la in lp.launches.find({"fw_id": fw_id}):
            history = [(h["state"], str(h.get("created_on"))) for h in la.get("state_history", [])]
            lines.append(f"  launch {la['launch_id']} {la['fworker']['name']} {history}")
    return "\n".join(lines)


@pytest.fixture
def atomic_db(db_env, monkeypatch):
    """``db_env``, with the server reached through a proxy that makes findAndModify atomic."""
    host, port = db_env["ACTIVE_MLIP_MONGO_URI"].removeprefix("mongodb://").split(":")
    proxy = TcpProxy((host, int(port)), serialize=frozenset({"findAndModify"}))
    monkeypatch.setenv("ACTIVE_MLIP_MONGO_URI", proxy.uri)
    yield {**db_env, "ACTIVE_MLIP_MONGO_URI": proxy.uri}
    proxy.cut()


def test_fifty_materials_four_workers(atomic_db, tmp_path):
    db_env = atomic_db
    lp = load_launchpad()
    materials = [f"M{i:02d}" for i in range(N_MATERIALS)]
    logs = {m: tmp_path / f"labels_{m}.log" for m in materials}  # one label log per material
    t0 = time.time()
    flows = {
        m: (lambda m=m: toy_flow(m, logs[m], N_ITERATIONS, 0.0, N_ITEMS), "fp") for m in materials
    }
    result = submit_flows(lp, "load", flows)
    assert sorted(result.added) == materials
    submitted = lp.fireworks.count_documents({})
    t_submit = time.time() - t0

    lp_file = tmp_path / "launchpad.yaml"
    lp_file.write_text(
        f"host: {db_env['ACTIVE_MLIP_MONGO_URI']}\nuri_mode: true\nname: {lp.name}\n"
    )
    procs = []
    try:
        for k, category in enumerate(["cpu", "cpu", "gpu", "gpu"]):
            worker = write_worker(tmp_path / f"w{k}.yaml", f"{category}-node{k}", category)
            # one of each kind through rlaunch, the other through active-mlip launch
            lp_arg = lp_file if k % 2 == 0 else None
            procs.append(start_worker(worker, tmp_path / f"w{k}", tmp_path / f"w{k}.log", lp_arg))
        wait_for(lambda: workflow_done(lp, "load"), 300, "50 workflows to complete", poll=2)
    finally:
        for p in procs:
            stop(p)
    wall = time.time() - t0

    states = Counter(fw["state"] for fw in lp.fireworks.find({}, {"state": 1}))
    n_fws = sum(states.values())
    assert states == {"COMPLETED": n_fws}, states
    # Iteration 1 (4 jobs per material, and the glue jobflow inserts) was created at run time.
    assert n_fws >= submitted + 4 * N_MATERIALS
    for m in ("M00", "M49"):
        assert lp.fireworks.count_documents({"name": f"{m} it1 decide", "state": "COMPLETED"}) == 1

    # Every firework ran once, on a worker of its category; all four workers took part.
    launches = list(lp.launches.find({}, {"fw_id": 1, "fworker": 1, "state": 1, "time_start": 1}))
    twice = [k for k, n in Counter(la["fw_id"] for la in launches).items() if n > 1]
    assert not twice, f"fireworks launched more than once: {_describe(lp, twice)}"
    assert len(launches) == n_fws and {la["state"] for la in launches} == {"COMPLETED"}
    category = {fw["fw_id"]: fw["spec"].get("_category") for fw in lp.fireworks.find({})}
    for la in launches:
        assert la["fworker"]["category"] == category[la["fw_id"]]
    assert len({la["fworker"]["name"] for la in launches}) == 4

    # Each (material, frame) labelled exactly once: 4 in iteration 0, 2 new in iteration 1.
    computed = [f"{m}:{x}" for m, log in logs.items() for x in log.read_text().split()]
    twice = [k for k, n in Counter(computed).items() if n > 1]
    assert not twice, f"labels computed twice: {twice[:10]}"
    n_frames = (N_ITERATIONS - 1) * N_ITEMS // 2 + N_ITEMS
    expected = {f"{m}:{x}" for m in materials for x in range(n_frames)}
    assert set(computed) == expected
    print(f"{N_MATERIALS} materials, {n_fws} fireworks: submit {t_submit:.0f} s, all {wall:.0f} s")
