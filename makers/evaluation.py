"""Test-set evaluation: the ensemble's errors and the statistics the next selection uses.

Every iteration the current ensemble is evaluated on the fixed test set (never trained on):
MAE/RMSE of energies (meV/atom) and of force components (meV/Å), the MAE of σ^A when the
supercell force constants are known, and the mean/std of the monitored uncertainty and of
the ensemble-mean energy (:class:`~active_mlip.makers.selection.ReferenceStatistics`) that the
acceptance probabilities of the next exploration are measured against. The test set goes
through the ensemble in batches (M forward passes per batch, not per frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from jobflow import Maker, job
from pydantic import Field

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.makers.sampling import ForceConstantsDocument
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument
from active_mlip.makers.selection import (
    ReferenceStatistics,
    SelectionSettings,
    anharmonicity_score,
    minimum_image_displacements,
    reference_statistics,
    split_by_temperature,
)

if TYPE_CHECKING:
    from active_mlip.makers.ensemble import EnsembleCalculator


class ForceConstantsLike(Protocol):
    """What evaluation needs of a ``active_mlip.makers.sampling.ForceConstantsDocument``."""

    reference: Frame

    def fc_array(self) -> np.ndarray: ...


class EvaluationDocument(Document):
    """The ensemble's errors on the test set and the reference statistics for selection."""

    n_frames: int
    n_members: int
    mae_energy_meV_per_atom: float = Field(description="MAE of the energy per atom (meV/atom).")
    rmse_energy_meV_per_atom: float = Field(description="RMSE of the energy per atom (meV/atom).")
    mae_forces_meV_per_A: float = Field(description="MAE of force components (meV/Å).")
    rmse_forces_meV_per_A: float = Field(description="RMSE of force components (meV/Å).")
    mae_sigma_a: float | None = Field(
        None, description="MAE of per-frame σ^A, predicted vs reference (None without fc)."
    )
    reference: ReferenceStatistics = Field(description="Statistics over the whole test set.")
    reference_by_temperature: dict[str, ReferenceStatistics] = Field(
        default_factory=dict,
        description="The same over the test frames of each temperature (K, as str; frames "
        "carry info['temperature']); a walker at T is judged against its own temperature's "
        "statistics, never a pool of several (pooling 600 K frames would switch P_E off at "
        "300 K). Temperatures with fewer than 2 test frames are absent.",
    )
    predictions: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Per-frame lists: structure_hash, n_atoms, energy_ref/pred_per_atom (eV), "
        "force_rmse (meV/Å), force_max_error (largest per-atom |ΔF|, eV/Å), u_<key> for every "
        "uncertainty key, sigma_a_ref/pred.",
    )


def _validate_test_frames(test_frames: Sequence[Frame]) -> None:
    if len(test_frames) < 2:
        raise ValueError(
            f"the test set needs at least 2 labelled frames for statistics, got {len(test_frames)}"
        )
    for i, frame in enumerate(test_frames):
        if not frame.labelled:
            raise ValueError(f"test frame {i} ({frame.structure_hash()[:12]}) has no label")


