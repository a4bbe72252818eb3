"""Where results live: one place that builds the jobflow JobStore and the result cache.

The embedded default is file-backed (montydb on sqlite) under a work directory, so a
laptop run persists and resumes. Setting ``ACTIVE_MLIP_MONGO_URI`` (or ``mongo_uri``
in a store config file) switches the documents to MongoDB and the large objects
(frames, model files) to GridFS. Every JobStore has three parts:

``docs``
    job documents (jobflow's docs store) -- small: counts, metrics, references;
``data``
    large objects routed there by ``@job(data=...)``: frames, model files, logs;
``cache``
    content-keyed results (labels, trained members, explorations), written the moment
    each is computed so that an interrupted run never computes the same thing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from jobflow import JobStore
from jobflow.core import reference as jf_reference
from jobflow.core.reference import OnMissing
from maggma.core import Store
from maggma.stores import GridFSStore, MongoStore
from pydantic import Field
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from active_mlip.core.documents import Document
from active_mlip.core.environment import MONGO_URI_ENV, STORE_FILE_ENV, environment
from active_mlip.stores.mongo import read_private_yaml, uri_hosts


class StoreSettings(Document):
    """How to reach the job store."""

    local_path: Path | None = Field(
        None, description="Directory of the file-backed store (embedded default)."
    )
    mongo_uri: str | None = Field(
        None,
        description=f"MongoDB URI; taken from ${MONGO_URI_ENV}, else from the YAML file "
        f"named by ${STORE_FILE_ENV}, when unset.",
        repr=False,
    )
    database: str = Field("active_mlip", description="MongoDB database name.")
    prefix: str = Field("active_mlip", description="Prefix of collection names.")
    server_selection_timeout_ms: int | None = Field(
        None,
        gt=0,
        description="How long an operation waits for MongoDB before it fails (None: "
        "pymongo's 30 s). Local runs wait briefly and fail with a clear message.",
    )

    def resolved_uri(self) -> str | None:
        """The MongoDB URI in force, or ``None`` for the file-backed default."""
        env = environment()
        if self.mongo_uri or env.mongo_uri:
            return self.mongo_uri or env.mongo_uri
        if env.store_file:
            return read_private_yaml(env.store_file, "store").get("mongo_uri")
        return None


class BlobsFirstJobStore(JobStore):
    """A JobStore that writes a job's large objects before the document referring to them.

    jobflow writes the document first: a database lost between the two writes would
    leave a document pointing at objects that do not exist (a half-written output).
    In this order, a lost write leaves at most an unreferenced object, and a job
    document exists only once everything it refers to does.
    """

    def update(self, docs: Any, key: Any = None, save: Any = None) -> None:
        deferred: list[tuple[Any, Any]] = []
        docs_store = self.docs_store
        # JobStore.update calls docs_store.update once, then the additional stores:
        # hold the document back until the objects are written.
        docs_store.update = lambda d, key=None: deferred.append((d, key))
        try:
            super().update(docs, key=key, save=save)
        finally:
            del docs_store.update  # the instance attribute; the class method shows again
        for d, k in deferred:
            docs_store.update(d, key=k)

    #: False gives jobflow's own ``get_output`` (the "before" of the orchestration benchmark).
    skip_reference_walk: ClassVar[bool] = True

    def get_output(
        self,
        uuid: str,
        which: str | int = "last",
        load: Any = False,
        cache: dict[str, Any] | None = None,
        on_missing: OnMissing = OnMissing.ERROR,
    ) -> Any:
        """jobflow's ``get_output``, without walking an output that holds no reference.

        jobflow looks for output references in every output it returns by sanitising it
        and walking it in Python, twice (a cycle check, then the resolution). For a loop
        state or an ensemble with its frames that walk was most of a job's I/O (millions
        of calls per run of the ``quick`` loop, ``benchmarks/orchestration_overhead.py``).
        An output whose BSON does not contain the name ``OutputReference`` cannot hold
        one, and jobflow would return it unchanged: it is returned as it is.
        """
        one = isinstance(which, int) or which in {"last", "first"}
        if not (self.skip_reference_walk and one):
            return super().get_output(uuid, which, load, cache, on_missing)

        criteria: dict[str, Any] = {"uuid": uuid}
        if isinstance(which, int):
            criteria["index"] = which
        result = self.query_one(
            criteria=criteria,
            properties=["output"],
            sort={"index": -1 if which == "last" else 1},
            load=load,
        )
        if result is None:
            istr = f" (index: {which})" if isinstance(which, int) else ""
            raise ValueError(f"UUID: {uuid}{istr} has no outputs.")
        output = result["output"]
        if not may_hold_reference(output):
            return output
        if any(ref.uuid == uuid for ref in jf_reference.find_and_get_references(output)):
            raise RuntimeError("Reference cycle detected - aborting.")
        return jf_reference.find_and_resolve_references(
            output, self, cache=cache, on_missing=on_missing
        )


def may_hold_reference(obj: Any) -> bool:
    """Whether ``obj`` may contain a (serialised) jobflow ``OutputReference``.

    One C-speed BSON encoding and a substring search instead of a Python walk; anything
    that does not encode (objects, numpy arrays) counts as "may".
    """
    if obj is None or isinstance(obj, str | int | float | bool):
        return False
    # pymongo's bson only for a value that may hold a reference (rare)
    import bson
    from bson.errors import BSONError

    try:
        raw = bson.encode({"o": obj})
    except (BSONError, TypeError, ValueError, OverflowError):
        return True
    return b"OutputReference" in raw


def make_job_store(settings: StoreSettings) -> JobStore:
    """Build the JobStore (docs, ``data`` and ``cache``) that ``settings`` describe."""
    uri = settings.resolved_uri()
    p = settings.prefix
    if uri:
        db = environment().mongo_db or settings.database
        kw = {"database": db}
        if settings.server_selection_timeout_ms:
            kw["mongoclient_kwargs"] = {
                "serverSelectionTimeoutMS": settings.server_selection_timeout_ms
            }
        docs: Store = MongoStore.from_uri(uri, f"{p}_jobs", **kw)
        data: Store = GridFSStore.from_uri(uri, f"{p}_data", **kw)
        cache: Store = GridFSStore.from_uri(
            uri, f"{p}_cache", searchable_fields=["cache_key", "kind"], **kw
        )
    else:
        if settings.local_path is None:
            raise ValueError("StoreSettings needs local_path when no MongoDB URI is configured")
        # montydb loads only for the file-backed store
        from active_mlip.stores.local_store import IndexedMontyStore
        from active_mlip.stores.payload_store import PayloadFileStore

        path = Path(settings.local_path).resolve()
        path.mkdir(parents=True, exist_ok=True)
        kw: dict[str, Any] = {"database_path": str(path), "database_name": p, "storage": "sqlite"}
        docs = IndexedMontyStore(f"{p}_jobs", **kw)
        data = PayloadFileStore(f"{p}_data", ["data"], **kw)
        cache = PayloadFileStore(f"{p}_cache", ["payload"], key="cache_key", **kw)
    return BlobsFirstJobStore(docs, additional_stores={"data": data, "cache": cache})


def store_location(settings: StoreSettings) -> str:
    """Where the store lives, for messages: ``MongoDB database D at HOST`` or the path."""
    uri = settings.resolved_uri()
    if not uri:
        return f"the file store in {settings.local_path}"
    db = environment().mongo_db or settings.database
    return f"MongoDB database {db!r} at {uri_hosts(uri)}"


def store_unreachable(settings: StoreSettings, timeout_ms: int = 3000) -> str | None:
    """Why the MongoDB of ``settings`` cannot be reached now, or ``None`` (reachable, or
    the file-backed default)."""
    uri = settings.resolved_uri()
    if not uri:
        return None

    client = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        first = str(exc).split(",")[0].split("Timeout:")[0].strip()
        return first or type(exc).__name__
    finally:
        client.close()
    return None
