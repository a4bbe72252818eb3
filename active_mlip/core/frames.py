"""Frames: one atomic configuration with optional labels, as a serialisable document.

Frames are what flows between the stages: the labeller fills ``energy``, ``forces``
and ``stress``; the loop records provenance (iteration, subset, temperature, the
uncertainty it was selected with) in ``info``. Units are eV, eV/Å and eV/Å^3
(stress in ASE's Voigt order xx, yy, zz, yz, xz, xy; positive = tensile).

Integrity: a frame's serialised form carries ``sha256``, the exact content hash of all
its fields; a frame read back (from a job store, the result cache or JSON) whose
numbers no longer match it raises :class:`~active_mlip.core.blobs.CorruptArtifactError`
instead of being used. Every document holding frames (datasets, explorations, label
batches) gets the check without doing anything. Frames stored without a hash (older
stores) load unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from pydantic import Field, computed_field, model_validator

from active_mlip.core.blobs import CorruptArtifactError, verify_listed
from active_mlip.core.documents import Document
from active_mlip.core.hashing import frame_content_hash, structure_hash


class Frame(Document):
    """One atomic configuration, labelled or not."""

    numbers: list[int]
    positions: list[list[float]] = Field(description="Cartesian positions (Å), shape (N, 3).")
    cell: list[list[float]] = Field(description="Lattice vectors as rows (Å), shape (3, 3).")
    pbc: list[bool] = Field(default_factory=lambda: [True, True, True])
    energy: float | None = Field(None, description="Total energy (eV).")
    forces: list[list[float]] | None = Field(None, description="Forces (eV/Å), shape (N, 3).")
    stress: list[float] | None = Field(None, description="Stress, Voigt order (eV/Å^3).")
    info: dict[str, Any] = Field(default_factory=dict, description="Provenance.")

    # -- integrity -------------------------------------------------------------------------
    @computed_field(repr=False, description="SHA-256 of every field (written, then checked).")
    @property
    def sha256(self) -> str:
        """Exact content hash of the frame, recomputed from its fields on every dump."""
        return frame_content_hash(
            self.numbers,
            self.positions,
            self.cell,
            self.pbc,
            self.energy,
            self.forces,
            self.stress,
            self.info,
        )

    @model_validator(mode="wrap")
    @classmethod
    def _verify_sha256(cls, data: Any, handler: Any) -> Any:
        """Check a stored frame against the hash it was stored with."""
        expected = data.get("sha256") if isinstance(data, dict) else None
        if expected is None:
            return handler(data)
        frame = handler({k: v for k, v in data.items() if k != "sha256"})
        actual = frame.sha256
        if actual != expected:
            where = ", ".join(
                f"{k}={frame.info[k]}" for k in ("source", "iteration", "step") if k in frame.info
            )
            raise CorruptArtifactError(
                f"stored frame ({Atoms(numbers=frame.numbers).get_chemical_formula()}"
                f"{', ' + where if where else ''}) is corrupted: it was stored with sha256 "
                f"{expected}, its content hashes to {actual}; it will not be used. Re-run the "
                "job that produced it."
            )
        return frame

    # -- conversions -------------------------------------------------------------------
    @classmethod
    def from_atoms(cls, atoms: Atoms, include_results: bool = True, **info: Any) -> Frame:
        """Build a frame from ASE atoms, copying calculator results if present."""
        energy = forces = stress = None
        if include_results and atoms.calc is not None:
            res = atoms.calc.results
            if "energy" in res:
                energy = float(res["energy"])
            if "forces" in res:
                forces = np.asarray(res["forces"], dtype=float).tolist()
            if "stress" in res:
                s = np.asarray(res["stress"], dtype=float)
                stress = (s if s.shape == (6,) else _full_to_voigt(s)).tolist()
        merged = {k: _plain(v) for k, v in atoms.info.items() if _plain(v) is not _DROP}
        merged.update(info)
        return cls(
            numbers=atoms.numbers.tolist(),
            positions=atoms.positions.tolist(),
            cell=np.asarray(atoms.cell).tolist(),
            pbc=[bool(p) for p in atoms.pbc],
            energy=energy,
            forces=forces,
            stress=stress,
            info=merged,
        )

    def to_atoms(self) -> Atoms:
        """Return ASE atoms; labels are attached as a single-point calculator."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        if self.labelled:
            kwargs: dict[str, Any] = {"energy": self.energy, "forces": np.array(self.forces)}
            if self.stress is not None:
                kwargs["stress"] = np.array(self.stress)
            atoms.calc = SinglePointCalculator(atoms, **kwargs)
        return atoms

    # -- properties ----------------------------------------------------------------------
    @property
    def labelled(self) -> bool:
        """Whether energy and forces are present."""
        return self.energy is not None and self.forces is not None

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def structure_hash(self) -> str:
        """Hash of numbers, positions, cell and pbc (not labels or info)."""
        return structure_hash(self.numbers, self.positions, self.cell, self.pbc)

    def unlabelled(self, **info: Any) -> Frame:
        """Return a copy without labels, with ``info`` updated."""
        return self.model_copy(
            update={"energy": None, "forces": None, "stress": None, "info": {**self.info, **info}},
            deep=True,
        )

    def with_info(self, **info: Any) -> Frame:
        """Return a copy with ``info`` updated."""
        return self.model_copy(update={"info": {**self.info, **info}}, deep=True)


