"""Cancel a campaign, or some of its materials (``active-mlip cancel``).

Two strengths, as FireWorks has them: *defuse* stops a workflow where it stands (its
waiting and ready fireworks will not run; ``lpad reignite_wflows`` or ``cancel --undo``
resumes it), *delete* removes the workflow, so that ``submit`` adds the material anew.
Neither touches the job store: labels, trained members and explorations stay cached by
content, and a resubmitted material reuses every one of them.
"""

from __future__ import annotations

import contextlib
import difflib
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from active_mlip.app.submit import workflow_query

if TYPE_CHECKING:
    from fireworks import LaunchPad

Action = Literal["defuse", "delete", "undo"]

#: Firework states a defuse stops (completed and failed ones keep their state).
_STOPPABLE = ("WAITING", "READY", "RESERVED", "RUNNING", "PAUSED")


@dataclass
class CancelResult:
    """What a cancel did (or, with ``dry_run``, would do), per material."""

    action: Action
    fireworks: dict[str, int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def _select(available: list[str], wanted: list[str] | None, campaign: str) -> list[str]:
    if not available:
        raise ValueError(f"no campaign {campaign!r} on the LaunchPad")
    if wanted is None:
        return available
    unknown = [m for m in wanted if m not in available]
    if unknown:
        hints = []
        for m in unknown:
            close = difflib.get_close_matches(m, available, n=3, cutoff=0.5)
            hints.append(f"{m!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(
            f"campaign {campaign!r} has no material {'; '.join(hints)}; "
            f"it holds {', '.join(available[:12])}" + (", ..." if len(available) > 12 else "")
        )
    return list(dict.fromkeys(wanted))


def cancel_campaign(
    lp: LaunchPad,
    campaign: str,
    materials: list[str] | None = None,
    action: Action = "defuse",
    dry_run: bool = False,
) -> CancelResult:
    """Defuse, delete or (``undo``) reignite the workflows of ``campaign``'s materials.

    Parameters
    ----------
    lp
        The LaunchPad.
    campaign
        Campaign name.
    materials
        Names of its materials; ``None``: all.
    action
        ``"defuse"`` (stop, keep), ``"delete"`` (remove the workflows) or ``"undo"``
        (reignite defused workflows).
    dry_run
        Count what would change, change nothing.

    Raises
    ------
    ValueError
        An unknown campaign or material (with close matches).
    """
    wfs = {
        wf["metadata"]["material"]: wf
        for wf in lp.workflows.find(
            workflow_query(campaign), {"metadata": 1, "nodes": 1, "fw_states": 1}
        )
    }
    result = CancelResult(action=action, dry_run=dry_run)
    for material in _select(sorted(wfs), materials, campaign):
        wf = wfs[material]
        states = [str(s) for s in (wf.get("fw_states") or {}).values()]
        if action == "defuse":
            result.fireworks[material] = sum(s in _STOPPABLE for s in states)
        elif action == "undo":
            result.fireworks[material] = sum(s == "DEFUSED" for s in states)
        else:
            result.fireworks[material] = len(wf["nodes"])
        result.running[material] = sum(s == "RUNNING" for s in states)
        if dry_run or not result.fireworks[material]:
            continue
        first = wf["nodes"][0]
        # FireWorks prints progress to stdout; the CLI says what happened itself
        with contextlib.redirect_stdout(io.StringIO()):
            if action == "defuse":
                lp.defuse_wf(first, defuse_all_states=False)
            elif action == "undo":
                lp.reignite_wf(first)
            else:
                lp.delete_wf(first)
    return result
