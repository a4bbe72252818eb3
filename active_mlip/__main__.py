"""``python -m active_mlip``: the same as the ``active-mlip`` command."""

from active_mlip.app.cli import app

app()
