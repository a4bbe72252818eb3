"""Calibration of the screening's chance rates on synthetic in-distribution ensembles.

The levels of :func:`~active_mlip.makers.diagnostics.screening_verdict` are set for a
chance rate per check; whether the five checks together keep an ensemble whose MD stays
in its test distribution unflagged in ≥ 95 % of materials is measured here, by drawing
test sets and screenings from the same distributions (``docs/screening.md``;
``benchmarks/screening_chance_flags.py`` sets the rules before and after side by side).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from active_mlip.makers.diagnostics import DiagnosticsSettings, FrameCheck, screening_verdict
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.reference_md import ReferenceComparison
from active_mlip.makers.selection import ReferenceStatistics

#: Every check of :func:`screening_verdict`, by its evidence's ``test`` name.
CHECKS = (
    "uncertainty",
    "force_error",
    "sigma_a",
    "energy_gap",
    "relaxes_away",
    "reference_force_error",
    "event_rate",
    "sigma_a_trajectory",
)


def synthetic_screenings(
    n_test: int,
    n_trials: int,
    seed: int = 0,
    n_md: int = 60,
    n_check: int = 6,
    correlation: float = 0.9,
    spread: float = 0.3,
) -> Iterator[
    tuple[EvaluationDocument, dict[float, list[float]], list[FrameCheck], list[ReferenceComparison]]
]:
    """Screenings of ensembles whose MD stays in their test distribution (for calibration).

    Each draws a test set of ``n_test`` 64-atom frames and a screening whose every value
    comes from the same distributions: uncertainties log-normal with log-spread
    ``spread``, along the MD an AR(1) series of ``n_md`` scored frames with ``correlation``
    between neighbours (MD frames are alike); force errors, σ^A and the largest per-atom
    force errors log-normal; energy errors (whole cell, eV) normal with an offset that
    the ground state shares; ``n_check`` MD frames, one minimum and the ground state
    are checked. Beside the MLIP-MD runs a reference MD of the same length: the
    ensemble's force errors along it follow the test set's (as an AR(1) series), both
    trajectories have off-site events at the same Poisson rate (2 per run), and the
    MLIP-MD's σ^A is the reference's (0.45, ±5 % between runs) with the ensemble's force
    error added in quadrature (about 0.1).

    Yields
    ------
    tuple
        (evaluation, MD uncertainties by temperature, checks, reference comparisons):
        the arguments of :func:`screening_verdict`.
    """
    rng = np.random.default_rng(seed)
    n_atoms = 64

    def lognormal(center: float, s: float, size: int | None = None) -> Any:
        return center * np.exp(s * rng.standard_normal(size))

    def check(kind: Literal["md", "minimum", "ground"], fmax: float) -> FrameCheck:
        gap = float(rng.normal(0.2, 0.05))
        return FrameCheck(
            kind=kind,
            temperature=300.0,
            step=0,
            energy_gap_meV_per_atom=gap / n_atoms * 1000,
            energy_gap_eV=gap,
            force_rmse_meV_per_A=float(lognormal(50.0, spread / 2)),
            max_reference_force=fmax,
            sigma_a=float(lognormal(0.3, spread / 3)),
        )

    for _ in range(n_trials):
        u_test = lognormal(0.1, spread, n_test)
        e_err = rng.normal(0.2, 0.05, n_test)
        e_ref = rng.normal(-3.0, 0.003, n_test)
        evaluation = EvaluationDocument(
            n_frames=n_test,
            n_members=4,
            mae_energy_meV_per_atom=1.0,
            rmse_energy_meV_per_atom=1.0,
            mae_forces_meV_per_A=40.0,
            rmse_forces_meV_per_A=50.0,
            reference=ReferenceStatistics(
                key="force_max",
                u_mean=float(u_test.mean()),
                u_std=float(u_test.std()),
                e_mean=-3.0 * n_atoms,
                e_std=0.2,
                n_frames=n_test,
            ),
            predictions={
                "u_force_max": u_test.tolist(),
                "n_atoms": [n_atoms] * n_test,
                "energy_ref_per_atom": e_ref.tolist(),
                "energy_pred_per_atom": (e_ref - e_err / n_atoms).tolist(),
                "force_rmse": lognormal(50.0, spread / 2, n_test).tolist(),
                "force_max_error": lognormal(0.15, spread / 2, n_test).tolist(),
                "sigma_a_ref": lognormal(0.3, spread / 3, n_test).tolist(),
            },
        )
        walk = np.empty(n_md)
        walk[0] = rng.standard_normal()
        noise = rng.standard_normal(n_md) * np.sqrt(1 - correlation**2)
        for i in range(1, n_md):
            walk[i] = correlation * walk[i - 1] + noise[i]
        md_u = (0.1 * np.exp(spread * walk)).tolist()
        checks = [check("md", 1.0) for _ in range(n_check)]
        checks.append(check("minimum", float(lognormal(0.15, spread / 2))))
        checks.append(check("ground", 0.0))
        walk_f, walk_u = np.empty(n_md), np.empty(n_md)
        walk_f[0], walk_u[0] = rng.standard_normal(2)
        for i in range(1, n_md):
            step = rng.standard_normal(2) * np.sqrt(1 - correlation**2)
            walk_f[i] = correlation * walk_f[i - 1] + step[0]
            walk_u[i] = correlation * walk_u[i - 1] + step[1]
        sigma_ref = 0.45 * (1 + 0.05 * rng.standard_normal())
        reference = ReferenceComparison(
            temperature=300.0,
            duration_ps=2.4,
            mlip_duration_ps=2.4,
            event_distance=1.0,
            events_reference=int(rng.poisson(2.0)),
            events_mlip=int(rng.poisson(2.0)),
            time_ps=[0.04 * (i + 1) for i in range(n_md)],
            force_rmse=(50.0 * np.exp(spread / 2 * walk_f)).tolist(),
            uncertainty=(0.1 * np.exp(spread * walk_u)).tolist(),
            max_displacement=[0.3] * n_md,
            sigma_a_reference=sigma_ref,
            sigma_a_mlip=float(np.hypot(sigma_ref * (1 + 0.05 * rng.standard_normal()), 0.1)),
            relative_force_error=0.1,
        )
        yield evaluation, {300.0: md_u}, checks, [reference]


def chance_flag_rate(
    settings: DiagnosticsSettings, n_test: int, n_trials: int = 2000, seed: int = 0, **kw: Any
) -> dict[str, float]:
    """How often :func:`screening_verdict` flags an in-distribution ensemble.

    The calibration behind the default chance rates (``docs/screening.md``): the
    screenings of :func:`synthetic_screenings` (``**kw`` are its options) judged with
    ``settings``.

    Returns
    -------
    dict
        ``"any"``: fraction of trials flagged (verdict not 'ok'); and the fraction per
        check that fired (supporting evidence included)
        (``uncertainty``, ``force_error``, ``sigma_a``, ``energy_gap``, ``relaxes_away``,
        ``reference_force_error``, ``event_rate``, ``sigma_a_trajectory``).
    """
    counts = dict.fromkeys(("any", *CHECKS), 0)
    for evaluation, md_u, checks, references in synthetic_screenings(n_test, n_trials, seed, **kw):
        doc = screening_verdict(evaluation, md_u, checks, settings, references=references)
        fired = {e.test for e in doc.evidence}
        counts["any"] += doc.verdict != "ok"  # a flag; supporting evidence alone is none
        for t in fired:
            counts[t] += 1
    return {k: v / n_trials for k, v in counts.items()}
