"""Built-in materials, named by formula, and reading user structure files.

Every structure is built from its space group and Wyckoff positions with pymatgen, so
the numbers below are the whole definition. Lattice parameters are experimental
room-temperature values.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure


def _zincblende(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup(
        "F-43m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )


def _chalcopyrite(a: float, c: float, x: float, a1: str, b3: str, x6: str) -> Structure:
    return Structure.from_spacegroup(
        "I-42d",
        Lattice.tetragonal(a, c),
        [a1, b3, x6],
        [[0, 0, 0], [0, 0, 0.5], [x, 0.25, 0.125]],
    )


#: name -> (builder of the conventional cell, default supercell, source of the numbers)
BUILTIN: dict[str, tuple[Callable[[], Structure], tuple[int, int, int], str]] = {
    "CuI": (
        lambda: _zincblende(6.054, "Cu", "I"),
        (2, 2, 2),
        "gamma-CuI, zincblende F-43m, a = 6.054 A (experiment, room temperature)",
    ),
    "AgGaSe2": (
        lambda: _chalcopyrite(5.992, 10.886, 0.27, "Ag", "Ga", "Se"),
        (2, 2, 1),
        "AgGaSe2 chalcopyrite I-42d, a = 5.992 A, c = 10.886 A, Se x = 0.27 (experiment)",
    ),
}


def material_names() -> list[str]:
    """Names of the built-in materials."""
    return sorted(BUILTIN)


def get_structure(name_or_path: str | Path) -> Structure:
    """Return the conventional cell of a built-in material, or read a structure file.

    Parameters
    ----------
    name_or_path
        A built-in formula (``"CuI"``) or a path to a CIF, POSCAR or extxyz file.

    Raises
    ------
    ValueError
        For an unknown name (listing close matches) or an unreadable file.
    """
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key][0]()
    path = Path(key)
    if path.suffix or path.exists() or "/" in key:
        return read_structure(path)
    close = difflib.get_close_matches(key, material_names(), n=3, cutoff=0.4)
    lowered = [n for n in material_names() if n.lower() == key.lower()]
    hint = lowered or close
    msg = f"unknown material {key!r}"
    msg += f"; did you mean {', '.join(hint)}?" if hint else ""
    msg += f" Built-in: {', '.join(material_names())}; or give a CIF/POSCAR/extxyz path."
    raise ValueError(msg)


def default_supercell(name: str) -> tuple[int, int, int]:
    """Supercell used for a built-in material, (2, 2, 2) for others."""
    return BUILTIN[name][1] if name in BUILTIN else (2, 2, 2)


def read_structure(path: str | Path) -> Structure:
    """Read one periodic structure from CIF, POSCAR or anything ASE reads."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"structure file {str(path)!r} does not exist")
    try:
        structure = Structure.from_file(path)
    except Exception:
        try:
            from ase.io import read
            from pymatgen.io.ase import AseAtomsAdaptor

            structure = AseAtomsAdaptor.get_structure(read(path, index=0))
        except Exception as exc:
            raise ValueError(
                f"could not read a structure from {str(path)!r}: {exc}. "
                "Give a CIF, POSCAR or extxyz file."
            ) from exc
    validate_structure(structure, source=str(path))
    return structure


def validate_structure(structure: Structure, source: str = "structure") -> None:
    """Reject empty, non-periodic or overlapping structures with a message naming them."""
    if len(structure) == 0:
        raise ValueError(f"{source} is empty (no atoms)")
    if not np.all(structure.lattice.pbc):
        raise ValueError(f"{source} is not periodic in all three directions")
    if structure.volume <= 1e-6:
        raise ValueError(f"{source} has a cell of zero volume")
    if len(structure) > 1:
        d = structure.distance_matrix + np.eye(len(structure)) * 1e6
        if d.min() < 0.5:
            i, j = np.unravel_index(np.argmin(d), d.shape)
            raise ValueError(
                f"{source}: atoms {i} and {j} overlap ({d.min():.3f} A apart)"
            )
