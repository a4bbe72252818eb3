"""Compositions of the stage Makers: the loop and the campaigns (``active_mlip.workflows``).

:mod:`~active_mlip.workflows.active_learning` (the loop's Maker),
:mod:`~active_mlip.workflows.iteration` (one iteration and its controller jobs),
:mod:`~active_mlip.workflows.screening` (the screening Maker, campaign selection),
:mod:`~active_mlip.workflows.state`, :mod:`~active_mlip.workflows.policy`,
:mod:`~active_mlip.workflows.jobs`, :mod:`~active_mlip.workflows.settings`,
:mod:`~active_mlip.workflows.routing`, :mod:`~active_mlip.workflows.materials`,
:mod:`~active_mlip.workflows.campaign`. See docs/architecture.md.
"""

# Imported as a bare top-level "workflows" (from the repository root): refuse, or every
# module would exist twice, under two names.
if __name__ != "active_mlip.workflows":
    raise ImportError(
        "import active_mlip.workflows, not workflows: the folder installs as part of active_mlip "
        "(pip install -e .)"
    )
