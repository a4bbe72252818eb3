"""Screening diagnostics: does a first ensemble miss or hallucinate metastable states?

Kang et al. screened 112 materials with a first MLIP each and singled out those whose
MLIP-MD misses genuine metastable states ("missing events", e.g. Cu excursions in CuI
that the initial data never contained) or settles into states that do not exist
("hallucinated events"). Here a first ensemble runs short MLIP-MD at the loop's
temperatures (``sample_every`` keeps frames with the ensemble's own predictions); the
reference labeller labels a few of those frames and the MLIP-relaxed end states, and
:func:`screening_verdict` compares:

missing
    along the trajectory the ensemble uncertainty exceeds the test set's Ū + k·σ_U in
    more than ``spike_fraction`` of the scored frames, or a checked frame's force error
    or its reference σ^A exceeds the test set's mean + k·std (and ``min_ratio`` × mean):
    the MD reached configurations that the training data do not describe.
hallucinated
    a checked frame or an MLIP minimum has a reference energy far above the ensemble's
    prediction (more than the test set's signed error mean + k·std, at least
    ``energy_gap_meV_per_atom``), or the reference exerts large forces at the MLIP
    minimum (max |F| > ``residual_force``): the reference would relax away from it.

The verdict is ``hallucinated`` when that flag is raised (a state that does not exist
is the worse failure), else ``missing``, else ``ok``; both flags and every piece of
evidence are kept. Flagged materials go on to the full active-learning loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase.optimize import FIRE
from jobflow import Maker, job
from pydantic import ConfigDict, Field

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.exploration import ExplorationDocument
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument, LabelledBatch
from active_mlip.makers.selection import anharmonicity_score, minimum_image_displacements

logger = logging.getLogger(__name__)

Verdict = Literal["ok", "missing", "hallucinated"]


class DiagnosticsSettings(Document):
    """How a material is screened before (or instead of) the active-learning loop."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Screen after the first ensemble: materials judged 'ok' stop there, "
        "flagged ones continue with active learning.",
    )
    md_steps: int = Field(600, ge=1, description="MLIP-MD steps per temperature.")
    n_check: int = Field(
        6, ge=1, description="MD frames per temperature labelled by the reference."
    )
    k_sigma: float = Field(3.0, gt=0, description="Spike threshold: test-set mean + k·std.")
    min_ratio: float = Field(
        1.5,
        ge=1,
        description="A per-frame force error or σ^A spikes only above this multiple of the "
        "test-set mean as well (a very narrow test distribution would flag noise).",
    )
    spike_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="'missing' when more than this fraction of scored MD frames has an "
        "uncertainty above Ū + k·σ_U.",
    )
    energy_gap_meV_per_atom: float = Field(
        10.0,
        gt=0,
        description="Smallest reference-above-prediction energy gap that counts as "
        "hallucinated (meV/atom).",
    )
    residual_force: float = Field(
        0.2,
        gt=0,
        description="'hallucinated' when the reference's largest force on an atom at an MLIP "
        "minimum exceeds this (eV/Å): the reference relaxes away from it. At a genuine "
        "minimum this force is the MLIP's local force error; a false minimum in a soft "
        "lattice leaves a few tenths of an eV/Å (neighbours relax and take up the rest).",
    )
    relax_fmax: float = Field(0.02, gt=0, description="MLIP relaxation converged below (eV/Å).")
    relax_steps: int = Field(300, ge=1, description="MLIP relaxation steps at most.")


class FrameCheck(Document):
    """One MD frame or MLIP minimum, predicted by the ensemble and labelled by the reference."""

    kind: Literal["md", "minimum"]
    temperature: float
    step: int | None = None
    uncertainty: float | None = None
    energy_gap_meV_per_atom: float = Field(
        description="(E_reference − E_ensemble) / N: positive = the state is higher than the "
        "ensemble believes."
    )
    force_rmse_meV_per_A: float
    max_reference_force: float = Field(description="Largest |F| of the reference (eV/Å).")
    sigma_a: float | None = Field(None, description="Reference σ^A (None without fc).")
    max_displacement: float | None = Field(
        None, description="Largest displacement from the ground-state structure (Å)."
    )


