"""Run the active-learning loop on this machine, in a work directory that persists.

The work directory holds the file-backed job store (``store/``), the run's settings
(``run.json``) and, once finished, the exports: ``summary.json``, ``dataset.extxyz``,
``test.extxyz``, ``models/`` and ``report/``. Running the same command again resumes:
the flow is rebuilt and every label, member and exploration already computed is taken
from the store's cache, so nothing is computed twice.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from active_mlip.core.blobs import MANIFEST, write_manifest
from active_mlip.core.documents import as_model
from active_mlip.core.frames import Frame, write_extxyz
from active_mlip.makers.schemas import EnsembleDocument, LabelledBatch, MemberDocument
from active_mlip.stores.job_store import (
    StoreSettings,
    make_job_store,
    store_location,
    store_unreachable,
)
from active_mlip.stores.mongo import DatabaseUnreachableError
from active_mlip.workflows.active_learning import ActiveLearningMaker
from active_mlip.workflows.materials import get_structure
from active_mlip.workflows.settings import ActiveLearningSettings
from active_mlip.workflows.state import LoopResult, ToppedUpBatch

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: How long a local run waits for an unreachable MongoDB before it stops (ms). A run
#: resumes where it stopped, so failing soon with a clear message beats waiting.
SERVER_SELECTION_TIMEOUT_MS = 5000


class RunConflictError(ValueError):
    """The work directory holds a run with other settings."""


def check_workdir(workdir: Path, material: str, settings: ActiveLearningSettings) -> bool:
    """Return True when ``workdir`` holds this same run (resume), False when it is new.

    Raises
    ------
    RunConflictError
        If it holds a run of another material or with other settings.
    """
    run_file = workdir / RUN_FILE
    if not run_file.exists():
        if workdir.exists() and any(workdir.iterdir()):
            raise RunConflictError(
                f"work directory {str(workdir)!r} is not empty and holds no {RUN_FILE}; "
                "choose an empty or new directory"
            )
        return False
    try:
        old = json.loads(run_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunConflictError(
            f"{run_file} is unreadable ({exc}); pass --restart to start over"
        ) from exc
    if old.get("material") != material or old.get("fingerprint") != settings.fingerprint():
        changed = _diff(old.get("settings", {}), settings.model_dump(mode="json"))
        what = f"material {old.get('material')!r}" if old.get("material") != material else ""
        raise RunConflictError(
            f"work directory {str(workdir)!r} holds a run with different settings "
            f"({what or ', '.join(changed[:6]) or 'unknown changes'}); nothing was changed. "
            "Use another --workdir, or pass --restart to delete it and start over."
        )
    return True


def write_run_file(workdir: Path, material: str, settings: ActiveLearningSettings) -> None:
    """Record in ``workdir`` which run it holds (what :func:`check_workdir` compares)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RUN_FILE).write_text(
        json.dumps(
            {
                "material": material,
                "fingerprint": settings.fingerprint(),
                "settings": settings.model_dump(mode="json"),
            },
            indent=2,
        )
    )


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            if k == "preset":
                continue
            out += _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def run_local(
    material: str,
    workdir: str | Path,
    settings: ActiveLearningSettings,
    restart: bool = False,
    log_format: str | bool = False,
    store_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) the loop for ``material`` in ``workdir`` and export the results.

    Parameters
    ----------
    material
        A built-in name (``CuI``) or a structure file.
    workdir
        Work directory; created if missing.
    settings
        The run's settings.
    restart
        Delete a previous run in ``workdir`` first (otherwise a run with other settings
        is refused and a run with the same settings is resumed).
    log_format
        Passed to jobflow's ``run_locally`` (False keeps its logging quiet).
    store_path
        Directory of the file-backed job store (default ``workdir/store``); a campaign
        gives all its materials one store, so they share one label-budget ledger.

    Returns
    -------
    dict
        The summary that is also written to ``summary.json``.

    Raises
    ------
    DatabaseUnreachableError
        When ``$ACTIVE_MLIP_MONGO_URI`` names a MongoDB that does not answer, before the
        run or during it; what was stored is kept and the same call resumes.
    """
    # jobflow's runner loads only when a run starts (`--help` stays fast)
    from jobflow import run_locally

    workdir = Path(workdir).resolve()
    structure = get_structure(material)  # ValueError for unknown names/files, before anything
    name = Path(material).stem if Path(material).suffix else str(material)
    flow = ActiveLearningMaker(settings=settings).make(structure, material=name)

    store_settings = StoreSettings(
        local_path=Path(store_path).resolve() if store_path else workdir / "store",
        server_selection_timeout_ms=SERVER_SELECTION_TIMEOUT_MS,
    )
    # Checked before --restart deletes anything: a bad store config must not cost a run.
    why = store_unreachable(store_settings)
    if why is not None:
        raise DatabaseUnreachableError(
            f"cannot reach the job store, {store_location(store_settings)}: {why}. Nothing "
            "was run; start the database (or fix ACTIVE_MLIP_MONGO_URI) and run again."
        )
    if restart and workdir.exists():
        shutil.rmtree(workdir)
    resumed = check_workdir(workdir, name, settings)
    write_run_file(workdir, name, settings)
    store = make_job_store(store_settings)
    t0 = time.time()
    logger.info("%s %s in %s", "resuming" if resumed else "starting", name, workdir)
    try:
        responses = run_locally(flow, store=store, log=log_format, ensure_success=True)
    except Exception as exc:
        # A job that lost the database failed (jobflow logs it and goes on with the
        # jobs that do not depend on it): say so plainly instead of "Flow did not finish".
        why = store_unreachable(store_settings)
        if why is None:
            raise
        raise DatabaseUnreachableError(
            f"lost the job store, {store_location(store_settings)}, after "
            f"{time.time() - t0:.0f} s ({why}). Every job and result stored before is "
            "kept; once the database is back, run the same command again to resume "
            f"{name} in {workdir}."
        ) from exc
    wall = time.time() - t0

    store.connect()
    result = as_model(store.get_output(flow.output.uuid, load=True), LoopResult)
    counts = _count_work(responses)
    summary = export_run(result, store, workdir, settings, wall_seconds=wall, counts=counts)
    return summary


def _count_work(responses: dict[str, dict[int, Any]]) -> dict[str, int]:
    """Labels and members computed vs reused in this invocation."""
    counts = {"labels_computed": 0, "labels_reused": 0, "members_trained": 0, "members_reused": 0}
    for by_index in responses.values():
        for response in by_index.values():
            out = getattr(response, "output", None)
            if isinstance(out, ToppedUpBatch):
                # It repeats the labels of the batches it tops up; count its own only.
                counts["labels_reused"] += out.n_reused_here
                counts["labels_computed"] += out.n_requested_here - out.n_reused_here
            elif isinstance(out, LabelledBatch):
                counts["labels_reused"] += out.n_reused
                counts["labels_computed"] += out.n_requested - out.n_reused
            elif isinstance(out, MemberDocument):
                counts["members_reused" if out.reused else "members_trained"] += 1
    return counts


def export_run(
    result: LoopResult,
    store: Any,
    workdir: Path,
    settings: ActiveLearningSettings,
    wall_seconds: float,
    counts: dict[str, int],
) -> dict[str, Any]:
    """Write summary.json, dataset.extxyz, test.extxyz, models/, SHA256SUMS and report/.

    ``SHA256SUMS`` (``sha256sum -c`` format) lists every exported file but the report;
    it is removed first and written last, so a half-written export has none rather than
    a wrong one.
    """
    (workdir / MANIFEST).unlink(missing_ok=True)
    state = result.state
    test_state = as_model(store.get_output(state.test_uuid, load=True), type(state))
    test_frames = test_state.test.frames if test_state.test else []
    dataset = [_flatten_info(f) for f in state.train.frames]
    write_extxyz(dataset, workdir / "dataset.extxyz")
    write_extxyz([_flatten_info(f) for f in test_frames], workdir / "test.extxyz")

    last = state.history[-1]
    ensemble = as_model(store.get_output(last.ensemble_uuid, load=True), EnsembleDocument)
    models_dir = workdir / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    models_dir.mkdir()
    for m in ensemble.members:
        m.model_file.write(models_dir / f"member{m.index:02d}_subset{m.subset}_seed{m.seed}.model")
    (models_dir / "ensemble.json").write_text(
        json.dumps(
            {
                "members": [
                    {
                        "index": m.index,
                        "subset": m.subset,
                        "seed": m.seed,
                        "sha256": m.model_file.sha256,
                    }
                    for m in ensemble.members
                ],
                "dropped_members": ensemble.dropped_members,
                "e0s": ensemble.e0s,
                "r_max": ensemble.r_max,
                "elements": ensemble.elements,
            },
            indent=2,
        )
    )

    summary = {
        "material": result.material,
        "preset": settings.preset,
        "temperatures": settings.loop.temperatures,
        "labeller": settings.labeller.identity().model_dump(),
        "settings": settings.model_dump(mode="json"),
        "iterations": [
            {
                "iteration": h.iteration,
                "n_train": h.n_train,
                "n_test": h.n_test,
                "n_selected": h.n_selected,
                "n_labelled": h.n_labelled,
                "n_label_failures": h.n_label_failures,
                "label_failure_reasons": h.label_failure_reasons,
                "n_scored": h.n_scored,
                "acceptance_fraction": h.acceptance_fraction,
                "test_mae_energy_meV_per_atom": h.test_mae_energy_meV_per_atom,
                "test_mae_forces_meV_per_A": h.test_mae_forces_meV_per_A,
                "test_rmse_energy_meV_per_atom": h.test_rmse_energy_meV_per_atom,
                "test_rmse_forces_meV_per_A": h.test_rmse_forces_meV_per_A,
                "test_mae_sigma_a": h.test_mae_sigma_a,
                "uncertainty_key": h.uncertainty_key,
                "uncertainty_mean": h.uncertainty_mean,
                "uncertainty_std": h.uncertainty_std,
                "wall_seconds": h.wall_seconds,
                "md_ps": h.md_ps,
                "restarts": h.restarts,
                "acceptance_statistics": h.acceptance_statistics,
                "test_statistics_by_temperature": h.test_statistics_by_temperature,
            }
            for h in state.history
        ],
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "stop_details": result.stop_details,
        "relaxation": state.relaxation,
        "unstable_modes": state.unstable_modes,
        "versions": package_versions(),
        "screening": state.screening.model_dump() if state.screening else None,
        "labels_used": state.labels_used,
        "n_dataset": len(dataset),
        "n_test": len(test_frames),
        "this_invocation": {**counts, "wall_seconds": wall_seconds},
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    exported = [workdir / n for n in ("summary.json", "dataset.extxyz", "test.extxyz")]
    write_manifest(workdir, exported + sorted(models_dir.iterdir()))

    try:
        from active_mlip.app.report import write_report  # matplotlib loads only here

        write_report(result, store, workdir, settings, ensemble, test_frames)
    except Exception as exc:  # a broken plot must not lose the run's results
        logger.warning("report could not be written: %s", exc)
    return summary


#: Packages whose versions decide the numbers of a run (recorded in summary.json).
NUMERIC_PACKAGES = (
    "active-mlip",
    "numpy",
    "scipy",
    "torch",
    "e3nn",
    "mace-torch",
    "ase",
    "chgnet",
    "phonopy",
    "spglib",
    "pymatgen",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`NUMERIC_PACKAGES` (None where one is missing)."""

    out: dict[str, str | None] = {}
    for name in NUMERIC_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _flatten_info(frame: Frame) -> Frame:
    """Keep only scalar info so extxyz can write it."""
    info = {
        k: v
        for k, v in frame.info.items()
        if isinstance(v, str | int | float | bool) and k != "velocities"
    }
    return frame.model_copy(update={"info": info})
