"""Rare events of CuI: the measures of the paper's claim, and the reference trajectory.

The paper's claim is that active learning finds the configurations an MLIP trained on
aiMD lacks (CuI's Cu hops) with few labels. A mean force MAE over a mostly on-site
trajectory cannot show that, so this benchmark measures the events themselves:

1. the force error on the atoms *in an event* in held-out reference frames, and on the
   rest (:func:`event_force_errors`);
2. event-rate fidelity: the MLIP-MD's off-site event rate divided by the reference's at
   the same temperature (:func:`event_rate`; ≈ 0: missing events, ≫ 1: hallucinated);
3. σ^A of MLIP-MD against the reference MD, per frame in time order
   (:func:`sigma_a_series`).

**Event** (the screening's definition, :class:`~active_mlip.makers.reference_md.
EventSettings`): an atom farther than 0.4 × the shortest ground-state bond from its site
(CuI: 1.05 Å) for at least two logged frames in a row (80 fs at a frame every 40 fs).

**Reference trajectories** (CHGNet, the stand-in for DFT; a frame every 40 fs, CHGNet
energies and forces): 64-atom CuI at 300 K for 40 ps and at 420 K for 16 ps, each split
in time: the first 5/8 is the training part, 1 ps is dropped, the last 3/8 is held out.
Compressed copies ship in ``benchmarks/data/`` (``ship``); ``reference`` regenerates them
(about 0.1 s per step on 2 cores: 16 min at 300 K)::

    python benchmarks/rare_events.py reference --temperature 300 --ps 40 --workdir runs/rare
    python benchmarks/rare_events.py reference --temperature 420 --ps 16 --workdir runs/rare

**Strategies** (``run``, one seed each), the same ensemble training for all (the ``quick``
MACE preset at 2 members, warm-started per round):

(a) active learning: the real loop (:func:`active_mlip.app.local.run_local`) starting from
    aiMD-sequential's first 32 frames (16 per temperature; its test set the next 12),
    then MLIP-MD at 300 and 420 K with frames accepted by the paper's P_U·P_E;
(b) aiMD-sequential (the paper's baseline): the first N frames of the training parts, in
    time order, the two temperatures in turn, up to 3x active learning's final labels;
(c) random MLIP-MD frames: the same first ensemble, then MLIP-MD at both temperatures
    with the current ensemble, frames drawn at random, at active learning's label counts.

Every point is scored on every 5th held-out frame (force MAE on the atoms in an event
and on the rest, per temperature). The event rate and σ^A are measured at 300 K for the
first ensemble, the last of each strategy and aiMD-sequential at active learning's
labels: four MLIP-MDs of 3 ps from held-out frames, events that start after their
first frame counted against the reference's over the same windows::

    python benchmarks/rare_events.py run --seed 0 --workdir runs/rare   # ~1 h on 2 cores
    python benchmarks/rare_events.py report runs/rare/seed*_small/rare_events.json

Explorations that reach the defect-rich states (session 15): ``--explore-ps 10 --period``
runs 10 ps of MLIP-MD per walker and iteration and keeps the accepted frames with the
highest uncertainty; ``--no-sequential`` skips aiMD-sequential, whose curve ``report
--sequential-from`` then takes from a full run of the same seed. Diagnostics: ``ceiling``
(the same training on reference frames spread over the whole training parts, or on an AL
run's own pool), ``rates`` (re-measures finished runs' event rates in today's windows),
``energies`` (how much too high the ensembles put off-site atoms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from active_mlip.core.frames import Frame
from active_mlip.makers.reference_md import EventSettings, off_site_events
from active_mlip.makers.selection import anharmonicity_score, minimum_image_displacements

#: MD of the reference trajectories: the quick preset's step and logging.
TIMESTEP_FS, LOG_EVERY = 4.0, 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shortest_bond(reference: Frame) -> float:
    """Shortest interatomic distance of the ground state (Å, minimum image)."""
    pos = np.asarray(reference.positions, dtype=float)
    cell = np.asarray(reference.cell, dtype=float)
    best = np.inf
    for i in range(len(pos) - 1):
        d = minimum_image_displacements(
            pos[i + 1 :], np.repeat(pos[i : i + 1], len(pos) - i - 1, 0), cell, reference.pbc
        )
        best = min(best, float(np.linalg.norm(d, axis=1).min()))
    return best


def events(
    positions: Sequence[np.ndarray] | np.ndarray,
    reference: Frame,
    settings: EventSettings | None = None,
) -> list[tuple[int, int, int]]:
    """Off-site events along a trajectory: (atom, first frame, frames) of each.

    An atom is in an event over a run of at least ``settings.min_frames`` consecutive
    frames farther than ``settings.distance_fraction`` × :func:`shortest_bond` from its
    site; shorter excursions are thermal flickers.
    """
    settings = settings or EventSettings()
    distance = settings.distance_fraction * shortest_bond(reference)
    return off_site_events(positions, reference, distance, settings.min_frames)


def event_atoms(
    positions: Sequence[np.ndarray] | np.ndarray,
    reference: Frame,
    settings: EventSettings | None = None,
) -> np.ndarray:
    """(n_frames, N) mask: atom ``j`` is in an event (:func:`events`) at frame ``i``."""
    mask = np.zeros((len(positions), len(reference.numbers)), dtype=bool)
    for atom, first, n in events(positions, reference, settings):
        mask[first : first + n, atom] = True
    return mask


def event_rate(n_events: int, n_frames: int, frame_fs: float = TIMESTEP_FS * LOG_EVERY) -> float:
    """Events per ps over a trajectory of ``n_frames`` frames ``frame_fs`` apart."""
    if n_frames <= 0:
        raise ValueError("a trajectory without frames has no event rate")
    return n_events / (n_frames * frame_fs / 1000.0)


def rate_ratio(mlip_rate: float, reference_rate: float) -> float:
    """MLIP-MD's event rate over the reference's (inf when the reference has none)."""
    if reference_rate <= 0:
        return np.inf if mlip_rate > 0 else 1.0
    return mlip_rate / reference_rate


def event_force_errors(
    predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray], in_event: np.ndarray
) -> tuple[float | None, float]:
    """Force MAE (meV/Å) on the atoms in an event, and on all other atoms.

    Parameters
    ----------
    predicted, reference
        Per frame (N, 3) forces in eV/Å.
    in_event
        (n_frames, N) mask from :func:`event_atoms`.

    Returns
    -------
    tuple
        (MAE over event atoms, or None when no atom is in an event; MAE over the rest).
    """
    err = np.abs(np.asarray(predicted, dtype=float) - np.asarray(reference, dtype=float))
    per_atom = err.mean(axis=2)  # (frames, N): mean over components
    event = per_atom[in_event]
    rest = per_atom[~in_event]
    return (float(event.mean() * 1000) if event.size else None), float(rest.mean() * 1000)


def sigma_a_series(frames: Sequence[Frame], reference: Frame, fc: np.ndarray) -> np.ndarray:
    """σ^A of each frame in time order, with the force constants ``fc`` (3N, 3N) at R0."""
    r0 = np.asarray(reference.positions, dtype=float)
    cell = np.asarray(reference.cell, dtype=float)
    out = []
    for f in frames:
        u = minimum_image_displacements(
            np.asarray(f.positions, dtype=float), r0, cell, reference.pbc
        )
        out.append(anharmonicity_score(np.asarray(f.forces, dtype=float), u, fc))
    return np.asarray(out)


def time_split(n_frames: int, held_out_fraction: float, gap: int = 0) -> tuple[range, range]:
    """Indices of the training part (first) and the held-out part (last) of a trajectory.

    ``gap`` frames between them are dropped, so that no held-out frame is a close
    neighbour in time of a training frame.
    """
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    n_held = max(1, round(n_frames * held_out_fraction))
    n_train = n_frames - n_held - gap
    if n_train < 1:
        raise ValueError(f"{n_frames} frames leave none for training with gap {gap}")
    return range(n_train), range(n_frames - n_held, n_frames)


#: Compressed copies of the reference trajectories (float32 positions and forces).
SHIPPED = Path(__file__).resolve().parent / "data"


def write_npz(frames: Sequence[Frame], path: Path) -> None:
    """A compressed copy of a fixed-cell trajectory: float32 positions and forces.

    float32 keeps positions to ~1e-6 Å and forces to ~1e-7 relative: far below what
    the event detection (1 Å) and the force errors (meV/Å) resolve.
    """
    np.savez_compressed(
        path,
        numbers=np.asarray(frames[0].numbers, dtype=np.int16),
        cell=np.asarray(frames[0].cell, dtype=float),
        positions=np.asarray([f.positions for f in frames], dtype=np.float32),
        forces=np.asarray([f.forces for f in frames], dtype=np.float32),
        energy=np.asarray([f.energy for f in frames], dtype=float),
    )


def read_npz(path: Path) -> list[Frame]:
    """The frames of a :func:`write_npz` file, labelled, periodic."""
    with np.load(path) as d:
        numbers, cell = d["numbers"].tolist(), d["cell"].tolist()
        return [
            Frame(
                numbers=numbers,
                positions=p.astype(float).tolist(),
                cell=cell,
                pbc=[True, True, True],
                energy=float(e),
                forces=f.astype(float).tolist(),
                info={"source": "reference-md", "index": i},
            )
            for i, (p, f, e) in enumerate(
                zip(d["positions"], d["forces"], d["energy"], strict=True)
            )
        ]


def reference_trajectory(workdir: Path, temperature: float, ps: float, seed: int = 7) -> Path:
    """The CHGNet Langevin MD of 64-atom CuI at ``temperature`` (cached in ``workdir``)."""
    # the loop's stack loads only for this step
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.units import fs
    from pymatgen.io.ase import AseAtomsAdaptor

    from active_mlip.makers.labelling import CHGNetLabeller
    from active_mlip.workflows.materials import get_structure

    path = workdir / f"cui_{temperature:g}K.extxyz"
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    atoms = AseAtomsAdaptor.get_atoms(get_structure("CuI") * (2, 2, 2))
    atoms.calc = CHGNetLabeller().get_calculator()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    md = Langevin(atoms, TIMESTEP_FS * fs, temperature_K=temperature, friction=0.02, rng=rng)
    n_frames = round(ps * 1000 / (TIMESTEP_FS * LOG_EVERY))
    images, t0 = [], time.time()
    for k in range(n_frames):
        md.run(LOG_EVERY)
        snap = atoms.copy()
        snap.calc = None
        snap.info["energy"] = atoms.get_potential_energy()
        snap.info["time_fs"] = (k + 1) * TIMESTEP_FS * LOG_EVERY
        snap.arrays["forces"] = atoms.get_forces().copy()
        images.append(snap)
        if (k + 1) % 50 == 0:
            print(
                f"{temperature:g} K: {(k + 1) / n_frames:.0%} ({time.time() - t0:.0f} s)",
                flush=True,
            )
    partial = path.with_suffix(".partial.extxyz")
    write(partial, images, format="extxyz")
    partial.rename(path)  # a killed run leaves no half file behind under the cached name
    return path


# -- the strategies (``run``) ------------------------------------------------------------------
#: Sizes of ``run``. ``small``: 2 members, 32 initial + up to 4 x 8 selected labels, the
#: aiMD-sequential baseline up to 3x active learning's labels; ``smoke`` checks the script.
SIZES: dict[str, dict[str, Any]] = {
    "small": dict(
        n_sub=2,
        n_seed=1,
        n_initial=32,
        n_test=12,
        n_new=8,
        iterations=5,
        md_steps=800,
        held_stride=5,
        rate_frames=75,
        beyond=(1.5, 2.0, 3.0),
    ),
    "full": dict(
        n_sub=2,
        n_seed=2,
        n_initial=32,
        n_test=16,
        n_new=12,
        iterations=8,
        md_steps=1500,
        held_stride=2,
        rate_frames=150,
        beyond=(1.25, 1.5, 2.0, 2.5, 3.0),
    ),
    "smoke": dict(
        n_sub=2,
        n_seed=1,
        n_initial=8,
        n_test=4,
        n_new=4,
        iterations=2,
        md_steps=60,
        held_stride=40,
        rate_frames=6,
        beyond=(2.0,),
        epochs=(3, 2),
    ),
}
#: Fractions of each reference trajectory: the last 3/8 are held out, 1 ps before them dropped.
HELD_OUT_FRACTION, GAP_FRAMES = 0.375, 25
#: Where the event-rate MLIP-MDs start: fractions of the way into the held-out part. Four
#: windows, not two (session 14): two held 23 reference events, so even a perfect MLIP's
#: ratio scattered by about ±0.3 (Poisson, both counts), as wide as the target window.
RATE_STARTS = (0.0, 0.25, 0.5, 0.75)


@dataclass
class Reference:
    """One cached reference trajectory, split in time, with its events."""

    temperature: float
    frames: list[Frame]
    r0: Frame
    train: range
    held: range
    in_event: np.ndarray  # (n_frames, N), events found on the whole trajectory

    @classmethod
    def load(cls, path: Path, temperature: float, r0: Frame) -> Reference:
        """From the cached extxyz, else from the shipped :func:`write_npz` copy beside it."""
        from active_mlip.core.frames import read_frames

        if path.exists():
            frames = read_frames(path)
        elif (SHIPPED / path.with_suffix(".npz").name).exists():
            frames = read_npz(SHIPPED / path.with_suffix(".npz").name)
        else:
            raise FileNotFoundError(
                f"no reference trajectory {path} (nor {SHIPPED / path.with_suffix('.npz').name}): "
                f"generate it with `python benchmarks/rare_events.py reference --temperature "
                f"{temperature:g} --ps ... --workdir {path.parent}`"
            )
        train, held = time_split(len(frames), HELD_OUT_FRACTION, GAP_FRAMES)
        mask = event_atoms([f.positions for f in frames], r0)
        return cls(temperature, frames, r0, train, held, mask)

    def held_out(self, stride: int) -> tuple[list[Frame], np.ndarray]:
        """Every ``stride``-th held-out frame and its event mask."""
        idx = list(self.held)[::stride]
        return [self.frames[i] for i in idx], self.in_event[idx]

    def new_events(self, first: int, n_frames: int) -> int:
        """Events that start after frame ``first`` within ``n_frames`` frames from it."""
        window = [f.positions for f in self.frames[first : first + n_frames]]
        return sum(1 for _, start, _ in events(window, self.r0) if start > 0)


class Sequential:
    """aiMD-sequential: the first frames of each training part, taken in turn (T1, T2, ...)."""

    def __init__(self, references: Sequence[Reference]):
        self.parts = [[r.frames[i] for i in r.train] for r in references]

    def first(self, n: int) -> list[Frame]:
        k = len(self.parts)
        out = [self.parts[i % k][i // k] for i in range(n)]
        return [
            f.model_copy(update={"info": {"source": "reference-md", "index": i}})
            for i, f in enumerate(out)
        ]


def mlip_md(ensemble: Any, start: Frame, temperature: float, n_frames: int, seed: int) -> dict:
    """Langevin MLIP-MD with the ensemble mean, the reference MD's step, friction and logging.

    ``ensemble`` is an ensemble document, or an ASE calculator (the reference's own, for
    the perfect-MLIP control).

    Returns the logged frames (MLIP forces) and whether it blew up (two atoms closer than
    1 Å: the run stops there).
    """
    from ase.calculators.calculator import BaseCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.units import fs

    from active_mlip.makers.ensemble import EnsembleCalculator

    atoms = start.unlabelled().to_atoms()
    if isinstance(ensemble, BaseCalculator):  # the reference itself (``control``)
        atoms.calc = ensemble
    else:
        atoms.calc = EnsembleCalculator.from_document(ensemble, device="auto", compute_stress=False)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    md = Langevin(atoms, TIMESTEP_FS * fs, temperature_K=temperature, friction=0.02, rng=rng)
    frames, blew_up = [], False
    for _ in range(n_frames):
        md.run(LOG_EVERY)
        d = atoms.get_all_distances(mic=True)
        frames.append(Frame.from_atoms(atoms, source="mlip-md"))
        if d[np.triu_indices(len(atoms), 1)].min() < 1.0:
            blew_up = True
            break
    return {"frames": frames, "blew_up": blew_up}


def event_rate_ratio(
    ensemble: Any, ref: Reference, n_frames: int, fc: np.ndarray | None, seed: int
) -> dict:
    """MLIP-MD's off-site event rate at ``ref``'s temperature over the reference's.

    MLIP-MDs start from held-out reference frames (:data:`RATE_STARTS`) and run
    ``n_frames`` logged frames each; events that start after the first frame are counted
    in them and in the reference over the same windows from the same frames. Also the σ^A
    of the MLIP-MD frames and of the reference window (the paper's diagnostic; skipped
    without force constants ``fc``), and the counts per window.
    """
    held = list(ref.held)
    windows: list[dict[str, int]] = []
    mlip_events = ref_events = mlip_frames = 0
    sigma_mlip: list[float] = []
    sigma_ref: list[float] = []
    blew_up = False
    for k, fraction in enumerate(RATE_STARTS):
        first = held[min(int(fraction * len(held)), len(held) - n_frames)]
        run = mlip_md(ensemble, ref.frames[first], ref.temperature, n_frames, seed + k)
        frames = [ref.frames[first], *run["frames"]]
        n_mlip = sum(1 for _, s, _ in events([f.positions for f in frames], ref.r0) if s > 0)
        n_ref = ref.new_events(first, n_frames + 1)
        windows.append({"start": first, "mlip": n_mlip, "reference": n_ref})
        mlip_events += n_mlip
        ref_events += n_ref
        mlip_frames += len(run["frames"])
        if fc is not None:
            sigma_mlip += sigma_a_series(run["frames"], ref.r0, fc).tolist()
            sigma_ref += sigma_a_series(
                ref.frames[first + 1 : first + 1 + n_frames], ref.r0, fc
            ).tolist()
        blew_up |= run["blew_up"]
    n_ref = n_frames * len(RATE_STARTS)
    mlip_rate, ref_rate = (
        event_rate(mlip_events, max(mlip_frames, 1)),
        event_rate(ref_events, n_ref),
    )
    return {
        "mlip_events": mlip_events,
        "reference_events": ref_events,
        "mlip_ps": mlip_frames * TIMESTEP_FS * LOG_EVERY / 1000,
        "rate_ratio": rate_ratio(mlip_rate, ref_rate),
        "blew_up": blew_up,
        "sigma_a_mlip": sigma_mlip,
        "sigma_a_reference": sigma_ref,
        "windows": windows,
    }


def protocol_ratio(mlip_runs: Sequence[dict], control_runs: Sequence[dict]) -> dict:
    """Event-rate ratio against the reference's own dynamics under the same protocol.

    ``mlip_runs`` and ``control_runs`` are :func:`event_rate_ratio` results over the same
    windows at several MD seeds: the MLIP's, and the reference labeller's own (``control``).
    A single reference continuation is one realization with its own noise, and MLIP-MD
    redraws the velocities where the reference kept its own; averaging both sides over
    seeds of the same protocol removes that bias and most of that noise. Rates are events
    per ps of MD actually run (a run that blew up stops early).
    """
    if not mlip_runs or not control_runs:
        raise ValueError("protocol_ratio needs at least one MLIP run and one control run")
    starts = [w["start"] for w in control_runs[0]["windows"]]
    for r in [*mlip_runs, *control_runs]:
        if [w["start"] for w in r["windows"]] != starts:
            raise ValueError(
                f"the runs' windows differ: {[w['start'] for w in r['windows']]} vs {starts}"
            )

    def per_ps(runs: Sequence[dict]) -> float:
        return sum(r["mlip_events"] for r in runs) / sum(r["mlip_ps"] for r in runs)

    control = per_ps(control_runs)
    return {
        "ratio": rate_ratio(per_ps(mlip_runs), control),
        "per_seed": [rate_ratio(per_ps([r]), control) for r in mlip_runs],
        "mlip_events": [r["mlip_events"] for r in mlip_runs],
        "control_events": [r["mlip_events"] for r in control_runs],
        "blew_up": any(r["blew_up"] for r in mlip_runs),
    }


def measure_rate(
    ensemble: Any,
    ref: Reference,
    n_frames: int,
    fc: np.ndarray | None,
    seeds: Sequence[int],
    control_runs: Sequence[dict],
) -> tuple[dict, dict | None]:
    """:func:`event_rate_ratio` at each MD seed: the first seed's result, and the
    :func:`protocol_ratio` over all of them when control runs are given (else None)."""
    runs = [event_rate_ratio(ensemble, ref, n_frames, fc, s) for s in seeds]
    return runs[0], (protocol_ratio(runs, control_runs) if control_runs else None)


def score_events(ensemble: Any, held: dict[float, tuple[list[Frame], np.ndarray]]) -> dict:
    """Force MAE (meV/Å) of the ensemble mean on held-out event atoms and the rest, per T."""
    from active_mlip.makers.ensemble import EnsembleCalculator

    calc = EnsembleCalculator.from_document(ensemble, device="auto", compute_stress=False)
    out: dict[str, Any] = {}
    for t, (frames, mask) in held.items():
        results = calc.evaluate([f.unlabelled().to_atoms() for f in frames], batch_size=8)
        pred = [r["forces"] for r in results]
        ref = [np.asarray(f.forces) for f in frames]
        ev, rest = event_force_errors(pred, ref, mask)
        out[f"{t:g}K"] = {
            "event": ev,
            "rest": rest,
            "all": float(np.abs(np.asarray(pred) - np.asarray(ref)).mean() * 1000),
        }
    # the baselines' early stop reads "mae_forces": never reached (-inf target)
    out["mae_forces"] = out[f"{next(iter(held)):g}K"]["all"]
    return out


def run_strategies(args: argparse.Namespace) -> dict:
    """The three strategies at one seed; every point scored, the event rate at the ends."""
    de = _data_efficiency()
    from active_mlip.core.frames import write_extxyz
    from active_mlip.stores.job_store import StoreSettings, make_job_store

    size = run_size(args)
    tag = run_tag(args)
    t_start = time.time()
    workdir = args.workdir / f"seed{args.seed}_{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    r0 = de.ground_state()
    refs = [
        Reference.load(args.references / f"cui_{t:g}K.extxyz", t, r0) for t in args.temperatures
    ]
    for r in refs:
        n_ev = len(events([r.frames[i].positions for i in r.held], r0))
        print(
            f"reference {r.temperature:g} K: {len(r.frames)} frames, training part "
            f"{len(r.train)}, held out {len(r.held)} ({n_ev} events in it)",
            flush=True,
        )
    held = {r.temperature: r.held_out(size["held_stride"]) for r in refs}
    aimd = Sequential(refs)
    start_file = workdir / "initial.extxyz"
    n0, nt = size["n_initial"], size["n_test"]
    # AL starts from aiMD-sequential's first frames; its test set is the next frames.
    write_extxyz(aimd.first(n0 + nt), start_file)
    settings = de.settings_for(size, list(args.temperatures), args.seed, 2.0, start_file)
    update = {
        "loop": settings.loop.model_copy(update={"trajectory_split": "time"}),
        # the same training for every strategy, overrides included
        "training": validated(settings.training, training_overrides(args.training)),
    }
    if size.get("period"):
        update["selection"] = settings.selection.model_copy(update={"mode": "period"})
    settings = settings.model_copy(update=update)

    def scorer(ensemble: Any) -> dict:
        return score_events(ensemble, held)

    if args.reuse_from:
        seed_cache(args.workdir / f"seed{args.seed}_{args.reuse_from}", workdir, settings)
    # (a) active learning
    de.MATERIAL = "CuI"
    al_points, initial, summary = de.active_learning(workdir / "active_learning", settings)
    store, result = de.loop_result(workdir / "active_learning" / "store")
    fc = np.asarray(store.get_output(result.state.fc_uuid, load=True)["force_constants"])
    e0s = al_points[0]["ensemble"].e0s
    curves: dict[str, list[dict]] = {
        "active learning": [
            {
                "labels": p["labels"],
                "events_in_pool": _n_event_frames(p["pool"], r0),
                **scorer(p["ensemble"]),
            }
            for p in al_points
        ]
    }
    n_end = curves["active learning"][-1]["labels"]
    al_counts = [p["labels"] for p in curves["active learning"]]
    log(f"active learning: {len(al_points)} ensembles, {n_end} labels")
    rate_at = {
        "first ensemble": al_points[0]["ensemble"],
        "active learning": al_points[-1]["ensemble"],
    }
    if not args.al_only:
        bstore = make_job_store(StoreSettings(local_path=workdir / "baselines_store"))
        bstore.connect()
    if not (args.al_only or args.no_sequential):
        # (b) aiMD-sequential, to 3x active learning's labels
        schedule = sorted({*al_counts, *(round(m * n_end) for m in size["beyond"])})
        curves["aiMD-sequential"], ensembles = _sequential(
            bstore, settings, schedule, aimd, e0s, r0, scorer
        )
        rate_at["aiMD-sequential at AL's labels"] = ensembles[n_end]
        rate_at["aiMD-sequential, full budget"] = ensembles[schedule[-1]]
    if not args.al_only:
        # (c) random MLIP-MD frames, at active learning's label counts
        random_ensembles = [al_points[0]["ensemble"]]
        curves["random MLIP-MD"] = de.random_mlip_md(
            bstore,
            settings,
            al_counts,
            initial,
            al_points[0]["ensemble"],
            e0s,
            r0,
            list(args.temperatures),
            scorer,
            -np.inf,
            random_ensembles,
        )
        rate_at["random MLIP-MD"] = random_ensembles[-1]
    rates = {}
    for k, (name, ens) in enumerate(rate_at.items()):
        t0 = time.time()
        rates[name] = event_rate_ratio(
            ens, refs[0], size["rate_frames"], fc, 5000 + 10 * k + 1000 * args.seed
        )
        rr = rates[name]
        log(
            f"event rate, {name}: {rr['mlip_events']} vs {rr['reference_events']} (ratio "
            f"{rr['rate_ratio']:.2f}{', blew up' if rr['blew_up'] else ''}) "
            f"({time.time() - t0:.0f} s)"
        )
    out = {
        "seed": args.seed,
        "size": args.size,
        "iterations": size["iterations"],
        "md_steps": size["md_steps"],
        "selection_mode": "period" if size.get("period") else "probabilistic",
        "temperatures": list(args.temperatures),
        "labels_al": n_end,
        "al_stop": summary["stop_reason"],
        "al_n_test": summary["n_test"],
        "curves": curves,
        "rates": rates,
        "wall_seconds": time.time() - t_start,
    }
    (workdir / "rare_events.json").write_text(json.dumps(out, indent=1))
    log(f"seed {args.seed}: {workdir / 'rare_events.json'} ({out['wall_seconds']:.0f} s)")
    return out


def seed_cache(source: Path, workdir: Path, settings: Any) -> None:
    """Start ``workdir``'s loop with ``source``'s result cache (labels, members, explorations).

    The loop's content keys do not depend on the iteration cap, so a run with more
    iterations reuses every iteration the source ran and computes only the new ones. Only
    the cache is copied: the new run's jobs and its result are its own. Does nothing when
    ``workdir`` already holds a loop (it resumes as usual).
    """
    from active_mlip.app.local import write_run_file

    loop_dir = workdir / "active_learning"
    if loop_dir.exists():
        return
    src = source / "active_learning" / "store"
    collection = src / "active_mlip" / "active_mlip_cache.collection"
    payload = collection.with_suffix(".payload")
    if not (collection.is_file() and payload.is_dir()):
        raise FileNotFoundError(f"no result cache to reuse in {src}")
    # built aside and renamed, so that a failed copy leaves nothing half-seeded behind
    partial = loop_dir.with_name(loop_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    dst = partial / "store" / "active_mlip"
    dst.mkdir(parents=True)
    shutil.copy2(src / "monty.storage.cfg", dst.parent)
    # montydb keeps the collection in SQLite in WAL mode: a plain copy of the file misses
    # what a run still open has not checkpointed; the backup API takes it all. The rows
    # first: a payload file is written before its row, so every row copied has its file.
    with (
        closing(sqlite3.connect(f"file:{collection}?mode=ro", uri=True)) as old,
        closing(sqlite3.connect(dst / collection.name)) as new,
    ):
        old.backup(new)
    shutil.copytree(payload, dst / payload.name)
    # the new run's own record, so that run_local starts here rather than refuses
    write_run_file(partial, "CuI", settings)
    partial.rename(loop_dir)
    log(f"result cache of {source.name} copied: its iterations are reused")


def spread(references: Sequence[Reference], n: int) -> list[Frame]:
    """``n`` frames spread evenly in time over the training parts, the temperatures in turn."""
    k = len(references)
    out = []
    for j, ref in enumerate(references):
        m = n // k + (j < n % k)
        idx = np.linspace(0, len(ref.train) - 1, m).round().astype(int)
        out += [(i, j, ref.frames[ref.train[i]]) for i in idx]
    out.sort(key=lambda x: (x[0] / len(references[x[1]].train), x[1]))
    return [
        f.model_copy(update={"info": {"source": "reference-md", "index": i}})
        for i, (_, _, f) in enumerate(out)
    ]


def ceiling(args: argparse.Namespace) -> None:
    """Diagnostic: the same training on frames spread over the whole training parts.

    aiMD-sequential sees only the first picoseconds of each reference; the held-out part
    is defect-rich. Frames spread evenly over the training parts are the best data a
    time split allows, so this ensemble's event error and rate ratio bound what any
    strategy can reach with this model and labels. Reuses the seed's active-learning run
    (its E0s, force constants and training settings).
    """
    from active_mlip.core.documents import as_model
    from active_mlip.makers.schemas import EnsembleDocument
    from active_mlip.stores.job_store import StoreSettings, make_job_store

    de = _data_efficiency()
    size = run_size(args)
    r0 = de.ground_state()
    refs = [
        Reference.load(args.references / f"cui_{t:g}K.extxyz", t, r0) for t in args.temperatures
    ]
    held = {r.temperature: r.held_out(size["held_stride"]) for r in refs}
    source = args.workdir / f"seed{args.seed}_{args.run or args.size}"
    store, result = de.loop_result(source / "active_learning" / "store")
    fc = np.asarray(store.get_output(result.state.fc_uuid, load=True)["force_constants"])
    first = as_model(
        store.get_output(result.state.history[0].ensemble_uuid, load=True), EnsembleDocument
    )
    settings = de.settings_for(
        size, list(args.temperatures), args.seed, 2.0, source / "initial.extxyz"
    )
    overrides = {
        k: v
        for k, v in (("max_num_epochs", args.epochs), ("energy_weight", args.energy_weight))
        if v is not None
    }
    overrides.update(training_overrides(args.training))  # e.g. num_channels=32 max_L=1
    settings = settings.model_copy(update={"training": validated(settings.training, overrides)})
    al_pool = list(result.state.train.frames)
    control_runs = json.loads(args.control.read_text()) if args.control else []
    offsets = OffsetProbe(ref=refs[0], stride=size["held_stride"])
    extra = "".join(f"_{item}" for item in args.training)
    tag = (
        f"ceiling_{args.frames}_e{args.epochs or 'preset'}_w{args.energy_weight or 'preset'}{extra}"
    )
    # one store per variant, so that variants can run side by side
    bstore = make_job_store(StoreSettings(local_path=source / f"{tag}_store"))
    bstore.connect()
    out = []
    for n in [len(al_pool)] if args.frames == "al" else args.labels:
        t0 = time.time()
        # the AL run's own final pool (n ignored) tells the recipe from the data
        if args.frames == "al":
            frames = al_pool
        elif args.frames == "sequential":  # aiMD-sequential's first n, trained from scratch
            frames = Sequential(refs).first(n)
        else:
            frames = spread(refs, n)
        n = len(frames)
        ensemble = de.train(bstore, de.grow([], frames, settings, 0), settings, first.e0s, None, r0)
        scores = score_events(ensemble, held)
        seeds = [7000 + args.seed + 100 * j for j in range(args.md_seeds)]
        rate, protocol = measure_rate(
            ensemble, refs[0], size["rate_frames"], fc, seeds, control_runs
        )
        t = f"{refs[0].temperature:g}K"
        row = {
            "seed": args.seed,
            "labels": n,
            "events_in_pool": _n_event_frames(frames, r0),
            "event_mae": scores[t]["event"],
            "rest_mae": scores[t]["rest"],
            "rate_ratio": rate["rate_ratio"],
            "mlip_events": rate["mlip_events"],
            "reference_events": rate["reference_events"],
            "blew_up": rate["blew_up"],
            "offset_meV_per_event_atom": 1000 * offsets.slope(ensemble),
            "sigma_a_mlip": rate["sigma_a_mlip"],
        }
        if protocol is not None:
            row["protocol"] = protocol
        out.append(row)
        log(
            f"{args.frames} frames, {n} labels ({row['events_in_pool']} with an event): event-atom "
            f"{row['event_mae']:.0f} / other {row['rest_mae']:.0f} meV/Å at {t}, rate ratio "
            f"{row['rate_ratio']:.2f} ({row['mlip_events']} vs {row['reference_events']}"
            f"{', blew up' if row['blew_up'] else ''}), off-site atoms "
            f"{row['offset_meV_per_event_atom']:+.0f} meV too high"
            + (
                f"; against the control ({args.md_seeds} MD seeds) {row['protocol']['ratio']:.2f}"
                if control_runs
                else ""
            )
            + f" ({time.time() - t0:.0f} s)"
        )
    path = source / f"{tag}.json"
    path.write_text(json.dumps(out, indent=1))
    log(f"ceiling: {path}")


def control(args: argparse.Namespace) -> None:
    """The perfect-MLIP control: the reference labeller itself through the rate measure.

    The same MLIP-MD (fresh velocities, its own noise) from the same held-out frames,
    driven by CHGNet: its event-rate ratio differs from 1 only by the measure's scatter,
    which bounds how tightly any MLIP's ratio can be judged.
    """
    from active_mlip.makers.labelling import CHGNetLabeller

    de = _data_efficiency()
    r0 = de.ground_state()
    ref = Reference.load(args.references / "cui_300K.extxyz", 300.0, r0)
    calc = CHGNetLabeller().get_calculator()
    out = []
    for seed in args.seeds:
        t0 = time.time()
        rr = event_rate_ratio(calc, ref, SIZES[args.size]["rate_frames"], None, 9000 + seed)
        out.append({"seed": seed, **rr})
        log(
            f"control (CHGNet), MD seed {seed}: {rr['mlip_events']} vs {rr['reference_events']} "
            f"events, ratio {rr['rate_ratio']:.2f}; per window "
            + ", ".join(f"{w['mlip']}/{w['reference']}" for w in rr["windows"])
            + f" ({time.time() - t0:.0f} s)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    log(f"control: {args.out}")


def remeasure_rates(args: argparse.Namespace) -> None:
    """The event rate of finished runs' first and last AL ensembles, in today's windows.

    Lets runs made with other :data:`RATE_STARTS` be compared on the same windows; writes
    ``rates.json`` (``rates_protocol.json`` with ``--control``) beside each run's
    ``rare_events.json``. With ``--labels``, the ensembles at those label counts instead,
    as ``at N labels``. Entries measured before are kept unless measured again.
    """
    from active_mlip.core.documents import as_model
    from active_mlip.makers.schemas import EnsembleDocument

    de = _data_efficiency()
    r0 = de.ground_state()
    ref = Reference.load(args.references / "cui_300K.extxyz", 300.0, r0)
    control_runs = json.loads(args.control.read_text()) if args.control else []
    for run_dir in args.runs:
        run = json.loads((run_dir / "rare_events.json").read_text())
        size = SIZES[run["size"]]
        store, result = de.loop_result(run_dir / "active_learning" / "store")
        fc = np.asarray(store.get_output(result.state.fc_uuid, load=True)["force_constants"])
        file_name = "rates_protocol.json" if control_runs else "rates.json"
        history = result.state.history
        if args.labels:
            known = {h.n_train: h for h in history}
            missing = sorted(set(args.labels) - set(known))
            if missing:
                raise ValueError(
                    f"{run_dir.name} has no ensemble at {missing} labels (it has {sorted(known)})"
                )
            which = tuple((f"at {n} labels", known[n]) for n in args.labels)
        else:
            first = (("first ensemble", history[0]),) if not args.last_only else ()
            which = (*first, ("active learning", history[-1]))
        # added to what was measured before (same windows and seeds: the same numbers)
        path = run_dir / file_name
        out = json.loads(path.read_text()) if path.exists() else {}
        for name, h in which:
            ens = as_model(store.get_output(h.ensemble_uuid, load=True), EnsembleDocument)
            seeds = [5000 + 1000 * run["seed"] + 100 * j for j in range(args.md_seeds)]
            rr, pr = measure_rate(ens, ref, size["rate_frames"], fc, seeds, control_runs)
            out[name] = {"labels": h.n_train, "starts": list(RATE_STARTS), **rr}
            msg = (
                f"{run_dir.name}, {name} ({h.n_train} labels): {rr['mlip_events']} vs "
                f"{rr['reference_events']} events, ratio {rr['rate_ratio']:.2f}"
                f"{', blew up' if rr['blew_up'] else ''}"
            )
            if pr is not None:
                out[name]["protocol"] = pr
                msg += (
                    f"; against the control, {len(seeds)} MD seeds: {pr['ratio']:.2f} (per seed "
                    + ", ".join(f"{x:.2f}" for x in pr["per_seed"])
                    + ")"
                )
            log(msg)
        path.write_text(json.dumps(out, indent=1))


def run_size(args: argparse.Namespace) -> dict[str, Any]:
    """The size's settings with ``run``'s overrides (iterations, exploration length, mode)."""
    size = dict(SIZES[args.size])
    if getattr(args, "iterations", None) is not None:
        size["iterations"] = args.iterations
    if getattr(args, "explore_ps", None) is not None:
        size["md_steps"] = round(args.explore_ps * 1000 / TIMESTEP_FS)
    if getattr(args, "period", False):
        size["period"] = True
    return size


def training_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (JSON values) as training-settings overrides."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"a training override must read KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"the value of {key!r} is not JSON: {value!r}") from err
    return out


def validated(training: Any, overrides: dict[str, Any]) -> Any:
    """``training`` with ``overrides``, validated (an unknown key or bad value raises)."""
    unknown = sorted(set(overrides) - set(type(training).model_fields))
    if unknown:
        raise ValueError(f"unknown training settings {unknown}")
    return type(training).model_validate({**training.model_dump(), **overrides})


def run_tag(args: argparse.Namespace) -> str:
    """A run's work-directory tag: the size, then each override (its own directory)."""
    tag = args.size
    if getattr(args, "iterations", None) is not None:
        tag += f"_it{args.iterations}"
    if getattr(args, "explore_ps", None) is not None:
        tag += f"_md{args.explore_ps:g}ps"
    if getattr(args, "period", False):
        tag += "_period"
    for item in getattr(args, "training", None) or []:
        tag += f"_{item}"
    return tag


