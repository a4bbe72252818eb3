"""Data efficiency: reference labels each strategy needs to reach a force error on CuI.

The reference (CHGNet, the stand-in for DFT, in process) runs a held-out Langevin
trajectory of 64-atom CuI at 1.5x the training temperature (450 K vs 300 K); frames
after an equilibration are the held-out set. A Cu atom more than ``EXCURSION_A`` from
its lattice site is on an excursion; the force MAE is also reported on those atoms alone
(the events the potential must get right). Three strategies grow a training set, all
with the same ensemble training (the ``quick`` MACE preset, warm-started from the
previous round's members, the same subsets and seeds), and after every round the
ensemble-mean forces are scored on the held-out frames:

(a) active learning: the real loop (:func:`active_mlip.app.local.run_local`, seeded), harmonic
    initial data at T, then MLIP-MD at T with frames accepted by the paper's P_U·P_E;
(b) random MLIP-MD frames: the same initial data and first ensemble, then MLIP-MD at T
    with the current ensemble (same MD settings), frames drawn uniformly at random from
    the scored frames, no uncertainty selection;
(c) consecutive reference-MD frames (the aiMD-sequential baseline): a CHGNet MD at T
    from the ground state, the first N frames (one every ``loginterval`` steps), growing N.

Labels counted are the training frames (the first ensemble's data included). The target
force MAE is the one active learning reaches at its last iteration; the script prints the
labels each strategy needs to reach it (first learning-curve point at or below it), the
ratios baseline / active learning, and writes the learning curves as a plot. The
baselines are scored at active learning's label counts, then at multiples of its final
count (up to 3x), each stopping once it reaches the target; one that never does gives a
lower bound (">"). The loop stops early when an exploration accepts no frame (its own
rule); ``--shift`` lowers the selection threshold s (the paper's 2). Active
learning's extra labels (its fixed test set and the force constants behind the harmonic
initial data) are printed too; the aiMD baseline's MD costs ``loginterval`` reference
calls per training frame, which is not counted against it.

Sizes: ``small`` (default; 2 members, 32 initial + 4 x 8 selected labels, baselines up
to 3x that; 5-10 min on 2 shared CPU cores when the loop stops early, est. ~35 min if not)
and ``full`` (4 members as in the ``quick`` preset, more iterations and longer
trajectories; for a GPU node). Everything is cached in ``--workdir`` (job stores,
trajectories), so running the same command again resumes. Run from the repository root::

    python benchmarks/data_efficiency.py [--size small] [--shift 2] [--workdir DIR]
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

# One thread per process: on a shared 2-core machine it is the fastest (CHGNet is ~4x
# slower with two threads under load) and MACE's training subprocess inherits it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
warnings.filterwarnings("ignore")  # deprecation chatter of MACE, jobflow, pymatgen
# The benchmark runs on local file stores whatever the environment names.
for _var in ("ACTIVE_MLIP_MONGO_URI", "ACTIVE_MLIP_STORE_FILE"):
    os.environ.pop(_var, None)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from active_mlip.core.documents import as_model  # noqa: E402
from active_mlip.core.frames import Frame, read_frames, write_extxyz  # noqa: E402
from active_mlip.makers.labelling import CHGNetLabeller, label_in_process  # noqa: E402
from active_mlip.makers.schemas import EnsembleDocument  # noqa: E402
from active_mlip.makers.selection import ReferenceStatistics, minimum_image_displacements  # noqa: E402
from active_mlip.makers.training import EnsembleTrainingMaker, assign_subsets  # noqa: E402
from active_mlip.stores.cache import ResultCache  # noqa: E402
from active_mlip.stores.job_store import StoreSettings, make_job_store  # noqa: E402
from active_mlip.workflows.settings import ActiveLearningSettings  # noqa: E402

MATERIAL = "CuI"
SUPERCELL = (2, 2, 2)  # 64 atoms, the quick preset's
TARGET_RATIO = 3.0
EXCURSION_A = 1.0  # a Cu atom further than this from its site (Å) is an excursion

SIZES: dict[str, dict[str, Any]] = {
    "small": dict(
        n_sub=2,
        n_seed=1,
        n_initial=32,
        n_test=12,
        n_new=8,
        iterations=5,
        md_steps=800,
        held_equilibration=100,
        held_frames=40,
        held_stride=15,
        ref_equilibration=50,
        beyond=[1.5, 2.0, 3.0],
    ),
    "full": dict(
        n_sub=2,
        n_seed=2,
        n_initial=32,
        n_test=16,
        n_new=12,
        iterations=8,
        md_steps=1500,
        held_equilibration=250,
        held_frames=100,
        held_stride=20,
        ref_equilibration=100,
        beyond=[1.25, 1.5, 2.0, 2.5, 3.0],
    ),
    # Minutes: checks that the script runs end to end; the numbers mean nothing.
    "smoke": dict(
        n_sub=2,
        n_seed=1,
        n_initial=8,
        n_test=4,
        n_new=4,
        iterations=2,
        md_steps=60,
        held_equilibration=10,
        held_frames=6,
        held_stride=5,
        ref_equilibration=10,
        beyond=[2.0],
        epochs=(3, 2),
    ),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def settings_for(
    size: dict[str, Any],
    temperatures: list[float],
    seed: int,
    shift: float,
    trajectory: Path | None = None,
    knee: float = 1.0,
) -> ActiveLearningSettings:
    """The quick preset at this size; the loop never stops early by convergence.

    With ``trajectory`` the loop's initial training and test frames come from that
    (reference-MD) file instead of harmonic sampling. ``knee`` moves P_E's knee (the
    paper's 1) and its decay point with it (0.2 at knee + 0.8, as in the paper).
    """
    start: dict[str, Any] = {}
    if trajectory is not None:
        start = {"initial": "trajectory", "trajectory": str(trajectory)}
    training: dict[str, Any] = {"n_sub": size["n_sub"], "n_seed": size["n_seed"]}
    if "epochs" in size:
        training["max_num_epochs"], training["warm_start_epochs"] = size["epochs"]
    return ActiveLearningSettings.from_preset(
        "quick",
        loop={
            "temperatures": list(temperatures),
            **start,
            "supercell": SUPERCELL,
            "n_initial": size["n_initial"],
            "n_test": size["n_test"],
            "n_new": size["n_new"],
            "max_iterations": size["iterations"],
            "seed": seed,
            # Run every iteration: a learning curve, not a converged potential, is measured.
            "force_mae_rtol": 1e-12,
            "uncertainty_rtol": 1e-12,
        },
        training=training,
        # The step budget as before; no equilibration or thermal window, so that the
        # strategies compared here keep scoring the same frames as in earlier sessions.
        exploration={
            "max_steps": size["md_steps"],
            "equilibration_ps": 0.0,
            "thermal_window_ps": 0.0,
        },
        selection={"shift": shift, "knee": knee, "decay_at": knee + 0.8},
    )


# -- reference trajectories -----------------------------------------------------------------
def ground_state() -> Frame:
    from pymatgen.io.ase import AseAtomsAdaptor

    from active_mlip.workflows.materials import get_structure

    atoms = AseAtomsAdaptor.get_atoms(get_structure(MATERIAL) * SUPERCELL)
    return Frame.from_atoms(atoms, source="reference")


class ReferenceMD:
    """CHGNet Langevin MD from the ground state; labelled frames on demand, cached in a file.

    ``first(n)`` runs the MD only as far as ``n`` frames need (equilibration, then one
    frame every ``stride`` steps); the MD continues where it stopped when more are asked.
    """

    def __init__(
        self,
        path: Path,
        temperature: float,
        timestep_fs: float,
        equilibration: int,
        stride: int,
        seed: int,
    ):
        self.path, self.temperature, self.timestep_fs = path, temperature, timestep_fs
        self.equilibration, self.stride, self.seed = equilibration, stride, seed
        self.frames: list[Frame] = read_frames(path) if path.exists() else []
        self.md = None

    def first(self, n: int) -> list[Frame]:
        if len(self.frames) >= n:
            return self.frames[:n]
        if self.md is None:  # (re)start: the cached frames are reproduced exactly
            self.frames = []
            self.md = self._start()
        t0, steps0 = time.perf_counter(), self.md.nsteps
        while len(self.frames) < n:
            self.md.run(self.stride)
            self.frames.append(
                Frame.from_atoms(
                    self.md.atoms,
                    source="reference-md",
                    temperature=self.temperature,
                    step=self.md.nsteps,
                    index=len(self.frames),
                )
            )
        log(
            f"reference MD at {self.temperature:g} K: {self.md.nsteps - steps0} CHGNet steps, "
            f"{len(self.frames)} frames in all ({time.perf_counter() - t0:.0f} s)"
        )
        write_extxyz(
            [f.model_copy(update={"info": _scalar_info(f.info)}) for f in self.frames], self.path
        )
        return self.frames[:n]

    def _start(self) -> Any:
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
        from ase.units import fs

        atoms = ground_state().to_atoms()
        atoms.calc = CHGNetLabeller().get_calculator()
        atoms.set_constraint(FixCom())
        rng = np.random.default_rng(self.seed)
        MaxwellBoltzmannDistribution(atoms, temperature_K=self.temperature, rng=rng)
        Stationary(atoms)
        md = Langevin(
            atoms,
            self.timestep_fs * fs,
            temperature_K=self.temperature,
            friction=0.02,  # the exploration's friction
            fixcm=False,
            rng=np.random.default_rng(self.seed + 1),
        )
        md.run(self.equilibration)
        return md


def _scalar_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, str | int | float | bool)}


def cu_displacements(frames: list[Frame], reference: Frame) -> np.ndarray:
    """Distance of every atom from its lattice site (Å), zero for non-Cu; (frames, atoms)."""
    ref = np.asarray(reference.positions)
    cu = np.asarray(reference.numbers) == 29
    out = []
    for f in frames:
        u = minimum_image_displacements(f.positions, ref, f.cell, f.pbc)
        out.append(np.where(cu, np.linalg.norm(u, axis=1), 0.0))
    return np.asarray(out)


def n_off_site(frames: list[Frame], reference: Frame) -> int:
    """Frames with a Cu atom more than ``EXCURSION_A`` from its site (an excursion)."""
    if not frames:
        return 0
    return int((cu_displacements(frames, reference).max(axis=1) > EXCURSION_A).sum())


# -- scoring ---------------------------------------------------------------------------------
def score(
    ensemble: EnsembleDocument, frames: list[Frame], excursion: np.ndarray, key: str = "force_max"
) -> dict:
    """Force MAE (meV/Å) of the ensemble mean on all held-out atoms and on the Cu atoms
    off their sites (``excursion``: boolean, frames x atoms), and how well the ensemble's
    uncertainty ranks its errors.

    Uncertainty selection can only beat random frames if high uncertainty means high
    error. ``spearman_frames`` is the rank correlation over the held-out frames between
    the selection's uncertainty ``key`` and the frame's force MAE; ``spearman_atoms`` the
    one over all atoms between the members' force spread sigma_i and the error
    |F_mean,i - F_ref,i|.
    """
    from scipy.stats import spearmanr

    from active_mlip.makers.ensemble import EnsembleCalculator, force_spread

    calc = EnsembleCalculator.from_document(ensemble, device="auto", compute_stress=False)
    results = calc.evaluate([f.unlabelled().to_atoms() for f in frames], batch_size=8)
    diff = np.array(  # (frames, atoms, 3)
        [r["forces"] - np.asarray(f.forces) for r, f in zip(results, frames, strict=True)]
    )
    err = np.abs(diff)
    de = [(r["energy"] - f.energy) / f.n_atoms for r, f in zip(results, frames, strict=True)]
    u = np.array([r["uncertainty"][key] for r in results])
    sigma = force_spread(np.array([r["member_forces"] for r in results]))  # (frames, atoms)
    err_norm = np.linalg.norm(diff, axis=2)
    return {
        "mae_forces": 1e3 * float(err.mean()),
        "mae_forces_excursions": 1e3 * float(err[excursion].mean()) if excursion.any() else None,
        "mae_forces_on_site": 1e3 * float(err[~excursion].mean()),
        "mae_energy_meV_per_atom": 1e3 * float(np.mean(np.abs(de))),
        "spearman_frames": float(spearmanr(u, err.mean(axis=(1, 2))).statistic),
        "spearman_atoms": float(spearmanr(sigma.ravel(), err_norm.ravel()).statistic),
    }


# -- training (the loop's own makers, in a file store that caches members) -------------------
def train(
    store: Any,
    pool: list[Frame],
    settings: ActiveLearningSettings,
    e0s: dict[str, float],
    previous: EnsembleDocument | None,
    reference: Frame,
) -> EnsembleDocument:
    from jobflow import run_locally

    training = settings.training
    flow = EnsembleTrainingMaker(settings=training).make(
        pool, e0s, previous=previous if training.warm_start else None, reference_frame=reference
    )
    run_locally(flow, store=store, log=False, ensure_success=True)
    return as_model(store.get_output(flow.output.uuid, load=True), EnsembleDocument)


def grow(pool: list[Frame], new: list[Frame], settings: ActiveLearningSettings, r: int) -> list:
    """Append frames to the pool the way the loop's merge does (old frames keep subsets)."""
    fresh = [f.model_copy(update={"info": {"role": "train", "round": r}}) for f in new]
    training = settings.training
    return assign_subsets(
        pool + fresh, training.n_sub, settings.loop.seed + r, training.valid_fraction
    )


