"""Screening diagnostics: does a first ensemble miss or hallucinate metastable states?

Kang et al. screened 112 materials with a first MLIP each and singled out those whose
MLIP-MD misses genuine metastable states ("missing events", e.g. Cu excursions in CuI
that the initial data never contained) or settles into states that do not exist
("hallucinated events"). They decided it the way :func:`screening_verdict` does first:
beside a reference MD at the same temperature (:mod:`active_mlip.makers.reference_md`),

missing
    along the reference trajectory the ensemble's force error rises above the level the
    test set allows (the reference visits configurations the ensemble never saw), the
    reference has significantly more off-site events than the MLIP-MD of the same
    length, or the MLIP-MD's σ^A falls far below the reference's;
hallucinated
    the MLIP-MD has significantly more off-site events than the reference, or its σ^A
    (with the ensemble's forces) lies far above the reference's.

The checks on the MLIP-MD frames (``MLIP_MD_CHECKS``) decide only where no reference MD
can run (a DFT labeller); beside a reference MD they are supporting evidence, reported
but not deciding. The reference labels a few MD frames, the MLIP-relaxed end states and
the ground state R0 (the energy and force checks at MLIP minima always decide; an
energy gap at an MLIP-MD frame supports where a reference MD ran);

missing
    along the trajectory more than ``spike_fraction`` of the scored frames have an
    ensemble uncertainty above the level one in-distribution frame exceeds with
    probability ``frame_alpha``; or a checked frame's force error or its reference σ^A
    lies above the level that any of the checked frames exceeds by chance with
    probability ``alpha`` (and ``min_ratio`` × the test mean);
hallucinated
    relative to R0, a checked frame or an MLIP minimum has a reference energy far above
    the ensemble's prediction (a total energy per state, in eV: beyond the test set's
    errors at chance ``alpha`` and at least ``energy_gap_eV``), or the reference pushes
    an atom at the MLIP minimum harder than the ensemble's own test force errors allow
    (at least ``residual_force``): the reference would relax away.

Levels are prediction limits from the test set (Student t, log-normal for positive
quantities) with a Bonferroni split over the values checked, so that an ensemble whose
MD stays in its test distribution is flagged by chance in at most ~5 % of materials
(:mod:`active_mlip.makers.screening_calibration` measures it; ``docs/screening.md`` has
the numbers). The verdict is ``hallucinated`` when that flag is raised (a state that
does not exist is the worse failure; an energy gap alone beside 'missing' evidence counts
as missing, see :func:`verdict_from`), else ``missing``, else ``ok``; both flags and
every piece of evidence are kept. Flagged materials go on to active learning.

Over 500 lines on purpose: the settings, the documents and every rule of the verdict
read together; the jobs are in :mod:`active_mlip.makers.screening_jobs`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.reference_md import (
    EventSettings,
    ReferenceComparison,
)
from active_mlip.makers.selection import (
    anharmonicity_score,
    minimum_image_displacements,
)

logger = logging.getLogger(__name__)

Verdict = Literal["ok", "missing", "hallucinated"]

#: Checks on the MLIP-MD frames alone: decisive only where no reference MD ran.
MLIP_MD_CHECKS = frozenset({"uncertainty", "force_error", "sigma_a"})


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
    alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Chance that one check flags an ensemble whose MD stays in its test "
        "distribution; five checks give at most ~5 % chance flags per material.",
    )
    frame_alpha: float = Field(
        0.002,
        gt=0,
        lt=1,
        description="An MD frame's uncertainty is a spike above the level one test-like "
        "frame exceeds with this probability.",
    )
    min_ratio: float = Field(
        2.0,
        ge=1,
        description="A per-frame force error or σ^A spikes only above this multiple of the "
        "baseline mean as well. MLIP-MD samples its own errors: on nearly harmonic "
        "controls its frames carried 1.1-1.8x the errors of reference frames (and σ^A "
        "1.15-1.3x) without any event, while the paper's missed events raise force errors "
        "5-10x (20-35 against 3-4 meV/Å).",
    )
    spike_fraction: float = Field(
        0.10,
        ge=0,
        le=1,
        description="'missing' when more than this fraction of scored MD frames has an "
        "uncertainty spike (MD frames are correlated: a few in a row happen by chance).",
    )
    energy_gap_eV: float = Field(
        0.1,
        gt=0,
        description="Smallest reference-above-prediction energy of a state, relative to "
        "the ground state and in total energy per event (eV), that counts as hallucinated.",
    )
    residual_force: float = Field(
        0.1,
        gt=0,
        description="Smallest largest-force of the reference at an MLIP minimum that counts "
        "as 'relaxes away' (eV/Å). Above it, the force must also exceed the ensemble's own "
        "largest per-atom force errors on the test set: at a genuine minimum the residual "
        "is the MLIP's local force error; a false minimum in a soft lattice leaves a few "
        "tenths of an eV/Å (neighbours relax and take up the rest).",
    )
    reference_md: bool = Field(
        True,
        description="Run a reference-labeller MD segment beside the MLIP-MD (same start, "
        "seed and length) and judge the ensemble along it, in time order. Needs a labeller "
        "that runs in process (CHGNet, an ASE calculator); skipped, with a note, for DFT.",
    )
    baseline_every: int = Field(
        5,
        ge=1,
        description="Every this many reference-MD frames join the test set as the baseline "
        "of the checked MLIP-MD frames (neighbouring frames are alike: 5 × 40 fs apart).",
    )
    events: EventSettings = Field(
        default_factory=EventSettings, description="What counts as an off-site event."
    )
    sigma_a_ratio: float = Field(
        1.5,
        gt=1,
        description="σ^A of the MLIP-MD (with the ensemble's forces) more than this factor "
        "above what the reference MD and the ensemble's own force error give together, "
        "sqrt(σ_ref² + ε²), is 'hallucinated' (the MLIP's surface is rougher than the "
        "reference's where it goes); this factor below is 'missing' (it lacks the "
        "reference's anharmonic events). Trajectory σ^A averages hundreds of atom-frames, so "
        "chance moves it by a few per cent, not by this factor.",
    )
    relax_fmax: float = Field(0.02, gt=0, description="MLIP relaxation converged below (eV/Å).")
    relax_steps: int = Field(300, ge=1, description="MLIP relaxation steps at most.")


class FrameCheck(Document):
    """One MD frame or MLIP minimum, predicted by the ensemble and labelled by the reference."""

    kind: Literal["md", "minimum", "ground"] = Field(
        description="An MD frame, an MLIP-relaxed state, or the ground state R0 (the zero "
        "of the energy gaps)."
    )
    temperature: float
    step: int | None = None
    uncertainty: float | None = None
    energy_gap_meV_per_atom: float = Field(
        description="(E_reference − E_ensemble) / N: positive = the state is higher than the "
        "ensemble believes."
    )
    energy_gap_eV: float | None = Field(
        None, description="E_reference − E_ensemble of the whole cell (eV)."
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
    supporting: bool = Field(
        False,
        description="Supporting evidence only: a check on the MLIP-MD alone where a "
        "reference MD ran beside it. It is reported but does not decide the verdict.",
    )


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
    references: list[ReferenceComparison] = Field(
        default_factory=list, description="MLIP-MD beside reference MD, per temperature."
    )
    reference_force_levels: list[float] = Field(
        default_factory=list,
        description="Per reference MD, the force error (meV/Å) above which its frames flag "
        "'missing'.",
    )
    n_labels: int = Field(0, description="Reference labels this screening requested.")
    n_label_failures: int = 0
    notes: list[str] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: verdict and the first pieces of evidence."""
        decisive = [e.message for e in self.evidence if not e.supporting]
        if not decisive:
            return f"{self.verdict}: no spike, no energy gap, reference at rest at MLIP minima"
        return f"{self.verdict}: " + "; ".join(decisive[:3])