class Evidence(Document):
    """One reason for a flag, with the numbers behind it."""

    flag: Literal["missing", "hallucinated"]
    test: str = Field(description="Which check fired, e.g. 'uncertainty', 'energy_gap'.")
    message: str
    value: float
    threshold: float


class ScreeningDocument(Document):
    """The verdict on one material's first ensemble, with its evidence."""

    material: str = ""
    verdict: Verdict
    flags: list[Literal["missing", "hallucinated"]] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    test_mae_energy_meV_per_atom: float
    test_mae_forces_meV_per_A: float
    n_md_frames: int = Field(description="MD frames scored by the ensemble.")
    uncertainty_spike_fraction: float
    checks: list[FrameCheck] = Field(default_factory=list)
    n_labels: int = Field(0, description="Reference labels this screening requested.")
    n_label_failures: int = 0
    notes: list[str] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: verdict and the first pieces of evidence."""
        if not self.evidence:
            return f"{self.verdict}: no spike, no energy gap, reference at rest at MLIP minima"
        return f"{self.verdict}: " + "; ".join(e.message for e in self.evidence[:3])


# ---------------------------------------------------------------------------------------
# The science: pure functions (unit-tested on constructed cases)
# ---------------------------------------------------------------------------------------
def spike_threshold(values: np.ndarray, k_sigma: float, min_ratio: float = 1.0) -> float:
    """``max(mean + k·std, min_ratio·mean)`` of a reference distribution (population std)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite reference values to set a spike threshold")
    mean, std = float(v.mean()), float(v.std())
    return max(mean + k_sigma * std, min_ratio * mean)


def check_frame(
    frame: Frame,
    predicted_energy: float,
    predicted_forces: np.ndarray,
    kind: Literal["md", "minimum"],
    force_constants: Any | None = None,
) -> FrameCheck:
    """Compare the ensemble's prediction for ``frame`` with its reference label.

    Parameters
    ----------
    frame
        A labelled frame (reference energy and forces).
    predicted_energy, predicted_forces
        The ensemble-mean energy (eV, total) and forces (N, 3) for the same positions.
    kind
        "md" for a sampled MD frame, "minimum" for an MLIP-relaxed state.
    force_constants
        Optional ``ForceConstantsDocument`` (its ``reference`` is the ground state R0):
        enables σ^A and the displacement from R0.
    """
    if not frame.labelled:
        raise ValueError(f"frame {frame.structure_hash()[:12]} has no reference label")
    f_ref = np.asarray(frame.forces, dtype=float)
    f_pred = np.asarray(predicted_forces, dtype=float)
    if f_pred.shape != f_ref.shape:
        raise ValueError(f"predicted forces {f_pred.shape} do not match {f_ref.shape}")
    n = frame.n_atoms
    sigma_a = max_disp = None
    if force_constants is not None and force_constants.reference.numbers == frame.numbers:
        r0 = force_constants.reference
        u = minimum_image_displacements(
            np.asarray(frame.positions), np.asarray(r0.positions), np.asarray(r0.cell)
        )
        max_disp = float(np.max(np.linalg.norm(u, axis=1)))
        if np.any(f_ref):
            sigma_a = anharmonicity_score(f_ref, u, np.asarray(force_constants.fc_array()))
    return FrameCheck(
        kind=kind,
        temperature=float(frame.info.get("temperature", 0.0)),
        step=frame.info.get("step"),
        uncertainty=frame.info.get("uncertainty"),
        energy_gap_meV_per_atom=(float(frame.energy) - float(predicted_energy)) / n * 1000,
        force_rmse_meV_per_A=float(np.sqrt(np.mean((f_ref - f_pred) ** 2)) * 1000),
        max_reference_force=float(np.max(np.linalg.norm(f_ref, axis=1))),
        sigma_a=sigma_a,
        max_displacement=max_disp,
    )


