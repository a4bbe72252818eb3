"""The ensemble-training stage: M = n_sub x n_seed MACE models on a partitioned pool.

The training pool is split into ``n_sub`` disjoint subsets (a partition, not a
bootstrap); each subset keeps its own validation frames and is trained ``n_seed``
times with different seeds. Every member is its own jobflow job, so a workflow
manager (FireWorks) can run them side by side on GPU nodes; a gather job collects
them into an :class:`~active_mlip.makers.schemas.EnsembleDocument`.

MACE runs in a process of its own (``mace.cli.run_train``, forked warm by
:mod:`active_mlip.makers.mace_runner`) so that its global state (default dtype, logging handlers,
thread settings) never leaks into the worker. Trained
members are cached by content (training data, labels, hyperparameters, seed, E0s and
the parent model), so an interrupted run resumes without retraining.

Over 500 lines on purpose: one stage and its checks (settings and their validation,
the partition into subsets, MACE's arguments and metrics, the member job with its
retry, the gather); its parts change together when MACE's interface does.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols
from ase.io import write
from jobflow import Flow, JobConfig, Maker, job
from pydantic import ConfigDict, Field, field_validator, model_validator

from active_mlip.core import cpus
from active_mlip.core.blobs import Blob
from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.core.hashing import content_hash
from active_mlip.makers import mace_runner
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument, MemberDocument
from active_mlip.stores.cache import ResultCache

logger = logging.getLogger(__name__)

#: Keys under which labels are written to the extxyz files MACE reads; distinct from
#: ASE's calculator keys so ASE never swallows them into a SinglePointCalculator.
_ENERGY_KEY = "REF_energy"
_FORCES_KEY = "REF_forces"
_STRESS_KEY = "REF_stress"

#: Hyperparameters that decide the network's architecture; warm starting from a parent
#: trained with different values would silently keep the parent's architecture.
_ARCHITECTURE_KEYS = (
    "model",
    "r_max",
    "num_channels",
    "max_L",
    "correlation",
    "num_interactions",
    "num_radial_basis",
    "radial_mlp",
    "default_dtype",
)

#: Settings that do not change the trained model (where and how fast it runs).
_NON_MODEL_KEYS = {"device", "num_threads", "n_sub", "n_seed"}


class TrainingSettings(Document):
    """How the ensemble is trained: its shape, the MACE hyperparameters, where it runs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # -- ensemble ------------------------------------------------------------------------
    n_sub: int = Field(2, description="Number of disjoint training subsets.")
    n_seed: int = Field(1, description="Seeds trained per subset.")
    valid_fraction: float = Field(0.2, description="Validation share of each subset, in (0, 1).")
    warm_start: bool = Field(
        True, description="Fine-tune from the previous ensemble's member with the same index."
    )
    seed: int = Field(0, description="Master seed; member seeds are derived from it.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' picks cuda when available on the worker."
    )
    num_threads: int | None = Field(
        None,
        description="CPU threads per member; None: OMP_NUM_THREADS if set, else the CPUs "
        "this process may use (affinity, cgroup quota, SLURM_CPUS_PER_TASK).",
    )
    # -- MACE architecture ---------------------------------------------------------------
    model: Literal["ScaleShiftMACE", "MACE"] = Field(
        "ScaleShiftMACE",
        description="ScaleShiftMACE starts from the pool's mean energy per atom above the "
        "E0s (cohesive energies are eV/atom), which few epochs could not learn.",
    )
    r_max: float = Field(5.0, description="Cutoff radius (Å).")
    num_channels: int = 32
    max_L: int = Field(0, description="Max L of the equivariant messages (0, 1 or 2).")
    correlation: int = Field(3, description="Body order - 1 of the product basis.")
    num_interactions: int = 2
    num_radial_basis: int = 8
    radial_mlp: list[int] = Field(default_factory=lambda: [64, 64, 64])
    default_dtype: Literal["float32", "float64"] = "float32"
    # -- optimisation --------------------------------------------------------------------
    max_num_epochs: int = 50
    warm_start_epochs: int | None = Field(
        None, description="Epochs when fine-tuning from a parent; None: max_num_epochs."
    )
    patience: int | None = Field(None, description="Early-stopping patience (epochs).")
    batch_size: int = 5
    lr: float = 0.01
    warm_start_lr: float | None = Field(None, description="Learning rate when fine-tuning.")
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    ema: bool = Field(False, description="Exponential moving average of the weights.")
    ema_decay: float = 0.99
    extra_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Further mace run_train options, e.g. {'scheduler_patience': 20}.",
    )

    @field_validator("valid_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not (0.0 < v < 1.0) or not math.isfinite(v):
            raise ValueError(f"valid_fraction must lie strictly between 0 and 1, got {v}")
        return v

    @field_validator(
        "n_sub",
        "n_seed",
        "num_channels",
        "num_interactions",
        "num_radial_basis",
        "correlation",
        "batch_size",
        "max_num_epochs",
        "warm_start_epochs",
        "patience",
        "num_threads",
    )
    @classmethod
    def _at_least_one(cls, v: int | None, info: Any) -> int | None:
        if v is not None and v < 1:  # None: optional counts left to MACE's default
            raise ValueError(f"{info.field_name} must be >= 1, got {v}")
        return v

    @field_validator("r_max", "lr", "warm_start_lr")
    @classmethod
    def _positive_float(cls, v: float | None, info: Any) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{info.field_name} must be a positive number, got {v}")
        return v

    @field_validator("energy_weight", "forces_weight")
    @classmethod
    def _weight(cls, v: float, info: Any) -> float:
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v}")
        return v

    @field_validator("ema_decay")
    @classmethod
    def _decay(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"ema_decay must lie strictly between 0 and 1, got {v}")
        return v

    @field_validator("max_L")
    @classmethod
    def _max_l(cls, v: int) -> int:
        if v not in (0, 1, 2, 3):
            raise ValueError(f"max_L must be 0, 1, 2 or 3, got {v}")
        return v

    @model_validator(mode="after")
    def _ensemble_size(self) -> TrainingSettings:
        m = self.n_sub * self.n_seed
        if m < 2:
            raise ValueError(
                f"an ensemble needs at least 2 members (n_sub * n_seed = {self.n_sub} * "
                f"{self.n_seed} = {m}): with one member the uncertainty is undefined"
            )
        return self

    # -- derived -------------------------------------------------------------------------
    @property
    def n_members(self) -> int:
        """M = n_sub * n_seed."""
        return self.n_sub * self.n_seed

    def model_hyperparameters(self) -> dict[str, Any]:
        """The settings that determine a trained model (hashed into member cache keys)."""
        return self.model_dump(exclude=_NON_MODEL_KEYS)

    def architecture(self) -> dict[str, Any]:
        """The settings that fix the network's shape (a warm start needs them equal)."""
        return {k: getattr(self, k) for k in _ARCHITECTURE_KEYS}

    def member_seed(self, subset: int, seed_index: int) -> int:
        """Seed of member (subset, seed_index), derived deterministically from ``seed``."""
        return int(content_hash(["member-seed", self.seed, subset, seed_index])[:8], 16) % (2**31)

    def resolved_device(self) -> str:
        """'cpu' or 'cuda'; 'auto' becomes 'cuda' when torch sees a GPU here."""
        if self.device != "auto":
            return self.device
        # torch loads only where a model trains or runs
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------
# subsets and validation split
# ------------------------------------------------------------------------------------
def _valid_target(n: int, valid_fraction: float) -> int:
    """Validation frames wanted in a subset of ``n`` frames (>= 1 once n >= 2)."""
    if n < 2:
        return 0
    return min(n - 1, max(1, round(valid_fraction * n)))


