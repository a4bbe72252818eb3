"""Relaxation of R0: EMT copper (float64, exact minima known) and AgGaSe2 under CHGNet."""

from __future__ import annotations

import numpy as np
import pytest
import spglib
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.units import GPa
from jobflow import JobStore, run_locally
from maggma.stores import MemoryStore
from pydantic import ValidationError
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.makers.labelling import (
    ASECalculatorLabeller,
    Atomate2Labeller,
    CHGNetLabeller,
    label_cache_key,
)
from active_mlip.makers.relax import (
    RelaxationDocument,
    RelaxationSettings,
    RelaxMaker,
    check_can_relax,
    relax_cache_key,
    relax_structure,
)
from active_mlip.makers.sampling import displacement_frames
from active_mlip.stores.cache import ResultCache
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.workflows.materials import default_supercell, get_structure
from tests.makers.helpers_labelling import CountingEMT

#: EMT's equilibrium lattice constant of fcc Cu (equation-of-state fit, Å).
A_EMT = 3.5898


class NoStressEMT(EMT):
    """EMT that declares no stress, like many molecular or tight-binding calculators."""

    implemented_properties = ["energy", "forces"]


def cu_ideal(a: float = A_EMT) -> Frame:
    return Frame.from_atoms(bulk("Cu", "fcc", a=a, cubic=True) * (2, 2, 2))


def cu_rattled(stdev: float = 0.05, seed: int = 3) -> Frame:
    atoms = bulk("Cu", "fcc", a=A_EMT, cubic=True) * (2, 2, 2)
    atoms.rattle(stdev=stdev, seed=seed)
    return Frame.from_atoms(atoms, source="test")


def emt_energy_forces(frame: Frame) -> tuple[float, np.ndarray]:
    atoms = frame.unlabelled().to_atoms()
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


def spacegroup(frame: Frame, symprec: float = 1e-5) -> str:
    cell = (np.array(frame.cell), np.array(frame.positions) @ np.linalg.inv(frame.cell))
    return spglib.get_spacegroup((*cell, frame.numbers), symprec=symprec)


# -- relax_structure -----------------------------------------------------------------------
def test_rattled_copper_relaxes_back_to_the_fcc_lattice():
    frame = cu_rattled()
    doc = relax_structure(frame, EMT(), RelaxationSettings(fmax=1e-3))
    relaxed = doc.frame
    e_after, f_after = emt_energy_forces(relaxed)
    # The document's numbers are the calculator's, at the returned positions.
    assert doc.converged and doc.n_steps > 0
    assert doc.max_force_before > 0.2
    assert doc.max_force_after <= 1e-3
    assert doc.max_force_after == pytest.approx(np.linalg.norm(f_after, axis=1).max())
    assert relaxed.energy == pytest.approx(e_after) == doc.energy_after
    assert np.allclose(relaxed.forces, f_after)
    assert doc.energy_before == pytest.approx(emt_energy_forces(frame)[0])
    # The minimum is the perfect crystal, up to a rigid translation (EMT: zero force there).
    e_ideal, _ = emt_energy_forces(cu_ideal())
    assert doc.energy_after < doc.energy_before
    assert doc.energy_after == pytest.approx(e_ideal, abs=1e-5)
    u = np.array(relaxed.positions) - np.array(cu_ideal().positions)
    assert np.abs(u - u.mean(axis=0)).max() < 2e-3
    # The atoms moved by about the rattle (0.05 Å per component).
    moved = np.linalg.norm(np.array(relaxed.positions) - np.array(frame.positions), axis=1)
    assert doc.max_displacement == pytest.approx(moved.max())
    assert 0.05 < doc.max_displacement < 0.3
    # relax_cell = False: the cell is exactly the input's.
    assert relaxed.cell == frame.cell
    assert doc.stress_after_gpa == pytest.approx((np.array(relaxed.stress) / GPa).tolist())
    assert relaxed.info == {"source": "test", "relaxed": True}
    assert not frame.labelled  # the input is untouched


