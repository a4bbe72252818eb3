"""A campaign's life on the LaunchPad: stale running jobs, unpulled categories, cancel.

The LaunchPad is driven through FireWorks' own API (a worker's checkout, its pings), with
no worker process: the times of the pings are set by hand.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from fireworks import FWorker
from jobflow import Flow, job
from typer.testing import CliRunner

from active_mlip.app.cancel import cancel_campaign
from active_mlip.app.cli import app
from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.status import STALE_AFTER_S, campaign_status, running_jobs, summary_line
from active_mlip.app.submit import submit_flows
from active_mlip.workflows.routing import RoutingTable, route, tag


@job
def step(x: int) -> int:
    return x


def _flow(material: str) -> Flow:
    jobs = []
    for it, (kind, verb) in enumerate((("labelling", "label"), ("training", "train"))):
        j = step(it)
        j.name = f"{material} it0 {verb}"
        tag(j, kind)
        jobs.append(j)
    return Flow(jobs, name=f"{material} loop")


def _submit(lp, materials=("CuI", "AgI"), routing=None) -> None:
    flows = {m: _flow(m) for m in materials}
    for flow in flows.values():
        if routing is not None:
            route(flow, routing)  # as the Makers route their flows
    submit_flows(lp, "life", {m: (f, "fp") for m, f in flows.items()}, routing=routing)


def _run_one(lp, category: str, ping_age_s: float, tmp_path) -> int:
    """A worker of ``category`` checks out one READY job; its last ping was ``ping_age_s`` ago."""
    fw, launch_id = lp.checkout_fw(FWorker(name="w1", category=category), str(tmp_path))
    old = (datetime.now(UTC) - timedelta(seconds=ping_age_s)).replace(tzinfo=None)
    lp.launches.update_one(
        {"launch_id": launch_id},
        {"$set": {"state_history.$[r].updated_on": old.isoformat()}},
        array_filters=[{"r.state": "RUNNING"}],
    )
    return fw.fw_id


@pytest.mark.timeout(120)
def test_status_shows_last_pings_and_flags_the_stale(db_env, tmp_path):
    lp = load_launchpad()
    _submit(lp, routing=RoutingTable(labelling="cpu", training="gpu"))
    fresh = _run_one(lp, "cpu", 30.0, tmp_path / "a")
    lost = _run_one(lp, "cpu", STALE_AFTER_S + 300.0, tmp_path / "b")
    wfs = list(lp.workflows.find({}, {"nodes": 1, "fw_states": 1}))
    jobs = running_jobs(lp, wfs)
    assert sorted(jobs) == sorted([fresh, lost])
    assert jobs[fresh].last_ping_age_s == pytest.approx(30.0, abs=20.0)
    assert not jobs[fresh].stale() and jobs[lost].stale()
    assert jobs[lost].worker == "w1" and jobs[lost].name.endswith("it0 label")
    rows = campaign_status(lp, "life")
    assert [len(r.running_jobs) for r in rows] == [1, 1]
    line = summary_line(rows)
    assert line.startswith("2 materials: RUNNING 2; screening: not yet 2")
    assert line.endswith("1 running job(s) without a recent ping")

    out = CliRunner().invoke(app, ["status", "life"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "(1 stale)" in out.output and "stale: worker lost?" in out.output
    assert f"active-mlip restart life --lost-after {STALE_AFTER_S}" in out.output
    # the command status suggests reruns exactly the lost job, by name
    out = CliRunner().invoke(app, ["restart", "life", "--lost-after", str(STALE_AFTER_S)])
    assert out.exit_code == 0, out.output
    assert f"{lost}: " in out.output and "it0 label" in out.output
    assert f"{fresh}: " not in out.output
    assert lp.get_fw_by_id(lost).state == "READY" and lp.get_fw_by_id(fresh).state == "RUNNING"


@pytest.mark.timeout(120)
def test_status_points_out_ready_jobs_no_worker_pulls(db_env, tmp_path, monkeypatch):
    lp = load_launchpad()
    _submit(lp, ["CuI"], routing=RoutingTable(labelling="cpuu", training="gpu"))
    workers = []
    for name, cat in (("cpu", "cpu"), ("gpu", "gpu")):
        f = tmp_path / f"fworker_{name}.yaml"
        f.write_text(f"name: {name}\ncategory: {cat}\nquery: '{{}}'\n")
        workers.append(str(f))
    monkeypatch.setenv("ACTIVE_MLIP_WORKERS", ":".join(workers))
    out = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "1 READY job(s) of category 'cpuu' (e.g. CuI it0 label)" in out.output
    assert "known: cpu, gpu" in out.output


@pytest.mark.timeout(60)
def test_status_of_an_empty_launchpad_is_a_working_connection(db_env):
    out = CliRunner().invoke(app, ["status"])
    assert out.exit_code == 0 and "no campaigns yet" in out.output
    for cmd in (["status", "nope"], ["restart", "nope"], ["cancel", "nope", "--yes"]):
        out = CliRunner().invoke(app, cmd)
        assert out.exit_code == 2 and "no campaign 'nope'" in out.output, (cmd, out.output)


@pytest.mark.timeout(120)
def test_cancel_defuses_deletes_and_undoes_per_material(db_env, tmp_path):
    lp = load_launchpad()
    _submit(lp)
    _run_one(lp, "", 10.0, tmp_path)  # one of CuI's or AgI's jobs is running
    runner = CliRunner()
    out = runner.invoke(app, ["cancel", "life", "--materials", "CuJ", "--yes"])
    assert out.exit_code == 2 and "did you mean CuI" in out.output

    out = runner.invoke(app, ["cancel", "life", "--dry-run"])
    assert out.exit_code == 0 and "defuse 4 firework(s) of 2 material(s)" in out.output
    assert "1 of them running" in out.output
    assert all(s != "DEFUSED" for s in _states(lp).values())
    out = runner.invoke(app, ["cancel", "life", "--materials", "CuI"], input="n\n")
    assert out.exit_code == 1 and "nothing changed" in out.output

    out = runner.invoke(app, ["cancel", "life", "--materials", "CuI", "--yes"])
    assert out.exit_code == 0, out.output
    states = _states(lp)
    assert {states["CuI it0 label"], states["CuI it0 train"]} == {"DEFUSED"}
    assert "DEFUSED" not in {states["AgI it0 label"], states["AgI it0 train"]}
    assert cancel_campaign(lp, "life", ["CuI"], "undo").fireworks == {"CuI": 2}
    assert "DEFUSED" not in _states(lp).values()

    out = runner.invoke(app, ["cancel", "life", "--delete", "--materials", "AgI", "--yes"])
    assert out.exit_code == 0, out.output
    assert [r.material for r in campaign_status(lp, "life")] == ["CuI"]
    assert lp.fireworks.count_documents({"name": {"$regex": "^AgI"}}) == 0


def _states(lp) -> dict[str, str]:
    return {fw["name"]: fw["state"] for fw in lp.fireworks.find({}, {"name": 1, "state": 1})}


@pytest.mark.timeout(60)
def test_workers_of_active_mlip_ping_every_minute(db_env, tmp_path, monkeypatch):
    import fireworks.core.rocket as rocket

    from active_mlip.core.cpus import THREAD_ENV_VARS, WAIT_POLICY

    for key in (*THREAD_ENV_VARS, *WAIT_POLICY):  # run_worker fills them; restored after
        monkeypatch.setenv(key, os.environ.get(key, ""))

    from active_mlip.app.status import PING_INTERVAL_S
    from active_mlip.app.workers import run_worker

    worker = tmp_path / "w.yaml"
    worker.write_text("name: w\ncategory: cpu\nquery: '{}'\n")
    assert rocket.PING_TIME_SECS == 3600  # FireWorks' default
    try:
        run_worker(worker, load_launchpad(), nlaunches=0, sleep_secs=0, launch_dir=tmp_path)
        assert rocket.PING_TIME_SECS == PING_INTERVAL_S == 60
        assert STALE_AFTER_S >= 5 * PING_INTERVAL_S  # a few missed pings are no alarm
    finally:
        rocket.PING_TIME_SECS = 3600
