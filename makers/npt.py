"""Isothermal-isobaric (NPT) molecular dynamics for exploration.

Berendsen weak coupling rescales the cell towards the target pressure; it gets the mean
volume about right but suppresses the volume fluctuations, so it does not sample the NPT
ensemble. :func:`make_npt_dynamics` instead builds ASE's Martyna-Tobias-Klein integrator
with Nosé-Hoover chains on the particles and on the barostat
(:class:`ase.md.nose_hoover_chain.IsotropicMTKNPT`): isotropic cell fluctuations, time
reversible, deterministic, and sampling exp(-β(E + PV)) over positions and volume.

Units are ASE's: eV, Å, amu; temperatures in K, times in fs and pressures in GPa at this
interface (converted with :mod:`ase.units`).
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms, units
from ase.md.nose_hoover_chain import (
    IsotropicMTKBarostat,
    IsotropicMTKNPT,
    NoseHooverChainThermostat,
)

__all__ = ["make_npt_dynamics", "enthalpy"]


def _finite(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _positive(name: str, value: float) -> float:
    number = _finite(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


def _check_stress_calculator(atoms: Atoms) -> None:
    calc = atoms.calc
    if calc is None:
        raise ValueError("NPT dynamics needs a calculator on the atoms (it has none)")
    name = type(calc).__name__
    if "stress" not in getattr(calc, "implemented_properties", ()):
        raise ValueError(f"NPT dynamics needs the stress, which calculator {name} does not provide")
    # EnsembleCalculator lists "stress" but can be built without it.
    if not getattr(calc, "compute_stress", True):
        raise ValueError(
            f"NPT dynamics needs the stress: {name} was built with compute_stress=False"
        )


def make_npt_dynamics(
    atoms: Atoms,
    temperature_K: float,
    timestep_fs: float,
    pressure_gpa: float,
    tdamp_fs: float,
    pdamp_fs: float,
    rng: np.random.Generator | None = None,
) -> IsotropicMTKNPT:
    """Martyna-Tobias-Klein NPT dynamics with isotropic cell fluctuations.

    Parameters
    ----------
    atoms
        Periodic structure with a calculator that provides the stress. Must carry no
        constraints (the ASE integrator supports none, ``FixCom`` included). Its momenta are
        the initial momenta; their centre-of-mass part is removed here (see Notes).
    temperature_K
        Target temperature (K), > 0.
    timestep_fs
        Time step (fs), > 0.
    pressure_gpa
        External pressure (GPa); any finite value (negative is tension).
    tdamp_fs
        Thermostat time constant (fs), > 0; ~100 fs (25-50 steps) is fine.
    pdamp_fs
        Barostat time constant (fs), > 0. The volume oscillates with period
        2π pdamp sqrt(kT / (3 Ω B)) (Ω volume per atom, B bulk modulus; independent of N),
        0.23 pdamp for Cu at 500 K, and its variance decorrelates in ~pdamp. Keep the
        period >= ~25 steps, i.e. pdamp >= ~100 time steps (400 fs at 4 fs was tested);
        ASE's suggested 1000 steps samples the volume 10x more slowly.
    rng
        Unused: the MTK integrator is deterministic. Kept so that all exploration dynamics
        factories share one signature.

    Returns
    -------
    IsotropicMTKNPT
        The dynamics; ``dyn.run(n)`` advances it and ``atoms.cell`` / ``atoms.get_volume()``
        give the current cell and volume after every step.

    Raises
    ------
    ValueError
        For a non-positive or non-finite temperature, time step or damping time, a
        non-finite pressure, an atoms object without a stress-capable calculator, a
        non-periodic cell, or constraints.

    Notes
    -----
    ASE's integrator counts 3N kinetic degrees of freedom. Forces sum to zero, so the
    total momentum is conserved (the MTK equations only rescale it); with it at zero, only
    3N - 3 degrees of freedom carry kinetic energy and a thermostat aiming at 3N kT would
    run the crystal at T N/(N-1) (3% hot for 32 atoms, 14% for 8). We therefore zero the
    centre-of-mass momentum and set up the thermostat, barostat and MTK coupling terms for
    N_f = 3N - 3, as in MTK's derivation with N_f degrees of freedom.
    Every step evaluates the calculator once at the new positions and cell if it fills
    forces and stress in one call (EMT, MACE and ``EnsembleCalculator`` do). The dynamics
    keeps its own positions, momenta, strain and chain variables and writes them to
    ``atoms`` after each step, so edits to ``atoms`` between steps are overwritten: build a
    new dynamics instead. ``atoms.get_temperature()`` counts 3N degrees of freedom and so
    reads T (N-1)/N on average.
    """
    del rng  # deterministic integrator; see docstring
    temperature_K = _positive("temperature_K", temperature_K)
    timestep_fs = _positive("timestep_fs", timestep_fs)
    tdamp_fs = _positive("tdamp_fs", tdamp_fs)
    pdamp_fs = _positive("pdamp_fs", pdamp_fs)
    pressure_gpa = _finite("pressure_gpa", pressure_gpa)
    if len(atoms) < 2:
        raise ValueError(f"NPT dynamics needs at least 2 atoms, got {len(atoms)}")
    if not atoms.pbc.all() or atoms.cell.rank != 3:
        raise ValueError(f"NPT dynamics needs a 3D periodic cell, got pbc={atoms.pbc.tolist()}")
    if atoms.constraints:
        names = [type(c).__name__ for c in atoms.constraints]
        raise ValueError(f"IsotropicMTKNPT supports no constraints; remove {names}")
    _check_stress_calculator(atoms)

    # Zero total momentum (without rescaling) so that N_f = 3N - 3 below is exact.
    masses = atoms.get_masses()[:, None]
    momenta = atoms.get_momenta()
    atoms.set_momenta(momenta - masses * momenta.sum(axis=0) / masses.sum())

    tdamp = tdamp_fs * units.fs
    pdamp = pdamp_fs * units.fs
    dyn = IsotropicMTKNPT(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        pressure_au=pressure_gpa * units.GPa,
        tdamp=tdamp,
        pdamp=pdamp,
    )
    # ASE's classes take the atom count N and use 3N degrees of freedom; passing N - 1
    # makes the thermostat target 3(N-1) kT and the MTK terms use 1 + 3/N_f = 1 + 1/(N-1).
    n_eff = len(atoms) - 1
    for attr in ("_num_atoms_global", "_thermostat", "_barostat"):
        if not hasattr(dyn, attr):
            raise RuntimeError(f"unexpected ASE IsotropicMTKNPT without {attr}; check ASE version")
    dyn._num_atoms_global = n_eff
    dyn._thermostat = NoseHooverChainThermostat(
        num_atoms_global=n_eff, masses=dyn.masses, temperature_K=temperature_K, tdamp=tdamp
    )
    dyn._barostat = IsotropicMTKBarostat(
        num_atoms_global=n_eff, temperature_K=temperature_K, pdamp=pdamp
    )
    return dyn


def enthalpy(energy_eV: float, volume_A3: float, pressure_gpa: float) -> float:
    """Enthalpy H = E + P V (eV).

    Parameters
    ----------
    energy_eV
        Potential (or total) energy (eV).
    volume_A3
        Cell volume (Å^3).
    pressure_gpa
        External pressure (GPa).

    Returns
    -------
    float
        E + P V in eV, with P converted by :data:`ase.units.GPa` (1 GPa Å^3 = 0.00624 eV).
    """
    return float(energy_eV + pressure_gpa * units.GPa * volume_A3)
