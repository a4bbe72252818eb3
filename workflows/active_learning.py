"""The active-learning loop of Kang et al. as a dynamic jobflow graph.

One material, one or more temperatures::

    force constants (labeller) ──► harmonic samples ──► label ──► split test/train
                                                                     │
    ┌────────────────────────────────────────────────────────────────┘
    ▼
    train ensemble ─► evaluate on test set ─► decide ──(converged)──► result
                                                 │
                                                 └─► explore (per T) ─► collect ─► label
                                                       ─► top up (replace failed single points)
                                                       ─► merge ─► train ─► evaluate ─► decide …

``decide`` is the loop controller: it records the iteration and either stops (with a
recorded reason) or replaces itself with the next iteration's jobs, so the whole loop
lives in the job store and every job can be inspected or rerun. Big objects travel by
reference (job uuids), never inline in a job document. Every expensive step (labels,
members, explorations) is cached by content, so running the same flow again after an
interruption resumes where it stopped and never labels a frame twice.

Faults: failed single points are replaced by the next-best candidates (``top_up``); a
labeller that fails every frame of an iteration stops the loop with that verdict; a
diverging ensemble member is retried and, failing that, dropped (see
:func:`active_mlip.makers.training.train_member`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jobflow import CURRENT_JOB, Flow, Job, JobConfig, Maker, OutputReference, Response, job
from pydantic import Field
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.makers.diagnostics import (
    MLIPMinimaMaker,
    ScreeningDocument,
    frames_to_check,
    judge,
)
from active_mlip.makers.evaluation import EvaluationDocument, TestEvaluationMaker
from active_mlip.makers.exploration import (
    ExplorationDocument,
    ExplorationMaker,
    ExplorationSettings,
)
from active_mlip.makers.labelling import (
    LabelMaker,
    label_in_process,
    labeller_from_dict,
    validate_frames,
)
from active_mlip.makers.relax import RelaxMaker, check_can_relax
from active_mlip.makers.sampling import (
    ForceConstantsMaker,
    HarmonicSamplingMaker,
    import_trajectory,
)
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument, LabelFailure, LabelledBatch
from active_mlip.makers.training import EnsembleTrainingMaker, TrainingSettings, assign_subsets
from active_mlip.stores import budget as label_budget
from active_mlip.stores.cache import ResultCache
from active_mlip.workflows.routing import route, tag
from active_mlip.workflows.settings import ActiveLearningSettings

logger = logging.getLogger(__name__)


class FrameSet(Document):
    """A list of frames; the ``frames`` key routes it to the data store."""

    frames: list[Frame] = Field(default_factory=list)


class Candidates(FrameSet):
    """Frames to label this iteration, and the next-best ones that may replace failures."""

    reserve: list[Frame] = Field(
        default_factory=list,
        description="Accepted frames beyond the quota, highest uncertainty first.",
    )
    budget_limited: bool = Field(
        False, description="The campaign's shared label budget granted less than the quota."
    )


class ToppedUpBatch(LabelledBatch):
    """A labelled batch plus the replacements labelled for its failed frames."""

    n_requested_here: int = Field(0, description="Labels the top-up job itself requested.")
    n_reused_here: int = Field(0, description="Of those, labels taken from the cache.")


#: Output keys of :func:`collect_candidates` routed to the data store.
CANDIDATE_FIELDS = [*DATA_FIELDS, "reserve"]


class IterationRecord(Document):
    """What one iteration did and how good its ensemble was."""

    iteration: int
    n_train: int
    n_test: int
    n_scored: int = 0
    n_selected: int = 0
    n_labelled: int = 0
    n_label_failures: int = 0
    label_failure_reasons: list[str] = Field(
        default_factory=list, description="The first few reasons single points failed."
    )
    acceptance_fraction: float | None = None
    budget_limited: bool = Field(
        False, description="The shared label budget cut this iteration's selection short."
    )
    n_blowups: int = Field(0, description="Explorations of this iteration that blew up.")
    test_mae_energy_meV_per_atom: float
    test_mae_forces_meV_per_A: float
    test_rmse_energy_meV_per_atom: float | None = None
    test_rmse_forces_meV_per_A: float | None = None
    test_mae_sigma_a: float | None = None
    uncertainty_key: str
    uncertainty_mean: float
    uncertainty_std: float
    wall_seconds: float
    finished_at: float
    ensemble_uuid: str
    evaluation_uuid: str
    exploration_uuids: list[str] = Field(default_factory=list)
    label_uuid: str | None = None
    calibration: list[dict[str, float]] = Field(
        default_factory=list,
        description="For frames selected in this iteration: predicted uncertainty and the "
        "true force error of this iteration's ensemble once labelled.",
    )
    md_ps: dict[str, float] = Field(
        default_factory=dict, description="MLIP-MD run by this iteration's exploration (ps), per K."
    )
    restarts: dict[str, str] = Field(
        default_factory=dict,
        description="Walkers (K, as str) that restart from R0 in the next iteration, and why.",
    )
    acceptance_statistics: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per temperature (K, as str): what this iteration's exploration judged "
        "frames against (Ū, σ_U, the P_U = ½ threshold Ū + s·σ_U; Ē, σ_E, the P_E knee "
        "Ē + knee·σ_E and where Ē came from) and what it found (frames scored, accepted, "
        "taken from before a blow-up, MD time).",
    )
    test_statistics_by_temperature: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="This iteration's ensemble on the test frames of each temperature: "
        "Ū, σ_U, Ē, σ_E (what the next exploration's P_U is measured against).",
    )


class ScreeningSummary(Document):
    """The screening verdict as the loop carries it (the full document stays in the store)."""

    verdict: str
    flags: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list, description="One line per piece.")
    n_labels: int = 0
    screening_uuid: str = Field(description="The job whose output is the ScreeningDocument.")


class LoopState(Document):
    """Everything the loop carries from one iteration to the next."""

    material: str
    iteration: int = 0
    train: FrameSet
    test: FrameSet | None = Field(None, description="Only in the initial state.")
    e0s: dict[str, float]
    starts: dict[str, Frame] = Field(description="MD start frame per temperature (K, as str).")
    r0: Frame | None = Field(
        None, description="The (relaxed) reference structure: where a restarted walker starts."
    )
    history: list[IterationRecord] = Field(default_factory=list)
    labels_used: int = Field(
        0,
        description="Reference calculations this loop ran (an aiMD start counts its frames); "
        "labels reused from the result cache are not counted, so a rerun over a warm cache "
        "counts fewer than the dataset holds.",
    )
    last_acceptance_fraction: float | None = None
    fc_uuid: str
    test_uuid: str
    started_at: float
    pending: dict[str, Any] = Field(
        default_factory=dict, description="Exploration/labelling facts of the iteration before."
    )
    screening: ScreeningSummary | None = Field(
        None, description="Verdict of the screening after the first ensemble, when enabled."
    )
    relaxation: dict[str, Any] | None = Field(
        None,
        description="How R0 was relaxed with the labeller: residual forces and stress before "
        "and after (None when loop.relax is off).",
    )
    unstable_modes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Harmonic modes of R0 with ω² <= 0 (frequency, and what sampling did).",
    )


class LoopResult(Document):
    """The loop's final output."""

    material: str
    converged: bool
    stop_reason: str
    stop_details: dict[str, Any] = Field(
        default_factory=dict, description="The numbers that decided the stop."
    )
    state: LoopState


