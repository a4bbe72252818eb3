"""VASP through the same LabelMaker, with VASP itself replaced by a shipped output.

The labelling job runs as in production (preset, atomate2's input set, INCAR/KPOINTS/
POSCAR written, emmet's task document, the gather's unit conversion); only the call to
VASP copies ``tests/test_data/vasp/si2_static`` (see its README) into the job directory.
No VASP binary and no POTCARs are needed (``POTCAR.spec`` is written instead).

The INCAR values asserted here are the ones ``docs/dft.md`` promises for the
``"forces"`` preset: change one there and here together.
"""

from __future__ import annotations

import shutil

import atomate2.vasp.jobs.base
import numpy as np
import pytest
from ase.build import bulk
from ase.data import chemical_symbols
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.vasp import Incar, Kpoints, Poscar

from active_mlip.core.frames import Frame
from active_mlip.makers.dft_environment import DFTSetupError
from active_mlip.makers.labelling import Atomate2Labeller, LabelMaker
from active_mlip.stores.job_store import StoreSettings, make_job_store
from tests.makers.helpers_dft import (
    TEST_DATA,
    ReferenceRun,
    as_batch,
    memory_store,
    put_on_path,
    si2_frame,
)

REFERENCE = TEST_DATA / "vasp" / "si2_static"
#: POTCAR.spec instead of POTCAR: the POTCAR files are licensed and not here.
NO_POTCARS = {"write_input_set_kwargs": {"potcar_spec": True}}

#: docs/dft.md, VASP "forces": tag -> value in the written INCAR.
FORCES_INCAR = {
    "GGA": "PE",
    "ENCUT": 520,
    "PREC": "ACCURATE",
    "LREAL": False,
    "LASPH": True,
    "EDIFF": 1e-6,
    "NELM": 200,
    "ISMEAR": 0,
    "SIGMA": 0.05,
    "ISYM": 0,
    "LDAU": False,
    "IBRION": -1,
    "NSW": 0,
    "ISIF": 2,
    "LWAVE": False,
    "LCHARG": False,
}


def _norm(value):
    return value.upper() if isinstance(value, str) else value


@pytest.fixture
def fake_vasp(monkeypatch, tmp_path):
    """``vasp_std`` on PATH, and VASP's run replaced by the reference output."""
    put_on_path(monkeypatch, tmp_path / "bin", "vasp_std")

    def contcar_from_poscar(here):  # a static run's CONTCAR is its POSCAR
        shutil.copy(here / "POSCAR", here / "CONTCAR")

    run = ReferenceRun(REFERENCE, ("INCAR", "KPOINTS", "POSCAR"), then=contcar_from_poscar)
    monkeypatch.setattr(atomate2.vasp.jobs.base, "run_vasp", run)
    return run


def test_vasp_label_writes_the_forces_preset_and_parses_to_our_units(fake_vasp, tmp_path):
    frame = si2_frame(0.05)
    labeller = Atomate2Labeller(code="vasp", maker_kwargs=NO_POTCARS)
    assert labeller.preset == "forces"  # the default
    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    job = LabelMaker(labeller=labeller).make([frame])
    run_locally(job, store=store, ensure_success=True, create_folders=True, root_dir=tmp_path)
    assert len(fake_vasp.calls) == 1

    written = fake_vasp.calls[0]
    incar = Incar.from_str(written["INCAR"])
    for tag, value in FORCES_INCAR.items():
        assert _norm(incar.get(tag)) == _norm(value), tag
    # no +U anywhere, no KSPACING overriding the KPOINTS file
    assert not [k for k in incar if k.startswith("LDAU") and k != "LDAU"]
    assert "KSPACING" not in incar
    # 64 k-points per Å^-3 of reciprocal volume: (2π)^3 / V = 6.197 Å^-3 for V = 40.026 Å^3,
    # 396.6 points; pymatgen's mesh: floor((396.6 · 3.8396^3)^(1/3) / 3.8396) = floor(7.35)
    # = 7 divisions along each of the three 3.8396 Å vectors, Γ-centred
    kpoints = Kpoints.from_str(written["KPOINTS"])
    assert kpoints.style == Kpoints.supported_modes.Gamma
    assert [list(k) for k in kpoints.kpts] == [[7, 7, 7]]
    # POSCAR: the frame's cell and atoms, in the frame's order
    poscar = Poscar.from_str(written["POSCAR"]).structure
    np.testing.assert_allclose(poscar.lattice.matrix, frame.cell, atol=1e-8)
    np.testing.assert_allclose(poscar.cart_coords, frame.positions, atol=1e-8)
    assert [s.specie.symbol for s in poscar] == ["Si", "Si"]

    out = as_batch(store.get_output(job.uuid, load=True))
    assert out.n_failed == 0, out.failures
    assert out.labeller.is_dft is True
    (f,) = out.frames
    # vasprun.xml: e_0_energy -10.845632 eV; forces eV/Å as they are
    assert f.energy == pytest.approx(-10.845632, abs=1e-9)
    expected = [[-0.54321, 0.01234, 0.01234], [0.54321, -0.01234, -0.01234]]
    np.testing.assert_allclose(f.forces, expected, rtol=0, atol=1e-12)
    # vasprun stress in kBar, positive = compressive: xx -12 kBar is 1.2 GPa of tension,
    # +1.2 / 160.21766208 eV/Å^3 in ASE's sign; Voigt order xx yy zz yz xz xy
    gpa = [1.2, 0.8, 0.8, -0.3, -0.2, -0.1]
    assert f.stress == pytest.approx([v / 160.21766208 for v in gpa], rel=1e-9)
    assert f.stress[0] == pytest.approx(0.00748981, rel=1e-5)


