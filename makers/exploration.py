"""Exploration: MLIP-MD driven by the ensemble-mean forces, scoring frames as it goes.

Every ``loginterval`` steps the current frame is scored from what the ensemble calculator
already computed for that step (member spread -> uncertainty U, mean energy E): no extra
forward pass. The paper's acceptance probability P = P_U·P_E (:mod:`makers.selection`)
is compared with a seeded Bernoulli draw; the run stops once ``n_new`` frames were accepted
("probabilistic" mode) or after ``max_steps`` ("period" mode keeps the ``n_new`` accepted
frames with the highest U).

An MLIP trained on little data can have holes: MD then collapses atoms onto each other or
runs away in energy. Every step is checked (finite numbers, interatomic distances against
covalent radii, energy drift per atom, force cap); the first failing step ends the run with
a ``blowup`` report instead of an exception, and only frames that passed the check can be
candidates. ``last_frame`` is the last sane configuration (with velocities) so the next
iteration can continue from it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from ase.data import covalent_radii
from jobflow import JobConfig, Maker, job
from pydantic import Field, field_validator

from active_mlip.documents import Document
from active_mlip.frames import Frame
from active_mlip.hashing import content_hash
from makers.schemas import DATA_FIELDS, EnsembleDocument
from makers.selection import (
    ReferenceStatistics,
    SelectionSettings,
    acceptance_terms,
    draw_acceptance,
    select_period,
)

logger = logging.getLogger(__name__)

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

    ensemble: Literal["nvt", "npt"] = Field(
        "nvt",
        description="'nvt': Langevin (the paper). 'npt': Berendsen weak coupling of temperature "
        "and pressure (isotropic cell scaling; for thermal expansion, not exact NPT sampling; "
        "two force evaluations per step because the cell rescale moves the atoms).",
    )
    timestep_fs: float = Field(2.0, gt=0, le=10, description="MD time step (fs), in (0, 10].")
    friction: float = Field(
        0.02, gt=0, description="Langevin friction in ASE units (1/ASE time), as in the paper."
    )
    loginterval: int = Field(10, ge=1, description="Score a frame every this many steps.")
    max_steps: int = Field(2000, ge=1, description="Step budget of one exploration.")
    pressure_gpa: float = Field(0.0, description="Target pressure for 'npt' (GPa).")
    compressibility_per_gpa: float = Field(
        0.02, gt=0, description="Berendsen barostat compressibility (1/GPa), for 'npt'."
    )
    taut_fs: float = Field(100.0, gt=0, description="Berendsen thermostat time (fs), 'npt'.")
    taup_fs: float = Field(1000.0, gt=0, description="Berendsen barostat time (fs), 'npt'.")
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

    @field_validator("timestep_fs")
    @classmethod
    def _sane_timestep(cls, v: float) -> float:
        if not np.isfinite(v):
            raise ValueError(f"timestep_fs must be finite, got {v}")
        return v


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
    last_frame: Frame = Field(description="Last sane configuration, velocities in info.")
    n_force_evaluations: int = Field(0, description="Ensemble evaluations (graph builds).")
    n_forward_passes: int = Field(0, description="Member forward passes (M per evaluation).")
    wall_seconds: float = 0.0
    cache_key: str = ""
    reused: bool = Field(False, description="Taken from the result cache, not recomputed.")


# -- checks ----------------------------------------------------------------------------------
def _validate_run_args(temperature: float, n_new: int) -> None:
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")


def _close_contact(atoms: Atoms, fraction: float) -> str | None:
    """Describe the worst pair closer than ``fraction`` x (sum of covalent radii), or None."""
    from ase.neighborlist import neighbor_list

    radii = covalent_radii[atoms.numbers]
    cutoff = fraction * 2 * float(radii.max())
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if len(d) == 0:
        return None
    ratio = d / (radii[i] + radii[j])
    k = int(np.argmin(ratio))
    if ratio[k] >= fraction:
        return None
    return (
        f"atoms {int(i[k])} ({atoms[int(i[k])].symbol}) and {int(j[k])} "
        f"({atoms[int(j[k])].symbol}) are {d[k]:.3f} Å apart, {ratio[k]:.2f} of their "
        f"covalent bond length (limit {fraction})"
    )


def check_start(start: Frame, settings: ExplorationSettings) -> None:
    """Reject a start structure that is not finite or has overlapping atoms (ValueError)."""
    if start.n_atoms < 2:
        raise ValueError(f"the start structure needs at least 2 atoms, got {start.n_atoms}")
    if not all(start.pbc):
        raise ValueError("the start structure must be periodic in all three directions")
    if not (np.all(np.isfinite(start.positions)) and np.all(np.isfinite(start.cell))):
        raise ValueError("the start structure has non-finite positions or cell")
    problem = _close_contact(start.to_atoms(), settings.min_distance_fraction)
    if problem:
        raise ValueError(f"the start structure is already broken: {problem}")


def _sanity(atoms: Atoms, results: dict, e0_per_atom: float, s: ExplorationSettings) -> str | None:
    """Reason the current MD state is broken, or None when it is sane."""
    n = len(atoms)
    energy = float(results["energy"])
    forces = np.asarray(results["forces"])
    if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell.array)):
        return "non-finite positions or cell"
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        return "non-finite energy or forces"
    fmax = float(np.abs(forces).max())
    if fmax > s.max_force:
        return f"force component {fmax:.1f} eV/Å above the cap {s.max_force} eV/Å"
    drift = energy / n - e0_per_atom
    if abs(drift) > s.max_energy_drift_per_atom:
        return (
            f"energy per atom moved {drift:+.3f} eV/atom from the start "
            f"(limit ±{s.max_energy_drift_per_atom})"
        )
    return _close_contact(atoms, s.min_distance_fraction)


# -- the run ---------------------------------------------------------------------------------
def _make_dynamics(atoms: Atoms, temperature: float, s: ExplorationSettings, rng):
    dt = s.timestep_fs * units.fs
    if s.ensemble == "nvt":
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        # FixCom instead of the deprecated fixcm=True (which biases small systems).
        atoms.set_constraint(FixCom())
        return Langevin(
            atoms, dt, temperature_K=temperature, friction=s.friction, fixcm=False, rng=rng
        )
    from ase.md.nptberendsen import NPTBerendsen

    return NPTBerendsen(
        atoms,
        dt,
        temperature_K=temperature,
        pressure_au=s.pressure_gpa * units.GPa,
        compressibility_au=s.compressibility_per_gpa / units.GPa,
        taut=s.taut_fs * units.fs,
        taup=s.taup_fs * units.fs,
        fixcm=True,
    )


def _current_results(atoms: Atoms, calc) -> dict:
    """The calculator's results for ``atoms``; evaluates only if the MD left them stale."""
    if calc.atoms is None or calc.check_state(atoms):
        atoms.get_forces()  # never happens for Langevin: its step ends with a force call
    return calc.results