# ---------------------------------------------------------------------------------------
# The science: pure functions (unit-tested on constructed cases)
# ---------------------------------------------------------------------------------------
def prediction_level(
    values: Any, alpha: float, m: int = 1, log: bool = True, min_ratio: float = 1.0
) -> float:
    """The level that one of ``m`` new values from the distribution of ``values`` exceeds
    with probability about ``alpha`` (a one-sided prediction limit).

    ``mean + t(1 − alpha/m, n − 1) · s · sqrt(1 + 1/n)`` with the sample mean and standard
    deviation (n − 1) of ``values``, or of their logarithms when ``log`` (positive,
    right-skewed quantities: uncertainties, force errors, σ^A); ``m`` splits ``alpha``
    over the values checked (Bonferroni). With a handful of test frames the t quantile
    widens the limit for the uncertainty of the test statistics themselves, which a
    plain mean + k·std ignores. At least ``min_ratio`` × the mean of ``values``.

    Raises
    ------
    ValueError
        Fewer than two finite (positive, for ``log``) values.
    """
    from scipy.stats import t as student_t  # scipy only where a verdict is judged

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if log:
        v = v[v > 0]
    if v.size < 2:
        raise ValueError(f"a prediction level needs at least 2 reference values, got {v.size}")
    x = np.log(v) if log else v
    q = float(student_t.ppf(1.0 - alpha / max(m, 1), v.size - 1))
    level = float(x.mean() + q * x.std(ddof=1) * np.sqrt(1.0 + 1.0 / v.size))
    level = float(np.exp(level)) if log else level
    return max(level, min_ratio * float(v.mean())) if min_ratio > 0 else level


