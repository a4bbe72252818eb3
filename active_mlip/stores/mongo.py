"""MongoDB plumbing: URIs in messages without passwords, pings, private config files."""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from pymongo.errors import OperationFailure, PyMongoError

from active_mlip.core.environment import MONGO_URI_ENV

logger = logging.getLogger(__name__)

DEPLOY_HINT = (
    "Start one with `docker compose -f deploy/compose.yaml --env-file deploy/.env up -d` "
    "(or see deploy/README.md for bare-metal) and export "
    f"{MONGO_URI_ENV}=mongodb://USER:PASSWORD@HOST:27017/?authSource=admin"
)


def redact_uri(uri: str) -> str:
    """``uri`` without its password (for messages)."""
    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def uri_hosts(uri: str) -> str:
    """The host list of a MongoDB URI, as ``host:port[,host:port]``."""
    m = re.match(r"mongodb(?:\+srv)?://(?:[^@/]*@)?([^/?]+)", uri)
    return m.group(1) if m else uri


def check_connection(client: Any, where: str) -> None:
    """Ping a MongoClient; raise :class:`DatabaseUnreachableError` naming ``where``."""

    try:
        client.admin.command("ping")
    except OperationFailure as exc:
        raise DatabaseUnreachableError(
            f"MongoDB at {where} refused the request ({exc.details or exc}); check the user "
            f"and password in {MONGO_URI_ENV} and authSource (admin for the root user)"
        ) from exc
    except PyMongoError as exc:
        # pymongo's message: "host:port: [Errno 111] Connection refused (configured
        # timeouts: ...), Timeout: ..., Topology Description: ..." -- keep the first reason
        first = re.sub(r"\s*\(configured timeouts.*", "", str(exc), flags=re.S)
        first = first.split(", Timeout:")[0].split("Timeout:")[0].strip().rstrip(",")
        raise DatabaseUnreachableError(
            f"cannot reach MongoDB at {where}: {first or type(exc).__name__}. {DEPLOY_HINT}"
        ) from exc


class InsecureConfigError(ValueError):
    """A configuration file with a password is readable by other users."""


class DatabaseUnreachableError(RuntimeError):
    """MongoDB cannot be reached (or refuses the credentials)."""


def read_private_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML mapping; refuse it when it holds a password others can read.

    A password counts when a ``password`` key is set or a ``host``/``mongo_uri`` value
    is a URI with ``user:password@``.

    Raises
    ------
    InsecureConfigError
        If group or others can read a file holding a password.
    ValueError
        If the file is missing or not a mapping.
    """

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{what} file {path} is not valid YAML ({exc}); fix or replace it"
        ) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} is not a mapping")
    uris = " ".join(str(data.get(k) or "") for k in ("host", "mongo_uri"))
    has_password = bool(data.get("password")) or bool(re.search(r"://[^/@:]+:[^@/]+@", uris))
    mode = path.stat().st_mode
    if has_password and mode & (stat.S_IRGRP | stat.S_IROTH):
        raise InsecureConfigError(
            f"refusing {what} file {path}: it holds a password and is readable by other "
            f"users (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    return data
