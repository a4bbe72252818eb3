"""ASE calculators with controlled misbehaviour, for the labelling tests.

They are imported by path (``tests.makers.helpers_labelling.FailingEMT``) the way a
user names a calculator, so the test exercises the real import route.
"""

from __future__ import annotations

from ase.calculators.emt import EMT


class FailingEMT(EMT):
    """EMT that raises for atoms with ``info["fail"] == "raise"`` and returns a NaN
    energy for ``info["fail"] == "nan"``."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        mode = (atoms if atoms is not None else self.atoms).info.get("fail")
        if mode == "raise":
            raise RuntimeError("SCF did not converge (simulated)")
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)
        if mode == "nan":
            self.results["energy"] = float("nan")


class CountingEMT(EMT):
    """EMT that counts its ``calculate`` calls (class-wide)."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        type(self).calls += 1
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)