def check_frame(
    frame: Frame,
    predicted_energy: float,
    predicted_forces: np.ndarray,
    kind: Literal["md", "minimum", "ground"],
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
        "md" for a sampled MD frame, "minimum" for an MLIP-relaxed state, "ground" for
        the ground state R0 (the zero of the energy gaps).
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
        energy_gap_eV=float(frame.energy) - float(predicted_energy),
        force_rmse_meV_per_A=float(np.sqrt(np.mean((f_ref - f_pred) ** 2)) * 1000),
        max_reference_force=float(np.max(np.linalg.norm(f_ref, axis=1))),
        sigma_a=sigma_a,
        max_displacement=max_disp,
    )


def _u_level(evaluation: EvaluationDocument, alpha: float, along: list[float]) -> float:
    """The per-frame uncertainty spike level from the test set's uncertainties and the
    ensemble's along the reference MD (``along``, already thinned)."""
    ref = evaluation.reference
    values = list(evaluation.predictions.get(f"u_{ref.key}") or []) + list(along)
    if len([v for v in values if v and np.isfinite(v) and v > 0]) >= 2:
        return prediction_level(values, alpha, min_ratio=0.0)
    # Only the summary is known (older documents): a normal model of the test set.
    from scipy.stats import t as student_t

    n = max(ref.n_frames, 2)
    q = float(student_t.ppf(1.0 - alpha, n - 1))
    return ref.u_mean + q * ref.u_std * np.sqrt(n / (n - 1)) * np.sqrt(1.0 + 1.0 / n)


def _baseline(
    test: list[Any] | None, along_references: list[list[float]], s: DiagnosticsSettings
) -> list[float]:
    """Test-set values and every ``baseline_every``-th value along each reference MD."""
    values = [float(v) for v in test or [] if v is not None]
    for series in along_references:
        values += [float(v) for v in series[s.baseline_every - 1 :: s.baseline_every]]
    return values


def _energy_errors_eV(pred: dict[str, list[Any]]) -> np.ndarray:
    """E_reference − E_ensemble of each test frame, whole cell (eV)."""
    ref = np.asarray(pred.get("energy_ref_per_atom") or [], dtype=float)
    out = np.asarray(pred.get("energy_pred_per_atom") or [], dtype=float)
    n = np.asarray(pred.get("n_atoms") or [1] * len(ref), dtype=float)
    return (ref - out) * n


