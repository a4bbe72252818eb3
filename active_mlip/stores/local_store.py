"""The local stores' engine: montydb's sqlite files, read from memory through an index.

montydb keeps a collection as one sqlite table of (id, BSON document) rows. It answers
every query, and every upsert, by decoding and filtering every document of the
collection, and it opens a new sqlite connection for each operation. A local run makes
about 26 store queries per job (jobflow resolving references, the jobs' own reads), so
the cost grows with the store: in the ``quick`` preset's train-only last iteration job
I/O was 2.5 s of 36.7 s (``benchmarks/orchestration_overhead.py``).

:class:`IndexedMontyStore` keeps montydb's files and their format, so a store written by
an older version reads as it is and montydb (or an older version) reads ours. It

- keeps one sqlite connection;
- holds every document's BSON in memory, with an index of the top-level fields that
  queries compare by equality (built on first use: jobflow's ``uuid``, ``blob_uuid``,
  the cache's ``cache_key``), so a lookup decodes and filters only its candidates;
- upserts by the id it already knows instead of scanning for it;
- notices commits made by any other connection (another process, or montydb itself) by
  sqlite's ``PRAGMA data_version``, and then reloads.

Matching, sorting and projecting are montydb's own (its ``QueryFilter``, ``ordering`` and
``Projector``, applied as its cursor applies them), so the index only narrows which
documents they see. Queries it cannot narrow (no top-level equality or ``$in`` on a
string or integer) scan the in-memory documents the same way.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from maggma.stores import MontyStore
from monty.json import jsanitize

#: montydb's table and file layout (montydb.storage.sqlite), which this store shares.
TABLE = "documents"
COLLECTION_EXT = ".collection"
_CREATE = f"CREATE TABLE IF NOT EXISTS [{TABLE}](k text NOT NULL, v text NOT NULL, PRIMARY KEY(k))"


_NULL = ("null",)


def _indexable(value: Any) -> bool:
    """Whether equality with ``value`` can be answered from a hash index.

    Strings and integers only: Mongo's equality also matches array elements and treats
    NaN as equal to NaN, and booleans are not numbers; those go to the scan.
    """
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _index_key(value: Any) -> Any:
    """The index entry of a stored value, or ``None`` when the document must always be a
    candidate (arrays and documents, whose elements equality also matches; other types).

    Entries may collide (True with 1, 2 with 2.0): the index only narrows, and montydb's
    filter decides on the candidates.
    """
    if value is None:  # null or missing: never equal to a string or an integer
        return _NULL
    return value if isinstance(value, str | int | float) else None


class IndexedMontyStore(MontyStore):
    """A :class:`~maggma.stores.MontyStore` (sqlite) that answers from memory.

    Same constructor and on-disk format as :class:`~maggma.stores.MontyStore`. One
    process should write a store at a time, as with montydb; readers in other processes
    see every committed write.
    """

    #: False gives montydb's own behaviour (the "before" of the orchestration benchmark).
    indexed: ClassVar[bool] = True

    def __init__(
        self,
        collection_name: str,
        database_path: str | None = None,
        database_name: str = "db",
        storage: str = "sqlite",
        storage_kwargs: dict | None = None,
        client_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        # the same arguments as MontyStore's, kept as attributes: as_dict round-trips
        if storage != "sqlite":
            raise ValueError(f"IndexedMontyStore reads montydb's sqlite files, not {storage!r}")
        super().__init__(
            collection_name,
            database_path=database_path,
            database_name=database_name,
            storage=storage,  # type: ignore[arg-type]
            storage_kwargs=storage_kwargs,
            client_kwargs=client_kwargs,
            **kwargs,
        )
        self._db: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()
        self._raw: dict[bytes, bytes] = {}  # montydb row key -> BSON document, in row order
        self._index: dict[str, dict[Any, set[bytes]]] = {}  # field -> value -> row keys
        self._loose: dict[str, set[bytes]] = {}  # field -> rows that are always candidates
        self._values: dict[bytes, dict[str, Any]] = {}  # row key -> indexed field -> entry
        self._version: int | None = None

    # -- connection and mirror ----------------------------------------------------------
    @property
    def collection_file(self) -> Path:
        """The sqlite file montydb keeps this collection in."""
        return (
            Path(self.database_path) / self.database_name / (self.collection_name + COLLECTION_EXT)
        )

    def connect(self, force_reset: bool = False) -> None:
        """Connect montydb (for what this class leaves to it) and load the documents."""
        super().connect(force_reset=force_reset)
        if self.indexed and (force_reset or self._db is None):
            with self._lock:
                self._open()

    def close(self) -> None:
        """Close montydb's client and this store's connection."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None
            self._raw, self._index, self._loose, self._values = {}, {}, {}, {}
        if self._coll is not None:
            super().close()

    def _open(self) -> None:
        if self._db is not None and self._pid == os.getpid():
            self._db.close()  # a reconnect (force_reset)
        path = self.collection_file
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: every use goes through self._lock.
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._pid = os.getpid()
        self._db.execute("PRAGMA journal_mode=WAL")  # montydb's default for sqlite
        with self._db:
            self._db.execute(_CREATE)
        self._load()

    def _load(self) -> None:
        assert self._db is not None
        self._version = self._data_version()
        rows = self._db.execute(f"SELECT k, v FROM [{TABLE}]").fetchall()
        self._raw = {k: bytes(v) for k, v in rows}
        self._index, self._loose, self._values = {}, {}, {}

    def _data_version(self) -> int:
        assert self._db is not None
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def _sync(self) -> None:
        """Open on first use (or in a forked child); reload after another connection's commit."""
        self._collection  # noqa: B018 -- raises StoreError, as MontyStore does, before connect
        if self._db is None or self._pid != os.getpid():
            self._open()  # a forked child never uses its parent's connection
        elif self._data_version() != self._version:
            self._load()

    # -- encoding (montydb's, with the collection's codec options) ----------------------
    def _codec(self) -> Any:
        return self._collection.codec_options

    def _decode(self, raw: bytes) -> dict:
        # montydb's internals load only when the local store is used
        from montydb.types import bson

        return bson.document_decode(raw, codec_options=self._codec())

    def _encode(self, doc: dict) -> bytes:
        # montydb's internals load only when the local store is used
        from montydb.types import bson

        return bson.document_encode(doc, check_keys=False, codec_options=self._codec())

    @staticmethod
    def _row_key(_id: Any) -> bytes:
        # montydb's internals load only when the local store is used
        from montydb.types import bson

        return bson.id_encode(_id)

    # -- the index ------------------------------------------------------------------------
    def _field_index(self, field: str) -> tuple[dict[Any, set[bytes]], set[bytes]]:
        if field not in self._index:
            index: dict[Any, set[bytes]] = {}
            loose: set[bytes] = set()
            for k, raw in self._raw.items():
                self._enter(field, k, self._decode(raw), index, loose)
            self._index[field], self._loose[field] = index, loose
        return self._index[field], self._loose[field]

    def _enter(
        self, field: str, k: bytes, doc: dict, index: dict[Any, set[bytes]], loose: set[bytes]
    ) -> None:
        entry = _index_key(doc.get(field))
        self._values.setdefault(k, {})[field] = entry
        (loose if entry is None else index.setdefault(entry, set())).add(k)

    def _forget(self, k: bytes) -> None:
        for field, entry in self._values.pop(k, {}).items():
            if entry is None:
                self._loose[field].discard(k)
            else:
                self._index[field].get(entry, set()).discard(k)

    def _candidates(self, criteria: dict) -> list[bytes] | None:
        """Row keys of the documents that can match ``criteria``, in row order; ``None``
        when no top-level equality or ``$in`` narrows them."""
        best: set[bytes] | None = None
        for field, cond in criteria.items():
            if field.startswith("$") or "." in field:
                continue
            if isinstance(cond, dict):
                if set(cond) != {"$in"} or not isinstance(cond["$in"], list | tuple):
                    continue
                values = list(cond["$in"])
            else:
                values = [cond]
            if not all(_indexable(v) for v in values):
                continue
            index, loose = self._field_index(field)
            found = set(loose)
            for v in values:
                found |= index.get(v, set())
            best = found if best is None else best & found
        if best is None:
            return None
        return [k for k in self._raw if k in best] if len(best) > 1 else list(best)

    # -- montydb's query pipeline over the candidates --------------------------------------
    def _find(
        self,
        criteria: dict | None,
        properties: dict | None = None,
        sort: list[tuple[str, int]] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> list[dict]:
        # montydb's internals load only when the local store is used
        from montydb.engine.project import Projector
        from montydb.engine.queries import QueryFilter, ordering

        criteria = criteria or {}
        keys = self._candidates(criteria)
        keys = list(self._raw) if keys is None else keys
        queryfilter = QueryFilter(criteria)
        projector = Projector(properties, queryfilter) if properties else None
        walkers = []
        for k in keys:
            if queryfilter(self._decode(self._raw[k])):
                walkers.append(queryfilter.fieldwalker)
        if sort:
            walkers = ordering(walkers, dict(sort))
        if skip < 0:
            raise ValueError(f"skip must be non-negative, got {skip}")
        walkers = walkers[skip : skip + abs(limit)] if limit else walkers[skip:]
        if projector:
            for fw in walkers:
                projector(fw)
        return [fw.doc for fw in walkers]

    def query(  # type: ignore[override]
        self,
        criteria: dict | None = None,
        properties: dict | list | None = None,
        sort: dict | None = None,
        hint: dict | None = None,
        skip: int = 0,
        limit: int = 0,
        **kwargs: Any,
    ) -> Iterator[dict]:
        """Query as :meth:`MontyStore.query` does, from memory."""
        if not self.indexed or hint or kwargs:
            yield from super().query(criteria, properties, sort, hint, skip, limit, **kwargs)
            return
        if isinstance(properties, list | tuple):
            properties = {p: 1 for p in properties}
        order = sort or self.default_sort
        sort_list = [(k, getattr(v, "value", v)) for k, v in order.items()] if order else None
        with self._lock:
            self._sync()
            docs = self._find(criteria, properties, sort_list, skip, limit)
        yield from docs

    def count(self, criteria: dict | None = None, hint: dict | None = None) -> int:
        """Number of documents matching ``criteria``."""
        if not self.indexed or hint:
            return super().count(criteria, hint)
        with self._lock:
            self._sync()
            if not criteria:
                return len(self._raw)
            return len(self._find(criteria, {"_id": 1}))

    # -- writes ---------------------------------------------------------------------------
    def update(self, docs: list[dict] | dict, key: list | str | None = None) -> None:
        """Upsert ``docs`` by ``key`` (the store's key by default) in one transaction."""
        if not self.indexed:
            super().update(docs, key)
            return
        # montydb's internals load only when the local store is used
        import bson
        from montydb.base import validate_ok_for_replace

        docs = docs if isinstance(docs, list) else [docs]
        key = key or self.key
        fields = key if isinstance(key, list) else [key]
        with self._lock:
            self._sync()
            assert self._db is not None
            writes: list[tuple[bytes, bytes, bool]] = []
            try:
                for d in docs:
                    d = jsanitize(d, allow_bson=True)
                    if self.validator and not self.validator.is_valid(d):
                        if self.validator.strict:
                            raise ValueError(self.validator.validation_errors(d))
                        self.logger.error(self.validator.validation_errors(d))
                        continue
                    validate_ok_for_replace(d)
                    match = self._find({f: d[f] for f in fields}, {"_id": 1}, limit=1)
                    if match:
                        d["_id"] = match[0]["_id"]
                    elif "_id" not in d:
                        d["_id"] = bson.ObjectId()
                    k = self._row_key(d["_id"])
                    raw = self._encode(d)
                    if self._raw.get(k) != raw:
                        writes.append((k, raw, k in self._raw))
                        self._stage(k, raw, d)  # later documents of the batch see it
                with self._db:  # one transaction: the whole batch or nothing
                    for k, raw, existed in writes:
                        if existed:
                            self._db.execute(f"UPDATE [{TABLE}] SET v = ? WHERE k = ?", (raw, k))
                        else:
                            self._db.execute(f"INSERT INTO [{TABLE}](k, v) VALUES (?, ?)", (k, raw))
            except BaseException:
                self._load()  # the mirror may hold staged documents: read back what is stored
                raise

    def _stage(self, k: bytes, raw: bytes, doc: dict) -> None:
        self._forget(k)
        self._raw[k] = raw
        for field in self._index:
            self._enter(field, k, doc, self._index[field], self._loose[field])

    def remove_docs(self, criteria: dict) -> None:
        """Remove the documents matching ``criteria``."""
        if not self.indexed:
            super().remove_docs(criteria)
            return
        with self._lock:
            self._sync()
            assert self._db is not None
            keys = [self._row_key(d["_id"]) for d in self._find(criteria, {"_id": 1})]
            with self._db:
                self._db.executemany(f"DELETE FROM [{TABLE}] WHERE k = ?", [(k,) for k in keys])
            for k in keys:
                self._forget(k)
                self._raw.pop(k, None)
