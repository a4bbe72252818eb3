"""A flow that replaces a running job, with the job jobflow adds to it named.

When a job returns ``Response(replace=flow)``, jobflow adds to ``flow`` a job named just
``store_inputs`` (it maps the replaced job's output to the flow's): every iteration and
every DFT labelling batch then showed an unattributed ``store_inputs`` firework in the
web GUI and in ``lpad``. :func:`replacement` names it after the job it stands for. It is
here, in the lowest layer, because both the loop (``workflows``) and the DFT labelling
(``makers``) replace jobs.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobflow import Flow, Job


class _ReplacementFlow(Flow):
    """A flow replacing a running job; it names the output job jobflow adds to it."""

    def add_jobs(self, jobs: Job | Flow | Sequence[Job | Flow]) -> None:
        super().add_jobs(jobs)
        # jobflow's prepare_replace adds the job while the replaced one runs
        from jobflow import CURRENT_JOB

        for j in jobs if isinstance(jobs, list | tuple) else [jobs]:
            if isinstance(j, Job) and j.name == "store_inputs":
                replaced = CURRENT_JOB.job.name if CURRENT_JOB.job is not None else self.name
                j.name = f"{replaced} output"


def replacement(flow: Flow) -> Flow:
    """``flow`` ready for ``Response(replace=...)``, with every firework it brings named.

    Returned through this, the ``store_inputs`` job jobflow adds is named after the job
    it stands for (``"CuI it0 decide output"``).

    The result is ``flow`` itself in all but its class (same uuid, jobs, output).
    """
    return _ReplacementFlow(
        list(flow.jobs),  # their host is this uuid, so they move over unchanged
        output=flow.output,
        name=flow.name,
        order=flow.order,
        uuid=flow.uuid,
        hosts=flow.hosts,
        metadata=flow.metadata,
        metadata_updates=flow.metadata_updates,
    )