def screening_verdict(
    evaluation: EvaluationDocument,
    md_uncertainties: dict[float, list[float]],
    checks: list[FrameCheck],
    settings: DiagnosticsSettings,
    material: str = "",
    references: list[ReferenceComparison] | None = None,
) -> ScreeningDocument:
    """Judge a first ensemble from its test-set statistics and MD checks.

    Parameters
    ----------
    evaluation
        The ensemble on the fixed test set: per-frame ``predictions`` (``u_<key>``,
        ``force_rmse``, ``force_max_error``, energies, ``sigma_a_ref``) set the levels.
    md_uncertainties
        The uncertainty (same key as ``evaluation.reference``) of every scored MD frame,
        per temperature.
    checks
        Sampled MD frames, MLIP minima and the ground state R0 compared with the
        reference (:func:`check_frame`). R0's energy error is the zero of every energy
        gap: a state counts by how much higher the reference puts it *relative to the
        ground state* than the ensemble does, so an ensemble whose energies are offset
        everywhere (an extrapolation down to R0 from thermal training data) is no flag.
    settings
        Chance rates and floors.
    material
        Name, for the document.
    references
        The MLIP-MD set beside reference MD (:func:`~active_mlip.makers.reference_md.
        compare_with_reference`), the paper's comparison: the ensemble's force error
        along the reference trajectory, and the off-site event counts of both.
    """
    s, pred = settings, evaluation.predictions
    evidence: list[Evidence] = []

    # missing (1): the ensemble itself says it has left familiar ground
    references = references or []
    u_along = _baseline([], [r.uncertainty for r in references], s)
    u_thr = _u_level(evaluation, s.frame_alpha, u_along)
    n_md = 0
    fractions = worst = 0.0
    for temperature, us in sorted(md_uncertainties.items()):
        u = np.asarray(us, dtype=float)
        if u.size == 0:
            continue
        n_md += u.size
        frac = float(np.mean(u > u_thr))
        fractions = max(fractions, frac)
        worst = max(worst, float(u.max() / u_thr))
        if frac > s.spike_fraction:
            evidence.append(
                Evidence(
                    flag="missing",
                    test="uncertainty",
                    message=f"uncertainty above {u_thr:.3g} (the test set's "
                    f"{1 - s.frame_alpha:.1%} level) in {frac:.0%} of {u.size} MD frames at "
                    f"{temperature:g} K (max {worst:.1f}× that level)",
                    value=frac,
                    threshold=s.spike_fraction,
                )
            )

    md_checks = [c for c in checks if c.kind == "md"]
    # The baselines of the checked frames: the test set (harmonic samples) and, where it
    # ran, the reference MD (the thermal ensemble the MLIP-MD should sample; every
    # ``baseline_every``-th frame, as neighbouring MD frames are alike).
    base_f = _baseline(pred.get("force_rmse"), [r.force_rmse for r in references], s)
    base_s = _baseline(pred.get("sigma_a_ref"), [r.sigma_a for r in references], s)
    base_e = _baseline(list(_energy_errors_eV(pred)), [r.energy_error_eV for r in references], s)
    # missing (2): the reference disagrees with the ensemble far more than on the baseline
    if md_checks and len(base_f) >= 2:
        thr = prediction_level(base_f, s.alpha, len(md_checks), min_ratio=s.min_ratio)
        bad = [c for c in md_checks if c.force_rmse_meV_per_A > thr]
        if bad:
            top = max(bad, key=lambda c: c.force_rmse_meV_per_A)
            evidence.append(
                Evidence(
                    flag="missing",
                    test="force_error",
                    message=f"force error {top.force_rmse_meV_per_A:.0f} meV/Å on the MD frame "
                    f"at step {top.step} ({top.temperature:g} K) against a level of "
                    f"{thr:.0f} meV/Å from the test set and reference MD; {len(bad)} of "
                    f"{len(md_checks)} checked frames",
                    value=top.force_rmse_meV_per_A,
                    threshold=thr,
                )
            )
    # missing (3): σ^A jumps: the trajectory reached strongly anharmonic configurations
    sig_md = [c for c in md_checks if c.sigma_a is not None]
    if len(base_s) >= 2 and sig_md:
        thr = prediction_level(base_s, s.alpha, len(sig_md), min_ratio=s.min_ratio)
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
                    f"{disp}, against a level of {thr:.2f} from the test set and reference MD",
                    value=top.sigma_a,
                    threshold=thr,
                )
            )

    evidence += _reference_evidence(references, pred, s)

    # hallucinated (1): states the ensemble puts far too low, relative to the ground state
    ground = next((c for c in checks if c.kind == "ground" and c.energy_gap_eV is not None), None)
    zero = ground.energy_gap_eV if ground is not None else 0.0
    states = [c for c in checks if c.kind != "ground" and c.energy_gap_eV is not None]
    gap_thr = s.energy_gap_eV
    errors = np.asarray(base_e) - zero
    if states and errors.size >= 2:
        level = prediction_level(errors, s.alpha, len(states), log=False, min_ratio=0.0)
        gap_thr = max(gap_thr, level)
    high = [c for c in states if c.energy_gap_eV - zero > gap_thr]
    # Beside a reference MD, a gap at an MLIP-MD frame is an MLIP-MD check like the others
    # (supporting); a gap at an MLIP minimum -- the state the ensemble believes in -- decides.
    groups = (
        [[c for c in high if c.kind == "minimum"], [c for c in high if c.kind != "minimum"]]
        if references
        else [high]
    )
    for group in groups:
        if not group:
            continue
        top = max(group, key=lambda c: c.energy_gap_eV)
        where = "MLIP minimum" if top.kind == "minimum" else f"MD frame at step {top.step}"
        evidence.append(
            Evidence(
                flag="hallucinated",
                test="energy_gap",
                message=f"relative to the ground state, the reference puts the {where} "
                f"({top.temperature:g} K) {top.energy_gap_eV - zero:.2f} eV higher than the "
                f"ensemble does (level {gap_thr:.2f} eV)",
                value=top.energy_gap_eV - zero,
                threshold=gap_thr,
                supporting=bool(references) and top.kind != "minimum",
            )
        )
    # hallucinated (2): the reference is not at rest where the ensemble relaxed to
    minima = [c for c in checks if c.kind == "minimum"]
    push_thr = s.residual_force
    if minima and len(pred.get("force_max_error") or []) >= 2:
        push_thr = max(push_thr, prediction_level(pred["force_max_error"], s.alpha, len(minima)))
    pushed = [c for c in minima if c.max_reference_force > push_thr]
    if pushed:
        top = max(pushed, key=lambda c: c.max_reference_force)
        evidence.append(
            Evidence(
                flag="hallucinated",
                test="relaxes_away",
                message=f"the reference pushes an atom with {top.max_reference_force:.2f} eV/Å "
                f"at the MLIP minimum reached from {top.temperature:g} K (level "
                f"{push_thr:.2f} eV/Å): it relaxes away",
                value=top.max_reference_force,
                threshold=push_thr,
            )
        )

    if references:
        # The reference MD answers what the MLIP-MD checks only suggest: where it ran,
        # a spike on MLIP-MD frames supports a 'missing' flag but does not raise one
        # (a harmonic control's checked frame at 2.75x the baseline mean, with flat
        # errors along the reference, no event and σ^A as expected, was a false flag).
        evidence = [
            e.model_copy(update={"supporting": True}) if e.test in MLIP_MD_CHECKS else e
            for e in evidence
        ]  # (an energy gap at an MLIP-MD frame was marked where it was found)
        evidence.sort(key=lambda e: e.supporting)
    flags = sorted(
        {e.flag for e in evidence if not e.supporting}, key=["missing", "hallucinated"].index
    )
    verdict = verdict_from(evidence)
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
        references=references,
        reference_force_levels=reference_force_levels(references, pred, s),
    )


