"""Which workers run which jobs: job kinds mapped to FireWorks categories.

Every job of the loop carries a kind in ``job.metadata["kind"]``. The routing table
maps kinds to FireWorks categories (``manager_config["_category"]``), so DFT goes to
CPU nodes and training/MD to GPU nodes. jobflow copies a parent's manager_config onto
jobs created dynamically, so the loop controller (which creates training, MD and DFT
jobs) routes its children explicitly and does not pass its own category on.
"""

from __future__ import annotations

from typing import Literal

from jobflow import Flow, Job
from jobflow.core.job import store_inputs
from pydantic import ConfigDict, Field

from active_mlip.core.documents import Document

Kind = Literal["labelling", "training", "exploration", "evaluation", "glue", "controller"]
KINDS: tuple[str, ...] = (
    "labelling",
    "training",
    "exploration",
    "evaluation",
    "glue",
    "controller",
)


class RoutingTable(Document):
    """FireWorks category per job kind; ``None`` leaves a job uncategorised (any worker)."""

    model_config = ConfigDict(extra="forbid")

    labelling: str | None = Field("cpu", description="DFT / reference single points.")
    training: str | None = Field("gpu", description="Ensemble members.")
    exploration: str | None = Field("gpu", description="MLIP-MD.")
    evaluation: str | None = Field("gpu", description="Test-set evaluation.")
    glue: str | None = Field("cpu", description="Light bookkeeping jobs.")
    controller: str | None = Field("cpu", description="The loop controller (decide).")

    def category(self, kind: str) -> str | None:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
        return getattr(self, kind)

    def categories(self) -> set[str]:
        return {getattr(self, k) for k in KINDS if getattr(self, k)}


def iter_jobs(obj: Job | Flow | list) -> list[Job]:
    """All jobs of a job, flow or list, depth first."""
    if isinstance(obj, Job):
        return [obj]
    items = obj.jobs if isinstance(obj, Flow) else obj
    out: list[Job] = []
    for item in items:
        out += iter_jobs(item)
    return out


def tag(
    obj: Job | Flow, kind: str, prefix: str | None = None, iteration: int | None = None
) -> None:
    """Mark every job of ``obj`` with ``kind`` and the loop ``iteration`` it belongs to
    (``active-mlip status`` reads both), and prefix its name, for the GUI."""
    for j in iter_jobs(obj):
        meta = {"kind": kind, **(j.metadata or {})}  # an inner maker's kind wins
        if iteration is not None:
            meta["iteration"] = int(iteration)
        j.metadata = meta
        if prefix and not j.name.startswith(prefix):
            j.name = f"{prefix} {j.name}"


def route(obj: Job | Flow, table: RoutingTable) -> None:
    """Set each job's FireWorks category from its kind.

    Jobs pass their own category to the jobs they create (a labelling job's per-frame
    DFT jobs stay on CPU nodes), except controllers, which route their children
    themselves.
    """
    for j in iter_jobs(obj):
        kind = (j.metadata or {}).get("kind", "glue")
        category = table.category(kind)
        config = dict(j.config.manager_config)
        config.pop("_category", None)
        if category:
            config["_category"] = category
        j.config.manager_config = config
        if kind == "controller":
            j.config.pass_manager_config = False
            j.config.response_manager_config = {}
        else:
            j.config.response_manager_config = dict(config)


def route_output_jobs(flow: Job | Flow, table: RoutingTable) -> None:
    """Route the ``store_inputs`` jobs jobflow inserts when a controller replaces itself.

    When a job returns ``Response(replace=flow)``, jobflow adds a ``store_inputs`` job
    that maps the replaced job's output to the new flow's. It gets its manager_config
    from the controller, which passes none (so as not to override its children's
    routing): left alone it would be uncategorised, and workers that pull only ``cpu``
    or ``gpu`` would never run it -- the loop would stall after each iteration. This
    registers, once on the submitted flow, a dynamic config update that gives every
    such job (in every later iteration too) the ``glue`` category.
    """

    category = table.category("glue")
    flow.update_config(
        {"manager_config": {"_category": category} if category else {}},
        function_filter=store_inputs,
        attributes="manager_config",
        dynamic=True,
    )
