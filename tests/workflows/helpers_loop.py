"""Small loop records for the workflow tests: iteration records, states, explorations, frames."""

from __future__ import annotations

from active_mlip.workflows.state import IterationRecord, LoopState


def record(i: int, mae: float, n_selected: int = 5, u_std: float = 0.01) -> IterationRecord:
    return IterationRecord(
        iteration=i,
        n_train=10,
        n_test=5,
        n_selected=n_selected,
        test_mae_energy_meV_per_atom=1.0,
        test_mae_forces_meV_per_A=mae,
        uncertainty_key="force_max",
        uncertainty_mean=0.1,
        uncertainty_std=u_std,
        wall_seconds=1.0,
        finished_at=0.0,
        ensemble_uuid="e",
        evaluation_uuid="v",
    )


def loop_state(maes: list[float], u_stds: list[float] | None = None, labels: int = 10) -> LoopState:
    from active_mlip.workflows.state import FrameSet

    u_stds = u_stds or [0.01] * len(maes)
    return LoopState(
        material="X",
        iteration=len(maes) - 1,
        train=FrameSet(),
        e0s={},
        walkers=[],
        history=[record(i, m, u_std=u) for i, (m, u) in enumerate(zip(maes, u_stds, strict=True))],
        labels_used=labels,
        fc_uuid="f",
        test_uuid="t",
        started_at=0.0,
    )


def exploration_doc(temperature: float, n_scored: int, frames: list, md_ps: float, **extra):
    from active_mlip.makers.exploration import ExplorationDocument
    from active_mlip.makers.selection import ReferenceStatistics

    ref = ReferenceStatistics(
        key="force_max", u_mean=0.05, u_std=0.01, e_mean=-200.0, e_std=0.25, n_frames=20
    )
    return ExplorationDocument.model_construct(
        temperature=temperature,
        n_scored=n_scored,
        n_accepted=len(frames),
        n_precursors=0,
        frames=frames,
        md_ps=md_ps,
        equilibration_steps=100,
        acceptance_reference=ref,
        energy_reference_source="thermal-md",
        stopped_by="budget",
        blowup=None,
        **extra,
    )


# -- faults ------------------------------------------------------------------------------
def cu_frame(seed: int, **info):
    from ase.build import bulk

    from active_mlip.core.frames import Frame

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.03, seed=seed)
    return Frame.from_atoms(atoms, **info)
