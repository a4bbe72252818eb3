"""Acceptance probabilities, period selection, reference statistics and sigma^A."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from active_mlip.makers.selection import (
    ReferenceStatistics,
    SelectionSettings,
    acceptance_probability,
    acceptance_terms,
    anharmonicity_score,
    draw_acceptance,
    energy_probability,
    harmonic_energy,
    harmonic_forces,
    minimum_image_displacements,
    reference_statistics,
    select_period,
    trajectory_anharmonicity,
    uncertainty_probability,
)


# -- probabilities -------------------------------------------------------------------------------
def test_uncertainty_probability_paper_values():
    mean, std = 0.05, 0.01
    p = uncertainty_probability(mean + np.array([1.5, 2.0, 2.5]) * std, mean, std)
    np.testing.assert_allclose(np.round(p, 3), [0.057, 0.5, 0.943])
    assert isinstance(uncertainty_probability(mean, mean, std), float)
    # steeper with smaller grad: same midpoint, P at +2.5 std closer to 1
    assert uncertainty_probability(mean + 2.5 * std, mean, std, grad=0.5) > 0.99
    assert uncertainty_probability(mean + 3 * std, mean, std, shift=3.0) == pytest.approx(0.5)


def test_energy_probability_paper_values():
    mean, std = -100.0, 0.5
    z = np.array([-3.0, 0.0, 1.0, 1.8, 2.6])
    p = energy_probability(mean + z * std, mean, std)
    assert p[0] == 1.0 and p[1] == 1.0 and p[2] == 1.0  # z <= knee: exactly 1
    np.testing.assert_allclose(p[3:], [0.2, 0.04], rtol=1e-12)
    assert energy_probability(mean + 1.4 * std, mean, std) == pytest.approx(np.sqrt(0.2))


def test_acceptance_is_product_and_keys_must_match():
    settings = SelectionSettings()
    stats = ReferenceStatistics(
        key="force_max", u_mean=0.1, u_std=0.02, e_mean=-10.0, e_std=0.1, n_frames=10
    )
    p_u, p_e, p = acceptance_terms(0.14, -10.0 + 1.8 * 0.1, stats, settings)
    assert p_u == pytest.approx(0.5) and p_e == pytest.approx(0.2)
    assert p == pytest.approx(0.1)
    assert acceptance_probability(0.14, -9.82, stats, settings) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="force_mean_relative"):
        acceptance_probability(
            0.1, -10, stats, SelectionSettings(uncertainty="force_mean", relative=True)
        )


def test_draws_reproducible_and_seed_dependent():
    p = np.full(200, 0.5)
    a = draw_acceptance(p, np.random.default_rng(7))
    b = draw_acceptance(p, np.random.default_rng(7))
    c = draw_acceptance(p, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 60 < a.sum() < 140
    assert draw_acceptance(np.array([0.0, 1.0]), np.random.default_rng(0)).tolist() == [
        False,
        True,
    ]
    assert isinstance(draw_acceptance(0.3, np.random.default_rng(0)), bool)
    with pytest.raises(ValueError, match="probabilities"):
        draw_acceptance([0.5, 1.2], np.random.default_rng(0))


def test_select_period_takes_highest_accepted():
    u = np.array([0.5, 0.9, 0.1, 0.8, 0.95, 0.7])
    acc = np.array([True, True, True, False, False, True])
    np.testing.assert_array_equal(select_period(u, acc, 2), [1, 5])  # 0.9, 0.7
    np.testing.assert_array_equal(select_period(u, acc, 10), [0, 1, 2, 5])
    assert select_period(u, np.zeros(6, bool), 3).size == 0
    with pytest.raises(ValueError, match="equal length"):
        select_period(u, acc[:3], 2)


# -- statistics ------------------------------------------------------------------------------
def test_reference_statistics_values():
    stats = reference_statistics([1.0, 3.0], [-2.0, -4.0], "force_max")
    assert (stats.u_mean, stats.u_std, stats.e_mean, stats.e_std) == (2.0, 1.0, -3.0, 1.0)
    assert stats.n_frames == 2 and stats.key == "force_max"


def test_bad_statistics_raise():
    with pytest.raises(ValueError, match="std of the uncertainty 'energy'"):
        reference_statistics([0.1, 0.1, 0.1], [1.0, 2.0, 3.0], "energy")
    with pytest.raises(ValueError, match="std of the ensemble-mean energy"):
        reference_statistics([0.1, 0.2], [1.0, 1.0], "energy")
    with pytest.raises(ValueError, match="not finite"):
        reference_statistics([0.1, np.nan], [1.0, 2.0], "energy")
    with pytest.raises(ValueError, match=">= 2 test frames"):
        reference_statistics([0.1], [1.0], "energy")
    with pytest.raises(ValidationError, match="u_std"):
        ReferenceStatistics(key="energy", u_mean=0, u_std=0, e_mean=0, e_std=1, n_frames=3)
    with pytest.raises(ValidationError, match="e_mean"):
        ReferenceStatistics(key="energy", u_mean=0, u_std=1, e_mean=np.inf, e_std=1, n_frames=3)
    with pytest.raises(ValueError, match="std must be > 0"):
        uncertainty_probability(0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match="std must be > 0"):
        energy_probability(0.1, 0.1, -1.0)


def test_settings():
    assert SelectionSettings().key == "force_max"
    assert SelectionSettings(uncertainty="energy", relative=True).key == "energy_relative"
    with pytest.raises(ValidationError, match="decay_at"):
        SelectionSettings(knee=2.0, decay_at=1.5)
    with pytest.raises(ValidationError):
        SelectionSettings(uncertainty="stress")


# -- sigma^A ---------------------------------------------------------------------------------
def random_fc(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(3 * n, 3 * n))
    return a @ a.T / (3 * n)  # symmetric positive definite


def test_sigma_a_zero_for_harmonic_forces():
    rng = np.random.default_rng(1)
    fc = random_fc(8, 2)
    u = rng.normal(scale=0.1, size=(8, 3))
    f2 = harmonic_forces(u, fc)
    np.testing.assert_allclose(f2.ravel(), -fc @ u.ravel())
    assert anharmonicity_score(f2, u, fc) == pytest.approx(0.0, abs=1e-14)
    # F = 2 F2 -> |F - F2| / |F| = 1/2 exactly
    assert anharmonicity_score(2 * f2, u, fc) == pytest.approx(0.5, rel=1e-12)


def test_sigma_a_sqrt2_for_orthogonal_forces():
    rng = np.random.default_rng(3)
    fc = random_fc(6, 4)
    u = rng.normal(scale=0.1, size=(6, 3))
    f2 = harmonic_forces(u, fc).ravel()
    f = rng.normal(size=f2.size)
    f -= f @ f2 / (f2 @ f2) * f2  # orthogonal to F2
    f *= np.linalg.norm(f2) / np.linalg.norm(f)  # same length
    # |F - F2|^2 = |F|^2 + |F2|^2 = 2 |F|^2
    assert anharmonicity_score(f.reshape(6, 3), u, fc) == pytest.approx(np.sqrt(2), rel=1e-12)


def test_trajectory_sigma_a_averages_separately():
    rng = np.random.default_rng(5)
    fc = random_fc(4, 6)
    u = rng.normal(scale=0.1, size=(2, 4, 3))
    f2 = harmonic_forces(u, fc)
    forces = np.stack([2 * f2[0], 3 * f2[1]])
    num = np.sum(f2[0] ** 2) + 4 * np.sum(f2[1] ** 2)  # (F - F2) = F2 and 2 F2
    den = 4 * np.sum(f2[0] ** 2) + 9 * np.sum(f2[1] ** 2)
    assert trajectory_anharmonicity(forces, u, fc) == pytest.approx(np.sqrt(num / den))
    per_frame = [anharmonicity_score(forces[i], u[i], fc) for i in range(2)]
    assert per_frame == pytest.approx([0.5, 2 / 3])
    assert trajectory_anharmonicity(list(forces), list(u), fc) == pytest.approx(np.sqrt(num / den))


def test_two_atom_spring():
    k, d = 2.0, 0.1  # eV/Å^2, Å
    fc = np.zeros((6, 6))
    fc[0, 0] = fc[3, 3] = k
    fc[0, 3] = fc[3, 0] = -k
    u = np.array([[d, 0, 0], [-d, 0, 0]])  # spring stretched by 2d
    assert harmonic_energy(u, fc) == pytest.approx(0.5 * k * (2 * d) ** 2)  # 0.04 eV
    np.testing.assert_allclose(harmonic_forces(u, fc), [[-0.4, 0, 0], [0.4, 0, 0]])
    # batched frames
    np.testing.assert_allclose(harmonic_energy(np.stack([u, 2 * u]), fc), [0.04, 0.16])


def test_minimum_image_displacements():
    cell = np.diag([6.0, 6.0, 6.0])
    ref = np.array([[0.1, 3.0, 5.95], [3.0, 3.0, 3.0]])
    pos = np.array([[5.9, 3.1, 0.05], [3.2, 2.9, 3.0]])
    u = minimum_image_displacements(pos, ref, cell)
    np.testing.assert_allclose(u, [[-0.2, 0.1, 0.1], [0.2, -0.1, 0.0]], atol=1e-12)
    # a skewed cell: displacement by a lattice vector plus a small step
    cell2 = np.array([[5.0, 0, 0], [2.5, 4.33, 0], [0, 0, 6.0]])
    step = np.array([0.05, -0.03, 0.02])
    u2 = minimum_image_displacements(ref + cell2[1] + step, ref, cell2)
    np.testing.assert_allclose(u2, [step, step], atol=1e-12)
    np.testing.assert_allclose(
        minimum_image_displacements(pos, ref, cell, pbc=(False, False, False)), pos - ref
    )


def test_sigma_a_shape_errors():
    fc = random_fc(2, 0)
    with pytest.raises(ValueError, match=r"\(6, 6\)"):
        harmonic_forces(np.zeros((3, 3)), fc)
    with pytest.raises(ValueError, match="equal shapes"):
        anharmonicity_score(np.ones((3, 3)), np.zeros((2, 3)), fc)
    with pytest.raises(ValueError, match="undefined"):
        anharmonicity_score(np.zeros((2, 3)), np.zeros((2, 3)), fc)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        minimum_image_displacements(np.zeros((2, 2)), np.zeros((2, 2)), np.eye(3))