# ---------------------------------------------------------------------------------------
# Glue jobs (light; run wherever the routing table puts them)
# ---------------------------------------------------------------------------------------
@job(config=JobConfig(expose_store=True))
def isolated_energies(labeller: Any, elements: list[str]) -> dict[str, float]:
    """Reference energy per element from the labeller (isolated atoms in a box).

    Cached per element and labeller settings, so a resumed run does not repeat them.
    """
    from active_mlip.core.hashing import content_hash

    labeller = labeller_from_dict(labeller)
    cache = ResultCache.from_current_job()
    ident = labeller.identity().settings_hash
    keys = {el: content_hash(["isolated-atom", el, ident]) for el in elements}
    out: dict[str, float] = {}
    for el, key in keys.items():
        hit = cache.get(key)
        if hit is not None:
            out[el] = float(hit["energy"])
    missing = [el for el in elements if el not in out]
    if missing:
        for el, e in labeller.isolated_atom_energies(missing).items():
            out[el] = float(e)
            cache.put(keys[el], "isolated_atom", {"element": el, "energy": float(e)})
    return {el: out[el] for el in elements}


@job(data=DATA_FIELDS)
def concat_frames(sets: list[Any]) -> FrameSet:
    """Concatenate frame lists (FrameSets, dicts with ``frames`` or lists)."""
    out: list[Frame] = []
    for s in sets:
        frames = s.frames if hasattr(s, "frames") else s["frames"] if isinstance(s, dict) else s
        out.extend(frames)
    return FrameSet(frames=out)


def _shared_store() -> Any:
    """The job store of the running job (jobs that draw on a shared budget expose it)."""
    store = getattr(CURRENT_JOB, "store", None)
    if store is None:
        raise RuntimeError("a shared label budget needs the job store (expose_store=True)")
    return store


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def initial_split(
    labelled: LabelledBatch,
    material: str,
    settings: ActiveLearningSettings,
    reference: Frame,
    e0s: dict[str, float],
    fc_uuid: str,
    relaxation: Any = None,
    unstable_modes: list[Any] | None = None,
) -> LoopState:
    """Draw the fixed test set once, assign training subsets, and open the loop state.

    ``relaxation`` (a ``RelaxationDocument``) and ``unstable_modes`` (of the force
    constants) are recorded in the state for the summary and the report.
    """
    loop = settings.loop
    frames = list(labelled.frames)
    need = loop.n_test + 2
    if len(frames) < need:
        raise RuntimeError(
            f"only {len(frames)} initial frames were labelled ({labelled.n_failed} failed); "
            f"need at least n_test + 2 = {need}. Failures: "
            + "; ".join(f.reason for f in labelled.failures[:3])
        )
    test_idx, train_idx = split_initial(frames, loop)
    test = [frames[i].with_info(role="test") for i in test_idx]
    train = [
        frames[i].with_info(
            role="train", iteration=0, source=frames[i].info.get("source", "initial")
        )
        for i in train_idx
    ]
    train = assign_subsets(
        train, settings.training.n_sub, loop.seed, valid_fraction=settings.training.valid_fraction
    )
    uuid = CURRENT_JOB.job.uuid
    starts = {_tkey(t): reference.unlabelled(temperature=t) for t in loop.temperatures}
    r0 = reference.unlabelled()
    r0.info.pop("labeller", None)
    n_used = labelled.n_labelled + labelled.n_failed
    if loop.shared_budget is not None:  # already spent: charged even if the pool is short
        label_budget.draw(
            _shared_store(), loop.shared_budget, f"{material}:initial", n_used, force=True
        )
    return LoopState(
        material=material,
        train=FrameSet(frames=train),
        test=FrameSet(frames=test),
        e0s=e0s,
        starts=starts,
        r0=r0,
        labels_used=n_used,
        fc_uuid=fc_uuid,
        test_uuid=uuid,
        started_at=time.time(),
        relaxation=_relaxation_record(relaxation),
        unstable_modes=[_plain_model(_dump(m)) for m in unstable_modes or []],
    )


def _dump(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def _relaxation_record(doc: Any) -> dict[str, Any] | None:
    """The relaxation's numbers without its frame (that is R0, stored with the fc)."""
    if doc is None:
        return None
    data = _plain_model(_dump(doc))
    data.pop("frame", None)
    data["settings"] = _plain_model(_dump(data.get("settings")))
    return data


def split_initial(frames: list[Frame], loop: Any) -> tuple[list[int], list[int]]:
    """Indices of the test set and of the initial training set.

    ``loop.trajectory_split == "time"`` with an aiMD start: training on the first
    ``n_initial`` frames, testing on the last ``n_test`` (in trajectory order), so the
    test set lies later in time than anything trained on. Otherwise a seeded shuffle.
    """
    if loop.initial == "trajectory" and loop.trajectory_split == "time":
        n = len(frames)
        if n < loop.n_initial + loop.n_test:
            raise ValueError(
                f"a time-ordered split needs n_initial + n_test = "
                f"{loop.n_initial + loop.n_test} frames; the trajectory has {n}"
            )
        order = sorted(range(n), key=lambda i: frames[i].info.get("aimd_index", i))
        return sorted(order[n - loop.n_test :]), sorted(order[: loop.n_initial])
    rng = np.random.default_rng(loop.seed)
    order = rng.permutation(len(frames))
    return sorted(order[: loop.n_test]), sorted(order[loop.n_test :][: loop.n_initial])


@job(data=CANDIDATE_FIELDS, config=JobConfig(expose_store=True))
def collect_candidates(
    explorations: list[ExplorationDocument],
    n_new: int,
    iteration: int,
    budget: int | None,
    shared: Any = None,
    key: str = "",
) -> Candidates:
    """Pool the accepted frames of all temperatures: unique, highest uncertainty first.

    The best ``min(n_new, budget)`` are to be labelled, fewer when the campaign's
    ``shared`` budget (a :class:`~active_mlip.stores.budget.LabelBudget`) grants fewer; the
    rest (as far as the label budget reaches) are kept as a reserve that replaces frames
    whose labelling fails.
    """
    seen: set[str] = set()
    pool: list[Frame] = []
    for doc in explorations:
        for f in doc.frames:
            h = f.structure_hash()
            if h not in seen:
                seen.add(h)
                pool.append(f.with_info(iteration=iteration + 1, source="mlip-md"))
    pool.sort(key=lambda f: -float(f.info.get("uncertainty", 0.0)))
    limit = n_new if budget is None else max(0, min(n_new, budget))
    end = len(pool) if budget is None else max(limit, budget)
    limited = False
    if shared is not None:
        shared = label_budget.LabelBudget.model_validate(_plain_model(shared))
        wanted = min(limit, len(pool))
        granted = label_budget.draw(_shared_store(), shared, key, wanted)
        limited = granted < wanted
        if limited:
            logger.info("shared label budget %r granted %d of %d", shared.name, granted, wanted)
        limit = granted
    return Candidates(frames=pool[:limit], reserve=pool[limit:end], budget_limited=limited)


def _plain_model(obj: Any) -> Any:
    """A model or its serialised dict (FireWorks hands arguments over as dicts)."""
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if not k.startswith("@")}
    return obj


