"""The active-learning loop of Kang et al. as a dynamic jobflow graph.

One material, one or more temperatures::

    force constants (labeller) ──► harmonic samples ──► label ──► split test/train
                                                                     │
    ┌────────────────────────────────────────────────────────────────┘
    ▼
    train ensemble ─► evaluate on test set ─► decide ──(converged)──► result
                                                 │
                                                 └─► explore (per T) ─► collect ─► label
                                                       ─► top up (replace failed single points)
                                                       ─► merge ─► train ─► evaluate ─► decide …

``decide`` is the loop controller: it records the iteration and either stops (with a
recorded reason) or replaces itself with the next iteration's jobs, so the whole loop
lives in the job store and every job can be inspected or rerun. Big objects travel by
reference (job uuids), never inline in a job document. Every expensive step (labels,
members, explorations) is cached by content, so running the same flow again after an
interruption resumes where it stopped and never labels a frame twice.

The flow is composed of Makers, as atomate2 composes its workflows:
:class:`ActiveLearningMaker` holds the stage Makers (relaxation, force constants,
harmonic sampling, labelling, training, exploration, test evaluation) and the two
composite Makers (:class:`~active_mlip.workflows.iteration.IterationMaker`,
:class:`~active_mlip.workflows.screening.ScreeningMaker`) as fields, so a user swaps one
the usual way, or with ``Flow.update_maker_kwargs`` on a built flow. The loop's state is
in :mod:`~active_mlip.workflows.state`, its rules in :mod:`~active_mlip.workflows.policy`,
its glue jobs in :mod:`~active_mlip.workflows.jobs`.

Faults: failed single points are replaced by the next-best candidates (``top_up``); a
labeller that fails every frame of an iteration stops the loop with that verdict; a
diverging ensemble member is retried and, failing that, dropped (see
:func:`active_mlip.makers.training.train_member`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Job, Maker
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.makers.dft_e0s import IsolatedAtomEnergyMaker
from active_mlip.makers.labelling import LabelMaker, validate_frames
from active_mlip.makers.relax import RelaxMaker, check_can_relax
from active_mlip.makers.sampling import ForceConstantsMaker, HarmonicSamplingMaker
from active_mlip.workflows import policy
from active_mlip.workflows.iteration import IterationMaker, TrainingInputs
from active_mlip.workflows.jobs import (
    check_e0s,
    check_trajectory,
    concat_frames,
    initial_split,
    isolated_energies,
    load_trajectory,
)
from active_mlip.workflows.materials import default_supercell, validate_structure
from active_mlip.workflows.routing import route, tag
from active_mlip.workflows.screening import ScreeningMaker
from active_mlip.workflows.settings import ActiveLearningSettings
from active_mlip.workflows.state import LoopRefs


@dataclass
class ActiveLearningMaker(Maker):
    """Active learning of a MACE ensemble for one material (Kang et al., PRM 9, 063801).

    Every stage is a Maker field; ``None`` builds it from ``settings`` (so
    ``ActiveLearningMaker(settings=...)`` is the whole configuration, and any one Maker
    can be replaced, e.g. ``label_maker=LabelMaker(labeller=Atomate2Labeller(...))``).

    Parameters
    ----------
    name
        Flow name.
    settings
        All settings of the run (:class:`~active_mlip.workflows.settings.ActiveLearningSettings`).
    relax_maker
        Relaxes R0 with the labeller (when ``settings.loop.relax``).
    force_constants_maker
        Finite-displacement force constants of R0 (harmonic sampling, σ^A).
    sampling_maker
        Harmonic stochastic samples: the initial data.
    iteration_maker
        One iteration: labelling, training, exploration and evaluation Makers.
    screening_maker
        The screening of the first ensemble (when ``settings.screening.enabled``).
    e0_maker
        Isolated-atom DFT jobs for ``loop.e0s = "isolated"`` with a DFT labeller
        (``None``: the labeller's, with the default box); in-process labellers compute
        their E0s in one job.
    """

    name: str = "active learning"
    settings: ActiveLearningSettings = field(default_factory=ActiveLearningSettings)
    relax_maker: RelaxMaker | None = None
    force_constants_maker: ForceConstantsMaker | None = None
    sampling_maker: HarmonicSamplingMaker | None = None
    iteration_maker: IterationMaker | None = None
    screening_maker: ScreeningMaker | None = None
    e0_maker: IsolatedAtomEnergyMaker | None = None

    def __post_init__(self) -> None:
        s = self.settings
        if self.relax_maker is None:
            self.relax_maker = RelaxMaker(labeller=s.labeller, settings=s.relaxation)
        if self.force_constants_maker is None:
            self.force_constants_maker = ForceConstantsMaker(labeller=s.labeller)
        if self.sampling_maker is None:
            self.sampling_maker = HarmonicSamplingMaker()
        if self.iteration_maker is None:
            self.iteration_maker = IterationMaker(settings=s)
        if self.screening_maker is None and s.screening.enabled:
            self.screening_maker = ScreeningMaker(
                settings=s, label_maker=self.iteration_maker.label_maker
            )

    def _e0_maker(self, labeller: Any) -> IsolatedAtomEnergyMaker:
        """The isolated-atom Maker, checked to run the labeller's code and settings."""
        if self.e0_maker is None:
            return IsolatedAtomEnergyMaker(labeller=labeller)
        if self.e0_maker.labeller.identity() != labeller.identity():
            raise ValueError(
                "e0_maker.labeller differs from the labeller of the data: E0s must come "
                "from the same code and settings as the labels"
            )
        return self.e0_maker

    @property
    def label_maker(self) -> LabelMaker:
        """The labelling Maker every labelling job uses (the iteration Maker's)."""
        return self.iteration_maker.label_maker

    def make(self, structure: Structure, material: str | None = None) -> Flow:
        """Build the flow for ``structure`` (a conventional or primitive cell).

        Bad input (empty, non-periodic or overlapping structures, elements the labeller
        cannot handle) raises ``ValueError`` here, before any job runs.
        """

        settings = self.settings
        loop = settings.loop
        labeller = self.label_maker.labeller
        material = material or structure.composition.reduced_formula
        validate_structure(structure, source=material)
        # None: the material's own supercell (the screening set names one per entry).
        supercell = structure * (loop.supercell or default_supercell(material))
        reference = Frame.from_atoms(AseAtomsAdaptor.get_atoms(supercell), source="reference")
        validate_frames([reference], labeller)
        elements = sorted({site.specie.symbol for site in supercell})
        if loop.initial == "trajectory":
            check_trajectory(loop.trajectory, reference, loop.n_initial + loop.n_test)

        jobs: list[Job | Flow] = []
        relaxation: Any = None
        if loop.relax:
            check_can_relax(self.relax_maker.labeller)  # DFT fails here, before any job
            relax = self.relax_maker.make(reference)
            relax.name = f"{material} relax R0"
            tag(relax, "labelling", iteration=0)
            jobs.append(relax)
            relaxation = relax.output
            reference = relax.output.frame
        fc = self.force_constants_maker.make(reference)
        fc.name = f"{material} force constants"
        tag(fc, "labelling", prefix=material, iteration=0)
        jobs.append(fc)

        if loop.e0s == "isolated":
            e0s: Any
            if labeller.in_process:
                e0 = isolated_energies(labeller, elements)
                e0s = e0.output
            else:  # DFT: one isolated-atom job per element, routed like the labels
                e0 = self._e0_maker(labeller).make(elements)
                e0s = e0.output.energies
            e0.name = f"{material} E0s"
            tag(e0, "labelling", iteration=0)
            jobs.append(e0)
        else:
            check_e0s(loop.e0s, elements, material)
            e0s = dict(loop.e0s)

        if loop.initial == "harmonic":
            n_each = math.ceil((loop.n_initial + loop.n_test) / len(loop.temperatures))
            sample_jobs = []
            for k, t in enumerate(loop.temperatures):
                s = self.sampling_maker.make(
                    fc.output,
                    temperature=t,
                    n_samples=n_each,
                    seed=policy.walker_seed(loop.seed, 0, k),
                )
                s.name = f"{material} harmonic samples {t:g}K"
                tag(s, "glue", iteration=0)
                sample_jobs.append(s)
            pool = concat_frames([s.output for s in sample_jobs])
            pool.name = f"{material} initial pool"
            tag(pool, "glue", iteration=0)
            jobs += [*sample_jobs, pool]
            label = self.label_maker.make(pool.output.frames)
        else:
            label = load_trajectory(loop.trajectory, labeller.identity())
        label.name = f"{material} initial labels"
        tag(label, "labelling", iteration=0)
        jobs.append(label)

        init = initial_split(
            label.output,
            material,
            settings,
            reference,
            e0s,
            fc.output.uuid,
            relaxation=relaxation,
            unstable_modes=fc.output.unstable_modes,
        )
        init.name = f"{material} initial split"
        tag(init, "glue", iteration=0)
        jobs.append(init)
        # state/ensemble/evaluation are filled in when their jobs exist
        refs = LoopRefs(
            state=init.uuid,
            ensemble="",
            evaluation="",
            fc=fc.output.uuid,
            initial=init.uuid,
            label=label.uuid,
        )
        inputs = TrainingInputs(
            material=material, e0s=e0s, fc=fc.output, test_frames=init.output.test.frames
        )
        jobs += self.iteration_maker.train_evaluate_decide(
            init, 0, inputs, refs, screening=self.screening_maker
        )
        flow = Flow(jobs, output=jobs[-1].output, name=f"{material} {self.name}")
        route(flow, settings.routing)
        return flow