def _data_efficiency() -> Any:
    """The data-efficiency benchmark's strategies (as a script or from the package)."""
    try:
        from benchmarks import data_efficiency
    except ImportError:  # run as a script: benchmarks/ itself is on sys.path
        import data_efficiency
    return data_efficiency


def _n_event_frames(frames: Sequence[Frame], r0: Frame) -> int:
    """Frames with an atom farther than the event distance from its site (one frame suffices)."""
    settings = EventSettings()
    limit = settings.distance_fraction * shortest_bond(r0)
    pos0, cell = np.asarray(r0.positions), np.asarray(r0.cell)
    return sum(
        1
        for f in frames
        if np.linalg.norm(
            minimum_image_displacements(np.asarray(f.positions), pos0, cell, r0.pbc), axis=1
        ).max()
        > limit
    )


def _sequential(store, settings, schedule, aimd, e0s, r0, scorer) -> tuple[list[dict], dict]:
    """aiMD-sequential's learning curve, and its ensemble at each label count."""
    de = _data_efficiency()
    pool: list[Frame] = []
    ensemble = None
    points, ensembles = [], {}
    for r, n in enumerate(schedule):
        t0 = time.time()
        pool = de.grow(pool, aimd.first(n)[len(pool) :], settings, r)
        ensemble = de.train(store, pool, settings, e0s, ensemble, r0)
        ensembles[n] = ensemble
        points.append(
            {"labels": n, "events_in_pool": _n_event_frames(pool, r0), **scorer(ensemble)}
        )
        log(f"aiMD-sequential {n} labels ({time.time() - t0:.0f} s)")
    return points, ensembles


