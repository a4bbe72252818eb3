"""The screening campaign: many materials, one verdict each, active learning where needed.

A campaign here is the paper's screening: every material gets initial data and a first
ensemble, short MLIP-MD checked against the reference (:mod:`active_mlip.makers.diagnostics`), and
a verdict; flagged materials continue with the active-learning loop. ``screening-112``
is the built-in campaign over :func:`active_mlip.workflows.materials.load_screening_set`; a
campaign YAML (:mod:`active_mlip.workflows.campaign`) names any other set.

:func:`active_mlip.app.local_campaign.run_campaign_local` runs a campaign's materials
one after another on this machine.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field

from jobflow import Flow, JobConfig, Maker, Response, job

from active_mlip.core.replacement import replacement
from active_mlip.makers.diagnostics import ScreeningDocument
from active_mlip.makers.evaluation import TestEvaluationMaker
from active_mlip.makers.exploration import ExplorationMaker, ExplorationSettings
from active_mlip.makers.labelling import LabelMaker
from active_mlip.makers.reference_md import ReferenceMDMaker, ReferenceMDSettings
from active_mlip.makers.schemas import DATA_FIELDS
from active_mlip.makers.screening_jobs import MLIPMinimaMaker, frames_to_check, judge
from active_mlip.workflows import policy
from active_mlip.workflows.iteration import IterationMaker, decoded, light
from active_mlip.workflows.jobs import draw_shared, link, shared_budget_stop
from active_mlip.workflows.materials import load_screening_set
from active_mlip.workflows.routing import route, tag
from active_mlip.workflows.settings import ActiveLearningSettings
from active_mlip.workflows.state import (
    FrameSet,
    LoopRefs,
    LoopResult,
    LoopState,
    ScreeningSummary,
    Walker,
)

logger = logging.getLogger(__name__)

SCREENING_112 = "screening-112"
CAMPAIGN_FILE = "campaign.json"


def builtin_campaigns() -> dict[str, list[str]]:
    """Campaign name -> its material names, for the campaigns shipped with the package."""

    return {SCREENING_112: [e.name for e in load_screening_set()]}


def select_materials(available: list[str], wanted: str | list[str] | None, campaign: str) -> list:
    """The materials of ``campaign`` to run: all, or those named in ``wanted``.

    Parameters
    ----------
    available
        The campaign's materials, in campaign order.
    wanted
        ``None`` (all), a comma-separated string or a list of names.
    campaign
        For messages.

    Raises
    ------
    ValueError
        For a name the campaign does not hold (listing close matches), a name given
        twice, or an empty selection.
    """
    if wanted is None:
        return list(available)
    names = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    names = [n for n in names if n]
    if not names:
        raise ValueError("--materials names no material; give e.g. --materials CuI,AgGaSe2")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--materials names {', '.join(twice)} more than once")
    unknown = [n for n in names if n not in available]
    if unknown:
        hints = []
        for n in unknown:
            same_case = [a for a in available if a.lower() == n.lower()]
            close = same_case or difflib.get_close_matches(n, available, n=3, cutoff=0.5)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(
            f"campaign {campaign!r} has no material {'; '.join(hints)}. "
            f"It holds {len(available)}: {', '.join(available[:12])}"
            + (", ..." if len(available) > 12 else "")
        )
    return names


#: Quota of the screening MD: never reached, the MD runs its full length.
_NO_QUOTA = 10**9


@dataclass
class ScreeningMaker(Maker):
    """The paper's screening of a first ensemble: short MLIP-MD, MLIP minima, reference checks.

    The verdict job judges the ensemble (:func:`active_mlip.makers.screening_jobs.judge`);
    the gate then stops a material judged 'ok' and sends a flagged one on to active
    learning (the :class:`~active_mlip.workflows.iteration.IterationMaker` it is given).

    Parameters
    ----------
    name
        Flow name suffix.
    settings
        The run's settings (``screening``, ``loop``, ``exploration``, ``selection``).
    label_maker, exploration_maker, minima_maker, reference_md_maker, evaluation_maker
        The stage Makers; ``None`` builds each from ``settings`` (the reference MD only
        with ``screening.reference_md`` and a labeller that runs in process).
    """

    name: str = "screening"
    settings: ActiveLearningSettings = field(default_factory=ActiveLearningSettings)
    label_maker: LabelMaker | None = None
    exploration_maker: ExplorationMaker | None = None
    minima_maker: MLIPMinimaMaker | None = None
    reference_md_maker: ReferenceMDMaker | None = None
    evaluation_maker: TestEvaluationMaker | None = None

    def __post_init__(self) -> None:
        s = self.settings
        if self.label_maker is None:
            self.label_maker = LabelMaker(labeller=s.labeller)
        if self.exploration_maker is None:
            scr = s.screening
            # The screening MD is judged by its own diagnostics along the whole
            # trajectory, from its first step: no equilibration or thermal window.
            md = ExplorationSettings.model_validate(
                {
                    **s.exploration.model_dump(),
                    "max_steps": scr.md_steps,
                    "equilibration_ps": 0.0,
                    "thermal_window_ps": 0.0,
                    # every scored frame: events are counted along the whole MD; the
                    # reference labels n_check of them (frames_to_check)
                    "sample_every": 1,
                }
            )
            self.exploration_maker = ExplorationMaker(settings=md, selection=s.selection)
        if self.minima_maker is None:
            self.minima_maker = MLIPMinimaMaker(settings=s.screening)
        if self.reference_md_maker is None and s.screening.reference_md:
            if getattr(self.label_maker.labeller, "in_process", False):
                md = self.exploration_maker.settings
                self.reference_md_maker = ReferenceMDMaker(
                    labeller=self.label_maker.labeller,
                    settings=ReferenceMDSettings(
                        n_steps=s.screening.md_steps,
                        timestep_fs=md.timestep_fs,
                        loginterval=md.loginterval,
                        friction=md.friction,
                    ),
                )
            else:
                logger.info("no reference MD in the screening: the labeller runs out of process")
        if self.evaluation_maker is None:
            self.evaluation_maker = TestEvaluationMaker(selection=s.selection)

    def make(self, state: LoopState, refs: LoopRefs, iteration: IterationMaker) -> Flow:
        """Screen the ensemble of ``refs``; the gate continues with ``iteration`` if flagged."""
        loop, scr = self.settings.loop, self.settings.screening
        material = state.material
        seeds = [policy.walker_seed(loop.seed, 0, k) + 500 for k in range(len(loop.temperatures))]
        links = link(refs)
        links.name = f"{material} screening link"
        tag(links, "glue", iteration=0)
        state_ref = links.output["state"]
        md = self.exploration_maker.make(
            links.output["ensemble"],
            [state_ref.walkers[k].start for k in range(len(state.walkers))],
            links.output["evaluation"].reference,
            temperatures=list(loop.temperatures),
            n_new=_NO_QUOTA,
            seeds=seeds,
        )
        md.name = f"{material} screening MD"
        tag(md, "exploration", iteration=0)
        minima = self.minima_maker.make(
            links.output["ensemble"], md.output.explorations, links.output["fc"].reference
        )
        minima.name = f"{material} screening minima"
        tag(minima, "exploration", iteration=0)
        frames = frames_to_check(md.output.explorations, minima.output, scr.n_check)
        frames.name = f"{material} screening frames"
        tag(frames, "glue", iteration=0)
        label = self.label_maker.make(frames.output.frames)
        label.name = f"{material} screening labels"
        tag(label, "labelling", iteration=0)
        references, on_references = [], []
        if self.reference_md_maker is not None:
            for k, (temperature, seed) in enumerate(zip(loop.temperatures, seeds, strict=True)):
                ref = self.reference_md_maker.make(state_ref.walkers[k].start, temperature, seed)
                ref.name = f"{material} screening reference MD {temperature:g} K"
                tag(ref, "labelling", iteration=0)
                on_ref = self.evaluation_maker.make(
                    links.output["ensemble"], ref.output.frames, links.output["fc"]
                )
                on_ref.name = f"{material} screening along reference {temperature:g} K"
                tag(on_ref, "evaluation", iteration=0)
                references.append(ref)
                on_references.append(on_ref)
        verdict = judge(
            material,
            links.output["evaluation"],
            md.output.explorations,
            label.output,
            links.output["fc"],
            scr,
            [r.output for r in references],
            [e.output for e in on_references],
        )
        verdict.name = f"{material} screening verdict"
        tag(
            verdict, "evaluation", iteration=0
        )  # light; 'evaluation' so that status shows the verdict
        gate = screening_gate(
            verdict.output,
            light(state),
            state_ref.train,
            state_ref.walkers,
            refs,
            iteration,
            verdict.uuid,
        )
        gate.name = f"{material} screening gate"
        tag(gate, "controller", iteration=0)
        jobs = [links, md, *references, *on_references, minima, frames, label, verdict, gate]
        return Flow(jobs, output=gate.output, name=f"{material} screening")


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def screening_gate(
    screening: ScreeningDocument,
    state: LoopState,
    train: FrameSet,
    walkers: list[Walker],
    refs: LoopRefs,
    iteration: IterationMaker,
    screening_uuid: str,
) -> Response | LoopResult:
    """Stop a material judged 'ok'; send a flagged one on to active learning."""
    iteration, refs = decoded(iteration), decoded(refs)
    settings = iteration.settings
    summary = ScreeningSummary(
        verdict=screening.verdict,
        flags=list(screening.flags),
        evidence=[("supporting: " if e.supporting else "") + e.message for e in screening.evidence],
        n_labels=screening.n_labels,
        screening_uuid=screening_uuid,
    )
    state = state.model_copy(
        update={"screening": summary, "labels_used": state.labels_used + screening.n_labels}
    )
    # Spent already: charged even if the pool is short.
    draw_shared(
        settings.loop.shared_budget, f"{state.material}:screening", screening.n_labels, True
    )
    full = state.model_copy(update={"train": train, "walkers": walkers})
    if screening.verdict == "ok":
        return LoopResult(
            material=state.material,
            converged=False,
            stop_reason=f"screening: {screening.summary}; no active learning needed",
            state=full,
        )
    stop = policy.stopping_reason(state, settings)
    if stop is None and (why := shared_budget_stop(settings.loop.shared_budget)) is not None:
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
    next_flow = iteration.make(state, refs)
    route(next_flow, settings.routing)
    return Response(replace=replacement(next_flow))