# -- the strategies --------------------------------------------------------------------------
def loop_result(path: Path) -> tuple[Any, Any]:
    """The connected job store at ``path`` and the finished loop's ``LoopResult`` in it.

    The result is the output of the loop's last controller job: ``decide`` after the
    iteration cap or convergence, ``proceed`` when an exploration accepted nothing.
    """
    from active_mlip.workflows.state import LoopResult

    store = make_job_store(StoreSettings(local_path=path))
    store.connect()
    for doc in store.query({"name": {"$regex": "(decide|proceed)$"}}, properties=["uuid"]):
        out = store.get_output(doc["uuid"], load=True)
        if isinstance(out, dict) and "stop_reason" in out:
            return store, as_model(out, LoopResult)
    raise RuntimeError(f"no finished loop in {path}")


def active_learning(
    workdir: Path, settings: ActiveLearningSettings
) -> tuple[list[dict], list[Frame], dict]:
    """Run the loop; per iteration (labels, ensemble), the initial frames, the summary."""
    from active_mlip.app.local import run_local

    t0 = time.perf_counter()
    summary = run_local(MATERIAL, workdir, settings)
    log(f"active learning: {summary['stop_reason']} ({time.perf_counter() - t0:.0f} s)")
    store, result = loop_result(workdir / "store")
    points = []
    frames = result.state.train.frames
    for h in result.state.history:
        ensemble = as_model(store.get_output(h.ensemble_uuid, load=True), EnsembleDocument)
        pool = [f for f in frames if f.info.get("iteration", 0) <= h.iteration]
        points.append(
            {"labels": h.n_train, "ensemble": ensemble, "iteration": h.iteration, "pool": pool}
        )
    initial = [f for f in result.state.train.frames if f.info.get("iteration") == 0]
    return points, initial, summary


