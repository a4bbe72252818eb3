"""The data-efficiency benchmark's scoring, on an ensemble whose errors are known exactly."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.makers.ensemble import EnsembleCalculator
from active_mlip.workflows.materials import get_structure
from tests.models import PairModel, make_ensemble_document


@pytest.fixture(scope="module")
def de():
    # The script sets its process up on import (threads, stores, warnings): undo that here.
    saved = dict(os.environ)
    with warnings.catch_warnings():
        import benchmarks.data_efficiency as module
    os.environ.clear()
    os.environ.update(saved)
    return module


@pytest.fixture(scope="module")
def score(de):
    return de.score


def test_excursions_are_cu_atoms_beyond_one_angstrom_from_their_sites(de):
    """Only Cu counts, the distance is taken across the periodic boundary."""
    ground = Frame.from_atoms(AseAtomsAdaptor.get_atoms(get_structure("CuI")))
    numbers = np.asarray(ground.numbers)
    cu, iodine = int(np.flatnonzero(numbers == 29)[0]), int(np.flatnonzero(numbers == 53)[0])
    a = np.asarray(ground.cell)[0, 0]

    def moved(atom: int, dx: float) -> Frame:
        pos = np.asarray(ground.positions).copy()
        pos[atom, 0] = (pos[atom, 0] + dx) % a  # wrapped back into the cell
        return ground.model_copy(update={"positions": pos.tolist()})

    frames = [ground, moved(cu, 0.8), moved(cu, 1.2), moved(cu, -1.2), moved(iodine, 2.0)]
    d = de.cu_displacements(frames, ground)
    np.testing.assert_allclose(d.max(axis=1), [0.0, 0.8, 1.2, 1.2, 0.0], atol=1e-9)
    assert de.n_off_site(frames, ground) == 2
    assert de.n_off_site([], ground) == 0


def test_score_mae_and_uncertainty_ranking(score):
    """Members are pair potentials of strength 1 and 3, the reference one of strength 1.

    Forces are linear in the strength, F_s = s·G, so the ensemble mean is 2·G, its error
    |2G − G| = |G| per atom and the members' spread σ_i = |3G_i − G_i| / 2 = |G_i|: the
    force MAE is the mean |component| of the reference forces and σ ranks the per-atom
    errors perfectly (Spearman 1). Frames rattled ever harder have ever larger forces, so
    U (mean σ) ranks the frames' errors perfectly too.
    """
    base = AseAtomsAdaptor.get_atoms(get_structure("CuI") * (2, 1, 1))
    ref_calc = EnsembleCalculator([PairModel(strength=1.0)], r_max=4.0, atomic_numbers=[29, 53])
    pattern = np.random.default_rng(0).normal(size=(len(base), 3))
    frames = []
    for amplitude in (0.01, 0.03, 0.06, 0.1):
        atoms = base.copy()
        atoms.positions += amplitude * pattern
        atoms.calc = ref_calc
        atoms.get_forces()
        frames.append(Frame.from_atoms(atoms))
    ensemble = make_ensemble_document([PairModel(strength=1.0), PairModel(strength=3.0)])
    excursion = np.zeros((len(frames), len(base)), dtype=bool)
    excursion[-1, 0] = True  # one atom of the last frame counts as off its site

    out = score(ensemble, frames, excursion, key="force_mean")

    f_ref = np.array([f.forces for f in frames])
    assert out["mae_forces"] == pytest.approx(1e3 * np.abs(f_ref).mean(), rel=1e-6)
    assert out["mae_forces_excursions"] == pytest.approx(
        1e3 * np.abs(f_ref[-1, 0]).mean(), rel=1e-6
    )
    assert out["spearman_atoms"] == pytest.approx(1.0)
    assert out["spearman_frames"] == pytest.approx(1.0)
    # The selection's other key ranks frames by the largest spread: still monotone here.
    assert score(ensemble, frames, excursion)["spearman_frames"] == pytest.approx(1.0)