def combine_batches(batches: list[LabelledBatch]) -> LabelledBatch:
    """One batch from several, as if their frames had been requested together."""
    frames: list[Frame] = []
    failures: list[LabelFailure] = []
    offset = 0
    for b in batches:
        frames.extend(b.frames)
        failures.extend(f.model_copy(update={"index": f.index + offset}) for f in b.failures)
        offset += b.n_requested
    return LabelledBatch(
        labeller=batches[0].labeller,
        frames=frames,
        failures=failures,
        n_requested=offset,
        n_labelled=sum(b.n_labelled for b in batches),
        n_failed=sum(b.n_failed for b in batches),
        n_reused=sum(b.n_reused for b in batches),
        wall_seconds=sum(b.wall_seconds for b in batches),
    )


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def top_up(
    batches: list[LabelledBatch],
    reserve: list[Frame],
    n_wanted: int,
    labeller: Any,
    n_requested_here: int = 0,
    n_reused_here: int = 0,
    shared: Any = None,
    key: str = "",
) -> ToppedUpBatch | Response:
    """Replace failed single points by the next-best candidates until ``n_wanted`` are labelled.

    Reserve frames are labelled in order (highest uncertainty first), exactly as many
    as are missing at a time, until the quota is met or the reserve is empty. Labels
    come from the cache when a frame was labelled before. In-process labellers label
    here; DFT labellers get a :class:`LabelMaker` job for the replacements and a new
    ``top_up`` after it. When every frame of the batch failed, nothing is topped up:
    the labeller, not the frames, is at fault, and the loop controller stops.
    """
    labeller = labeller_from_dict(labeller)
    combined = combine_batches(batches)
    reserve = list(reserve)
    cache = ResultCache.from_current_job()
    while True:
        missing = n_wanted - combined.n_labelled
        if missing <= 0 or not reserve or combined.n_labelled == 0:
            break
        chunk, reserve = reserve[:missing], reserve[missing:]
        if shared is not None:
            shared = label_budget.LabelBudget.model_validate(_plain_model(shared))
            granted = label_budget.draw(
                _shared_store(), shared, f"{key}:topup:{combined.n_requested}", len(chunk)
            )
            if granted == 0:
                logger.info("shared label budget %r spent: no replacements", shared.name)
                break
            chunk = chunk[:granted]
        logger.info(
            "%d of %d single points failed; labelling %d replacement(s) from the reserve",
            combined.n_failed,
            combined.n_requested,
            len(chunk),
        )
        if not labeller.in_process:
            label = LabelMaker(labeller=labeller).make(chunk)
            label.name = "label replacements"
            nxt = top_up(
                [combined, label.output], reserve, n_wanted, labeller, shared=shared, key=key
            )
            nxt.name = "top up labels"
            return Response(replace=Flow([label, nxt], output=nxt.output, name="top up"))
        extra = label_in_process(chunk, labeller, cache)
        n_requested_here += extra.n_requested
        n_reused_here += extra.n_reused
        combined = combine_batches([combined, extra])
    return ToppedUpBatch(
        **dict(combined),
        n_requested_here=n_requested_here,
        n_reused_here=n_reused_here,
    )


@job(data=DATA_FIELDS)
def merge(
    state: LoopState,
    labelled: LabelledBatch,
    explorations: list[ExplorationDocument],
    ensemble: EnsembleDocument,
    training: TrainingSettings,
    seed: int,
    history: list[IterationRecord],
    labels_used: int | None = None,
    screening: ScreeningSummary | None = None,
    budget_limited: bool = False,
    facts: dict[str, Any] | None = None,
    restart_error: float | None = None,
) -> LoopState:
    """Add the newly labelled frames to the training subsets; advance the MD starts.

    ``history``, ``labels_used`` and ``screening`` are the controller's record up to this
    iteration (small, passed by value: the controller's updated state is not stored
    anywhere else); ``facts`` are the exploration's per-temperature numbers
    (:func:`exploration_facts`).

    A walker continues its trajectory in the next iteration, unless it blew up or its
    labelled frames show that the ensemble was off by more than ``restart_error``
    (meV/atom) in energy: it then sat in a false basin of that ensemble (a hallucinated
    state) and restarts from R0 with fresh velocities, rather than lead the next, barely
    corrected ensemble deeper into it.
    """
    new = [f.with_info(role="train") for f in labelled.frames]
    train = assign_subsets(
        list(state.train.frames) + new,
        training.n_sub,
        seed + state.iteration + 1,
        valid_fraction=training.valid_fraction,
    )
    starts = dict(state.starts)
    errors = _energy_errors(labelled.frames)
    restarts: dict[str, str] = {}
    n_scored = n_accepted = 0
    for doc in explorations:
        n_scored += doc.n_scored
        n_accepted += doc.n_accepted
        key = _tkey(doc.temperature)
        worst = max(errors.get(key, [0.0]))
        if doc.stopped_by == "blowup":
            restarts[key] = f"blew up at step {doc.blowup['step'] if doc.blowup else '?'}"
        elif restart_error is not None and worst > restart_error:
            restarts[key] = (
                f"a labelled frame's energy was {worst:.0f} meV/atom off the ensemble's "
                f"(limit {restart_error:g})"
            )
        elif doc.last_frame is not None:
            # The next ensemble starts where the last one left off, so exploration
            # reaches further in time each iteration.
            starts[key] = doc.last_frame
            continue
        if state.r0 is not None:
            starts[key] = state.r0.with_info(temperature=float(doc.temperature))
            logger.info("walker at %s K restarts from R0: %s", key, restarts[key])
    calibration = _calibration(ensemble, labelled.frames)
    pending = {
        "n_scored": n_scored,
        "n_selected": labelled.n_requested,
        "n_labelled": labelled.n_labelled,
        "n_label_failures": labelled.n_failed,
        "label_failure_reasons": [f.reason for f in labelled.failures[:3]],
        "acceptance_fraction": n_accepted / n_scored if n_scored else 0.0,
        "calibration": calibration,
        "budget_limited": bool(budget_limited),
        "n_blowups": sum(doc.stopped_by == "blowup" for doc in explorations),
        "restarts": restarts,
        **(facts or {}),
    }
    return state.model_copy(
        update={
            "iteration": state.iteration + 1,
            "history": list(history),
            "train": FrameSet(frames=train),
            "test": None,
            "starts": starts,
            "labels_used": (state.labels_used if labels_used is None else labels_used)
            + labelled.n_requested
            - labelled.n_reused,
            "screening": screening if screening is not None else state.screening,
            "last_acceptance_fraction": pending["acceptance_fraction"],
            "pending": pending,
        }
    )