def offset_per_event_atom(
    gaps: Sequence[float], n_event_atoms: Sequence[int]
) -> tuple[float, float]:
    """Least-squares line of energy gaps against the number of atoms in an event.

    ``gaps`` are per frame ΔE_MLIP − ΔE_reference (eV, each relative to R0); the slope
    (eV per atom in an event) says how much too high (> 0) or too low (< 0) the MLIP puts
    an off-site atom: > 0 suppresses events in MLIP-MD, < 0 makes false ones.

    Returns
    -------
    tuple
        (slope in eV per event atom, intercept in eV).
    """
    n = np.asarray(n_event_atoms, dtype=float)
    if len(set(n.tolist())) < 2:
        raise ValueError("the frames must differ in their number of event atoms to fit a slope")
    a = np.vstack([n, np.ones_like(n)]).T
    slope, intercept = np.linalg.lstsq(a, np.asarray(gaps, dtype=float), rcond=None)[0]
    return float(slope), float(intercept)


class OffsetProbe:
    """Held-out 300 K frames and their reference energies relative to R0 (CHGNet)."""

    def __init__(self, ref: Reference, stride: int):
        from active_mlip.makers.labelling import CHGNetLabeller

        self.frames, mask = ref.held_out(stride)
        self.n_event = mask.sum(axis=1)
        self.ground = ref.r0.unlabelled().to_atoms()
        self.ground.calc = CHGNetLabeller().get_calculator()
        e0 = self.ground.get_potential_energy()
        self.e_ref = np.array([f.energy for f in self.frames]) - e0

    def fit(self, ensemble: Any) -> tuple[float, float]:
        """(eV per atom in an event, intercept eV) of the ensemble's energy gaps."""
        from active_mlip.makers.ensemble import EnsembleCalculator

        calc = EnsembleCalculator.from_document(ensemble, device="auto", compute_stress=False)
        self.ground.calc = calc
        m0 = self.ground.get_potential_energy()
        atoms = [f.unlabelled().to_atoms() for f in self.frames]
        pred = np.array([r["energy"] for r in calc.evaluate(atoms, batch_size=8)]) - m0
        return offset_per_event_atom(pred - self.e_ref, self.n_event)

    def slope(self, ensemble: Any) -> float:
        return self.fit(ensemble)[0]


