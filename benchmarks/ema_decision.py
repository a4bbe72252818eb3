"""EMA or not in the ``quick`` preset: the main job's test error with and without it.

MACE recommends an exponential moving average (EMA) of the weights; the ``paper``
preset uses one. The paper-result issue decided to put it into ``quick`` if the main job
(``active-mlip run CuI --preset quick``) ends with a test force error no worse than
without it. This runs the main job's loop both ways at each ``--seeds`` (the preset's
own seed first) and prints the test force MAE per iteration side by side::

    python benchmarks/ema_decision.py --workdir runs/ema --seeds 0 23

Everything is cached in ``--workdir``; a rerun prints the stored results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
for _var in ("ACTIVE_MLIP_MONGO_URI", "ACTIVE_MLIP_STORE_FILE"):
    os.environ.pop(_var, None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from active_mlip.app.local import run_local  # noqa: E402
from active_mlip.workflows.settings import ActiveLearningSettings  # noqa: E402


def curve(workdir: Path, seed: int | None, ema: bool) -> tuple[list[float], float]:
    """Test force MAE (meV/Å) of each iteration's ensemble, and the wall time (s)."""
    loop = {} if seed is None else {"seed": seed}
    settings = ActiveLearningSettings.from_preset("quick", loop=loop, training={"ema": ema})
    t0 = time.time()
    summary = run_local("CuI", workdir, settings)
    maes = [it["test_mae_forces_meV_per_A"] for it in summary["iterations"]]
    return maes, time.time() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/ema"))
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[-1], help="loop seeds (-1: the preset's)"
    )
    args = parser.parse_args(argv)
    for seed in args.seeds:
        s = None if seed < 0 else seed
        rows = {}
        for ema in (False, True):
            work = args.workdir / f"seed{seed}_{'ema' if ema else 'plain'}"
            rows[ema] = curve(work, s, ema)
        for ema, (maes, wall) in rows.items():
            print(
                f"seed {'preset' if s is None else s}, EMA {'on ' if ema else 'off'}: test force "
                f"MAE {' -> '.join(f'{m:.1f}' for m in maes)} meV/Å ({wall:.0f} s)",
                flush=True,
            )
        final = {ema: maes[-1] for ema, (maes, _) in rows.items()}
        print(
            f"  final with / without EMA: {final[True] / final[False]:.3f} "
            f"({'no worse' if final[True] <= final[False] else 'worse'})",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
