"""Campaign scale: submit the 112-material campaign, then ask for its status at >= 5,000 fireworks.

On a jongodb wire-protocol server (in memory, on this machine):

1. ``active-mlip submit`` of a campaign file listing every material of
   ``active_mlip.workflows.materials.load_screening_set()`` (a fresh process, as a user runs it),
   timed end to end, and the same submission in this process split into its parts
   (building the flows, converting them to workflows, adding them to the LaunchPad);
2. filler: the same materials submitted again under other campaign names until the
   LaunchPad holds at least ``--min-fireworks`` fireworks; then the labelling,
   evaluation and controller fireworks of every workflow are marked COMPLETED with
   job outputs in the job store (so ``status`` reads labels and test errors, as in a
   campaign that has run a while);
3. ``active-mlip status`` (all campaigns) and ``active-mlip status CAMPAIGN`` timed
   end to end, repeated (median), with the in-process ``campaign_status`` time and the
   bare interpreter + import time of the CLI beside them.

Targets: submit under 30 s, status under 2 s; absolute times on a shared machine,
printed with their ratio to the target. Run from the repository root::

    python benchmarks/campaign_scale.py [--preset paper] [--min-fireworks 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.orchestration_overhead import (  # noqa: E402  (sets FW_CONFIG_FILE first)
    start_jongodb,
    stop_jongodb,
    use_databases,
)

SUBMIT_TARGET_S = 30.0
STATUS_TARGET_S = 2.0
CAMPAIGN = "screening-112"
#: What any `active-mlip status` imports before its first query: the floor of its time.
IMPORTS = (
    "import active_mlip.app.cli, active_mlip.app.status, active_mlip.stores.job_store, "
    "fireworks, jobflow, maggma.stores, pymongo"
)


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "active-mlip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "active_mlip"]


def timed_cli(args: list[str], cwd: Path) -> tuple[float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["COLUMNS"] = "200"
    t0 = time.perf_counter()
    out = subprocess.run(cli() + args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"active-mlip {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return seconds, out.stdout


def write_campaign(path: Path, name: str, preset: str, names: list[str] | None = None) -> Path:
    """A campaign file of ``names`` (default: the whole screening set)."""
    from active_mlip.workflows.materials import load_screening_set

    names = names or [e.name for e in load_screening_set()]
    path.write_text(f"name: {name}\npreset: {preset}\nmaterials: [{', '.join(names)}]\n")
    return path


def submit_in_process(campaign_file: Path) -> dict[str, float]:
    """The submission's parts, timed in this process (fresh databases)."""
    from jobflow.managers.fireworks import flow_to_workflow

    import active_mlip.app.submit as fw
    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.workflows.campaign import load_campaign

    parts = {"build flows": 0.0, "to_workflow": 0.0, "add_wf": 0.0}
    orig_to_wf, orig_add = fw.to_workflow, None

    def to_workflow(flow, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig_to_wf(flow, *a, **k)
        finally:
            parts["to_workflow"] += time.perf_counter() - t0

    assert flow_to_workflow  # imported so that its import time is not counted below
    t0 = time.perf_counter()
    campaign, settings = load_campaign(campaign_file)
    parts["load campaign"] = time.perf_counter() - t0
    lp = load_launchpad()
    orig_add = lp.add_wf

    def add_wf(wf, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig_add(wf, *a, **k)
        finally:
            parts["add_wf"] += time.perf_counter() - t0

    lp.add_wf = add_wf
    fw.to_workflow = to_workflow
    try:
        t0 = time.perf_counter()
        result = fw.submit_campaign(lp, campaign, settings)
        parts["total"] = time.perf_counter() - t0
    finally:
        fw.to_workflow = orig_to_wf
    # Everything in submit_flows' loop that is not conversion or insertion: flow building.
    parts["build flows"] = parts["total"] - parts["to_workflow"] - parts["add_wf"]
    parts["n_added"] = len(result.added)
    return parts


def fill_and_complete(
    lp, campaign_file: Path, min_fireworks: int, preset: str, names: list[str] | None = None
) -> int:
    """Submit filler campaigns until ``min_fireworks``; complete status-relevant fireworks."""
    from active_mlip.app.submit import submit_campaign
    from active_mlip.stores.worker_store import client_job_store
    from active_mlip.workflows.campaign import load_campaign

    k = 0
    while lp.fireworks.count_documents({}) < min_fireworks:
        k += 1
        filler = write_campaign(
            campaign_file.with_name(f"filler{k}.yaml"), f"filler-{k}", preset, names
        )
        campaign, settings = load_campaign(filler)
        submit_campaign(lp, campaign, settings)
    kinds = ("labelling", "evaluation", "controller")
    done = list(
        lp.fireworks.find(
            {"spec.kind": {"$in": list(kinds)}},
            {
                "fw_id": 1,
                "spec.kind": 1,
                "name": 1,
                "spec._tasks.job.uuid": 1,
                "spec._tasks.job.metadata": 1,
                "spec._tasks.job.hosts": 1,
            },
        )
    )
    ids = [d["fw_id"] for d in done]
    lp.fireworks.update_many({"fw_id": {"$in": ids}}, {"$set": {"state": "COMPLETED"}})
    # The workflows' copies of the states, as FireWorks keeps them.
    ids_set = set(ids)
    for wf in lp.workflows.find({}, {"nodes": 1}):
        mine = {f"fw_states.{i}": "COMPLETED" for i in wf["nodes"] if i in ids_set}
        if mine:
            lp.workflows.update_one({"_id": wf["_id"]}, {"$set": mine})
    store = client_job_store()
    outputs = {
        "labelling": {"n_labelled": 10, "n_failed": 1},
        "evaluation": {"mae_forces_meV_per_A": 42.0},
        "controller": {"stop": None},
    }
    # What jobflow's Job.run writes (JobStoreDocument), the job's metadata and hosts included.
    docs = [
        {
            "uuid": d["spec"]["_tasks"][0]["job"]["uuid"],
            "index": 1,
            "name": d["name"],
            "output": outputs[d["spec"]["kind"]],
            "completed_at": "2026-11-24T12:00:00",
            "metadata": d["spec"]["_tasks"][0]["job"]["metadata"],
            "hosts": d["spec"]["_tasks"][0]["job"]["hosts"],
        }
        for d in done
    ]
    store.docs_store.update(docs, key=["uuid", "index"])
    return len(done)


def print_transfer(lp) -> None:
    """What status's former fireworks query made the server scan and send (for the record).

    jongodb ignores find projections (it returns whole documents), so the fireworks
    status read before session 4 arrived with their full specs (the serialised jobs);
    status now reads the job outputs by their metadata instead.
    """
    import bson

    from active_mlip.app.status import _STATUS_KINDS

    query = {"state": "COMPLETED", "spec.kind": {"$in": list(_STATUS_KINDS)}}
    t0 = time.perf_counter()
    n = lp.fireworks.count_documents(query)
    scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    docs = list(lp.fireworks.find(query, {"fw_id": 1}))
    fetch = time.perf_counter() - t0
    full = sum(len(bson.encode(d)) for d in docs)
    projected = sum(
        len(
            bson.encode(
                {
                    "_id": d["_id"],
                    "fw_id": d["fw_id"],
                    "state": d["state"],
                    "name": d["name"],
                    "spec": {
                        "kind": d["spec"]["kind"],
                        "_tasks": [{"job": {"uuid": d["spec"]["_tasks"][0]["job"]["uuid"]}}],
                    },
                }
            )
        )
        for d in docs
    )
    print(
        f"former status read of {n} completed fireworks: the server's scan (count_documents) "
        f"{scan:.2f} s, the find {fetch:.2f} s; jongodb sends {full / 1e6:.1f} MB (all fields, "
        f"{len(docs[0]) if docs else 0} top-level keys despite a projection to fw_id), a "
        f"projection-honouring MongoDB {projected / 1e6:.2f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help="settings preset of the campaign")
    parser.add_argument("--min-fireworks", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5, help="status calls timed")
    parser.add_argument("--profile", action="store_true", help="cProfile status in-process")
    args = parser.parse_args()

    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.app.status import campaign_status
    from active_mlip.stores.worker_store import client_job_store

    tmp = Path(tempfile.mkdtemp(prefix="campaign-scale-"))
    campaign_file = write_campaign(tmp / "campaign.yaml", CAMPAIGN, args.preset)
    worker = tmp / "fworker.yaml"
    worker.write_text("name: all\ncategory: ''\nquery: '{}'\n")
    proc, uri = start_jongodb()
    try:
        # 1. submit: the CLI in a fresh process, then the same in this one (split).
        use_databases(uri)
        seconds, out = timed_cli(["submit", str(campaign_file), "--worker", str(worker)], tmp)
        lp = load_launchpad()
        n_fw = lp.fireworks.count_documents({})
        added = lp.workflows.count_documents({})
        verdict = "MET" if seconds < SUBMIT_TARGET_S else "MISSED"
        print(
            f"submit ({args.preset} preset): `active-mlip submit` {seconds:.1f} s for {added} "
            f"materials, {n_fw} fireworks = {seconds / SUBMIT_TARGET_S:.2f} of the target "
            f"-> target < {SUBMIT_TARGET_S:g} s: {verdict}"
        )
        use_databases(uri)
        parts = submit_in_process(campaign_file)
        print(
            "    in process: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items() if k != "n_added")
            + f" ({parts['n_added']:.0f} materials)"
        )
        lp = load_launchpad()  # the databases of the in-process submission from here on
        # 2. fill to >= min_fireworks and complete the fireworks status reads.
        t0 = time.perf_counter()
        n_done = fill_and_complete(lp, campaign_file, args.min_fireworks, args.preset)
        n_fw = lp.fireworks.count_documents({})
        n_wf = lp.workflows.count_documents({})
        print(
            f"LaunchPad: {n_fw} fireworks in {n_wf} workflows, {n_done} completed with "
            f"outputs (filled in {time.perf_counter() - t0:.0f} s)"
        )
        print_transfer(lp)
        # 3. status, interleaved: all campaigns, one campaign, in-process, bare import.
        store = client_job_store()
        times: dict[str, list[float]] = {
            "status (all)": [],
            f"status {CAMPAIGN}": [],
            "in-process campaign_status (all)": [],
            "interpreter + the imports status needs": [],
        }
        for _ in range(args.repeats):
            times["status (all)"].append(timed_cli(["status"], tmp)[0])
            s, out = timed_cli(["status", CAMPAIGN], tmp)
            times[f"status {CAMPAIGN}"].append(s)
            t0 = time.perf_counter()
            rows = campaign_status(lp, None, store)
            times["in-process campaign_status (all)"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", IMPORTS],
                cwd=tmp,
                check=True,
            )
            times["interpreter + the imports status needs"].append(time.perf_counter() - t0)
        assert len(rows) == n_wf and all(r.labels > 0 for r in rows), "status read no labels"
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            "status, median of "
            + f"{args.repeats}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
        )
        worst = max(med["status (all)"], med[f"status {CAMPAIGN}"])
        verdict = "MET" if worst < STATUS_TARGET_S else "MISSED"
        print(
            f"status at {n_fw} fireworks: {worst:.2f} s (slower of the two) = "
            f"{worst / STATUS_TARGET_S:.2f} of the target -> target < {STATUS_TARGET_S:g} s: "
            f"{verdict}"
        )
        if args.profile:
            import contextlib
            import cProfile
            import io
            import pstats

            from active_mlip.app.cli import app

            prof = cProfile.Profile()
            prof.runcall(campaign_status, lp, None, store)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(15)
            prof = cProfile.Profile()  # the whole command, in this process (imports done)
            with contextlib.redirect_stdout(io.StringIO()):
                prof.runcall(app, ["status"], standalone_mode=False)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    finally:
        stop_jongodb(proc)


if __name__ == "__main__":
    main()
