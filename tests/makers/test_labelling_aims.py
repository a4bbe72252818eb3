"""FHI-aims through the same LabelMaker, with FHI-aims itself replaced by a shipped output.

The labelling job runs as in production (preset, pymatgen-io-aims' input set,
control.in/geometry.in written with the species defaults, atomate2's task document, the
gather); only the call to ``aims.x`` copies ``tests/test_data/aims/si2_static`` (see its
README) into the job directory. The species defaults come from
``tests/test_data/aims/species_defaults`` through ``AIMS_SPECIES_DIR``, as on a cluster.
Needs pymatgen-io-aims, which the ``dev`` extra installs (the ``aims`` extra for users).

The control.in values asserted here are the ones ``docs/dft.md`` promises for the
``"forces"`` and ``"forces-tight"`` presets: change one there and here together.
"""

from __future__ import annotations

import re

import atomate2.aims.jobs.base
import numpy as np
import pytest
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.makers.dft_environment import AIMS_SPECIES_ENV, DFTSetupError
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

REFERENCE = TEST_DATA / "aims" / "si2_static"
SPECIES = TEST_DATA / "aims" / "species_defaults"

#: docs/dft.md, FHI-aims "forces": keyword -> value as written in control.in.
FORCES_CONTROL = {
    "xc": "pbe",
    "relativistic": "atomic_zora scalar",
    "occupation_type": "gaussian 0.01",
    "sc_accuracy_rho": "1e-06",
    "sc_accuracy_eev": "0.001",
    "sc_accuracy_etot": "1e-06",
    "sc_accuracy_forces": "0.0001",
    "sc_iter_limit": "200",
    "compute_forces": ".true.",
    "compute_analytical_stress": ".true.",
}


def control_keywords(text: str) -> dict[str, str]:
    """The keyword lines of control.in before the first species block."""
    out = {}
    for line in text.split("species ", 1)[0].splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out[key] = " ".join(value.split())
    return out


@pytest.fixture
def species_env(monkeypatch):
    from pymatgen.core import SETTINGS

    monkeypatch.setenv(AIMS_SPECIES_ENV, str(SPECIES))
    # a developer's ~/.pmgrc.yaml must not decide which species files are used
    monkeypatch.delitem(SETTINGS, AIMS_SPECIES_ENV, raising=False)


@pytest.fixture
def fake_aims(monkeypatch, tmp_path, species_env):
    """``aims.x`` on PATH, and FHI-aims' run replaced by the reference output."""
    put_on_path(monkeypatch, tmp_path / "bin", "aims.x")
    run = ReferenceRun(REFERENCE, ("control.in", "geometry.in"))
    monkeypatch.setattr(atomate2.aims.jobs.base, "run_aims", run)
    return run


def run_static(labeller: Atomate2Labeller, frame: Frame, run_dir, monkeypatch):
    """Run one static job of ``labeller`` in ``run_dir`` (no LabelMaker around it)."""
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    structure = AseAtomsAdaptor.get_structure(frame.to_atoms())
    return labeller.static_maker().make(structure).run(memory_store())


def test_aims_label_writes_the_forces_preset_and_parses_to_our_units(fake_aims, tmp_path):
    frame = si2_frame(0.05)
    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    job = LabelMaker(labeller=Atomate2Labeller(code="aims")).make([frame])
    run_locally(job, store=store, ensure_success=True, create_folders=True, root_dir=tmp_path)
    assert len(fake_aims.calls) == 1

    control = fake_aims.calls[0]["control.in"]
    keywords = control_keywords(control)
    for key, value in FORCES_CONTROL.items():
        assert keywords.get(key) == value, key
    # k-point spacing <= 0.25 Å^-1 (4 points per Å^-1): |b| = 2π·√3/5.43 = 2.0042 Å^-1,
    # ceil(2.0042 · 4) = ceil(8.017) = 9 along each reciprocal vector
    assert keywords["k_grid"] == "9 9 9"
    # FHI-aims' "light" species defaults for Si, pasted in from AIMS_SPECIES_DIR
    assert 'Suggested "light" defaults for Si atom' in control
    assert re.search(r"^\s*species\s+Si\s*$", control, re.MULTILINE)
    assert re.search(r"^\s*outer_grid\s+302\s*$", control, re.MULTILINE)

    geometry = fake_aims.calls[0]["geometry.in"]
    lattice = [
        [float(x) for x in line.split()[1:4]]
        for line in geometry.splitlines()
        if line.startswith("lattice_vector")
    ]
    atoms = [line.split() for line in geometry.splitlines() if line.startswith("atom ")]
    np.testing.assert_allclose(lattice, frame.cell, atol=1e-10)
    np.testing.assert_allclose([[float(x) for x in a[1:4]] for a in atoms], frame.positions)
    assert [a[4] for a in atoms] == ["Si", "Si"]

    out = as_batch(store.get_output(job.uuid, load=True))
    assert out.n_failed == 0, out.failures
    assert out.labeller.is_dft is True
    (f,) = out.frames
    # aims.out: the electronic free energy (the energy the forces are derivatives of with
    # smearing), -0.157476544210000E+05 eV; forces eV/Å and stress eV/Å^3 as printed
    assert f.energy == pytest.approx(-15747.654421, abs=1e-9)
    np.testing.assert_allclose(
        f.forces, [[-0.6123, 0.01234, 0.01234], [0.6123, -0.01234, -0.01234]], atol=1e-12
    )
    # aims prints eV/Å^3 in ASE's sign (pressure 0.00296667 = -trace/3); pymatgen-io-aims
    # hands it on in kBar (x 1602.17653), normalise_dft_output brings it back (x 0.1 GPa):
    # the same numbers to 6e-8 (pymatgen's older eV), Voigt order xx yy zz yz xz xy
    np.testing.assert_allclose(
        f.stress, [-0.0031, -0.0029, -0.0029, 0.0004, 0.0002, 0.0001], rtol=1e-6, atol=0
    )


