"""Real DFT through the same LabelMaker: CP2K via atomate2's static Maker.

Needs ``cp2k.psmp`` (Debian: ``apt-get install -y cp2k``, which brings the MOLOPT basis
sets and GTH potentials in /usr/share/cp2k). The input is deliberately light (8-atom Si,
Gamma point, DZVP-MOLOPT-SR, 200 Ry) with a tight SCF, so the check is the consistency
of CP2K's forces with its own energy, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from jobflow import run_locally

from active_mlip.core.frames import Frame
from active_mlip.makers.labelling import Atomate2Labeller, LabelMaker
from active_mlip.makers.schemas import LabelledBatch
from active_mlip.stores.job_store import StoreSettings, make_job_store
from tests.cp2k import cp2k_environment, light_cp2k, pymatgen_cp2k_data, require_cp2k

pytestmark = pytest.mark.dft


@pytest.fixture(autouse=True)
def cp2k_installed() -> None:
    """Skip without CP2K on a developer's machine; fail under CI."""
    require_cp2k()


#: Light but tightly converged: consistency of forces and energy is what is tested.
LIGHT_CP2K = light_cp2k(["Si"], cutoff=200, rel_cutoff=40, eps_default=1e-10, eps_scf=1e-8)


def as_batch(output) -> LabelledBatch:
    """The stored output, whether jobflow hands it back as a dict or a document."""
    return output if isinstance(output, LabelledBatch) else LabelledBatch.model_validate(output)


@pytest.fixture(scope="session")
def cp2k_yaml_dir(tmp_path_factory) -> Path:
    """pymatgen's per-element YAML data (:func:`tests.cp2k.pymatgen_cp2k_data`)."""
    return pymatgen_cp2k_data(tmp_path_factory.mktemp("cp2k"))


@pytest.fixture
def cp2k_env(cp2k_yaml_dir, monkeypatch):
    from pymatgen.core import SETTINGS

    # pymatgen read PMG_* variables at import: set both the env and its settings dict.
    for key, value in cp2k_environment(cp2k_yaml_dir).items():
        monkeypatch.setenv(key, value)
        monkeypatch.setitem(SETTINGS, key, value)
    monkeypatch.delenv("CP2K_DATA_DIR", raising=False)


def test_cp2k_forces_match_finite_difference_of_its_energy(cp2k_env, tmp_path):
    atom, axis, h = 0, 0, 0.02
    base = bulk("Si", "diamond", a=5.43, cubic=True)
    frames = []
    for dx in (0.05, 0.05 + h, 0.05 - h):
        atoms = base.copy()
        atoms.positions[atom, axis] += dx
        frames.append(Frame.from_atoms(atoms, dx=dx))
    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    labeller = Atomate2Labeller(code="cp2k", input_set_kwargs=LIGHT_CP2K)
    job = LabelMaker(labeller=labeller).make(frames)
    run_locally(job, store=store, ensure_success=True, create_folders=True, root_dir=tmp_path)
    out = as_batch(store.get_output(job.uuid, load=True))
    assert out.n_failed == 0, out.failures
    assert out.n_labelled == 3
    assert out.labeller.is_dft is True
    f0, fp, fm = out.frames
    assert [f.info["dx"] for f in (f0, fp, fm)] == [0.05, 0.05 + h, 0.05 - h]
    force = np.array(f0.forces)
    fd = -(fp.energy - fm.energy) / (2 * h)
    # ~0.5 eV/Å restoring force in eV/Å (Hartree/Bohr would be ~0.01)
    assert force[atom, axis] < -0.2
    # GPW grids and the h^2 term limit the agreement to a few meV/Å.
    assert force[atom, axis] == pytest.approx(fd, abs=0.01)
    assert np.abs(force.sum(axis=0)).max() < 1e-3  # Newton's third law
    assert len(f0.stress) == 6 and np.all(np.isfinite(f0.stress))
    # Re-running the same batch takes every label from the cache: no CP2K at all.
    again = LabelMaker(labeller=labeller).make(frames)
    run_locally(again, store=store, ensure_success=True, root_dir=tmp_path)
    assert as_batch(store.get_output(again.uuid, load=True)).n_reused == 3
