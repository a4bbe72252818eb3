"""The exploration engine: MLIP-MD walkers driven by the ensemble-mean forces, scoring frames.

Over 500 lines on purpose: one idea, a walker's life (start checks, equilibration, the
thermal window, scoring and acceptance, the quota, blow-up detection, its report) and the
lock-step integrator that runs several walkers as one batch; split further, the state
machine would be scattered over modules that only make sense together.

Every ``loginterval`` steps the current frame is scored from what the ensemble calculator
already computed for that step (member spread -> uncertainty U, mean energy E): no extra
forward pass. The paper's acceptance probability P = P_U·P_E (:mod:`active_mlip.makers.selection`)
is compared with a seeded Bernoulli draw; the run stops once ``n_new`` frames were accepted
("probabilistic" mode) or after ``max_steps`` ("period" mode keeps the ``n_new`` accepted
frames with the highest U).

An MLIP trained on little data can have holes: MD then collapses atoms onto each other or
runs away in energy. Every step is checked (finite numbers, interatomic distances against
covalent radii, energy drift per atom, force cap); the first failing step ends the run with
a ``blowup`` report instead of an exception, and only frames that passed the check can be
candidates. ``last_frame`` is the last sane configuration (with velocities) so the next
iteration can continue from it.

Several walkers (e.g. one per temperature) can run in lock-step with
:func:`run_exploration_walkers`: every MD step evaluates all still-running walkers as ONE
batch (M forward passes for all of them, not M per walker). Its NVT integrator replicates
ASE's Langevin step with each walker's own random streams, so a walker in a batch follows
the trajectory :func:`run_exploration` gives it alone; both share the checks, scoring,
stopping and reporting code (:class:`_Walker`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.neighborlist import neighbor_list

from active_mlip.core.frames import Frame
from active_mlip.makers.exploration_settings import (
    LOG_KEYS,
    ExplorationDocument,
    ExplorationSettings,
    WalkerSpec,
)
from active_mlip.makers.npt import enthalpy, make_npt_dynamics
from active_mlip.makers.selection import (
    ReferenceStatistics,
    SelectionSettings,
    acceptance_terms,
    draw_acceptance,
    select_period,
    thermal_reference,
)

logger = logging.getLogger(__name__)


# -- checks ----------------------------------------------------------------------------------
def _validate_run_args(temperature: float, n_new: int) -> None:
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")


def _close_contact(atoms: Atoms, fraction: float) -> str | None:
    """Describe the worst pair closer than ``fraction`` x (sum of covalent radii), or None."""

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
#: Version of ``ase.md.langevin.Langevin`` whose step :func:`_langevin_first_half` and
#: :func:`_langevin_second_half` replicate; any other version is refused, not approximated.
_LANGEVIN_VERSION = 5


def _make_dynamics(atoms: Atoms, temperature: float, s: ExplorationSettings, rng):
    dt = s.timestep_fs * units.fs
    if s.ensemble == "nvt":
        # FixCom instead of the deprecated fixcm=True (which biases small systems).
        atoms.set_constraint(FixCom())
        return Langevin(
            atoms, dt, temperature_K=temperature, friction=s.friction, fixcm=False, rng=rng
        )

    return make_npt_dynamics(
        atoms, temperature, s.timestep_fs, s.pressure_gpa, s.taut_fs, s.taup_fs, rng
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


@dataclass
class _Logged:
    """A logged MD step: the frame and what the ensemble said of it."""

    step: int
    frame: Frame
    energy: float
    p_energy: float  # what P_E compares: E, or the enthalpy E + PV in NPT
    uncertainty: dict[str, float]
    forces: np.ndarray
    t_kin: float


class _Walker:
    """One exploration trajectory's state and bookkeeping, whoever integrates it.

    Shared by :func:`run_exploration` (ASE dynamics on one structure) and
    :func:`run_exploration_walkers` (lock-step batch), so both check inputs, seed their
    streams, detect blow-ups, score frames, stop and report with the same code.
    The integrator calls :meth:`begin` with the results of the start state, then
    :meth:`advance` with the results of every new state while :attr:`running`.
    """

    def __init__(
        self,
        calc,
        spec: WalkerSpec,
        settings: ExplorationSettings,
        selection: SelectionSettings,
    ):
        start, reference, temperature, n_new, seed = (
            spec.start,
            spec.reference,
            spec.temperature,
            spec.n_new,
            spec.seed,
        )
        _validate_run_args(temperature, n_new)
        self.key = selection.key
        if reference.key != self.key:
            raise ValueError(
                f"reference statistics are for uncertainty {reference.key!r} but selection "
                f"monitors {self.key!r}; recompute them with the same SelectionSettings"
            )
        check_start(start, settings)
        atoms = start.unlabelled().to_atoms()
        atoms.info = {}
        if hasattr(calc, "check_elements"):
            calc.check_elements(atoms)  # ValueError naming unknown elements
        if settings.ensemble == "npt" and not getattr(calc, "compute_stress", True):
            raise ValueError("NPT exploration needs a calculator built with compute_stress=True")

        self.start, self.test_reference, self.temperature, self.n_new = (
            start,
            reference,
            temperature,
            n_new,
        )
        self.settings, self.selection, self.seed = settings, selection, seed
        self.t0 = time.perf_counter()
        rng_velocities, self.rng_md, self.rng_accept = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
        )
        if (
            settings.reuse_velocities
            and "velocities" in start.info
            and start.info.get("temperature") == temperature
        ):
            atoms.set_velocities(np.asarray(start.info["velocities"], dtype=float))
        else:
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng_velocities)
            Stationary(atoms)
        self.atoms = atoms
        self.log: dict[str, list] = {k: [] for k in LOG_KEYS}
        self.candidates: list[Frame] = []
        self.samples: list[Frame] = []
        self.blowup: dict[str, Any] | None = None
        self.stopped_by = "budget"
        self.step = 0
        self.e0_per_atom = 0.0
        self.last_sane: dict[str, np.ndarray] | None = None
        # Acceptance statistics: the test set's, or the walker's own thermal window's.
        self.window: list[_Logged] = []
        self.reference: ReferenceStatistics | None = (
            None if settings.window_steps > 0 else reference
        )
        # The last few sane logged frames, to label when the MD blows up (see document()).
        self.recent: deque[tuple[float, Frame]] = deque(maxlen=max(1, min(n_new, 5)))
        self.n_force_evaluations = 0
        self.n_forward_passes = 0
        self.wall_seconds: float | None = None  # set when the walker stops
        self.dyn = None  # the batched path keeps the walker's Langevin object here

    @property
    def running(self) -> bool:
        return self.wall_seconds is None

    def _stop(self, stopped_by: str) -> None:
        self.stopped_by = stopped_by
        self.wall_seconds = time.perf_counter() - self.t0

    def begin(self, results: dict) -> None:
        """Check the start state with the potential (the geometry was checked already)."""
        self.e0_per_atom = float(results["energy"]) / len(self.atoms)
        # This catches a potential that is broken already at the start.
        reason = _sanity(self.atoms, results, self.e0_per_atom, self.settings)
        if reason:
            self.blowup = {"step": 0, "time_fs": 0.0, "reason": reason}
            self._stop("blowup")
        else:
            self.last_sane = _snapshot(self.atoms)

    def advance(self, results: dict) -> None:
        """Account for one MD step whose new state has ``results``: check, score, stop."""
        self.step += 1
        step, s = self.step, self.settings
        reason = _sanity(self.atoms, results, self.e0_per_atom, s)
        if reason:
            self.blowup = {"step": step, "time_fs": step * s.timestep_fs, "reason": reason}
            logger.warning(
                "exploration at %.0f K blew up at step %d: %s", self.temperature, step, reason
            )
            self._stop("blowup")
            return
        self.last_sane = _snapshot(self.atoms)
        if step % s.loginterval == 0:
            snap = self._log_step(results)
            self.recent.append((float(snap.uncertainty[self.key]), snap.frame))
            if step <= s.equilibration_steps:
                pass  # thermalising: not yet distributed like the ensemble at T
            elif self.reference is None:
                self.window.append(snap)
                if step >= s.equilibration_steps + s.window_steps:
                    self.reference = thermal_reference(
                        self.key,
                        [w.uncertainty[self.key] for w in self.window],
                        [w.p_energy for w in self.window],
                    )
                    for w in self.window:  # the window's frames are thermalised too
                        self._score(w)
                        if self._quota_met():
                            break
                    self.window = []
            else:
                self._score(snap)
            if self._quota_met():
                self._stop("quota")
                return
        if step >= s.max_steps:
            self._stop("budget")

    def _quota_met(self) -> bool:
        return self.selection.mode == "probabilistic" and len(self.candidates) >= self.n_new

    def _log_step(self, results: dict) -> _Logged:
        """What scoring needs of the current step, kept (the thermal window scores later)."""
        atoms = self.atoms
        return _Logged(
            step=self.step,
            frame=Frame.from_atoms(atoms, include_results=False, step=self.step),
            energy=float(results["energy"]),
            p_energy=self._energy(results),
            uncertainty={k: float(v) for k, v in results["uncertainty"].items()},
            forces=np.asarray(results["forces"], dtype=float).copy(),
            t_kin=float(atoms.get_temperature()),
        )

    def _energy(self, results: dict) -> float:
        """The energy P_E compares: E at fixed volume, the enthalpy E + PV in NPT."""
        energy = float(results["energy"])
        if self.settings.ensemble == "npt":
            return enthalpy(energy, self.atoms.get_volume(), self.settings.pressure_gpa)
        return energy

    def _score(self, snap: _Logged) -> None:
        """Score a logged frame from the results of its own step (no extra forward pass)."""
        step, s = snap.step, self.settings
        unc = snap.uncertainty
        u = float(unc[self.key])
        energy = snap.energy
        p_u, p_e, p = (
            float(x) for x in acceptance_terms(u, snap.p_energy, self.reference, self.selection)
        )
        accepted = bool(draw_acceptance(p, self.rng_accept))  # drawn for every frame
        t_kin = snap.t_kin
        row = (
            step,
            step * s.timestep_fs,
            energy,
            energy / len(snap.frame.numbers),
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
            self.log[k].append(v)
        info = {
            "source": "exploration",
            "step": step,
            "time_fs": step * s.timestep_fs,
            "temperature": float(self.temperature),
            "seed": int(self.seed),
            "uncertainty_key": self.key,
            "uncertainty": u,
            "uncertainties": {k: float(v) for k, v in unc.items()},
            "energy_mlip": energy,
            "p_u": p_u,
            "p_e": p_e,
            "p": p,
        }
        frame = None
        if accepted:
            frame = snap.frame.model_copy(update={"info": info})
            self.candidates.append(frame)
        n_scored = len(self.log["step"])
        if s.sample_every and n_scored % s.sample_every == 0:
            frame = frame or snap.frame
            forces = snap.forces.tolist()
            self.samples.append(
                frame.model_copy(
                    update={"info": {**info, "source": "md-sample", "forces_mlip": forces}}
                )
            )
        if n_scored % s.progress_every == 0:
            logger.info(
                "exploration %.0f K: step %d/%d, %d scored, %d accepted, U=%.4g, T=%.0f K",
                self.temperature,
                step,
                s.max_steps,
                n_scored,
                len(self.candidates),
                u,
                t_kin,
            )

    def document(self) -> ExplorationDocument:
        """The outcome (call once the walker stopped)."""
        log, candidates, n_new = self.log, self.candidates, self.n_new
        if self.selection.mode == "period":
            chosen = select_period(log["u"], log["accepted"], n_new)
            by_step = {f.info["step"]: f for f in candidates}
            frames = [by_step[log["step"][int(i)]] for i in chosen]
        else:
            frames = candidates[:n_new]
        n_precursors = 0
        if self.blowup is not None and len(frames) < n_new:
            # The configurations just before a blow-up are sane and show where the
            # ensemble goes wrong: label them rather than learn nothing.
            taken = {f.info.get("step") for f in frames}
            info = {
                "source": "exploration",
                "temperature": float(self.temperature),
                "seed": int(self.seed),
                "uncertainty_key": self.key,
                "blowup_precursor": True,
            }
            for u, f in sorted(self.recent, key=lambda x: -x[0]):
                step = f.info.get("step")
                if len(frames) >= n_new or step in taken:
                    continue
                dt = self.settings.timestep_fs
                extra = {"step": step, "uncertainty": u, "time_fs": step * dt}
                frames.append(f.model_copy(update={"info": {**info, **extra}}))
                n_precursors += 1

        if self.last_sane is None:  # the start itself failed the potential checks
            last_frame = self.start.unlabelled()
        else:
            last_frame = Frame(
                numbers=self.atoms.numbers.tolist(),
                positions=self.last_sane["positions"].tolist(),
                cell=self.last_sane["cell"].tolist(),
                pbc=[bool(x) for x in self.atoms.pbc],
                info={
                    "source": "exploration",
                    "temperature": float(self.temperature),
                    "step": self.step - 1 if self.blowup else self.step,
                    "velocities": self.last_sane["velocities"].tolist(),
                },
            )
        doc = ExplorationDocument(
            temperature=self.temperature,
            n_new=n_new,
            seed=self.seed,
            n_steps=self.step,
            n_scored=len(log["step"]),
            n_accepted=len(frames),
            n_candidates=len(candidates),
            stopped_by=self.stopped_by,
            blowup=self.blowup,
            uncertainty_key=self.key,
            frames=frames,
            log=log,
            samples=self.samples,
            last_frame=last_frame,
            n_force_evaluations=self.n_force_evaluations,
            n_forward_passes=self.n_forward_passes,
            md_ps=self.step * self.settings.timestep_fs / 1000.0,
            equilibration_steps=self.settings.equilibration_steps,
            acceptance_reference=self.reference,
            energy_reference_source="thermal-md" if self.settings.window_steps else "test-set",
            n_precursors=n_precursors,
            wall_seconds=(
                self.wall_seconds
                if self.wall_seconds is not None
                else time.perf_counter() - self.t0
            ),
        )
        logger.info(
            "exploration %.0f K: %s after %d steps, %d scored, %d accepted (%.1f s)",
            self.temperature,
            self.stopped_by,
            self.step,
            doc.n_scored,
            doc.n_accepted,
            doc.wall_seconds,
        )
        return doc


def _run_single(calc, walker: _Walker) -> ExplorationDocument:
    """Integrate one walker with ASE's own dynamics (Langevin, or MTK NPT)."""
    atoms = walker.atoms
    atoms.calc = calc
    dyn = _make_dynamics(atoms, walker.temperature, walker.settings, walker.rng_md)
    members = max(int(getattr(calc, "size", 1)), 1)
    passes0 = int(getattr(calc, "n_forward_passes", 0))
    walker.begin(_current_results(atoms, calc))
    while walker.running:
        dyn.step()
        dyn.nsteps += 1
        walker.advance(_current_results(atoms, calc))
    walker.n_forward_passes = int(getattr(calc, "n_forward_passes", 0)) - passes0
    walker.n_force_evaluations = walker.n_forward_passes // members
    atoms.calc = None
    return walker.document()


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
        An :class:`~.ensemble.EnsembleCalculator` (anything whose ``results`` carry
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
    spec = WalkerSpec(start, reference, temperature, n_new, seed)
    return run_walker(
        calc, spec, settings or ExplorationSettings(), selection or SelectionSettings()
    )


def run_walker(
    calc, spec: WalkerSpec, settings: ExplorationSettings, selection: SelectionSettings
) -> ExplorationDocument:
    """:func:`run_exploration` for a :class:`WalkerSpec` (the job's entry point)."""
    return _run_single(calc, _Walker(calc, spec, settings, selection))


# -- batched walkers -------------------------------------------------------------------------
def _check_replicable(dyn) -> None:
    """Refuse a Langevin object whose step the batched integrator would not reproduce."""

    version = getattr(type(dyn), "_lgv_version", None)
    if version != _LANGEVIN_VERSION:
        raise RuntimeError(
            f"batched walkers replicate ASE's Langevin version {_LANGEVIN_VERSION}, but the "
            f"installed ASE has version {version}; update makers/exploration.py"
        )
    if dyn.fix_com or any(type(c) is not FixCom for c in dyn.atoms.constraints):
        raise RuntimeError("batched walkers support Langevin with a FixCom constraint only")


def _langevin_first_half(dyn, forces: np.ndarray) -> None:
    """ASE Langevin ``step`` up to its force call: noise, half kick, drift (same order).

    The random numbers are drawn from the walker's own ``dyn.rng`` exactly as ASE draws
    them (xi, then eta), so a batched walker follows its single-walker trajectory.
    """
    atoms = dyn.atoms
    natoms = len(atoms)
    dyn.v = atoms.get_velocities()
    xi = dyn.rng.standard_normal(size=(natoms, 3))
    eta = dyn.rng.standard_normal(size=(natoms, 3))
    # FixCom has no redistribute_forces_md and serial broadcasts are no-ops: nothing to do.
    dyn.rnd_pos = dyn.c5 * eta
    dyn.rnd_vel = dyn.c3 * xi - dyn.c4 * eta
    dyn.v += dyn.c1 * forces / dyn.masses - dyn.c2 * dyn.v + dyn.rnd_vel
    x = atoms.get_positions()
    atoms.set_positions(x + dyn.dt * dyn.v + dyn.rnd_pos)  # FixCom adjusts the positions
    dyn.v = (atoms.get_positions() - x - dyn.rnd_pos) / dyn.dt


def _langevin_second_half(dyn, forces: np.ndarray) -> None:
    """ASE Langevin ``step`` after its force call: second half kick, momenta (FixCom)."""
    dyn.v += dyn.c1 * forces / dyn.masses - dyn.c2 * dyn.v + dyn.rnd_vel
    dyn.atoms.set_momenta(dyn.v * dyn.masses)
    dyn.nsteps += 1


def _evaluate_walkers(calc, walkers: list[_Walker]) -> list[dict]:
    """One batched ensemble evaluation of all ``walkers`` (M forward passes in total)."""
    passes0 = int(getattr(calc, "n_forward_passes", 0))
    results = calc.evaluate([w.atoms for w in walkers])
    passes = int(getattr(calc, "n_forward_passes", 0)) - passes0
    for w in walkers:  # each walker records the (shared) cost of the batches it was in
        w.n_force_evaluations += 1
        w.n_forward_passes += passes
    return results


def run_exploration_walkers(
    calc,
    starts: Sequence[Frame],
    reference: ReferenceStatistics | Sequence[ReferenceStatistics],
    temperatures: Sequence[float],
    n_new: int | Sequence[int],
    settings: ExplorationSettings | None = None,
    selection: SelectionSettings | None = None,
    seeds: Sequence[int] | None = None,
) -> list[ExplorationDocument]:
    """Run several explorations in lock-step, evaluating all running walkers as one batch.

    Walker ``i`` starts from ``starts[i]`` at ``temperatures[i]`` with ``seeds[i]``; it
    follows exactly the trajectory :func:`run_exploration` gives with the same arguments
    (the Langevin step of ASE is replicated with the walker's own random streams; only the
    floating-point rounding of a batched forward pass can differ, ~1e-15 relative), but
    each MD step costs M forward passes for all walkers together instead of M per walker.
    A walker that blew up, met its quota or used its step budget leaves the batch; the
    others go on.

    Parameters
    ----------
    calc
        An :class:`~.ensemble.EnsembleCalculator` (needs ``evaluate(atoms_list)``).
    starts
        One start configuration per walker (any sizes and cells; see :func:`run_exploration`
        for the reuse of ``info['velocities']``).
    reference
        Test-set statistics of the same uncertainty key as ``selection.key``: one for all
        walkers, or one per walker (each walker's own temperature's).
    temperatures
        Target temperature (K) per walker, each > 0.
    n_new
        Quota of accepted frames, one for all walkers or one per walker.
    settings, selection
        MD and acceptance settings, shared by the walkers (defaults when ``None``).
        With ``settings.ensemble == "npt"`` the walkers run one after the other through
        :func:`run_exploration` (MTK NPT is not batched); the results are the same.
    seeds
        One seed per walker (three streams each, as in :func:`run_exploration`).

    Returns
    -------
    list of ExplorationDocument
        One per walker, in input order. ``n_force_evaluations`` / ``n_forward_passes`` of a
        walker count the batched evaluations it took part in (their cost is shared).

    Raises
    ------
    ValueError
        Empty or mismatched lists, or any walker's input that :func:`run_exploration` would
        reject -- all before any MD.
    """
    settings = settings or ExplorationSettings()
    selection = selection or SelectionSettings()
    starts, temperatures = list(starts), [float(t) for t in temperatures]
    if seeds is None:
        raise ValueError("seeds must be given, one per walker")
    seeds = [int(s) for s in seeds]
    if isinstance(n_new, (int, np.integer)):
        quotas = [int(n_new)] * len(starts)
    else:
        quotas = [int(n) for n in n_new]
    if isinstance(reference, ReferenceStatistics):
        references = [reference] * len(starts)
    else:
        references = list(reference)
    if not starts:
        raise ValueError("run_exploration_walkers needs at least one start structure")
    lengths = {
        "starts": len(starts),
        "temperatures": len(temperatures),
        "n_new": len(quotas),
        "seeds": len(seeds),
        "reference": len(references),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"one value per walker is needed, got lengths {lengths}")
    specs = [
        WalkerSpec(start, ref, t, n, seed)
        for start, ref, t, n, seed in zip(
            starts, references, temperatures, quotas, seeds, strict=True
        )
    ]
    return run_walkers(calc, specs, settings, selection)


def run_walkers(
    calc,
    specs: Sequence[WalkerSpec],
    settings: ExplorationSettings,
    selection: SelectionSettings,
) -> list[ExplorationDocument]:
    """:func:`run_exploration_walkers` for a list of :class:`WalkerSpec` (the job's entry point)."""
    if not specs:
        raise ValueError("run_exploration_walkers needs at least one start structure")
    # Every walker is validated (and its velocities drawn) before any MD starts.
    walkers = [_Walker(calc, spec, settings, selection) for spec in specs]
    if settings.ensemble == "npt":
        logger.info("npt exploration is not batched: running %d walkers in turn", len(walkers))
        return [_run_single(calc, w) for w in walkers]
    if not hasattr(calc, "evaluate"):
        raise TypeError("batched walkers need a calculator with evaluate(atoms_list)")

    for w in walkers:
        w.dyn = _make_dynamics(w.atoms, w.temperature, settings, w.rng_md)
        _check_replicable(w.dyn)
    forces: dict[int, np.ndarray] = {}
    for i, res in enumerate(_evaluate_walkers(calc, walkers)):
        walkers[i].begin(res)
        forces[i] = res["forces"]
    running = [i for i, w in enumerate(walkers) if w.running]
    while running:
        for i in running:
            _langevin_first_half(walkers[i].dyn, forces[i])
        results = _evaluate_walkers(calc, [walkers[i] for i in running])
        for i, res in zip(running, results, strict=True):
            _langevin_second_half(walkers[i].dyn, res["forces"])
            forces[i] = res["forces"]
            walkers[i].advance(res)
        running = [i for i in running if walkers[i].running]
    return [w.document() for w in walkers]
