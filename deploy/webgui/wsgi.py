"""WSGI entry of the FireWorks web GUI behind basic auth (``gunicorn wsgi:app``).

Self-contained (fireworks only), configured from the environment:
ACTIVE_MLIP_MONGO_URI, ACTIVE_MLIP_FW_DB (default: the URI's database, else
"fireworks"), ACTIVE_MLIP_WEBGUI_USERNAME / ACTIVE_MLIP_WEBGUI_PASSWORD (required),
FWAPP_SECRET_KEY (required with more than one gunicorn worker).
"""

import os

from fireworks import LaunchPad
from fireworks.flask_site.app import app
from pymongo.uri_parser import parse_uri

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
