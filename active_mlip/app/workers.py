"""FireWorks workers (``rlaunch`` without a launchpad file) and the FireWorks web GUI."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from active_mlip.app.launchpad import load_launchpad
from active_mlip.app.status import PING_INTERVAL_S
from active_mlip.app.submit import workflow_query
from active_mlip.core import cpus
from active_mlip.core.environment import (
    MONGO_URI_ENV,
    WEBGUI_PASSWORD_ENV,
    WEBGUI_USER_ENV,
    environment,
)
from active_mlip.makers import mace_runner

if TYPE_CHECKING:
    from fireworks import LaunchPad
    from flask import Flask


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
    Thread pools are sized from the CPUs this process may use
    (:func:`active_mlip.core.cpus.configure_process`), and the log gets one line per event
    (:func:`worker_logging`). Training processes die with the worker
    (:mod:`active_mlip.makers.mace_runner`).
    """
    # FireWorks loads only for the commands that use it
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    lp = lp or load_launchpad()
    if not environment().mongo_uri:
        raise ValueError(f"workers need {MONGO_URI_ENV} for the job store (launchers/README.md)")
    # thread pools sized from the CPUs this worker may use, before a job loads torch
    cpus.configure_process()
    mace_runner.quiet_weights_only_warning()
    # FireWorks pings a running job hourly; every minute lets `status` tell a job whose
    # worker died within minutes (STALE_AFTER_S) instead of hours
    import fireworks.core.rocket as rocket

    rocket.PING_TIME_SECS = PING_INTERVAL_S
    with worker_logging():
        rapidfire(
            lp,
            FWorker.from_file(str(worker_file)),
            m_dir=str(launch_dir) if launch_dir else None,
            nlaunches=nlaunches,
            sleep_time=sleep_secs,
            timeout=timeout,
        )