def test_aims_tight_preset_and_user_overrides(fake_aims, tmp_path, monkeypatch):
    run_static(
        Atomate2Labeller(code="aims", preset="forces-tight"),
        si2_frame(),
        tmp_path / "a",
        monkeypatch,
    )
    control = fake_aims.calls[-1]["control.in"]
    keywords = control_keywords(control)
    assert 'Suggested "tight" defaults for Si atom' in control
    assert re.search(r"^\s*l_hartree\s+6\s*$", control, re.MULTILINE)
    assert keywords["sc_accuracy_rho"] == "1e-07"
    assert keywords["k_grid"] == "11 11 11"  # ceil(2.0042 · 5) = ceil(10.02)

    user = Atomate2Labeller(
        code="aims",
        input_set_kwargs={
            "user_params": {"sc_accuracy_forces": 5e-4},
            "user_kpoints_settings": {"density": 2.0},
        },
    )
    run_static(user, si2_frame(), tmp_path / "b", monkeypatch)
    keywords = control_keywords(fake_aims.calls[-1]["control.in"])
    assert keywords["sc_accuracy_forces"] == "0.0005"  # the user's value wins
    assert keywords["sc_accuracy_rho"] == "1e-06"  # the rest of the preset stays
    # k-point settings are replaced whole, so pymatgen's default even=True is back:
    # ceil(2.0042 · 2) = ceil(4.008) = 5, rounded up to the even 6
    assert keywords["k_grid"] == "6 6 6"


def test_missing_aims_species_defaults_name_the_variable_and_the_path(
    fake_aims, tmp_path, monkeypatch
):
    # the variable unset (and nothing in pymatgen's settings)
    monkeypatch.delenv(AIMS_SPECIES_ENV)
    with pytest.raises(DFTSetupError, match=f"set the environment variable {AIMS_SPECIES_ENV}"):
        run_static(Atomate2Labeller(code="aims"), si2_frame(), tmp_path / "a", monkeypatch)
    assert list((tmp_path / "a").iterdir()) == []  # nothing written

    missing = tmp_path / "no_such_dir"
    monkeypatch.setenv(AIMS_SPECIES_ENV, str(missing))
    with pytest.raises(DFTSetupError, match=f"'{missing}' .*{AIMS_SPECIES_ENV}.*does not exist"):
        Atomate2Labeller(code="aims").check_environment(["Si"])

    # the directory is there but lacks the family or the element
    monkeypatch.setenv(AIMS_SPECIES_ENV, str(SPECIES))
    with pytest.raises(DFTSetupError, match="'really_tight' not found: looked for"):
        Atomate2Labeller(
            code="aims", input_set_kwargs={"user_params": {"species_dir": "really_tight"}}
        ).check_environment(["Si"])
    cu = Frame.from_atoms(si2_frame().to_atoms())
    cu = cu.model_copy(update={"numbers": [29, 14]})
    with pytest.raises(DFTSetupError, match=r"light' .* lack the file\(s\) 29_Cu_default"):
        run_static(Atomate2Labeller(code="aims"), cu, tmp_path / "b", monkeypatch)
    assert list((tmp_path / "b").iterdir()) == []


def test_missing_aims_executable_names_it(monkeypatch, tmp_path, species_env):
    put_on_path(monkeypatch, tmp_path / "bin")  # no aims.x
    with pytest.raises(DFTSetupError) as err:
        run_static(Atomate2Labeller(code="aims"), si2_frame(), tmp_path / "run", monkeypatch)
    msg = str(err.value)
    assert "FHI-aims executable 'aims.x' not found on PATH" in msg
    assert "ATOMATE2_AIMS_CMD" in msg and "https://fhi-aims.org" in msg
    assert list((tmp_path / "run").iterdir()) == []


def test_species_dir_pointing_at_one_family_is_accepted(fake_aims, tmp_path, monkeypatch):
    # ASE's convention: AIMS_SPECIES_DIR is the family itself (.../defaults_2020/light)
    monkeypatch.setenv(AIMS_SPECIES_ENV, str(SPECIES / "defaults_2020" / "light"))
    run_static(Atomate2Labeller(code="aims"), si2_frame(), tmp_path / "a", monkeypatch)
    assert 'Suggested "light" defaults' in fake_aims.calls[-1]["control.in"]
    # ... but not when the preset asks for another family
    with pytest.raises(DFTSetupError, match="'tight' not found"):
        Atomate2Labeller(code="aims", preset="forces-tight").check_environment(["Si"])
