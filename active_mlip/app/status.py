"""A campaign's state on FireWorks (``active-mlip status``) and its restart."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import JobStore

from active_mlip.app.submit import worker_categories, workflow_query

if TYPE_CHECKING:
    from fireworks import LaunchPad

_IT_RE = re.compile(r"\bit(\d+)\b")

#: How often ``active-mlip launch`` workers ping a running job (FireWorks' default: 1 h).
PING_INTERVAL_S = 60
#: A running job without a ping for this long has most likely lost its worker.
STALE_AFTER_S = 10 * PING_INTERVAL_S


def _iteration_of(meta: dict[str, Any], name: str | None) -> int | None:
    """The loop iteration a job belongs to: its metadata, else (older jobs) its name."""
    it = meta.get("iteration")
    if isinstance(it, int):
        return it
    m = _IT_RE.search(name or "")
    return int(m.group(1)) if m else None


@dataclass
class RunningJob:
    """A RUNNING (or RESERVED) firework and when its worker last said it was alive."""

    fw_id: int
    name: str
    host: str | None
    worker: str | None
    last_ping_age_s: float | None

    def stale(self, after_s: float = STALE_AFTER_S) -> bool:
        """No ping for ``after_s`` seconds: its worker is most likely dead."""
        return self.last_ping_age_s is not None and self.last_ping_age_s > after_s


@dataclass
class MaterialStatus:
    """One row of ``active-mlip status``."""

    campaign: str
    material: str
    state: str
    iteration: int | None
    labels: int
    test_force_mae: float | None
    counts: dict[str, int]
    verdict: str | None = None
    running_jobs: list[RunningJob] = field(default_factory=list)

    @property
    def running(self) -> int:
        return self.counts.get("RUNNING", 0) + self.counts.get("RESERVED", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("FIZZLED", 0)


def campaign_status(
    lp: LaunchPad, campaign: str | None = None, store: JobStore | None = None
) -> list[MaterialStatus]:
    """State of each material's workflow, in two queries.

    The firework counts come from each workflow's ``fw_states`` (FireWorks keeps them with
    every firework's state). Iteration, labels, the latest test force MAE and the screening
    verdict come from the job outputs in ``store`` (when given), found by the campaign and
    material every job carries in its metadata, so the fireworks (whose specs hold the
    serialised jobs) are not read at all: iteration = the highest ``metadata.iteration`` of
    finished evaluation/controller jobs (older jobs: the ``itN`` in their name); labels =
    labelled + failed frames of every labelling job. Without a store only the iteration is
    read, from the completed fireworks.
    """
    q = workflow_query(campaign) if campaign else {"metadata.campaign": {"$exists": True}}
    wfs = list(lp.workflows.find(q, {"metadata": 1, "state": 1, "nodes": 1, "fw_states": 1}))
    if store is not None:
        summaries = _summaries_from_outputs(store, campaign, wfs)
    else:
        summaries = _iterations_from_fireworks(lp, wfs)
    running = running_jobs(lp, wfs)
    rows = []
    for wf, (iteration, labels, mae, verdict) in zip(wfs, summaries, strict=True):
        counts: dict[str, int] = {}
        for state in (wf.get("fw_states") or {}).values():
            counts[state] = counts.get(state, 0) + 1
        rows.append(
            MaterialStatus(
                campaign=wf["metadata"]["campaign"],
                material=wf["metadata"]["material"],
                state=wf["state"],
                iteration=iteration,
                labels=labels,
                test_force_mae=mae,
                counts=counts,
                verdict=verdict,
                running_jobs=[running[i] for i in wf["nodes"] if i in running],
            )
        )
    return sorted(rows, key=lambda r: (r.campaign, r.material))


def _age_s(stamp: Any, now: datetime) -> float | None:
    """Seconds since a FireWorks time stamp (ISO string or datetime, UTC without zone)."""
    if isinstance(stamp, str):
        try:
            stamp = datetime.fromisoformat(stamp)
        except ValueError:
            return None
    if not isinstance(stamp, datetime):
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return max(0.0, (now - stamp).total_seconds())


def running_jobs(
    lp: LaunchPad, wfs: list[dict[str, Any]], now: datetime | None = None
) -> dict[int, RunningJob]:
    """The RUNNING/RESERVED fireworks of ``wfs`` by fw_id, with their last ping's age.

    A worker pings its running launch every :data:`PING_INTERVAL_S` seconds (FireWorks
    writes the time into the RUNNING entry of the launch's ``state_history``); a launch
    whose last ping is old has lost its worker (a killed node), and FireWorks still shows
    it RUNNING until ``restart`` reruns it.
    """
    ids = [
        int(i)
        for wf in wfs
        for i, state in (wf.get("fw_states") or {}).items()
        if state in ("RUNNING", "RESERVED")
    ]
    if not ids:
        return {}
    now = now or datetime.now(UTC)
    names = {
        fw["fw_id"]: fw.get("name", "")
        for fw in lp.fireworks.find({"fw_id": {"$in": ids}}, {"fw_id": 1, "name": 1})
    }
    out = {i: RunningJob(i, names.get(i, ""), None, None, None) for i in ids}
    projection = {"fw_id": 1, "host": 1, "fworker.name": 1, "state_history": 1}
    query = {"fw_id": {"$in": ids}, "state": {"$in": ["RUNNING", "RESERVED"]}}
    for launch in lp.launches.find(query, projection):
        entries = launch.get("state_history") or []
        stamps = [e.get("updated_on") or e.get("created_on") for e in entries]
        ages = [a for a in (_age_s(t, now) for t in stamps) if a is not None]
        out[launch["fw_id"]] = RunningJob(
            fw_id=launch["fw_id"],
            name=names.get(launch["fw_id"], ""),
            host=launch.get("host"),
            worker=(launch.get("fworker") or {}).get("name"),
            last_ping_age_s=min(ages) if ages else None,
        )
    return out


def summary_line(rows: list[MaterialStatus]) -> str:
    """Counts of workflow states and screening verdicts, for a long table's foot."""
    states = Counter(r.state for r in rows)
    verdicts = Counter(r.verdict or "not yet" for r in rows)
    stale = sum(j.stale() for r in rows for j in r.running_jobs)
    line = f"{len(rows)} materials: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    line += "; screening: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
    return line + (f"; {stale} running job(s) without a recent ping" if stale else "")


@dataclass
class UnpulledCategory:
    """READY fireworks whose category no known worker pulls: they wait forever."""

    category: str
    n_ready: int
    example: str


def unpulled_ready(
    lp: LaunchPad, wfs_query: dict[str, Any], worker_files: list[str | Path]
) -> tuple[list[UnpulledCategory], set[str]]:
    """READY fireworks no known worker pulls, and the categories the known workers pull.

    Known workers: the FireWorker files given (``submit`` checked the routing against the
    same) and every worker that has run a launch on this LaunchPad. A worker without a
    category pulls every firework, so then nothing is reported.
    """
    pulled = worker_categories(worker_files) if worker_files else set()
    for c in lp.launches.distinct("fworker.category"):
        pulled |= set(c) if isinstance(c, list) else {c or ""}
    ids = [i for wf in lp.workflows.find(wfs_query, {"nodes": 1}) for i in wf["nodes"]]
    if not ids or not pulled or pulled & {"", "*"}:
        return [], pulled
    ready = lp.fireworks.find(
        {"fw_id": {"$in": ids}, "state": "READY"}, {"name": 1, "spec._category": 1}
    )
    waiting: dict[str, list[str]] = {}
    for fw in ready:
        cat = (fw.get("spec") or {}).get("_category")
        if cat and cat not in pulled:
            waiting.setdefault(cat, []).append(fw.get("name", ""))
    found = [UnpulledCategory(c, len(n), n[0]) for c, n in sorted(waiting.items())]
    return found, pulled


_Summary = tuple[int | None, int, float | None, str | None]


def ensure_output_indexes(store: JobStore) -> None:
    """Index the job documents by campaign, the field status queries (idempotent).

    jobflow indexes only ``uuid`` and ``index``; without this index MongoDB scans every job
    document of every campaign for each ``active-mlip status``.
    """
    store.docs_store.ensure_index("metadata.campaign")


def _summaries_from_outputs(
    store: JobStore, campaign: str | None, wfs: list[dict[str, Any]]
) -> list[_Summary]:
    """(iteration, labels, test force MAE, verdict) of each workflow, from one store query.

    The first version read the completed fireworks and then their outputs: at 5,700
    fireworks the fireworks query alone took 1.3-2.5 s on the wire-protocol test server,
    which sends whole documents (benchmarks/campaign_scale.py).
    """
    crit: dict[str, Any] = {"metadata.kind": {"$in": list(_STATUS_KINDS)}}
    crit["metadata.campaign"] = campaign if campaign else {"$exists": True}
    props = [
        "uuid",
        "name",
        "hosts",
        "metadata.campaign",
        "metadata.material",
        "metadata.kind",
        "metadata.iteration",
        "output.n_labelled",
        "output.n_failed",
        "output.mae_forces_meV_per_A",
        "output.verdict",
    ]
    docs_of: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for doc in store.docs_store.query(criteria=crit, properties=props):
        meta = doc.get("metadata") or {}
        docs_of.setdefault((meta.get("campaign"), meta.get("material")), []).append(doc)
    out = []
    for wf in wfs:
        meta = wf["metadata"]
        docs = docs_of.get((meta["campaign"], meta["material"]), [])
        flow_uuid = meta.get("flow_uuid")
        if flow_uuid:  # outputs of an earlier, deleted workflow of the material do not count
            docs = [d for d in docs if flow_uuid in (d.get("hosts") or [])]
        out.append(_summarise_outputs(docs))
    return out


def _iterations_from_fireworks(lp: LaunchPad, wfs: list[dict[str, Any]]) -> list[_Summary]:
    """(iteration, 0, None, None) of each workflow, from its completed fireworks' names."""
    owner: dict[int, int] = {}
    for i, wf in enumerate(wfs):
        for fw_id, state in (wf.get("fw_states") or {}).items():
            if state == "COMPLETED":
                owner[int(fw_id)] = i
    wanted = {"state": "COMPLETED", "spec.kind": {"$in": ["evaluation", "controller"]}}
    population = sum(len(wf["nodes"]) for wf in wfs)
    best: dict[int, int] = {}
    projection = {"fw_id": 1, "name": 1, "spec.iteration": 1}
    for fw in _find_ids(lp.fireworks, list(owner), wanted, projection, population):
        i = owner.get(fw["fw_id"])
        it = _iteration_of(fw.get("spec") or {}, fw.get("name"))
        if i is not None and it is not None:
            best[i] = max(best.get(i, -1), it)
    return [(best.get(i), 0, None, None) for i in range(len(wfs))]


_STATUS_KINDS = ("labelling", "evaluation", "controller")


#: Most values in one ``$in`` query (a MongoDB command is at most 16 MB).
_IN_CHUNK = 20_000


def _find_ids(
    collection: Any,
    ids: list[int],
    query: dict[str, Any],
    projection: dict[str, int],
    population: int = 0,
) -> list[dict[str, Any]]:
    """Documents matching ``query`` among the fireworks ``ids``, in few queries.

    ``ids`` were picked from ``population`` fireworks (the workflows' nodes). When they
    lie in a range of at most twice that many fw_ids (the usual case: FireWorks numbers
    a workflow's fireworks one after the other) the range is read, filtered by ``query``
    on the server, which spares it a long ``$in`` list; the caller drops the ids it did
    not ask for.
    """
    if not ids:
        return []
    lo, hi = min(ids), max(ids)
    if hi - lo + 1 <= 2 * max(len(ids), population):
        return list(collection.find({**query, "fw_id": {"$gte": lo, "$lte": hi}}, projection))
    ids = sorted(ids)
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), _IN_CHUNK):
        out += collection.find({**query, "fw_id": {"$in": ids[i : i + _IN_CHUNK]}}, projection)
    return out


