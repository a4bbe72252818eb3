"""A hallucinated state removed by active learning: AgGaSe2, the paper's second archetype.

The first ensemble of AgGaSe2 (the ``quick`` preset, CHGNet as the reference) is flagged
*hallucinated* by the screening: the MLIP-MD settles into states the ensemble puts far
too low, and the reference relaxes away from them (``docs/screening.md``). The campaign
then runs active learning on the material. This benchmark measures the same thing for
the first and the last ensemble, so the before/after can be read off:

1. MLIP-MD with the ensemble mean at T from the ground state R0 (``--walkers`` runs of
   ``--frames`` logged frames, 40 fs apart); every ``--stride``-th frame and the
   MLIP-relaxed end state of each run are the *visited states*;
2. their **energy gap**: the reference's energy relative to R0 minus the ensemble's
   (eV per cell; positive: the ensemble puts the state too low, a false stable state);
3. whether the reference **relaxes away** from the MLIP minima: the largest atomic
   displacement (Å) and the energy drop (eV) of a reference relaxation started there.

Run from the repository root (everything is cached in ``--workdir``; a rerun resumes)::

    python benchmarks/hallucination.py --workdir runs/hallucination [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")
for _var in ("ACTIVE_MLIP_MONGO_URI", "ACTIVE_MLIP_STORE_FILE"):
    os.environ.pop(_var, None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_efficiency import loop_result  # noqa: E402
from rare_events import log, mlip_md  # noqa: E402

from active_mlip.core.documents import as_model  # noqa: E402
from active_mlip.core.frames import Frame  # noqa: E402
from active_mlip.makers.schemas import EnsembleDocument  # noqa: E402
from active_mlip.workflows.settings import ActiveLearningSettings  # noqa: E402

MATERIAL = "AgGaSe2"


def loop_settings(preset: str, seed: int, iterations: int) -> ActiveLearningSettings:
    """The preset with the screening on (a flagged material goes on learning)."""
    return ActiveLearningSettings.from_preset(
        preset,
        loop={"seed": seed, "max_iterations": iterations},
        screening={"enabled": True},
    )


def run_loop(workdir: Path, settings: ActiveLearningSettings) -> dict[str, Any]:
    """Run (or reuse) the loop; the first and last ensembles, R0, the screening verdict."""
    from active_mlip.app.local import run_local

    t0 = time.time()
    summary = run_local(MATERIAL, workdir, settings)
    log(f"loop: {summary['stop_reason']} ({time.time() - t0:.0f} s)")
    store, result = loop_result(workdir / "store")
    fc = store.get_output(result.state.fc_uuid, load=True)
    verdict = store.docs_store.query_one({"name": f"{MATERIAL} screening verdict"})
    screening = store.get_output(verdict["uuid"], load=True) if verdict else None
    ensembles = [
        as_model(store.get_output(h.ensemble_uuid, load=True), EnsembleDocument)
        for h in result.state.history
    ]
    return {
        "summary": summary,
        "r0": as_model(fc["reference"], Frame),
        "first": ensembles[0],
        "last": ensembles[-1],
        "labels": [h.n_train for h in result.state.history],
        "verdict": None if screening is None else screening.get("verdict"),
    }


def visited_states(
    ensemble: EnsembleDocument, r0: Frame, args: argparse.Namespace
) -> dict[str, Any]:
    """Energy gaps along the MLIP-MD and at its minima; how far the reference relaxes away."""
    from ase.optimize import FIRE

    from active_mlip.makers.ensemble import EnsembleCalculator
    from active_mlip.makers.labelling import CHGNetLabeller
    from active_mlip.makers.screening_jobs import relax

    mlip = EnsembleCalculator.from_document(ensemble, device="auto", compute_stress=False)
    ref = CHGNetLabeller().get_calculator()

    def energies(atoms: Any) -> tuple[float, float]:
        a = atoms.copy()
        a.calc = mlip
        e_mlip = float(a.get_potential_energy())
        a.calc = ref
        return e_mlip, float(a.get_potential_energy())

    m0, r0e = energies(r0.to_atoms())
    along, minima = [], []
    for k in range(args.walkers):
        run = mlip_md(ensemble, r0, args.temperature, args.frames, args.seed * 100 + k)
        for frame in run["frames"][args.stride - 1 :: args.stride]:
            m, r = energies(frame.unlabelled().to_atoms())
            along.append((r - r0e) - (m - m0))
        end, converged = relax(run["frames"][-1].unlabelled().to_atoms(), mlip, 0.05, 300)
        m, r = energies(end)
        away = end.copy()
        away.calc = ref
        FIRE(away, logfile=None).run(fmax=0.05, steps=300)
        shift = np.linalg.norm(away.get_positions() - end.get_positions(), axis=1).max()
        minima.append(
            {
                "gap": (r - r0e) - (m - m0),
                "mlip_relative_eV": m - m0,
                "reference_relative_eV": r - r0e,
                "reference_relaxes_by_A": float(shift),
                "reference_drop_eV": r - float(away.get_potential_energy()),
                "mlip_relax_converged": converged,
                "blew_up": run["blew_up"],
            }
        )
    return {"gaps_along": along, "minima": minima}


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    every = out["first"]["gaps_along"] + out["last"]["gaps_along"]
    bins = np.linspace(min(every), max(every), 40)
    for name, style in (("first", "C3"), ("last", "C0")):
        res = out[name]
        label = f"{'first' if name == 'first' else 'last'} ensemble ({res['labels']} labels)"
        axes[0].hist(res["gaps_along"], bins=bins, alpha=0.5, color=style, label=label)
        gaps = [m["gap"] for m in res["minima"]]
        shifts = [m["reference_relaxes_by_A"] for m in res["minima"]]
        axes[1].scatter(shifts, gaps, color=style, label=label, s=40)
    axes[0].set_xlabel("energy gap along MLIP-MD: ΔE_reference − ΔE_MLIP (eV per cell)")
    axes[0].set_ylabel("visited frames")
    axes[1].set_xlabel("reference relaxation from the MLIP minimum: largest shift (Å)")
    axes[1].set_ylabel("energy gap at the MLIP minimum (eV per cell)")
    axes[0].axvline(0, color="grey", lw=0.6)
    axes[1].axhline(0, color="grey", lw=0.6)
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{MATERIAL} (CHGNet reference), MLIP-MD at {out['temperature']:g} K, seed "
        f"{out['seed']}: positive gap = the ensemble puts the state too low",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/hallucination"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--preset", default="quick", help="'tiny' checks the script")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--walkers", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60, help="logged frames per MLIP-MD")
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/hallucination.png"))
    parser.add_argument("--replot", type=Path, default=None, help="plot a stored JSON only")
    args = parser.parse_args(argv)
    if args.replot is not None:
        plot(json.loads(args.replot.read_text()), args.plot)
        return
    t0 = time.time()
    loop = run_loop(
        args.workdir / f"seed{args.seed}", loop_settings(args.preset, args.seed, args.iterations)
    )
    out: dict[str, Any] = {
        "seed": args.seed,
        "temperature": args.temperature,
        "verdict_first": loop["verdict"],
        "stop_reason": loop["summary"]["stop_reason"],
    }
    for name in ("first", "last"):
        res = visited_states(loop[name], loop["r0"], args)
        res["labels"] = loop["labels"][0 if name == "first" else -1]
        out[name] = res
        gaps = np.asarray(res["gaps_along"])
        log(
            f"{name} ensemble ({res['labels']} labels): gap along MLIP-MD median "
            f"{np.median(gaps):+.3f} eV, largest {gaps.max():+.3f}; at the minima "
            + ", ".join(
                f"{m['gap']:+.3f} eV (reference moves {m['reference_relaxes_by_A']:.2f} Å, "
                f"drops {m['reference_drop_eV']:.3f} eV)"
                for m in res["minima"]
            )
        )
    out["wall_seconds"] = time.time() - t0
    path = args.workdir / f"hallucination_seed{args.seed}.json"
    path.write_text(json.dumps(out, indent=1))
    plot(out, args.plot)
    log(f"screening verdict of the first ensemble: {loop['verdict']}; {path}; {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