def verdict_from(evidence: list[Evidence]) -> Verdict:
    """The verdict the evidence supports.

    A state that does not exist is the worse failure, so a hallucination flag wins --
    except an energy gap alone beside 'missing' evidence: the ensemble then puts a state
    too low that the reference keeps (it does not relax away, has no surplus events), which
    is what a genuine state absent from the training data looks like (CuI's off-site Cu).
    """
    decisive = [e for e in evidence if not e.supporting]
    tests = {e.test for e in decisive if e.flag == "hallucinated"}
    missing = any(e.flag == "missing" for e in decisive)
    if tests - {"energy_gap"} or (tests and not missing):
        return "hallucinated"
    return "missing" if missing else "ok"


def trajectory_level(values: list[float], s: DiagnosticsSettings) -> float:
    """A spike level from a trajectory's own values, robust to the spikes themselves.

    Median and MAD of the logarithms (up to half the frames may be spikes), a Student t
    quantile for ``len(values) / baseline_every`` independent frames (neighbouring MD
    frames are alike) and ``alpha`` split over all frames.
    """
    from scipy.stats import t as student_t

    v = np.log(np.asarray([x for x in values if x and x > 0], dtype=float))
    if v.size < 2:
        return 0.0
    n_eff = max(2, v.size // s.baseline_every)
    median = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - median)))
    q = float(student_t.ppf(1.0 - s.alpha / v.size, n_eff - 1))
    return float(np.exp(median + q * mad * np.sqrt(1.0 + 1.0 / n_eff)))


