"""``campaign_status`` reads job outputs by the campaign and material in their metadata.

The outputs are written here as jobflow writes them (``JobStoreDocument``: uuid, index,
name, output, metadata, hosts), for the jobs of the submitted fireworks; no worker runs.
"""

from __future__ import annotations

import pytest
from jobflow import Flow, job

from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.status import campaign_status, ensure_output_indexes
from active_mlip.app.submit import submit_flows
from active_mlip.stores.worker_store import client_job_store
from active_mlip.workflows.routing import tag


@job
def step(x: int) -> int:
    return x


def _flow(material: str, n_iterations: int) -> Flow:
    jobs = []
    for it in range(n_iterations):
        for kind, verb in (("labelling", "label"), ("evaluation", "evaluate")):
            j = step(it)
            j.name = f"{material} it{it} {verb}"
            tag(j, kind)
            jobs.append(j)
    return Flow(jobs, name=f"{material} loop")


def _complete(lp, store, material: str, outputs: dict[str, dict]) -> None:
    """Write the outputs of ``material``'s fireworks named in ``outputs`` (by job name)."""
    wf = lp.workflows.find_one({"metadata.material": material}, {"nodes": 1})
    for fw in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}):
        j = fw["spec"]["_tasks"][0]["job"]
        if fw["name"] in outputs:
            doc = {
                "uuid": j["uuid"],
                "index": j["index"],
                "name": fw["name"],
                "output": outputs[fw["name"]],
                "completed_at": "2026-11-24T12:00:00",
                "metadata": j["metadata"],
                "hosts": j["hosts"],
            }
            store.docs_store.update([doc], key=["uuid", "index"])


@pytest.mark.timeout(120)
def test_status_counts_this_workflows_outputs_only(db_env):
    lp = load_launchpad()
    store = client_job_store()
    submit_flows(lp, "c1", {"CuI": (_flow("CuI", 2), "fp"), "AgI": (_flow("AgI", 1), "fp")})
    submit_flows(lp, "c2", {"CuI": (_flow("CuI", 1), "fp")})
    _complete(
        lp,
        store,
        "CuI",  # c1's CuI (the first workflow of that material)
        {
            "CuI it0 label": {"n_labelled": 10, "n_failed": 2},
            "CuI it0 evaluate": {"mae_forces_meV_per_A": 80.0},
            "CuI it1 label": {"n_labelled": 5, "n_failed": 0},
            "CuI it1 evaluate": {"mae_forces_meV_per_A": 40.0},
        },
    )
    rows = {(r.campaign, r.material): r for r in campaign_status(lp, None, store)}
    cui = rows["c1", "CuI"]
    assert (cui.iteration, cui.labels, cui.test_force_mae) == (1, 17, 40.0)
    for other in (rows["c1", "AgI"], rows["c2", "CuI"]):  # same material, other campaign
        assert (other.iteration, other.labels, other.test_force_mae) == (None, 0, None)
    assert [r.material for r in campaign_status(lp, "c2", store)] == ["CuI"]

    # The user deletes c1's AgI and submits it again: the old outputs stay in the store
    # but belong to another flow, so they no longer count.
    _complete(lp, store, "AgI", {"AgI it0 label": {"n_labelled": 7, "n_failed": 0}})
    (agi,) = [r for r in campaign_status(lp, "c1", store) if r.material == "AgI"]
    assert agi.labels == 7
    old = lp.workflows.find_one({"metadata.campaign": "c1", "metadata.material": "AgI"})
    lp.delete_wf(old["nodes"][0])
    submit_flows(lp, "c1", {"AgI": (_flow("AgI", 1), "fp")})
    (agi,) = [r for r in campaign_status(lp, "c1", store) if r.material == "AgI"]
    assert (agi.labels, agi.iteration) == (0, None)
    _complete(lp, store, "AgI", {"AgI it0 evaluate": {"mae_forces_meV_per_A": 55.0}})
    (agi,) = [r for r in campaign_status(lp, "c1", store) if r.material == "AgI"]
    assert (agi.labels, agi.iteration, agi.test_force_mae) == (0, 0, 55.0)

    # Without the store, only the iteration is known, from the completed fireworks.
    wf = lp.workflows.find_one({"metadata.campaign": "c1", "metadata.material": "CuI"})
    ids = [
        fw["fw_id"]
        for fw in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}}, {"fw_id": 1, "name": 1})
        if fw["name"] == "CuI it0 evaluate"
    ]
    lp.fireworks.update_many({"fw_id": {"$in": ids}}, {"$set": {"state": "COMPLETED"}})
    lp.workflows.update_one({"_id": wf["_id"]}, {"$set": {f"fw_states.{ids[0]}": "COMPLETED"}})
    (cui,) = [r for r in campaign_status(lp, "c1", None) if r.material == "CuI"]
    assert (cui.iteration, cui.labels, cui.test_force_mae) == (0, 0, None)
    assert cui.counts["COMPLETED"] == 1


@pytest.mark.timeout(60)
def test_output_index_is_created_once(db_env):
    store = client_job_store()
    ensure_output_indexes(store)
    ensure_output_indexes(store)  # idempotent
    keys = [
        [k for k, _ in ix["key"]]
        for ix in store.docs_store._collection.index_information().values()
    ]
    assert keys.count(["metadata.campaign"]) == 1