def _summarise_outputs(outputs: list[dict[str, Any]]) -> _Summary:
    """Iteration, labels, latest test force MAE and verdict from one workflow's job outputs."""
    labels = 0
    verdict = None
    iteration: int | None = None
    best: tuple[int, float] | None = None
    for doc in outputs:
        out = doc.get("output") or {}
        meta = doc.get("metadata") or {}
        kind = meta.get("kind")
        found = _iteration_of(meta, doc.get("name"))
        it = -1 if found is None else found
        if isinstance(out.get("verdict"), str):  # the screening verdict job
            verdict = out["verdict"]
        if kind == "labelling" and isinstance(out.get("n_labelled"), int):
            labels += out["n_labelled"] + int(out.get("n_failed") or 0)
        if kind in ("evaluation", "controller") and found is not None:
            iteration = it if iteration is None else max(iteration, it)
        if kind == "evaluation" and out.get("mae_forces_meV_per_A") is not None:
            if best is None or it >= best[0]:
                best = (it, float(out["mae_forces_meV_per_A"]))
    return iteration, labels, None if best is None else best[1], verdict


@dataclass
class RestartResult:
    """Fireworks found lost (worker died) or fizzled (job failed), and rerun."""

    lost: list[int] = field(default_factory=list)
    fizzled: list[int] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)

    def describe(self, ids: list[int]) -> str:
        """``ids`` with their firework names (material, iteration, stage): one per line."""
        return "\n".join(f"  {i}: {self.names.get(i, '?')}" for i in ids)