def _snapshot(atoms: Atoms) -> dict[str, np.ndarray]:
    return {
        "positions": atoms.positions.copy(),
        "cell": atoms.cell.array.copy(),
        "velocities": atoms.get_velocities().copy(),
    }


def run_exploration(
    calc,
    start: Frame,
    reference: ReferenceStatistics,
    temperature: float,
    n_new: int,
    settings: ExplorationSettings | None = None,
    selection: SelectionSettings | None = None,
    seed: int = 0,
) -> ExplorationDocument:
    """Run MLIP-MD from ``start`` and select frames by the paper's acceptance probability.

    Parameters
    ----------
    calc
        An :class:`~makers.ensemble.EnsembleCalculator` (anything whose ``results`` carry
        ``energy``, ``forces`` and an ``uncertainty`` dict, counting ``n_forward_passes``).
    start
        Start configuration; its ``info['velocities']`` are used when ``settings.reuse_velocities``
        and ``info['temperature'] == temperature``, else Maxwell-Boltzmann velocities are drawn.
    reference
        Test-set statistics of the same uncertainty key as ``selection.key``.
    temperature
        Target temperature (K), > 0.
    n_new
        Quota of accepted frames, >= 1.
    settings, selection
        MD and acceptance settings (defaults when ``None``).
    seed
        Seeds the initial velocities, the thermostat noise and the acceptance draws
        (three independent streams), so a run is reproducible.

    Returns
    -------
    ExplorationDocument
        Never raises for a blown-up trajectory: see ``stopped_by`` / ``blowup``.

    Raises
    ------
    ValueError
        Bad temperature / quota, mismatched uncertainty keys, a start structure that is
        broken or has elements the calculator does not know -- all before any MD.
    """
    settings = settings or ExplorationSettings()
    selection = selection or SelectionSettings()
    _validate_run_args(temperature, n_new)
    key = selection.key
    if reference.key != key:
        raise ValueError(
            f"reference statistics are for uncertainty {reference.key!r} but selection "
            f"monitors {key!r}; recompute them with the same SelectionSettings"
        )
    check_start(start, settings)
    atoms = start.unlabelled().to_atoms()
    atoms.info = {}
    if hasattr(calc, "check_elements"):
        calc.check_elements(atoms)  # ValueError naming unknown elements
    if settings.ensemble == "npt" and not getattr(calc, "compute_stress", True):
        raise ValueError("NPT exploration needs a calculator built with compute_stress=True")

    t0 = time.perf_counter()
    rng_velocities, rng_md, rng_accept = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    if (
        settings.reuse_velocities
        and "velocities" in start.info
        and start.info.get("temperature") == temperature
    ):
        atoms.set_velocities(np.asarray(start.info["velocities"], dtype=float))
    else:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng_velocities)
        Stationary(atoms)
    atoms.calc = calc
    dyn = _make_dynamics(atoms, temperature, settings, rng_md)
    members = max(int(getattr(calc, "size", 1)), 1)
    passes0 = int(getattr(calc, "n_forward_passes", 0))

    n_atoms = len(atoms)
    res = _current_results(atoms, calc)
    e0_per_atom = float(res["energy"]) / n_atoms
    log: dict[str, list] = {k: [] for k in LOG_KEYS}
    candidates: list[Frame] = []
    blowup: dict[str, Any] | None = None
    stopped_by = "budget"
    step = 0
    # The start geometry was checked; this catches a potential that is broken already there.
    reason = _sanity(atoms, res, e0_per_atom, settings)
    last_sane = None if reason else _snapshot(atoms)
    if reason:
        blowup = {"step": 0, "time_fs": 0.0, "reason": reason}
        stopped_by = "blowup"

    while blowup is None and step < settings.max_steps:
        dyn.step()
        dyn.nsteps += 1
        step += 1
        res = _current_results(atoms, calc)
        reason = _sanity(atoms, res, e0_per_atom, settings)
        if reason:
            blowup = {"step": step, "time_fs": step * settings.timestep_fs, "reason": reason}
            stopped_by = "blowup"
            logger.warning(
                "exploration at %.0f K blew up at step %d: %s", temperature, step, reason
            )
            break
        last_sane = _snapshot(atoms)
        if step % settings.loginterval:
            continue

        # -- score this frame from the results of this very step (no extra pass) --
        unc = res["uncertainty"]
        u = float(unc[key])
        energy = float(res["energy"])
        p_u, p_e, p = (float(x) for x in acceptance_terms(u, energy, reference, selection))
        accepted = bool(draw_acceptance(p, rng_accept))  # drawn for every frame: fixed stream
        t_kin = float(atoms.get_temperature())
        row = (
            step,
            step * settings.timestep_fs,
            energy,
            energy / n_atoms,
            u,
            float(unc["energy"]),
            float(unc["force_mean"]),
            float(unc["force_max"]),
            p_u,
            p_e,
            p,
            accepted,
            t_kin,
        )
        for k, v in zip(LOG_KEYS, row, strict=True):
            log[k].append(v)
        if accepted:
            candidates.append(
                Frame.from_atoms(atoms, include_results=False).model_copy(
                    update={
                        "info": {
                            "source": "exploration",
                            "step": step,
                            "time_fs": step * settings.timestep_fs,
                            "temperature": float(temperature),
                            "seed": int(seed),
                            "uncertainty_key": key,
                            "uncertainty": u,
                            "uncertainties": {k: float(v) for k, v in unc.items()},
                            "energy_mlip": energy,
                            "p_u": p_u,
                            "p_e": p_e,
                            "p": p,
                        }
                    }
                )
            )
        n_scored = len(log["step"])
        if n_scored % settings.progress_every == 0:
            logger.info(
                "exploration %.0f K: step %d/%d, %d scored, %d accepted, U=%.4g, T=%.0f K",
                temperature,
                step,
                settings.max_steps,
                n_scored,
                len(candidates),
                u,
                t_kin,
            )
        if selection.mode == "probabilistic" and len(candidates) >= n_new:
            stopped_by = "quota"
            break

    if selection.mode == "period":
        chosen = select_period(log["u"], log["accepted"], n_new)
        by_step = {f.info["step"]: f for f in candidates}
        frames = [by_step[log["step"][int(i)]] for i in chosen]
    else:
        frames = candidates[:n_new]

    if last_sane is None:  # the start itself failed the potential checks
        last_frame = start.unlabelled()
    else:
        last_frame = Frame(
            numbers=atoms.numbers.tolist(),
            positions=last_sane["positions"].tolist(),
            cell=last_sane["cell"].tolist(),
            pbc=[bool(x) for x in atoms.pbc],
            info={
                "source": "exploration",
                "temperature": float(temperature),
                "step": step - 1 if blowup else step,
                "velocities": last_sane["velocities"].tolist(),
            },
        )
    passes = int(getattr(calc, "n_forward_passes", 0)) - passes0
    doc = ExplorationDocument(
        temperature=temperature,
        n_new=n_new,
        seed=seed,
        n_steps=step,
        n_scored=len(log["step"]),
        n_accepted=len(frames),
        n_candidates=len(candidates),
        stopped_by=stopped_by,
        blowup=blowup,
        uncertainty_key=key,
        frames=frames,
        log=log,
        last_frame=last_frame,
        n_force_evaluations=passes // members,
        n_forward_passes=passes,
        wall_seconds=time.perf_counter() - t0,
    )
    atoms.calc = None
    logger.info(
        "exploration %.0f K: %s after %d steps, %d scored, %d accepted (%.1f s)",
        temperature,
        stopped_by,
        step,
        doc.n_scored,
        doc.n_accepted,
        doc.wall_seconds,
    )
    return doc


