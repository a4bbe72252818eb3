"""Orchestration overhead: time outside labelling, training and MD, locally and on FireWorks.

(a) Local: the ``tiny`` preset loop (``active_mlip.app.local.run_local``, 8-atom CuI, CHGNet
    labels, 2 iterations; ``--preset quick --max-iterations 2`` for 64-atom CuI) with
    every job timed. ``Job.run`` is wrapped so that each job's
    own function time is measured apart from what jobflow does around it (resolving
    input references from the store, serialising the output, writing it to the store);
    what is left of the wall time is the manager's (``run_locally``: graph updates when a
    job replaces itself, scheduling). The wall time is split into labelling, training,
    MD (exploration), test-set evaluation (ensemble inference), the other jobs' own work
    (sampling, selection, loop bookkeeping), job I/O and manager, per iteration and over
    the run. Target: the part outside labelling, training and MD at most 5 % of an
    iteration; printed as is and less the evaluation (i.e. bookkeeping only).
    ``--compare-stores`` runs it twice, side by side: before (the local stores on montydb
    alone, jobflow's ``get_output``) and after (:mod:`active_mlip.stores.local_store`, and
    ``BlobsFirstJobStore.get_output`` returning outputs without references unwalked).

(b) FireWorks: a chain of N jobs that each sleep ``--work`` seconds, submitted as one
    workflow to a jongodb wire-protocol server (in memory, on this machine) and run by
    a FireWorks worker (``rapidfire``, in this process, as ``active-mlip launch`` runs
    it). Overhead per firework = (worker wall time - the jobs' own time) / N. The same
    chain run by jobflow's ``run_locally`` on an in-memory store is printed alongside.
    Target: under 1 s per firework.

Run from the repository root (jongodb from $JONGODB_BIN or .cache/jongodb)::

    python benchmarks/orchestration_overhead.py [--skip-local] [--fireworks 40]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# FireWorks reads its config at first import; jongodb has no GridFS fallback collection.
_FW_DIR = Path(tempfile.mkdtemp(prefix="fwconfig-"))
(_FW_DIR / "FW_config.yaml").write_text(
    "GRIDFS_FALLBACK_COLLECTION: null\nROCKET_STREAM_LOGLEVEL: WARNING\n"
    "STREAM_LOGLEVEL: WARNING\nPRINT_FW_JSON: false\n"
)
os.environ.setdefault("FW_CONFIG_FILE", str(_FW_DIR / "FW_config.yaml"))

from jobflow import Flow, job  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # maggma's URI-store renames

LOCAL_TARGET = 0.05
FW_TARGET_S = 1.0
_IT = re.compile(r"\bit(\d+)\b")


# ---------------------------------------------------------------------------------------
# (a) local run, every job timed
# ---------------------------------------------------------------------------------------
class JobTimer:
    """Wraps ``jobflow.Job.run``: per job, its function time and its whole run time."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._last_end: float | None = None

    def __enter__(self) -> JobTimer:
        from jobflow.core.job import Job

        self._orig = orig = Job.run
        timer = self

        def run(job_self, store, job_dir=None):
            fn = job_self.function
            inner = getattr(fn, "original", fn)  # as Job.run unwraps it
            bound = getattr(fn, "__self__", None)
            if bound is not None and not isinstance(bound, types.ModuleType):
                inner = types.MethodType(inner, bound)
            rec = {"name": job_self.name, "function": 0.0}

            def timed(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    rec["function"] = time.perf_counter() - t

            start = time.perf_counter()
            rec["gap"] = 0.0 if timer._last_end is None else start - timer._last_end
            job_self.function = timed
            try:
                response = orig(job_self, store, job_dir)
            finally:
                job_self.function = fn
                timer._last_end = time.perf_counter()
                rec["run"] = timer._last_end - start
                timer.records.append(rec)
            rec["output"] = type(response.output).__name__
            return response

        Job.run = run
        return self

    def __exit__(self, *exc) -> None:
        from jobflow.core.job import Job

        Job.run = self._orig


def kind_of(rec: dict[str, Any]) -> str:
    out, name = rec["output"], rec["name"]
    if out in ("LabelledBatch", "ToppedUpBatch") or "E0s" in name:
        return "labelling"
    if out == "MemberDocument":
        return "training"
    if out in ("ExplorationDocument", "ExplorationBatchDocument"):
        return "MD"
    if out == "EvaluationDocument":
        return "evaluation"  # the ensemble on the test set: MLIP inference, not bookkeeping
    return "other jobs"


def split_times(records: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per part: labelling, training, MD, other jobs, job I/O, manager."""
    parts: dict[str, float] = defaultdict(float)
    for r in records:
        parts[kind_of(r)] += r["function"]
        parts["job I/O"] += r["run"] - r["function"]
        parts["manager"] += r["gap"]
    return parts


def print_split(title: str, parts: dict[str, float], wall: float) -> tuple[float, float]:
    """Print the split; return the shares outside labelling/training/MD and bookkeeping.

    Bookkeeping: the other (glue) jobs' own time, job I/O and the manager, i.e. the
    outside share less the test-set evaluation (ensemble inference).
    """
    named = ("labelling", "training", "MD", "evaluation", "other jobs", "job I/O", "manager")
    shares = ", ".join(f"{k} {parts.get(k, 0.0):.2f} s" for k in named)
    outside = wall - sum(parts.get(k, 0.0) for k in ("labelling", "training", "MD"))
    bookkeeping = outside - parts.get("evaluation", 0.0)
    io = parts.get("job I/O", 0.0) + parts.get("manager", 0.0)
    print(
        f"{title}: wall {wall:.1f} s = {shares}; outside labelling/training/MD "
        f"{100 * outside / wall:.1f} %, bookkeeping (outside less evaluation) "
        f"{100 * bookkeeping / wall:.1f} %, of which job I/O + manager {100 * io / wall:.1f} %"
    )
    return outside / wall, bookkeeping / wall


def local_overhead(args) -> dict[str, Any]:
    """Run the local loop with every job timed; print the split per iteration.

    Returns the worst iteration's shares (outside labelling/training/MD, bookkeeping) and
    the job I/O seconds per iteration and over the flow.
    """
    from active_mlip.app.local import run_local
    from active_mlip.workflows.settings import ActiveLearningSettings

    loop = {"max_iterations": args.max_iterations} if args.max_iterations else {}
    settings = ActiveLearningSettings.from_preset(args.preset, **({"loop": loop} if loop else {}))
    if args.device:
        settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"device": args.device})}
        )
    workdir = Path(tempfile.mkdtemp(prefix="overhead-local-")) / "run"
    timer = JobTimer()
    t0 = time.perf_counter()
    with timer:
        run_local("CuI", workdir, settings)
    total = time.perf_counter() - t0
    recs = timer.records
    flow_wall = sum(r["gap"] + r["run"] for r in recs)
    print(
        f"(a) local {args.preset} preset: {len(recs)} jobs; run_local {total:.1f} s, of which the "
        f"flow {flow_wall:.1f} s and flow building + exports {total - flow_wall:.1f} s"
    )
    if args.verbose:
        for r in recs:
            print(
                f"    {r['name'][:60]:60s} {kind_of(r):10s} fn {r['function']:7.2f} s  "
                f"I/O {r['run'] - r['function']:5.2f} s  gap {r['gap']:5.2f} s"
            )
    by_it: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        m = _IT.search(r["name"])
        by_it[f"iteration {m.group(1)}" if m else "initial data"].append(r)
    shares = []
    io = {}
    for key in sorted(by_it, key=lambda k: (k != "initial data", k)):
        rs = by_it[key]
        parts = split_times(rs)
        share = print_split(f"    {key}", parts, sum(r["gap"] + r["run"] for r in rs))
        io[key] = parts["job I/O"]
        if key != "initial data":
            shares.append(share)
    whole_parts = split_times(recs)
    whole = print_split("    whole flow", whole_parts, flow_wall)
    io["whole flow"] = whole_parts["job I/O"]
    worst = tuple(max(s[i] for s in shares) for i in (0, 1)) if shares else whole
    for i, what in enumerate(("outside labelling/training/MD", "bookkeeping")):
        verdict = "MET" if worst[i] <= LOCAL_TARGET else "MISSED"
        print(
            f"(a) {what}: worst iteration {100 * worst[i]:.1f} %, whole flow "
            f"{100 * whole[i]:.1f} % -> target <= {100 * LOCAL_TARGET:.0f} %: {verdict}"
        )
    return {"worst": worst, "job_io": io}


def compare_stores(args) -> None:
    """(a) twice, side by side: before, the local stores on montydb alone and jobflow's
    ``get_output``; after, :class:`~active_mlip.stores.local_store.IndexedMontyStore` and
    :meth:`~active_mlip.stores.job_store.BlobsFirstJobStore.get_output` (no walk of outputs
    without references)."""
    from active_mlip.stores.job_store import BlobsFirstJobStore
    from active_mlip.stores.local_store import IndexedMontyStore

    runs = {}
    for label, after in (("before: montydb, jobflow's get_output", False), ("after", True)):
        IndexedMontyStore.indexed = BlobsFirstJobStore.skip_reference_walk = after
        print(f"(a) {label}")
        try:
            runs[label] = local_overhead(args)
        finally:
            IndexedMontyStore.indexed = BlobsFirstJobStore.skip_reference_walk = True
    (b_label, before), (a_label, after) = runs.items()
    for key in after["job_io"]:
        b, a = before["job_io"].get(key, 0.0), after["job_io"][key]
        print(f"(a) job I/O, {key}: {b:.2f} s -> {a:.2f} s, before / after = {b / a:.2f}x")
    for i, what in enumerate(("outside labelling/training/MD", "bookkeeping")):
        print(
            f"(a) {what}, worst iteration: {100 * before['worst'][i]:.1f} % -> "
            f"{100 * after['worst'][i]:.1f} %"
        )


# ---------------------------------------------------------------------------------------
# (b) FireWorks on jongodb
# ---------------------------------------------------------------------------------------
def jongodb_binary() -> Path:
    env = os.environ.get("JONGODB_BIN")
    binary = Path(env) if env else REPO / ".cache" / "jongodb" / "package" / "bin" / "jongodb"
    if not binary.is_file():
        raise SystemExit(
            f"no jongodb binary at {binary}: set JONGODB_BIN (tests/mongo.py "
            "shows how it is installed with npm pack)"
        )
    return binary


def start_jongodb() -> tuple[subprocess.Popen, str]:
    """Start an in-memory jongodb server; return it and its URI."""
    import socket

    from pymongo import MongoClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(jongodb_binary()), "--host=127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"jongodb exited with {proc.returncode}")
        try:
            MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            return proc, uri
        except Exception:
            if time.time() > deadline:
                proc.kill()
                raise SystemExit("jongodb did not accept connections within 60 s") from None
            time.sleep(0.2)


def stop_jongodb(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def use_databases(uri: str) -> None:
    """Point the LaunchPad and the job store at fresh databases on ``uri``."""
    tag = uuid.uuid4().hex[:8]
    os.environ["ACTIVE_MLIP_MONGO_URI"] = uri
    os.environ["ACTIVE_MLIP_FW_DB"] = f"fw_{tag}"
    os.environ["ACTIVE_MLIP_MONGO_DB"] = f"store_{tag}"
    os.environ.pop("ACTIVE_MLIP_LAUNCHPAD", None)


@job
def work(previous: float | None, seconds: float) -> float:
    """Sleep ``seconds``; return the time this call took (the job's own time)."""
    t0 = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - t0


def chain(n: int, seconds: float, name: str) -> Flow:
    jobs = []
    for i in range(n):
        j = work(jobs[-1].output if jobs else None, seconds)
        j.name = f"{name} it{i} work"
        jobs.append(j)
    return Flow(jobs, output=jobs[-1].output, name=name)


def fireworks_overhead(args, uri: str) -> float:
    """Run each chain size ``args.repeats`` times; print the medians, return the worst (s/fw)."""
    import logging

    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.app.submit import submit_flows
    from active_mlip.app.workers import run_worker
    from active_mlip.stores.worker_store import client_job_store

    for handler in logging.getLogger().handlers:  # the local run's, fed by FireWorks' DEBUG
        handler.setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="overhead-fw-"))
    worker = tmp / "fworker.yaml"
    worker.write_text("name: bench\ncategory: ''\nquery: '{}'\n")
    seconds = args.work
    medians = []
    for n in args.fireworks:
        per_fw, per_local = [], []
        for r in range(args.repeats):
            use_databases(uri)
            lp = load_launchpad()
            name = f"chain{n}-{r}"
            t0 = time.perf_counter()
            submit_flows(lp, "overhead", {name: (chain(n, seconds, name), "f")})
            submit_s = time.perf_counter() - t0
            launches = tmp / f"launches-{name}"
            launches.mkdir()
            t0 = time.perf_counter()
            run_worker(worker, lp, nlaunches=0, sleep_secs=1, launch_dir=launches)
            wall = time.perf_counter() - t0
            logging.getLogger("jobflow").setLevel(logging.WARNING)  # the worker set INFO
            store = client_job_store()
            own = [d["output"] for d in store.query({"name": {"$regex": f"^{name} "}}, ["output"])]
            states = [d["state"] for d in lp.fireworks.find({}, {"state": 1})]
            if len(own) != n or set(states) != {"COMPLETED"}:
                raise SystemExit(f"the chain did not complete: {len(own)} outputs, states {states}")
            per_fw.append((wall - sum(own)) / n)
            # The same chain with jobflow alone (in-memory store), interleaved.
            t0 = time.perf_counter()
            run_locally(chain(n, seconds, name), store=JobStore(MemoryStore()), log=False)
            local_wall = time.perf_counter() - t0
            per_local.append((local_wall - n * seconds) / n)
            if args.verbose:
                print(
                    f"    {n} fireworks, round {r}: submit {submit_s:.2f} s; worker {wall:.1f} s "
                    f"({sum(own):.1f} s the jobs' own) -> {per_fw[-1]:.3f} s per firework; "
                    f"run_locally {local_wall:.1f} s -> {per_local[-1]:.3f} s per job"
                )
        med = statistics.median(per_fw)
        medians.append(med)
        print(
            f"(b) FireWorks on jongodb, a chain of {n} fireworks: {med:.3f} s overhead per "
            f"firework (median of {len(per_fw)} rounds: "
            f"{', '.join(f'{x:.3f}' for x in per_fw)}); jobflow's run_locally alone "
            f"{statistics.median(per_local):.3f} s per job"
        )
    worst = max(medians)
    verdict = "MET" if worst < FW_TARGET_S else "MISSED"
    print(
        f"(b) worst {worst:.3f} s per firework = {worst / FW_TARGET_S:.2f} of the target "
        f"-> target < {FW_TARGET_S:g} s: {verdict}"
    )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-local", action="store_true", help="skip (a), the local loop")
    parser.add_argument("--skip-fireworks", action="store_true", help="skip (b)")
    parser.add_argument(
        "--fireworks", type=int, nargs="+", default=[20, 100], help="chain lengths (fireworks)"
    )
    parser.add_argument("--work", type=float, default=0.1, help="seconds each job sleeps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="training device (default: preset's)")
    parser.add_argument("--preset", default="tiny", help="settings preset of the local loop (a)")
    parser.add_argument(
        "--max-iterations", type=int, default=None, help="iterations of (a) (preset's default)"
    )
    parser.add_argument(
        "--compare-stores",
        action="store_true",
        help="run (a) twice: before (local stores on montydb alone, jobflow's get_output) "
        "and after (IndexedMontyStore, no walk of outputs without references); print the "
        "job I/O of both",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every job")
    args = parser.parse_args()
    if args.compare_stores and not args.skip_local:
        compare_stores(args)
    elif not args.skip_local:
        local_overhead(args)
    if not args.skip_fireworks:
        proc, uri = start_jongodb()
        try:
            fireworks_overhead(args, uri)
        finally:
            stop_jongodb(proc)


if __name__ == "__main__":
    main()