def random_mlip_md(
    store: Any,
    settings: ActiveLearningSettings,
    schedule: list[int],
    initial: list[Frame],
    first: EnsembleDocument,
    e0s: dict[str, float],
    reference: Frame,
    temperatures: list[float],
    scorer: Any,
    target: float,
    ensembles: list[EnsembleDocument] | None = None,
) -> list[dict]:
    """(b): MLIP-MD with the current ensemble, frames drawn at random, no selection.

    One MLIP-MD per temperature each round (each continuing from its last frame); the
    frames are drawn uniformly from all their scored frames. Stops at the first round
    whose ensemble reaches ``target`` (force MAE, meV/Å). Each round's ensemble is appended
    to ``ensembles`` when given.
    """
    from active_mlip.makers.ensemble import EnsembleCalculator
    from active_mlip.makers.exploration import run_exploration

    labeller = settings.labeller
    cache = ResultCache(store.additional_stores.get("cache"))
    # Statistics no frame can pass (P_U = 0): the MD runs its full length, every scored
    # frame is kept in ``samples`` and nothing is selected by uncertainty.
    never = ReferenceStatistics(
        key=settings.selection.key, u_mean=1e6, u_std=1.0, e_mean=0.0, e_std=1.0, n_frames=2
    )
    md = settings.exploration.model_copy(update={"sample_every": 1})
    pool, ensemble = list(initial), first
    starts = {t: reference.unlabelled(temperature=t) for t in temperatures}
    points = [
        {"labels": len(pool), "labels_off_site": n_off_site(pool, reference), **scorer(ensemble)}
    ]
    rng = np.random.default_rng(settings.loop.seed + 7)
    for r, n_labels in enumerate(schedule[1:], start=1):
        if points[-1]["mae_forces"] <= target:
            break
        t0 = time.perf_counter()
        calc = EnsembleCalculator.from_document(ensemble, device="auto", compute_stress=False)
        docs = []
        for k, t in enumerate(temperatures):
            seed = 1000 + r + 100 * k
            doc = run_exploration(calc, starts[t], never, t, 1, md, settings.selection, seed=seed)
            # Continue from the last frame; after a blow-up start again from the reference,
            # as the loop does (from the blown-up walker's last sane frame it blows up again).
            blown = doc.stopped_by == "blowup"
            starts[t] = reference.unlabelled(temperature=t) if blown else doc.last_frame
            docs.append(doc)
        known = _hashes(pool)
        samples = [f for d in docs for f in d.samples if f.structure_hash() not in known]
        take = min(n_labels - len(pool), len(samples))
        picked = [samples[i] for i in sorted(rng.choice(len(samples), take, replace=False))]
        frames = [f.model_copy(update={"info": {"source": "random-mlip-md"}}) for f in picked]
        batch = label_in_process(frames, labeller, cache)
        pool = grow(pool, batch.frames, settings, r)
        ensemble = train(store, pool, settings, e0s, ensemble, reference)
        if ensembles is not None:
            ensembles.append(ensemble)
        points.append(
            {
                "labels": len(pool),
                "labels_off_site": n_off_site(pool, reference),
                "scored_off_site": n_off_site(samples, reference),
                "scored": len(samples),
                **scorer(ensemble),
            }
        )
        log(
            f"random MLIP-MD round {r}: "
            + ", ".join(f"{d.temperature:g} K {d.n_steps} steps ({d.stopped_by})" for d in docs)
            + f", {len(samples)} frames scored ({points[-1]['scored_off_site']} with a Cu off "
            f"site), {take} drawn, {len(pool)} labels, force MAE "
            f"{points[-1]['mae_forces']:.1f} meV/Å ({time.perf_counter() - t0:.0f} s)"
        )
    return points