def energy_offsets(args: argparse.Namespace) -> None:
    """Per seed: how much too high the first and last AL ensembles put off-site atoms."""
    from active_mlip.core.documents import as_model
    from active_mlip.makers.schemas import EnsembleDocument

    de = _data_efficiency()
    r0 = de.ground_state()
    ref = Reference.load(args.references / "cui_300K.extxyz", 300.0, r0)
    probe = OffsetProbe(ref, SIZES[args.size]["held_stride"])
    tag = run_tag(args)
    for seed in args.seeds:
        store, result = de.loop_result(
            args.workdir / f"seed{seed}_{tag}" / "active_learning" / "store"
        )
        for name, h in (("first", result.state.history[0]), ("last", result.state.history[-1])):
            ens = as_model(store.get_output(h.ensemble_uuid, load=True), EnsembleDocument)
            slope, intercept = probe.fit(ens)
            print(
                f"seed {seed}, {name} ensemble ({h.n_train} labels): held-out 300 K frames "
                f"(mean {probe.n_event.mean():.1f} atoms in an event) put {1000 * slope:+.0f} "
                f"meV per atom in an event too high (intercept {intercept:+.3f} eV)",
                flush=True,
            )


# -- the report (``report``) -----------------------------------------------------------------
STRATEGIES = ("active learning", "aiMD-sequential", "random MLIP-MD")
COLOURS = {"active learning": "C0", "aiMD-sequential": "C3", "random MLIP-MD": "C2"}
#: Event-rate ratio window of the target.
RATE_WINDOW = (0.75, 1.33)