def _energy_errors(frames: list[Frame]) -> dict[str, list[float]]:
    """|E_ref − E_ensemble| per atom (meV/atom) of labelled MLIP-MD frames, per temperature."""
    out: dict[str, list[float]] = {}
    for f in frames:
        e_mlip, t = f.info.get("energy_mlip"), f.info.get("temperature")
        if e_mlip is None or t is None or f.energy is None:
            continue
        err = abs(float(f.energy) - float(e_mlip)) / f.n_atoms * 1000.0
        out.setdefault(_tkey(t), []).append(err)
    return out


def _calibration(ensemble: EnsembleDocument, frames: list[Frame]) -> list[dict[str, float]]:
    """Predicted uncertainty of each new frame against the ensemble's true force error."""
    if not frames:
        return []
    from active_mlip.makers.ensemble import EnsembleCalculator

    calc = EnsembleCalculator.from_document(ensemble, device="cpu")
    results = calc.evaluate([f.to_atoms() for f in frames])
    out = []
    for f, res in zip(frames, results, strict=True):
        err = np.asarray(res["forces"]) - np.asarray(f.forces)
        out.append(
            {
                "uncertainty": float(f.info.get("uncertainty", np.nan)),
                "force_rmse_meV_per_A": float(np.sqrt(np.mean(err**2)) * 1000),
                "force_max_error_meV_per_A": float(np.max(np.linalg.norm(err, axis=1)) * 1000),
            }
        )
    return out


def _tkey(t: float) -> str:
    return f"{float(t):g}"


# ---------------------------------------------------------------------------------------
# The controller
# ---------------------------------------------------------------------------------------
def _shared_budget_spent(settings: ActiveLearningSettings) -> str | None:
    """Why the loop stops when the campaign's shared budget has nothing left, else None."""
    shared = settings.loop.shared_budget
    if shared is None:
        return None
    spent = label_budget.used(_shared_store(), shared)
    if spent < shared.total:
        return None
    return f"campaign label budget spent: {spent} of {shared.total} labels of {shared.name!r} used"


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def decide(
    state: LoopState,
    ensemble: EnsembleDocument,
    evaluation: EvaluationDocument,
    settings: ActiveLearningSettings,
    state_uuid: str,
    ensemble_uuid: str,
    evaluation_uuid: str,
    exploration_uuids: list[str],
    label_uuid: str | None,
) -> Response | LoopResult:
    """Record the iteration; stop when converged, otherwise append the next iteration."""
    now = time.time()
    previous_end = state.history[-1].finished_at if state.history else state.started_at
    pending = state.pending
    record = IterationRecord(
        iteration=state.iteration,
        n_train=len(state.train.frames),
        n_test=evaluation.n_frames,
        test_mae_energy_meV_per_atom=evaluation.mae_energy_meV_per_atom,
        test_mae_forces_meV_per_A=evaluation.mae_forces_meV_per_A,
        test_rmse_energy_meV_per_atom=evaluation.rmse_energy_meV_per_atom,
        test_rmse_forces_meV_per_A=evaluation.rmse_forces_meV_per_A,
        test_mae_sigma_a=evaluation.mae_sigma_a,
        uncertainty_key=evaluation.reference.key,
        uncertainty_mean=evaluation.reference.u_mean,
        uncertainty_std=evaluation.reference.u_std,
        wall_seconds=now - previous_end,
        finished_at=now,
        ensemble_uuid=ensemble_uuid,
        evaluation_uuid=evaluation_uuid,
        test_statistics_by_temperature={
            t: {"u_mean": r.u_mean, "u_std": r.u_std, "e_mean": r.e_mean, "e_std": r.e_std}
            for t, r in evaluation.reference_by_temperature.items()
        },
    )
    history = list(state.history)
    if history and pending:
        # The exploration/labelling that produced this iteration's new data belongs to the
        # iteration before (its ensemble chose the frames).
        history[-1] = history[-1].model_copy(
            update={
                "n_scored": pending["n_scored"],
                "n_selected": pending["n_selected"],
                "n_labelled": pending["n_labelled"],
                "n_label_failures": pending["n_label_failures"],
                "label_failure_reasons": pending.get("label_failure_reasons", []),
                "acceptance_fraction": pending["acceptance_fraction"],
                "budget_limited": pending.get("budget_limited", False),
                "n_blowups": pending.get("n_blowups", 0),
                "exploration_uuids": exploration_uuids,
                "label_uuid": label_uuid,
                "calibration": pending["calibration"],
                "md_ps": pending.get("md_ps", {}),
                "restarts": pending.get("restarts", {}),
                "acceptance_statistics": pending.get("acceptance_statistics", {}),
            }
        )
    history.append(record)
    state = state.model_copy(update={"history": history, "pending": {}})
    logger.info(
        "%s iteration %d: %d training frames, test force MAE %.1f meV/A, energy MAE %.2f meV/atom",
        state.material,
        state.iteration,
        record.n_train,
        record.test_mae_forces_meV_per_A,
        record.test_mae_energy_meV_per_atom,
    )

    uuids = {
        "state": state_uuid,
        "ensemble": ensemble_uuid,
        "evaluation": evaluation_uuid,
        "fc": state.fc_uuid,
        "initial": state.test_uuid,
    }
    if state.iteration == 0 and settings.screening.enabled:
        # Screen the first ensemble; the gate then stops ('ok') or continues the loop.
        screen = _screening_flow(state, settings, uuids)
        route(screen, settings.routing)
        return Response(replace=screen)

    stop = stopping_reason(state, settings)
    if stop is None and (why := _shared_budget_spent(settings)) is not None:
        stop = (False, why)  # nothing to label with: exploring and retraining would be waste
    if stop is not None:
        converged, reason = stop
        logger.info("%s: stopping after iteration %d: %s", state.material, state.iteration, reason)
        return LoopResult(
            material=state.material,
            converged=converged,
            stop_reason=reason,
            stop_details=plateau(state.history, settings.loop),
            state=state,
        )

    next_flow = _iteration_flow(state=state, settings=settings, uuids=uuids)
    route(next_flow, settings.routing)
    return Response(replace=next_flow)


