"""Starting a MACE training run: forked from a warm fork server vs a fresh ``python -c``.

Every ensemble member trains in a process of its own (``makers/mace_runner.py``). This
trains the same member (same data, seed and threads) ``--repeats`` times each way,
alternating the two so that load from other processes hits both alike, and prints the
median wall time per run, the part of it MACE did not log as epochs (start-up, data
loading, model building, saving), and the ratios fresh / forked. Run from the
repository root::

    python benchmarks/trainer_startup.py [--repeats 5] [--epochs 5] [--preset quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ase.build import bulk
from ase.calculators.emt import EMT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from active_mlip.core.frames import Frame  # noqa: E402
from active_mlip.makers import mace_runner  # noqa: E402
from active_mlip.makers.training import run_mace_training  # noqa: E402
from active_mlip.workflows.presets import training_preset  # noqa: E402
from benchmarks.training_cost import epoch_curve  # noqa: E402

MODES = ("forkserver", "subprocess")


def frames(n: int) -> list[Frame]:
    """``n`` rattled 32-atom fcc Cu cells labelled with EMT."""
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.08, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        out.append(Frame.from_atoms(atoms, index=i))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per start method")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run")
    parser.add_argument("--preset", default="quick", help="training preset (tiny|quick|paper)")
    parser.add_argument("--n-frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    args = parser.parse_args()

    data = frames(args.n_frames)
    n_valid = max(1, args.n_frames // 8)
    train, valid = data[n_valid:], data[:n_valid]
    settings = training_preset(
        args.preset, max_num_epochs=args.epochs, num_threads=args.threads, device="cpu"
    )
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    outside: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="trainer-startup-") as tmp:
        for r in range(args.repeats):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                os.environ[mace_runner.LAUNCH_ENV] = mode
                workdir = Path(tmp) / f"{mode}-{r}"
                t0 = time.perf_counter()
                run_mace_training(train, valid, {"Cu": 3.51}, settings, 3, workdir, device="cpu")
                seconds = time.perf_counter() - t0
                _, curve = epoch_curve(workdir)
                wall[mode].append(seconds)
                outside[mode].append(seconds - sum(t for _, _, t in curve))
                out = outside[mode][-1]
                print(f"run {r} {mode:10s} {seconds:6.2f} s ({out:5.2f} s outside epochs)")
    med = {m: statistics.median(wall[m]) for m in MODES}
    med_out = {m: statistics.median(outside[m]) for m in MODES}
    print(
        f"{args.preset} preset, {args.epochs} epochs, {len(train)} training frames of 32 atoms, "
        f"{args.threads} thread(s), {args.repeats} runs each (medians):"
    )
    for m in MODES:
        print(f"  {m:10s} {med[m]:6.2f} s per run, {med_out[m]:5.2f} s of it outside the epochs")
    print(
        f"fresh / forked: wall time {med['subprocess'] / med['forkserver']:.2f}x, "
        f"time outside the epochs {med_out['subprocess'] / med_out['forkserver']:.2f}x"
    )


if __name__ == "__main__":
    main()