def assign_subsets(
    frames: list[Frame], n_sub: int, seed: int = 0, valid_fraction: float = 0.2
) -> list[Frame]:
    """Spread frames over ``n_sub`` disjoint subsets and give each a train/valid role.

    Frames already carrying ``info["subset"]`` (and ``info["valid"]``) keep them. The
    others are taken in pool order: each goes to one of the currently smallest subsets
    (ties broken by a generator seeded with ``seed`` and the frame's position), and is a
    validation frame when its subset has fewer than ``max(1, round(valid_fraction * n))``
    of them. A frame's assignment depends only on the frames before it, so appending
    frames to the pool never moves an existing one.

    Parameters
    ----------
    frames
        The training pool, in the order it grew.
    n_sub
        Number of subsets (>= 1).
    seed
        Seed of the tie-breaking.
    valid_fraction
        Share of validation frames per subset, in (0, 1).

    Returns
    -------
    list[Frame]
        Copies with ``info["subset"]`` (int) and ``info["valid"]`` (bool) set.
    """
    if n_sub < 1:
        raise ValueError(f"n_sub must be >= 1, got {n_sub}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must lie strictly between 0 and 1, got {valid_fraction}")
    counts = [0] * n_sub
    n_valid = [0] * n_sub
    out: list[Frame] = []
    for i, frame in enumerate(frames):
        subset = frame.info.get("subset")
        if subset is None:
            smallest = min(counts)
            candidates = [s for s in range(n_sub) if counts[s] == smallest]
            rng = np.random.default_rng([abs(int(seed)), i])
            subset = int(candidates[int(rng.integers(len(candidates)))])
        else:
            subset = int(subset)
            if not 0 <= subset < n_sub:
                raise ValueError(
                    f"frame {i} carries info['subset']={subset}, outside 0..{n_sub - 1} "
                    f"for n_sub={n_sub}"
                )
        counts[subset] += 1
        valid = frame.info.get("valid")
        if valid is None:
            valid = n_valid[subset] < _valid_target(counts[subset], valid_fraction)
        valid = bool(valid)
        n_valid[subset] += int(valid)
        out.append(frame.with_info(subset=subset, valid=valid))
    return out


