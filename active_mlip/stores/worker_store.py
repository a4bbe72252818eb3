"""The job store a Firework carries: serialised without credentials, built on the worker.

Every Firework carries an :class:`EnvJobStore`, which serialises to the database and
collection prefix only; each worker builds the real store (MongoDB documents + GridFS
data and cache, :func:`active_mlip.stores.job_store.make_job_store`) from its own
``ACTIVE_MLIP_MONGO_URI`` when the job runs.
"""

from __future__ import annotations

from typing import Any

from jobflow import JobStore
from maggma.stores import MemoryStore
from pymongo import MongoClient

from active_mlip.stores.job_store import BlobsFirstJobStore, StoreSettings, make_job_store
from active_mlip.stores.mongo import (
    DEPLOY_HINT,
    MONGO_URI_ENV,
    check_connection,
    uri_hosts,
)


class EnvJobStore(BlobsFirstJobStore):
    """A JobStore that serialises without credentials and connects from the environment.

    Firework specs hold ``{"@class": "EnvJobStore", "database": ..., "prefix": ...}``;
    the worker that runs a job builds MongoDB docs + GridFS ``data``/``cache`` from its own
    ``ACTIVE_MLIP_MONGO_URI`` (``ACTIVE_MLIP_MONGO_DB`` overrides the database).
    """

    def __init__(self, database: str = "active_mlip", prefix: str = "active_mlip", **_: Any):
        self.settings = StoreSettings(database=database, prefix=prefix)
        self.configured = self.settings.resolved_uri() is not None
        if self.configured:
            built = make_job_store(self.settings)
            docs, extra = built.docs_store, built.additional_stores
        else:  # built anywhere (GUI, rerun), usable only where the URI is set
            docs, extra = MemoryStore("unconfigured"), {}
        super().__init__(docs, additional_stores=extra)

    def connect(self, force_reset: bool = False) -> None:
        if not self.configured:
            raise RuntimeError(
                f"this worker has no job store: set {MONGO_URI_ENV} in the worker's environment "
                "(see launchers/README.md)"
            )
        super().connect(force_reset=force_reset)

    def as_dict(self) -> dict[str, Any]:
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "database": self.settings.database,
            "prefix": self.settings.prefix,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvJobStore:
        return cls(database=d.get("database", "active_mlip"), prefix=d.get("prefix", "active_mlip"))


def client_job_store(timeout_ms: int = 5000) -> JobStore:
    """The campaign's JobStore for commands run here (status); needs ${MONGO_URI_ENV}."""
    settings = StoreSettings()
    uri = settings.resolved_uri()
    if not uri:
        raise ValueError(f"set {MONGO_URI_ENV} to read job outputs. {DEPLOY_HINT}")
    store = make_job_store(settings)

    client = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
    try:
        check_connection(client, uri_hosts(uri))
    finally:
        client.close()
    store.connect()
    return store