def exploration_cache_key(
    ensemble: EnsembleDocument,
    start: Frame,
    reference: ReferenceStatistics,
    temperature: float,
    n_new: int,
    settings: ExplorationSettings,
    selection: SelectionSettings,
    seed: int,
) -> str:
    """Content key of an exploration: same inputs -> same result (runs are seeded)."""
    return content_hash(
        {
            "kind": "exploration",
            "members": [
                m.model_file.sha256 for m in sorted(ensemble.members, key=lambda m: m.index)
            ],
            "reference_frame": (
                ensemble.reference_frame.structure_hash() if ensemble.reference_frame else None
            ),
            "start": start.structure_hash(),
            "start_velocities": content_hash(start.info.get("velocities")),
            "start_temperature": start.info.get("temperature"),
            "reference": reference.model_dump(),
            "temperature": float(temperature),
            "n_new": int(n_new),
            "settings": settings.model_dump(),
            "selection": selection.model_dump(),
            "seed": int(seed),
        }
    )


@dataclass
class ExplorationMaker(Maker):
    """One exploration run as a job (cached by content, so a resumed workflow reuses it).

    Parameters
    ----------
    name
        Job name.
    settings
        MD settings.
    selection
        Acceptance settings (uncertainty key, P_U / P_E parameters, mode).
    device
        Where the ensemble runs: "auto", "cpu" or "cuda".
    """

    name: str = "explore"
    settings: ExplorationSettings = field(default_factory=ExplorationSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    device: str = "auto"

    @job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
    def make(
        self,
        ensemble: EnsembleDocument,
        start: Frame,
        reference: ReferenceStatistics,
        temperature: float,
        n_new: int,
        seed: int,
    ) -> ExplorationDocument:
        """Explore at ``temperature`` from ``start`` until ``n_new`` frames are accepted."""
        from active_mlip.stores import ResultCache
        from makers.ensemble import EnsembleCalculator

        _validate_run_args(temperature, n_new)
        unknown = sorted(set(start.to_atoms().get_chemical_symbols()) - set(ensemble.elements))
        if unknown:
            raise ValueError(
                f"start structure contains elements {unknown} that the ensemble was not "
                f"trained on (it knows {ensemble.elements})"
            )
        check_start(start, self.settings)
        key = exploration_cache_key(
            ensemble, start, reference, temperature, n_new, self.settings, self.selection, seed
        )
        cache = ResultCache.from_current_job()
        hit = cache.get(key)
        if hit is not None:
            logger.info("exploration %s… reused from the cache", key[:12])
            return ExplorationDocument.model_validate({**hit, "reused": True})
        calc = EnsembleCalculator.from_document(
            ensemble, device=self.device, compute_stress=self.settings.ensemble == "npt"
        )
        doc = run_exploration(
            calc, start, reference, temperature, n_new, self.settings, self.selection, seed
        )
        doc.cache_key = key
        cache.put(key, "exploration", doc.model_dump())
        return doc