def split_subset(
    frames: list[Frame], subset: int, n_sub: int, seed: int = 0, valid_fraction: float = 0.2
) -> tuple[list[Frame], list[Frame]]:
    """Training and validation frames of one subset (after :func:`assign_subsets`)."""
    assigned = assign_subsets(frames, n_sub, seed, valid_fraction)
    mine = [f for f in assigned if f.info["subset"] == subset]
    return [f for f in mine if not f.info["valid"]], [f for f in mine if f.info["valid"]]


# ------------------------------------------------------------------------------------
# validation of inputs
# ------------------------------------------------------------------------------------
def _check_e0s(e0s: dict[str, float]) -> None:
    if not isinstance(e0s, dict) or not e0s:
        raise ValueError(f"e0s must be a non-empty dict of element -> eV, got {e0s!r}")
    for symbol, value in e0s.items():
        if symbol not in _ATOMIC_NUMBERS or symbol == "X":
            raise ValueError(f"e0s has an unknown element symbol {symbol!r}")
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"e0s[{symbol!r}] must be a finite number (eV), got {value!r}")


def _check_pool(frames: list[Frame], e0s: dict[str, float], settings: TrainingSettings) -> None:
    """Reject a pool MACE cannot train on, naming what is wrong, before any work."""
    if not frames:
        raise ValueError("the training pool is empty")
    for i, f in enumerate(frames):
        if not f.labelled:
            raise ValueError(f"training frame {i} has no energy/forces label")
        missing = {chemical_symbols[z] for z in f.numbers} - set(e0s)
        if missing:
            raise ValueError(
                f"training frame {i} contains {sorted(missing)} without a reference energy "
                f"in e0s (given for {sorted(e0s)})"
            )
    assigned = assign_subsets(frames, settings.n_sub, settings.seed, settings.valid_fraction)
    for s in range(settings.n_sub):
        n_tr = sum(1 for f in assigned if f.info["subset"] == s and not f.info["valid"])
        n_va = sum(1 for f in assigned if f.info["subset"] == s and f.info["valid"])
        if n_tr < 1 or n_va < 1:
            raise ValueError(
                f"subset {s} has {n_tr} training and {n_va} validation frames; each of the "
                f"n_sub={settings.n_sub} subsets needs at least one of each "
                f"(pool of {len(frames)} frames)"
            )


# ------------------------------------------------------------------------------------
# running MACE
# ------------------------------------------------------------------------------------
def _write_mace_xyz(frames: list[Frame], path: Path) -> None:
    """Write labels under explicit keys MACE reads via --energy_key/--forces_key."""

    images = []
    for f in frames:
        atoms = f.unlabelled().to_atoms()
        atoms.info = {_ENERGY_KEY: float(f.energy)}
        atoms.arrays[_FORCES_KEY] = np.asarray(f.forces, dtype=float)
        if f.stress is not None:
            atoms.info[_STRESS_KEY] = np.asarray(f.stress, dtype=float)
        images.append(atoms)
    write(path, images, format="extxyz")


def _labels_hash(frame: Frame) -> str:
    return content_hash([frame.energy, frame.forces, frame.stress])


