"""Fixtures shared by the exploration tests: an 8-atom CuI cell and tiny MACE members."""

from __future__ import annotations

import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.workflows.materials import get_structure
from tests.models import make_mace_model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny graphs: one thread is fastest, and two threads on busy cores are ~15x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cui() -> Frame:
    return Frame.from_atoms(AseAtomsAdaptor.get_atoms(get_structure("CuI")))


@pytest.fixture(scope="module")
def mace_members():
    return [make_mace_model(seed) for seed in range(2)]
