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

This part is the measuring code and the reference trajectory; the strategies (active
learning, aiMD-sequential, random MLIP-MD frames) are the next step (see
``benchmarks/README.md``). Generate the cached reference trajectories (CHGNet, the
stand-in for DFT; about 0.1 s per step for 64-atom CuI on 2 cores)::

    python benchmarks/rare_events.py reference --temperature 300 --ps 40 --workdir runs/rare
    python benchmarks/rare_events.py reference --temperature 600 --ps 10 --workdir runs/rare

Each prints its events and writes ``cui_<T>K.extxyz`` (a frame every 40 fs, with CHGNet
energies and forces); running it again reuses the file.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from active_mlip.core.frames import Frame
from active_mlip.makers.reference_md import EventSettings, off_site_events
from active_mlip.makers.selection import anharmonicity_score, minimum_image_displacements

#: MD of the reference trajectories: the quick preset's step and logging.
TIMESTEP_FS, LOG_EVERY = 4.0, 10


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    ref = sub.add_parser("reference", help="generate (or reuse) a reference trajectory")
    ref.add_argument("--temperature", type=float, required=True)
    ref.add_argument("--ps", type=float, required=True)
    ref.add_argument("--workdir", type=Path, default=Path("runs/rare"))
    args = parser.parse_args(argv)
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
