"""A campaign on this machine: its materials one after another, then the campaign report.

:func:`run_campaign_local` runs the materials in one work directory (one job store, so
they share a label-budget ledger), each resumable as a single ``active-mlip run`` is, and
writes the campaign report (:mod:`active_mlip.app.campaign_report`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from active_mlip.app.campaign_report import outcome_from_error, outcome_from_summary, write_report
from active_mlip.app.local import RunConflictError, run_local
from active_mlip.stores.budget import used
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.workflows.screening import CAMPAIGN_FILE
from active_mlip.workflows.settings import ActiveLearningSettings

logger = logging.getLogger(__name__)


def run_campaign_local(
    campaign: str,
    materials: list[str],
    settings: ActiveLearningSettings,
    workdir: str | Path,
    sources: dict[str, str] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a campaign's materials one after another in ``workdir``.

    Each material gets ``workdir/<material>/`` (as ``active-mlip run`` writes it); all
    share ``workdir/store``. A material that fails is recorded with its error and the
    campaign goes on. Writes ``workdir/campaign.json`` and ``workdir/report/``.

    Parameters
    ----------
    campaign
        Campaign name (also the shared budget's ledger name).
    materials
        Material names, run in this order.
    settings
        Settings every material uses.
    workdir
        Campaign work directory.
    sources
        Material name -> structure file, for materials that are not built-in.
    restart
        Delete the campaign directory first.
    """
    workdir = Path(workdir).resolve()
    if restart and workdir.exists():
        shutil.rmtree(workdir)
    _check_campaign_dir(workdir, campaign, settings)
    workdir.mkdir(parents=True, exist_ok=True)
    record = {
        "campaign": campaign,
        "fingerprint": settings.fingerprint(),
        "preset": settings.preset,
        "materials": list(materials),
        "label_budget": (
            settings.loop.shared_budget.total if settings.loop.shared_budget else None
        ),
    }
    (workdir / CAMPAIGN_FILE).write_text(json.dumps(record, indent=2))
    outcomes = []
    t0 = time.time()
    for k, name in enumerate(materials, 1):
        logger.info("campaign %s: material %d/%d: %s", campaign, k, len(materials), name)
        try:
            summary = run_local(
                (sources or {}).get(name, name),
                workdir / name,
                settings,
                store_path=workdir / "store",
            )
            outcomes.append(outcome_from_summary(summary))
        except RunConflictError:
            raise  # settings changed under a resumed campaign: the user must decide
        except Exception as exc:  # one failed material must not stop the campaign
            logger.warning("campaign %s: %s failed: %s", campaign, name, exc)
            outcomes.append(outcome_from_error(name, exc, traceback.format_exc(limit=3)))
    record["wall_seconds"] = time.time() - t0
    record["outcomes"] = [o.model_dump() for o in outcomes]
    if settings.loop.shared_budget is not None:
        store = make_job_store(StoreSettings(local_path=workdir / "store"))
        store.connect()
        record["label_budget_used"] = used(store, settings.loop.shared_budget)
    (workdir / CAMPAIGN_FILE).write_text(json.dumps(record, indent=2))
    write_report(outcomes, workdir / "report", campaign=campaign, budget=record)
    return record


def _check_campaign_dir(workdir: Path, campaign: str, settings: ActiveLearningSettings) -> None:
    path = workdir / CAMPAIGN_FILE
    if not path.exists():
        if workdir.exists() and any(workdir.iterdir()):
            raise RunConflictError(
                f"work directory {str(workdir)!r} is not empty and holds no {CAMPAIGN_FILE}; "
                "choose an empty or new directory"
            )
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunConflictError(f"{path} is unreadable ({exc}); pass --restart") from exc
    if old.get("campaign") != campaign or old.get("fingerprint") != settings.fingerprint():
        raise RunConflictError(
            f"work directory {str(workdir)!r} holds campaign {old.get('campaign')!r} with other "
            "settings; nothing was changed. Use another --workdir, or pass --restart to delete "
            "it and start over (adding materials to the same campaign is fine)."
        )
