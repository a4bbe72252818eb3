"""Settings of an active-learning run: one pydantic object per concern.

``ActiveLearningSettings`` gathers the per-stage settings (labeller, training,
exploration, selection) with the loop's own (:class:`LoopSettings`);
:meth:`ActiveLearningSettings.from_preset` builds one of the named presets of
:mod:`active_mlip.workflows.presets` (``tiny``, ``quick``, ``paper``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from active_mlip.core.documents import Document
from active_mlip.core.hashing import content_hash
from active_mlip.makers.diagnostics import DiagnosticsSettings
from active_mlip.makers.exploration import ExplorationSettings
from active_mlip.makers.labelling import CHGNetLabeller, Labeller
from active_mlip.makers.relax import RelaxationSettings
from active_mlip.makers.selection import SelectionSettings
from active_mlip.makers.training import TrainingSettings
from active_mlip.stores.budget import LabelBudget
from active_mlip.workflows.presets import PRESETS
from active_mlip.workflows.routing import RoutingTable

PresetName = Literal["tiny", "quick", "paper"]


class LoopSettings(Document):
    """The loop itself: initial data, test set, quota per iteration and stopping."""

    # inf/nan temperatures, tolerances or E0s would start a run that cannot succeed.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperatures: list[float] = Field([300.0], description="MD/sampling temperatures (K).")
    supercell: tuple[int, int, int] | None = Field(
        None, description="Supercell of the conventional cell; None = the material's default."
    )
    initial: Literal["harmonic", "trajectory"] = Field(
        "harmonic", description="Initial data: harmonic stochastic sampling or an aiMD file."
    )
    trajectory: str | None = Field(None, description="aiMD trajectory (extxyz/ASE traj).")
    trajectory_split: Literal["shuffle", "time"] = Field(
        "shuffle",
        description="How an aiMD trajectory is split: 'time' trains on its first n_initial "
        "frames and tests on its last n_test (the paper's situation: an MLIP trained on early "
        "aiMD meets a later event); 'shuffle' draws both at random.",
    )
    restart_error_meV_per_atom: float | None = Field(
        50.0,
        gt=0,
        description="A walker whose labelled frames were off the ensemble's energy by more "
        "than this (meV/atom) sat in a false basin: it restarts from R0 in the next "
        "iteration instead of continuing its trajectory. None: always continue.",
    )
    relax: bool = Field(
        True,
        description="Relax R0's atomic positions with the labeller before anything else "
        "(force constants, sampling, σ^A and energy referencing assume a minimum); the "
        "cell only with relaxation.relax_cell.",
    )
    n_initial: int = Field(20, ge=2, description="Initial training frames (all temperatures).")
    n_test: int = Field(20, ge=2, description="Fixed test-set size, drawn once.")
    n_new: int = Field(10, ge=1, description="Frames selected per iteration (all temperatures).")
    max_iterations: int = Field(4, ge=1, description="Ensembles trained at most.")
    max_labels: int | None = Field(None, ge=1, description="Reference labels used at most.")
    shared_budget: LabelBudget | None = Field(
        None,
        description="A campaign-wide label budget drawn on by every material's iterations "
        "(initial data and screening checks are charged to it too).",
    )
    converge_window: int = Field(
        3,
        ge=2,
        description="Converged when, over this many iterations, the test force MAE and σ_U "
        "(the spread of the uncertainty over the test set) have both plateaued:",
    )
    force_mae_rtol: float = Field(
        0.05, gt=0, description="... (max − min)/max of the test force MAE within this ..."
    )
    uncertainty_rtol: float = Field(
        0.10, gt=0, description="... and (max − min)/max of σ_U within this."
    )
    e0s: dict[str, float] | Literal["isolated"] = Field(
        "isolated",
        description="Reference energy per element (eV), or 'isolated' to compute them with "
        "the labeller: a lone atom per element (DFT labellers: spin-polarised, Γ point, "
        "in a large box, one job each).",
    )
    seed: int = Field(
        0,
        description="Seeds the loop's random choices (sampling, splits, MD, selection); "
        "the members' initial weights follow training.seed.",
    )
    batch_walkers: bool = Field(
        True,
        description="Explore all temperatures in one job, evaluating the walkers as one "
        "batch per MD step (False: one job per temperature, e.g. one GPU each).",
    )

    @field_validator("temperatures")
    @classmethod
    def _positive_temperatures(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("temperatures must name at least one temperature")
        bad = [t for t in v if not t > 0]
        if bad:
            raise ValueError(f"temperatures must be > 0 K, got {bad}")
        keys = [f"{float(t):g}" for t in v]
        dupes = sorted({k for k in keys if keys.count(k) > 1}, key=float)
        if dupes:
            raise ValueError(
                f"temperatures lists {', '.join(dupes)} K more than once; each temperature "
                "has its own walker and statistics"
            )
        return v

    @field_validator("supercell")
    @classmethod
    def _positive_supercell(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"supercell must be 3 positive integers, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _trajectory_given(self) -> LoopSettings:
        if self.initial == "trajectory" and not self.trajectory:
            raise ValueError("initial='trajectory' needs loop.trajectory (an extxyz/traj path)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _retired_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "acceptance_threshold" in data:
            raise ValueError(
                "loop.acceptance_threshold is retired: convergence is a plateau of the test "
                "force MAE and σ_U over loop.converge_window iterations (loop.force_mae_rtol, "
                "loop.uncertainty_rtol); an exploration that accepts nothing stops the loop "
                "with its own reason"
            )
        return data


class ActiveLearningSettings(Document):
    """Everything an active-learning run of one material depends on."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "custom"
    loop: LoopSettings = Field(default_factory=LoopSettings)
    labeller: Labeller = Field(default_factory=CHGNetLabeller)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    exploration: ExplorationSettings = Field(default_factory=ExplorationSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    relaxation: RelaxationSettings = Field(
        default_factory=RelaxationSettings,
        description="How R0 is relaxed with the labeller (when loop.relax).",
    )
    screening: DiagnosticsSettings = Field(
        default_factory=DiagnosticsSettings,
        description="Screening diagnostics after the first ensemble (off unless enabled).",
    )
    routing: RoutingTable = Field(default_factory=RoutingTable)

    def fingerprint(self) -> str:
        """Hash of every setting that changes results (not the preset's name)."""
        # Routing changes where jobs run, not what they compute.
        return content_hash(self.model_dump(mode="json", exclude={"preset", "routing"}))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ActiveLearningSettings:
        """Build a preset, with top-level sections replaced or updated by ``overrides``.

        ``overrides`` maps a section name (``loop``, ``training``, ...) to a dict of
        fields to change, e.g. ``from_preset("tiny", loop={"temperatures": [200]})``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        data = cls.model_validate(PRESETS[name]).model_dump()
        for section, values in overrides.items():
            if section not in data:
                raise ValueError(f"unknown settings section {section!r}")
            same_kind = not isinstance(values, dict) or values.get("kind") in (
                None,
                (data[section] or {}).get("kind") if isinstance(data[section], dict) else None,
            )
            if isinstance(values, dict) and isinstance(data[section], dict) and same_kind:
                data[section] = {**data[section], **values}
            else:  # another labeller kind: its fields replace the preset's
                data[section] = values
        return cls.model_validate(data)