def target_check(run: dict) -> dict:
    """The issue's target at one seed.

    Active learning must reach the event-frame force error (at T) that aiMD-sequential
    reaches with its full budget, with at most a third of aiMD-sequential's labels, and
    its last ensemble's event-rate ratio must lie in :data:`RATE_WINDOW`.
    """
    t = f"{run['temperatures'][0]:g}K"
    aimd = run["curves"]["aiMD-sequential"]
    goal, budget = aimd[-1][t]["event"], aimd[-1]["labels"]
    reached = [p["labels"] for p in run["curves"]["active learning"] if p[t]["event"] <= goal]
    ratio = run["rates"]["active learning"]["rate_ratio"]
    return {
        "goal_meV_per_A": goal,
        "aimd_labels": budget,
        "al_labels_to_goal": reached[0] if reached else None,
        "labels_ok": bool(reached) and reached[0] <= budget / 3,
        "rate_ratio": ratio,
        "rate_ok": RATE_WINDOW[0] <= ratio <= RATE_WINDOW[1],
    }


def load_runs(paths: Sequence[Path], sequential_from: Sequence[Path] = ()) -> list[dict]:
    """Runs' results; a run without aiMD-sequential (``run --no-sequential``) takes that
    curve from the run of the same seed in ``sequential_from`` (the curve depends only on
    the seed and the reference; its event rates, measured in other windows, are not taken).
    """
    runs = [json.loads(p.read_text()) for p in paths]
    donors = {}
    for path in sequential_from:
        donor = json.loads(path.read_text())
        donors[donor["seed"]] = (path, donor)
    for run in runs:
        if "aiMD-sequential" in run["curves"]:
            continue
        if run["seed"] not in donors:
            raise ValueError(
                f"seed {run['seed']} has no aiMD-sequential curve; give a run of that seed "
                "that has one with --sequential-from"
            )
        path, donor = donors[run["seed"]]
        run["curves"]["aiMD-sequential"] = donor["curves"]["aiMD-sequential"]
        run["sequential_from"] = str(path)
    return runs