def _hashes(frames: list[Frame]) -> set[str]:
    return {f.structure_hash() for f in frames}


class Interleaved:
    """The first n frames of several reference MDs taken in turn (a0, b0, a1, b1, ...)."""

    def __init__(self, trajectories: list[ReferenceMD]):
        self.trajectories = trajectories

    def first(self, n: int) -> list[Frame]:
        k = len(self.trajectories)
        per = [t.first(-(-(n - i) // k)) if n > i else [] for i, t in enumerate(self.trajectories)]
        out = [per[i % k][i // k] for i in range(n)]
        return out


def consecutive_reference_md(
    store: Any,
    settings: ActiveLearningSettings,
    schedule: list[int],
    trajectory: ReferenceMD | Interleaved,
    e0s: dict[str, float],
    reference: Frame,
    scorer: Any,
    target: float,
) -> list[dict]:
    """(c): the first N frames of a reference MD at T (or of several, in turn), growing N.

    Stops at the first N whose ensemble reaches ``target`` (force MAE, meV/Å).
    """
    pool: list[Frame] = []
    ensemble = None
    points: list[dict] = []
    for r, n_labels in enumerate(schedule):
        if points and points[-1]["mae_forces"] <= target:
            break
        t0 = time.perf_counter()
        pool = grow(pool, trajectory.first(n_labels)[len(pool) :], settings, r)
        ensemble = train(store, pool, settings, e0s, ensemble, reference)
        points.append(
            {
                "labels": len(pool),
                "labels_off_site": n_off_site(pool, reference),
                **scorer(ensemble),
            }
        )
        log(
            f"reference MD round {r}: {len(pool)} labels, force MAE "
            f"{points[-1]['mae_forces']:.1f} meV/Å ({time.perf_counter() - t0:.0f} s)"
        )
    return points


# -- report ----------------------------------------------------------------------------------
def labels_to_reach(curve: list[dict], target: float) -> int | None:
    """Labels at the first learning-curve point whose force MAE is at or below ``target``."""
    for p in curve:
        if p["mae_forces"] <= target * (1 + 1e-9):
            return p["labels"]
    return None


def plot(curves: dict[str, list[dict]], target: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    styles = {"active learning": "o-", "random MLIP-MD": "s--", "consecutive reference MD": "^:"}
    for name, curve in curves.items():
        x = [p["labels"] for p in curve]
        axes[0].plot(x, [p["mae_forces"] for p in curve], styles[name], label=name)
        exc = [(p["labels"], p["mae_forces_excursions"]) for p in curve]
        exc = [(a, b) for a, b in exc if b is not None]
        if exc:
            axes[1].plot(*zip(*exc, strict=True), styles[name], label=name)
        else:
            axes[1].text(
                0.5,
                0.5,
                "no Cu atom off its site in the held-out frames",
                ha="center",
                transform=axes[1].transAxes,
            )
    axes[0].axhline(target, color="grey", lw=0.8)
    axes[0].text(axes[0].get_xlim()[0], target, " target", va="bottom", color="grey")
    axes[0].set_title("all held-out frames")
    axes[1].set_title(f"Cu atoms off their sites (> {EXCURSION_A:g} Å) only")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = sorted({p["labels"] for c in curves.values() for p in c})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training labels (reference single points)")
        ax.set_ylabel("force MAE of the ensemble mean (meV/Å)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    import textwrap

    fig.suptitle("\n".join(textwrap.fill(line, 130) for line in title.split("\n")), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--temperature", type=float, default=300.0, help="training T (K)")
    parser.add_argument("--held-factor", type=float, default=1.5, help="held-out T / T")
    parser.add_argument(
        "--explore-factors",
        type=float,
        nargs="+",
        default=[1.0],
        help="sampling temperatures of all three strategies, as multiples of T "
        "(e.g. 1 1.5: the loop explores, random MLIP-MD runs and the reference MD runs at "
        "both T and 1.5 T)",
    )
    parser.add_argument(
        "--initial",
        choices=["harmonic", "reference-md"],
        default="harmonic",
        help="active learning's initial data: harmonic samples (the loop's default), or the "
        "first n_initial + n_test frames of baseline (c)'s reference MD, so that all three "
        "strategies start from reference-MD frames",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="active learning's iteration cap (the size's by default); the baselines follow "
        "its label counts, so more iterations test a lower target force MAE",
    )
    parser.add_argument(
        "--shift",
        type=float,
        default=2.0,
        help="selection shift s (P_U = 0.5 at U = mean + s std of the test set; paper: 2)",
    )
    parser.add_argument(
        "--knee",
        type=float,
        default=1.0,
        help="P_E = 1 up to this z = (E - mean)/std of the test set, then 0.2 at knee + 0.8 "
        "(paper: 1); a held-out trajectory hotter than the training T lies beyond it",
    )
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/data_efficiency.png"))
    parser.add_argument(
        "--replot", type=Path, default=None, help="only redraw the plot from a results JSON"
    )
    args = parser.parse_args()
    if args.replot:
        res = json.loads(args.replot.read_text())
        plot(res["curves"], res["target_mae_forces"], res["title"], args.plot)
        return
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    size = dict(SIZES[args.size])
    if args.iterations is not None:
        if args.iterations < 2:
            parser.error(f"--iterations must be >= 2 (one exploration), got {args.iterations}")
        size["iterations"] = args.iterations
    workdir = (args.workdir or Path(f"runs/bench-data-efficiency-{args.size}")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    temps = [f * args.temperature for f in args.explore_factors]
    base = settings_for(size, temps, args.seed, args.shift, knee=args.knee)
    dt, every = base.exploration.timestep_fs, base.exploration.loginterval
    # (c)'s reference MD at T (and the other sampling temperatures, in turn); built first
    # because with --initial reference-md active learning starts from its first frames.
    trajs = [
        ReferenceMD(
            workdir / ("reference_md.extxyz" if k == 0 else f"reference_md_{t:g}K.extxyz"),
            t,
            dt,
            size["ref_equilibration"],
            every,
            seed=args.seed + 202 + 10 * k,  # never the held-out trajectory's seed (+101)
        )
        for k, t in enumerate(temps)
    ]
    traj = trajs[0] if len(trajs) == 1 else Interleaved(trajs)
    start_file = None
    if args.initial == "reference-md":
        start_file = workdir / "initial_reference_md.extxyz"
        frames = traj.first(size["n_initial"] + size["n_test"])
        write_extxyz(
            [f.model_copy(update={"info": _scalar_info(f.info)}) for f in frames], start_file
        )
    settings = (
        settings_for(size, temps, args.seed, args.shift, start_file, args.knee)
        if start_file
        else base
    )
    t_start = time.perf_counter()
    reference = ground_state()
    held_t = args.held_factor * args.temperature
    print(
        f"{MATERIAL} {len(reference.numbers)} atoms, reference CHGNet, training T = "
        f"{args.temperature:g} K, held-out T = {held_t:g} K, size {args.size}, "
        f"M = {settings.training.n_members} members, {size['iterations']} iterations, "
        f"seed {args.seed}, selection shift "
        f"{args.shift:g}, P_E knee {args.knee:g}, sampling at "
        f"{', '.join(f'{t:g}' for t in temps)} K, AL's initial data: {args.initial}"
    )

    # Held-out reference trajectory at 1.5 T.
    held = ReferenceMD(
        workdir / "held_out.extxyz",
        held_t,
        dt,
        size["held_equilibration"],
        size["held_stride"],
        seed=args.seed + 101,
    ).first(size["held_frames"])
    disp = cu_displacements(held, reference)
    excursion = disp > EXCURSION_A  # per atom
    n_off = excursion.sum(axis=1)
    n_cu = int(np.sum(np.asarray(reference.numbers) == 29))
    print(
        f"held-out: {len(held)} frames, one every {size['held_stride'] * dt:g} fs after "
        f"{size['held_equilibration'] * dt:g} fs; {int((n_off > 0).sum())} have a Cu atom more "
        f"than {EXCURSION_A:g} Å from its site (an excursion); Cu atoms off site per frame: "
        f"mean {n_off.mean():.1f} of {n_cu} ({n_off.mean() / n_cu:.1%}), max {n_off.max()}; "
        f"largest Cu displacement {disp.max():.2f} Å"
    )

    # (a) active learning
    al_points, initial, summary = active_learning(workdir / "active_learning", settings)
    e0s = al_points[0]["ensemble"].e0s

    def scorer(ensemble: EnsembleDocument) -> dict:
        return score(ensemble, held, excursion, settings.selection.key)

    al = [
        {
            "labels": p["labels"],
            "labels_off_site": n_off_site(p["pool"], reference),
            **scorer(p["ensemble"]),
        }
        for p in al_points
    ]
    assert all(p["labels"] == len(q["pool"]) for p, q in zip(al, al_points, strict=True))
    target = al[-1]["mae_forces"]
    log(f"active learning: target force MAE {target:.1f} meV/Å after {al[-1]['labels']} labels")
    # The baselines are scored at active learning's label counts, then beyond its last
    # one (up to 3x, which decides the target ratio); each stops once it reaches the target.
    n_end = al[-1]["labels"]
    schedule = sorted(
        {len(initial), *(p["labels"] for p in al), *(round(m * n_end) for m in size["beyond"])}
    )
    store = make_job_store(StoreSettings(local_path=workdir / "baselines_store"))
    store.connect()

    # (b) random MLIP-MD frames (shares the loop's initial data and first ensemble)
    random_curve = random_mlip_md(
        store,
        settings,
        schedule,
        initial,
        al_points[0]["ensemble"],
        e0s,
        reference,
        temps,
        scorer,
        target,
    )

    # (c) consecutive reference-MD frames (``traj``, built above)
    ref_curve = consecutive_reference_md(
        store, settings, schedule, traj, e0s, reference, scorer, target
    )
    curves = {
        "active learning": al,
        "random MLIP-MD": random_curve,
        "consecutive reference MD": ref_curve,
    }
    needed = {name: labels_to_reach(c, target) for name, c in curves.items()}
    print(
        f"\ntarget: force MAE <= {target:.1f} meV/Å on the held-out {held_t:g} K frames "
        "(active learning's last iteration)"
    )
    print(f"{'strategy':26s} labels -> force MAE (meV/Å) [on Cu atoms off site]")
    for name, curve in curves.items():
        row = ", ".join(
            f"{p['labels']}: {p['mae_forces']:.1f}"
            + (
                f" [{p['mae_forces_excursions']:.1f}]"
                if p["mae_forces_excursions"] is not None
                else ""
            )
            for p in curve
        )
        print(f"{name:26s} {row}")
    print()
    ratios: dict[str, str] = {}
    n_al = needed["active learning"]
    for name, curve in curves.items():
        n = needed[name]
        if name == "active learning":
            print(f"{name:26s} reaches the target with {n} labels")
            continue
        if n is None:
            ratio = f"> {max(p['labels'] for p in curve) / n_al:.2f}x"
            print(
                f"{name:26s} does not reach it with {max(p['labels'] for p in curve)} labels: "
                f"ratio {ratio}"
            )
        else:
            ratio = f"{n / n_al:.2f}x"
            print(f"{name:26s} reaches it with {n} labels: ratio {ratio}")
        ratios[name] = ratio
    at_equal = {  # the last point with at most active learning's labels
        name: [p["mae_forces"] for p in c if p["labels"] <= n_end][-1] for name, c in curves.items()
    }
    print(
        f"at (at most) {n_end} labels each: "
        + ", ".join(f"{k} {v:.1f}" for k, v in at_equal.items() if v is not None)
        + " meV/Å"
    )
    # Met when each baseline needs >= 3x AL's labels (or never gets there with >= 3x).
    baselines_ok = [
        (needed[k] if needed[k] is not None else max(p["labels"] for p in curves[k]))
        >= TARGET_RATIO * n_al
        for k in curves
        if k != "active learning"
    ]
    print(
        f"training labels with a Cu atom off its site (> {EXCURSION_A:g} Å) at each point: "
        + "; ".join(
            f"{name} " + ", ".join(f"{p['labels_off_site']}/{p['labels']}" for p in c)
            for name, c in curves.items()
        )
    )
    print(
        "does high uncertainty mean high error? Spearman rank correlation on the held-out "
        f"frames, active learning's ensembles (U = {settings.selection.key} vs frame force "
        "MAE; per atom sigma_i vs |dF_i|): "
        + ", ".join(
            f"{p['labels']}: {p['spearman_frames']:.2f} / {p['spearman_atoms']:.2f}" for p in al
        )
    )
    print(
        f"target ratio >= {TARGET_RATIO:g}x against both baselines: "
        f"{'met' if all(baselines_ok) else 'NOT met'}"
    )
    # From the iteration records, not the loop's labels_used: that leaves out labels found
    # in the result cache, so over a rerun with a warm cache the count went negative.
    n_failed = sum(h["n_label_failures"] for h in summary["iterations"])
    print(
        f"active learning's labels beyond its training set: {summary['n_test']} test "
        f"frames, {n_failed} failed labels"
        + (
            ", plus the force-constant single points of the initial data"
            if args.initial == "harmonic"
            else ""
        )
    )
    title = (
        f"{MATERIAL} 64 atoms, CHGNet reference, sampled at "
        f"{'/'.join(f'{t:g}' for t in temps)} K, held out "
        f"{held_t:g} K ({int((n_off > 0).sum())}/{len(held)} frames with Cu off site, "
        f"{n_off.mean() / n_cu:.0%} of Cu atoms); "
        f"size {args.size}, M = {settings.training.n_members}, "
        f"{size['iterations']} iterations, shift {args.shift:g}, "
        + (f"P_E knee {args.knee:g}, " if args.knee != 1.0 else "")
        + f"AL starts from {args.initial}\n"
        "labels to reach the target, baseline / active learning: "
        + ", ".join(f"{k} {v}" for k, v in ratios.items())
    )
    plot(curves, target, title, args.plot)
    out = {
        "title": title,
        "size": args.size,
        "seed": args.seed,
        "iterations": size["iterations"],
        "shift": args.shift,
        "knee": args.knee,
        "temperature": args.temperature,
        "sampling_temperatures": temps,
        "initial": args.initial,
        "held_out_temperature": held_t,
        "held_out_frames": len(held),
        "excursion_frames": int((n_off > 0).sum()),
        "cu_off_site_per_frame": n_off.tolist(),
        "target_mae_forces": target,
        "labels_needed": needed,
        "ratios": ratios,
        "curves": curves,
        "al_summary_iterations": summary["iterations"],
        "wall_seconds": time.perf_counter() - t_start,
    }
    (workdir / "data_efficiency.json").write_text(json.dumps(out, indent=2))
    print(f"plot: {args.plot}; numbers: {workdir / 'data_efficiency.json'}")
    print(f"wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