#: Quota of the screening MD: never reached, the MD runs its full length.
_NO_QUOTA = 10**9


def _light(state: LoopState) -> LoopState:
    """The state without its frames, to pass by value (frames travel by reference)."""
    return state.model_copy(update={"train": FrameSet(), "test": None, "starts": {}})


def _screening_flow(
    state: LoopState, settings: ActiveLearningSettings, uuids: dict[str, str]
) -> Flow:
    """Short MLIP-MD, MLIP minima, reference checks, verdict, then the gate."""
    loop, scr = settings.loop, settings.screening
    material = state.material
    links = link(uuids)
    links.name = f"{material} screening link"
    tag(links, "glue")
    state_ref = links.output["state"]
    n_scored = max(1, scr.md_steps // settings.exploration.loginterval)
    # The screening MD is judged by its own diagnostics along the whole trajectory
    # (active_mlip.makers.diagnostics), from its first step: no equilibration or thermal window.
    md_settings = ExplorationSettings.model_validate(
        {
            **settings.exploration.model_dump(),
            "max_steps": scr.md_steps,
            "equilibration_ps": 0.0,
            "thermal_window_ps": 0.0,
            "sample_every": max(1, n_scored // scr.n_check),
        }
    )
    explorer = ExplorationMaker(settings=md_settings, selection=settings.selection)
    md = explorer.make_walkers(
        links.output["ensemble"],
        [state_ref.starts[_tkey(t)] for t in loop.temperatures],
        links.output["evaluation"].reference,
        temperatures=list(loop.temperatures),
        n_new=_NO_QUOTA,
        seeds=[_seed(loop.seed, 0, k) + 500 for k in range(len(loop.temperatures))],
    )
    md.name = f"{material} screening MD"
    tag(md, "exploration")
    minima = MLIPMinimaMaker(settings=scr).make(links.output["ensemble"], md.output.explorations)
    minima.name = f"{material} screening minima"
    tag(minima, "exploration")
    frames = frames_to_check(md.output.explorations, minima.output)
    frames.name = f"{material} screening frames"
    tag(frames, "glue")
    label = LabelMaker(labeller=settings.labeller).make(frames.output.frames)
    label.name = f"{material} screening labels"
    tag(label, "labelling")
    verdict = judge(
        material,
        links.output["evaluation"],
        md.output.explorations,
        label.output,
        links.output["fc"],
        scr,
    )
    verdict.name = f"{material} screening verdict"
    tag(verdict, "evaluation")  # light; 'evaluation' so that status shows the verdict
    gate = screening_gate(
        verdict.output,
        _light(state),
        state_ref.train,
        state_ref.starts,
        settings,
        uuids,
        verdict.uuid,
    )
    gate.name = f"{material} screening gate"
    tag(gate, "controller")
    jobs = [links, md, minima, frames, label, verdict, gate]
    return Flow(jobs, output=gate.output, name=f"{material} screening")


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def screening_gate(
    screening: ScreeningDocument,
    state: LoopState,
    train: FrameSet,
    starts: dict[str, Frame],
    settings: ActiveLearningSettings,
    uuids: dict[str, str],
    screening_uuid: str,
) -> Response | LoopResult:
    """Stop a material judged 'ok'; send a flagged one on to active learning."""
    summary = ScreeningSummary(
        verdict=screening.verdict,
        flags=list(screening.flags),
        evidence=[e.message for e in screening.evidence],
        n_labels=screening.n_labels,
        screening_uuid=screening_uuid,
    )
    state = state.model_copy(
        update={"screening": summary, "labels_used": state.labels_used + screening.n_labels}
    )
    shared = settings.loop.shared_budget
    if shared is not None:  # spent already: charged even if the pool is short
        label_budget.draw(
            _shared_store(), shared, f"{state.material}:screening", screening.n_labels, True
        )
    full = state.model_copy(update={"train": train, "starts": starts})
    if screening.verdict == "ok":
        return LoopResult(
            material=state.material,
            converged=False,
            stop_reason=f"screening: {screening.summary}; no active learning needed",
            state=full,
        )
    stop = stopping_reason(state, settings)
    if stop is None and (why := _shared_budget_spent(settings)) is not None:
        stop = (False, why)
    if stop is not None:
        converged, reason = stop
        return LoopResult(
            material=state.material,
            converged=converged,
            stop_reason=f"{reason} (screening: {screening.verdict})",
            state=full,
        )
    logger.info("%s flagged (%s): active learning follows", state.material, screening.summary)
    next_flow = _iteration_flow(state=state, settings=settings, uuids=uuids)
    route(next_flow, settings.routing)
    return Response(replace=next_flow)


def plateau(history: list[IterationRecord], loop: Any) -> dict[str, Any]:
    """The numbers of the convergence test over the last ``loop.converge_window`` iterations.

    Converged means a plateau of the test set's force MAE and of σ_U, the spread of the
    uncertainty over the test set (ALmoMD's criterion): the relative range
    (max − min)/max of each over the window is within its tolerance.
    """
    w = loop.converge_window
    recent = history[-w:]
    out: dict[str, Any] = {
        "window": w,
        "iterations": [h.iteration for h in recent],
        "test_mae_forces_meV_per_A": [h.test_mae_forces_meV_per_A for h in recent],
        "uncertainty_std": [h.uncertainty_std for h in recent],
        "force_mae_rtol": loop.force_mae_rtol,
        "uncertainty_rtol": loop.uncertainty_rtol,
    }
    if len(recent) < w:
        return {**out, "plateau": False}
    rel = {
        key: (max(v) - min(v)) / max(max(v), 1e-300)
        for key, v in (
            ("force_mae_range", out["test_mae_forces_meV_per_A"]),
            ("uncertainty_std_range", out["uncertainty_std"]),
        )
    }
    ok = rel["force_mae_range"] <= loop.force_mae_rtol and (
        rel["uncertainty_std_range"] <= loop.uncertainty_rtol
    )
    return {**out, **rel, "plateau": bool(ok)}


def stopping_reason(state: LoopState, settings: ActiveLearningSettings) -> tuple[bool, str] | None:
    """Return (converged, reason) when the loop should stop after the latest iteration.

    An exploration that accepted nothing never reaches here: :func:`proceed` stops the
    loop before any retraining, with its own reason stated in picoseconds of MD.
    """
    loop = settings.loop
    history = state.history
    p = plateau(history, loop)
    if p["plateau"]:
        maes, sus = p["test_mae_forces_meV_per_A"], p["uncertainty_std"]
        return True, (
            f"converged: over iterations {p['iterations'][0]}-{p['iterations'][-1]} the test "
            f"force MAE stayed within {p['force_mae_range']:.1%} ({min(maes):.1f}-"
            f"{max(maes):.1f} meV/Å; tolerance {loop.force_mae_rtol:.0%}) and σ_U within "
            f"{p['uncertainty_std_range']:.1%} ({min(sus):.4g}-{max(sus):.4g}; tolerance "
            f"{loop.uncertainty_rtol:.0%})"
        )
    last = history[-2] if len(history) > 1 else None
    if last is not None and last.n_label_failures > 0 and last.n_labelled == 0:
        # Every single point failed: another iteration would explore and fail again.
        reasons = "; ".join(last.label_failure_reasons) or "no reason recorded"
        return False, (
            f"labeller failed on every frame: 0 of {last.n_selected} single points of "
            f"iteration {last.iteration} were labelled ({reasons})"
        )
    if state.iteration + 1 >= loop.max_iterations:
        return False, f"max_iterations ({loop.max_iterations}) reached"
    if loop.max_labels is not None and state.labels_used >= loop.max_labels:
        return False, f"label budget ({loop.max_labels}) used: {state.labels_used} labels"
    return None


def exploration_facts(
    explorations: list[ExplorationDocument], settings: ActiveLearningSettings
) -> dict[str, Any]:
    """Per temperature: the statistics frames were judged against and what was found."""
    sel = settings.selection
    md_ps: dict[str, float] = {}
    stats: dict[str, dict[str, Any]] = {}
    for doc in explorations:
        key = _tkey(doc.temperature)
        md_ps[key] = md_ps.get(key, 0.0) + doc.md_ps
        row = stats.setdefault(
            key, {"n_scored": 0, "n_accepted": 0, "n_precursors": 0, "md_ps": 0.0}
        )
        row["n_scored"] += doc.n_scored
        row["n_accepted"] += doc.n_accepted
        row["n_precursors"] += doc.n_precursors
        row["md_ps"] += doc.md_ps
        row["equilibration_ps"] = doc.equilibration_steps * settings.exploration.timestep_fs / 1e3
        if doc.blowup:
            row["blowup"] = doc.blowup
        ref = doc.acceptance_reference
        if ref is not None:
            row.update(
                u_mean=ref.u_mean,
                u_std=ref.u_std,
                u_threshold=ref.u_mean + sel.shift * ref.u_std,
                e_mean=ref.e_mean,
                e_std=ref.e_std,
                e_knee=ref.e_mean + sel.knee * ref.e_std,
                energy_reference=doc.energy_reference_source,
                n_reference_frames=ref.n_frames,
            )
    return {"md_ps": md_ps, "acceptance_statistics": stats}


def _nothing_accepted(facts: dict[str, Any]) -> str:
    """Why an exploration gave nothing to label, in picoseconds of MD per temperature."""
    parts = []
    for key, row in facts["acceptance_statistics"].items():
        text = f"{row['md_ps']:.3g} ps of MLIP-MD at {key} K"
        if "u_threshold" in row:
            text += (
                f" ({row['n_scored']} frames scored against Ū + s·σ_U = "
                f"{row['u_threshold']:.4g} and Ē = {row['e_mean']:.6g} eV)"
            )
        if "blowup" in row:
            b = row["blowup"]
            text += f", blown up at step {b['step']}: {b['reason']}"
        parts.append(text)
    return "no frame accepted in " + "; ".join(parts)


@job
def link(uuids: dict[str, str]) -> dict[str, OutputReference]:
    """References to earlier outputs, for the jobs of a new iteration.

    A flow that a job creates may only reference jobs inside it (jobflow's FireWorks
    manager checks this), yet each iteration needs earlier outputs: the loop state, the
    ensemble, the test set. This job's output holds references to them; jobflow
    resolves references nested in an output when it is read, so nothing is copied.
    """
    return {key: OutputReference(uuid) for key, uuid in uuids.items()}


def _iteration_flow(
    state: LoopState, settings: ActiveLearningSettings, uuids: dict[str, str]
) -> Flow:
    """Explore with the current ensemble and collect; :func:`proceed` takes it from there."""
    loop = settings.loop
    i = state.iteration
    links = link(uuids)
    links.name = f"{state.material} it{i} link"
    tag(links, "glue")
    state_ref = links.output["state"]
    ensemble_ref = links.output["ensemble"]
    evaluation_ref = links.output["evaluation"]
    n_t = len(loop.temperatures)
    per_t = math.ceil(loop.n_new / n_t)
    jobs: list[Job | Flow] = [links]
    explorer = ExplorationMaker(settings=settings.exploration, selection=settings.selection)
    seeds = [_seed(loop.seed, i, k) for k in range(n_t)]
    batched = bool(loop.batch_walkers and n_t > 1)
    if batched:
        # All temperatures in one job: one batched ensemble evaluation per MD step.
        batch = explorer.make_walkers(
            ensemble_ref,
            [state_ref.starts[_tkey(t)] for t in loop.temperatures],
            evaluation_ref.reference,
            temperatures=list(loop.temperatures),
            n_new=per_t,
            seeds=seeds,
            by_temperature=evaluation_ref.reference_by_temperature,
        )
        temps = ",".join(f"{t:g}K" for t in loop.temperatures)
        batch.name = f"{state.material} it{i} explore {temps}"
        explorations = [batch]
        outputs: Any = batch.output.explorations
    else:
        explorations = []
        for k, t in enumerate(loop.temperatures):
            explore = explorer.make(
                ensemble_ref,
                state_ref.starts[_tkey(t)],
                evaluation_ref.reference,
                temperature=t,
                n_new=per_t,
                seed=seeds[k],
                by_temperature=evaluation_ref.reference_by_temperature,
            )
            explore.name = f"{state.material} it{i} explore {t:g}K"
            explorations.append(explore)
        outputs = [e.output for e in explorations]
    for e in explorations:
        tag(e, "exploration")
    jobs.extend(explorations)
    budget = None if loop.max_labels is None else loop.max_labels - state.labels_used
    collect = collect_candidates(
        outputs,
        loop.n_new,
        i,
        budget,
        shared=loop.shared_budget,
        key=f"{state.material}:it{i}:collect",
    )
    collect.name = f"{state.material} it{i} collect"
    tag(collect, "glue")
    gate = proceed(
        collect.output,
        outputs,
        _light(state),
        state_ref.train,
        state_ref.starts,
        settings,
        {
            **uuids,
            "collect": collect.uuid,
            **{f"explore{k}": e.uuid for k, e in enumerate(explorations)},
        },
        batched,
    )
    gate.name = f"{state.material} it{i} proceed"
    tag(gate, "controller")
    jobs += [collect, gate]
    return Flow(jobs, output=gate.output, name=f"{state.material} iteration {i + 1}")


@job(data=DATA_FIELDS)
def proceed(
    candidates: Candidates,
    explorations: list[ExplorationDocument],
    state: LoopState,
    train: FrameSet,
    starts: dict[str, Frame],
    settings: ActiveLearningSettings,
    uuids: dict[str, str],
    batched: bool,
) -> Response | LoopResult:
    """Label, merge, retrain and evaluate what the exploration found; stop if it found nothing.

    An exploration ends with its quota filled or its MD budget used. With nothing to
    label, another training would see unchanged data: the loop stops here, and says how
    much MD found nothing. That is not convergence (acceptance is a z-score against the
    test set, so even a good ensemble accepts some frames given enough MD).

    ``state`` is the controller's state without its frames (by value); ``train`` and
    ``starts`` are its frames (by reference). ``uuids`` name the outputs the next jobs
    read (through a :func:`link`, as a created flow may only reference its own jobs).
    """
    loop = settings.loop
    i = state.iteration
    material = state.material
    facts = exploration_facts(explorations, settings)
    n_explore = sum(k.startswith("explore") for k in uuids)
    if not candidates.frames:
        history = list(state.history)
        history[-1] = history[-1].model_copy(
            update={
                "n_scored": sum(d.n_scored for d in explorations),
                "n_selected": 0,
                "acceptance_fraction": 0.0,
                "budget_limited": candidates.budget_limited,
                "n_blowups": sum(d.stopped_by == "blowup" for d in explorations),
                "exploration_uuids": [uuids[f"explore{k}"] for k in range(n_explore)],
                "md_ps": facts["md_ps"],
                "acceptance_statistics": facts["acceptance_statistics"],
            }
        )
        if candidates.budget_limited:
            shared = loop.shared_budget
            reason = (
                f"campaign label budget spent: {shared.name if shared else 'the campaign'!r} "
                f"granted no labels for iteration {i + 1}"
            )
        else:
            reason = _nothing_accepted(facts)
        logger.info("%s: stopping after iteration %d: %s", material, i, reason)
        full = state.model_copy(update={"history": history, "train": train, "starts": starts})
        return LoopResult(
            material=material,
            converged=False,
            stop_reason=reason,
            stop_details=facts,
            state=full,
        )

    links = link(uuids)
    links.name = f"{material} it{i} link labels"
    tag(links, "glue")
    collect = links.output["collect"]
    if batched:
        outputs: Any = links.output["explore0"].explorations
    else:
        outputs = [links.output[f"explore{k}"] for k in range(n_explore)]
    label = LabelMaker(labeller=settings.labeller).make(collect.frames)
    label.name = f"{material} it{i} label"
    tag(label, "labelling")
    budget = None if loop.max_labels is None else loop.max_labels - state.labels_used
    quota = loop.n_new if budget is None else max(0, min(loop.n_new, budget))
    topped = top_up(
        [label.output],
        collect.reserve,
        quota,
        settings.labeller,
        shared=loop.shared_budget,
        key=f"{material}:it{i}",
    )
    topped.name = f"{material} it{i} top up labels"
    tag(topped, "labelling")
    new_state = merge(
        links.output["state"],
        topped.output,
        outputs,
        links.output["ensemble"],
        settings.training,
        loop.seed,
        history=state.history,
        labels_used=state.labels_used,
        screening=state.screening,
        budget_limited=candidates.budget_limited,
        facts=facts,
        restart_error=loop.restart_error_meV_per_atom,
    )
    new_state.name = f"{material} it{i + 1} merge"
    tag(new_state, "glue")
    jobs: list[Job | Flow] = [links, label, topped, new_state]
    jobs += _train_evaluate_decide(
        material=material,
        iteration=i + 1,
        settings=settings,
        state_job=new_state,
        e0s=state.e0s,
        previous=links.output["ensemble"],
        fc=links.output["fc"],
        test_frames=links.output["initial"].test.frames,
        exploration_uuids=[uuids[f"explore{k}"] for k in range(n_explore)],
        label_uuid=label.uuid,
    )
    flow = Flow(jobs, output=jobs[-1].output, name=f"{material} iteration {i + 1} training")
    route(flow, settings.routing)
    return Response(replace=flow)


def _train_evaluate_decide(
    material: str,
    iteration: int,
    settings: ActiveLearningSettings,
    state_job: Job,
    e0s: Any,
    previous: Any,
    fc: Any,
    test_frames: Any,
    exploration_uuids: list[str],
    label_uuid: str | None,
) -> list[Job | Flow]:
    fc_ref = fc
    warm = previous if settings.training.warm_start else None
    train = EnsembleTrainingMaker(settings=settings.training).make(
        state_job.output.train.frames, e0s, previous=warm, reference_frame=fc_ref.reference
    )
    train.name = f"{material} it{iteration} train"
    tag(train, "training", prefix=f"{material} it{iteration}")
    evaluate = TestEvaluationMaker(selection=settings.selection).make(
        train.output, test_frames, fc_ref
    )
    evaluate.name = f"{material} it{iteration} evaluate"
    tag(evaluate, "evaluation")
    control = decide(
        state_job.output,
        train.output,
        evaluate.output,
        settings,
        state_uuid=state_job.uuid,
        ensemble_uuid=train.output.uuid,
        evaluation_uuid=evaluate.uuid,
        exploration_uuids=exploration_uuids,
        label_uuid=label_uuid,
    )
    control.name = f"{material} it{iteration} decide"
    tag(control, "controller")
    return [train, evaluate, control]


def _seed(seed: int, iteration: int, k: int) -> int:
    return int(seed) * 1_000_003 + 1000 * iteration + k


# ---------------------------------------------------------------------------------------
# The Maker
# ---------------------------------------------------------------------------------------
@dataclass
class ActiveLearningMaker(Maker):
    """Active learning of a MACE ensemble for one material (Kang et al., PRM 9, 063801).

    Parameters
    ----------
    name
        Flow name.
    settings
        All settings of the run (:class:`active_mlip.workflows.settings.ActiveLearningSettings`).
    """

    name: str = "active learning"
    settings: ActiveLearningSettings = field(default_factory=ActiveLearningSettings)

    def make(self, structure: Structure, material: str | None = None) -> Flow:
        """Build the flow for ``structure`` (a conventional or primitive cell).

        Bad input (empty, non-periodic or overlapping structures, elements the labeller
        cannot handle) raises ``ValueError`` here, before any job runs.
        """
        from active_mlip.workflows.materials import default_supercell, validate_structure

        settings = self.settings
        loop = settings.loop
        material = material or structure.composition.reduced_formula
        validate_structure(structure, source=material)
        # None: the material's own supercell (the screening set names one per entry).
        supercell = structure * (loop.supercell or default_supercell(material))
        reference = Frame.from_atoms(AseAtomsAdaptor.get_atoms(supercell), source="reference")
        validate_frames([reference], settings.labeller)
        elements = sorted({site.specie.symbol for site in supercell})
        if loop.initial == "trajectory":
            check_trajectory(loop.trajectory, reference, loop.n_initial + loop.n_test)

        jobs: list[Job | Flow] = []
        relaxation: Any = None
        if loop.relax:
            check_can_relax(settings.labeller)  # a DFT labeller fails here, before any job
            relax = RelaxMaker(labeller=settings.labeller, settings=settings.relaxation).make(
                reference
            )
            relax.name = f"{material} relax R0"
            tag(relax, "labelling")
            jobs.append(relax)
            relaxation = relax.output
            reference = relax.output.frame
        fc = ForceConstantsMaker(labeller=settings.labeller).make(reference)
        fc.name = f"{material} force constants"
        tag(fc, "labelling", prefix=material)
        jobs.append(fc)

        if loop.e0s == "isolated":
            e0 = isolated_energies(settings.labeller, elements)
            e0.name = f"{material} E0s"
            tag(e0, "labelling")
            jobs.append(e0)
            e0s: Any = e0.output
        else:
            missing = sorted(set(elements) - set(loop.e0s))
            if missing:
                raise ValueError(f"loop.e0s lacks reference energies for {missing}")
            e0s = dict(loop.e0s)

        if loop.initial == "harmonic":
            sampler = HarmonicSamplingMaker()
            n_each = math.ceil((loop.n_initial + loop.n_test) / len(loop.temperatures))
            sample_jobs = []
            for k, t in enumerate(loop.temperatures):
                s = sampler.make(
                    fc.output, temperature=t, n_samples=n_each, seed=_seed(loop.seed, 0, k)
                )
                s.name = f"{material} harmonic samples {t:g}K"
                tag(s, "glue")
                sample_jobs.append(s)
            pool = concat_frames([s.output for s in sample_jobs])
            pool.name = f"{material} initial pool"
            tag(pool, "glue")
            jobs += [*sample_jobs, pool]
            label = LabelMaker(labeller=settings.labeller).make(pool.output.frames)
        else:
            label = load_trajectory(loop.trajectory, settings.labeller.identity())
        label.name = f"{material} initial labels"
        tag(label, "labelling")
        jobs.append(label)

        init = initial_split(
            label.output,
            material,
            settings,
            reference,
            e0s,
            fc.output.uuid,
            relaxation=relaxation,
            unstable_modes=fc.output.unstable_modes,
        )
        init.name = f"{material} initial split"
        tag(init, "glue")
        jobs.append(init)
        jobs += _train_evaluate_decide(
            material=material,
            iteration=0,
            settings=settings,
            state_job=init,
            e0s=e0s,
            previous=None,
            fc=fc.output,
            test_frames=init.output.test.frames,
            exploration_uuids=[],
            label_uuid=label.uuid,
        )
        flow = Flow(jobs, output=jobs[-1].output, name=f"{material} {self.name}")
        route(flow, settings.routing)
        return flow


def check_trajectory(path: str, reference: Frame, needed: int) -> None:
    """Reject an aiMD file that cannot seed this run, before any job runs.

    Raises
    ------
    ValueError
        If the file is missing or unreadable, has frames without energies or forces,
        holds fewer frames than the initial and test sets need, or its atoms differ
        from the supercell's (count, species or order).
    """
    frames = import_trajectory(path)
    if len(frames) < needed:
        raise ValueError(
            f"trajectory {path!r} holds {len(frames)} frames; n_initial + n_test = {needed} "
            "are needed"
        )
    for i, f in enumerate(frames):
        if f.numbers != reference.numbers:
            raise ValueError(
                f"trajectory {path!r} frame {i} has atoms {_formula(f.numbers)} in another "
                f"order or number than the supercell ({_formula(reference.numbers)}); "
                "set loop.supercell to the trajectory's cell"
            )


def _formula(numbers: list[int]) -> str:
    from ase import Atoms

    return f"{Atoms(numbers=numbers).get_chemical_formula()} ({len(numbers)} atoms)"


@job(data=DATA_FIELDS)
def load_trajectory(path: str, identity: Any) -> LabelledBatch:
    """An aiMD trajectory (frames with energies and forces) as the initial labels.

    The trajectory must come from the same reference method as the labeller used in
    the loop (``identity``); energies of different methods cannot be mixed.
    """
    frames = [f.with_info(source="aimd") for f in import_trajectory(path)]
    return LabelledBatch(
        labeller=identity,
        frames=frames,
        n_requested=len(frames),
        n_labelled=len(frames),
        n_failed=0,
    )
