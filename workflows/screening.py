"""The screening campaign: many materials, one verdict each, active learning where needed.

A campaign here is the paper's screening: every material gets initial data and a first
ensemble, short MLIP-MD checked against the reference (:mod:`active_mlip.makers.diagnostics`), and
a verdict; flagged materials continue with the active-learning loop. ``screening-112``
is the built-in campaign over :func:`active_mlip.workflows.materials.load_screening_set`; a
campaign YAML (:mod:`active_mlip.workflows.campaign`) names any other set.

:func:`active_mlip.app.local_campaign.run_campaign_local` runs a campaign's materials
one after another on this machine.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from active_mlip.stores.budget import LabelBudget
from active_mlip.workflows.settings import ActiveLearningSettings

logger = logging.getLogger(__name__)

SCREENING_112 = "screening-112"
CAMPAIGN_FILE = "campaign.json"


def builtin_campaigns() -> dict[str, list[str]]:
    """Campaign name -> its material names, for the campaigns shipped with the package."""
    from active_mlip.workflows.materials import load_screening_set

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
