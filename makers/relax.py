"""Relax the input structure to a minimum of the labeller's potential before the loop uses it.

The loop takes the input structure as R0, the ground state: force constants, harmonic
sampling, the anharmonicity score and the energy reference are all measured from it.
An experimental structure is not a minimum of a given potential (AgGaSe2 as built has
residual forces up to 0.24 eV/Å under CHGNet), and at a saddle point the force
constants have ω² < 0 along the softest directions, which harmonic sampling then
cannot sample. Relaxing R0 with the labeller removes both.

Only positions are relaxed by default: the lattice is given at the target temperature
(thermal expansion included), so the residual stress at T = 0 is expected and kept.
The space group is kept (``FixSymmetry``), so phonopy's symmetry reduction of the
displacements still applies to the relaxed R0.

Units: eV, Å, eV/Å; stresses in the documents in GPa (Voigt, ASE sign: positive =
tensile).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.geometry import find_mic
from ase.optimize import BFGS, FIRE
from ase.units import GPa
from jobflow import JobConfig, Maker, job
from pydantic import ConfigDict, Field

from active_mlip.core.documents import Document, as_model
from active_mlip.core.frames import Frame
from active_mlip.core.hashing import content_hash
from active_mlip.makers.labelling import (
    CACHE_KIND,
    CHGNetLabeller,
    Labeller,
    label_cache_key,
    labeller_from_dict,
    validate_frames,
)
from active_mlip.makers.schemas import DATA_FIELDS
from active_mlip.stores.cache import ResultCache

logger = logging.getLogger(__name__)

#: Cache entries written by this stage carry this ``kind``.
RELAX_CACHE_KIND = "relaxation"


class RelaxationSettings(Document):
    """How R0 is relaxed.

    Parameters
    ----------
    fmax
        Converged when every (symmetrised) atomic force is below this (eV/Å); with
        ``relax_cell`` also the cell's generalised force (stress x volume / N, eV).
    max_steps
        Optimizer steps at most; a structure that has not converged by then is an error.
    relax_cell
        Also relax the cell (``FrechetCellFilter``). Off by default: the lattice is
        given at temperature, and its T = 0 stress is expected.
    keep_symmetry
        Keep the space group found at ``symprec`` (``FixSymmetry``).
    symprec
        Symmetry tolerance (Å); phonopy's default in the force-constants stage.
    optimizer
        ``"BFGS"`` (fast near a minimum) or ``"FIRE"`` (robust far from one).
    """

    # A misspelt key would silently keep the default; every float must be finite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fmax: float = Field(0.005, gt=0, description="Force convergence (eV/Å).")
    max_steps: int = Field(500, ge=1, description="Optimizer steps at most.")
    relax_cell: bool = Field(False, description="Relax the cell too (FrechetCellFilter).")
    keep_symmetry: bool = Field(True, description="Keep the space group (FixSymmetry).")
    symprec: float = Field(1e-5, gt=0, description="Symmetry tolerance (Å).")
    optimizer: Literal["BFGS", "FIRE"] = "BFGS"


class RelaxationDocument(Document):
    """The relaxed R0 and what the relaxation changed."""

    frame: Frame = Field(description="Relaxed structure with its label (energy, forces, stress).")
    max_force_before: float = Field(description="Largest atomic force norm before (eV/Å).")
    max_force_after: float = Field(description="Largest atomic force norm after (eV/Å).")
    stress_before_gpa: list[float] | None = Field(
        None, description="Stress before (Voigt, GPa, tensile positive); None without stress."
    )
    stress_after_gpa: list[float] | None = Field(None, description="Stress after (Voigt, GPa).")
    energy_before: float = Field(description="Energy before (eV).")
    energy_after: float = Field(description="Energy after (eV).")
    max_displacement: float = Field(
        description="Largest atomic move (Å, minimum image in the final cell)."
    )
    n_steps: int = Field(description="Optimizer steps taken.")
    converged: bool = Field(description="Reached fmax (always True: otherwise it raises).")
    settings: RelaxationSettings
    labeller_hash: str = Field("", description="settings_hash of the labeller used.")
    reused: bool = Field(False, description="Taken from the result cache, not recomputed.")
    wall_seconds: float = 0.0


def _evaluate(atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, raw forces and Voigt stress (eV/Å^3, or None) ignoring any constraint."""
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(apply_constraint=False), dtype=float)
    try:
        stress = np.asarray(atoms.get_stress(voigt=True, apply_constraint=False), dtype=float)
    except PropertyNotImplementedError:
        stress = None
    return energy, forces, stress


