"""Which explored frames to label: the paper's acceptance probabilities, and σ^A.

Acquisition (METHOD.md §4). With Ū, σ_U the mean and std of the monitored uncertainty over
the test set and Ē, σ_E those of the ensemble-mean energy:

- P_U = Φ((U − Ū − s·σ_U) / (√0.1 · g · σ_U)) (Φ the standard normal CDF; s = 2, g = 1), i.e.
  0.057, 0.5, 0.943 at Ū + 1.5, 2, 2.5 σ_U;
- P_E = 1 for z = (E − Ē)/σ_E ≤ knee, else decay_to^((z − knee)/(decay_at − knee)): frames far
  above the test set's typical energy are physically unlikely at that temperature;
- P = P_U · P_E, accepted by a Bernoulli draw from a seeded ``np.random.Generator``.

Anharmonicity score (Knoop et al., PRM 4, 083809 (2020)): u = R − R0 (minimum image),
F⁽²⁾ = −Φ·u, σ^A = sqrt(Σ(F − F⁽²⁾)² / ΣF²); over a trajectory numerator and denominator are
averaged separately. Harmonic energy E⁽²⁾ = ½ uᵀΦu.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator
from scipy.special import ndtr

from active_mlip.core.documents import Document

UncertaintyKind = Literal["energy", "force_mean", "force_max"]


class SelectionSettings(Document):
    """How explored frames are scored and accepted."""

    # A misspelt key would silently keep the default; inf/nan would make P_U, P_E meaningless.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    uncertainty: UncertaintyKind = Field("force_max", description="Monitored uncertainty U.")
    relative: bool = Field(False, description="Use U divided by |mean| (per atom for forces).")
    shift: float = Field(2.0, description="s: P_U = 0.5 at Ū + s·σ_U.")
    grad: float = Field(1.0, gt=0, description="g: width of the P_U step in units of σ_U.")
    knee: float = Field(1.0, description="P_E = 1 up to z = knee.")
    decay_at: float = Field(1.8, description="z at which P_E has fallen to decay_to.")
    decay_to: float = Field(0.2, gt=0, le=1, description="P_E at z = decay_at.")
    mode: Literal["probabilistic", "period"] = Field(
        "probabilistic",
        description="probabilistic: stop at the quota of accepted frames; period: run the "
        "step budget, then keep the accepted frames with the highest U.",
    )

    @model_validator(mode="after")
    def _check_decay(self) -> SelectionSettings:
        if not self.decay_at > self.knee:
            raise ValueError(f"decay_at ({self.decay_at}) must be larger than knee ({self.knee})")
        return self

    @property
    def key(self) -> str:
        """Key of the uncertainty dictionary, e.g. ``force_max`` or ``force_max_relative``."""
        return f"{self.uncertainty}_relative" if self.relative else self.uncertainty


class ReferenceStatistics(Document):
    """Test-set statistics the acceptance probabilities are measured against."""

    key: str = Field(description="Uncertainty key the U statistics belong to.")
    u_mean: float
    u_std: float = Field(description="Population std of U over the test set.")
    e_mean: float = Field(description="Mean ensemble-mean energy over the test set (eV).")
    e_std: float = Field(description="Population std of that energy (eV).")
    n_frames: int = Field(ge=2)

    @field_validator("u_mean", "u_std", "e_mean", "e_std")
    @classmethod
    def _finite(cls, v: float, info) -> float:
        if not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be finite, got {v}")
        if info.field_name.endswith("_std") and v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v


def _result(x: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(x) if scalar else x


def _check_stats(mean: float, std: float, what: str) -> None:
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ValueError(f"{what}: mean ({mean}) and std ({std}) must be finite")
    if std <= 0:
        raise ValueError(f"{what}: std must be > 0, got {std}")


def uncertainty_probability(
    u: float | np.ndarray, mean: float, std: float, shift: float = 2.0, grad: float = 1.0
) -> float | np.ndarray:
    """P_U = Φ((u − mean − shift·std) / (√0.1 · grad · std)).

    Equivalent to the paper's ½[1 + erf((u − mean − s·std) / (g·std·√0.2))].
    """
    _check_stats(mean, std, "uncertainty statistics")
    if grad <= 0:
        raise ValueError(f"grad must be > 0, got {grad}")
    arr = np.asarray(u, dtype=float)
    x = (arr - mean - shift * std) / (math.sqrt(0.1) * grad * std)
    return _result(ndtr(x), arr.ndim == 0)


def energy_probability(
    e: float | np.ndarray,
    mean: float,
    std: float,
    knee: float = 1.0,
    decay_at: float = 1.8,
    decay_to: float = 0.2,
) -> float | np.ndarray:
    """P_E: 1 for z = (e − mean)/std ≤ knee, decay_to^((z − knee)/(decay_at − knee)) above."""
    _check_stats(mean, std, "energy statistics")
    if not decay_at > knee:
        raise ValueError(f"decay_at ({decay_at}) must be larger than knee ({knee})")
    if not 0 < decay_to <= 1:
        raise ValueError(f"decay_to must be in (0, 1], got {decay_to}")
    arr = np.asarray(e, dtype=float)
    z = (arr - mean) / std
    exponent = np.maximum(z - knee, 0.0) / (decay_at - knee)
    p = np.where(z <= knee, 1.0, np.power(decay_to, exponent))
    return _result(p, arr.ndim == 0)


def acceptance_terms(
    u: float | np.ndarray,
    e: float | np.ndarray,
    stats: ReferenceStatistics,
    settings: SelectionSettings,
) -> tuple[float | np.ndarray, float | np.ndarray, float | np.ndarray]:
    """(P_U, P_E, P = P_U·P_E) of frames with uncertainty ``u`` and energy ``e`` (eV)."""
    if stats.key != settings.key:
        raise ValueError(
            f"reference statistics are for uncertainty {stats.key!r} but selection monitors "
            f"{settings.key!r}; re-evaluate the test set with the same selection settings"
        )
    p_u = uncertainty_probability(u, stats.u_mean, stats.u_std, settings.shift, settings.grad)
    p_e = energy_probability(
        e, stats.e_mean, stats.e_std, settings.knee, settings.decay_at, settings.decay_to
    )
    return p_u, p_e, p_u * p_e


def acceptance_probability(
    u: float | np.ndarray,
    e: float | np.ndarray,
    stats: ReferenceStatistics,
    settings: SelectionSettings,
) -> float | np.ndarray:
    """P = P_U · P_E (see :func:`acceptance_terms`)."""
    return acceptance_terms(u, e, stats, settings)[2]


def draw_acceptance(p: float | np.ndarray, rng: np.random.Generator) -> bool | np.ndarray:
    """Bernoulli draws with probabilities ``p`` (one uniform number per frame, in order)."""
    arr = np.asarray(p, dtype=float)
    if np.any(~np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"probabilities must lie in [0, 1], got {arr}")
    accepted = rng.random(arr.shape) < arr
    return bool(accepted) if arr.ndim == 0 else accepted


def select_period(u: Sequence[float] | np.ndarray, accepted: Sequence[bool] | np.ndarray, n: int):
    """Mode "period": indices of the (at most) ``n`` accepted frames with the highest U.

    Returns
    -------
    numpy.ndarray
        Frame indices in trajectory order; ties in U go to the earlier frame.
    """
    u_arr = np.asarray(u, dtype=float)
    acc = np.asarray(accepted, dtype=bool)
    if u_arr.ndim != 1 or acc.shape != u_arr.shape:
        raise ValueError(f"u {u_arr.shape} and accepted {acc.shape} must be 1-D of equal length")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    candidates = np.flatnonzero(acc)
    order = np.argsort(-u_arr[candidates], kind="stable")
    return np.sort(candidates[order[:n]])


def reference_statistics(
    u: Sequence[float] | np.ndarray, energies: Sequence[float] | np.ndarray, key: str
) -> ReferenceStatistics:
    """Mean and population std of U and of the ensemble-mean energy over the test set.

    Raises
    ------
    ValueError
        Naming the statistic when a std is not positive or a value is not finite (e.g. an
        ensemble of identical members has σ_U = 0 and P_U would divide by zero).
    """
    u_arr = np.asarray(u, dtype=float)
    e_arr = np.asarray(energies, dtype=float)
    if u_arr.ndim != 1 or e_arr.shape != u_arr.shape:
        raise ValueError(f"u {u_arr.shape} and energies {e_arr.shape} must be 1-D, equal length")
    if u_arr.size < 2:
        raise ValueError(f"reference statistics need >= 2 test frames, got {u_arr.size}")
    for name, arr in ((f"uncertainty {key!r}", u_arr), ("ensemble-mean energy", e_arr)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"the {name} is not finite on every test frame")
        std = float(arr.std())
        # round-off leaves ~1e-17 for identical values: compare with the mean's scale
        if not std > 1e-12 * abs(float(arr.mean())):
            raise ValueError(
                f"the std of the {name} over the {arr.size} test frames is {std}; it must be "
                "> 0 (identical members or identical test frames?)"
            )
    return ReferenceStatistics(
        key=key,
        u_mean=float(u_arr.mean()),
        u_std=float(u_arr.std()),
        e_mean=float(e_arr.mean()),
        e_std=float(e_arr.std()),
        n_frames=int(u_arr.size),
    )


def thermal_reference(
    key: str, u: Sequence[float] | np.ndarray, energies: Sequence[float] | np.ndarray
) -> ReferenceStatistics:
    """Acceptance statistics from the ensemble's own thermalised MD at one temperature.

    The paper measures Ū, σ_U, Ē, σ_E on its test set, which is aiMD at T: a sample of the
    thermal ensemble at T. A harmonic test set is no such sample for an anharmonic
    material (64-atom CuI at 300 K: every MD frame sits at z = 4-9 of its energies, so
    P_E vetoes them all), and its U describes harmonic displacements, not the walker's
    ensemble. The walker's own MD over a thermal window after equilibration, evaluated by
    the same ensemble, is that sample at no reference cost: frames are then accepted
    when their uncertainty stands out from the ensemble's typical uncertainty at T, and
    vetoed when their energy lies far above its thermal energies. The formulas of P_U and
    P_E are unchanged; only what they are measured against.

    Parameters
    ----------
    key
        The uncertainty key (e.g. ``force_max``).
    u, energies
        Uncertainty and ensemble-mean energy (eV; enthalpy in NPT) of the window's
        frames, >= 2 each.

    Raises
    ------
    ValueError
        Too few frames, a non-finite value, or no spread (a std would divide by zero).
    """
    return reference_statistics(u, energies, key)


def reference_at(
    reference: ReferenceStatistics,
    by_temperature: dict[str, ReferenceStatistics] | None,
    temperature: float,
) -> ReferenceStatistics:
    """The statistics a walker at ``temperature`` is judged against.

    Its own temperature's test frames when there are any (>= 2), else the whole test set
    (e.g. an aiMD test set at one temperature, or a temperature the test set lacks).
    """
    return (by_temperature or {}).get(f"{float(temperature):g}", reference)


def split_by_temperature(
    values: dict[str, Sequence[float]], temperatures: Sequence[float | None]
) -> dict[str, dict[str, np.ndarray]]:
    """Group per-frame arrays by the frames' temperature (K, as ``f"{T:g}"``).

    Frames without a temperature (e.g. an imported trajectory) are grouped under ``"*"``.
    """
    keys = ["*" if t is None else f"{float(t):g}" for t in temperatures]
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in dict.fromkeys(keys):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        out[key] = {name: np.asarray(v, dtype=float)[idx] for name, v in values.items()}
    return out


# -- anharmonicity ---------------------------------------------------------------------------
def minimum_image_displacements(
    positions: np.ndarray,
    reference_positions: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool] = (True, True, True),
) -> np.ndarray:
    """u = R − R0 wrapped to the nearest periodic image, shape (N, 3) (Å).

    Wraps fractional displacements to [−½, ½) along periodic directions, which is the minimum
    image for displacements shorter than half the smallest cell height (always true for
    thermal vibrations about R0).
    """
    pos = np.asarray(positions, dtype=float)
    ref = np.asarray(reference_positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3 or ref.shape != pos.shape:
        raise ValueError(
            f"positions {pos.shape} and reference_positions {ref.shape} must both be (N, 3)"
        )
    if cell.shape != (3, 3):
        raise ValueError(f"cell must be (3, 3), got {cell.shape}")
    d = pos - ref
    if not any(pbc):
        return d
    frac = np.linalg.solve(cell.T, d.T).T
    periodic = np.asarray(pbc, dtype=bool)
    frac[:, periodic] -= np.round(frac[:, periodic])
    return frac @ cell


def _check_fc(u: np.ndarray, fc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(u, dtype=float)
    fc = np.asarray(fc, dtype=float)
    if u.ndim not in (2, 3) or u.shape[-1] != 3:
        raise ValueError(f"u must have shape (N, 3) or (frames, N, 3), got {u.shape}")
    n3 = 3 * u.shape[-2]
    if fc.shape != (n3, n3):
        raise ValueError(
            f"force constants must have shape ({n3}, {n3}) for {n3 // 3} atoms, got {fc.shape}"
        )
    return u, fc


def harmonic_forces(u: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """F⁽²⁾ = −Φ·u for displacements (N, 3) or (frames, N, 3); Φ in eV/Å², shape (3N, 3N)."""
    u, fc = _check_fc(u, fc)
    flat = u.reshape(*u.shape[:-2], -1)
    return -(flat @ fc.T).reshape(u.shape)


def harmonic_energy(u: np.ndarray, fc: np.ndarray) -> float | np.ndarray:
    """E⁽²⁾ = ½ uᵀΦu (eV), per frame when ``u`` is (frames, N, 3)."""
    u, fc = _check_fc(u, fc)
    flat = u.reshape(*u.shape[:-2], -1)
    e = 0.5 * np.einsum("...i,ij,...j->...", flat, fc, flat)
    return _result(e, u.ndim == 2)


def _anharmonic_parts(forces: np.ndarray, u: np.ndarray, fc: np.ndarray):
    f = np.asarray(forces, dtype=float)
    u = np.asarray(u, dtype=float)
    if f.shape != u.shape:
        raise ValueError(f"forces {f.shape} and displacements {u.shape} must have equal shapes")
    diff = f - harmonic_forces(u, fc)
    return (diff**2).sum(axis=(-2, -1)), (f**2).sum(axis=(-2, -1))


def anharmonicity_score(forces: np.ndarray, u: np.ndarray, fc: np.ndarray) -> float:
    """σ^A of one frame: sqrt(Σ(F − F⁽²⁾)² / ΣF²), with F (N, 3) in eV/Å.

    Raises
    ------
    ValueError
        On mismatched shapes, or when all forces vanish (σ^A is undefined).
    """
    if np.ndim(forces) != 2:
        raise ValueError(f"forces must have shape (N, 3), got {np.shape(forces)}")
    num, den = _anharmonic_parts(forces, u, fc)
    if den <= 0:
        raise ValueError("all forces are zero: sigma^A is undefined")
    return float(np.sqrt(num / den))


def trajectory_anharmonicity(
    forces_list: Sequence[np.ndarray] | np.ndarray,
    u_list: Sequence[np.ndarray] | np.ndarray,
    fc: np.ndarray,
) -> float:
    """σ^A of a trajectory: sqrt(⟨Σ(F − F⁽²⁾)²⟩ / ⟨ΣF²⟩), averages taken over frames separately."""
    f = np.asarray(forces_list, dtype=float)
    u = np.asarray(u_list, dtype=float)
    if f.ndim != 3 or f.shape[0] == 0:
        raise ValueError(f"forces_list must have shape (frames, N, 3), got {f.shape}")
    num, den = _anharmonic_parts(f, u, fc)
    if den.mean() <= 0:
        raise ValueError("all forces are zero: sigma^A is undefined")
    return float(np.sqrt(num.mean() / den.mean()))
