"""Output documents shared by several stages.

Large fields (``frames``, ``model_file``, ``log``) are routed to the JobStore's
``data`` store by the jobs that produce them (``@job(data=DATA_FIELDS)``); the job
document keeps counts, metrics and hashes.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from active_mlip.core.blobs import Blob
from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame

#: Output keys that jobs route to the ``data`` store.
DATA_FIELDS = ["frames", "model_file", "log", "predictions", "force_constants", "samples"]


class LabellerIdentity(Document):
    """Who produced a label, with which settings."""

    name: str = Field(description="e.g. 'chgnet', 'ase:EMT', 'cp2k'.")
    version: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    settings_hash: str = Field(description="content_hash of name, version and settings.")
    is_dft: bool = Field(False, description="False for stand-ins such as universal potentials.")


class LabelFailure(Document):
    """A single point that did not produce a label."""

    index: int = Field(description="Position of the frame in the requested batch.")
    structure_hash: str
    reason: str


class LabelledBatch(Document):
    """Output of the labelling stage."""

    labeller: LabellerIdentity
    frames: list[Frame] = Field(description="Labelled frames, in request order.")
    failures: list[LabelFailure] = Field(default_factory=list)
    n_requested: int
    n_labelled: int
    n_failed: int
    n_reused: int = Field(0, description="Labels taken from the cache, not recomputed.")
    wall_seconds: float = 0.0


class MemberDocument(Document):
    """One trained ensemble member."""

    index: int = Field(description="Member index m = subset * n_seed + seed_index.")
    subset: int
    seed: int
    model_file: Blob | None = Field(
        None, description="The trained model; None only for a failed member."
    )
    n_train: int
    n_valid: int
    train_hashes: list[str] = Field(default_factory=list, description="Structure hashes.")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="e.g. valid_rmse_e_meV_per_atom, valid_rmse_f_meV_per_A, epochs.",
    )
    warm_started: bool = False
    cache_key: str = ""
    reused: bool = False
    wall_seconds: float = 0.0
    retried_with_seed: int | None = Field(
        None, description="Seed of the retry after the first training attempt failed."
    )
    failed: bool = Field(False, description="Training failed twice (e.g. diverged).")
    failure: str | None = Field(None, description="Why, when ``failed``.")


class EnsembleDocument(Document):
    """Output of the ensemble-training stage: M = n_sub * n_seed members."""

    members: list[MemberDocument]
    n_sub: int
    n_seed: int
    elements: list[str]
    e0s: dict[str, float] = Field(description="Reference energy per element (eV).")
    r_max: float
    settings: dict[str, Any] = Field(default_factory=dict)
    reference_frame: Frame | None = Field(
        None, description="Ground-state supercell; each member's energy is referenced to it."
    )
    dropped_members: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Members whose training failed and that the ensemble goes on without: "
        "{index, reason} each.",
    )

    @property
    def size(self) -> int:
        return len(self.members)
