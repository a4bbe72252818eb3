"""Tests of :mod:`makers.npt` (draft helpers; tests follow)."""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import NeighborList, PrimitiveNeighborList

T_K = 500.0
P_GPA = 0.0


class _CellAwareNeighborList(PrimitiveNeighborList):
    """ASE's list, rebuilt only when a pair could have crossed the skin.

    ASE rebuilds on any cell change, i.e. on every NPT step, which costs more than EMT
    itself. A pair vector r_j + n h - r_i changes by at most 2 max|Δr| + max|n Δh|, and the
    list holds every pair within the cut-off plus 2 skin, so it stays exact until that bound
    reaches 2 skin.
    """

    def build(self, pbc, cell, coordinates):
        super().build(pbc, cell, coordinates)
        offsets = [d for d in self.displacements if len(d)]
        self._offsets = np.concatenate(offsets) if offsets else np.zeros((0, 3), int)

    def update(self, pbc, cell, coordinates):
        if self.nupdates and (self.pbc == pbc).all():
            dh = np.asarray(cell) - self.cell.array
            dr = np.sqrt(((coordinates - self.coordinates) ** 2).sum(1)).max()
            dn = np.sqrt(((self._offsets @ dh) ** 2).sum(1)).max(initial=0.0)
            if 2 * dr + dn < 2 * self.skin:
                return False
        self.build(pbc, cell, coordinates)
        return True


class FastEMT(EMT):
    """ASE's EMT with :class:`_CellAwareNeighborList`; same results, no per-step rebuild."""

    def initialize(self, atoms):
        super().initialize(atoms)
        self.nl = NeighborList(
            [0.5 * self.rc_list] * len(atoms),
            self_interaction=False,
            bothways=True,
            primitive=_CellAwareNeighborList,
        )


def cu8() -> Atoms:
    """8-atom fcc Cu cell (2x1x1 conventional) with FastEMT."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.calc = FastEMT()
    return atoms


def mc_npt(
    atoms: Atoms,
    temperature_K: float,
    pressure_gpa: float,
    n_sweeps: int,
    rng: np.random.Generator,
    step_r: float = 0.15,
    step_lnv: float = 0.03,
) -> tuple[np.ndarray, dict]:
    """Metropolis NPT Monte Carlo; the volume after each sweep.

    A sweep is len(atoms) single-atom moves (uniform in a cube of half-width ``step_r``)
    followed by one isotropic move in ln V (uniform, half-width ``step_lnv``) that scales
    the positions with the cell. Target density exp(-β(E + PV)) V^N dV d^{3N}s; proposing
    in ln V adds a Jacobian V, hence acceptance exp(-β(ΔE + PΔV) + (N + 1) ln(V'/V)).
    """
    beta = 1.0 / (units.kB * temperature_K)
    pressure = pressure_gpa * units.GPa
    n = len(atoms)
    energy = atoms.get_potential_energy()
    volume = atoms.get_volume()
    volumes = np.empty(n_sweeps)
    accepted = np.zeros(2)
    for sweep in range(n_sweeps):
        for i in rng.integers(n, size=n):
            old = atoms.positions.copy()
            trial = old.copy()
            trial[i] += rng.uniform(-step_r, step_r, 3)
            atoms.positions = trial
            e_new = atoms.get_potential_energy()
            if rng.random() < np.exp(-beta * (e_new - energy)):
                energy = e_new
                accepted[0] += 1
            else:
                atoms.positions = old
        old_cell, old_pos = atoms.cell.array.copy(), atoms.positions.copy()
        dlnv = rng.uniform(-step_lnv, step_lnv)
        atoms.set_cell(old_cell * np.exp(dlnv / 3), scale_atoms=True)
        e_new = atoms.get_potential_energy()
        v_new = volume * np.exp(dlnv)
        log_acc = -beta * (e_new - energy + pressure * (v_new - volume)) + (n + 1) * dlnv
        if np.log(rng.random()) < log_acc:
            energy, volume = e_new, v_new
            accepted[1] += 1
        else:
            atoms.set_cell(old_cell, scale_atoms=False)
            atoms.positions = old_pos
        volumes[sweep] = volume
    return volumes, {"acc_atom": accepted[0] / (n * n_sweeps), "acc_vol": accepted[1] / n_sweeps}


def block_stats(x: np.ndarray, n_blocks: int = 20) -> tuple[float, float, float, float]:
    """Mean, its error, std, its error, from ``n_blocks`` contiguous blocks."""
    blocks = np.array_split(np.asarray(x, float), n_blocks)
    means = np.array([b.mean() for b in blocks])
    mean = float(np.mean(x))
    # Centre each block on the global mean so short blocks do not bias the variance low.
    variances = np.array([((b - mean) ** 2).mean() for b in blocks])
    var = float(np.mean(variances))
    std = np.sqrt(var)
    err_mean = float(means.std(ddof=1) / np.sqrt(n_blocks))
    err_std = float(variances.std(ddof=1) / np.sqrt(n_blocks) / (2 * std))
    return mean, err_mean, float(std), err_std
