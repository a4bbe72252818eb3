"""One iteration of the loop as a Maker, and the controller jobs that chain iterations.

:class:`IterationMaker` holds the stage Makers an iteration uses (labelling, training,
exploration, test evaluation) as fields, in the style of atomate2's ``BasePhononMaker``;
``Flow.update_maker_kwargs`` reaches them, also in the iterations the controller creates
later, because every controller job carries the Maker it builds from.

An iteration::

    link ─► explore (per T, or batched) ─► collect ─► proceed
                                                        │ (nothing accepted: stop)
                                                        ▼
    link labels ─► label ─► top up ─► merge ─► train ─► evaluate ─► decide

``decide`` records the iteration and either stops (:mod:`~active_mlip.workflows.policy`
says why) or replaces itself with the next iteration (or, after the first ensemble, the
screening of :class:`~active_mlip.workflows.screening.ScreeningMaker`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Job, JobConfig, Maker, Response, job
from monty.json import MontyDecoder

from active_mlip.core.documents import as_model
from active_mlip.core.replacement import replacement
from active_mlip.makers.evaluation import EvaluationDocument, TestEvaluationMaker
from active_mlip.makers.exploration import ExplorationMaker
from active_mlip.makers.labelling import LabelMaker
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument
from active_mlip.makers.training import EnsembleTrainingMaker
from active_mlip.workflows import policy
from active_mlip.workflows.jobs import (
    Explorations,
    collect_candidates,
    exploration_outcome,
    link,
    merge,
    shared_budget_stop,
    top_up,
)
from active_mlip.workflows.routing import route, tag
from active_mlip.workflows.settings import ActiveLearningSettings
from active_mlip.workflows.state import (
    Candidates,
    FrameSet,
    IterationRecord,
    LoopRefs,
    LoopResult,
    LoopState,
    Walker,
)

logger = logging.getLogger(__name__)


def light(state: LoopState) -> LoopState:
    """The state without its frames, to pass by value (frames travel by reference)."""
    walkers = [w.model_copy(update={"start": None}) for w in state.walkers]
    return state.model_copy(update={"train": FrameSet(), "test": None, "walkers": walkers})


@dataclass
class TrainingInputs:
    """What an iteration's training and evaluation read besides the loop state.

    Built where a flow is built, so the fields may be output references.

    Parameters
    ----------
    material
        Name used in job names.
    e0s
        Isolated-atom energies (eV) by element.
    fc
        The force constants document (its ``reference`` frame anchors the ensemble).
    test_frames
        The labelled test set.
    previous
        The last ensemble (a warm start's parent), ``None`` for the first.
    """

    material: str
    e0s: Any
    fc: Any
    test_frames: Any
    previous: Any = None


@dataclass
class IterationMaker(Maker):
    """Explore with the current ensemble, label what it found, retrain, evaluate, decide.

    Parameters
    ----------
    name
        Flow name suffix.
    settings
        The run's settings (loop, routing; the stage Makers' defaults come from them).
    label_maker, training_maker, exploration_maker, evaluation_maker
        The stage Makers; ``None`` builds each from ``settings``.
    """

    name: str = "iteration"
    settings: ActiveLearningSettings = field(default_factory=ActiveLearningSettings)
    label_maker: LabelMaker | None = None
    training_maker: EnsembleTrainingMaker | None = None
    exploration_maker: ExplorationMaker | None = None
    evaluation_maker: TestEvaluationMaker | None = None

    def __post_init__(self) -> None:
        self.settings = s = as_model(self.settings, ActiveLearningSettings)
        if self.label_maker is None:
            self.label_maker = LabelMaker(labeller=s.labeller)
        if self.training_maker is None:
            self.training_maker = EnsembleTrainingMaker(settings=s.training)
        if self.exploration_maker is None:
            self.exploration_maker = ExplorationMaker(settings=s.exploration, selection=s.selection)
        if self.evaluation_maker is None:
            self.evaluation_maker = TestEvaluationMaker(selection=s.selection)

    def make(self, state: LoopState, refs: LoopRefs) -> Flow:
        """Explore and collect; the :func:`proceed` job takes it from there.

        ``state`` is the controller's state (by value); ``refs`` name the outputs of the
        iteration so far (state with frames, ensemble, evaluation, force constants, test set).
        """
        loop = self.settings.loop
        i = state.iteration
        links = link(refs)
        links.name = f"{state.material} it{i} link"
        tag(links, "glue", iteration=i)
        state_ref = links.output["state"]
        ensemble_ref = links.output["ensemble"]
        evaluation_ref = links.output["evaluation"]
        # Temperatures and seeds by value, the start frames by reference.
        temps = [w.temperature for w in state.walkers]
        seeds = [w.seed for w in state.walkers]
        per_t = math.ceil(loop.n_new / len(temps))
        starts = [state_ref.walkers[k].start for k in range(len(state.walkers))]
        explore = functools.partial(
            self.exploration_maker.make,
            ensemble_ref,
            reference=evaluation_ref.reference,
            n_new=per_t,
            by_temperature=evaluation_ref.reference_by_temperature,
        )
        if loop.batch_walkers:
            # All temperatures in one job: one batched ensemble evaluation per MD step.
            explorations = [explore(starts, temperatures=temps, seeds=seeds)]
            explorations[0].name = f"{state.material} it{i} explore " + ",".join(
                f"{t:g}K" for t in temps
            )
        else:  # one job per temperature (e.g. one GPU each)
            explorations = []
            for k, t in enumerate(temps):
                job_k = explore([starts[k]], temperatures=[t], seeds=[seeds[k]])
                job_k.name = f"{state.material} it{i} explore {t:g}K"
                explorations.append(job_k)
        outputs = [e.output for e in explorations]
        for e in explorations:
            tag(e, "exploration", iteration=i)
        _, left = policy.label_quota(loop, state.labels_used)
        collect = collect_candidates(
            outputs,
            loop.n_new,
            i,
            left,
            shared=loop.shared_budget,
            key=f"{state.material}:it{i}:collect",
        )
        collect.name = f"{state.material} it{i} collect"
        tag(collect, "glue", iteration=i)
        refs = refs.model_copy(
            update={
                "collect": collect.uuid,
                "explorations": [e.uuid for e in explorations],
            }
        )
        gate = proceed(
            collect.output, outputs, light(state), state_ref.train, state_ref.walkers, refs, self
        )
        gate.name = f"{state.material} it{i} proceed"
        tag(gate, "controller", iteration=i)
        jobs: list[Job | Flow] = [links, *explorations, collect, gate]
        return Flow(jobs, output=gate.output, name=f"{state.material} iteration {i + 1}")

    def train_evaluate_decide(
        self,
        state_job: Job,
        iteration: int,
        inputs: TrainingInputs,
        refs: LoopRefs,
        screening: Maker | None = None,
    ) -> list[Job]:
        """Train the ensemble on ``state_job``'s frames, evaluate it on the test set, decide.

        ``refs`` carries the uuids of the force constants, the test set and this
        iteration's explorations and labels; state, ensemble and evaluation are added here.
        ``screening`` is the :class:`~active_mlip.workflows.screening.ScreeningMaker` that
        ``decide`` runs after the first ensemble (typed ``Maker``: the screening module
        builds on this one, not the reverse).
        """
        material, previous, fc = inputs.material, inputs.previous, inputs.fc
        warm = previous if self.training_maker.settings.warm_start else None
        train = self.training_maker.make(
            state_job.output.train.frames, inputs.e0s, previous=warm, reference_frame=fc.reference
        )
        train.name = f"{material} it{iteration} train"
        tag(train, "training", prefix=f"{material} it{iteration}", iteration=iteration)
        evaluate = self.evaluation_maker.make(train.output, inputs.test_frames, fc)
        evaluate.name = f"{material} it{iteration} evaluate"
        tag(evaluate, "evaluation", iteration=iteration)
        refs = refs.model_copy(
            update={
                "state": state_job.uuid,
                "ensemble": train.output.uuid,
                "evaluation": evaluate.uuid,
            }
        )
        control = decide(state_job.output, train.output, evaluate.output, refs, self, screening)
        control.name = f"{material} it{iteration} decide"
        tag(control, "controller", iteration=iteration)
        return [train, evaluate, control]


def decoded(obj: Any) -> Any:
    """An argument as the object it serialises (a runner may hand over its MSON dict)."""
    if isinstance(obj, dict) and "@module" in obj:
        return MontyDecoder().process_decoded(obj)
    return obj


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def decide(
    state: LoopState,
    ensemble: EnsembleDocument,
    evaluation: EvaluationDocument,
    refs: LoopRefs,
    iteration: IterationMaker,
    screening: Maker | None = None,
) -> Response | LoopResult:
    """Record the iteration; stop when :mod:`~active_mlip.workflows.policy` says so,
    otherwise append the next iteration (or, after the first ensemble, the screening)."""
    iteration, screening, refs = decoded(iteration), decoded(screening), decoded(refs)
    settings = iteration.settings
    now = time.time()
    previous_end = state.history[-1].finished_at if state.history else state.started_at
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
        ensemble_uuid=refs.ensemble,
        evaluation_uuid=refs.evaluation,
        test_statistics_by_temperature={
            t: {"u_mean": r.u_mean, "u_std": r.u_std, "e_mean": r.e_mean, "e_std": r.e_std}
            for t, r in evaluation.reference_by_temperature.items()
        },
    )
    history = list(state.history)
    if history and state.pending is not None:
        # The exploration/labelling that produced this iteration's new data belongs to the
        # iteration before (its ensemble chose the frames).
        history[-1] = history[-1].model_copy(
            update={
                **state.pending.model_dump(),
                "exploration_uuids": list(refs.explorations),
                "label_uuid": refs.label,
            }
        )
    history.append(record)
    state = state.model_copy(update={"history": history, "pending": None})
    logger.info(
        "%s iteration %d: %d training frames, test force MAE %.1f meV/A, energy MAE %.2f meV/atom",
        state.material,
        state.iteration,
        record.n_train,
        record.test_mae_forces_meV_per_A,
        record.test_mae_energy_meV_per_atom,
    )
    # The next jobs read this iteration's outputs; it has no explorations of its own yet.
    refs = refs.model_copy(update={"explorations": [], "collect": None, "label": None})
    if state.iteration == 0 and settings.screening.enabled and screening is not None:
        # Screen the first ensemble; the gate then stops ('ok') or continues the loop.
        screen = screening.make(state, refs, iteration)
        route(screen, settings.routing)
        return Response(replace=replacement(screen))
    stop = policy.stopping_reason(state, settings)
    if stop is None and (why := shared_budget_stop(settings.loop.shared_budget)) is not None:
        stop = (False, why)  # nothing to label with: exploring and retraining would be waste
    if stop is not None:
        converged, reason = stop
        logger.info("%s: stopping after iteration %d: %s", state.material, state.iteration, reason)
        return LoopResult(
            material=state.material,
            converged=converged,
            stop_reason=reason,
            stop_details=policy.plateau(state.history, settings.loop),
            state=state,
        )
    next_flow = iteration.make(state, refs)
    route(next_flow, settings.routing)
    return Response(replace=replacement(next_flow))


@job(data=DATA_FIELDS)
def proceed(
    candidates: Candidates,
    explorations: Explorations,
    state: LoopState,
    train: FrameSet,
    walkers: list[Walker],
    refs: LoopRefs,
    iteration: IterationMaker,
) -> Response | LoopResult:
    """Label, merge, retrain and evaluate what the exploration found; stop if it found nothing.

    An exploration ends with its quota filled or its MD budget used. With nothing to
    label, another training would see unchanged data: the loop stops here, and says how
    much MD found nothing. That is not convergence (acceptance is a z-score against the
    test set, so even a good ensemble accepts some frames given enough MD).

    ``state`` is the controller's state without its frames (by value); ``train`` and
    ``walkers`` are its frames (by reference). ``refs`` name the outputs the next jobs
    read (through a :func:`~active_mlip.workflows.jobs.link`, as a created flow may only
    reference its own jobs).
    """
    iteration, refs = decoded(iteration), decoded(refs)
    settings = iteration.settings
    loop = settings.loop
    i = state.iteration
    material = state.material
    outcome = exploration_outcome(explorations, settings).model_copy(
        update={"budget_limited": candidates.budget_limited}
    )
    if not candidates.frames:
        history = list(state.history)
        history[-1] = history[-1].model_copy(
            update={
                "n_scored": outcome.n_scored,
                "n_selected": 0,
                "acceptance_fraction": 0.0,
                "budget_limited": candidates.budget_limited,
                "n_blowups": outcome.n_blowups,
                "exploration_uuids": list(refs.explorations),
                "md_ps": outcome.md_ps,
                "acceptance_statistics": outcome.acceptance_statistics,
            }
        )
        if candidates.budget_limited:
            shared = loop.shared_budget
            reason = (
                f"campaign label budget spent: {shared.name if shared else 'the campaign'!r} "
                f"granted no labels for iteration {i + 1}"
            )
        else:
            reason = policy.nothing_accepted(outcome.model_dump())
        logger.info("%s: stopping after iteration %d: %s", material, i, reason)
        full = state.model_copy(update={"history": history, "train": train, "walkers": walkers})
        return LoopResult(
            material=material,
            converged=False,
            stop_reason=reason,
            stop_details={
                "md_ps": outcome.md_ps,
                "acceptance_statistics": outcome.acceptance_statistics,
            },
            state=full,
        )

    links = link(refs)
    links.name = f"{material} it{i} link labels"
    tag(links, "glue", iteration=i)
    collect = links.output["collect"]
    outputs = links.output["explorations"]
    label = iteration.label_maker.make(collect.frames)
    label.name = f"{material} it{i} label"
    tag(label, "labelling", iteration=i)
    quota, _ = policy.label_quota(loop, state.labels_used)
    topped = top_up(
        [label.output],
        collect.reserve,
        quota,
        iteration.label_maker.labeller,
        shared=loop.shared_budget,
        key=f"{material}:it{i}",
    )
    topped.name = f"{material} it{i} top up labels"
    tag(topped, "labelling", iteration=i)
    new_state = merge(
        links.output["state"],
        state,
        topped.output,
        outputs,
        links.output["ensemble"],
        settings,
        outcome,
    )
    new_state.name = f"{material} it{i + 1} merge"
    tag(new_state, "glue", iteration=i + 1)
    jobs: list[Job | Flow] = [links, label, topped, new_state]
    inputs = TrainingInputs(
        material=material,
        e0s=state.e0s,
        fc=links.output["fc"],
        test_frames=links.output["initial"].test.frames,
        previous=links.output["ensemble"],
    )
    refs = refs.model_copy(update={"label": label.uuid})
    jobs += iteration.train_evaluate_decide(new_state, i + 1, inputs, refs)
    flow = Flow(jobs, output=jobs[-1].output, name=f"{material} iteration {i + 1} training")
    route(flow, settings.routing)
    return Response(replace=replacement(flow))