def screening_verdict(
    evaluation: EvaluationDocument,
    md_uncertainties: dict[float, list[float]],
    checks: list[FrameCheck],
    settings: DiagnosticsSettings,
    material: str = "",
) -> ScreeningDocument:
    """Judge a first ensemble from its test-set statistics and MD checks.

    Parameters
    ----------
    evaluation
        The ensemble on the fixed test set: ``reference`` (Ū, σ_U) and per-frame
        ``predictions`` (``force_rmse``, ``energy_ref_per_atom``/``energy_pred_per_atom``,
        ``sigma_a_ref``) set the thresholds.
    md_uncertainties
        The uncertainty (same key as ``evaluation.reference``) of every scored MD frame,
        per temperature.
    checks
        Sampled MD frames and MLIP minima compared with the reference (:func:`check_frame`).
    settings
        Thresholds.
    """
    s, ref, pred = settings, evaluation.reference, evaluation.predictions
    evidence: list[Evidence] = []

    # missing (1): the ensemble itself says it has left familiar ground
    u_thr = ref.u_mean + s.k_sigma * ref.u_std
    n_md = fractions = 0
    worst = 0.0
    for temperature, us in sorted(md_uncertainties.items()):
        u = np.asarray(us, dtype=float)
        if u.size == 0:
            continue
        n_md += u.size
        frac = float(np.mean(u > u_thr))
        fractions = max(fractions, frac)
        worst = max(worst, float((u.max() - ref.u_mean) / ref.u_std))
        if frac > s.spike_fraction:
            evidence.append(
                Evidence(
                    flag="missing",
                    test="uncertainty",
                    message=f"uncertainty above Ū+{s.k_sigma:g}σ_U in {frac:.0%} of "
                    f"{u.size} MD frames at {temperature:g} K (max {worst:.1f}σ above Ū)",
                    value=frac,
                    threshold=s.spike_fraction,
                )
            )

    md_checks = [c for c in checks if c.kind == "md"]
    # missing (2): the reference disagrees with the ensemble far more than on the test set
    if md_checks and pred.get("force_rmse"):
        thr = spike_threshold(pred["force_rmse"], s.k_sigma, s.min_ratio)
        bad = [c for c in md_checks if c.force_rmse_meV_per_A > thr]
        if bad:
            top = max(bad, key=lambda c: c.force_rmse_meV_per_A)
            evidence.append(
                Evidence(
                    flag="missing",
                    test="force_error",
                    message=f"force error {top.force_rmse_meV_per_A:.0f} meV/Å on the MD frame "
                    f"at step {top.step} ({top.temperature:g} K) against {thr:.0f} meV/Å "
                    f"on the test set (mean + {s.k_sigma:g}·std); {len(bad)} of "
                    f"{len(md_checks)} checked frames",
                    value=top.force_rmse_meV_per_A,
                    threshold=thr,
                )
            )
    # missing (3): σ^A jumps: the trajectory reached strongly anharmonic configurations
    sig_ref = [x for x in pred.get("sigma_a_ref", []) if x is not None]
    sig_md = [c for c in md_checks if c.sigma_a is not None]
    if sig_ref and sig_md:
        thr = spike_threshold(sig_ref, s.k_sigma, s.min_ratio)
        bad = [c for c in sig_md if c.sigma_a > thr]
        if bad:
            top = max(bad, key=lambda c: c.sigma_a)
            disp = (
                f", an atom {top.max_displacement:.2f} Å from its site"
                if top.max_displacement is not None
                else ""
            )
            evidence.append(
                Evidence(
                    flag="missing",
                    test="sigma_a",
                    message=f"σ^A {top.sigma_a:.2f} at step {top.step} ({top.temperature:g} K)"
                    f"{disp}, against {thr:.2f} on the test set",
                    value=top.sigma_a,
                    threshold=thr,
                )
            )

    # hallucinated (1): states the ensemble puts far too low
    gap_thr = s.energy_gap_meV_per_atom
    if pred.get("energy_ref_per_atom"):
        errors = (
            np.asarray(pred["energy_ref_per_atom"]) - np.asarray(pred["energy_pred_per_atom"])
        ) * 1000
        gap_thr = max(gap_thr, float(errors.mean() + s.k_sigma * errors.std()))
    high = [c for c in checks if c.energy_gap_meV_per_atom > gap_thr]
    if high:
        top = max(high, key=lambda c: c.energy_gap_meV_per_atom)
        where = "MLIP minimum" if top.kind == "minimum" else f"MD frame at step {top.step}"
        evidence.append(
            Evidence(
                flag="hallucinated",
                test="energy_gap",
                message=f"reference energy {top.energy_gap_meV_per_atom:.1f} meV/atom above the "
                f"ensemble's at the {where} ({top.temperature:g} K; threshold {gap_thr:.1f})",
                value=top.energy_gap_meV_per_atom,
                threshold=gap_thr,
            )
        )
    # hallucinated (2): the reference is not at rest where the ensemble relaxed to
    minima = [c for c in checks if c.kind == "minimum"]
    pushed = [c for c in minima if c.max_reference_force > s.residual_force]
    if pushed:
        top = max(pushed, key=lambda c: c.max_reference_force)
        evidence.append(
            Evidence(
                flag="hallucinated",
                test="relaxes_away",
                message=f"the reference pushes an atom with {top.max_reference_force:.2f} eV/Å "
                f"at the MLIP minimum reached from {top.temperature:g} K: it relaxes away",
                value=top.max_reference_force,
                threshold=s.residual_force,
            )
        )

    flags = sorted({e.flag for e in evidence}, key=["missing", "hallucinated"].index)
    verdict: Verdict = "hallucinated" if "hallucinated" in flags else "missing" if flags else "ok"
    return ScreeningDocument(
        material=material,
        verdict=verdict,
        flags=flags,
        evidence=evidence,
        test_mae_energy_meV_per_atom=evaluation.mae_energy_meV_per_atom,
        test_mae_forces_meV_per_A=evaluation.mae_forces_meV_per_A,
        n_md_frames=n_md,
        uncertainty_spike_fraction=fractions,
        checks=checks,
    )