def _max_force(forces: np.ndarray) -> float:
    return float(np.linalg.norm(forces, axis=1).max())


def _gpa(stress: np.ndarray | None) -> list[float] | None:
    return None if stress is None else (stress / GPa).tolist()


def relax_structure(
    frame: Frame, calculator: Calculator, settings: RelaxationSettings | None = None
) -> RelaxationDocument:
    """Relax a copy of ``frame`` with ``calculator``.

    Parameters
    ----------
    frame
        The structure (its labels, if any, are ignored).
    calculator
        ASE calculator of the labeller's potential.
    settings
        :class:`RelaxationSettings`; the defaults when ``None``.

    Returns
    -------
    RelaxationDocument
        The relaxed frame, labelled by ``calculator`` (``info["relaxed"] = True``; any
        ``info["labeller"]`` of the input is dropped), and the before/after numbers.

    Raises
    ------
    RuntimeError
        If the largest force is still above ``fmax`` after ``max_steps`` steps.
    ValueError
        If ``relax_cell`` is asked of a calculator that gives no stress.
    """

    settings = settings or RelaxationSettings()
    t0 = time.perf_counter()
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    atoms.calc = calculator
    r0 = atoms.get_positions()
    e0, f0, s0 = _evaluate(atoms)
    if settings.relax_cell and s0 is None:
        raise ValueError(
            f"relax_cell needs the stress, and {type(calculator).__name__} gives none; "
            "set relax_cell = false"
        )
    if settings.keep_symmetry:
        atoms.set_constraint(FixSymmetry(atoms, symprec=settings.symprec))
        if not settings.relax_cell:
            # FixSymmetry re-symmetrises the cell (~1e-15 Å changes); a fixed cell stays exact.
            atoms.set_cell(frame.cell, scale_atoms=False, apply_constraint=False)
    target = FrechetCellFilter(atoms) if settings.relax_cell else atoms
    opt = {"BFGS": BFGS, "FIRE": FIRE}[settings.optimizer](target, logfile=None)
    with warnings.catch_warnings():
        # CHGNet converts atoms to pymatgen and warns that FixSymmetry does not carry over.
        warnings.filterwarnings("ignore", message="Only FixAtoms and FixCartesian")
        # FrechetCellFilter's matrix logarithm reports errors of ~1e-12 it can live with.
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
        atoms.set_constraint()
        e1, f1, s1 = _evaluate(atoms)
    n_steps = int(opt.nsteps)
    if not converged:
        raise RuntimeError(
            f"relaxation did not converge to fmax = {settings.fmax:g} eV/Å in {n_steps} "
            f"{settings.optimizer} steps (max_steps = {settings.max_steps}): the largest "
            f"residual force is {_max_force(f1):.4g} eV/Å (it was {_max_force(f0):.4g}). "
            "Check the structure, or raise max_steps / fmax"
        )
    _, moved = find_mic(atoms.get_positions() - r0, atoms.cell, atoms.pbc)
    info = {k: v for k, v in frame.info.items() if k != "labeller"}
    relaxed = frame.model_copy(
        update={
            "positions": atoms.get_positions().tolist(),
            "cell": np.asarray(atoms.cell).tolist(),
            "energy": e1,
            "forces": f1.tolist(),
            "stress": None if s1 is None else s1.tolist(),
            "info": {**info, "relaxed": True},
        },
        deep=True,
    )
    return RelaxationDocument(
        frame=relaxed,
        max_force_before=_max_force(f0),
        max_force_after=_max_force(f1),
        stress_before_gpa=_gpa(s0),
        stress_after_gpa=_gpa(s1),
        energy_before=e0,
        energy_after=e1,
        max_displacement=float(moved.max()) if len(moved) else 0.0,
        n_steps=n_steps,
        converged=converged,
        settings=settings,
        wall_seconds=time.perf_counter() - t0,
    )


