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


def file_hash(path: Any, chunk: int = 1 << 20) -> str:
    """Return the SHA-256 hex digest of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _update_plain(h: Any, value: Any) -> None:
    """Feed a JSON-like value to ``h``; numeric (nested) lists go in as float64 bytes.

    Numeric lists (velocities, per-atom data) dominate ``info``; hashing their bytes is
    ~10x faster than their JSON text and as exact.
    """
    if isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(json.dumps(str(k)).encode() + b":")
            _update_plain(h, value[k])
        h.update(b"}")
    elif isinstance(value, list | tuple | np.ndarray):
        try:
            arr = np.asarray(value, dtype="float64")
        except (TypeError, ValueError):  # strings, dicts, ragged lists
            arr = None
        # Strings that parse as numbers or None (nan) hash like numbers: fine for an
        # integrity check, which needs equal hashes for equal content, not the converse.
        if arr is not None and arr.size:
            h.update(f"a{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
            return
        h.update(b"[")
        for x in value:
            _update_plain(h, x)
            h.update(b",")
        h.update(b"]")
    else:
        if isinstance(value, np.generic):
            value = value.item()
        h.update(json.dumps(value, default=str).encode() + b";")


def frame_content_hash(
    numbers: Any,
    positions: Any,
    cell: Any,
    pbc: Any,
    energy: float | None,
    forces: Any,
    stress: Any,
    info: dict[str, Any],
) -> str:
    """Return the SHA-256 of everything a frame holds, exactly (no rounding).

    Unlike :func:`structure_hash` (a cache key, tolerant to 1e-6 Å) this is an integrity
    check: any changed number, label or ``info`` entry changes it. Floats are hashed as
    float64 bytes, which survive JSON and BSON round trips unchanged.
    """
    h = hashlib.sha256(b"frame-v1")
    for name, values, dtype in (
        ("numbers", numbers, "int64"),
        ("positions", positions, "float64"),
        ("cell", cell, "float64"),
        ("pbc", pbc, "bool"),
        ("energy", energy, "float64"),
        ("forces", forces, "float64"),
        ("stress", stress, "float64"),
    ):
        if values is None:  # a missing label differs from any value
            h.update(f"|{name}:none".encode())
            continue
        arr = np.ascontiguousarray(np.asarray(values, dtype=dtype))
        h.update(f"|{name}:{arr.shape}".encode())
        h.update(arr.tobytes())
    h.update(b"|info:")
    _update_plain(h, info)
    return h.hexdigest()
