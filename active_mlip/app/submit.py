"""Submit a campaign to FireWorks: routing check, workflows tagged by campaign, idempotent adds.

Workflows are tagged with the campaign, material and settings fingerprint in their
metadata, which makes :func:`submit_flows` idempotent and lets :mod:`active_mlip.app.status`
find a campaign's fireworks without loading documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jobflow import JobStore

from active_mlip.app.launchpad import ensure_initialized
from active_mlip.stores.worker_store import EnvJobStore
from active_mlip.workflows.active_learning import ActiveLearningMaker
from active_mlip.workflows.materials import get_structure
from active_mlip.workflows.routing import RoutingTable, route_output_jobs

if TYPE_CHECKING:
    from fireworks import LaunchPad, Workflow
    from jobflow import Flow


def worker_categories(worker_files: list[str | Path]) -> set[str]:
    """Categories the FireWorker YAMLs pull (``__none__`` for uncategorised-only)."""
    cats: set[str] = set()
    for path in worker_files:
        data = yaml.safe_load(Path(path).read_text()) or {}
        c = data.get("category", "")
        cats |= set(c) if isinstance(c, list) else {c}
    return cats


def check_routing(categories: set[str], worker_files: list[str | Path]) -> list[str]:
    """Warnings for routed categories no FireWorker config pulls (their jobs would wait forever)."""
    if not worker_files:
        return []
    pulled = worker_categories(worker_files)
    if "" in pulled or "*" in pulled:  # a worker without category pulls everything
        return []
    names = ", ".join(str(p) for p in worker_files)
    return [
        f"routing sends jobs to category {c!r} but no worker config pulls it ({names}); "
        "they will stay READY until a worker with that category runs"
        for c in sorted(categories - pulled)
    ]


@dataclass
class SubmitResult:
    """What a submit did, per material."""

    added: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def workflow_query(campaign: str, material: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"metadata.campaign": campaign}
    if material is not None:
        q["metadata.material"] = material
    return q


def to_workflow(
    flow: Flow,
    campaign: str,
    material: str,
    fingerprint: str,
    routing: RoutingTable | None = None,
    store: JobStore | None = None,
) -> Workflow:
    """Convert ``flow`` to a FireWorks workflow tagged with campaign, material, fingerprint.

    The workflow is named ``"[campaign] material ..."``.

    The tags also go into every job's metadata (and so every Firework's spec), including
    jobs the flow creates while it runs. The jobs jobflow inserts when a controller
    replaces itself are routed with ``routing``'s glue category.
    """
    # FireWorks loads only for the commands that use it
    from jobflow.managers.fireworks import flow_to_workflow

    route_output_jobs(flow, routing or RoutingTable())
    flow.update_metadata({"campaign": campaign, "material": material}, dynamic=True)
    title = flow.name if material in flow.name else f"{material} {flow.name}"
    return flow_to_workflow(
        flow,
        store=store if store is not None else EnvJobStore(),
        # campaign first: lists and the GUI cut long names off at the end
        name=f"[{campaign}] {title}",
        metadata={
            "campaign": campaign,
            "material": material,
            "fingerprint": fingerprint,
            # every job's hosts hold it: status tells this workflow's outputs from those of
            # an earlier, deleted one of the same material
            "flow_uuid": flow.uuid,
        },
    )


def submit_flows(
    lp: LaunchPad,
    campaign: str,
    flows: dict[str, tuple[Any, str]],
    routing: RoutingTable | None = None,
    store: JobStore | None = None,
) -> SubmitResult:
    """Add one workflow per material unless the campaign already has it.

    Parameters
    ----------
    flows
        ``material -> (flow or a zero-argument callable building it, settings fingerprint)``.
        A callable is only called for materials that are added.
    """
    ensure_initialized(lp)
    result = SubmitResult()
    # Build every new workflow before adding any: a material whose flow cannot be built
    # (bad trajectory, element the labeller lacks) must not leave a half-submitted campaign.
    todo = []
    for material, (flow, fingerprint) in flows.items():
        old = lp.workflows.find_one(workflow_query(campaign, material), {"metadata": 1, "nodes": 1})
        if old is not None:
            if old["metadata"].get("fingerprint") == fingerprint:
                result.skipped.append(material)
            else:
                result.conflicts.append(
                    f"{material}: campaign {campaign!r} already holds it with other settings "
                    f"(fingerprint {old['metadata'].get('fingerprint', '?')[:12]} != "
                    f"{fingerprint[:12]}); use a new campaign name to run the new settings"
                )
            continue
        flow = flow() if callable(flow) else flow
        todo.append((material, to_workflow(flow, campaign, material, fingerprint, routing, store)))
    for material, wf in todo:
        result.added[material] = sorted(lp.add_wf(wf).values())
    return result


def submit_campaign(lp: LaunchPad, campaign: Any, settings: Any) -> SubmitResult:
    """Submit a :class:`~active_mlip.workflows.campaign.Campaign`: one loop flow per material."""

    fingerprint = settings.fingerprint()
    flows: dict[str, tuple[Any, str]] = {}
    for entry in campaign.materials:
        structure = get_structure(entry.source)  # bad files fail here, before anything is added

        def build(structure=structure, name=entry.name):
            return ActiveLearningMaker(settings=settings).make(structure, material=name)

        flows[entry.name] = (build, fingerprint)
    return submit_flows(lp, campaign.name, flows, routing=settings.routing)