def test_fire_converges_too():
    doc = relax_structure(cu_rattled(), EMT(), RelaxationSettings(optimizer="FIRE"))
    assert doc.max_force_after <= 0.005
    assert doc.energy_after < doc.energy_before


def test_cell_relaxation_finds_emts_lattice_constant():
    frame = Frame.from_atoms(bulk("Cu", "fcc", a=3.70, cubic=True))
    settings = RelaxationSettings(relax_cell=True, fmax=1e-4)
    doc = relax_structure(frame, EMT(), settings)
    cell = np.array(doc.frame.cell)
    # Cubic symmetry kept: a diagonal cell with three equal edges, at EMT's a0.
    assert np.abs(cell - np.diag(np.diag(cell))).max() < 1e-10
    assert np.diag(cell) == pytest.approx([A_EMT] * 3, abs=2e-4)
    # Too large a lattice pulls inwards (tensile, positive in ASE's sign); relaxed, none.
    assert min(doc.stress_before_gpa[:3]) > 1.0
    assert np.abs(doc.stress_after_gpa).max() < 0.05
    assert doc.energy_after < doc.energy_before


def test_symmetric_structure_already_relaxed_takes_no_step():
    frame = cu_ideal()
    doc = relax_structure(frame, EMT(), RelaxationSettings())
    assert doc.n_steps == 0
    assert doc.max_force_before < 1e-10
    assert doc.max_displacement < 1e-12
    assert doc.energy_after == pytest.approx(doc.energy_before, abs=1e-10)


def test_non_converging_relaxation_is_a_clear_error():
    settings = RelaxationSettings(max_steps=1)
    with pytest.raises(RuntimeError, match=r"fmax = 0.005 eV/Å in 1 BFGS steps") as err:
        relax_structure(cu_rattled(), EMT(), settings)
    assert "largest residual force is" in str(err.value)
    assert "max_steps" in str(err.value)


def test_calculator_without_stress():
    doc = relax_structure(cu_rattled(), NoStressEMT(), RelaxationSettings())
    assert doc.stress_before_gpa is None and doc.stress_after_gpa is None
    assert doc.frame.stress is None and doc.max_force_after <= 0.005
    with pytest.raises(ValueError, match="relax_cell needs the stress"):
        relax_structure(cu_rattled(), NoStressEMT(), RelaxationSettings(relax_cell=True))


def test_settings_are_validated():
    s = RelaxationSettings()
    assert (s.fmax, s.max_steps, s.relax_cell, s.keep_symmetry, s.optimizer) == (
        0.005,
        500,
        False,
        True,
        "BFGS",
    )
    for bad in [
        {"fmax": 0.0},
        {"fmax": float("nan")},
        {"fmax": float("inf")},
        {"max_steps": 0},
        {"optimizer": "LBFGS"},
        {"f_max": 0.01},  # misspelt key
    ]:
        with pytest.raises(ValidationError):
            RelaxationSettings(**bad)


# -- the structure: AgGaSe2 under CHGNet -------------------------------------------
def test_aggase2_relaxes_under_chgnet_keeping_its_space_group():
    atoms = AseAtomsAdaptor.get_atoms(get_structure("AgGaSe2")) * default_supercell("AgGaSe2")
    frame = Frame.from_atoms(atoms)
    assert spacegroup(frame) == "I-42d (122)"
    doc = relax_structure(frame, CHGNetLabeller().get_calculator(), RelaxationSettings())
    # As built (experimental Se x = 0.27) the Se atoms feel ~0.24 eV/Å.
    assert doc.max_force_before > 0.2
    assert doc.max_force_after <= 0.005
    assert doc.energy_after < doc.energy_before
    assert 0.01 < doc.max_displacement < 0.1
    # FixSymmetry: the same space group, so phonopy's displacements are as few as before.
    relaxed = doc.frame
    assert spacegroup(relaxed) == "I-42d (122)"
    assert len(displacement_frames(relaxed).frames) == len(displacement_frames(frame).frames)
    assert relaxed.cell == frame.cell
    # The lattice is kept, so its stress stays (CHGNet would expand it: ~ -3 GPa).
    assert max(doc.stress_after_gpa[:3]) < -2.5
    assert np.abs(doc.stress_after_gpa[3:]).max() < 1e-3