def _mace_args(
    settings: TrainingSettings,
    workdir: Path,
    seed: int,
    device: str,
    e0s: dict[str, float],
    parent: Path | None,
    n_train: int,
) -> list[str]:
    warm = parent is not None
    zs = sorted(_ATOMIC_NUMBERS[s] for s in e0s)
    e0_by_z = {_ATOMIC_NUMBERS[s]: float(v) for s, v in e0s.items()}
    epochs = settings.warm_start_epochs if warm and settings.warm_start_epochs else None
    lr = settings.warm_start_lr if warm and settings.warm_start_lr else settings.lr
    args: dict[str, Any] = {
        "name": "member",
        "seed": seed,
        "work_dir": str(workdir),
        "train_file": str(workdir / "train.xyz"),
        "valid_file": str(workdir / "valid.xyz"),
        "energy_key": _ENERGY_KEY,
        "forces_key": _FORCES_KEY,
        "stress_key": _STRESS_KEY,
        "E0s": json.dumps({str(z): v for z, v in e0_by_z.items()}).replace('"', ""),
        # The same element table in every member, even when a subset lacks an element,
        # so that all members read the same one-hot node attributes.
        "atomic_numbers": "[" + ", ".join(str(z) for z in zs) + "]",
        "model": settings.model,
        "r_max": settings.r_max,
        "num_channels": settings.num_channels,
        "max_L": settings.max_L,
        "correlation": settings.correlation,
        "num_interactions": settings.num_interactions,
        "num_radial_basis": settings.num_radial_basis,
        "radial_MLP": "[" + ", ".join(str(w) for w in settings.radial_mlp) + "]",
        "max_num_epochs": epochs or settings.max_num_epochs,
        # MACE drops the last incomplete training batch: a subset smaller than the batch
        # size would give no batch at all.
        "batch_size": min(settings.batch_size, n_train),
        "valid_batch_size": settings.batch_size,
        "lr": lr,
        "energy_weight": settings.energy_weight,
        "forces_weight": settings.forces_weight,
        "default_dtype": settings.default_dtype,
        "device": device,
        "plot": False,
        "error_table": "PerAtomRMSE",
    }
    if settings.patience is not None:
        args["patience"] = settings.patience
    if settings.ema:
        args["ema_decay"] = settings.ema_decay
    args.update(settings.extra_args)
    cli: list[str] = []
    for key, value in args.items():
        cli += [f"--{key}", str(value)]
    if settings.ema:
        cli.append("--ema")
    if warm:
        cli += ["--foundation_model", str(parent), "--multiheads_finetuning", "False"]
    return cli


def _read_metrics(workdir: Path) -> dict[str, float]:
    """Validation errors of the saved (lowest validation loss) checkpoint."""
    files = sorted((workdir / "results").glob("*_train.txt"))
    if not files:
        return {}
    evals = []
    for line in files[0].read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("mode") == "eval":
            evals.append(row)
    epochs = [r for r in evals if r.get("epoch") is not None]
    if not epochs:
        return {}
    # MACE keeps the checkpoint with the lowest validation loss (first one on ties).
    best = min(epochs, key=lambda r: r["loss"])
    metrics = {
        "valid_loss": float(best["loss"]),
        "valid_rmse_e_meV_per_atom": 1e3 * float(best["rmse_e_per_atom"]),
        "valid_rmse_f_meV_per_A": 1e3 * float(best["rmse_f"]),
        "valid_mae_e_meV_per_atom": 1e3 * float(best["mae_e_per_atom"]),
        "valid_mae_f_meV_per_A": 1e3 * float(best["mae_f"]),
        "best_epoch": float(best["epoch"]),
        "epochs": float(len(epochs)),
    }
    initial = [r for r in evals if r.get("epoch") is None]
    if initial:
        metrics["initial_valid_loss"] = float(initial[0]["loss"])
        metrics["initial_valid_rmse_f_meV_per_A"] = 1e3 * float(initial[0]["rmse_f"])
    return metrics


