"""Training cost per iteration: warm-started members vs members trained from scratch.

The setting is one step of the loop on 64-atom CuI labelled by CHGNet:

1. an ensemble (``n_sub`` subsets x ``n_seed`` seeds, the ``quick`` training preset) is
   trained from scratch on ``--n-initial`` harmonic samples at 300 K (the initial set);
2. the pool grows by ``--n-new`` frames (harmonic samples at ``--new-temperature``, a
   stand-in for the high-uncertainty MD frames an iteration adds; they join the subsets
   and their validation sets the way the loop assigns them, old frames keep their roles);
3. every member is trained again on the grown pool, (a) warm-started from its previous
   member (``--foundation_model parent --multiheads_finetuning False``, the preset's
   warm-start learning rate) and (b) from scratch, with the same epoch budget, one run
   after the other (interleaved, so that load from other processes hits both alike).

MACE logs the validation force RMSE after every epoch and the time of every optimiser
step and evaluation (``results/*_train.txt``). For each member the target is the scratch
run's best validation force RMSE (and, less strict, 1.1x it, and the scratch run's final
level: the mean of its last ``LEVEL_WINDOW`` evaluations, which unlike the best is not the
minimum of a noisy plateau); the cost of reaching each is
counted in epochs (independent of machine load) and in seconds: the run's wall time
(subprocess start, data loading, model building and saving included) minus the time MACE
logged for the epochs after the target was reached, i.e. the wall time of a run that
stopped there. Prints the ratios scratch / warm per member, their median, and the
verdict for the target (>= 3x). Run from the repository root::

    python benchmarks/training_cost.py [--epochs 30] [--n-seed 2] [--threads 1] [--plot F.png]
    python benchmarks/training_cost.py --ema [--no-scratch-ema]  # EMA of the weights
    python benchmarks/training_cost.py --from-curves F.json [--plot F.png]  # no training
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pymatgen.io.ase import AseAtomsAdaptor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from active_mlip.core.frames import Frame  # noqa: E402
from active_mlip.makers.labelling import CHGNetLabeller  # noqa: E402
from active_mlip.makers.sampling import compute_force_constants, harmonic_samples  # noqa: E402
from active_mlip.makers.training import run_mace_training, split_subset  # noqa: E402
from active_mlip.workflows.materials import get_structure  # noqa: E402
from active_mlip.workflows.presets import training_preset  # noqa: E402

TARGET_RATIO = 3.0
#: Evaluations averaged for the scratch run's final level.
LEVEL_WINDOW = 10
#: The targets, as keys of a member's row: factors of the scratch best, or LEVEL.
LEVEL = "level"
TARGETS: tuple[float | str, ...] = (1.0, 1.1, LEVEL)


def target_label(key: float | str) -> str:
    """How the summary names a target."""
    if key == LEVEL:
        return f"scratch final level (mean of last {LEVEL_WINDOW})"
    return f"{key:g}x scratch best"


def targets(scratch_curve: list[tuple[int, float, float]]) -> dict[float | str, float]:
    """Validation force RMSE targets from the scratch run's curve, by key."""
    rmses = [r for _, r, _ in scratch_curve]
    best = min(rmses)
    out: dict[float | str, float] = {k: k * best for k in TARGETS if k != LEVEL}
    out[LEVEL] = statistics.fmean(rmses[-LEVEL_WINDOW:])
    return out


def epoch_curve(workdir: Path) -> tuple[float | None, list[tuple[int, float, float]]]:
    """Initial validation force RMSE (meV/Å) and per epoch (epoch, RMSE, seconds logged).

    The seconds of an epoch are MACE's own timings of its optimiser steps and of its
    validation pass.
    """
    (path,) = (workdir / "results").glob("*_train.txt")
    step_time: dict[int, float] = {}
    evals: dict[int, tuple[float, float]] = {}
    initial = None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("mode") == "opt":
            step_time[row["epoch"]] = step_time.get(row["epoch"], 0.0) + row["time"]
        elif row.get("mode") == "eval":
            if row.get("epoch") is None:
                initial = 1e3 * row["rmse_f"]
            else:
                evals[row["epoch"]] = (1e3 * row["rmse_f"], row["time"])
    curve = [(e, f, step_time.get(e, 0.0) + t) for e, (f, t) in sorted(evals.items())]
    return initial, curve


