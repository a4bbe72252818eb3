"""Every ``ACTIVE_MLIP_*`` environment variable, read in one place (pydantic-settings).

Read afresh on each :func:`environment` call: a worker's environment decides where its
jobs store results, and tests change it. Credentials (the URI, the GUI password) never
appear in a repr.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "ACTIVE_MLIP_"
#: MongoDB URI (with credentials) of the job store and, unless a launchpad file is named,
#: of the FireWorks LaunchPad; never commit one.
MONGO_URI_ENV = PREFIX + "MONGO_URI"
#: Database of the job store (default: the store settings').
MONGO_DB_ENV = PREFIX + "MONGO_DB"
#: A YAML store file (``mongo_uri``, ``database``, ``prefix``), mode 600.
STORE_FILE_ENV = PREFIX + "STORE_FILE"
#: A launchpad YAML used instead of the URI for the LaunchPad.
LAUNCHPAD_ENV = PREFIX + "LAUNCHPAD"
#: The FireWorks database (default: the URI's, else "fireworks").
FW_DB_ENV = PREFIX + "FW_DB"
#: Web GUI basic-auth credentials.
WEBGUI_USER_ENV = PREFIX + "WEBGUI_USERNAME"
WEBGUI_PASSWORD_ENV = PREFIX + "WEBGUI_PASSWORD"
#: FireWorker YAMLs the routing check reads (``os.pathsep``-separated).
WORKERS_ENV = PREFIX + "WORKERS"
#: How MACE training is launched: "forkserver" (default) or "subprocess".
MACE_LAUNCH_ENV = PREFIX + "MACE_LAUNCH"


class Environment(BaseSettings):
    """The ``ACTIVE_MLIP_*`` variables; unset or empty ones are ``None``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    mongo_uri: str | None = Field(None, repr=False, description=MONGO_URI_ENV)
    mongo_db: str | None = Field(None, description=MONGO_DB_ENV)
    store_file: Path | None = Field(None, description=STORE_FILE_ENV)
    launchpad: Path | None = Field(None, description=LAUNCHPAD_ENV)
    fw_db: str | None = Field(None, description=FW_DB_ENV)
    webgui_username: str | None = Field(None, description=WEBGUI_USER_ENV)
    webgui_password: str | None = Field(None, repr=False, description=WEBGUI_PASSWORD_ENV)
    workers: str | None = Field(None, description=WORKERS_ENV)
    mace_launch: str | None = Field(None, description=MACE_LAUNCH_ENV)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v


def environment() -> Environment:
    """The ``ACTIVE_MLIP_*`` variables as they are now."""
    return Environment()
