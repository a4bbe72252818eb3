"""The loop seeded by an aiMD trajectory, for a material given as a structure file,
with an ASE calculator (EMT) as the labeller."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.app.local import run_local
from active_mlip.workflows.settings import ActiveLearningSettings
from tests.workflows.helpers_constructed import write_aimd

N_FRAMES = 30


@pytest.fixture(scope="module")
def cu_inputs(tmp_path_factory):
    """A Cu CIF and an 'aiMD' (EMT Langevin) trajectory of its 2x1x1 supercell."""
    d = tmp_path_factory.mktemp("cu")
    cell = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
    cif = d / "Cu.cif"
    cell.to(filename=str(cif))
    atoms = AseAtomsAdaptor.get_atoms(Structure.from_file(cif) * (2, 1, 1))
    traj = write_aimd(d / "aimd.extxyz", EMT(), N_FRAMES, temperature=300, seed=1, atoms=atoms)
    return cif, traj


def settings(traj, **loop) -> ActiveLearningSettings:
    return ActiveLearningSettings.from_preset(
        "tiny",
        labeller={"kind": "ase", "calculator": "ase.calculators.emt.EMT"},
        loop={
            "initial": "trajectory",
            "trajectory": str(traj),
            "supercell": (2, 1, 1),
            "n_initial": 16,
            "n_test": 8,
            "e0s": "isolated",
            **loop,
        },
    )


def test_trajectory_seeded_loop_with_emt(cu_inputs, tmp_path):
    cif, traj = cu_inputs
    summary = run_local(str(cif), tmp_path / "run", settings(traj, trajectory_split="time"))
    # In time order: trained on the first 16 frames, tested on the last 8.
    test = read(tmp_path / "run" / "test.extxyz", ":")
    assert sorted(a.info["aimd_index"] for a in test) == list(range(22, 30))
    assert summary["material"] == "Cu"
    assert summary["labeller"]["name"].startswith("ase")
    it0 = summary["iterations"][0]
    assert it0["n_train"] == 16
    dataset = read(tmp_path / "run" / "dataset.extxyz", ":")
    initial = [a for a in dataset if a.info["iteration"] == 0]
    assert {a.info["source"] for a in initial} == {"aimd"}
    assert sorted(a.info["aimd_index"] for a in initial) == list(range(16))
    # Frames the loop selected were labelled by EMT: recompute one by hand.
    new = [a for a in dataset if a.info["iteration"] == 1]
    assert len(new) == it0["n_labelled"] > 0
    probe = new[0]
    ref = probe.copy()
    ref.calc = EMT()
    # extxyz keeps 8 decimals of the positions: agreement to ~1e-8 eV is exact here.
    assert probe.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(probe.get_forces(), ref.get_forces(), atol=1e-6)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_test"] == 8


def test_trajectory_of_another_cell_is_refused_before_any_job(cu_inputs, tmp_path):
    cif, traj = cu_inputs
    with pytest.raises(ValueError, match="supercell"):
        run_local(str(cif), tmp_path / "run", settings(traj, supercell=(1, 1, 1)))
    assert not (tmp_path / "run").exists()


def test_too_short_trajectory_is_refused(cu_inputs, tmp_path):
    cif, traj = cu_inputs
    with pytest.raises(ValueError, match="are needed"):
        run_local(str(cif), tmp_path / "run", settings(traj, n_initial=40))


def test_split_in_time_or_shuffled():
    from active_mlip.core.frames import Frame
    from active_mlip.workflows.jobs import split_initial

    frames = [
        Frame(numbers=[29], positions=[[0, 0, 0]], cell=np.eye(3).tolist(), info={"aimd_index": k})
        for k in (5, 0, 3, 1, 4, 2)  # not in file order: the index decides
    ]
    loop = settings("x.extxyz", n_initial=3, n_test=2, trajectory_split="time").loop
    test, train = split_initial(frames, loop)
    assert [frames[i].info["aimd_index"] for i in test] == [5, 4]
    assert sorted(frames[i].info["aimd_index"] for i in train) == [0, 1, 2]
    shuffled = settings("x.extxyz", n_initial=3, n_test=2).loop
    assert shuffled.trajectory_split == "shuffle"
    test, train = split_initial(frames, shuffled)
    assert len(test) == 2 and len(train) == 3 and not set(test) & set(train)
    assert split_initial(frames, shuffled) == (test, train)  # seeded
    with pytest.raises(
        ValueError, match="needs n_initial \\+ n_test = 7 frames; the trajectory has 6"
    ):
        split_initial(
            frames, settings("x.extxyz", n_initial=5, n_test=2, trajectory_split="time").loop
        )
