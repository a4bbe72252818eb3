"""Chance flags of the screening: how often an ensemble whose MD stays in distribution is flagged.

Runs :func:`active_mlip.makers.screening_calibration.synthetic_screenings` (test set and screening
drawn from the same distributions) through the screening's rules, side by side in one
run: the current rules (prediction levels with a Bonferroni split, energies relative to
the ground state in eV per event, residual forces against the ensemble's own errors) and
the rules the review measured (``mean + 3·std`` levels, 5 % of frames, a per-atom energy
gap with a 10 meV/atom floor, an absolute 0.2 eV/Å residual force), re-implemented here.

    python benchmarks/screening_chance_flags.py [--trials 4000]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from active_mlip.makers.diagnostics import DiagnosticsSettings, FrameCheck, screening_verdict
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.screening_calibration import CHECKS, synthetic_screenings

TESTS = CHECKS


def review_rules(
    evaluation: EvaluationDocument, md_u: dict[float, list[float]], checks: list[FrameCheck]
) -> set[str]:
    """The checks that fire under the rules before this change (session 11's diagnostics)."""
    ref, pred, fired = evaluation.reference, evaluation.predictions, set()

    def old_level(values: list[float]) -> float:
        v = np.asarray(values, dtype=float)
        return max(v.mean() + 3 * v.std(), 1.5 * v.mean())

    for us in md_u.values():
        if np.mean(np.asarray(us) > ref.u_mean + 3 * ref.u_std) > 0.05:
            fired.add("uncertainty")
    md = [c for c in checks if c.kind == "md"]
    if any(c.force_rmse_meV_per_A > old_level(pred["force_rmse"]) for c in md):
        fired.add("force_error")
    if any(c.sigma_a > old_level(pred["sigma_a_ref"]) for c in md):
        fired.add("sigma_a")
    errors = (np.asarray(pred["energy_ref_per_atom"]) - pred["energy_pred_per_atom"]) * 1000
    gap = max(10.0, errors.mean() + 3 * errors.std())
    if any(c.energy_gap_meV_per_atom > gap for c in checks if c.kind != "ground"):
        fired.add("energy_gap")
    if any(c.max_reference_force > 0.2 for c in checks if c.kind == "minimum"):
        fired.add("relaxes_away")
    return fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = DiagnosticsSettings()
    print(f"{args.trials} synthetic in-distribution screenings per row; flag rates in %")
    print(
        f"{'n_test':>6} {'corr':>5} {'spread':>6} | {'rules':<7} {'any':>5} "
        + " ".join(f"{t[:9]:>9}" for t in TESTS)
    )
    t0 = time.perf_counter()
    for n_test, corr, spread in itertools.product((16, 100), (0.5, 0.9), (0.2, 0.4)):
        counts = {
            "now": dict.fromkeys(("any", *TESTS), 0),
            "review": dict.fromkeys(("any", *TESTS), 0),
        }
        for ev, md_u, checks, refs in synthetic_screenings(
            n_test, args.trials, args.seed, correlation=corr, spread=spread
        ):
            doc = screening_verdict(ev, md_u, checks, settings, references=refs)
            now = {e.test for e in doc.evidence}
            for name, fired in (("now", now), ("review", review_rules(ev, md_u, checks))):
                counts[name]["any"] += bool(fired)
                for t in fired:
                    counts[name][t] += 1
        for name in ("now", "review"):
            rate = {k: 100 * v / args.trials for k, v in counts[name].items()}
            print(
                f"{n_test:>6} {corr:>5} {spread:>6} | {name:<7} {rate['any']:>5.1f} "
                + " ".join(f"{rate[t]:>9.1f}" for t in TESTS)
            )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
