"""Labellers that misbehave in controlled ways, for the loop's fault tests.

Imported by path (``tests.workflows.helpers_faults.CHGNetFailingOnMD``) the way a
user names an ASE calculator.
"""

from __future__ import annotations

from functools import cache

from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator


@cache
def _model() -> CHGNet:
    # The labeller builds a calculator per frame; load the weights once.
    return CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


class CHGNetFailingOnMD(CHGNetCalculator):
    """CHGNet that labels the initial data but fails every frame found by MLIP MD."""

    def __init__(self, **kwargs):
        super().__init__(model=_model(), use_device="cpu", **kwargs)

    def calculate(self, atoms=None, properties=None, system_changes=None):
        if (atoms if atoms is not None else self.atoms).info.get("source") == "mlip-md":
            raise RuntimeError("SCF did not converge (simulated)")
        super().calculate(atoms, properties, system_changes)
