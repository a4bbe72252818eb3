"""A FireWorks worker loses the database in the middle of a job; restart recovers.

The workers reach the wire-protocol server through a proxy that the test cuts while a
labelling job runs (a network partition), so the job can neither store its result nor
tell the LaunchPad it failed. The node is then given up for lost (SIGKILL), the network
comes back, ``active-mlip restart`` reruns the lost firework and the campaign completes:
labels cached before the cut are not computed again, and nothing is half-written.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from active_mlip.app.cli import app
from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.submit import submit_flows
from active_mlip.core.hashing import content_hash
from active_mlip.stores.cache import ResultCache
from active_mlip.stores.job_store import StoreSettings, make_job_store
from tests.app.fireworks.helpers import (
    start_worker,
    stop,
    toy_flow,
    wait_for,
    workflow_done,
    write_worker,
)
from tests.workflows.helpers_faults import TcpProxy, assert_nothing_half_written

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _cached_labels(uri: str, database: str, material: str, n: int) -> list[str]:
    """The toy labels (of items 0..n-1) that are in the job store's cache."""
    store = make_job_store(StoreSettings(mongo_uri=uri, database=database))
    store.connect()
    cache = ResultCache(store.additional_stores["cache"])
    return [str(x) for x in range(n) if cache.get(content_hash(["toy-label", material, x]))]


def test_worker_loses_the_database_mid_job_and_restart_recovers(db_env, tmp_path, monkeypatch):
    upstream = db_env["ACTIVE_MLIP_MONGO_URI"]
    host, port = upstream.removeprefix("mongodb://").split(":")
    proxy = TcpProxy((host, int(port)), serialize=frozenset({"findAndModify"}))
    monkeypatch.setenv("ACTIVE_MLIP_MONGO_URI", proxy.uri)
    lp = load_launchpad(uri=upstream)  # the test's own view, never cut
    log = tmp_path / "labels.log"
    submit_flows(load_launchpad(), "cut", {"CuI": (toy_flow("CuI", log, 2, 0.4, 10), "fp")})
    cpu = write_worker(tmp_path / "fworker_cpu.yaml", "cpu-node", "cpu")
    gpu = write_worker(tmp_path / "fworker_gpu.yaml", "gpu-node", "gpu")
    procs = [start_worker(w, tmp_path / w.stem, tmp_path / f"{w.stem}.log") for w in (cpu, gpu)]
    try:
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 3, 90, "3 labels")
        proxy.cut()
        time.sleep(2.0)
        assert lp.fireworks.find_one({"name": "CuI it0 label"}, {"state": 1})["state"] == "RUNNING"
        for p in procs:  # the partitioned node is given up for lost
            stop(p, signal.SIGKILL)
        proxy.restore()
        assert_nothing_half_written(upstream, db_env["ACTIVE_MLIP_MONGO_DB"])
        # What reached the cache before the cut (read on the test's own, uncut connection;
        # a label logged just before the cut may have lost its write).
        cached = _cached_labels(upstream, db_env["ACTIVE_MLIP_MONGO_DB"], "CuI", 15)
        assert len(cached) >= 2

        out = CliRunner().invoke(app, ["restart", "cut", "--lost-after", "0"])
        assert out.exit_code == 0 and re.search(r"lost runs rerun .*\n  \d+: CuI ", out.output), (
            out.output
        )
        procs += [
            start_worker(w, tmp_path / f"{w.stem}2", tmp_path / f"{w.stem}2.log")
            for w in (cpu, gpu)
        ]
        wait_for(lambda: workflow_done(lp, "cut"), 180, "the restarted campaign")
    finally:
        for p in procs:
            stop(p)
        proxy.cut()
    computed = Counter(log.read_text().split())
    assert sorted(computed, key=int) == [str(i) for i in range(15)]  # every label, in the end
    for label in cached:  # stored before the cut: never computed again
        assert computed[label] == 1, label
    # at most the label in flight at the cut (computed, its write lost) was repeated
    assert sum(n - 1 for n in computed.values()) <= 1
    assert_nothing_half_written(upstream, db_env["ACTIVE_MLIP_MONGO_DB"])