def run_mace_training(
    train: list[Frame],
    valid: list[Frame],
    e0s: dict[str, float],
    settings: TrainingSettings,
    seed: int,
    workdir: Path,
    parent_model: Path | None = None,
    device: str | None = None,
) -> tuple[Path, dict[str, float]]:
    """Train one MACE model in a process of its own; return the model file and its metrics.

    Parameters
    ----------
    train, valid
        Labelled frames.
    e0s
        Reference energy per element symbol (eV).
    settings
        Hyperparameters.
    seed
        MACE's seed (weights init, batch order).
    workdir
        Empty directory for the inputs and MACE's outputs.
    parent_model
        A ``.model`` file to fine-tune from (warm start), or None (from scratch).
    device
        "cpu" or "cuda"; None resolves ``settings.device``.

    Raises
    ------
    RuntimeError
        With the tail of MACE's log when training fails.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_mace_xyz(train, workdir / "train.xyz")
    _write_mace_xyz(valid, workdir / "valid.xyz")
    device = device or settings.resolved_device()
    if device == "cuda":
        # torch loads only where a model trains or runs
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but torch sees no CUDA device here")
    args = _mace_args(settings, workdir, seed, device, e0s, parent_model, len(train))
    # the CPUs this process may use (affinity, cgroup quota, Slurm), not the node's cores
    threads = cpus.threads_per_process(settings.num_threads)
    log_path = workdir / "mace.log"
    returncode = mace_runner.run_train(args, workdir, log_path, threads)
    model_path = workdir / "member.model"
    if returncode != 0 or not model_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(
            f"MACE training failed (exit code {returncode}) in {workdir}; "
            f"last lines of its log:\n{tail}"
        )
    return model_path, _read_metrics(workdir)


def retry_seed(seed: int) -> int:
    """The seed a member is retrained with after its first attempt failed."""
    return int(content_hash(["member-retry-seed", int(seed)])[:8], 16) % (2**31)


def training_failure(
    model_path: Path,
    metrics: dict[str, float],
    frames: list[Frame],
    settings: TrainingSettings,
    device: str = "cpu",
) -> str | None:
    """Why a finished training run is unusable, or None when it is fine.

    MACE does not stop on a diverging loss: it finishes with NaN validation errors and
    a model that predicts NaN. Both are checked (the prediction on one frame costs
    little next to training).
    """
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        return f"training diverged: non-finite {', '.join(bad)}"
    if not frames:
        return None
    mace_runner.quiet_weights_only_warning()  # before the import: e3nn loads on import
    # MACE (and torch) load only in the process that evaluates or trains
    from mace.calculators import MACECalculator

    calc = MACECalculator(
        model_paths=str(model_path), device=device, default_dtype=settings.default_dtype
    )
    atoms = frames[0].to_atoms()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        return "the trained model predicts non-finite energies or forces"
    return None


# ------------------------------------------------------------------------------------
# jobs
# ------------------------------------------------------------------------------------
def _parent_member(
    previous: EnsembleDocument | None,
    settings: TrainingSettings,
    index: int,
    subset: int,
    elements: list[str] | None = None,
) -> tuple[MemberDocument | None, str]:
    """The previous iteration's member to warm start from, or None with the reason."""
    if not settings.warm_start:
        return None, "warm start disabled"
    if previous is None:
        return None, "no previous ensemble"
    by_index = {m.index: m for m in previous.members}
    if index not in by_index:
        dropped = {d.get("index") for d in previous.dropped_members}
        if index in dropped:
            return None, f"previous member {index} failed and was dropped"
        return None, f"previous ensemble has only {len(previous.members)} members"
    member = by_index[index]
    if member.subset != subset:
        return None, f"previous member {index} trained on subset {member.subset}, not {subset}"
    if elements is not None and list(previous.elements) != list(elements):
        return None, f"previous ensemble covers {previous.elements}, not {list(elements)}"
    prev_arch = {k: previous.settings.get(k) for k in _ARCHITECTURE_KEYS}
    if prev_arch != settings.architecture():
        return None, "previous ensemble has a different architecture"
    return member, "warm start"


