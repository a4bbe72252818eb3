"""A labelled frame shared by the core and store tests."""

from __future__ import annotations

from ase.build import bulk
from ase.calculators.emt import EMT

from active_mlip.core.frames import Frame


def labelled_cu() -> Frame:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    atoms.get_stress()
    return Frame.from_atoms(atoms, source="test")
