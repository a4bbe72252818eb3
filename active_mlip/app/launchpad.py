"""The FireWorks LaunchPad, built with credentials from the environment.

The LaunchPad is built from ``ACTIVE_MLIP_MONGO_URI`` (or from a launchpad YAML named by
``ACTIVE_MLIP_LAUNCHPAD``, refused when other users can read it and it holds a password)
by :func:`load_launchpad`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from active_mlip.core.environment import LAUNCHPAD_ENV, MONGO_URI_ENV, environment
from active_mlip.stores.mongo import (
    DEPLOY_HINT,
    check_connection,
    read_private_yaml,
    redact_uri,
    uri_hosts,
)

if TYPE_CHECKING:
    from fireworks import LaunchPad

#: Environment variable naming a launchpad YAML (used instead of the URI for the LaunchPad).
#: Environment variable naming the FireWorks database (default: the URI's, else "fireworks").


def check_launchpad_file(path: str | Path) -> dict[str, Any]:
    """Read a launchpad YAML; refuse one that others can read when it holds a password.

    Raises
    ------
    InsecureConfigError
        If the file is readable by group or others and holds a password (a
        ``password:`` key or a URI with ``user:password@``).
    ValueError
        If the file is missing or not a mapping.
    """
    return read_private_yaml(path, "launchpad")


def launchpad_from_uri(uri: str, timeout_ms: int = 5000) -> LaunchPad:
    """A LaunchPad on ``uri``; database from the URI path, ${FW_DB_ENV} or "fireworks"."""
    # FireWorks loads only for the commands that use it
    from fireworks import LaunchPad
    from pymongo.uri_parser import parse_uri

    try:
        db = parse_uri(uri, validate=False).get("database")
    except Exception as exc:  # pymongo raises InvalidURI / ConfigurationError
        raise ValueError(f"invalid MongoDB URI {redact_uri(uri)!r}: {exc}") from exc
    db = environment().fw_db or db or "fireworks"
    return LaunchPad(
        host=uri,
        uri_mode=True,
        name=db,
        mongoclient_kwargs={"serverSelectionTimeoutMS": timeout_ms},
        strm_lvl="WARNING",
    )


def load_launchpad(
    path: str | Path | None = None,
    uri: str | None = None,
    timeout_ms: int = 5000,
    ping: bool = True,
) -> LaunchPad:
    """The configured LaunchPad, with credentials from the environment.

    Order: ``path``, ``uri``, ``$ACTIVE_MLIP_LAUNCHPAD`` (a launchpad YAML), then
    ``$ACTIVE_MLIP_MONGO_URI``.

    Raises
    ------
    ValueError
        Nothing configured, or a bad file/URI.
    InsecureConfigError
        A launchpad file with a password that others can read.
    DatabaseUnreachableError
        When ``ping`` and the server does not answer within ``timeout_ms``.
    """
    # FireWorks loads only for the commands that use it
    from fireworks import LaunchPad

    env = environment()
    path = path or (None if uri else env.launchpad)
    uri = uri or env.mongo_uri
    if path:
        data = check_launchpad_file(path)
        kwargs = dict(data.get("mongoclient_kwargs") or {})
        kwargs.setdefault("serverSelectionTimeoutMS", timeout_ms)
        try:
            lp = LaunchPad.from_dict({**data, "mongoclient_kwargs": kwargs})
        except (KeyError, TypeError) as exc:  # FireWorks: KeyError('host') for a missing key
            raise ValueError(
                f"launchpad file {path} lacks the key {exc}; copy the keys from "
                "launchers/launchpad.yaml.example (host, port, name, username, password)"
            ) from exc
        where = (
            uri_hosts(str(lp.host)) if lp.uri_mode else f"{lp.host}:{lp.port}"
        ) + f" (from {path})"
    elif uri:
        lp = launchpad_from_uri(uri, timeout_ms)
        where = uri_hosts(uri)
    else:
        raise ValueError(
            f"no database configured: set {MONGO_URI_ENV} (a MongoDB URI) or {LAUNCHPAD_ENV} "
            f"(a launchpad YAML). {DEPLOY_HINT}"
        )
    if ping:
        check_connection(lp.connection, where)
    return lp


def ensure_initialized(lp: LaunchPad) -> None:
    """Initialise an empty FireWorks database (ids and indexes); never deletes anything."""
    if lp.fw_id_assigner.find_one({}) is not None:
        return
    if lp.fireworks.count_documents({}) or lp.workflows.count_documents({}):
        raise RuntimeError(
            f"FireWorks database {lp.name!r} holds fireworks but no id counter; repair it "
            "(e.g. restore a backup, deploy/README.md) before submitting"
        )
    lp._restart_ids(1, 1)
    lp.tuneup()