@job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
def train_member(
    frames: list[Frame],
    e0s: dict[str, float],
    settings: TrainingSettings,
    subset: int,
    seed_index: int,
    previous: EnsembleDocument | None = None,
) -> MemberDocument:
    """Train (or fetch from the cache) ensemble member ``subset * n_seed + seed_index``.

    Parameters
    ----------
    frames
        The whole labelled training pool (the subset is selected here, because the
        pool may only exist once upstream jobs have run).
    e0s
        Reference energy per element (eV).
    settings
        Training settings.
    subset, seed_index
        Which member.
    previous
        The previous iteration's ensemble (warm start source), or None.

    Returns
    -------
    MemberDocument
        When training fails (MACE crashes, or its loss or predictions are non-finite)
        it is retried once with :func:`retry_seed`; if that fails too the document is
        marked ``failed`` with the reasons, has no model, and is not cached.
    """
    t0 = time.perf_counter()
    _check_e0s(e0s)
    _check_pool(frames, e0s, settings)
    index = subset * settings.n_seed + seed_index
    seed = settings.member_seed(subset, seed_index)
    train, valid = split_subset(
        frames, subset, settings.n_sub, settings.seed, settings.valid_fraction
    )
    parent, why = _parent_member(
        previous, settings, index, subset, sorted(e0s, key=lambda s: _ATOMIC_NUMBERS[s])
    )
    key = content_hash(
        {
            "kind": "mace-member",
            "mace": _pkg_version("mace-torch"),
            "train": [[f.structure_hash(), _labels_hash(f)] for f in train],
            "valid": [[f.structure_hash(), _labels_hash(f)] for f in valid],
            "hyperparameters": settings.model_hyperparameters(),
            "seed": seed,
            "e0s": {k: float(v) for k, v in sorted(e0s.items())},
            "parent": None if parent is None else parent.model_file.sha256,
        }
    )

    def train_now() -> MemberDocument:
        device = settings.resolved_device()
        with tempfile.TemporaryDirectory(prefix=f"mace-member{index}-") as tmp:
            workdir = Path(tmp)
            parent_path = None if parent is None else parent.model_file.write(workdir / "p.model")
            fitted, reasons = _fit_with_retry(
                train, valid, e0s, settings, seed, workdir, parent_path, device
            )
            model = None
            if fitted is not None:
                model = Blob.from_bytes(fitted[0].read_bytes(), f"member{index}.model")
        metrics = fitted[1] if fitted is not None else {}
        doc = MemberDocument(
            index=index,
            subset=subset,
            seed=seed,
            model_file=model,
            n_train=len(train),
            n_valid=len(valid),
            train_hashes=[f.structure_hash() for f in train],
            metrics=metrics,
            warm_started=parent is not None,
            cache_key=key,
            wall_seconds=time.perf_counter() - t0,
            retried_with_seed=retry_seed(seed) if reasons else None,
            failed=model is None,
            failure="; ".join(reasons) if model is None else None,
        )
        if model is not None:
            logger.info(
                "member %d (subset %d, seed %d, %s, %s): %d train / %d valid frames, "
                "%.0f epochs, valid RMSE E %.2f meV/atom F %.1f meV/Å, %.1f s",
                index,
                subset,
                seed,
                device,
                why if parent is not None else f"from scratch ({why})",
                len(train),
                len(valid),
                metrics.get("epochs", float("nan")),
                metrics.get("valid_rmse_e_meV_per_atom", float("nan")),
                metrics.get("valid_rmse_f_meV_per_A", float("nan")),
                doc.wall_seconds,
            )
        return doc

    def reused(hit: dict) -> MemberDocument:
        doc = MemberDocument(**{**hit, "reused": True, "wall_seconds": time.perf_counter() - t0})
        doc.model_file.to_bytes()  # verify before handing it on
        logger.info("member %d (subset %d, seed %d): reused from cache", index, subset, seed)
        return doc

    # A failed member is never cached: a rerun tries again.
    return ResultCache.from_current_job().get_or_compute(
        key,
        "mace-member",
        train_now,
        reused,
        lambda doc: None if doc.failed else doc.model_dump(exclude={"reused", "wall_seconds"}),
    )


def _fit_with_retry(
    train: list[Frame],
    valid: list[Frame],
    e0s: dict[str, float],
    settings: TrainingSettings,
    seed: int,
    workdir: Path,
    parent_path: Path | None,
    device: str,
) -> tuple[tuple[Path, dict[str, float]] | None, list[str]]:
    """Fit one member: ((model file, metrics) or None, reasons of failed attempts).

    A member that diverges (NaN loss) or crashes is retried once with a derived seed
    (:func:`retry_seed`); if that fails too, None: the ensemble goes on without it.
    """
    reasons: list[str] = []
    for attempt, attempt_seed in enumerate([seed, retry_seed(seed)]):
        run_dir = workdir / ("run" if attempt == 0 else f"retry{attempt}")
        try:
            model_path, metrics = run_mace_training(
                train, valid, e0s, settings, attempt_seed, run_dir, parent_path, device
            )
            reason = training_failure(model_path, metrics, valid or train, settings, device)
        except RuntimeError as exc:  # MACE crashed; configuration errors still raise
            reason = str(exc)[-800:]
        if reason is None:
            return (model_path, metrics), reasons
        reasons.append(f"seed {attempt_seed}: {reason}")
        logger.warning("training failed with seed %d: %s", attempt_seed, reason)
    return None, reasons


