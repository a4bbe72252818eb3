"""Exploration settings and documents: what an MLIP-MD run is told and what it reports.

The engine is :mod:`active_mlip.makers.walkers`; the job is
:class:`active_mlip.makers.exploration.ExplorationMaker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame
from active_mlip.makers.selection import (
    ReferenceStatistics,
)


@dataclass(frozen=True)
class WalkerSpec:
    """What one walker explores: from where, against which statistics, at what T.

    Parameters
    ----------
    start
        Start configuration (its ``info['velocities']`` may be reused, see
        :attr:`ExplorationSettings.reuse_velocities`).
    reference
        Test-set statistics of the uncertainty the selection monitors.
    temperature
        Target temperature (K), > 0.
    n_new
        Quota of accepted frames, >= 1.
    seed
        Seeds the initial velocities, the thermostat noise and the acceptance draws.
    """

    start: Frame
    reference: ReferenceStatistics
    temperature: float
    n_new: int
    seed: int


#: Keys of :attr:`ExplorationDocument.log` (one entry per scored frame).
LOG_KEYS = (
    "step",
    "time_fs",
    "energy",
    "energy_per_atom",
    "u",
    "u_energy",
    "u_force_mean",
    "u_force_max",
    "p_u",
    "p_e",
    "p",
    "accepted",
    "temperature_K",
)


class ExplorationSettings(Document):
    """How the exploration MD runs and when it counts as blown up."""

    # A misspelt key would silently keep the default; every float must be finite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    ensemble: Literal["nvt", "npt"] = Field(
        "nvt",
        description="'nvt': Langevin (the paper). 'npt': the isothermal-isobaric ensemble by "
        "ASE's isotropic MTK integrator with Nosé-Hoover chains (makers/npt.py; for thermal "
        "expansion); P_E then compares the enthalpy E + PV.",
    )
    timestep_fs: float = Field(2.0, gt=0, le=10, description="MD time step (fs), in (0, 10].")
    friction: float = Field(
        0.02, gt=0, description="Langevin friction in ASE units (1/ASE time), as in the paper."
    )
    loginterval: int = Field(10, ge=1, description="Score a frame every this many steps.")
    budget_ps: float = Field(
        4.0,
        gt=0,
        description="MLIP-MD time budget of one exploration (ps), equilibration included: "
        "the walker runs until its quota is filled or this much MD was run.",
    )
    equilibration_ps: float = Field(
        0.0,
        ge=0,
        description="Thermalisation (ps): frames are scored only after it (the first steps "
        "of a trajectory started from the ground state or from a previous ensemble's MD are "
        "not distributed like the thermal ensemble at T).",
    )
    thermal_window_ps: float = Field(
        0.0,
        ge=0,
        description="> 0: after equilibration, the ensemble's own MD over this window (ps) "
        "sets Ū, σ_U, Ē, σ_E of P_U and P_E at this temperature (see "
        "active_mlip.makers.selection.thermal_reference); its frames are scored once it closes. "
        "0: the test set's statistics at this temperature are used.",
    )
    pressure_gpa: float = Field(0.0, description="Target pressure for 'npt' (GPa).")
    taut_fs: float = Field(
        100.0, gt=0, description="Thermostat time constant of 'npt' (fs; ~100 time steps)."
    )
    taup_fs: float = Field(
        400.0,
        gt=0,
        description="Barostat time constant of 'npt' (fs): about 100 time steps decorrelates "
        "the volume fastest without widening its distribution (measured, tests/makers/"
        "test_npt.py); ASE's suggested 1000 steps samples it ~10x more slowly.",
    )
    reuse_velocities: bool = Field(
        True,
        description="Start from info['velocities'] of the start frame when it was made at "
        "the same temperature (continuing a previous exploration); otherwise draw them.",
    )
    min_distance_fraction: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Blow-up when two atoms come closer than this fraction of the sum of "
        "their covalent radii.",
    )
    max_energy_drift_per_atom: float = Field(
        1.0,
        gt=0,
        description="Blow-up when the ensemble-mean energy per atom moves further than this "
        "(eV/atom) from the start's, up or down.",
    )
    max_force: float = Field(
        50.0, gt=0, description="Blow-up when any mean force component exceeds this (eV/Å)."
    )
    progress_every: int = Field(
        50, ge=1, description="Log a progress line every this many scored frames."
    )
    sample_every: int = Field(
        0,
        ge=0,
        description="Also keep every this-many-th scored frame in ``samples``, with the "
        "ensemble's energy and forces (screening diagnostics); 0 keeps none.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_max_steps(cls, data: Any) -> Any:
        # Before budget_ps, the budget was a step count; old files and callers still work.
        if isinstance(data, dict) and "max_steps" in data:
            data = dict(data)
            steps = data.pop("max_steps")  # wins over budget_ps: it is the override
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise ValueError(f"max_steps must be an integer >= 1, got {steps!r}")
            data["budget_ps"] = steps * float(data.get("timestep_fs", 2.0)) / 1000.0
        return data

    @field_validator("timestep_fs")
    @classmethod
    def _sane_timestep(cls, v: float) -> float:
        if not np.isfinite(v):
            raise ValueError(f"timestep_fs must be finite, got {v}")
        return v

    @model_validator(mode="after")
    def _phases_fit_the_budget(self) -> ExplorationSettings:
        before = self.equilibration_ps + self.thermal_window_ps
        if before >= self.budget_ps:
            raise ValueError(
                f"equilibration_ps ({self.equilibration_ps:g}) + thermal_window_ps "
                f"({self.thermal_window_ps:g}) = {before:g} ps must be shorter than the MD "
                f"budget budget_ps ({self.budget_ps:g} ps): nothing would be scored"
            )
        if self.thermal_window_ps > 0 and self.window_steps < 2 * self.loginterval:
            raise ValueError(
                f"thermal_window_ps ({self.thermal_window_ps:g} ps) holds fewer than 2 frames "
                f"logged every {self.loginterval} steps of {self.timestep_fs:g} fs"
            )
        return self

    def steps(self, ps: float) -> int:
        """Number of MD steps in ``ps`` picoseconds."""
        return int(round(ps * 1000.0 / self.timestep_fs))

    @property
    def max_steps(self) -> int:
        """Step budget of one exploration (from ``budget_ps``)."""
        return max(1, self.steps(self.budget_ps))

    @property
    def equilibration_steps(self) -> int:
        """Steps before any frame is scored or enters the thermal window."""
        return self.steps(self.equilibration_ps)

    @property
    def window_steps(self) -> int:
        """Steps of the thermal window (0: P_E against the test set)."""
        return self.steps(self.thermal_window_ps)


class ExplorationDocument(Document):
    """Outcome of one exploration run."""

    temperature: float
    n_new: int = Field(description="Requested number of new frames (the quota).")
    seed: int
    n_steps: int = Field(description="MD steps taken (including a blown-up one).")
    n_scored: int
    n_accepted: int = Field(description="Frames returned in ``frames``.")
    n_candidates: int = Field(
        0, description="Frames whose Bernoulli draw accepted them (>= n_accepted in 'period')."
    )
    stopped_by: Literal["quota", "budget", "blowup"]
    blowup: dict[str, Any] | None = Field(None, description="{step, time_fs, reason} or None.")
    uncertainty_key: str
    frames: list[Frame] = Field(
        default_factory=list, description="Accepted frames (unlabelled) with provenance info."
    )
    log: dict[str, list] = Field(default_factory=dict, description="Per scored frame.")
    samples: list[Frame] = Field(
        default_factory=list,
        description="Every ``sample_every``-th scored frame, accepted or not; info holds the "
        "ensemble's energy_mlip, forces_mlip and uncertainties (for checks by the reference).",
    )
    last_frame: Frame = Field(description="Last sane configuration, velocities in info.")
    md_ps: float = Field(0.0, description="MLIP-MD time run (ps), equilibration included.")
    equilibration_steps: int = Field(0, description="Steps run before scoring could start.")
    acceptance_reference: ReferenceStatistics | None = Field(
        None,
        description="The statistics this walker's frames were scored against: Ū, σ_U of the "
        "test set at this temperature and Ē, σ_E of the thermal window (or the test set).",
    )
    energy_reference_source: Literal["thermal-md", "test-set"] = "test-set"
    n_precursors: int = Field(
        0,
        description="Frames taken from just before a blow-up (the ensemble's last sane "
        "configurations, highest U first) to fill the quota: where the model goes wrong.",
    )
    n_force_evaluations: int = Field(0, description="Ensemble evaluations (graph builds).")
    n_forward_passes: int = Field(0, description="Member forward passes (M per evaluation).")
    wall_seconds: float = 0.0
    cache_key: str = ""
    reused: bool = Field(False, description="Taken from the result cache, not recomputed.")


class ExplorationBatchDocument(Document):
    """Outcome of an exploration job: one document per walker (:meth:`ExplorationMaker.make`)."""

    explorations: list[ExplorationDocument] = Field(
        description="One document per walker, in input order (their frames and logs go to "
        "the data store like a single exploration's)."
    )
    batched: bool = Field(
        True,
        description="False when the walkers ran one after the other ('npt') or alone.",
    )
    n_force_evaluations: int = Field(0, description="Ensemble evaluations of the whole batch.")
    n_forward_passes: int = Field(0, description="Member forward passes of the whole batch.")
    wall_seconds: float = 0.0
    cache_key: str = ""
    reused: bool = Field(False, description="Taken from the result cache, not recomputed.")