@contextlib.contextmanager
def worker_logging() -> Iterator[None]:
    """One line per event in a worker's log, whatever the jobs do to the root logger.

    FireWorks' loggers print through stdout handlers of their own and also propagate to
    the root logger. That had no handler until a job called a module-level
    ``logging.info`` (MACE's calculator does on every model load), which runs
    :func:`logging.basicConfig`: from then on every FireWorks line appeared twice. The
    root gets one handler up front (``basicConfig`` then does nothing) that skips records
    a handler of their own logger already printed. Undone on exit.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_not_printed_below_root)
    added = not root.handlers  # a handler the caller configured stays in charge
    if added:
        root.addHandler(handler)
    try:
        yield
    finally:
        if added:
            root.removeHandler(handler)


def _not_printed_below_root(record: logging.LogRecord) -> bool:
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return False
        if not logger.propagate:
            break
        logger = logger.parent
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: URL prefix of the GUI's own assets (``active_mlip/app/webgui_static``).
STATIC_PREFIX = "/_active_mlip"
_STATIC_DIR = Path(__file__).with_name("webgui_static")
#: Where the GUI serves its packaged jQuery. FireWorks' workflow page loads jQuery from a
#: CDN: offline (many cluster login nodes) or behind a firewall the graph stays blank.
JQUERY_PATH = f"{STATIC_PREFIX}/jquery-3.7.1.min.js"
_CDN_JQUERY = b"//code.jquery.com/jquery.min.js"
# flat-ui.css imports Lato from Google Fonts: where packets are dropped, not refused, that
# render-blocking import stalls the page; the fallback fonts look the same to a reader
_CDN_FONTS = re.compile(rb"@import url\(\"?https://fonts\.googleapis\.com[^)]*\);?")
# the workflow page: wrapped node labels (wf_labels.js) in a taller drawing area
_WF_PAGE_HEAD = (
    "<style>#cy { height: 78vh; min-height: 500px; }</style>\n"
    f'<script type="text/javascript" src="{STATIC_PREFIX}/wf_labels.js"></script>\n</head>'
).encode()
_WF_TITLE = re.compile(rb'<h4 class="text-center">Workflow (\d+) </h4>')
#: User name of a generated one-time password.
ONE_TIME_USER = "active-mlip"


def webgui_credentials(
    host: str, username: str | None = None, password: str | None = None
) -> tuple[str, str, bool]:
    """Basic-auth credentials of the GUI: the configured pair, else a one-time password.

    Even on 127.0.0.1 other users of a shared login node reach the port, so the GUI never
    runs without credentials. A generated password is only offered on loopback (reached
    through an SSH tunnel); any other address needs configured credentials.

    Parameters
    ----------
    host
        Address the GUI will bind.
    username, password
        Configured credentials ($ACTIVE_MLIP_WEBGUI_USERNAME / _PASSWORD), or None.

    Returns
    -------
    tuple
        ``(username, password, generated)``; ``generated`` is True for a one-time password.

    Raises
    ------
    ValueError
        Only one of the pair is set, or ``host`` is not loopback and none is set.
    """
    if bool(username) != bool(password):
        raise ValueError(f"set both {WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}, or neither")
    if username and password:
        return username, password, False
    if not is_loopback(host):
        raise ValueError(
            f"refusing to serve the web GUI on {host} without authentication: set "
            f"{WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}, or use 127.0.0.1 and an SSH tunnel"
        )
    return ONE_TIME_USER, secrets.token_urlsafe(18), True


def webgui_app(
    lp: LaunchPad,
    username: str,
    password: str,
    campaign: str | None = None,
) -> Flask:
    """FireWorks' Flask web GUI on ``lp``: basic auth on every URL, no CDN assets.

    Parameters
    ----------
    lp
        The LaunchPad to show.
    username, password
        Basic-auth credentials (see :func:`webgui_credentials`); both required.
    campaign
        Show only this campaign's workflows.

    Returns
    -------
    flask.Flask
        FireWorks' app (a module-level singleton, so configured in place).
    """
    # FireWorks loads only for the commands that use it
    from fireworks.flask_site.app import app

    if not (username and password):
        raise ValueError(
            f"the web GUI needs credentials: set {WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}"
        )
    _install_hooks(app)
    app.lp = lp
    app.config["WEBGUI_USERNAME"] = username
    app.config["WEBGUI_PASSWORD"] = password
    app.BASE_Q_WF = workflow_query(campaign) if campaign else {}
    return app


def _install_hooks(app: Flask) -> None:
    # once per process: Flask refuses new hooks after the first request, and the app is
    # FireWorks' module-level singleton
    if app.extensions.get("active_mlip_webgui"):
        return
    app.extensions["active_mlip_webgui"] = True
    app.add_url_rule(f"{STATIC_PREFIX}/<path:filename>", "active_mlip_static", _serve_static)
    app.before_request(_require_auth)
    app.after_request(_offline_and_short_labels)


def _serve_static(filename: str) -> Any:
    from flask import send_from_directory

    return send_from_directory(_STATIC_DIR, filename, max_age=3600)


def _require_auth() -> Any:
    # FireWorks' own check skips static files and the report figures, and lets everyone in
    # when no credentials are configured; this guards every URL and compares in constant time
    from flask import Response, current_app, request

    user = current_app.config.get("WEBGUI_USERNAME") or ""
    password = current_app.config.get("WEBGUI_PASSWORD") or ""
    auth = request.authorization
    if (
        user
        and password
        and auth is not None
        and auth.type == "basic"
        and hmac.compare_digest((auth.username or "").encode(), user.encode())
        and hmac.compare_digest((auth.password or "").encode(), password.encode())
    ):
        return None
    return Response(
        "Log in with the web GUI's credentials.\n",
        401,
        {"WWW-Authenticate": 'Basic realm="active-mlip web GUI", charset="UTF-8"'},
    )


def _offline_and_short_labels(response: Any) -> Any:
    from flask import current_app, request

    if response.status_code != 200:
        return response
    if request.endpoint == "workflow_json" and request.view_args:
        # before the HTML case: FireWorks' jsonify sends its JSON as text/html
        _short_labels(response, current_app.lp, request.view_args["wf_id"])
    elif response.mimetype == "text/html":
        html = response.get_data().replace(_CDN_JQUERY, JQUERY_PATH.encode())
        if request.endpoint == "wf_details" and request.view_args:
            html = _workflow_page(html, current_app.lp, request.view_args["wf_id"])
        response.set_data(html)
    elif response.mimetype == "text/css" and request.endpoint == "static":
        response.direct_passthrough = False  # a file response: read it to rewrite it
        css = response.get_data()
        stripped = _CDN_FONTS.sub(b"", css)
        if stripped != css:
            response.set_data(stripped)
    return response


def _workflow_page(html: bytes, lp: LaunchPad, wf_id: int) -> bytes:
    # the heading names the workflow ("[campaign] material ..."): node labels leave the
    # material out, and FireWorks' heading shows only the id
    from markupsafe import escape

    wf = lp.workflows.find_one({"nodes": wf_id}, {"name": 1})
    if wf and wf.get("name"):
        name = str(escape(wf["name"]))
        html = _WF_TITLE.sub(
            lambda m: (
                f'<h4 class="text-center">{name} <small>workflow {int(m[1])}</small></h4>'.encode()
            ),
            html,
            count=1,
        )
    return html.replace(b"</head>", _WF_PAGE_HEAD, 1)


def _short_labels(response: Any, lp: LaunchPad, wf_id: int) -> None:
    # Node labels drop the material every firework name starts with (the page and the
    # workflow's name say it): a 25-firework graph fitted to the page is drawn at a small
    # zoom, and every character saved is width the layout can spend on scale.
    wf = lp.workflows.find_one({"nodes": wf_id}, {"metadata": 1})
    material = ((wf or {}).get("metadata") or {}).get("material")
    if not material:
        return
    graph = json.loads(response.get_data())
    for node in graph.get("nodes", []):
        data = node.get("data", {})
        name = data.get("name") or ""
        if name.startswith(f"{material} ") and len(name) > len(material) + 1:
            data["name"] = name[len(material) + 1 :]
            data["width"] = len(data["name"]) * 10  # FireWorks' own sizing
    response.set_data(json.dumps(graph))


def serve_webgui(app: Flask, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> None:
    """Serve the GUI with gunicorn; refuses an app without credentials (any address).

    Parameters
    ----------
    app
        The app of :func:`webgui_app`.
    host, port
        Address to bind.
    workers
        gunicorn workers; more than one needs ``FWAPP_SECRET_KEY`` (shared session key).
    """
    if not (app.config.get("WEBGUI_USERNAME") and app.config.get("WEBGUI_PASSWORD")):
        raise ValueError(
            f"refusing to serve the web GUI on {host} without authentication: set "
            f"{WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}"
        )
    # FireWorks loads only for the commands that use it
    from fireworks.flask_site.gunicorn import StandaloneApplication

    # One worker unless FWAPP_SECRET_KEY is set: each worker otherwise draws its own session key.
    StandaloneApplication(app, {"bind": f"{host}:{port}", "workers": workers}).run()
