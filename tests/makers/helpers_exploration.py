"""Ensembles and reference statistics shared by the exploration tests."""

from __future__ import annotations

from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.makers.selection import ReferenceStatistics
from tests.models import PairModel

ZS = (29, 53)


def mace_calc(models, cui) -> EnsembleCalculator:
    return EnsembleCalculator(
        models, r_max=4.0, atomic_numbers=ZS, reference_atoms=cui.to_atoms(), compute_stress=False
    )


def spring_calc(compute_stress: bool = False) -> EnsembleCalculator:
    """Two slightly different nearest-neighbour spring models: stable, cheap, U > 0."""
    members = [PairModel(1.0, 2.62, r_max=3.5), PairModel(1.3, 2.64, r_max=3.5)]
    return EnsembleCalculator(members, r_max=3.5, atomic_numbers=ZS, compute_stress=compute_stress)


def stats(key="force_max", u_mean=0.0, u_std=1.0, e_mean=0.0, e_std=1.0) -> ReferenceStatistics:
    return ReferenceStatistics(
        key=key, u_mean=u_mean, u_std=u_std, e_mean=e_mean, e_std=e_std, n_frames=10
    )


#: P_U = 1 and P_E = 1 for any frame: every scored frame is accepted.
ACCEPT_ALL = dict(u_mean=-100.0, u_std=1e-3, e_mean=0.0, e_std=1e6)


#: P_U = Φ(-huge) = 0: nothing is ever accepted.
ACCEPT_NONE = dict(u_mean=1e6, u_std=1.0, e_mean=0.0, e_std=1e6)