def evaluate_ensemble(
    calc: EnsembleCalculator,
    test_frames: Sequence[Frame],
    selection: SelectionSettings | None = None,
    force_constants: ForceConstantsLike | None = None,
    batch_size: int = 16,
) -> EvaluationDocument:
    """Evaluate an ensemble calculator on labelled test frames.

    Parameters
    ----------
    calc
        The ensemble (its reference structure, if any, sets the energy uncertainty).
    test_frames
        Labelled frames (energy and forces), at least two.
    selection
        Which uncertainty the reference statistics are for (default: force_max).
    force_constants
        Anything with ``.fc_array()`` ((3N, 3N), eV/Å²) and ``.reference`` (the ground-state
        Frame R0), e.g. a ``active_mlip.makers.sampling.ForceConstantsDocument``; enables σ^A.
    batch_size
        Frames per batched evaluation.

    Raises
    ------
    ValueError
        Too few or unlabelled frames, unknown elements, frames that do not match the force
        constants' supercell, or degenerate statistics.
    """
    selection = selection or SelectionSettings()
    test_frames = list(test_frames)
    _validate_test_frames(test_frames)
    fc = ref_pos = None
    if force_constants is not None:
        fc = np.asarray(force_constants.fc_array(), dtype=float)
        reference = force_constants.reference
        ref_pos = np.asarray(reference.positions, dtype=float)
        for i, frame in enumerate(test_frames):
            if frame.numbers != reference.numbers:
                raise ValueError(
                    f"test frame {i} does not have the atoms of the force constants' supercell "
                    f"({frame.n_atoms} vs {reference.n_atoms} atoms, or another order)"
                )
        if fc.shape != (3 * len(ref_pos), 3 * len(ref_pos)):
            raise ValueError(f"force constants have shape {fc.shape} for {len(ref_pos)} atoms")

    atoms_list = [f.unlabelled().to_atoms() for f in test_frames]
    for atoms in atoms_list:
        calc.check_elements(atoms)  # before any forward pass
    results = calc.evaluate(atoms_list, batch_size=batch_size)

    pred: dict[str, list[Any]] = {
        "structure_hash": [],
        "n_atoms": [],
        "energy_ref_per_atom": [],
        "energy_pred_per_atom": [],
        "force_rmse": [],
        "force_max_error": [],
    }
    u_keys = list(results[0]["uncertainty"])
    for k in u_keys:
        pred[f"u_{k}"] = []
    if fc is not None:
        pred["sigma_a_ref"], pred["sigma_a_pred"] = [], []
    force_errors = []
    for frame, res in zip(test_frames, results, strict=True):
        n = frame.n_atoms
        f_ref = np.asarray(frame.forces, dtype=float)
        df = res["forces"] - f_ref
        force_errors.append(df.ravel())
        pred["structure_hash"].append(frame.structure_hash())
        pred["n_atoms"].append(n)
        pred["energy_ref_per_atom"].append(float(frame.energy) / n)
        pred["energy_pred_per_atom"].append(float(res["energy"]) / n)
        pred["force_rmse"].append(float(np.sqrt(np.mean(df**2))) * 1000.0)
        pred["force_max_error"].append(float(np.max(np.linalg.norm(df, axis=1))))
        for k in u_keys:
            pred[f"u_{k}"].append(float(res["uncertainty"][k]))
        if fc is not None:
            u = minimum_image_displacements(frame.positions, ref_pos, frame.cell, frame.pbc)
            pred["sigma_a_ref"].append(anharmonicity_score(f_ref, u, fc))
            pred["sigma_a_pred"].append(anharmonicity_score(res["forces"], u, fc))

    de = 1000.0 * (np.array(pred["energy_pred_per_atom"]) - np.array(pred["energy_ref_per_atom"]))
    df_all = 1000.0 * np.concatenate(force_errors)
    mae_sigma_a = None
    if fc is not None:
        mae_sigma_a = float(
            np.mean(np.abs(np.array(pred["sigma_a_pred"]) - np.array(pred["sigma_a_ref"])))
        )
    energies = [r["energy"] for r in results]
    stats = reference_statistics(pred[f"u_{selection.key}"], energies, selection.key)
    groups = split_by_temperature(
        {"u": pred[f"u_{selection.key}"], "e": energies},
        [f.info.get("temperature") for f in test_frames],
    )
    by_t = {
        key: reference_statistics(g["u"], g["e"], selection.key)
        for key, g in groups.items()
        if key != "*" and len(g["u"]) >= 2
    }
    return EvaluationDocument(
        n_frames=len(test_frames),
        n_members=calc.size,
        mae_energy_meV_per_atom=float(np.mean(np.abs(de))),
        rmse_energy_meV_per_atom=float(np.sqrt(np.mean(de**2))),
        mae_forces_meV_per_A=float(np.mean(np.abs(df_all))),
        rmse_forces_meV_per_A=float(np.sqrt(np.mean(df_all**2))),
        mae_sigma_a=mae_sigma_a,
        reference=stats,
        reference_by_temperature=by_t,
        predictions=pred,
    )


@dataclass
class TestEvaluationMaker(Maker):
    """Evaluate the ensemble on the fixed test set (errors + reference statistics).

    Parameters
    ----------
    name
        Job name.
    selection
        Selection settings; fixes which uncertainty the reference statistics describe.
    batch_size
        Test frames per batched forward pass.
    device
        ``"auto"`` (GPU when visible), ``"cpu"`` or ``"cuda"``.
    """

    __test__ = False  # not a pytest test class despite its name

    name: str = "evaluate"
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    batch_size: int = 16
    device: str = "auto"

    @job(data=DATA_FIELDS)
    def make(
        self,
        ensemble: EnsembleDocument,
        test_frames: list[Frame],
        force_constants: Any | None = None,
    ) -> EvaluationDocument:
        """Evaluate ``ensemble`` on ``test_frames`` (σ^A when ``force_constants`` is given).

        ``force_constants`` is a ``sampling.ForceConstantsDocument`` (or anything with
        ``fc_array()`` and ``reference``).
        """
        from active_mlip.makers.ensemble import (
            EnsembleCalculator,  # torch loads only where the ensemble runs
        )

        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        test_frames = [Frame.model_validate(f) for f in test_frames]
        if isinstance(force_constants, dict):  # a serialised document
            force_constants = ForceConstantsDocument.model_validate(force_constants)
        _validate_test_frames(test_frames)  # before loading models
        calc = EnsembleCalculator.from_document(
            EnsembleDocument.model_validate(ensemble), device=self.device, compute_stress=False
        )
        return evaluate_ensemble(
            calc, test_frames, self.selection, force_constants, batch_size=self.batch_size
        )
