"""FireWorks workers (``rlaunch`` without a launchpad file) and the FireWorks web GUI."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.submit import workflow_query
from active_mlip.core.environment import (
    MONGO_URI_ENV,
    WEBGUI_PASSWORD_ENV,
    WEBGUI_USER_ENV,
    environment,
)

if TYPE_CHECKING:
    from fireworks import LaunchPad

#: Web GUI basic-auth credentials.


def run_worker(
    worker_file: str | Path,
    lp: LaunchPad | None = None,
    nlaunches: int = 0,
    sleep_secs: int = 10,
    timeout: int | None = None,
    launch_dir: str | Path | None = None,
) -> None:
    """``rlaunch rapidfire`` with the LaunchPad from the environment (no launchpad file).

    ``nlaunches``: 0 = until nothing is ready, -1 = keep polling (stop with ``timeout``).
    """
    # FireWorks loads only for the commands that use it
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    lp = lp or load_launchpad()
    if not environment().mongo_uri:
        raise ValueError(f"workers need {MONGO_URI_ENV} for the job store (launchers/README.md)")
    rapidfire(
        lp,
        FWorker.from_file(str(worker_file)),
        m_dir=str(launch_dir) if launch_dir else None,
        nlaunches=nlaunches,
        sleep_time=sleep_secs,
        timeout=timeout,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webgui_app(
    lp: LaunchPad,
    username: str | None = None,
    password: str | None = None,
    campaign: str | None = None,
) -> Any:
    """FireWorks' Flask web GUI on ``lp``, behind basic auth when credentials are given."""
    # FireWorks loads only for the commands that use it
    from fireworks.flask_site.app import app

    if bool(username) != bool(password):
        raise ValueError(f"set both {WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}, or neither")
    app.lp = lp
    app.config["WEBGUI_USERNAME"] = username or None
    app.config["WEBGUI_PASSWORD"] = password or None
    app.BASE_Q_WF = workflow_query(campaign) if campaign else {}
    return app


def serve_webgui(app: Any, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> None:
    """Serve the GUI with gunicorn; a non-loopback address needs credentials."""
    if not is_loopback(host) and not app.config.get("WEBGUI_USERNAME"):
        raise ValueError(
            f"refusing to serve the web GUI on {host} without authentication: set "
            f"{WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}, or use 127.0.0.1 and an SSH tunnel"
        )
    # FireWorks loads only for the commands that use it
    from fireworks.flask_site.gunicorn import StandaloneApplication

    # One worker unless FWAPP_SECRET_KEY is set: each worker otherwise draws its own session key.
    StandaloneApplication(app, {"bind": f"{host}:{port}", "workers": workers}).run()
