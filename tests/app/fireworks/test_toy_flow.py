"""Routing, submit, status, restart and the web GUI on a toy dynamic flow (no training).

Two concurrent workers pull from a real MongoDB wire-protocol server: ``cpu`` through
FireWorks' own ``rlaunch -l launchpad.yaml`` and ``gpu`` through ``active-mlip launch``
(credentials from the environment only).
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from active_mlip.app.cli import app
from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.status import campaign_status, restart_campaign
from active_mlip.app.submit import submit_flows
from active_mlip.stores.worker_store import client_job_store
from tests.app.fireworks.helpers import (
    active_mlip_exe,
    free_port,
    start_worker,
    stop,
    toy_flow,
    wait_for,
    worker_env,
    workflow_done,
    write_worker,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def workers(tmp_path, db_env):
    """Write worker configs and an rlaunch launchpad file; yield a starter; stop all."""
    lp = load_launchpad()
    lp_file = tmp_path / "launchpad.yaml"
    lp_file.write_text(
        f"host: {db_env['ACTIVE_MLIP_MONGO_URI']}\nuri_mode: true\nname: {lp.name}\n"
    )
    cpu = write_worker(tmp_path / "fworker_cpu.yaml", "cpu-node", "cpu")
    gpu = write_worker(tmp_path / "fworker_gpu.yaml", "gpu-node", "gpu")
    procs: list[subprocess.Popen] = []

    def start(which: str) -> subprocess.Popen:
        if which == "cpu":
            p = start_worker(cpu, tmp_path / "cpu", tmp_path / "cpu.log", lp_file=lp_file)
        else:
            p = start_worker(gpu, tmp_path / "gpu", tmp_path / "gpu.log")
        procs.append(p)
        return p

    yield lp, start
    for p in procs:
        stop(p)


def _launch_table(lp) -> list[tuple[str, str | None, str, str]]:
    """(firework name, its category, worker name, worker category) of every launch."""
    rows = []
    for launch in lp.launches.find({}, {"fw_id": 1, "fworker": 1}):
        fw = lp.fireworks.find_one({"fw_id": launch["fw_id"]}, {"name": 1, "spec._category": 1})
        rows.append(
            (
                fw["name"],
                fw["spec"].get("_category"),
                launch["fworker"]["name"],
                launch["fworker"]["category"],
            )
        )
    return rows


def test_routing_submit_status_and_resubmit(workers, tmp_path):
    lp, start = workers
    log = tmp_path / "labels.log"
    result = submit_flows(lp, "toy", {"CuI": (toy_flow("CuI", log), "fp-1")})
    assert list(result.added) == ["CuI"] and len(result.added["CuI"]) == 4
    t0 = time.time()
    start("cpu"), start("gpu")
    wait_for(lambda: workflow_done(lp, "toy"), 90, "the toy campaign to complete")
    print(f"toy campaign: {time.time() - t0:.1f} s")

    rows = _launch_table(lp)
    names = [r[0] for r in rows]
    # iteration 1 was created at run time by the controller and ran too
    assert {"CuI it1 label", "CuI it1 train", "CuI it1 evaluate", "CuI it1 decide"} <= set(names)
    for name, category, worker, worker_category in rows:
        assert category in ("cpu", "gpu"), f"{name} is uncategorised"
        assert worker_category == category, f"{name} ({category}) ran on {worker}"
    kinds = {r[0].split()[-1]: r[1] for r in rows if r[0].startswith("CuI it")}
    assert kinds == {"label": "cpu", "train": "gpu", "evaluate": "gpu", "decide": "cpu"}
    wf = lp.workflows.find_one({"metadata.campaign": "toy"}, {"name": 1, "metadata": 1})
    assert "CuI" in wf["name"] and wf["metadata"]["fingerprint"] == "fp-1"

    (row,) = campaign_status(lp, "toy", client_job_store())
    assert (row.material, row.state, row.iteration) == ("CuI", "COMPLETED", 1)
    assert row.test_force_mae == pytest.approx(50.0)  # iteration 1 of the toy: 100 / 2
    assert row.labels == 12 and row.failed == 0 and row.running == 0
    n_fws = lp.fireworks.count_documents({})

    # second submit: nothing added, not even a rebuilt flow
    again = submit_flows(lp, "toy", {"CuI": (lambda: pytest.fail("rebuilt"), "fp-1")})
    assert again.skipped == ["CuI"] and not again.added
    assert lp.fireworks.count_documents({}) == n_fws
    changed = submit_flows(lp, "toy", {"CuI": (toy_flow("CuI", log), "fp-2")})
    assert not changed.added and "other settings" in changed.conflicts[0]

    out = CliRunner().invoke(app, ["status", "toy"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "CuI" in out.output and "COMPLETED" in out.output and "50.0" in out.output


def test_killed_worker_is_restarted_without_relabelling(workers, tmp_path):
    lp, start = workers
    log = tmp_path / "labels.log"
    flow = toy_flow("CuI", log, n_iterations=2, delay=0.4, n=10)
    submit_flows(lp, "kill", {"CuI": (flow, "fp")})
    cpu = start("cpu")
    start("gpu")
    wait_for(lambda: log.exists() and len(log.read_text().split()) >= 3, 60, "3 labels")
    cpu.send_signal(signal.SIGKILL)  # a node dies mid-job: no chance to report
    stop(cpu, signal.SIGKILL)
    labelled_before = log.read_text().split()
    assert len(labelled_before) < 10
    running = lp.fireworks.find_one({"name": "CuI it0 label"}, {"state": 1})
    assert running["state"] == "RUNNING"  # the LaunchPad still believes it runs

    # a lost run is found only once its pings are overdue
    assert restart_campaign(lp, "kill", expiration_secs=3600).lost == []
    out = CliRunner().invoke(app, ["restart", "kill", "--lost-after", "0"])
    assert out.exit_code == 0, out.output
    assert lp.fireworks.find_one({"name": "CuI it0 label"}, {"state": 1})["state"] == "READY"

    start("cpu")
    wait_for(lambda: workflow_done(lp, "kill"), 120, "the restarted campaign to complete")
    computed = log.read_text().split()
    # iteration 0 labels 0..9, iteration 1 labels 5..14: 15 distinct, each computed once
    assert sorted(computed, key=int) == [str(i) for i in range(15)]
    store = client_job_store()
    label_doc = store.query_one({"name": "CuI it0 label"}, properties=["output"])
    assert label_doc["output"]["n_reused"] == len(labelled_before)


def test_webgui_serves_the_workflow_list(workers, tmp_path, db_env):
    lp, _ = workers
    submit_flows(lp, "gui", {"AgGaSe2": (toy_flow("AgGaSe2", tmp_path / "x.log"), "fp")})
    port = free_port()
    env = worker_env({"ACTIVE_MLIP_WEBGUI_USERNAME": "ann", "ACTIVE_MLIP_WEBGUI_PASSWORD": "pw"})
    proc = subprocess.Popen(
        [active_mlip_exe(), "webgui", "--port", str(port)],
        env=env,
        stdout=open(tmp_path / "gui.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:

        def get(auth: bool):
            req = urllib.request.Request(url)
            if auth:
                req.add_header("Authorization", "Basic YW5uOnB3")  # ann:pw
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""
            except OSError:
                return None

        wait_for(lambda: get(False), 30, "the web GUI to answer")
        assert get(False)[0] == 401  # behind authentication
        status, html = get(True)
        assert status == 200
        assert "[gui] AgGaSe2 active learning" in html
    finally:
        stop(proc)
    bad = subprocess.run(
        [active_mlip_exe(), "webgui", "--host", "0.0.0.0", "--port", str(port)],
        env=worker_env({"ACTIVE_MLIP_WEBGUI_USERNAME": "", "ACTIVE_MLIP_WEBGUI_PASSWORD": ""}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "without authentication" in bad.stderr


def test_launchpad_file_and_worker_from_environment(db_env, tmp_path):
    lp = load_launchpad()
    f = Path(tmp_path / "lp.yaml")
    f.write_text(f"host: {db_env['ACTIVE_MLIP_MONGO_URI']}\nuri_mode: true\nname: {lp.name}\n")
    f.chmod(0o644)  # no password: readable is fine
    assert load_launchpad(path=f).name == lp.name