def check_can_relax(labeller: Any) -> None:
    """Raise ``ValueError`` unless ``labeller`` labels in-process (call at flow-build time).

    A DFT relaxation through atomate2 would be its own workflow; until it exists the
    user relaxes R0 with their DFT code and switches the loop's relaxation off.
    """
    labeller = labeller_from_dict(labeller)
    if not labeller.in_process:
        code = getattr(labeller, "code", "")
        raise ValueError(
            f"relaxing the structure with a DFT labeller ({labeller.kind}"
            f"{f', code {code}' if code else ''}) is not supported yet; relax the structure "
            "with your DFT code and set loop.relax = false"
        )


def relax_cache_key(frame: Frame, settings_hash: str, settings: RelaxationSettings) -> str:
    """Cache key of one relaxation: input structure, labeller settings and relax settings."""
    return content_hash(
        ["relax", frame.structure_hash(), settings_hash, settings.model_dump(mode="json")]
    )


@dataclass
class RelaxMaker(Maker):
    """Relax R0 with an in-process labeller's calculator (CHGNet, ASE calculators).

    Parameters
    ----------
    name
        Job name.
    labeller
        :class:`~active_mlip.makers.labelling.CHGNetLabeller` (default) or
        :class:`~active_mlip.makers.labelling.ASECalculatorLabeller`; DFT labellers are refused.
    settings
        :class:`RelaxationSettings`.
    """

    name: str = "relax"
    labeller: Labeller = field(default_factory=CHGNetLabeller)
    settings: RelaxationSettings = field(default_factory=RelaxationSettings)

    def __post_init__(self) -> None:
        self.labeller = labeller_from_dict(self.labeller)
        self.settings = as_model(self.settings, RelaxationSettings)

    @job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
    def make(self, frame: Frame) -> RelaxationDocument:
        """Relax ``frame``; a relaxation already in the result cache is not repeated.

        The relaxed frame's label is also written to the label cache, so labelling the
        relaxed R0 again (the undisplaced supercell of the force constants) is free.

        Raises
        ------
        ValueError
            For a DFT labeller (see :func:`check_can_relax`) or a frame the labeller
            cannot handle, before anything runs.
        RuntimeError
            If the relaxation does not converge.
        """
        check_can_relax(self.labeller)
        frame = as_model(frame, Frame)
        validate_frames([frame], self.labeller)
        settings_hash = self.labeller.identity().settings_hash
        cache = ResultCache.from_current_job()
        key = relax_cache_key(frame, settings_hash, self.settings)
        stamp = {**{k: v for k, v in frame.info.items() if k != "labeller"}, "relaxed": True}

        def relax_now() -> RelaxationDocument:
            doc = relax_structure(frame, self.labeller.get_calculator(), self.settings)
            doc.frame = doc.frame.with_info(labeller=settings_hash)
            doc.labeller_hash = settings_hash
            out = doc.frame
            # R0's label is a label like any other: the loop reuses it.
            cache.put(
                label_cache_key(out, settings_hash),
                CACHE_KIND,
                {
                    "structure_hash": out.structure_hash(),
                    "energy": out.energy,
                    "forces": out.forces,
                    "stress": out.stress,
                },
            )
            logger.info(
                "relaxed R0 in %d steps: max |F| %.3g -> %.3g eV/Å, E %.6f -> %.6f eV, "
                "largest move %.3g Å",
                doc.n_steps,
                doc.max_force_before,
                doc.max_force_after,
                doc.energy_before,
                doc.energy_after,
                doc.max_displacement,
            )
            return doc

        def reused(hit: dict) -> RelaxationDocument:
            doc = RelaxationDocument.model_validate(hit)
            # The cached frame carries the first request's info; this request's wins.
            relaxed = doc.frame.model_copy(
                update={"info": {**stamp, "labeller": settings_hash}}, deep=True
            )
            return doc.model_copy(update={"frame": relaxed, "reused": True})

        return cache.get_or_compute(
            key, RELAX_CACHE_KIND, relax_now, reused, lambda doc: doc.model_dump(mode="json")
        )
