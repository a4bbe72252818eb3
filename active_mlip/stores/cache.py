"""Content-keyed results: the cache every labelling, training and exploration job shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from jobflow import CURRENT_JOB
from maggma.core import Store
from monty.json import jsanitize

T = TypeVar("T")


class ResultCache:
    """Content-keyed results shared by every job that sees the same JobStore.

    Parameters
    ----------
    store
        The ``cache`` additional store of a JobStore, or ``None`` to disable caching
        (then :meth:`get` always misses and :meth:`put` does nothing).
    """

    def __init__(self, store: Store | None):
        self.store = store

    @classmethod
    def from_current_job(cls) -> ResultCache:
        """The cache of the JobStore the running job was given (needs ``expose_store``)."""

        store = getattr(CURRENT_JOB, "store", None)
        cache = None if store is None else store.additional_stores.get("cache")
        return cls(cache)

    def _ensure(self) -> None:
        if self.store is not None and getattr(self.store, "_coll", None) is None:
            self.store.connect()

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the cached payload for ``key``, or ``None``."""
        if self.store is None:
            return None
        self._ensure()
        doc = self.store.query_one({"cache_key": key})
        return None if doc is None else doc.get("payload")

    def put(self, key: str, kind: str, payload: dict[str, Any]) -> None:
        """Store ``payload`` under ``key`` (idempotent: the same key is written once)."""
        if self.store is None:
            return
        self._ensure()

        doc = {"cache_key": key, "kind": kind, "payload": jsanitize(payload, strict=True)}
        self.store.update([doc], key="cache_key")

    def get_or_compute(
        self,
        key: str,
        kind: str,
        compute: Callable[[], T],
        load: Callable[[dict[str, Any]], T],
        dump: Callable[[T], dict[str, Any] | None],
    ) -> T:
        """The result stored under ``key`` (``load(payload)``), else ``compute()``'s.

        A computed result is stored (``dump(result)``; ``None``: not stored, e.g. a
        failure a rerun should retry) before it is returned, so an interrupted run never
        computes it again. The one cache-or-compute step of every stage whose result is
        keyed by content (labels, isolated-atom energies, relaxations, members,
        explorations).
        """
        payload = self.get(key)
        if payload is not None:
            return load(payload)
        result = compute()
        data = dump(result)
        if data is not None:
            self.put(key, kind, data)
        return result
