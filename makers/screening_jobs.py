"""The screening's jobs: MLIP minima, the frames the reference checks, the verdict.

The science is in :mod:`active_mlip.makers.diagnostics` (checks and verdict rules) and
:mod:`active_mlip.makers.reference_md` (the reference trajectory and its comparison);
:class:`~active_mlip.workflows.screening.ScreeningMaker` composes these jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.optimize import FIRE
from jobflow import Maker, job
from pydantic import Field

from active_mlip.core.documents import Document, as_model
from active_mlip.core.frames import Frame
from active_mlip.makers.diagnostics import (
    DiagnosticsSettings,
    Evidence,
    FrameCheck,
    ScreeningDocument,
    check_frame,
    screening_verdict,
    verdict_from,
)
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.exploration import ExplorationDocument
from active_mlip.makers.reference_md import ReferenceMDDocument, compare_with_reference
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument, LabelledBatch

logger = logging.getLogger(__name__)


def relax(atoms, calc, fmax: float, steps: int) -> tuple[Any, bool]:
    """Relax positions (cell fixed) with ``calc``; returns (atoms, converged)."""

    atoms = atoms.copy()
    atoms.calc = calc
    opt = FIRE(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return atoms, converged


class MinimaDocument(Document):
    """MLIP-relaxed end states of the screening MD, with the ensemble's predictions."""

    frames: list[Frame] = Field(default_factory=list)


@dataclass
class MLIPMinimaMaker(Maker):
    """Relax the last frame of each screening trajectory with the ensemble mean.

    The MD's end state relaxed on the MLIP surface is the metastable state the MLIP
    "settled into"; the reference then labels it (are its forces zero?).
    """

    name: str = "MLIP minima"
    settings: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)
    device: str = "auto"

    @job(data=DATA_FIELDS)
    def make(
        self,
        ensemble: EnsembleDocument,
        explorations: list[ExplorationDocument],
        ground_state: Frame | None = None,
    ) -> MinimaDocument:
        """One relaxed frame per exploration (its ``last_frame``), then ``ground_state``.

        The ground state R0 (the relaxed structure of the force constants) comes with the
        ensemble's prediction too: its energy error is the zero of the energy gaps. Its
        reference label is cached from the relaxation, so it costs no new label.
        """
        from active_mlip.makers.ensemble import (
            EnsembleCalculator,  # torch loads only where the ensemble runs
        )

        calc = EnsembleCalculator.from_document(ensemble, device=self.device)
        frames = []
        for doc in explorations:
            atoms, converged = relax(
                doc.last_frame.unlabelled().to_atoms(),
                calc,
                self.settings.relax_fmax,
                self.settings.relax_steps,
            )
            res = calc.results
            frames.append(
                Frame.from_atoms(atoms, include_results=False).model_copy(
                    update={
                        "info": {
                            "source": "mlip-minimum",
                            "temperature": float(doc.temperature),
                            "relax_converged": converged,
                            "energy_mlip": float(res["energy"]),
                            "forces_mlip": np.asarray(res["forces"]).tolist(),
                            "uncertainty": float(res["uncertainty"][doc.uncertainty_key]),
                        }
                    }
                )
            )
        if ground_state is not None:
            r0 = as_model(ground_state, Frame)
            atoms = r0.unlabelled().to_atoms()
            atoms.calc = calc
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            frames.append(
                r0.unlabelled().model_copy(
                    update={
                        "info": {
                            "source": "ground-state",
                            "temperature": 0.0,
                            "energy_mlip": float(energy),
                            "forces_mlip": np.asarray(forces).tolist(),
                        }
                    }
                )
            )
        return MinimaDocument(frames=frames)


@job(data=DATA_FIELDS)
def frames_to_check(
    explorations: list[ExplorationDocument], minima: MinimaDocument, n_check: int
) -> MinimaDocument:
    """The frames the reference labels: ``n_check`` evenly spaced MD samples per walker
    (the last one included), then the MLIP minima and the ground state."""
    picked = []
    for d in explorations:
        every = max(1, len(d.samples) // n_check)
        picked += d.samples[every - 1 :: every][:n_check]
    return MinimaDocument(frames=picked + minima.frames)


@job(data=DATA_FIELDS)
def judge(
    material: str,
    evaluation: EvaluationDocument,
    explorations: list[ExplorationDocument],
    labelled: LabelledBatch,
    force_constants: Any,
    settings: DiagnosticsSettings,
    references: list[ReferenceMDDocument] | None = None,
    on_references: list[EvaluationDocument] | None = None,
) -> ScreeningDocument:
    """The verdict job: match labels to the ensemble's predictions and judge.

    Frames whose single point failed are left out (and counted); the verdict then rests
    on the rest, which the document's notes say. ``references`` (reference MD, one per
    walker) with ``on_references`` (the ensemble evaluated on their frames) add the
    comparison along the reference trajectory.
    """
    checks: list[FrameCheck] = []
    for f in labelled.frames:
        info = f.info
        if "forces_mlip" not in info:
            continue
        kind = {"mlip-minimum": "minimum", "ground-state": "ground"}.get(info.get("source"), "md")
        checks.append(
            check_frame(
                f, info["energy_mlip"], np.asarray(info["forces_mlip"]), kind, force_constants
            )
        )
    md_u = {float(d.temperature): list(d.log.get("u", [])) for d in explorations}
    comparisons = [
        compare_with_reference(
            as_model(ref, ReferenceMDDocument),
            as_model(on_ref, EvaluationDocument),
            walker,
            force_constants,
            settings.events,
        )
        for ref, on_ref, walker in zip(
            references or [], on_references or [], explorations, strict=False
        )
    ]
    doc = screening_verdict(evaluation, md_u, checks, settings, material, comparisons)
    notes = []
    if not comparisons:
        notes.append("no reference MD: judged on the MLIP-MD and the checked frames alone")
    if labelled.n_failed:
        notes.append(
            f"{labelled.n_failed} of {labelled.n_requested} reference single points failed "
            "and were left out: " + "; ".join(x.reason for x in labelled.failures[:2])
        )
    blown = [d for d in explorations if d.stopped_by == "blowup"]
    for d in blown:
        notes.append(f"MLIP-MD at {d.temperature:g} K blew up: {(d.blowup or {}).get('reason')}")
    doc = doc.model_copy(
        update={
            "n_labels": labelled.n_requested - labelled.n_reused,
            "n_label_failures": labelled.n_failed,
            "notes": notes,
        }
    )
    if blown and "missing" not in doc.flags:
        # A trajectory the ensemble cannot keep physical is the strongest sign of missing data.
        doc.evidence.append(
            Evidence(
                flag="missing",
                test="blowup",
                message=f"MLIP-MD blew up at {blown[0].temperature:g} K",
                value=1.0,
                threshold=0.0,
            )
        )
        doc.flags.insert(0, "missing")
        doc.verdict = verdict_from(doc.evidence)
    logger.info("%s screening: %s", material, doc.summary)
    return doc
