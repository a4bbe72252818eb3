"""The real tiny loop on FireWorks: two workers (cpu, gpu), a killed worker, a restart.

The campaign screens CuI first (MLIP-MD, reference checks, verdict) and draws on a
shared label budget, so the screening jobs and the ledger run under FireWorks too.

One campaign run serves every assertion (it takes minutes): the CPU worker is killed
with SIGKILL while the initial labels run, ``active-mlip restart`` reruns the lost
firework, and the campaign completes with every firework on the worker its kind maps
to and no label computed twice.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from typer.testing import CliRunner

from active_mlip.app.cli import app
from active_mlip.app.launchpad import load_launchpad
from active_mlip.stores.worker_store import client_job_store
from tests.app.fireworks.helpers import start_worker, stop, wait_for, workflow_done, write_worker

# Generous limits: on 2 shared cores under load the force constants and CHGNet start-up
# alone can take minutes before the initial labels start.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CAMPAIGN = """
name: tiny-fw
materials: [CuI]
preset: tiny
label_budget: 1000
settings:
  screening: {enabled: true, md_steps: 200}
"""


def _state(lp, name: str) -> str | None:
    fw = lp.fireworks.find_one({"name": name}, {"state": 1})
    return fw and fw["state"]


def _locked(lp) -> bool:
    return lp.workflows.find_one({"locked": True}, {"_id": 1}) is not None


def _label_kind(cache) -> str:
    kinds = [k for k in cache.distinct("kind") if "label" in str(k)]
    assert len(kinds) == 1, kinds
    return kinds[0]


@pytest.fixture(scope="module")
def tiny_campaign(tmp_path_factory, mongo_server):
    import os
    import uuid

    tag = uuid.uuid4().hex[:8]
    env = {
        "ACTIVE_MLIP_MONGO_URI": mongo_server,
        "ACTIVE_MLIP_FW_DB": f"fw_{tag}",
        "ACTIVE_MLIP_MONGO_DB": f"store_{tag}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    tmp = tmp_path_factory.mktemp("tiny_fw")
    try:
        lp = load_launchpad()
        (tmp / "campaign.yaml").write_text(CAMPAIGN)
        cpu = write_worker(tmp / "fworker_cpu.yaml", "cpu-node", "cpu")
        gpu = write_worker(tmp / "fworker_gpu.yaml", "gpu-node", "gpu")
        lp_file = tmp / "launchpad.yaml"
        lp_file.write_text(f"host: {mongo_server}\nuri_mode: true\nname: {lp.name}\n")
        runner = CliRunner()
        args = ["submit", str(tmp / "campaign.yaml"), "--worker", str(cpu), "--worker", str(gpu)]
        out = runner.invoke(app, args)
        assert out.exit_code == 0 and "added" in out.output, out.output
        n_submitted = lp.fireworks.count_documents({})
        again = runner.invoke(app, args)
        assert again.exit_code == 0 and "already submitted" in again.output
        assert lp.fireworks.count_documents({}) == n_submitted

        t0 = time.time()
        cpu_proc = start_worker(cpu, tmp / "cpu", tmp / "cpu.log", lp_file=lp_file)
        gpu_proc = start_worker(gpu, tmp / "gpu", tmp / "gpu.log")
        procs = [cpu_proc, gpu_proc]
        try:
            # Kill mid-labelling, but not while the worker holds FireWorks' workflow lock
            # (taken for the moment the state is written): a lock left by a dead worker
            # blocks every rerun for WFLOCK_EXPIRATION_SECS (5 min), a FireWorks matter.
            wait_for(
                lambda: _state(lp, "CuI initial labels") == "RUNNING" and not _locked(lp),
                600,
                "initial labels",
                poll=0.1,
            )
            cpu_proc.send_signal(signal.SIGKILL)
            stop(cpu_proc, signal.SIGKILL)
            store = client_job_store()
            cache = store.additional_stores["cache"]
            # Labels the killed job wrote before it died: all cached labels minus those of
            # labelling jobs that had completed (e.g. the force-constant displacements).
            killed_labels = sum(
                cache.count({"kind": k}) for k in cache.distinct("kind") if "label" in str(k)
            ) - _labels_computed_by_finished_jobs(store)
            out = runner.invoke(app, ["restart", "tiny-fw", "--lost-after", "0"])
            assert out.exit_code == 0 and re.search(
                r"lost runs rerun .*\n  \d+: CuI ", out.output
            ), out.output
            procs.append(start_worker(cpu, tmp / "cpu2", tmp / "cpu2.log", lp_file=lp_file))
            wait_for(lambda: workflow_done(lp, "tiny-fw"), 900, "the tiny campaign", poll=2)
        finally:
            for p in procs:
                stop(p)
        print(f"tiny campaign on FireWorks: {time.time() - t0:.0f} s")
        yield lp, store, killed_labels
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_every_firework_ran_on_its_category(tiny_campaign):
    lp, _, _ = tiny_campaign
    names = set()
    for launch in lp.launches.find({"state": "COMPLETED"}, {"fw_id": 1, "fworker": 1}):
        fw = lp.fireworks.find_one({"fw_id": launch["fw_id"]}, {"name": 1, "spec": 1})
        assert fw["spec"].get("_category") == launch["fworker"]["category"], fw["name"]
        names.add(fw["name"])
    # created at run time by the iteration-0 controller and the screening gate
    assert {"CuI screening MD", "CuI screening labels", "CuI screening gate"} <= names
    if "CuI it0 link" in names:  # flagged: the loop went on
        assert any(n.startswith("CuI it1 train") for n in names)
        assert "CuI it1 decide" in names


def _labels_computed_by_finished_jobs(store) -> int:
    computed = 0
    for doc in store.docs_store.query(
        {"output.n_requested": {"$exists": True}},
        properties=[
            "output.n_requested",
            "output.n_reused",
            "output.n_requested_here",
            "output.n_reused_here",
        ],
    ):
        out = doc["output"]
        if "n_requested_here" in out:  # a top-up: its batch repeats the label job's counts
            computed += out["n_requested_here"] - out["n_reused_here"]
        else:
            computed += out["n_requested"] - out["n_reused"]
    return computed


def test_no_label_computed_twice(tiny_campaign):
    lp, store, killed_labels = tiny_campaign
    cache = store.additional_stores["cache"]
    distinct = cache.count({"kind": _label_kind(cache)})
    # labels computed by the killed attempt + by every finished labelling job = distinct labels
    assert _labels_computed_by_finished_jobs(store) + killed_labels == distinct


def test_status_reports_the_finished_campaign(tiny_campaign):
    out = CliRunner().invoke(app, ["status", "tiny-fw"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "CuI" in out.output and "COMPLETED" in out.output


def test_screening_verdict_report_and_budget(tiny_campaign, tmp_path):
    from active_mlip.app.campaign_report import outcomes_from_store
    from active_mlip.stores.budget import LabelBudget, used

    lp, store, _ = tiny_campaign
    (outcome,) = outcomes_from_store(store, "tiny-fw")
    assert outcome.material == "CuI"
    assert outcome.verdict in ("ok", "missing", "hallucinated")
    assert outcome.flagged == bool(outcome.evidence)
    # Every label the loop used was charged to the campaign's ledger, once.
    assert used(store, LabelBudget(name="tiny-fw", total=1000)) == outcome.labels_used > 0
    status = CliRunner().invoke(app, ["status", "tiny-fw"], env={"COLUMNS": "200"})
    assert outcome.verdict in status.output
    out = CliRunner().invoke(app, ["report", "tiny-fw", "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "CuI" in html and outcome.verdict in html
    assert (tmp_path / "rep" / "mae_histograms.png").is_file()