@job(data=DATA_FIELDS)
def gather_ensemble(
    members: list[MemberDocument],
    e0s: dict[str, float],
    settings: TrainingSettings,
    reference_frame: Frame | None = None,
) -> EnsembleDocument:
    """Collect the trained members into an :class:`EnsembleDocument`.

    Members whose training failed (twice) are dropped and recorded in
    ``dropped_members``; the ensemble goes on if at least 2 members remain.

    Raises
    ------
    ValueError
        If members are missing, or fewer than 2 trained successfully.
    """
    members = sorted(members, key=lambda m: m.index)
    if [m.index for m in members] != list(range(settings.n_members)):
        raise ValueError(
            f"expected members 0..{settings.n_members - 1}, got {[m.index for m in members]}"
        )
    dropped = [{"index": m.index, "reason": m.failure or "unknown"} for m in members if m.failed]
    members = [m for m in members if not m.failed]
    if len(members) < 2:
        raise ValueError(
            f"only {len(members)} of {settings.n_members} ensemble members trained; at least 2 "
            "are needed for an uncertainty. Failures: "
            + "; ".join(f"member {d['index']}: {d['reason']}" for d in dropped)
        )
    for d in dropped:
        logger.warning(
            "ensemble goes on with %d of %d members: member %d dropped (%s)",
            len(members),
            settings.n_members,
            d["index"],
            d["reason"],
        )
    elements = sorted(e0s, key=lambda s: _ATOMIC_NUMBERS[s])
    return EnsembleDocument(
        members=members,
        n_sub=settings.n_sub,
        n_seed=settings.n_seed,
        elements=elements,
        e0s={s: float(e0s[s]) for s in elements},
        r_max=settings.r_max,
        settings=settings.model_dump(),
        reference_frame=reference_frame,
        dropped_members=dropped,
    )


@dataclass
class EnsembleTrainingMaker(Maker):
    """Train M = n_sub x n_seed MACE members, one job each, and gather them.

    Parameters
    ----------
    name
        Flow name.
    settings
        Ensemble shape and hyperparameters.
    """

    name: str = "train ensemble"
    settings: TrainingSettings = field(default_factory=TrainingSettings)

    def make(
        self,
        frames: list[Frame],
        e0s: dict[str, float],
        previous: EnsembleDocument | None = None,
        reference_frame: Frame | None = None,
    ) -> Flow:
        """Build the flow: member jobs, then a gather job whose output is the ensemble.

        Parameters
        ----------
        frames
            Labelled training pool (or an OutputReference to it), in the order it grew.
        e0s
            Reference energy per element symbol (eV), e.g. isolated-atom energies.
        previous
            The previous iteration's ensemble: members are fine-tuned from it when
            ``settings.warm_start``.
        reference_frame
            Ground-state supercell, recorded in the ensemble document.

        Returns
        -------
        Flow
            Output: the :class:`EnsembleDocument`.
        """
        settings = TrainingSettings.model_validate(self.settings)
        if isinstance(e0s, dict):
            _check_e0s(e0s)
            if isinstance(frames, list) and all(isinstance(f, Frame) for f in frames):
                _check_pool(frames, e0s, settings)
        jobs = []
        for subset in range(settings.n_sub):
            for seed_index in range(settings.n_seed):
                member = train_member(frames, e0s, settings, subset, seed_index, previous)
                member.name = f"{self.name} member {subset * settings.n_seed + seed_index}"
                jobs.append(member)
        gather = gather_ensemble([j.output for j in jobs], e0s, settings, reference_frame)
        gather.name = f"{self.name} gather"
        # bookkeeping, not training: routed with the light jobs, not to a GPU node
        gather.metadata = {**(gather.metadata or {}), "kind": "glue"}
        return Flow([*jobs, gather], output=gather.output, name=self.name)
