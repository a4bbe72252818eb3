"""Content hashes that key labels, trained members and stored artifacts.

A label is reused when the same structure was labelled with the same settings, so
both hashes must be stable across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from monty.json import jsanitize

#: Positions and cells are rounded to this many decimals (Å) before hashing, so that a
#: structure read back from extxyz or JSON hashes like the one that was written.
HASH_DECIMALS = 6


def _array_bytes(values: Any, dtype: str) -> bytes:
    arr = np.ascontiguousarray(np.asarray(values, dtype=dtype))
    if dtype == "float64":
        # +0.0 so that -0.0 and 0.0 hash alike after rounding.
        arr = np.round(arr, HASH_DECIMALS) + 0.0
    return arr.tobytes()


def structure_hash(numbers: Any, positions: Any, cell: Any, pbc: Any = (True, True, True)) -> str:
    """Return the SHA-256 of a structure's atomic numbers, positions, cell and pbc.

    Parameters
    ----------
    numbers
        Atomic numbers, shape (N,).
    positions
        Cartesian positions in Å, shape (N, 3).
    cell
        Lattice vectors in Å as rows, shape (3, 3).
    pbc
        Periodic boundary flags, shape (3,).

    Returns
    -------
    str
        Hex digest; equal for structures equal to within 1e-6 Å.
    """
    h = hashlib.sha256()
    h.update(_array_bytes(numbers, "int64"))
    h.update(_array_bytes(positions, "float64"))
    h.update(_array_bytes(cell, "float64"))
    h.update(_array_bytes(pbc, "bool"))
    return h.hexdigest()


def content_hash(obj: Any) -> str:
    """Return the SHA-256 of any JSON-serialisable (or MSONable/pydantic) object.

    Keys are sorted so that dictionaries hash independently of insertion order.
    """
    data = jsanitize(obj, strict=True, enum_values=True, allow_bson=False)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def bytes_hash(data: bytes) -> str:
    """Return the SHA-256 hex digest of raw bytes."""
    return hashlib.sha256(data).hexdigest()