def reference_force_levels(
    references: list[ReferenceComparison], pred: dict[str, list[Any]], s: DiagnosticsSettings
) -> list[float]:
    """Per reference MD, the force error above which its frames flag 'missing'.

    A spike stands out from the test set AND from the trajectory's own errors (robust:
    an event may fill part of it); a uniform rise is the thermal ensemble against
    harmonic test frames, not an event. Empty without test-set force errors.
    """
    n_frames = sum(len(r.force_rmse) for r in references)
    if not n_frames or len(pred.get("force_rmse") or []) < 2:
        return []
    test = prediction_level(pred["force_rmse"], s.alpha, n_frames, min_ratio=s.min_ratio)
    return [max(test, trajectory_level(r.force_rmse, s)) for r in references]


def _reference_evidence(
    references: list[ReferenceComparison], pred: dict[str, list[Any]], s: DiagnosticsSettings
) -> list[Evidence]:
    """Flags from the reference MD: force errors along it, and the event counts."""
    from scipy.stats import binomtest  # scipy only where a verdict is judged

    out: list[Evidence] = []
    for r, thr in zip(references, reference_force_levels(references, pred, s), strict=False):
        over = [i for i, e in enumerate(r.force_rmse) if e > thr]
        if not over:
            continue
        i = max(over, key=lambda j: r.force_rmse[j])
        first = over[0]
        out.append(
            Evidence(
                flag="missing",
                test="reference_force_error",
                message=f"along the reference MD at {r.temperature:g} K the ensemble's force "
                f"error reaches {r.force_rmse[i]:.0f} meV/Å at {r.time_ps[i]:.2f} ps (an "
                f"atom {r.max_displacement[i]:.2f} Å from its site), first above the level "
                f"of {thr:.0f} meV/Å at {r.time_ps[first]:.2f} ps; {len(over)} of "
                f"{len(r.force_rmse)} frames",
                value=r.force_rmse[i],
                threshold=thr,
            )
        )
    for r in references:
        expected = r.sigma_a_expected
        if expected and r.sigma_a_mlip:
            ratio = r.sigma_a_mlip / expected
            message = (
                f"σ^A of the MLIP-MD at {r.temperature:g} K is {r.sigma_a_mlip:.2f}, "
                f"{ratio:.2f}× the {expected:.2f} expected from the reference MD's "
                f"{r.sigma_a_reference:.2f} and the ensemble's "
                f"{r.relative_force_error or 0.0:.0%} force error"
            )
            if ratio > s.sigma_a_ratio:
                out.append(
                    Evidence(
                        flag="hallucinated",
                        test="sigma_a_trajectory",
                        message=message,
                        value=ratio,
                        threshold=s.sigma_a_ratio,
                    )
                )
            elif ratio < 1 / s.sigma_a_ratio:
                out.append(
                    Evidence(
                        flag="missing",
                        test="sigma_a_trajectory",
                        message=message,
                        value=1 / ratio,
                        threshold=s.sigma_a_ratio,
                    )
                )
        n = r.events_reference + r.events_mlip
        if n == 0 or r.mlip_duration_ps <= 0:
            continue
        # Equal rates: the MLIP's share of all events follows its share of the time.
        p = r.mlip_duration_ps / (r.mlip_duration_ps + r.duration_ps)
        counts = (
            f"{r.events_reference} off-site events (> {r.event_distance:.2f} Å) in "
            f"{r.duration_ps:.1f} ps of reference MD at {r.temperature:g} K, "
            f"{r.events_mlip} in {r.mlip_duration_ps:.1f} ps of MLIP-MD"
        )
        fewer = binomtest(r.events_mlip, n, p, alternative="less").pvalue
        more = binomtest(r.events_mlip, n, p, alternative="greater").pvalue
        for flag, pvalue in (("missing", fewer), ("hallucinated", more)):
            if pvalue < s.alpha:
                # value and threshold as -log10 of the p-value and of alpha: larger fires
                out.append(
                    Evidence(
                        flag=flag,
                        test="event_rate",
                        message=f"{counts} (equal rates: p = {pvalue:.2g})",
                        value=float(-np.log10(pvalue)),
                        threshold=float(-np.log10(s.alpha)),
                    )
                )
    return out
