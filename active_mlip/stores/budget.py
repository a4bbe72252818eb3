"""A label budget shared by the materials of a campaign (reference calculations are the cost).

The ledger lives next to the job documents (collection ``<docs collection>_ledger`` in
MongoDB or in the local montydb store), so every worker of a campaign draws from the
same pool. Two rules make it safe under concurrency and restarts:

- the pool counter moves by compare-and-swap (``update_one`` conditioned on the value
  read), so two materials drawing at once never both get the last labels;
- every draw is recorded under a key chosen by the caller (material, iteration, step):
  a job that is rerun after a crash gets the grant it had, instead of drawing again.

A crash between the two writes loses at most that draw's labels from the pool (the
budget is under-spent, never over-spent).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ConfigDict, Field

from active_mlip.core.documents import Document


class LabelBudget(Document):
    """A campaign-wide cap on reference labels."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Ledger name: the campaign's name.")
    total: int = Field(ge=1, description="Reference labels the whole campaign may use.")


def ledger_collection(store: Any) -> Any:
    """The ledger collection beside ``store``'s job documents (pymongo or montydb)."""
    docs = store.docs_store
    if getattr(docs, "_coll", None) is None:
        docs.connect()
    coll = docs._collection
    return coll.database[f"{docs.collection_name}_ledger"]


def draw(store: Any, budget: LabelBudget, key: str, n: int, force: bool = False) -> int:
    """Take up to ``n`` labels from the pool; return how many were granted.

    Parameters
    ----------
    store
        The job store (its docs store's database holds the ledger).
    budget
        The campaign's budget.
    key
        Identifies this draw (e.g. ``"CuI:it2:collect"``); drawing again with a key
        already drawn returns the recorded grant and takes nothing.
    n
        Labels wanted (>= 0).
    force
        Record ``n`` even if the pool is short (labels already spent, e.g. a material's
        initial data): the pool may go negative, later draws then get nothing.
    """
    if n < 0:
        raise ValueError(f"cannot draw a negative number of labels ({n})")
    coll = ledger_collection(store)
    charge_id = f"charge:{budget.name}:{key}"
    done = coll.find_one({"_id": charge_id})
    if done is not None:
        return int(done["granted"])
    pool_id = f"pool:{budget.name}"
    if coll.find_one({"_id": pool_id}) is None:
        try:
            coll.insert_one({"_id": pool_id, "used": 0, "total": budget.total})
        except Exception:  # another worker created it first (duplicate key)
            if coll.find_one({"_id": pool_id}) is None:
                raise
    granted = 0
    for _ in range(1000):
        used = int(coll.find_one({"_id": pool_id})["used"])
        granted = n if force else max(0, min(n, budget.total - used))
        if granted == 0:
            break
        res = coll.update_one({"_id": pool_id, "used": used}, {"$set": {"used": used + granted}})
        if res.modified_count == 1:
            break
    else:  # pragma: no cover - a thousand lost races
        raise RuntimeError(f"could not draw from label budget {budget.name!r}: too much contention")
    coll.insert_one(
        {"_id": charge_id, "requested": n, "granted": granted, "forced": force, "at": time.time()}
    )
    return granted


def used(store: Any, budget: LabelBudget) -> int:
    """Labels drawn from the pool so far."""
    doc = ledger_collection(store).find_one({"_id": f"pool:{budget.name}"})
    return int(doc["used"]) if doc else 0
