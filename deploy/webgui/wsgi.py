"""WSGI entry of the FireWorks web GUI behind basic auth (``gunicorn wsgi:app``).

Self-contained (fireworks only), configured from the environment:
ACTIVE_MLIP_MONGO_URI, ACTIVE_MLIP_FW_DB (default: the URI's database, else
"fireworks"), ACTIVE_MLIP_WEBGUI_USERNAME / ACTIVE_MLIP_WEBGUI_PASSWORD (required),
FWAPP_SECRET_KEY (required with more than one gunicorn worker).

Like ``active-mlip webgui`` (active_mlip/app/workers.py, which this mirrors in brief):
every URL needs the credentials, and jQuery is served from a local copy
(``webgui_static/`` beside this file in the image, else the checkout's package copy)
instead of FireWorks' CDN link, so the workflow graph renders without internet.
"""

import hmac
import os
from pathlib import Path

from fireworks import LaunchPad
from fireworks.flask_site.app import app
from flask import Response, request, send_from_directory
from pymongo.uri_parser import parse_uri

JQUERY = "jquery-3.7.1.min.js"
HERE = Path(__file__).resolve().parent
STATIC = next(
    (
        d
        for d in (HERE / "webgui_static", HERE.parents[1] / "active_mlip" / "app" / "webgui_static")
        if (d / JQUERY).is_file()
    ),
    None,
)
if STATIC is None:
    raise SystemExit(f"no {JQUERY} in {HERE / 'webgui_static'} (see the Dockerfile)")

uri = os.environ["ACTIVE_MLIP_MONGO_URI"]
user = os.environ.get("ACTIVE_MLIP_WEBGUI_USERNAME")
password = os.environ.get("ACTIVE_MLIP_WEBGUI_PASSWORD")
if not (user and password):
    raise SystemExit("set ACTIVE_MLIP_WEBGUI_USERNAME and ACTIVE_MLIP_WEBGUI_PASSWORD")
name = (
    os.environ.get("ACTIVE_MLIP_FW_DB") or parse_uri(uri, validate=False)["database"] or "fireworks"
)
app.lp = LaunchPad(host=uri, uri_mode=True, name=name, strm_lvl="WARNING")
app.config["WEBGUI_USERNAME"] = user
app.config["WEBGUI_PASSWORD"] = password


def _authorised() -> bool:
    # from app.config, as FireWorks' own check and active-mlip's hooks read them
    want_user = app.config.get("WEBGUI_USERNAME") or ""
    want_password = app.config.get("WEBGUI_PASSWORD") or ""
    auth = request.authorization
    return bool(
        want_user
        and want_password
        and auth is not None
        and auth.type == "basic"
        and hmac.compare_digest((auth.username or "").encode(), want_user.encode())
        and hmac.compare_digest((auth.password or "").encode(), want_password.encode())
    )


def _require_auth():
    # FireWorks' own check skips static files and the report figures
    if not _authorised():
        return Response("Log in.\n", 401, {"WWW-Authenticate": 'Basic realm="active-mlip"'})
    return None


def _local_jquery(response):
    if response.status_code == 200 and response.mimetype == "text/html":
        html = response.get_data()
        if b"//code.jquery.com/jquery.min.js" in html:
            response.set_data(
                html.replace(b"//code.jquery.com/jquery.min.js", f"/_active_mlip/{JQUERY}".encode())
            )
    return response


# once per process (the app is FireWorks' module-level singleton; active-mlip's own
# webgui_app marks it the same way and installs the fuller set of hooks)
if not app.extensions.get("active_mlip_webgui"):
    app.extensions["active_mlip_webgui"] = True
    app.add_url_rule(
        "/_active_mlip/<path:filename>",
        "active_mlip_static",
        lambda filename: send_from_directory(STATIC, filename, max_age=3600),
    )
    app.before_request(_require_auth)
    app.after_request(_local_jquery)