def relax(atoms, calc, fmax: float, steps: int) -> tuple[Any, bool]:
    """Relax positions (cell fixed) with ``calc``; returns (atoms, converged)."""

    atoms = atoms.copy()
    atoms.calc = calc
    opt = FIRE(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return atoms, converged


# ---------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------
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
        self, ensemble: EnsembleDocument, explorations: list[ExplorationDocument]
    ) -> MinimaDocument:
        """One relaxed frame per exploration (its ``last_frame``)."""
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
        return MinimaDocument(frames=frames)


@job(data=DATA_FIELDS)
def frames_to_check(
    explorations: list[ExplorationDocument], minima: MinimaDocument
) -> MinimaDocument:
    """The frames the reference labels: the MD samples, then the MLIP minima."""
    return MinimaDocument(frames=[f for d in explorations for f in d.samples] + minima.frames)


@job(data=DATA_FIELDS)
def judge(
    material: str,
    evaluation: EvaluationDocument,
    explorations: list[ExplorationDocument],
    labelled: LabelledBatch,
    force_constants: Any,
    settings: DiagnosticsSettings,
) -> ScreeningDocument:
    """The verdict job: match labels to the ensemble's predictions and judge.

    Frames whose single point failed are left out (and counted); the verdict then rests
    on the rest, which the document's notes say.
    """
    checks: list[FrameCheck] = []
    for f in labelled.frames:
        info = f.info
        if "forces_mlip" not in info:
            continue
        kind = "minimum" if info.get("source") == "mlip-minimum" else "md"
        checks.append(
            check_frame(
                f, info["energy_mlip"], np.asarray(info["forces_mlip"]), kind, force_constants
            )
        )
    md_u = {float(d.temperature): list(d.log.get("u", [])) for d in explorations}
    doc = screening_verdict(evaluation, md_u, checks, settings, material=material)
    notes = []
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
        if doc.verdict == "ok":
            doc.verdict = "missing"
    logger.info("%s screening: %s", material, doc.summary)
    return doc
