"""Compositions of the stage Makers: the active-learning loop and the campaigns."""

# Imported as a bare top-level "workflows" (from the repository root): refuse, or every
# module would exist twice, under two names.
if __name__ != "active_mlip.workflows":
    raise ImportError(
        "import active_mlip.workflows, not workflows: the folder installs as part of active_mlip "
        "(pip install -e .)"
    )
