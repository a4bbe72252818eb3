"""Exploration throughput: scored frames per second of ensemble MLIP-MD with uncertainty.

Side by side in one process, for M members on 64- and 216-atom CuI:

(a) the research code's way: one calculator per member, the mean force computed every
    step from M separate evaluations (each building its own graph), and every member
    evaluated again at each logged frame for the uncertainty;
(b) MACE's own committee, ``MACECalculator(model_paths=[...])`` (shared graph, members
    one after another), uncertainty read from its results;
(c) ``EnsembleCalculator`` doing the same work as (a) and (b) (stress included, members
    in turn): one graph per frame, every member on it, uncertainty from the same pass;
(c') ``EnsembleCalculator`` as the loop builds it for NVT exploration: no stress, members
    evaluated concurrently (``member_threads``);
(d) W walkers (temperatures) batched into one evaluation per step by
    ``run_exploration_walkers``, against the same W walkers run one after another with
    (a), with (b) and with (c').

Prints ratios (not absolute times: the machine is shared and noisy). The members are
random-initialised MACE models of the ``quick`` preset's size; throughput does not
depend on the weights. Run from the repository root::

    python benchmarks/exploration_throughput.py [--steps 40] [--members 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.units import fs
from pymatgen.io.ase import AseAtomsAdaptor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from active_mlip.core.frames import Frame  # noqa: E402
from active_mlip.makers.ensemble import EnsembleCalculator  # noqa: E402
from active_mlip.makers.exploration import (  # noqa: E402
    ExplorationSettings,
    run_exploration,
    run_exploration_walkers,
)
from active_mlip.makers.selection import ReferenceStatistics, SelectionSettings  # noqa: E402
from active_mlip.workflows.materials import get_structure  # noqa: E402
from tests.models import make_mace_model, write_model  # noqa: E402

R_MAX = 4.5
LOGINTERVAL = 10
#: How ``ExplorationMaker`` builds the calculator for NVT (stress off, default member threads).
LOOP = {"compute_stress": False}


class SeparateMembers(Calculator):
    """(a): M independent MACE calculators; members re-evaluated at logged frames."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, paths: list[str]):
        from mace.calculators import MACECalculator

        super().__init__()
        self.members = [
            MACECalculator(model_paths=p, device="cpu", default_dtype="float64") for p in paths
        ]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        e, f = [], []
        for m in self.members:
            a = atoms.copy()
            a.calc = m
            e.append(a.get_potential_energy())
            f.append(a.get_forces())
        self.results = {"energy": float(np.mean(e)), "forces": np.mean(f, axis=0)}

    def uncertainty(self, atoms) -> float:
        f = []
        for m in self.members:  # the research code evaluates every member again here
            a = atoms.copy()
            a.calc = m
            f.append(a.get_forces())
        f = np.asarray(f)
        return float(np.sqrt(((f - f.mean(0)) ** 2).sum(-1).mean(0)).max())


def md_rate(atoms, calc, steps: int, score, temperature: float = 300.0, per="frame") -> float:
    """Scored frames (or, ``per="step"``, MD steps) per second of NVT Langevin with ``calc``.

    A frame is scored every LOGINTERVAL steps.
    """
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    md = Langevin(
        atoms, 2 * fs, temperature_K=temperature, friction=0.02, rng=np.random.default_rng(1)
    )
    md.attach(lambda: score(atoms), interval=LOGINTERVAL)
    t0 = time.perf_counter()
    md.run(steps)
    count = steps if per == "step" else steps // LOGINTERVAL + 1
    return count / (time.perf_counter() - t0)


def committee_score(atoms) -> float:
    r = atoms.calc.results
    return float(np.sqrt(np.asarray(r["forces_comm"]).var(0).sum(-1)).max())


