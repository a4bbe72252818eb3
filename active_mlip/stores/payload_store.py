"""A file-backed store for big documents: montydb for the small fields, a file for the rest.

montydb has no indexes: every query and every upsert decodes every document of the
collection. The local data and cache stores hold frames, trajectories and model files
(a ``quick`` run: 86 data documents, 19 MB), so each lookup decoded all of them, and
job I/O reached 16 % of an iteration (``benchmarks/orchestration_overhead.py --preset
quick``). :class:`PayloadFileStore` writes the fields named in ``payload_fields``,
BSON-encoded, to ``<database_path>/<database_name>/<collection>.payload/`` -- one file
per document, named by the SHA-256 of its key, replaced atomically, written before its
document -- and the collection (montydb's sqlite file, read through
:class:`~active_mlip.stores.local_store.IndexedMontyStore`) keeps the rest with the file's name
and SHA-256, checked whenever the file is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
from monty.json import jsanitize

from active_mlip.core.blobs import CorruptArtifactError
from active_mlip.stores.local_store import IndexedMontyStore

#: Field of the montydb document that points at its payload file.
POINTER = "_payload"


class PayloadFileStore(IndexedMontyStore):
    """An :class:`~active_mlip.stores.local_store.IndexedMontyStore` whose bulky fields live in
    files of their own.

    Parameters
    ----------
    collection_name
        The montydb collection.
    payload_fields
        Top-level fields stored in the payload file (e.g. ``["data"]``).
    **kwargs
        Passed to :class:`~maggma.stores.MontyStore` (``database_path``, ``key``, ...).

    Notes
    -----
    Queries cannot filter on payload fields, and a projection on a payload field
    returns the whole top-level field. Documents written inline (by an older version)
    are read as they are.
    """

    def __init__(
        self,
        collection_name: str,
        payload_fields: list[str],
        database_path: str | None = None,
        database_name: str = "db",
        storage: str = "sqlite",
        storage_kwargs: dict | None = None,
        client_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        # every argument is an attribute of the same name: the store round-trips as_dict
        self.payload_fields = list(payload_fields)
        super().__init__(
            collection_name,
            database_path=database_path,
            database_name=database_name,
            storage=storage,  # type: ignore[arg-type]
            storage_kwargs=storage_kwargs,
            client_kwargs=client_kwargs,
            **kwargs,
        )

    @property
    def payload_dir(self) -> Path:
        """Where the payload files are."""
        return Path(self.database_path) / self.database_name / f"{self.collection_name}.payload"

    def update(self, docs: list[dict] | dict, key: list | str | None = None) -> None:
        """Write each document's payload file, then its montydb document."""
        docs = docs if isinstance(docs, list) else [docs]
        key = key or self.key
        small = []
        for d in docs:
            heavy = {f: d[f] for f in self.payload_fields if f in d}
            if not heavy:
                small.append(d)
                continue
            ident = [d[k] for k in key] if isinstance(key, list) else d[key]
            name = hashlib.sha256(repr(ident).encode()).hexdigest() + ".bson"
            raw = bson.encode(jsanitize(heavy, allow_bson=True))
            self.payload_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.payload_dir / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(raw)
            os.replace(tmp, self.payload_dir / name)
            pointer = {"file": name, "sha256": hashlib.sha256(raw).hexdigest()}
            small.append({**{k: v for k, v in d.items() if k not in heavy}, POINTER: pointer})
        super().update(small, key=key)

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
        """Query the small fields; load the payload fields asked for (all when no projection)."""
        wanted: set[str] | None = None
        if properties:
            names = list(properties)
            wanted = {n.split(".")[0] for n in names} & set(self.payload_fields)
            # The payload fields stay in the projection: a document written inline (by an
            # older version) holds them in montydb, with no pointer.
            properties = [n for n in names if n.split(".")[0] not in wanted] + sorted(wanted)
            properties += [POINTER] if wanted else []
        for doc in super().query(criteria, properties, sort, hint, skip, limit, **kwargs):
            pointer = doc.pop(POINTER, None)
            if pointer:
                heavy = self._read(pointer)
                doc.update({k: v for k, v in heavy.items() if wanted is None or k in wanted})
            yield doc

    def remove_docs(self, criteria: dict) -> None:
        """Remove the documents and their payload files."""
        files = [d[POINTER]["file"] for d in super().query(criteria, [POINTER]) if d.get(POINTER)]
        super().remove_docs(criteria)
        for name in files:
            (self.payload_dir / name).unlink(missing_ok=True)

    def _read(self, pointer: dict) -> dict:
        path = self.payload_dir / pointer["file"]
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise CorruptArtifactError(f"{str(path)!r} is missing (a stored payload)") from exc
        digest = hashlib.sha256(raw).hexdigest()
        if digest != pointer["sha256"]:
            raise CorruptArtifactError(
                f"{str(path)!r} is corrupted: its document records sha256 "
                f"{pointer['sha256'][:16]}…, the file has {digest[:16]}…"
            )
        return bson.decode(raw)
