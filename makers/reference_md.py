"""Reference MD for the screening: the trajectory an MLIP's MD is judged against.

The paper decides whether an MLIP misses or invents events by comparing it with ab initio
MD at the same temperature, in time order: where the reference has an event the MLIP
lacks, the MLIP's force error and uncertainty spike along the reference trajectory; where
the MLIP's own MD has events the reference never shows, they are invented. This module
runs that reference: a short Langevin MD driven by the labeller itself (cheap with the
CHGNet stand-in; with a DFT code it is aiMD and belongs on a CPU node), started from the
same frame with the same seed as the screening's MLIP-MD, so both begin identically.

It also counts *off-site events* (:func:`off_site_events`): an atom farther than a
distance from its ground-state site for at least ``min_frames`` logged frames in a row,
the definition used to compare event rates of two trajectories.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from jobflow import JobConfig, Maker, job
from pydantic import Field

from active_mlip.core.documents import Document, as_model
from active_mlip.core.frames import Frame
from active_mlip.core.hashing import content_hash
from active_mlip.makers.labelling import (
    CHGNetLabeller,
    Labeller,
    labeller_from_dict,
    make_labelled_frame,
)
from active_mlip.makers.schemas import DATA_FIELDS
from active_mlip.makers.selection import minimum_image_displacements, trajectory_anharmonicity
from active_mlip.stores.cache import ResultCache

logger = logging.getLogger(__name__)


class ReferenceMDSettings(Document):
    """MD length and thermostat of the reference segment (the screening's MLIP-MD's)."""

    n_steps: int = Field(600, ge=1, description="MD steps (each one reference calculation).")
    timestep_fs: float = Field(4.0, gt=0)
    loginterval: int = Field(10, ge=1, description="Keep every this many steps.")
    friction: float = Field(0.02, gt=0, description="Langevin friction (1/ASE time).")


class ReferenceMDDocument(Document):
    """A reference-labeller MD segment: labelled frames in time order."""

    temperature: float = Field(description="K.")
    seed: int
    timestep_fs: float
    n_steps: int = Field(description="MD steps run (each one reference calculation).")
    frames: list[Frame] = Field(
        default_factory=list,
        description="Every ``loginterval``-th step, labelled by the reference; info holds "
        "``step`` and ``time_fs``.",
    )
    labeller_hash: str = ""
    wall_seconds: float = 0.0
    cache_key: str = ""
    reused: bool = False


def off_site_events(
    positions: list[np.ndarray] | np.ndarray,
    reference: Frame,
    distance: float,
    min_frames: int = 2,
) -> list[tuple[int, int, int]]:
    """Off-site events along a trajectory: (atom, first frame, frames) of each.

    An event is a run of at least ``min_frames`` consecutive frames in which one atom is
    farther than ``distance`` (Å, minimum image) from its site in ``reference``.

    Parameters
    ----------
    positions
        (n_frames, N, 3) positions in time order, in the reference's cell.
    reference
        The ground-state structure R0 (its sites, cell and periodicity).
    distance
        Å.
    min_frames
        Shortest run that counts (shorter excursions are thermal flickers).
    """
    r0 = np.asarray(reference.positions, dtype=float)
    cell = np.asarray(reference.cell, dtype=float)
    off = np.array(
        [
            np.linalg.norm(
                minimum_image_displacements(np.asarray(p, dtype=float), r0, cell, reference.pbc),
                axis=1,
            )
            > distance
            for p in positions
        ]
    )
    events = []
    if off.size == 0:
        return events
    for atom in range(off.shape[1]):
        run = 0
        for i, is_off in enumerate([*off[:, atom], False]):
            if is_off:
                run += 1
                continue
            if run >= min_frames:
                events.append((atom, i - run, run))
            run = 0
    return sorted(events, key=lambda e: (e[1], e[0]))


def nearest_neighbour_distance(frame: Frame) -> float:
    """Shortest interatomic distance of ``frame`` (Å, periodic images included)."""
    from ase.neighborlist import neighbor_list  # only here, for the event distance

    d = neighbor_list("d", frame.to_atoms(), 6.0)
    if d.size == 0:
        raise ValueError("no two atoms within 6 Å: cannot set an event distance")
    return float(d.min())


def run_reference_md(
    labeller: Labeller, start: Frame, temperature: float, seed: int, settings: ReferenceMDSettings
) -> list[Frame]:
    """Langevin MD driven by ``labeller``, its frames labelled (every ``loginterval`` steps).

    The velocities come from ``seed`` as a walker's do (first of three streams of
    ``SeedSequence(seed)``), so an MLIP-MD walker with the same start and seed begins with
    the same velocities; the thermostat noise is the second stream.
    """
    if not temperature > 0:
        raise ValueError(f"reference MD needs a temperature > 0 K, got {temperature}")
    timestep_fs = settings.timestep_fs
    rng_velocities, rng_md, _ = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    atoms = start.unlabelled().to_atoms()
    atoms.info = {}
    atoms.calc = labeller.get_calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng_velocities)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature,
        friction=settings.friction,
        fixcm=False,
        rng=rng_md,
    )
    settings_hash = labeller.identity().settings_hash
    frames: list[Frame] = []

    def log() -> None:
        step = dyn.nsteps
        frame = Frame.from_atoms(atoms, include_results=False)
        frame = frame.model_copy(
            update={
                "info": {"step": step, "time_fs": step * timestep_fs, "temperature": temperature}
            }
        )
        res = atoms.calc.results
        frames.append(
            make_labelled_frame(
                frame, res["energy"], res["forces"], res.get("stress"), settings_hash
            )
        )

    atoms.get_forces()
    n_logs = settings.n_steps // settings.loginterval
    t0 = time.perf_counter()
    for k in range(1, n_logs + 1):
        dyn.run(settings.loginterval)
        log()
        if n_logs >= 8 and k % (n_logs // 4) == 0 and k < n_logs:  # progress, a few lines
            logger.info(
                "reference MD at %g K: step %d of %d (%.0f s)",
                temperature,
                dyn.nsteps,
                settings.n_steps,
                time.perf_counter() - t0,
            )
    return frames


@dataclass
class ReferenceMDMaker(Maker):
    """A short MD segment driven by the reference labeller, cached by content.

    Parameters
    ----------
    name
        Job name.
    labeller
        The reference; it must run in process (a DFT code runs as jobs of its own:
        give its aiMD trajectory instead).
    settings
        MD length and thermostat, as the screening's MLIP-MD uses them.
    """

    name: str = "reference MD"
    labeller: Labeller = field(default_factory=CHGNetLabeller)
    settings: ReferenceMDSettings = field(default_factory=ReferenceMDSettings)

    def __post_init__(self) -> None:
        self.labeller = labeller_from_dict(self.labeller)

    @job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
    def make(self, start: Frame, temperature: float, seed: int) -> ReferenceMDDocument:
        """Run (or reuse) the reference MD from ``start`` at ``temperature``."""
        labeller = labeller_from_dict(self.labeller)
        if not getattr(labeller, "in_process", True):
            raise ValueError(
                f"reference MD needs a labeller that runs in this process; "
                f"{labeller.identity().name} runs as jobs of its own"
            )
        start = as_model(start, Frame)
        ident = labeller.identity().settings_hash
        key = content_hash(
            {
                "kind": "reference_md",
                "start": start.structure_hash(),
                "temperature": float(temperature),
                "seed": int(seed),
                "labeller": ident,
                "md": self.settings.model_dump(),
            }
        )

        def run() -> ReferenceMDDocument:
            t0 = time.perf_counter()
            frames = run_reference_md(labeller, start, temperature, seed, self.settings)
            logger.info(
                "reference MD at %g K: %d steps in %.0f s",
                temperature,
                self.settings.n_steps,
                time.perf_counter() - t0,
            )
            return ReferenceMDDocument(
                temperature=temperature,
                seed=seed,
                timestep_fs=self.settings.timestep_fs,
                n_steps=self.settings.n_steps,
                frames=frames,
                labeller_hash=ident,
                wall_seconds=time.perf_counter() - t0,
                cache_key=key,
            )

        return ResultCache.from_current_job().get_or_compute(
            key,
            "reference_md",
            run,
            lambda hit: ReferenceMDDocument.model_validate({**hit, "reused": True}),
            lambda doc: doc.model_dump(),
        )


class EventSettings(Document):
    """What counts as an off-site event (:func:`off_site_events`)."""

    distance_fraction: float = Field(
        0.4,
        gt=0,
        description="An atom is off its site beyond this fraction of the ground state's "
        "shortest interatomic distance (CuI: 0.4 × 2.62 Å = 1.05 Å).",
    )
    min_frames: int = Field(
        2, ge=1, description="Logged frames in a row an atom must stay off-site."
    )


class ReferenceComparison(Document):
    """MLIP-MD against reference MD at one temperature: events, errors in time order."""

    temperature: float
    duration_ps: float = Field(description="Reference MD time (ps).")
    mlip_duration_ps: float = Field(description="MLIP-MD time (ps), the same unless it blew up.")
    event_distance: float = Field(description="Å.")
    events_reference: int
    events_mlip: int
    time_ps: list[float] = Field(description="Times of the reference frames.")
    force_rmse: list[float] = Field(
        description="The ensemble's force error on each reference frame (meV/Å)."
    )
    uncertainty: list[float] = Field(description="The ensemble's uncertainty on each.")
    max_displacement: list[float] = Field(
        description="Largest displacement from the ground state in each reference frame (Å)."
    )
    sigma_a: list[float] = Field(
        default_factory=list, description="σ^A of each reference frame (reference forces)."
    )
    energy_error_eV: list[float] = Field(
        default_factory=list,
        description="E_reference − E_ensemble of each reference frame, whole cell (eV).",
    )
    sigma_a_reference: float | None = Field(None, description="σ^A of the reference MD.")
    sigma_a_mlip: float | None = Field(
        None, description="σ^A of the MLIP-MD with the ensemble's forces."
    )
    relative_force_error: float | None = Field(
        None,
        description="RMS of the ensemble's force errors over the RMS reference force, along "
        "the reference MD: what the ensemble's errors alone add to an MLIP-MD's σ^A.",
    )

    @property
    def sigma_a_expected(self) -> float | None:
        """σ^A an MLIP-MD in distribution shows with the ensemble's own forces.

        The ensemble's force error ε (relative) adds in quadrature to the reference's
        anharmonicity: sqrt(σ_ref² + ε²). A harmonic material (σ^A 0.2) with 25 % force
        errors shows 0.32 without visiting anything new.
        """
        if self.sigma_a_reference is None:
            return None
        return float(np.hypot(self.sigma_a_reference, self.relative_force_error or 0.0))

    n_reference_steps: int = 0


def compare_with_reference(
    reference: ReferenceMDDocument,
    on_reference: Any,
    exploration: Any,
    force_constants: Any,
    events: EventSettings,
) -> ReferenceComparison:
    """Set an MLIP-MD walker beside the reference MD of the same start and temperature.

    Parameters
    ----------
    reference
        The reference MD.
    on_reference
        The ensemble evaluated on the reference frames (an ``EvaluationDocument``: per-frame
        ``force_rmse`` and ``u_<key>`` in input order, which is time order).
    exploration
        The screening's MLIP-MD walker (``ExplorationDocument``); its ``samples`` are its
        scored frames with the ensemble's forces.
    force_constants
        ``ForceConstantsDocument``: the ground state R0 (sites) and Φ (σ^A).
    events
        The event definition.
    """
    r0 = as_model(force_constants.reference, Frame)
    distance = events.distance_fraction * nearest_neighbour_distance(r0)
    ref_pos = [np.asarray(f.positions) for f in reference.frames]
    mlip_pos = [np.asarray(f.positions) for f in exploration.samples]
    fc = np.asarray(force_constants.fc_array(), dtype=float)
    r0_pos, cell = np.asarray(r0.positions), np.asarray(r0.cell)

    def displacements(positions: list[np.ndarray]) -> list[np.ndarray]:
        return [minimum_image_displacements(p, r0_pos, cell, r0.pbc) for p in positions]

    u_ref, u_mlip = displacements(ref_pos), displacements(mlip_pos)
    sig_ref = sig_mlip = None
    if reference.frames:
        sig_ref = trajectory_anharmonicity([f.forces for f in reference.frames], u_ref, fc)
    forces_mlip = [f.info.get("forces_mlip") for f in exploration.samples]
    if forces_mlip and all(f is not None for f in forces_mlip):
        sig_mlip = trajectory_anharmonicity(forces_mlip, u_mlip, fc)
    key = f"u_{on_reference.reference.key}"
    pred = on_reference.predictions
    errors = np.asarray(pred.get("force_rmse", []), dtype=float) / 1000.0
    rms_force = (
        float(np.sqrt(np.mean([np.mean(np.square(f.forces)) for f in reference.frames])))
        if reference.frames
        else 0.0
    )
    relative = (
        float(np.sqrt(np.mean(errors**2)) / rms_force) if errors.size and rms_force > 0 else None
    )
    dt_ps = reference.timestep_fs / 1000.0
    return ReferenceComparison(
        temperature=reference.temperature,
        duration_ps=reference.n_steps * dt_ps,
        mlip_duration_ps=float(exploration.n_steps) * dt_ps,
        event_distance=distance,
        events_reference=len(off_site_events(ref_pos, r0, distance, events.min_frames)),
        events_mlip=len(off_site_events(mlip_pos, r0, distance, events.min_frames)),
        time_ps=[float(f.info.get("time_fs", 0.0)) / 1000.0 for f in reference.frames],
        force_rmse=list(pred.get("force_rmse", [])),
        uncertainty=list(pred.get(key, [])),
        max_displacement=[float(np.linalg.norm(u, axis=1).max()) for u in u_ref],
        sigma_a=[float(x) for x in pred.get("sigma_a_ref", []) if x is not None],
        energy_error_eV=(
            (
                np.asarray(pred.get("energy_ref_per_atom", []), dtype=float)
                - np.asarray(pred.get("energy_pred_per_atom", []), dtype=float)
            )
            * np.asarray(pred.get("n_atoms", []), dtype=float)
        ).tolist(),
        sigma_a_reference=sig_ref,
        sigma_a_mlip=sig_mlip,
        relative_force_error=relative,
        n_reference_steps=reference.n_steps,
    )