def cost_to_reach(
    target: float, initial: float | None, curve: list[tuple[int, float, float]], wall: float
) -> tuple[int | None, float | None]:
    """Epochs and seconds until the validation force RMSE is <= ``target`` (None: never)."""
    logged = sum(t for _, _, t in curve)
    if initial is not None and initial <= target:
        return 0, wall - logged
    for k, (_, rmse, _) in enumerate(curve):
        if rmse <= target:
            return k + 1, wall - sum(t for _, _, t in curve[k + 1 :])
    return None, None


def time_axis(
    initial: float | None, curve: list[tuple[int, float, float]], wall: float
) -> tuple[list[float], list[float]]:
    """Seconds since the run started and validation force RMSE at each evaluation.

    The time outside the logged epochs (start-up, data, saving) is put before the
    first evaluation, as :func:`cost_to_reach` counts it.
    """
    t = wall - sum(dt for _, _, dt in curve)
    xs, ys = ([t], [initial]) if initial is not None else ([], [])
    for _, rmse, dt in curve:
        t += dt
        xs.append(t)
        ys.append(rmse)
    return xs, ys


def plot(runs: list[dict], title: str, path: Path) -> None:
    """Validation force RMSE against wall time, warm and scratch, one panel per member.

    ``runs`` holds per member ``member`` and ``warm`` / ``scratch`` as (initial RMSE,
    curve, wall seconds); the target lines come from the scratch curve (:func:`targets`).
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.8), dpi=90, squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for name, style in (("warm", "-"), ("scratch", "--")):
            xs, ys = time_axis(*run[name])
            ax.plot(xs, ys, style, marker=".", ms=3, label=f"{name} start")
        lines = targets(run["scratch"][1])
        ax.axhline(lines[1.0], color="grey", lw=0.8, label="scratch best")
        ax.axhline(lines[LEVEL], color="grey", lw=0.8, ls=":", label="scratch final level")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else "")
        )
        ax.set_xlim(left=0)
        ax.set_xlabel("wall time of the run (s)")
        ax.set_ylabel("validation force RMSE (meV/Å)")
        ax.set_title(f"member {run['member']}")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend()
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def train(frames, e0s, settings, seed, workdir, parent=None):
    """One MACE run; returns (model path, wall seconds, initial RMSE, curve)."""
    t0 = time.perf_counter()
    model, _ = run_mace_training(
        frames[0], frames[1], e0s, settings, seed, workdir, parent_model=parent
    )
    wall = time.perf_counter() - t0
    initial, curve = epoch_curve(workdir)
    return model, wall, initial, curve


def make_data(args) -> tuple[list[Frame], list[Frame], dict[str, float]]:
    labeller = CHGNetLabeller(device=args.chgnet_device)
    cell = tuple(args.supercell)
    supercell = Frame.from_atoms(AseAtomsAdaptor.get_atoms(get_structure("CuI") * cell))
    fc = compute_force_constants(supercell, labeller)
    initial = harmonic_samples(fc, 300.0, args.n_initial, seed=0)
    new = harmonic_samples(fc, args.new_temperature, args.n_new, seed=1)
    label = labeller.label_frame
    initial = [label(f) for f in initial]
    new = [label(f).with_info(new=True) for f in new]
    e0s = labeller.isolated_atom_energies(["Cu", "I"])
    return initial, new, e0s


def print_summary(
    rows: list[dict], budgets: tuple[int, int], preset: str
) -> dict[float | str, tuple]:
    """Print the medians over members; return {target key: (epochs, seconds) ratios}."""
    out: dict[float | str, tuple] = {}
    if all("budget" in row for row in rows):
        (c_f, c_s), (w_f, w_s) = (
            list(zip(*(row["budget"][k] for row in rows), strict=True)) for k in (0, 1)
        )
        print(
            f"as the {preset} preset runs them ({budgets[0]} epochs scratch, {budgets[1]} "
            f"warm): valid F RMSE scratch {statistics.median(c_f):.1f}, warm "
            f"{statistics.median(w_f):.1f} meV/Å (medians); seconds scratch/warm = "
            f"{statistics.median([c / w for c, w in zip(c_s, w_s, strict=True)]):.2f}x"
        )
    for key in (k for k in TARGETS if k in rows[0]):
        label = target_label(key)
        ep_ratios, s_ratios, never = [], [], 0
        for row in rows:
            _, w_ep, w_s, c_ep, c_s = row[key]
            if w_ep is None:
                never += 1
                continue
            # A warm run at target before any epoch costs 0 epochs: count it as 1.
            ep_ratios.append(c_ep / max(w_ep, 1))
            s_ratios.append(c_s / w_s)
        if not s_ratios:
            print(f"target {label}: warm runs never reached it")
            continue
        med_ep, med_s = statistics.median(ep_ratios), statistics.median(s_ratios)
        out[key] = (med_ep, med_s)
        verdict = "MET" if med_s >= TARGET_RATIO else "MISSED"
        print(
            f"target {label}: scratch/warm epochs = {med_ep:.2f}x, "
            f"seconds = {med_s:.2f}x (median of {len(s_ratios)} members; per member "
            f"{', '.join(f'{r:.2f}' for r in s_ratios)}"
            + (f"; {never} warm runs never reached it" if never else "")
            + f") -> target >= {TARGET_RATIO:g}x in wall time: {verdict}"
        )

    return out


def target_costs(run: dict) -> dict[float | str, tuple]:
    """Per target key: (target, warm epochs, warm s, scratch epochs, scratch s) of a run.

    ``run`` is one entry of the curves file: ``warm`` and ``scratch`` as (initial RMSE,
    curve, wall seconds).
    """
    (w_init, w_curve, w_wall), (c_init, c_curve, c_wall) = run["warm"], run["scratch"]
    return {
        key: (
            target,
            *cost_to_reach(target, w_init, w_curve, w_wall),
            *cost_to_reach(target, c_init, c_curve, c_wall),
        )
        for key, target in targets(c_curve).items()
    }


def fmt(x: float | int | None, spec: str = ".1f") -> str:
    return "never" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epoch budget of every run")
    parser.add_argument("--n-sub", type=int, default=2)
    parser.add_argument("--n-seed", type=int, default=2)
    parser.add_argument("--n-initial", type=int, default=32)
    parser.add_argument("--n-new", type=int, default=12)
    parser.add_argument("--new-temperature", type=float, default=600.0)
    parser.add_argument("--supercell", type=int, nargs=3, default=[2, 2, 2])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per MACE run")
    parser.add_argument("--preset", default="quick", help="training preset (tiny|quick|paper)")
    parser.add_argument("--chgnet-device", default="cpu")
    parser.add_argument("--warm-lr", type=float, default=None, help="default: the preset's")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="validate and keep an exponential moving average of the weights (every run, "
        "parents too); default: the preset's",
    )
    parser.add_argument("--ema-decay", type=float, default=None, help="default: the preset's")
    parser.add_argument(
        "--scratch-ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="EMA in the scratch runs alone (default: as --ema), e.g. --ema --no-scratch-ema "
        "compares EMA warm runs with plain scratch runs",
    )
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the learning curves")
    parser.add_argument(
        "--from-curves",
        type=Path,
        default=None,
        help="a curves file a --plot run wrote: summarise (and with --plot redraw) it, no training",
    )
    args = parser.parse_args()
    if args.from_curves:
        runs = json.loads(args.from_curves.read_text())
        print_summary([target_costs(run) for run in runs], (0, 0), args.preset)
        if args.plot:
            plot(runs, f"learning curves of {args.from_curves.name}", args.plot)
            print(f"plot: {args.plot}")
        return

    t0 = time.perf_counter()
    initial, new, e0s = make_data(args)
    n_atoms = len(initial[0].numbers)
    print(
        f"CuI {n_atoms} atoms, CHGNet labels: {len(initial)} initial frames (300 K) + "
        f"{len(new)} new ({args.new_temperature:g} K), labelled in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    preset = training_preset(args.preset)
    # The loop's own budgets (scratch, warm) for the "as configured" comparison.
    budgets = (preset.max_num_epochs, preset.warm_start_epochs or preset.max_num_epochs)
    settings = training_preset(
        args.preset,
        n_sub=args.n_sub,
        n_seed=args.n_seed,
        max_num_epochs=args.epochs,
        warm_start_epochs=args.epochs,  # same budget: the curves show where each gets
        num_threads=args.threads,
        **({"warm_start_lr": args.warm_lr} if args.warm_lr else {}),
        **({"ema": args.ema} if args.ema is not None else {}),
        **({"ema_decay": args.ema_decay} if args.ema_decay else {}),
    )
    scratch_settings = settings
    if args.scratch_ema is not None and args.scratch_ema != settings.ema:
        scratch_settings = settings.model_copy(update={"ema": args.scratch_ema})
    ema_note = f"EMA of the weights (decay {settings.ema_decay})" if settings.ema else "no EMA"
    if scratch_settings is not settings:
        ema_note += f", scratch runs {'with' if scratch_settings.ema else 'without'} EMA"
    print(
        f"preset {args.preset!r}: {settings.num_channels} channels, lr {settings.lr} "
        f"(warm {settings.warm_start_lr or settings.lr}), {ema_note}, "
        f"{args.epochs} epochs per run, "
        f"device {settings.resolved_device()}, {args.threads} thread(s)"
    )
    root = Path(tempfile.mkdtemp(prefix="training-cost-"))
    pool = initial + new
    rows, runs = [], []
    for s in range(args.n_sub):
        for j in range(args.n_seed):
            m = s * args.n_seed + j
            seed = settings.member_seed(s, j)
            old = split_subset(initial, s, args.n_sub, settings.seed, settings.valid_fraction)
            parent, *_ = train(old, e0s, settings, seed, root / f"parent{m}")
            grown = split_subset(pool, s, args.n_sub, settings.seed, settings.valid_fraction)
            n_new_valid = sum(1 for f in grown[1] if f.info.get("new"))
            # Interleaved: warm then scratch for each member.
            _, w_wall, w_init, w_curve = train(
                grown, e0s, settings, seed, root / f"warm{m}", parent
            )
            _, c_wall, c_init, c_curve = train(
                grown, e0s, scratch_settings, seed, root / f"scratch{m}"
            )
            run = {
                "member": m,
                "warm": (w_init, w_curve, w_wall),
                "scratch": (c_init, c_curve, c_wall),
            }
            runs.append(run)
            row = {"member": m, "n_train": len(grown[0]), "n_valid": len(grown[1])}
            row.update(target_costs(run))
            best = row[1.0][0]
            if max(budgets) <= args.epochs:
                # As the loop runs them: scratch for budgets[0] epochs, warm for budgets[1].
                row["budget"] = tuple(
                    (min(r for _, r, _ in curve[:b]), wall - sum(t for _, _, t in curve[b:]))
                    for curve, wall, b in (
                        (c_curve, c_wall, budgets[0]),
                        (w_curve, w_wall, budgets[1]),
                    )
                )
            row["warm_initial"] = w_init
            row["warm_best"] = min(r for _, r, _ in w_curve)
            row["scratch_best"] = best
            row["walls"] = (w_wall, c_wall)
            rows.append(row)
            print(
                f"member {m}: {row['n_train']} train / {row['n_valid']} valid frames "
                f"({n_new_valid} new); valid F RMSE (meV/Å) warm: start {w_init:.1f}, "
                f"best {row['warm_best']:.1f}; scratch: start {c_init:.1f}, best {best:.1f}; "
                f"runs {w_wall:.0f} s warm, {c_wall:.0f} s scratch"
            )
            for key in TARGETS:
                target, w_ep, w_s, c_ep, c_s = row[key]
                print(
                    f"   to {target:.1f} meV/Å ({target_label(key)}): warm "
                    f"{fmt(w_ep, 'd')} epochs / {fmt(w_s)} s, scratch {fmt(c_ep, 'd')} epochs / "
                    f"{fmt(c_s)} s"
                )
    print()
    print_summary(rows, budgets, args.preset)
    if args.plot:
        plot(
            runs,
            f"CuI {n_atoms} atoms, {len(initial)} + {len(new)} new frames, preset "
            f"{args.preset!r}, {ema_note}, warm lr {settings.warm_start_lr or settings.lr:g}, "
            f"{args.epochs} epochs per run: warm-started vs scratch members",
            args.plot,
        )
        # The curves beside the plot, so that it can be redrawn without training.
        args.plot.with_suffix(".json").write_text(json.dumps(runs, indent=1))
        print(f"plot: {args.plot} (curves: {args.plot.with_suffix('.json')})")


if __name__ == "__main__":
    main()
