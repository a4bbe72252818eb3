"""Tests of :mod:`active_mlip.makers.npt`: MTK dynamics samples the NPT volume distribution.

System: 8-atom fcc Cu (2x1x1 conventional cell) with ASE's EMT at 500 K and 0 GPa. The
reference volume distribution comes from the Metropolis Monte Carlo sampler
:func:`mc_npt` below (stored constants, reproduced by a short run in
:func:`test_mc_reference_reproduces`). Tolerances are ~4 standard deviations of the
seed-to-seed scatter measured for each check; the measurements are quoted where used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixCom
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.neighborlist import NeighborList, PrimitiveNeighborList

from active_mlip.makers.npt import enthalpy, make_npt_dynamics

T_K = 500.0
P_GPA = 0.0
#: MTK settings under test: 4 fs, thermostat 25 and barostat 100 time steps.
TIMESTEP_FS, TDAMP_FS, PDAMP_FS = 4.0, 100.0, 400.0

#: Reference <V> and std(V) (Å^3) of :func:`cu8` at T_K, P_GPA from :func:`mc_npt`:
#: 2 runs (seeds 10, 11) of 100 000 sweeps after 1 000 equilibration sweeps, step_r 0.12 Å,
#: step_lnv 0.08 (acceptance 45% / 45%; volume autocorrelation ~3 sweeps). Per run:
#: 95.255 ± 0.027, 2.384 ± 0.009 and 95.307 ± 0.022, 2.375 ± 0.014 (20 blocks each).
#: Combined errors (40 blocks): ± 0.018 and ± 0.008.
REF_MEAN_V, REF_MEAN_V_ERR = 95.281, 0.018
REF_STD_V, REF_STD_V_ERR = 2.380, 0.008


# -- helpers ----------------------------------------------------------------------------------
class _CellAwareNeighborList(PrimitiveNeighborList):
    """ASE's list, rebuilt only when a pair could have crossed the skin.

    ASE rebuilds on any cell change, i.e. on every NPT step, which costs more than EMT
    itself. A pair vector r_j + n h - r_i changes by at most 2 max|Δr| + max|n Δh|, and the
    list holds every pair within the cut-off plus 2 skin, so it stays exact until that bound
    reaches 2 skin (EMT then keeps only pairs inside its cut-off).
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
    """ASE's EMT with :class:`_CellAwareNeighborList`: same results, ~4x faster under NPT."""

    def check_state(self, atoms, tol=1e-15):
        # Exact comparisons of what EMT depends on: ASE's allclose-based check costs as much
        # as EMT itself for 8 atoms.
        old = self.atoms
        if old is None or len(old) != len(atoms):
            return list(all_changes)
        pairs = {
            "positions": (old.positions, atoms.positions),
            "numbers": (old.numbers, atoms.numbers),
            "cell": (old.cell.array, atoms.cell.array),
            "pbc": (old.pbc, atoms.pbc),
        }
        return [name for name, (a, b) in pairs.items() if not np.array_equal(a, b)]

    def initialize(self, atoms):
        super().initialize(atoms)
        self.nl = NeighborList(
            [0.5 * self.rc_list] * len(atoms),
            self_interaction=False,
            bothways=True,
            primitive=_CellAwareNeighborList,
        )


