"""EMT-labelled Cu frames shared by the training tests."""

from __future__ import annotations

from ase.build import bulk
from ase.calculators.emt import EMT

from active_mlip.core.frames import Frame

#: EMT energy of an isolated Cu atom (eV): the reference energy a labeller would give.
E0S = {"Cu": 3.51}


def emt_frames(n: int, start: int = 0, rattle: float = 0.1) -> list[Frame]:
    """``n`` rattled 8-atom fcc Cu cells labelled with EMT (energy, forces, stress)."""
    frames = []
    for i in range(start, start + n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.rattle(rattle, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        frames.append(Frame.from_atoms(atoms, index=i))
    return frames