def _full_to_voigt(s: np.ndarray) -> np.ndarray:
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


_DROP = object()


def _plain(v: Any) -> Any:
    """A JSON-friendly copy of an ``atoms.info`` value, or ``_DROP`` for what cannot be."""
    if v is None or isinstance(v, str | bool | int | float):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return v.tolist()
    if isinstance(v, list | tuple):
        out = [_plain(x) for x in v]
        return _DROP if any(x is _DROP for x in out) else out
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        out = {k: _plain(x) for k, x in v.items()}
        return _DROP if any(x is _DROP for x in out.values()) else out
    return _DROP


def frames_from_atoms(images: Iterable[Atoms], **info: Any) -> list[Frame]:
    """Convert ASE images (e.g. an aiMD trajectory) to frames."""
    return [Frame.from_atoms(a, **info) for a in images]


def write_extxyz(frames: Sequence[Frame], path: str | Path) -> Path:
    """Write frames with their labels and ``info`` to an extended-XYZ file."""
    # ase.io (its many format modules) loads only when a file is read or written
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, [f.to_atoms() for f in frames], format="extxyz")
    return path


def read_frames(path: str | Path, index: str = ":") -> list[Frame]:
    """Read frames (with labels if present) from any file ASE reads.

    Raises
    ------
    ValueError
        Naming the file when it is missing, unreadable or holds no structure.
    CorruptArtifactError
        When a ``SHA256SUMS`` beside the file lists another hash for it.
    """
    return frames_from_atoms(read_images(path, index))


def read_images(path: str | Path, index: str = ":", what: str = "structure") -> list[Atoms]:
    """Read ASE images, with a ``ValueError`` naming the file when that is not possible.

    ``what`` names the kind of file in the messages ("structure", "trajectory"). A file
    listed in a ``SHA256SUMS`` in its directory or the one above (an exported run) is
    checked against it first (:func:`active_mlip.core.blobs.verify_listed`).
    """
    # ase.io (its many format modules) loads only when a file is read or written
    from ase.io import read

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} file {str(path)!r} is a directory; give a file")
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    verify_listed(path)
    try:
        images = read(path, index=index)
    except Exception as exc:  # ASE raises many types for bad files, some without a message
        why = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError):
            why = f"unknown element {exc.args[0]!r}"
        raise ValueError(
            f"could not read a {what} from {str(path)!r} ({why}); give an extxyz, ASE .traj "
            "or another file ASE reads"
        ) from exc
    if isinstance(images, Atoms):
        images = [images]
    if not images:
        raise ValueError(f"{str(path)!r} holds no {what}")
    return list(images)