def oxide() -> Frame:
    """Rock-salt FeO: the Materials Project would put U = 5.3 eV on Fe here."""
    return Frame.from_atoms(bulk("FeO", "rocksalt", a=4.33))


def input_set(labeller: Atomate2Labeller, frame: Frame):
    gen = labeller.static_maker().input_set_generator
    structure = AseAtomsAdaptor.get_structure(frame.to_atoms())
    return gen.get_input_set(structure, potcar_spec=True)


def test_vasp_preset_switches_off_plus_u_and_tetrahedra_that_atomate2_would_use():
    forces = input_set(Atomate2Labeller(code="vasp"), oxide()).incar
    assert forces["LDAU"] is False
    assert "LDAUU" not in forces
    assert (forces["ISMEAR"], forces["SIGMA"]) == (0, 0.05)
    # atomate2's own defaults (preset=None): MP's +U on Fe and tetrahedron smearing
    raw = input_set(Atomate2Labeller(code="vasp", preset=None), oxide()).incar
    assert raw["LDAU"] is True
    assert raw["LDAUU"][raw["LDAUL"].index(2)] == pytest.approx(5.3)
    assert raw["ISMEAR"] == -5


def test_vasp_user_settings_win_over_the_preset():
    labeller = Atomate2Labeller(
        code="vasp",
        input_set_kwargs={
            "user_incar_settings": {"EDIFF": 1e-7, "ISYM": None, "LDAU": True},
            "user_kpoints_settings": {"reciprocal_density": 10},
        },
    )
    vis = input_set(labeller, si2_frame())
    # the user's tags win, a None unsets a tag, every other preset tag stays
    assert vis.incar["EDIFF"] == 1e-7
    assert vis.incar["LDAU"] is True
    assert "ISYM" not in vis.incar
    assert (vis.incar["ISMEAR"], vis.incar["ENCUT"]) == (0, 520)
    # k-points are replaced whole: floor((10 · 6.197 · 3.8396^3)^(1/3) / 3.8396) = floor(3.96)
    assert [list(k) for k in vis.kpoints.kpts] == [[3, 3, 3]]


def test_vasp_keeps_the_frames_atom_order():
    # atomate2 sorts atoms by electronegativity by default (I after Cu); the gather maps
    # forces by index, so the POSCAR must list the atoms as the frame does.
    atoms = bulk("CuI", "zincblende", a=6.05) * (2, 1, 1)
    frame = Frame.from_atoms(atoms)
    assert [chemical_symbols[z] for z in frame.numbers] == ["Cu", "I", "Cu", "I"]
    poscar = input_set(Atomate2Labeller(code="vasp"), frame).poscar
    assert [s.specie.symbol for s in poscar.structure] == ["Cu", "I", "Cu", "I"]
    np.testing.assert_allclose(poscar.structure.cart_coords, frame.positions, atol=1e-8)
    with pytest.raises(ValueError, match="sort_structure.*matched to the frame's atoms"):
        Atomate2Labeller(code="vasp", input_set_kwargs={"sort_structure": True})


def test_missing_vasp_executable_fails_the_job_before_any_input_is_written(monkeypatch, tmp_path):
    put_on_path(monkeypatch, tmp_path / "bin")  # nothing of VASP's there
    labeller = Atomate2Labeller(code="vasp", maker_kwargs=NO_POTCARS)
    structure = AseAtomsAdaptor.get_structure(si2_frame().to_atoms())
    job = labeller.static_maker().make(structure)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    with pytest.raises(DFTSetupError) as err:
        job.run(memory_store())
    msg = str(err.value)
    assert "VASP executable 'vasp_std' not found on PATH" in msg
    assert "ATOMATE2_VASP_CMD" in msg and "run_vasp_kwargs" in msg
    assert list(run_dir.iterdir()) == []  # no INCAR, nothing
    # the same check on demand, e.g. on a compute node before a campaign
    with pytest.raises(DFTSetupError, match="'vasp_std'"):
        labeller.check_environment()


def test_the_executable_inside_a_launcher_command_is_checked(monkeypatch, tmp_path):
    put_on_path(monkeypatch, tmp_path / "bin", "mpirun")
    cmd = {"run_vasp_kwargs": {"vasp_cmd": "mpirun -n 4 vasp_gam > vasp.out"}}
    labeller = Atomate2Labeller(code="vasp", maker_kwargs=cmd)
    with pytest.raises(DFTSetupError, match="'vasp_gam' not found .*mpirun -n 4 vasp_gam"):
        labeller.check_environment()
    put_on_path(monkeypatch, tmp_path / "bin", "mpirun", "vasp_gam")
    labeller.check_environment()  # both found: no error
