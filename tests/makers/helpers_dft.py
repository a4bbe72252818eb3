"""Stand-ins for a DFT code: an executable on PATH and a run that copies a reference output.

As in atomate2's own tests, the labelling job runs for real (input set, input files,
task document, our gather) and only the call to the code is replaced: the fake run
keeps a copy of the input files the job wrote, then copies a shipped output
(``tests/test_data/<code>/<case>/``) into the job directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from jobflow import JobStore
from maggma.stores import MemoryStore

from active_mlip.core.frames import Frame
from active_mlip.makers.schemas import LabelledBatch

TEST_DATA = Path(__file__).resolve().parents[1] / "test_data"


def put_on_path(monkeypatch: pytest.MonkeyPatch, directory: Path, *names: str) -> Path:
    """Make executables ``names`` (scripts that fail if ever run) the only ones on PATH
    besides the system's, so the executable check finds them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        exe = directory / name
        exe.write_text("#!/bin/sh\necho 'fake DFT code: the test must not run it' >&2\nexit 3\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:/usr/bin:/bin")
    return directory


class ReferenceRun:
    """Replaces the code's run: records the inputs, copies the reference outputs in.

    Parameters
    ----------
    reference
        Folder whose files become the run's outputs.
    inputs
        Names of the input files to keep (read before the outputs are copied).
    then
        Extra step after copying, e.g. VASP's CONTCAR from the POSCAR.
    """

    def __init__(self, reference: Path, inputs: tuple[str, ...], then=None) -> None:
        self.reference = reference
        self.inputs = inputs
        self.then = then
        self.calls: list[dict[str, str]] = []

    def __call__(self, *args, **kwargs) -> None:
        here = Path.cwd()
        self.calls.append({n: (here / n).read_text() for n in self.inputs if (here / n).exists()})
        for f in self.reference.iterdir():
            if f.is_file() and f.name != "README.md":
                shutil.copy(f, here / f.name)
        if self.then is not None:
            self.then(here)


def memory_store() -> JobStore:
    store = JobStore(
        MemoryStore(), additional_stores={"data": MemoryStore(), "cache": MemoryStore()}
    )
    store.connect()
    return store


def as_batch(output) -> LabelledBatch:
    """The stored output, whether jobflow hands it back as a dict or a document."""
    return output if isinstance(output, LabelledBatch) else LabelledBatch.model_validate(output)


def si2_frame(dx: float = 0.05) -> Frame:
    """Two-atom diamond Si (a = 5.43 Å), atom 0 moved by ``dx`` Å along x: the
    structure of the shipped reference outputs."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[0, 0] += dx
    return Frame.from_atoms(atoms)