def _label_axes(axes: Sequence[Any], labels: set[int]) -> None:
    """Log x axes ticked at the label counts, no two ticks closer than 12 %."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks: list[int] = []
    for x in sorted(labels):
        if not ticks or x > 1.12 * ticks[-1]:
            ticks.append(x)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def report(paths: list[Path], plot_path: Path, sequential_from: Sequence[Path] = ()) -> None:
    """Print the table of every seed and draw the three measures against labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(paths, sequential_from)
    t = f"{runs[0]['temperatures'][0]:g}K"
    hot = [f"{x:g}K" for x in runs[0]["temperatures"][1:]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), dpi=90)
    markers = "os^Dv"
    for k, run in enumerate(runs):
        m = markers[k % len(markers)]
        for name in STRATEGIES:
            c = run["curves"].get(name, [])
            x = [p["labels"] for p in c]
            lab = f"{name}" if k == 0 else None
            kw = dict(color=COLOURS[name], marker=m, ms=4, lw=1, alpha=0.8)
            axes[0, 0].plot(x, [p[t]["event"] for p in c], label=lab, **kw)
            axes[0, 1].plot(x, [p[t]["rest"] for p in c], label=lab, **kw)
            for h in hot:
                axes[0, 0].plot(x, [p[h]["event"] for p in c], ls=":", **kw)
        rates = run["rates"]
        at = {
            "first ensemble": run["curves"]["active learning"][0]["labels"],
            "active learning": run["labels_al"],
            "aiMD-sequential at AL's labels": run["labels_al"],
            "aiMD-sequential, full budget": run["curves"]["aiMD-sequential"][-1]["labels"],
        }
        if "random MLIP-MD" in run["curves"]:
            at["random MLIP-MD"] = run["curves"]["random MLIP-MD"][-1]["labels"]
        for name, r in rates.items():
            colour = (
                "grey" if name == "first ensemble" else COLOURS[name.split(" at")[0].split(",")[0]]
            )
            y = max(r["rate_ratio"], 0.02)
            axes[1, 0].scatter(at[name], y, color=colour, marker=m, s=30, zorder=3)
        if k == 0:
            ref_sigma = rates["active learning"]["sigma_a_reference"]
            every = [v for r in rates.values() for v in r["sigma_a_mlip"]] + ref_sigma
            bins = np.linspace(0, float(np.percentile(every, 98)), 40)
            axes[1, 1].hist(
                ref_sigma,
                bins=bins,
                histtype="step",
                color="k",
                label="reference MD (CHGNet)",
                density=True,
            )
            for name, colour in (
                ("first ensemble", "grey"),
                ("active learning", COLOURS["active learning"]),
                ("aiMD-sequential, full budget", COLOURS["aiMD-sequential"]),
            ):
                if name not in rates:
                    continue
                axes[1, 1].hist(
                    rates[name]["sigma_a_mlip"],
                    bins=bins,
                    histtype="step",
                    color=colour,
                    label=f"MLIP-MD: {name}",
                    density=True,
                )
    axes[0, 0].set_title(
        f"force MAE on atoms in an off-site event (held out; dotted: {', '.join(hot)})"
    )
    axes[0, 1].set_title(f"force MAE on the other atoms (held out, {t})")

    labels = {p["labels"] for r in runs for c in r["curves"].values() for p in c}
    _label_axes((*axes[0], axes[1, 0]), labels)
    for ax in axes[0]:
        ax.set_xlabel("training labels")
        ax.set_ylabel("meV/Å")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[1, 0].axhspan(*RATE_WINDOW, color="C0", alpha=0.12, label="target window")
    axes[1, 0].axhline(1, color="grey", lw=0.6)
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_xlabel("training labels")
    axes[1, 0].set_ylabel(f"event rate MLIP-MD / reference at {t}")
    axes[1, 0].set_title("event-rate fidelity (grey: first ensemble; 0 drawn at 0.02)")
    axes[1, 0].grid(alpha=0.3, which="both")
    axes[1, 1].set_xlabel(f"σ^A of MD frames at {t} (seed {runs[0]['seed']})")
    axes[1, 1].set_ylabel("density")
    axes[1, 1].set_title("σ^A: MLIP-MD against the reference MD")
    axes[1, 1].legend(fontsize=8)
    fig.suptitle(
        f"CuI 64 atoms, CHGNet reference, size {runs[0]['size']}, seeds "
        f"{', '.join(str(r['seed']) for r in runs)} (marker per seed)",
        fontsize=11,
    )
    fig.tight_layout()
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot_path)
    print(
        f"{'seed':>4} {'strategy':16s} labels -> event-atom / other-atom force MAE at {t} (meV/Å)"
    )
    for run in runs:
        for name in STRATEGIES:
            row = ", ".join(
                f"{p['labels']}: {p[t]['event']:.0f}/{p[t]['rest']:.0f}"
                for p in run["curves"].get(name, [])
            )
            if name == "aiMD-sequential" and "sequential_from" in run:
                row += f" (from {run['sequential_from']})"
            print(f"{run['seed']:>4} {name:16s} {row}")
    print("\nevent rate MLIP-MD / reference (events: MLIP-MD vs reference, same windows)")
    for run in runs:
        print(
            f"{run['seed']:>4} "
            + "; ".join(
                f"{n}: {r['rate_ratio']:.2f} ({r['mlip_events']} vs {r['reference_events']}"
                + (", blew up" if r["blew_up"] else "")
                + ")"
                for n, r in run["rates"].items()
            )
        )
    print(
        "\ntarget: AL reaches aiMD-sequential's full-budget event error with <= 1/3 of its "
        f"labels, and its rate ratio lies in [{RATE_WINDOW[0]}, {RATE_WINDOW[1]}]:"
    )
    for run in runs:
        c = target_check(run)
        print(
            f"{run['seed']:>4} goal {c['goal_meV_per_A']:.1f} meV/Å (aiMD, {c['aimd_labels']} "
            f"labels); AL reaches it with {c['al_labels_to_goal']} labels: "
            f"{'met' if c['labels_ok'] else 'NOT met'}; rate ratio {c['rate_ratio']:.2f}: "
            f"{'met' if c['rate_ok'] else 'NOT met'}; "
            f"wall {run['wall_seconds'] / 60:.0f} min"
        )
    print(f"plot: {plot_path}")


def protocol_target(
    al_curve: Sequence[dict],
    sequential: Sequence[dict],
    al_rates: dict[int, float],
    budget: int | None = None,
    goal: float | None = None,
) -> dict:
    """The issue's target at one seed, with every strategy under the same training.

    Parameters
    ----------
    al_curve
        Active learning's points, ``{"labels", "event_mae"}`` each, in label order.
    sequential
        aiMD-sequential's points, ``{"labels", "event_mae", "rate"}`` each (``rate``: its
        ratio against the control, or None).
    al_rates
        Active learning's rate ratios against the control, by the labels of the ensemble.
    budget
        aiMD-sequential's full budget (its largest point otherwise); it must be one of
        its points.
    goal
        The event error to reach (aiMD-sequential's at ``budget`` otherwise), e.g. its
        mean over training seeds.

    Returns
    -------
    dict
        The goal, the labels AL first reaches it with (None if never) and whether that is
        at most a third of the budget (``labels_ok``). ``rate_ok`` and ``met``: whether an
        ensemble within a third of the budget reaches the goal at a measured rate in
        :data:`RATE_WINDOW`. The rate shown is that ensemble's, else that of the first
        measured one within the allowance that reaches the goal, else of the first measured
        one that reaches it, else of the last measured one.
    """
    by_labels = {p["labels"]: p for p in sequential}
    budget = max(by_labels) if budget is None else budget
    if budget not in by_labels:
        raise ValueError(
            f"aiMD-sequential has no point at {budget} labels (it has {sorted(by_labels)})"
        )
    if not al_rates:
        raise ValueError("no event rate of an active-learning ensemble")
    own = by_labels[budget]["event_mae"]
    goal = own if goal is None else goal
    reached = [p["labels"] for p in al_curve if p["event_mae"] <= goal]
    within = [n for n in reached if n <= budget / 3 and n in al_rates]
    both = [n for n in within if RATE_WINDOW[0] <= al_rates[n] <= RATE_WINDOW[1]]
    shown = both or within or [n for n in reached if n in al_rates] or [max(al_rates)]
    return {
        "goal_meV_per_A": goal,
        "aimd_labels": budget,
        "aimd_event_mae": own,
        "aimd_rate": by_labels[budget].get("rate"),
        "al_labels_to_goal": reached[0] if reached else None,
        "al_labels": al_curve[-1]["labels"],
        "al_event_mae": al_curve[-1]["event_mae"],
        "labels_ok": bool(reached) and reached[0] <= budget / 3,
        "rate": al_rates[shown[0]],
        "rate_at_labels": shown[0],
        "rate_measured_within": bool(within),
        # the rate counts only from an ensemble within the allowance that reaches the goal
        "rate_ok": bool(both),
        "met": bool(both),
    }


def _seed_of(path: Path, row: dict) -> int:
    """A ceiling row's seed: its own field, else its run directory's ``seed<S>_`` name."""
    if "seed" in row:
        return int(row["seed"])
    import re

    match = re.match(r"seed(\d+)_", path.parent.name)
    if match is None:
        raise ValueError(f"{path}: no seed in its rows nor in its directory's name")
    return int(match.group(1))


