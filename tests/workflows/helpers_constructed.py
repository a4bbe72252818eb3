"""Constructed screening failures: a potential with a false dense state, and one without.

A Lennard-Jones solid (eV-scale: epsilon 0.5 eV, sigma 2.3 Å, fcc with r_nn = 2.58 Å)
is stiff and harmonic at 600 K: no off-site event in 2.4 ps. :class:`PairWellLJ` adds a
narrow attractive pair term at 2.2 Å: neighbours then collapse into short pairs at 600 K
within a few tenths of a ps (15-72 off-site events in 2.4 ps for two seeds, measured),
while fcc stays a minimum at 0 K (the pair term's forces cancel by symmetry there).

- *hallucinated*: the first ensemble is trained on an "aiMD" of :class:`PairWellLJ` and
  screened against plain Lennard-Jones -- it holds a dense state the reference lacks (the
  paper's AgGaSe2, by construction);
- *missing*: trained on plain Lennard-Jones "aiMD" and screened against
  :class:`PairWellLJ` -- the reference collapses where the ensemble never looked (the
  paper's CuI: an MLIP trained on aiMD before the event).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.neighborlist import neighbor_list
from ase.units import fs

LJ = {"epsilon": 0.5, "sigma": 2.3, "rc": 5.0, "smooth": True}
WELL = {"depth": 1.0, "r_well": 2.2, "width": 0.12}
ELEMENT = "Ar"


class PairWellLJ(Calculator):
    """Lennard-Jones plus ``-depth * exp(-(r - r_well)^2 / (2 width^2))`` per pair (eV, Å)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, depth: float, r_well: float, width: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.depth, self.r_well, self.width = depth, r_well, width
        self.lj = LennardJones(**LJ)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.lj
        energy, forces = a.get_potential_energy(), a.get_forces().copy()
        i, d, vec = neighbor_list("idD", a, self.r_well + 6 * self.width)
        g = self.depth * np.exp(-((d - self.r_well) ** 2) / (2 * self.width**2))
        energy -= 0.5 * g.sum()  # each pair appears twice in the list
        # dE/dr of -g is g (r - r_well) / width^2; vec points from i to its neighbour
        np.add.at(forces, i, (g * (d - self.r_well) / self.width**2 / d)[:, None] * vec)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}


def lj_crystal() -> Atoms:
    """32 atoms: the 2x2x2 fcc cell at the Lennard-Jones nearest-neighbour distance."""
    a = 2 ** (1 / 6) * LJ["sigma"] * np.sqrt(2)
    return bulk(ELEMENT, "fcc", a=a, cubic=True).repeat(2)


def write_aimd(
    path: Path,
    calc: Calculator,
    n_frames: int,
    temperature: float = 600.0,
    seed: int = 3,
    atoms: Atoms | None = None,
) -> Path:
    """A Langevin "aiMD" of ``atoms`` (:func:`lj_crystal`) with ``calc``, a frame every 40 fs,
    with the energies and forces of ``calc`` (extxyz)."""
    atoms = lj_crystal() if atoms is None else atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    md = Langevin(
        atoms, 4 * fs, temperature_K=temperature, friction=0.02, rng=np.random.default_rng(seed + 1)
    )
    images = []
    for _ in range(n_frames):
        md.run(10)
        snap = atoms.copy()
        snap.calc = None
        snap.info["energy"] = atoms.get_potential_energy()
        snap.arrays["forces"] = atoms.get_forces().copy()
        images.append(snap)
    write(path, images, format="extxyz")
    return path
