"""Exploration as jobs: the Maker that runs MLIP-MD walkers, cached by content.

What a run does is in :mod:`active_mlip.makers.walkers` (the engine) and
:mod:`active_mlip.makers.exploration_settings` (settings and documents); both are
re-exported here, the module every caller imports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jobflow import JobConfig, Maker, job

from active_mlip.core.frames import Frame
from active_mlip.core.hashing import content_hash
from active_mlip.makers.exploration_settings import (
    LOG_KEYS,
    ExplorationBatchDocument,
    ExplorationDocument,
    ExplorationSettings,
    WalkerSpec,
)
from active_mlip.makers.schemas import DATA_FIELDS, EnsembleDocument
from active_mlip.makers.selection import (
    ReferenceStatistics,
    SelectionSettings,
    reference_at,
)
from active_mlip.makers.walkers import (
    _validate_run_args,
    check_start,
    run_exploration,
    run_exploration_walkers,
    run_walker,
    run_walkers,
)
from active_mlip.stores.cache import ResultCache

__all__ = [
    "LOG_KEYS",
    "ExplorationBatchDocument",
    "ExplorationDocument",
    "ExplorationMaker",
    "ExplorationSettings",
    "WalkerSpec",
    "check_start",
    "exploration_batch_cache_key",
    "exploration_cache_key",
    "run_exploration",
    "run_exploration_walkers",
    "run_walker",
    "run_walkers",
]

logger = logging.getLogger(__name__)


def exploration_cache_key(
    ensemble: EnsembleDocument,
    spec: WalkerSpec,
    settings: ExplorationSettings,
    selection: SelectionSettings,
) -> str:
    """Content key of an exploration: same inputs -> same result (runs are seeded)."""
    start = spec.start
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
            "reference": spec.reference.model_dump(),
            "temperature": float(spec.temperature),
            "n_new": int(spec.n_new),
            "settings": settings.model_dump(),
            "selection": selection.model_dump(),
            "seed": int(spec.seed),
        }
    )


def exploration_batch_cache_key(
    ensemble: EnsembleDocument,
    specs: Sequence[WalkerSpec],
    settings: ExplorationSettings,
    selection: SelectionSettings,
) -> str:
    """Content key of a batch of walkers: the ordered keys of its walkers."""
    walkers = [exploration_cache_key(ensemble, spec, settings, selection) for spec in specs]
    return content_hash({"kind": "exploration_batch", "walkers": walkers})


def _check_job_input(
    ensemble: EnsembleDocument,
    start: Frame,
    temperature: float,
    n_new: int,
    settings: ExplorationSettings,
) -> None:
    """The checks a job makes before loading the ensemble (ValueError naming the problem)."""
    _validate_run_args(temperature, n_new)
    unknown = sorted(set(start.to_atoms().get_chemical_symbols()) - set(ensemble.elements))
    if unknown:
        raise ValueError(
            f"start structure contains elements {unknown} that the ensemble was not "
            f"trained on (it knows {ensemble.elements})"
        )
    check_start(start, settings)


@dataclass
class ExplorationMaker(Maker):
    """Exploration runs as jobs (cached by content, so a resumed workflow reuses them).

    :meth:`make`, the one job, runs one walker or several (e.g. one per temperature) in
    lock-step, each MD step evaluating all of them as one batch.

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
        starts: list[Frame],
        reference: ReferenceStatistics,
        temperatures: list[float],
        n_new: int,
        seeds: list[int],
        by_temperature: dict[str, ReferenceStatistics] | None = None,
    ) -> ExplorationBatchDocument:
        """Explore from ``starts[i]`` at ``temperatures[i]`` with ``seeds[i]``.

        The one exploration job. Each walker runs until ``n_new`` frames are accepted
        or its MD budget is used, and gives one :class:`ExplorationDocument`; several
        walkers run in lock-step, one batched ensemble evaluation per MD step (see
        :func:`run_exploration_walkers`), and a walker in a batch follows the trajectory
        it would follow alone. ``by_temperature`` (an evaluation's per-temperature
        statistics) takes precedence over ``reference`` for each walker's temperature.
        """
        lengths = {"starts": len(starts), "temperatures": len(temperatures), "seeds": len(seeds)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"one value per walker is needed, got lengths {lengths}")
        if not starts:
            raise ValueError("an exploration needs at least one start structure")
        for start, temperature in zip(starts, temperatures, strict=True):
            _check_job_input(ensemble, start, temperature, n_new, self.settings)
        specs = [
            WalkerSpec(start, reference_at(reference, by_temperature, t), t, n_new, seed)
            for start, t, seed in zip(starts, temperatures, seeds, strict=True)
        ]
        cache = ResultCache.from_current_job()
        if len(specs) == 1:  # cached under the walker's own key, as it always was
            return self._explore_one(ensemble, specs[0], cache)
        key = exploration_batch_cache_key(ensemble, specs, self.settings, self.selection)

        def explore() -> ExplorationBatchDocument:
            calc = self._calculator(ensemble)
            t0, passes0 = time.perf_counter(), calc.n_forward_passes
            docs = run_walkers(calc, specs, self.settings, self.selection)
            passes = calc.n_forward_passes - passes0
            for walker in docs:
                walker.cache_key = key
            return ExplorationBatchDocument(
                explorations=docs,
                batched=self.settings.ensemble == "nvt",
                n_force_evaluations=passes // calc.size,
                n_forward_passes=passes,
                wall_seconds=time.perf_counter() - t0,
                cache_key=key,
            )

        def reused(hit: dict) -> ExplorationBatchDocument:
            logger.info("exploration batch %s… reused from the cache", key[:12])
            doc = ExplorationBatchDocument.model_validate({**hit, "reused": True})
            for walker in doc.explorations:
                walker.reused = True
            return doc

        return cache.get_or_compute(
            key, "exploration_batch", explore, reused, lambda doc: doc.model_dump()
        )

    def _explore_one(
        self, ensemble: EnsembleDocument, spec: WalkerSpec, cache: ResultCache
    ) -> ExplorationBatchDocument:
        """One walker, with ASE's own integrator, cached under its walker key."""
        key = exploration_cache_key(ensemble, spec, self.settings, self.selection)
        t0 = time.perf_counter()

        def explore() -> ExplorationDocument:
            doc = run_walker(self._calculator(ensemble), spec, self.settings, self.selection)
            doc.cache_key = key
            return doc

        def reused(hit: dict) -> ExplorationDocument:
            logger.info("exploration %s… reused from the cache", key[:12])
            return ExplorationDocument.model_validate({**hit, "reused": True})

        doc = cache.get_or_compute(key, "exploration", explore, reused, lambda d: d.model_dump())
        return ExplorationBatchDocument(
            explorations=[doc],
            batched=False,
            wall_seconds=time.perf_counter() - t0,
            cache_key=key,
            reused=doc.reused,
        )

    def _calculator(self, ensemble: EnsembleDocument) -> Any:
        """The ensemble as an ASE calculator on this Maker's device."""
        from active_mlip.makers.ensemble import (
            EnsembleCalculator,  # torch loads only where the ensemble runs
        )

        return EnsembleCalculator.from_document(
            ensemble, device=self.device, compute_stress=self.settings.ensemble == "npt"
        )