def campaign_fw_ids(lp: LaunchPad, campaign: str | None) -> list[int]:
    q = workflow_query(campaign) if campaign else {"metadata.campaign": {"$exists": True}}
    ids: list[int] = []
    for wf in lp.workflows.find(q, {"nodes": 1}):
        ids += wf["nodes"]
    return ids


def restart_campaign(
    lp: LaunchPad,
    campaign: str | None = None,
    expiration_secs: int = 4 * 3600,
    dry_run: bool = False,
) -> RestartResult:
    """Rerun a campaign's lost and fizzled fireworks.

    A run is lost when its worker stopped pinging for ``expiration_secs`` (a killed
    node). Reruns recompute nothing already stored: labels, members and explorations
    are cached by content in the job store and reused by the rerun jobs.
    """
    ids = campaign_fw_ids(lp, campaign)
    result = RestartResult()
    if not ids:
        return result
    query = {"fw_id": {"$in": ids}}
    _, lost, _ = lp.detect_lostruns(expiration_secs=expiration_secs, query=query, rerun=not dry_run)
    result.lost = sorted(lost)
    result.fizzled = sorted(lp.get_fw_ids({**query, "state": "FIZZLED"}))
    rerun = result.lost + result.fizzled
    if rerun:
        found = lp.fireworks.find({"fw_id": {"$in": rerun}}, {"fw_id": 1, "name": 1})
        result.names = {fw["fw_id"]: fw.get("name", "") for fw in found}
    if not dry_run:
        for fw_id in result.fizzled:
            lp.rerun_fw(fw_id)
    return result
