"""The loop's glue jobs: initial split, candidates, top-up, merge, links.

Light jobs (they run wherever the routing table sends ``glue``); the stage Makers
(:mod:`active_mlip.makers`) do the heavy work, the controller jobs
(:mod:`active_mlip.workflows.iteration`) compose them.

Just over 500 lines: the glue jobs are small and independent; one module keeps the
loop's bookkeeping in one place to read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ase import Atoms
from jobflow import CURRENT_JOB, Flow, JobConfig, OutputReference, Response, job

from active_mlip.core.documents import as_model, without_mson_keys
from active_mlip.core.frames import Frame
from active_mlip.core.hashing import content_hash
from active_mlip.core.replacement import replacement
from active_mlip.makers.exploration import ExplorationBatchDocument, ExplorationDocument
from active_mlip.makers.labelling import LabelMaker, label_in_process, labeller_from_dict
from active_mlip.makers.sampling import import_trajectory
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument, LabelFailure, LabelledBatch
from active_mlip.makers.training import assign_subsets
from active_mlip.stores import budget as label_budget
from active_mlip.stores.cache import ResultCache
from active_mlip.workflows import policy
from active_mlip.workflows.settings import ActiveLearningSettings
from active_mlip.workflows.state import (
    CANDIDATE_FIELDS,
    Candidates,
    ExplorationOutcome,
    FrameSet,
    LoopRefs,
    LoopState,
    ToppedUpBatch,
    Walker,
)

logger = logging.getLogger(__name__)

#: What exploration jobs give: their documents, or single walkers' (tests, older stores).
Explorations = list[ExplorationBatchDocument | ExplorationDocument]


def flatten_explorations(outputs: Explorations) -> list[ExplorationDocument]:
    """One document per walker, from the outputs of one or more exploration jobs."""
    out: list[ExplorationDocument] = []
    for item in outputs:
        if isinstance(item, dict):  # a runner may hand over the serialised document
            cls = ExplorationBatchDocument if "explorations" in item else ExplorationDocument
            item = as_model(item, cls)
        out += item.explorations if isinstance(item, ExplorationBatchDocument) else [item]
    return out


def check_e0s(e0s: dict[str, float], elements: list[str], material: str) -> None:
    """Raise ``ValueError`` naming each element of ``material`` that ``e0s`` lacks.

    The message says how to give them: typed in ``loop.e0s`` or computed with
    ``loop.e0s: isolated``.
    """
    missing = sorted(set(elements) - set(e0s))
    if missing:
        example = ", ".join(f"{el}: <eV>" for el in elements)
        raise ValueError(
            f"loop.e0s has no reference energy (E0) for {', '.join(missing)} (needed by "
            f"{material}: {', '.join(elements)}). Give one per element in eV, "
            f"loop.e0s: {{{example}}}, or set loop.e0s: isolated to compute them with the "
            "labeller (isolated atoms)"
        )


@job(config=JobConfig(expose_store=True))
def isolated_energies(labeller: Any, elements: list[str]) -> dict[str, float]:
    """Reference energy per element from the labeller (isolated atoms in a box).

    Cached per element and labeller settings, so a resumed run does not repeat them.
    """

    labeller = labeller_from_dict(labeller)
    cache = ResultCache.from_current_job()
    ident = labeller.identity().settings_hash
    return {
        el: cache.get_or_compute(
            content_hash(["isolated-atom", el, ident]),
            "isolated_atom",
            lambda el=el: float(labeller.isolated_atom_energies([el])[el]),
            lambda hit: float(hit["energy"]),
            lambda e, el=el: {"element": el, "energy": e},
        )
        for el in elements
    }


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


def draw_shared(shared: Any, key: str, n: int, force: bool = False) -> int:
    """Draw ``n`` labels from a campaign's shared budget (None: no budget, all granted).

    ``force`` charges labels already spent (initial data, screening) even when the pool
    is short. The one place jobs draw from the shared ledger.
    """
    if shared is None:
        return n
    shared = label_budget.LabelBudget.model_validate(without_mson_keys(shared))
    return label_budget.draw(_shared_store(), shared, key, n, force)


def shared_budget_stop(shared: Any) -> str | None:
    """Why the loop stops now because the shared budget is spent (None: no budget or some left)."""
    if shared is None:
        return None
    shared = label_budget.LabelBudget.model_validate(without_mson_keys(shared))
    return policy.shared_budget_spent(
        label_budget.used(_shared_store(), shared), shared.total, shared.name
    )


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
    walkers = [
        Walker(
            temperature=t,
            start=reference.unlabelled(temperature=t),
            seed=policy.walker_seed(loop.seed, 0, k),
        )
        for k, t in enumerate(loop.temperatures)
    ]
    r0 = reference.unlabelled()
    r0.info.pop("labeller", None)
    n_used = labelled.n_labelled + labelled.n_failed
    draw_shared(loop.shared_budget, f"{material}:initial", n_used, force=True)
    return LoopState(
        material=material,
        train=FrameSet(frames=train),
        test=FrameSet(frames=test),
        e0s=e0s,
        walkers=walkers,
        r0=r0,
        labels_used=n_used,
        fc_uuid=fc_uuid,
        test_uuid=uuid,
        started_at=time.time(),
        relaxation=_relaxation_record(relaxation),
        unstable_modes=[without_mson_keys(_dump(m)) for m in unstable_modes or []],
    )


def _dump(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def _relaxation_record(doc: Any) -> dict[str, Any] | None:
    """The relaxation's numbers without its frame (that is R0, stored with the fc)."""
    if doc is None:
        return None
    data = without_mson_keys(_dump(doc))
    data.pop("frame", None)
    data["settings"] = without_mson_keys(_dump(data.get("settings")))
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
    explorations: Explorations,
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
    for doc in flatten_explorations(explorations):
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
        wanted = min(limit, len(pool))
        limit = draw_shared(shared, key, wanted)
        limited = limit < wanted
        if limited:
            logger.info("shared label budget granted %d of %d", limit, wanted)
    return Candidates(frames=pool[:limit], reserve=pool[limit:end], budget_limited=limited)


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
        granted = draw_shared(shared, f"{key}:topup:{combined.n_requested}", len(chunk))
        if granted == 0:
            logger.info("shared label budget spent: no replacements")
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
            # named after this job ("CuI it0 top up labels"): the GUI shows where they belong
            here = CURRENT_JOB.job.name if CURRENT_JOB.job is not None else "top up labels"
            label.name = f"{here}: replacements"
            nxt = top_up(
                [combined, label.output], reserve, n_wanted, labeller, shared=shared, key=key
            )
            nxt.name = here
            return Response(replace=replacement(Flow([label, nxt], output=nxt.output, name=here)))
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
    controller: LoopState,
    labelled: LabelledBatch,
    explorations: Explorations,
    ensemble: EnsembleDocument,
    settings: ActiveLearningSettings,
    outcome: ExplorationOutcome,
) -> LoopState:
    """Add the newly labelled frames to the training subsets; advance the MD starts.

    ``state`` is the loop state with its frames (by reference); ``controller`` is the
    controller's record up to this iteration (history, labels used, screening; small,
    by value: the controller's updated state is not stored anywhere else); ``outcome``
    holds what the exploration found (:func:`exploration_outcome`), completed here with
    what labelling did.

    A walker continues its trajectory in the next iteration unless
    :func:`~active_mlip.workflows.policy.walker_restart` sends it back to R0 with fresh
    velocities (it blew up, or sat in a false basin of its ensemble).
    """
    loop, training = settings.loop, settings.training
    explorations = flatten_explorations(explorations)
    new = [f.with_info(role="train") for f in labelled.frames]
    train = assign_subsets(
        list(state.train.frames) + new,
        training.n_sub,
        loop.seed + state.iteration + 1,
        valid_fraction=training.valid_fraction,
    )
    walkers = {policy.tkey(w.temperature): w for w in state.walkers}
    starts = {key: w.start for key, w in walkers.items()}
    errors = _energy_errors(labelled.frames)
    restarts: dict[str, str] = {}
    for doc in explorations:
        key = policy.tkey(doc.temperature)
        why = policy.walker_restart(
            doc.stopped_by,
            doc.blowup["step"] if doc.blowup else None,
            max(errors.get(key, [0.0])),
            loop.restart_error_meV_per_atom,
        )
        if why is None and doc.last_frame is not None:
            # The next ensemble starts where the last one left off, so exploration
            # reaches further in time each iteration.
            starts[key] = doc.last_frame
            continue
        if why is None:
            continue
        restarts[key] = why
        if state.r0 is not None:
            starts[key] = state.r0.with_info(temperature=float(doc.temperature))
            logger.info("walker at %s K restarts from R0: %s", key, why)
    n_scored = sum(doc.n_scored for doc in explorations)
    n_accepted = sum(doc.n_accepted for doc in explorations)
    pending = outcome.model_copy(
        update={
            "n_scored": n_scored,
            "n_selected": labelled.n_requested,
            "n_labelled": labelled.n_labelled,
            "n_label_failures": labelled.n_failed,
            "label_failure_reasons": [f.reason for f in labelled.failures[:3]],
            "acceptance_fraction": n_accepted / n_scored if n_scored else 0.0,
            "calibration": _calibration(ensemble, labelled.frames),
            "n_blowups": sum(doc.stopped_by == "blowup" for doc in explorations),
            "restarts": restarts,
        }
    )
    return state.model_copy(
        update={
            "iteration": state.iteration + 1,
            "history": list(controller.history),
            "train": FrameSet(frames=train),
            "test": None,
            "walkers": [
                w.model_copy(
                    update={
                        "start": starts[key],
                        "seed": policy.walker_seed(loop.seed, state.iteration + 1, k),
                    }
                )
                for k, (key, w) in enumerate(walkers.items())
            ],
            "labels_used": controller.labels_used + labelled.n_requested - labelled.n_reused,
            "screening": controller.screening or state.screening,
            "last_acceptance_fraction": pending.acceptance_fraction,
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
        out.setdefault(policy.tkey(t), []).append(err)
    return out


def _calibration(ensemble: EnsembleDocument, frames: list[Frame]) -> list[dict[str, float]]:
    """Predicted uncertainty of each new frame against the ensemble's true force error."""
    if not frames:
        return []
    from active_mlip.makers.ensemble import (
        EnsembleCalculator,  # torch loads only where the ensemble runs
    )

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


def exploration_outcome(
    explorations: Explorations, settings: ActiveLearningSettings
) -> ExplorationOutcome:
    """Per temperature: the statistics frames were judged against and what was found."""
    explorations = flatten_explorations(explorations)
    sel = settings.selection
    md_ps: dict[str, float] = {}
    stats: dict[str, dict[str, Any]] = {}
    for doc in explorations:
        key = policy.tkey(doc.temperature)
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
    return ExplorationOutcome(
        n_scored=sum(doc.n_scored for doc in explorations),
        n_blowups=sum(doc.stopped_by == "blowup" for doc in explorations),
        md_ps=md_ps,
        acceptance_statistics=stats,
    )


@job
def link(refs: LoopRefs) -> dict[str, Any]:
    """References to earlier outputs, for the jobs of a new iteration.

    A flow that a job creates may only reference jobs inside it (jobflow's FireWorks
    manager checks this), yet each iteration needs earlier outputs: the loop state, the
    ensemble, the test set. This job's output holds references to them (keys as in
    :class:`~active_mlip.workflows.state.LoopRefs`); jobflow resolves references nested
    in an output when it is read, so nothing is copied.
    """
    refs = LoopRefs.model_validate(without_mson_keys(refs))
    out: dict[str, Any] = {}
    for key in ("state", "ensemble", "evaluation", "fc", "initial", "collect", "label"):
        uuid = getattr(refs, key)
        if uuid is not None:
            out[key] = OutputReference(uuid)
    out["explorations"] = [OutputReference(u) for u in refs.explorations]
    return out


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
