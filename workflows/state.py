"""What the loop carries from job to job: its state, its records and references.

Pure data (pydantic documents); the jobs that change them live in
:mod:`active_mlip.workflows.jobs`, the rules that judge them in
:mod:`active_mlip.workflows.policy`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.makers.schemas import DATA_FIELDS, LabelledBatch


class ExplorationOutcome(Document):
    """What one iteration's exploration and labelling did (recorded by the next ``decide``).

    The fields are those of :class:`IterationRecord` that only become known after the
    iteration's ensemble has explored and its frames have been labelled.
    """

    n_scored: int = 0
    n_selected: int = 0
    n_labelled: int = 0
    n_label_failures: int = 0
    label_failure_reasons: list[str] = Field(default_factory=list)
    acceptance_fraction: float = 0.0
    budget_limited: bool = False
    n_blowups: int = 0
    calibration: list[dict[str, float]] = Field(default_factory=list)
    md_ps: dict[str, float] = Field(default_factory=dict)
    restarts: dict[str, str] = Field(default_factory=dict)
    acceptance_statistics: dict[str, dict[str, Any]] = Field(default_factory=dict)


class LoopRefs(Document):
    """The uuids of the jobs whose outputs the next jobs of the loop read.

    A flow that a job creates may only reference its own jobs (jobflow's FireWorks manager
    checks this), so a new iteration reads earlier outputs through a ``link`` job
    (:func:`active_mlip.workflows.jobs.link`) built from these.
    """

    state: str = Field(description="The job whose output is the full LoopState.")
    ensemble: str = Field(description="The ensemble's job.")
    evaluation: str = Field(description="The test evaluation's job.")
    fc: str = Field(description="The force constants' job.")
    initial: str = Field(description="The initial split's job (holds the test set).")
    explorations: list[str] = Field(
        default_factory=list, description="This iteration's exploration jobs."
    )
    collect: str | None = Field(None, description="This iteration's candidate collection.")
    label: str | None = Field(None, description="The labelling job of the newest frames.")


class Walker(Document):
    """One MLIP-MD walker of the loop: its temperature, where and with which seed it goes on."""

    temperature: float = Field(gt=0, description="K.")
    start: Frame | None = Field(
        None,
        description="Where its next MD starts (with velocities once it has run); None in "
        "the state a controller gets by value (frames travel by reference).",
    )
    seed: int = Field(description="Seed of its next exploration.")


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
    walkers: list[Walker] = Field(description="One per temperature, in the loop's order.")
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
    pending: ExplorationOutcome | None = Field(
        None, description="What the iteration before explored and labelled, until recorded."
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