# -- the check and the job -----------------------------------------------------------------
def test_dft_labellers_are_refused_with_the_setting_to_change():
    for labeller in [Atomate2Labeller(code="cp2k"), {"kind": "atomate2", "code": "vasp"}]:
        with pytest.raises(ValueError, match=r"DFT labeller \(atomate2, code (cp2k|vasp)\)") as e:
            check_can_relax(labeller)
        assert "loop.relax = false" in str(e.value)
    check_can_relax(CHGNetLabeller())
    check_can_relax(ASECalculatorLabeller())
    # The job refuses before it computes anything.
    stores = {"data": MemoryStore(), "cache": MemoryStore()}
    store = JobStore(MemoryStore(), additional_stores=stores)
    store.connect()
    job = RelaxMaker(labeller=Atomate2Labeller()).make(cu_rattled())
    with pytest.raises(ValueError, match="loop.relax = false"):
        job.run(store)


def test_relax_job_is_cached_by_content(tmp_path):
    store = make_job_store(StoreSettings(local_path=tmp_path))
    labeller = ASECalculatorLabeller(calculator="tests.makers.helpers_labelling.CountingEMT")
    maker = RelaxMaker(labeller=labeller)
    frame = cu_rattled()
    CountingEMT.calls = 0
    first = maker.make(frame)
    out1 = run_locally(first, store=store, ensure_success=True, root_dir=tmp_path)
    out1 = out1[first.uuid][1].output
    n_calls = CountingEMT.calls
    assert n_calls > 2 and not out1.reused
    settings_hash = labeller.identity().settings_hash
    assert out1.labeller_hash == out1.frame.info["labeller"] == settings_hash
    # The same structure again (other info): served from the cache, no EMT call.
    second = maker.make(frame.with_info(source="again"))
    out2 = run_locally(second, store=store, ensure_success=True, root_dir=tmp_path)
    out2 = out2[second.uuid][1].output
    assert CountingEMT.calls == n_calls
    assert isinstance(out2, RelaxationDocument) and out2.reused
    assert out2.frame.positions == out1.frame.positions
    assert out2.frame.energy == out1.frame.energy
    assert out2.frame.info == {"source": "again", "relaxed": True, "labeller": settings_hash}
    assert out2.n_steps == out1.n_steps
    cache = ResultCache(store.additional_stores["cache"])
    assert cache.get(relax_cache_key(frame, settings_hash, maker.settings)) is not None
    # The relaxed R0's label is in the label cache: labelling it again is free.
    label = cache.get(label_cache_key(out1.frame, settings_hash))
    assert label["energy"] == out1.frame.energy and label["forces"] == out1.frame.forces
    # Other settings are another relaxation.
    tighter = RelaxMaker(labeller=labeller, settings=RelaxationSettings(fmax=1e-3)).make(frame)
    out3 = run_locally(tighter, store=store, ensure_success=True, root_dir=tmp_path)
    assert CountingEMT.calls > n_calls
    assert not out3[tighter.uuid][1].output.reused


def test_relax_maker_serialises():
    maker = RelaxMaker(
        labeller=ASECalculatorLabeller(), settings=RelaxationSettings(fmax=0.01, relax_cell=True)
    )
    again = RelaxMaker.from_dict(maker.as_dict())
    assert again.settings == maker.settings and again.labeller == maker.labeller
    from_dicts = RelaxMaker(labeller={"kind": "chgnet"}, settings={"max_steps": 10})
    assert isinstance(from_dicts.labeller, CHGNetLabeller)
    assert from_dicts.settings.max_steps == 10