def verdict(args: argparse.Namespace) -> dict:
    """The target at every seed, every strategy trained alike, rates against the control.

    Active learning's curve and its ensembles' rates against the control come from each
    run directory (``rare_events.json``; ``rates_protocol.json`` of ``rates --control``,
    with ``--labels`` for ensembles before the last); aiMD-sequential's points from
    ``ceiling --frames sequential`` results trained the same way. The goal is
    aiMD-sequential's event error at the budget averaged over its training seeds
    (``--goal mean``: which seed's aiMD ensemble is paired with which AL run is
    arbitrary) or each seed's own (``--goal per-seed``). Prints the table, writes the
    plot and ``--out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = "300K"
    seq: dict[int, list[dict]] = {}
    for path in args.sequential:
        rows = json.loads(path.read_text())
        if not rows:
            raise ValueError(f"{path} holds no aiMD-sequential point")
        for row in rows:
            seed = _seed_of(path, row)
            if any(r["labels"] == row["labels"] for r in seq.get(seed, [])):
                raise ValueError(
                    f"{path}: seed {seed} at {row['labels']} labels is given twice in --sequential"
                )
            seq.setdefault(seed, []).append(row)
    common = set.intersection(*({r["labels"] for r in rows} for rows in seq.values()))
    budget = args.budget or max(common, default=None)
    if budget not in common:
        raise ValueError(
            f"aiMD-sequential's budget {budget} is not measured at every seed "
            f"(at all: {sorted(common)})"
        )
    mean_goal = float(
        np.mean([r["event_mae"] for rows in seq.values() for r in rows if r["labels"] == budget])
    )
    rows = []
    for run_dir in args.runs:
        run = json.loads((run_dir / "rare_events.json").read_text())
        rates_path = run_dir / "rates_protocol.json"
        if not rates_path.exists():
            raise FileNotFoundError(
                f"{rates_path} missing: run `rates {run_dir} --control control.json "
                "--md-seeds 3 --last-only` first"
            )
        measured = json.loads(rates_path.read_text())
        if measured.get("active learning", {}).get("labels") != run["labels_al"]:
            raise ValueError(f"{rates_path} has no rate of the run's last ensemble")
        al_rates = {m["labels"]: m["protocol"]["ratio"] for m in measured.values()}
        s = run["seed"]
        if s not in seq:
            raise ValueError(f"seed {s} has no aiMD-sequential point in --sequential")
        curve = [
            {"labels": p["labels"], "event_mae": p[t]["event"], "rest_mae": p[t]["rest"]}
            for p in run["curves"]["active learning"]
        ]
        points = sorted(
            (
                {
                    "labels": r["labels"],
                    "event_mae": r["event_mae"],
                    "rest_mae": r["rest_mae"],
                    "rate": r.get("protocol", {}).get("ratio"),
                    "sigma_a_mlip": r.get("sigma_a_mlip"),
                }
                for r in seq[s]
            ),
            key=lambda p: p["labels"],
        )
        goal = mean_goal if args.goal == "mean" else None
        check = protocol_target(curve, points, al_rates, budget, goal)
        rows.append(
            {
                "seed": s,
                **check,
                "al_curve": curve,
                "al_rates": al_rates,
                "sequential": points,
                "al_sigma": measured["active learning"],
            }
        )
    rows.sort(key=lambda r: r["seed"])
    print(
        f"goal: aiMD-sequential's event-atom MAE at {budget} labels, "
        + (f"mean over its seeds {mean_goal:.1f} meV/Å" if args.goal == "mean" else "per seed")
    )
    print(
        f"{'seed':>4}  AL labels: event-atom MAE at {t} (meV/Å)  |  aiMD-sequential  |  "
        "AL labels: rate vs control -> the one judged (labels)  |  target"
    )
    for r in rows:
        curve = ", ".join(f"{p['labels']}: {p['event_mae']:.0f}" for p in r["al_curve"])
        aimd = ", ".join(
            f"{p['labels']}: {p['event_mae']:.0f}"
            + (f" (rate {p['rate']:.2f})" if p["rate"] is not None else "")
            for p in r["sequential"]
        )
        print(
            f"{r['seed']:>4}  {curve}  |  {aimd}  |  "
            + ", ".join(f"{n}: {v:.2f}" for n, v in sorted(r["al_rates"].items()))
            + f" -> {r['rate']:.2f} ({r['rate_at_labels']})  |  "
            f"labels {'met' if r['labels_ok'] else 'NOT met'} (goal {r['goal_meV_per_A']:.1f} "
            f"at {r['aimd_labels']}, AL reaches it at {r['al_labels_to_goal']}), rate "
            + ("met" if r["rate_ok"] else "NOT met")
            + ("" if r["rate_measured_within"] or not r["labels_ok"] else " (not measured there)")
            + f" => target {'met' if r['met'] else 'NOT met'}"
        )
    _verdict_plot(rows, args.plot, plt)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(f"plot: {args.plot}")
    return {"rows": rows}


def _verdict_plot(rows: Sequence[dict], path: Path, plt: Any) -> None:
    """Event / other-atom error against labels, rate against the control, σ^A at 300 K."""
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(2, 3, figsize=(16, 8), dpi=90)
    al, aimd = COLOURS["active learning"], COLOURS["aiMD-sequential"]
    seen: set[str] = set()

    def lab(name: str) -> str | None:
        """Each legend entry once."""
        if name in seen:
            return None
        seen.add(name)
        return name

    for k, r in enumerate(rows):
        m = "os^Dv"[k % 5]
        x = [p["labels"] for p in r["al_curve"]]
        xs = [p["labels"] for p in r["sequential"]]
        for ax, key in ((axes[0, 0], "event_mae"), (axes[0, 1], "rest_mae")):
            named = ax is axes[0, 0]  # one legend for both error panels
            ax.plot(
                x,
                [p[key] for p in r["al_curve"]],
                color=al,
                marker=m,
                ms=4,
                label=lab("active learning") if named else None,
            )
            ax.plot(
                xs,
                [p[key] for p in r["sequential"]],
                color=aimd,
                marker=m,
                ms=6,
                ls="",
                label=lab("aiMD-sequential (first frames)") if named else None,
            )
        axes[0, 0].axhline(r["goal_meV_per_A"], color=aimd, lw=0.6, ls="--")
        xr = sorted(r["al_rates"])
        axes[1, 0].plot(
            xr,
            [r["al_rates"][x] for x in xr],
            color=al,
            marker=m,
            ms=6,
            label=lab("active learning, ensembles measured"),
        )
        for p in r["sequential"]:
            if p["rate"] is not None:
                axes[1, 0].scatter(
                    p["labels"],
                    p["rate"],
                    color=aimd,
                    marker=m,
                    s=36,
                    zorder=3,
                    label=lab("aiMD-sequential"),
                )
    # σ^A pooled over seeds: the reference's, AL's last ensembles', aiMD-sequential's at budget
    ref = rows[0]["al_sigma"].get("sigma_a_reference") or []
    pooled = {
        "reference MD (CHGNet)": ("k", ref),
        "active learning, last ensembles": (
            al,
            [v for r in rows for v in r["al_sigma"].get("sigma_a_mlip") or []],
        ),
        f"aiMD-sequential, {rows[0]['aimd_labels']} labels": (
            aimd,
            [
                v
                for r in rows
                for p in r["sequential"]
                if p["labels"] == r["aimd_labels"]
                for v in p.get("sigma_a_mlip") or []
            ],
        ),
    }
    every = [v for _, values in pooled.values() for v in values]
    if every:
        bins = np.linspace(0, float(np.max(every)) * 1.05, 40)
        for name, (colour, values) in pooled.items():
            if values:
                axes[1, 1].hist(
                    values,
                    bins=bins,
                    histtype="step",
                    density=True,
                    color=colour,
                    lw=1.5,
                    label=f"{name} ({len(values)} frames)",
                )
    for k, r in enumerate(rows):  # which marker is which seed
        axes[1, 0].plot(
            [], [], ls="", marker="os^Dv"[k % 5], color="grey", label=f"seed {r['seed']}"
        )
    for ax, what in ((axes[0, 0], "atoms in an off-site event"), (axes[0, 1], "other atoms")):
        ax.set_title(f"force MAE on {what} (held out, 300 K)")
        ax.set_xlabel("training labels")
        ax.set_ylabel("meV/Å")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_yscale("log")
    axes[0, 0].yaxis.set_major_formatter(ScalarFormatter())
    axes[0, 0].yaxis.set_minor_formatter(ScalarFormatter())
    labels = {p["labels"] for r in rows for p in (*r["al_curve"], *r["sequential"])}
    _label_axes((axes[0, 0], axes[0, 1], axes[1, 0]), labels)
    axes[1, 0].axhspan(*RATE_WINDOW, color="C0", alpha=0.12, label="target window")
    axes[1, 0].axhline(1, color="grey", lw=0.6)
    axes[1, 0].set_xlabel("training labels")
    axes[1, 0].set_ylabel("events per ps, MLIP-MD / CHGNet MD")
    axes[1, 0].set_title("event-rate fidelity at 300 K (3 MD seeds each)")
    axes[1, 0].grid(alpha=0.3, which="both")
    axes[1, 0].set_ylim(bottom=0)  # room below the points for the legend
    axes[1, 0].legend(fontsize=8, loc="lower left", ncol=2)
    axes[1, 1].set_xlabel(r"$\sigma^A$ of MD frames at 300 K")
    axes[1, 1].set_ylabel("density")
    axes[1, 1].set_title(r"$\sigma^A$: MLIP-MD against the reference MD (seeds pooled)")
    axes[1, 1].legend(fontsize=8)
    _sigma_a_in_time(rows[0], axes[0, 2], al, aimd)
    axes[1, 2].axis("off")
    axes[1, 2].text(
        0.0,
        1.0,
        "\n".join(
            f"seed {r['seed']}: AL reaches {r['goal_meV_per_A']:.1f} meV/Å at "
            f"{r['al_labels_to_goal']} labels (aiMD budget {r['aimd_labels']}),\n"
            f"  rate {r['rate']:.2f} at {r['rate_at_labels']}: target "
            f"{'met' if r['met'] else 'NOT met'}"
            for r in rows
        ),
        va="top",
        family="monospace",
        fontsize=9,
    )
    fig.suptitle(
        "CuI 64 atoms, CHGNet reference, the same training for all (dashed: aiMD-sequential's "
        "goal)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _sigma_a_in_time(row: dict, ax: Any, al: str, aimd: str) -> None:
    """σ^A of one seed's MD frames in time order, window after window (the paper's trace)."""
    ps = TIMESTEP_FS * LOG_EVERY / 1000
    top = row["sequential"][-1]
    series = [
        ("reference MD (CHGNet)", "k", row["al_sigma"].get("sigma_a_reference")),
        ("active learning, last ensemble", al, row["al_sigma"].get("sigma_a_mlip")),
        (f"aiMD-sequential, {top['labels']} labels", aimd, top.get("sigma_a_mlip")),
    ]
    for name, colour, values in series:
        if values:
            ax.plot(np.arange(len(values)) * ps, values, color=colour, lw=0.8, label=name)
    n = len(series[0][2] or [])
    for k in range(1, len(RATE_STARTS)):  # each window starts from its own held-out frame
        ax.axvline(k * n / len(RATE_STARTS) * ps, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("MD time, ps (windows one after another)")
    ax.set_ylabel(r"$\sigma^A$")
    ax.set_title(rf"$\sigma^A$ in time at 300 K, seed {row['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    ref = sub.add_parser("reference", help="generate (or reuse) a reference trajectory")
    ref.add_argument("--temperature", type=float, required=True)
    ref.add_argument("--ps", type=float, required=True)
    ref.add_argument("--workdir", type=Path, default=Path("runs/rare"))
    run = sub.add_parser("run", help="the three strategies at one seed")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--size", choices=sorted(SIZES), default="small")
    run.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 420.0])
    run.add_argument("--iterations", type=int, default=None, help="override the size's")
    run.add_argument("--al-only", action="store_true", help="active learning only (no baselines)")
    run.add_argument(
        "--no-sequential", action="store_true", help="skip aiMD-sequential (AL and random only)"
    )
    run.add_argument("--references", type=Path, default=Path("runs/rare"))
    run.add_argument("--workdir", type=Path, default=Path("runs/rare"))
    run.add_argument(
        "--reuse-from",
        default=None,
        metavar="TAG",
        help="reuse the result cache of this seed's run TAG (e.g. more --iterations)",
    )
    off = sub.add_parser("energies", help="energy offset of off-site atoms, per seed")
    off.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    off.add_argument("--size", choices=sorted(SIZES), default="small")
    off.add_argument("--iterations", type=int, default=None, help="as given to run")
    off.add_argument("--references", type=Path, default=Path("runs/rare"))
    off.add_argument("--workdir", type=Path, default=Path("runs/rare"))
    for p in (run, off):
        p.add_argument(
            "--training",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="training settings for every strategy, JSON values (e.g. energy_weight=1000)",
        )
        p.add_argument(
            "--explore-ps",
            type=float,
            default=None,
            help="MLIP-MD budget of one exploration (ps; the size's otherwise)",
        )
        p.add_argument(
            "--period",
            action="store_true",
            help="selection mode 'period': run the whole budget, keep the highest-U accepted",
        )
    rates = sub.add_parser("rates", help="re-measure finished runs' AL event rates")
    rates.add_argument("runs", type=Path, nargs="+", help="seed work directories")
    rates.add_argument("--references", type=Path, default=Path("runs/rare"))
    rates.add_argument("--last-only", action="store_true", help="the last AL ensemble only")
    rates.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=[],
        help="the AL ensembles at these label counts, added to the runs' earlier rates",
    )
    ceil = sub.add_parser("ceiling", help="diagnostic: training on frames spread over time")
    ceil.add_argument("--seed", type=int, default=0, help="whose AL run to reuse")
    ceil.add_argument("--size", choices=sorted(SIZES), default="small")
    ceil.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 420.0])
    ceil.add_argument("--labels", type=int, nargs="+", default=[60, 180])
    ceil.add_argument("--epochs", type=int, default=None, help="scratch epochs (preset's)")
    ceil.add_argument("--energy-weight", type=float, default=None, help="(the preset's)")
    ceil.add_argument(
        "--frames",
        choices=("spread", "al", "sequential"),
        default="spread",
        help="'spread': reference frames over the training parts; 'al': the AL run's pool; "
        "'sequential': aiMD-sequential's first frames (its goal under other training)",
    )
    ceil.add_argument("--run", default=None, help="the AL run's tag (default: the size)")
    ceil.add_argument(
        "--training",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more training settings, JSON values (e.g. num_channels=32 max_L=1)",
    )
    ceil.add_argument("--references", type=Path, default=Path("runs/rare"))
    for p in (rates, ceil):
        p.add_argument(
            "--control",
            type=Path,
            default=None,
            help="control.json: also the ratio against CHGNet's own MD under the same protocol",
        )
        p.add_argument("--md-seeds", type=int, default=1, help="MLIP-MD seeds per ensemble")
    ceil.add_argument("--workdir", type=Path, default=Path("runs/rare"))
    ctl = sub.add_parser("control", help="the perfect-MLIP control: CHGNet through the rate")
    ctl.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="MD seeds")
    ctl.add_argument("--size", choices=sorted(SIZES), default="small")
    ctl.add_argument("--references", type=Path, default=Path("runs/rare"))
    ctl.add_argument("--out", type=Path, default=Path("runs/rare/control.json"))
    ship = sub.add_parser("ship", help="write compressed copies to benchmarks/data/")
    ship.add_argument("trajectories", type=Path, nargs="+", help="cui_<T>K.extxyz files")
    rep = sub.add_parser("report", help="table and plot of the seeds' runs")
    rep.add_argument("runs", type=Path, nargs="+", help="rare_events.json of each seed")
    rep.add_argument("--plot", type=Path, default=Path("benchmarks/results/rare_events.png"))
    rep.add_argument(
        "--sequential-from",
        type=Path,
        nargs="+",
        default=[],
        help="runs (rare_events.json) whose aiMD-sequential curve fills in for runs without",
    )
    ver = sub.add_parser(
        "verdict", help="the target at every seed, all trained alike, rates vs the control"
    )
    ver.add_argument("runs", type=Path, nargs="+", help="AL run directories (rates --control)")
    ver.add_argument(
        "--sequential",
        type=Path,
        nargs="+",
        required=True,
        help="ceiling --frames sequential results (ceiling_sequential_*.json)",
    )
    ver.add_argument("--budget", type=int, default=None, help="aiMD-sequential's full budget")
    ver.add_argument(
        "--goal",
        choices=["mean", "per-seed"],
        default="mean",
        help="aiMD-sequential's error at the budget: mean over its seeds, or each seed's own",
    )
    ver.add_argument("--plot", type=Path, default=Path("benchmarks/results/rare_events.png"))
    ver.add_argument("--out", type=Path, default=None, help="the rows as JSON")
    args = parser.parse_args(argv)
    if args.step == "verdict":
        verdict(args)
        return
    if args.step == "run":
        run_strategies(args)
        return
    if args.step == "report":
        report(args.runs, args.plot, args.sequential_from)
        return
    if args.step == "energies":
        energy_offsets(args)
        return
    if args.step == "rates":
        remeasure_rates(args)
        return
    if args.step == "ceiling":
        ceiling(args)
        return
    if args.step == "control":
        control(args)
        return
    if args.step == "ship":
        from active_mlip.core.frames import read_frames

        SHIPPED.mkdir(exist_ok=True)
        for path in args.trajectories:
            out = SHIPPED / path.with_suffix(".npz").name
            write_npz(read_frames(path), out)
            print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
        return
    # the loop's stack loads only when a step runs
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    from active_mlip.workflows.materials import get_structure

    path = reference_trajectory(args.workdir, args.temperature, args.ps)
    frames = [Frame.from_atoms(a) for a in read(path, index=":")]
    r0 = Frame.from_atoms(AseAtomsAdaptor.get_atoms(get_structure("CuI") * (2, 2, 2)))
    positions = [f.positions for f in frames]
    found = events(positions, r0)
    mask = event_atoms(positions, r0)
    symbols = r0.to_atoms().get_chemical_symbols()
    elements = sorted({symbols[a] for a, _, _ in found})
    print(
        f"{path}: {len(frames)} frames ({len(frames) * TIMESTEP_FS * LOG_EVERY / 1000:g} ps), "
        f"{len(found)} off-site events of {len({a for a, _, _ in found})} atoms "
        f"({', '.join(elements) or 'none'}), {event_rate(len(found), len(frames)):.2f} per "
        f"ps; frames with an event: {int(mask.any(axis=1).sum())}"
    )


if __name__ == "__main__":
    sys.exit(main())
