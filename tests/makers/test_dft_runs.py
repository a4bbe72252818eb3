"""A DFT single point that fails is a recorded reason, never a label, without running CP2K.

atomate2's real CP2K StaticMaker and custodian run each case; a small script stands in
for ``cp2k.psmp`` and prints a stored output (an SCF that did not converge, from a real
CP2K 2023.1 run of a lone I atom with MAX_SCF 3), crashes, or prints nothing. Only
pymatgen's CP2K data (the ``cp2k-data`` package) is needed to write the input.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from active_mlip.makers.dft_runs import (
    SinglePointResult,
    custodian_corrections,
    dft_single_point,
    scf_converged,
)
from active_mlip.makers.labelling import Atomate2Labeller, gather_dft_labels
from tests.cp2k import CP2K_SHARE, cp2k_environment, light_cp2k, pymatgen_cp2k_data
from tests.external import unavailable

UNCONVERGED = Path(__file__).parent / "data" / "cp2k_scf_not_converged.out.gz"
#: custodian looks at a running job every 10 s by default; the fake one ends at once.
FAST_POLL = {"custodian_kwargs": {"polling_time_step": 0.2, "monitor_freq": 1}}


@pytest.fixture(scope="module")
def cp2k_data(tmp_path_factory) -> Path:
    if not (CP2K_SHARE / "BASIS_MOLOPT").is_file():
        unavailable("CP2K data", "cp2k-data: /usr/share/cp2k/BASIS_MOLOPT not installed")
    return pymatgen_cp2k_data(tmp_path_factory.mktemp("cp2k_data"))


@pytest.fixture
def pmg_env(cp2k_data, monkeypatch):
    from pymatgen.core import SETTINGS

    for key, value in cp2k_environment(cp2k_data).items():
        monkeypatch.setenv(key, value)
        monkeypatch.setitem(SETTINGS, key, value)
    monkeypatch.delenv("CP2K_DATA_DIR", raising=False)


def fake_cp2k(tmp_path: Path, body: str) -> str:
    """An executable standing in for cp2k.psmp (custodian adds ``-i cp2k.inp``)."""
    exe = tmp_path / "fake_cp2k"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


def run_single_point(tmp_path: Path, run_cp2k_kwargs: dict) -> SinglePointResult:
    labeller = Atomate2Labeller(
        code="cp2k",
        input_set_kwargs=light_cp2k(["I"]),
        compute_stress=False,
        maker_kwargs={"run_cp2k_kwargs": run_cp2k_kwargs},
    )
    atom = Structure(Lattice.cubic(8.0), ["I"], [[0.5, 0.5, 0.5]])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with contextlib.chdir(run_dir):
        return dft_single_point.original(labeller.static_maker(), atom, "cp2k")


def test_an_unconverged_scf_atomate2_accepts_is_refused(pmg_env, tmp_path):
    # Without custodian (a "direct" run) atomate2 parses CP2K's output and calls it a success.
    exe = fake_cp2k(tmp_path, f"zcat {UNCONVERGED} > cp2k.out")
    result = run_single_point(tmp_path, {"job_type": "direct", "cp2k_cmd": exe})
    assert result.task_document is not None, result.reason
    assert result.task_document["state"] == "successful"
    assert result.energy == pytest.approx(-310.81, abs=0.01)  # a number, but not a label
    assert result.scf_converged is False
    assert result.reason.startswith("cp2k SCF not converged")
    # The gather records the reason instead of a label (and caches nothing).
    refs = {**result.model_dump(), "uuid": "u1"}
    frames, labeller = _frames_and_labeller()
    batch = gather_dft_labels.original(frames, [None], [0], [refs], labeller)
    assert (batch.n_labelled, batch.n_failed) == (0, 1)
    assert batch.failures[0].reason == result.reason


def test_custodian_gives_up_on_an_unconverged_scf_and_its_corrections_are_the_reason(
    pmg_env, tmp_path
):
    # custodian's UnconvergedScfErrorHandler changes the mixing and reruns, twice, then raises.
    exe = fake_cp2k(tmp_path, f"zcat {UNCONVERGED}")
    result = run_single_point(tmp_path, {"cp2k_cmd": exe, "max_errors": 2, **FAST_POLL})
    assert result.energy is None and result.forces is None
    assert "MaxCorrectionsPerJobError" in result.reason
    assert result.corrections == ["UnconvergedScfErrorHandler: Non-converging Job"] * 2
    assert "UnconvergedScfErrorHandler: Non-converging Job" in result.reason


def test_a_crashed_code_is_a_recorded_failure(pmg_env, tmp_path):
    # CP2K dies after its header: custodian's validator finds no finished output.
    exe = fake_cp2k(tmp_path, f"zcat {UNCONVERGED} | head -n 300\necho 'segfault' >&2\nexit 139")
    result = run_single_point(tmp_path, {"cp2k_cmd": exe, "max_errors": 1, **FAST_POLL})
    assert result.energy is None
    # custodian's own SCF handler trips over the truncated output (an IndexError in
    # pymatgen's parser); the files say what happened
    assert result.reason.startswith("IndexError")
    assert "cp2k.out ends before 'PROGRAM ENDED': the code stopped early" in result.reason
    assert "stderr: segfault" in result.reason
    assert result.dir_name == str(tmp_path / "run")


def test_a_missing_output_is_a_recorded_failure(pmg_env, tmp_path):
    exe = fake_cp2k(tmp_path, "exit 0")  # runs, writes nothing
    result = run_single_point(tmp_path, {"job_type": "direct", "cp2k_cmd": exe})
    assert result.energy is None
    assert result.reason.startswith("FileNotFoundError: No CP2K files found")
    assert "(no cp2k.out)" in result.reason


def test_scf_verdict_and_corrections_from_files(tmp_path):
    assert scf_converged("cp2k", tmp_path) is None  # no output: cannot tell
    (tmp_path / "cp2k.out").write_text("*** SCF run NOT converged ***\n*** SCF run converged in 9")
    assert scf_converged("cp2k", tmp_path) is True  # the last SCF is the label's
    (tmp_path / "cp2k.out").write_text("*** SCF run converged in 9\n*** SCF run NOT converged ***")
    assert scf_converged("cp2k", tmp_path) is False
    assert scf_converged("aims", tmp_path) is None
    assert custodian_corrections(tmp_path) == []


def _frames_and_labeller():
    from ase import Atoms

    from active_mlip.core.frames import Frame

    atoms = Atoms("I", positions=[[4, 4, 4]], cell=[8, 8, 8], pbc=True)
    return [Frame.from_atoms(atoms)], Atomate2Labeller(code="cp2k")


def test_a_worker_without_the_code_fails_the_job_instead_of_every_frame(pmg_env, tmp_path):
    from active_mlip.makers.dft_environment import DFTSetupError

    with pytest.raises(DFTSetupError, match="not found"):
        run_single_point(tmp_path, {"cp2k_cmd": str(tmp_path / "no" / "cp2k.psmp")})