def cu8() -> Atoms:
    """8-atom fcc Cu cell (2x1x1 conventional, a = 3.6 Å) with :class:`FastEMT`."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.calc = FastEMT()
    return atoms


def mc_npt(
    atoms: Atoms,
    temperature_K: float,
    pressure_gpa: float,
    n_sweeps: int,
    rng: np.random.Generator,
    step_r: float = 0.12,
    step_lnv: float = 0.08,
) -> np.ndarray:
    """Metropolis NPT Monte Carlo; returns the volume after each sweep.

    A sweep is len(atoms) single-atom moves (uniform in a cube of half-width ``step_r``)
    followed by one isotropic move in ln V (uniform, half-width ``step_lnv``) that scales
    the positions with the cell. Target density exp(-β(E + PV)) V^N dV d^{3N}s; proposing
    in ln V adds the Jacobian V, hence acceptance exp(-β(ΔE + PΔV) + (N + 1) ln(V'/V)).
    """
    beta = 1.0 / (units.kB * temperature_K)
    pressure = pressure_gpa * units.GPa
    n = len(atoms)
    energy = atoms.get_potential_energy()
    volume = atoms.get_volume()
    volumes = np.empty(n_sweeps)
    for sweep in range(n_sweeps):
        for i in rng.integers(n, size=n):
            old = atoms.positions.copy()
            trial = old.copy()
            trial[i] += rng.uniform(-step_r, step_r, 3)
            atoms.positions = trial
            e_new = atoms.get_potential_energy()
            if rng.random() < np.exp(-beta * (e_new - energy)):
                energy = e_new
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
        else:
            atoms.set_cell(old_cell, scale_atoms=False)
            atoms.positions = old_pos
        volumes[sweep] = volume
    return volumes


def block_stats(x: np.ndarray, n_blocks: int = 20) -> tuple[float, float, float, float]:
    """Mean, its error, std, its error, from ``n_blocks`` contiguous blocks."""
    blocks = np.array_split(np.asarray(x, float), n_blocks)
    mean = float(np.mean(x))
    # Block variances about the global mean: about their own means they would be biased low.
    variances = np.array([((b - mean) ** 2).mean() for b in blocks])
    std = float(np.sqrt(variances.mean()))
    err_mean = float(np.std([b.mean() for b in blocks], ddof=1) / np.sqrt(n_blocks))
    err_std = float(variances.std(ddof=1) / np.sqrt(n_blocks) / (2 * std))
    return mean, err_mean, std, err_std


def run_md(
    make_dyn: Callable[[Atoms], object], seed: int, n_steps: int, n_equil: int = 1000
) -> tuple[np.ndarray, np.ndarray, Atoms]:
    """Volumes and kinetic temperatures (3N - 3 dof) of each step after ``n_equil``."""
    atoms = cu8()
    MaxwellBoltzmannDistribution(atoms, temperature_K=T_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = make_dyn(atoms)
    dyn.run(n_equil)
    volumes, kinetic = [], []

    def record():
        volumes.append(atoms.get_volume())
        kinetic.append(atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    dyn.run(n_steps)
    t_kin = 2 * np.array(kinetic) / (3 * (len(atoms) - 1) * units.kB)
    return np.array(volumes), t_kin, atoms


def _mtk(atoms: Atoms, pressure_gpa: float = P_GPA) -> IsotropicMTKNPT:
    return make_npt_dynamics(atoms, T_K, TIMESTEP_FS, pressure_gpa, TDAMP_FS, PDAMP_FS)


# -- the reference --------------------------------------------------------------------------
def test_fast_emt_matches_emt():
    """The neighbour-list shortcut changes nothing, including across its rebuilds."""
    fast, plain = cu8(), cu8()
    plain.calc = EMT()
    rng = np.random.default_rng(0)
    for _ in range(60):
        fast.set_cell(fast.cell.array * np.exp(rng.normal(0, 0.005)), scale_atoms=True)
        fast.positions += rng.normal(0, 0.02, fast.positions.shape)
        plain.set_cell(fast.cell.array, scale_atoms=False)
        plain.positions = fast.positions
        assert fast.get_potential_energy() == pytest.approx(plain.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(fast.get_forces(), plain.get_forces(), atol=1e-10)
        np.testing.assert_allclose(fast.get_stress(), plain.get_stress(), atol=1e-12)
    assert 1 < fast.calc.nl.nupdates < 60  # rebuilt when needed, not every time


def test_mc_reference_reproduces():
    """A short run of :func:`mc_npt` agrees with the stored long-run constants.

    1 500 sweeps after 300: seed-to-seed scatter (8 seeds) ± 0.11 Å^3 on <V> and ± 0.06 Å^3
    (2.6%) on std(V); tolerances ~4.5x those.
    """
    volumes = mc_npt(cu8(), T_K, P_GPA, 1800, np.random.default_rng(1))[300:]
    mean, _, std, _ = block_stats(volumes)
    assert mean == pytest.approx(REF_MEAN_V, abs=0.5)
    assert std == pytest.approx(REF_STD_V, rel=0.12)


def test_mc_reference_obeys_compressibility_identity():
    """<δV²> = kT V κ_T, with κ_T from the static E(V) curve at the mean volume.

    Static curvature at <V> gives B = 118.5 GPa and sqrt(kT V/B) = 2.356 Å^3, 1% below the
    MC value (the static B ignores the thermal pressure's volume dependence).
    """
    atoms = cu8()
    cell0, v0 = atoms.cell.array.copy(), atoms.get_volume()
    dlnv = np.linspace(-0.02, 0.02, 9)
    energies = []
    for x in dlnv:
        atoms.set_cell(cell0 * (REF_MEAN_V / v0 * np.exp(x)) ** (1 / 3), scale_atoms=True)
        energies.append(atoms.get_potential_energy())
    # E(V) near <V>: B = V d²E/dV²; fit in V - <V> with a quartic to absorb anharmonicity.
    dv = REF_MEAN_V * np.exp(dlnv) - REF_MEAN_V
    bulk_modulus = REF_MEAN_V * 2 * np.polyfit(dv, energies, 4)[-3]
    assert np.sqrt(units.kB * T_K * REF_MEAN_V / bulk_modulus) == pytest.approx(REF_STD_V, rel=0.04)


# -- MTK vs Berendsen -------------------------------------------------------------------------
def test_mtk_samples_npt_volume_distribution():
    """Mean volume, volume fluctuation and temperature of MTK NPT match the MC reference.

    15 000 steps of 4 fs after 1 000. Seed-to-seed scatter (8 seeds): ± 0.04 Å^3 on <V>,
    ± 0.08 Å^3 (3.5%) on std(V), ± 5 K on the kinetic temperature; tolerances ~4x those.
    std(V) decorrelates slowly (~100 steps, the barostat's time constant), hence the length.
    Over 24 runs <V> was 0.04 Å^3 below the MC value (~2σ), about the 1/N difference between
    the V^N (MC) and V^(N-1) (fixed centre of mass) measures, σ_V^2/<V> = 0.06 Å^3.
    Without the 3N - 3 correction ASE's integrator runs this cell at 8/7 T: +70 K, +0.35 Å^3.
    """
    volumes, t_kin, _ = run_md(_mtk, seed=0, n_steps=15_000)
    mean, _, std, _ = block_stats(volumes)
    assert mean == pytest.approx(REF_MEAN_V, abs=0.2)
    assert std == pytest.approx(REF_STD_V, rel=0.15)
    assert t_kin.mean() == pytest.approx(T_K, abs=20)


def test_berendsen_suppresses_volume_fluctuations():
    """Berendsen (exploration's former settings) gets <V> roughly but std(V) 50x too small.

    Measured std(V) 0.04 Å^3 over 15 000 steps against 2.38 from MC; even a residual
    equilibration drift of the whole 4 000-step window could not reach half the reference.
    """

    def berendsen(atoms: Atoms) -> NPTBerendsen:
        return NPTBerendsen(
            atoms,
            TIMESTEP_FS * units.fs,
            temperature_K=T_K,
            pressure_au=P_GPA * units.GPa,
            compressibility_au=0.02 / units.GPa,
            taut=100 * units.fs,
            taup=1000 * units.fs,
            fixcm=True,
        )

    volumes, _, _ = run_md(berendsen, seed=0, n_steps=4000)
    assert volumes.mean() == pytest.approx(REF_MEAN_V, abs=1.0)
    assert volumes.std() < 0.5 * REF_STD_V


# -- make_npt_dynamics ----------------------------------------------------------------------
def test_mtk_pressure_units():
    """At 5 GPa the mean instantaneous pressure (virial + kinetic) is 5 GPa.

    1 500 steps after 500: seed-to-seed scatter of the mean ± 0.04 GPa (the pressure itself
    fluctuates by ~3.5 GPa); a GPa/eV Å^-3 mix-up would be off by 160x.
    """
    pressures = []
    atoms = cu8()
    MaxwellBoltzmannDistribution(atoms, temperature_K=T_K, rng=np.random.default_rng(3))
    dyn = _mtk(atoms, pressure_gpa=5.0)
    dyn.run(500)
    dyn.attach(
        lambda: pressures.append(-np.trace(atoms.get_stress(voigt=False, include_ideal_gas=True))),
        interval=1,
    )
    dyn.run(1500)
    assert np.mean(pressures) / 3 / units.GPa == pytest.approx(5.0, abs=0.2)


def test_make_npt_dynamics_is_deterministic_and_conservative():
    """rng is unused; the COM momentum is removed; the conserved quantity is conserved."""

    def trajectory(rng):
        atoms = cu8()
        MaxwellBoltzmannDistribution(atoms, temperature_K=T_K, rng=np.random.default_rng(7))
        atoms.set_momenta(atoms.get_momenta() + 0.3)  # a COM drift for the factory to remove
        dyn = make_npt_dynamics(atoms, T_K, TIMESTEP_FS, P_GPA, TDAMP_FS, PDAMP_FS, rng=rng)
        assert isinstance(dyn, IsotropicMTKNPT)
        assert dyn.dt == pytest.approx(TIMESTEP_FS * units.fs)
        np.testing.assert_allclose(atoms.get_momenta().sum(axis=0), 0.0, atol=1e-10)
        conserved = [dyn.get_conserved_energy()]
        for _ in range(6):
            dyn.run(50)
            conserved.append(dyn.get_conserved_energy())
        np.testing.assert_allclose(atoms.get_momenta().sum(axis=0), 0.0, atol=1e-8)
        return atoms.positions.copy(), atoms.get_volume(), np.array(conserved)

    pos_a, vol_a, conserved = trajectory(np.random.default_rng(1))
    pos_b, vol_b, _ = trajectory(None)
    np.testing.assert_array_equal(pos_a, pos_b)
    assert vol_a == vol_b
    # Measured drift over 300 steps ~1e-3 eV; kT = 0.043 eV.
    assert np.ptp(conserved) < 0.01


class _NoStress(Calculator):
    implemented_properties = ["energy", "forces"]


class _StressOff(EMT):
    compute_stress = False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature_K": 0.0}, "temperature_K must be positive"),
        ({"temperature_K": -5.0}, "temperature_K must be positive"),
        ({"temperature_K": float("nan")}, "temperature_K must be finite"),
        ({"timestep_fs": 0.0}, "timestep_fs must be positive"),
        ({"tdamp_fs": -1.0}, "tdamp_fs must be positive"),
        ({"pdamp_fs": 0.0}, "pdamp_fs must be positive"),
        ({"pressure_gpa": float("inf")}, "pressure_gpa must be finite"),
        ({"pressure_gpa": "high"}, "pressure_gpa must be a number"),
    ],
)
def test_make_npt_dynamics_rejects_bad_numbers(kwargs, match):
    args = {
        "temperature_K": T_K,
        "timestep_fs": TIMESTEP_FS,
        "pressure_gpa": P_GPA,
        "tdamp_fs": TDAMP_FS,
        "pdamp_fs": PDAMP_FS,
    }
    with pytest.raises(ValueError, match=match):
        make_npt_dynamics(cu8(), **(args | kwargs))


@pytest.mark.parametrize(
    ("prepare", "match"),
    [
        (lambda a: setattr(a, "calc", None), "needs a calculator"),
        (lambda a: setattr(a, "calc", _NoStress()), "_NoStress does not provide"),
        (lambda a: setattr(a, "calc", _StressOff()), "compute_stress=False"),
        (lambda a: a.set_constraint(FixCom()), r"no constraints; remove \['FixCom'\]"),
        (lambda a: a.set_pbc(False), "3D periodic cell"),
    ],
)
def test_make_npt_dynamics_rejects_bad_atoms(prepare, match):
    atoms = cu8()
    prepare(atoms)
    with pytest.raises(ValueError, match=match):
        make_npt_dynamics(atoms, T_K, TIMESTEP_FS, P_GPA, TDAMP_FS, PDAMP_FS)


# -- enthalpy ---------------------------------------------------------------------------------
def test_enthalpy_hand_value():
    # 1 GPa Å^3 = 1e9 J/m^3 * 1e-30 m^3 = 1e-21 J = 1e-21 / 1.602176634e-19 eV = 0.00624150907 eV.
    # ASE's units use CODATA 2014 (e = 1.6021766208e-19 C): 8e-9 relative difference.
    assert enthalpy(0.0, 10.0, 1.0) == pytest.approx(0.0624150907, rel=1e-7)
    assert enthalpy(0.0, 10.0, 1.0) == pytest.approx(1e-20 / units._e, rel=1e-12)
    assert enthalpy(-3.5, 10.0, 1.0) == pytest.approx(-3.5 + 0.0624150907, rel=1e-7)
    assert enthalpy(-3.5, 123.0, 0.0) == -3.5
    assert enthalpy(-3.5, 100.0, -2.0) == pytest.approx(-3.5 - 200 * 0.00624150907, rel=1e-7)
    assert isinstance(enthalpy(1, 2, 3), float)
