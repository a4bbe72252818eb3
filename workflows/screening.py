"""The screening campaign: many materials, one verdict each, active learning where needed.

A campaign here is the paper's screening: every material gets initial data and a first
ensemble, short MLIP-MD checked against the reference (:mod:`makers.diagnostics`), and
a verdict; flagged materials continue with the active-learning loop. ``screening-112``
is the built-in campaign over :func:`workflows.materials.load_screening_set`; a
campaign YAML (:mod:`workflows.campaign`) names any other set.

:func:`run_campaign_local` runs the materials one after another in one work directory
(one job store, so they share a label-budget ledger), each resumable as a single
``active-mlip run`` is, and writes the campaign report (:mod:`workflows.campaign_report`).
"""

from __future__ import annotations

import difflib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from active_mlip.budget import LabelBudget
from workflows.settings import ActiveLearningSettings

logger = logging.getLogger(__name__)

SCREENING_112 = "screening-112"
CAMPAIGN_FILE = "campaign.json"


def builtin_campaigns() -> dict[str, list[str]]:
    """Campaign name -> its material names, for the campaigns shipped with the package."""
    from workflows.materials import load_screening_set

    return {SCREENING_112: [e.name for e in load_screening_set()]}


def select_materials(available: list[str], wanted: str | list[str] | None, campaign: str) -> list:
    """The materials of ``campaign`` to run: all, or those named in ``wanted``.

    Parameters
    ----------
    available
        The campaign's materials, in campaign order.
    wanted
        ``None`` (all), a comma-separated string or a list of names.
    campaign
        For messages.

    Raises
    ------
    ValueError
        For a name the campaign does not hold (listing close matches), a name given
        twice, or an empty selection.
    """
    if wanted is None:
        return list(available)
    names = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    names = [n for n in names if n]
    if not names:
        raise ValueError("--materials names no material; give e.g. --materials CuI,AgGaSe2")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--materials names {', '.join(twice)} more than once")
    unknown = [n for n in names if n not in available]
    if unknown:
        hints = []
        for n in unknown:
            same_case = [a for a in available if a.lower() == n.lower()]
            close = same_case or difflib.get_close_matches(n, available, n=3, cutoff=0.5)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(
            f"campaign {campaign!r} has no material {'; '.join(hints)}. "
            f"It holds {len(available)}: {', '.join(available[:12])}"
            + (", ..." if len(available) > 12 else "")
        )
    return names


def screening_settings(
    preset: str, label_budget: int | None = None, campaign: str = SCREENING_112, **sections: Any
) -> ActiveLearningSettings:
    """A preset with screening enabled and, optionally, a shared label budget."""
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("screening", {}).setdefault("enabled", True)
    if label_budget is not None:
        sections.setdefault("loop", {})["shared_budget"] = LabelBudget(
            name=campaign, total=label_budget
        ).model_dump()
    return ActiveLearningSettings.from_preset(preset, **sections)


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
    import shutil

    from workflows.campaign_report import outcome_from_error, outcome_from_summary, write_report
    from workflows.local import RunConflictError, run_local

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
        from active_mlip.budget import used
        from active_mlip.stores import StoreSettings, make_job_store

        store = make_job_store(StoreSettings(local_path=workdir / "store"))
        store.connect()
        record["label_budget_used"] = used(store, settings.loop.shared_budget)
    (workdir / CAMPAIGN_FILE).write_text(json.dumps(record, indent=2))
    write_report(outcomes, workdir / "report", campaign=campaign, budget=record)
    return record


def _check_campaign_dir(workdir: Path, campaign: str, settings: ActiveLearningSettings) -> None:
    from workflows.local import RunConflictError

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