def ensemble_score(atoms) -> float:
    return float(atoms.calc.results["uncertainty"]["force_max"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--walkers", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from mace.calculators import MACECalculator

    models = [make_mace_model(seed, r_max=R_MAX, channels=16) for seed in range(args.members)]
    tmp = Path(tempfile.mkdtemp())
    paths = [str(write_model(m, tmp / f"m{i}.model")) for i, m in enumerate(models)]
    print(f"M = {args.members} members, {args.steps} MD steps, a frame scored every {LOGINTERVAL}")
    for cells in ((2, 2, 2), (3, 3, 3)):
        atoms = AseAtomsAdaptor.get_atoms(get_structure("CuI") * cells)
        n = len(atoms)
        sep = SeparateMembers(paths)
        rate_a = md_rate(atoms, sep, args.steps, sep.uncertainty)
        committee = MACECalculator(model_paths=paths, device="cpu", default_dtype="float64")
        rate_b = md_rate(atoms, committee, args.steps, committee_score)
        same = EnsembleCalculator(models, r_max=R_MAX, atomic_numbers=[29, 53], member_threads=1)
        rate_c = md_rate(atoms, same, args.steps, ensemble_score)
        loop = EnsembleCalculator(models, r_max=R_MAX, atomic_numbers=[29, 53], **LOOP)
        rate_l = md_rate(atoms, loop, args.steps, ensemble_score)
        print(
            f"{n:4d} atoms, same work (stress, members in turn): ours/(a) separate "
            f"calculators = {rate_c / rate_a:.2f}x, ours/(b) MACE committee = "
            f"{rate_c / rate_b:.2f}x"
        )
        print(
            f"{n:4d} atoms, as the loop runs NVT (no stress, members in threads): "
            f"ours/(a) = {rate_l / rate_a:.2f}x, ours/(b) = {rate_l / rate_b:.2f}x"
        )

    # (d) W walkers, 64 atoms, nothing ever accepted: the exploration workload of a step.
    atoms = AseAtomsAdaptor.get_atoms(get_structure("CuI") * (2, 2, 2))
    start = Frame.from_atoms(atoms)
    never = ReferenceStatistics(
        key="force_max", u_mean=1e3, u_std=1.0, e_mean=0.0, e_std=1.0, n_frames=10
    )
    settings = ExplorationSettings(timestep_fs=2.0, loginterval=LOGINTERVAL, max_steps=args.steps)
    selection = SelectionSettings()
    temps = [300.0 + 50.0 * k for k in range(args.walkers)]
    calc = EnsembleCalculator(models, r_max=R_MAX, atomic_numbers=[29, 53], **LOOP)
    seeds = list(range(len(temps)))
    t0 = time.perf_counter()
    docs = run_exploration_walkers(
        calc, [start] * len(temps), never, temps, 1, settings, selection, seeds
    )
    batched = sum(d.n_steps for d in docs) / (time.perf_counter() - t0)  # walker-steps/s
    t0 = time.perf_counter()
    docs += [
        run_exploration(calc, start, never, t, 1, settings, selection, seed=k)
        for k, t in enumerate(temps)
    ]
    in_turn = sum(d.n_steps for d in docs[len(temps) :]) / (time.perf_counter() - t0)
    blown = [f"{d.temperature:.0f} K" for d in docs if d.stopped_by == "blowup"]
    if blown:  # random members can blow up; fewer batched walkers then, the rates stay fair
        print(f"(walkers that blew up, counted by the steps they ran: {', '.join(blown)})")
    sep = SeparateMembers(paths)
    committee = MACECalculator(model_paths=paths, device="cpu", default_dtype="float64")
    # seconds per step of each walker, one after another -> walker-steps per second
    rate_a = len(temps) / sum(
        1 / md_rate(atoms, sep, args.steps, sep.uncertainty, t, per="step") for t in temps
    )
    rate_b = len(temps) / sum(
        1 / md_rate(atoms, committee, args.steps, committee_score, t, per="step") for t in temps
    )
    print(
        f"{args.walkers} walkers, 64 atoms: ours batched / ours one after another = "
        f"{batched / in_turn:.2f}x; ours batched / (a) one after another = "
        f"{batched / rate_a:.2f}x; ours batched / (b) one after another = {batched / rate_b:.2f}x"
    )


if __name__ == "__main__":
    main()
