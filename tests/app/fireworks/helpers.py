"""Helpers of the FireWorks tests: worker subprocesses, waiting, a toy dynamic flow.

The toy flow has the loop's shape (label -> train -> evaluate -> decide, where decide
replaces itself with the next iteration) and the loop's caching (labels by content in
the job store's cache), so routing, submit, status, restart and the GUI are proven
without training anything. Every label actually computed is appended to a log file,
which is how the tests count duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobflow import Flow, JobConfig, Response, job

from active_mlip.core.hashing import content_hash
from active_mlip.stores.cache import ResultCache
from active_mlip.workflows.routing import RoutingTable, route, tag
from tests.mongo import free_port  # noqa: F401  (the FireWorks tests import it from here)

REPO = Path(__file__).resolve().parents[3]


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker subprocess (this one's, plus the repo on PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.update(extra or {})
    return env


def active_mlip_exe() -> str:
    exe = Path(sys.executable).parent / "active-mlip"
    return str(exe) if exe.exists() else "active-mlip"


def write_worker(path: Path, name: str, category: str) -> Path:
    path.write_text(f"name: {name}\ncategory: {category}\nquery: '{{}}'\n")
    return path


def start_worker(
    worker_file: Path, cwd: Path, log: Path, lp_file: Path | None = None
) -> subprocess.Popen:
    """A polling worker: ``rlaunch -l LP`` when ``lp_file`` is given, else ``active-mlip launch``.

    Its own session, so that SIGKILL of the group kills it like a lost node.
    """
    cwd.mkdir(parents=True, exist_ok=True)
    if lp_file is not None:
        exe = str(Path(sys.executable).parent / "rlaunch")
        cmd = [exe, "-l", str(lp_file), "-w", str(worker_file), "rapidfire"]
        cmd += ["--nlaunches", "infinite", "--sleep", "1"]
    else:
        cmd = [active_mlip_exe(), "launch", str(worker_file), "--nlaunches", "-1", "--sleep", "1"]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=worker_env(),
        stdout=open(log, "a"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.5) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def fizzle_reasons(lp) -> str:
    """Name and stack-trace tail of every fizzled firework (for failure messages)."""
    out = []
    for fw in lp.fireworks.find({"state": "FIZZLED"}, {"fw_id": 1, "name": 1}):
        launch = lp.launches.find_one(
            {"fw_id": fw["fw_id"], "state": "FIZZLED"}, {"action": 1}, sort=[("launch_id", -1)]
        )
        trace = (((launch or {}).get("action") or {}).get("stored_data") or {}).get(
            "_exception", {}
        )
        out.append(f"{fw['name']}: {str(trace.get('_stacktrace', trace))[-1500:]}")
    return "\n".join(out)


def workflow_done(lp, campaign: str) -> bool:
    states = [
        wf["state"] for wf in lp.workflows.find({"metadata.campaign": campaign}, {"state": 1})
    ]
    if any(s == "FIZZLED" for s in states):
        raise AssertionError(f"a workflow of {campaign} fizzled: {states}\n{fizzle_reasons(lp)}")
    return bool(states) and all(s == "COMPLETED" for s in states)


# ---------------------------------------------------------------------------------------
# The toy flow
# ---------------------------------------------------------------------------------------
@job(config=JobConfig(expose_store=True))
def toy_label(items: list[int], delay: float, log: str, material: str = "") -> dict:
    """'Label' each of ``material``'s items (square it) unless cached; log every computation."""
    cache = ResultCache.from_current_job()
    labels, reused = [], 0
    for x in items:
        key = content_hash(["toy-label", material, x])
        hit = cache.get(key)
        if hit is not None:
            labels.append(hit["y"])
            reused += 1
            continue
        time.sleep(delay)
        with open(log, "a") as f:
            f.write(f"{x}\n")
        cache.put(key, "label", {"y": x * x})
        labels.append(x * x)
    return {"labels": labels, "n_labelled": len(labels), "n_failed": 0, "n_reused": reused}


@job
def toy_train(labelled: dict, iteration: int) -> dict:
    return {"model": sum(labelled["labels"]), "iteration": iteration}


@job
def toy_evaluate(model: dict) -> dict:
    return {"mae_forces_meV_per_A": 100.0 / (model["iteration"] + 1)}


@job
def toy_decide(
    evaluation: dict,
    material: str,
    iteration: int,
    n_iterations: int,
    delay: float,
    log: str,
    n: int,
) -> Response | dict:
    if iteration + 1 >= n_iterations:
        return {"stop": f"max_iterations ({n_iterations}) reached", **evaluation}
    nxt = toy_iteration(material, iteration + 1, n_iterations, delay, log, n)
    route(nxt, RoutingTable())
    return Response(replace=nxt)


def toy_iteration(
    material: str, iteration: int, n_iterations: int, delay: float, log: str, n: int = 6
) -> Flow:
    """One iteration; items overlap the previous iteration's by half (cache hits)."""
    items = list(range(iteration * n // 2, iteration * n // 2 + n))
    label = toy_label(items, delay, log, material)
    label.name = f"{material} it{iteration} label"
    tag(label, "labelling")
    train = toy_train(label.output, iteration)
    train.name = f"{material} it{iteration} train"
    tag(train, "training")
    evaluate = toy_evaluate(train.output)
    evaluate.name = f"{material} it{iteration} evaluate"
    tag(evaluate, "evaluation")
    decide = toy_decide(evaluate.output, material, iteration, n_iterations, delay, log, n)
    decide.name = f"{material} it{iteration} decide"
    tag(decide, "controller")
    return Flow([label, train, evaluate, decide], output=decide.output, name=f"{material} toy")


def toy_flow(
    material: str, log: str | Path, n_iterations: int = 2, delay: float = 0.0, n: int = 6
) -> Flow:
    flow = toy_iteration(material, 0, n_iterations, delay, str(log), n=n)
    flow.name = f"{material} active learning"
    route(flow, RoutingTable())
    return flow
