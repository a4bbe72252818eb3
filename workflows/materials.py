"""Built-in materials, named by formula, the screening set, and reading user structure files.

Every structure is built from its space group and Wyckoff positions with pymatgen, so
the numbers below (and in ``data/screening_112.yaml``) are the whole definition. Lattice
parameters are experimental room-temperature values.

Over 500 lines on purpose: most of it is data (the built-in structures by space
group and Wyckoff positions), kept next to the code that builds and checks them.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase.data import covalent_radii
from ase.io import read
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.groups import SpaceGroup

from active_mlip.core.blobs import verify_listed


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
    """Names of the built-in materials and of the screening-set entries."""
    return sorted(set(BUILTIN) | set(_screening_by_name()))


def get_structure(name_or_path: str | Path) -> Structure:
    """Return the conventional cell of a built-in material, or read a structure file.

    Parameters
    ----------
    name_or_path
        A built-in formula (``"CuI"``), a screening-set name (``"ZnS"``,
        ``"ZnS-wurtzite"``) or a path to a CIF, POSCAR or extxyz file.

    Raises
    ------
    ValueError
        For an unknown name (listing close matches) or an unreadable file.
    """
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key][0]()
    screening = _screening_by_name()
    if key in screening:
        return screening[key].structure.copy()
    path = Path(key)
    if path.suffix or path.exists() or "/" in key:
        return read_structure(path)
    names = material_names()
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.4)
    lowered = [n for n in names if n.lower() == key.lower()]
    hint = lowered or close
    msg = f"unknown material {key!r}"
    msg += f"; did you mean {', '.join(hint)}?" if hint else ""
    msg += (
        f" Built-in: {', '.join(sorted(BUILTIN))} and the {len(screening)} screening-set "
        "materials (active_mlip.workflows.materials.load_screening_set()); or give a "
        "CIF/POSCAR/extxyz path."
    )
    raise ValueError(msg)


def default_supercell(name: str) -> tuple[int, int, int]:
    """Supercell used for a built-in or screening-set material, (2, 2, 2) for others."""
    if name in BUILTIN:
        return BUILTIN[name][1]
    entry = _screening_by_name().get(name)
    return entry.supercell if entry is not None else (2, 2, 2)


def read_structure(path: str | Path) -> Structure:
    """Read one periodic structure from CIF, POSCAR or anything ASE reads."""

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"structure file {str(path)!r} is a directory; give a file")
    if not path.is_file():
        raise ValueError(f"structure file {str(path)!r} does not exist")
    verify_listed(path)  # when a SHA256SUMS beside it lists the file (an exported run)
    try:
        structure = Structure.from_file(path)
    except Exception:
        structure = _read_with_ase(path)
    validate_structure(structure, source=str(path))
    return structure


def _read_with_ase(path: Path) -> Structure:
    """Read ``path`` with ASE; every failure becomes a ValueError that says what to fix."""

    fix = "Give a CIF, POSCAR or extxyz file with a periodic cell."
    try:
        atoms = read(path, index=0)
    except PermissionError as exc:
        raise ValueError(f"structure file {str(path)!r} cannot be read: {exc}") from exc
    except KeyError as exc:  # ASE's symbol lookup
        raise ValueError(
            f"{str(path)!r} names an unknown element {exc.args[0]!r}; use element symbols "
            "such as Cu, I"
        ) from exc
    except Exception as exc:  # ASE raises many types for bad files, some without a message
        why = str(exc) or type(exc).__name__
        raise ValueError(f"could not read a structure from {str(path)!r} ({why}). {fix}") from exc
    if len(atoms) and (not all(atoms.pbc) or atoms.cell.rank < 3):
        raise ValueError(
            f"{str(path)!r} is not periodic in all three directions (pbc={atoms.pbc.tolist()}, "
            f"{atoms.cell.rank} lattice vectors). {fix}"
        )
    if len(atoms) == 0:
        raise ValueError(f"{str(path)!r} is empty (no atoms). {fix}")
    return AseAtomsAdaptor.get_structure(atoms)


def validate_structure(structure: Structure, source: str = "structure") -> None:
    """Reject empty, non-periodic or overlapping structures with a message naming them."""
    if len(structure) == 0:
        raise ValueError(f"{source} is empty (no atoms); give a structure with atoms")
    if not np.all(structure.lattice.pbc):
        raise ValueError(
            f"{source} is not periodic in all three directions; give a crystal with a lattice"
        )
    if structure.volume <= 1e-6:
        raise ValueError(f"{source} has a cell of zero volume; check its lattice vectors")
    if len(structure) > 1:
        d = structure.distance_matrix + np.eye(len(structure)) * 1e6
        if d.min() < 0.5:
            i, j = np.unravel_index(np.argmin(d), d.shape)
            raise ValueError(
                f"{source}: atoms {i} and {j} overlap ({d.min():.3f} A apart); check the "
                "positions and lattice (Å; fractional vs Cartesian coordinates)"
            )


# ---------------------------------------------------------------------------------------
# The screening set (workflows/data/screening_112.yaml; format documented in its header)
# ---------------------------------------------------------------------------------------
SCREENING_FILE = "screening_112.yaml"
#: bounds on the atoms in an entry's supercell: big enough for phonons, small enough for DFT
SUPERCELL_ATOMS = (50, 250)
#: two atoms closer than this fraction of the sum of their covalent radii are an error
MIN_DISTANCE_FRACTION = 0.7
#: sane mass density range, g/cm^3
DENSITY_RANGE = (1.0, 15.0)
MAX_Z = 94  # the elements CHGNet (the embedded labeller) covers

_ENTRY_KEYS = {
    "name",
    "formula",
    "prototype",
    "spacegroup",
    "lattice",
    "params",
    "sites",
    "supercell",
    "source",
    "notes",
}
_REQUIRED_KEYS = ("formula", "prototype", "spacegroup", "lattice", "sites", "supercell", "source")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_()\-]*$")
_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WYCKOFF_RE = re.compile(r"^([0-9]+)([a-zA-Z])$")
_LATTICE_KEYS = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"),
    "monoclinic": ("a", "b", "c", "beta"),
    "orthorhombic": ("a", "b", "c"),
    "tetragonal": ("a", "c"),
    "trigonal": ("a", "c"),
    "hexagonal": ("a", "c"),
    "cubic": ("a",),
}


class WyckoffSite(BaseModel):
    """One site of the asymmetric unit: species, Wyckoff label and fractional coordinates."""

    model_config = ConfigDict(frozen=True)

    species: str
    wyckoff: str | None = None
    coords: tuple[float, float, float]
    #: the coordinates as written in the file (numbers, fractions, parameter names)
    expression: tuple[str, str, str]


class ScreeningEntry(BaseModel):
    """One material of the screening set, with its conventional cell built and validated."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    index: int
    name: str
    formula: str
    prototype: str
    spacegroup_symbol: str
    spacegroup_number: int
    lattice: dict[str, float]
    params: dict[str, float]
    sites: tuple[WyckoffSite, ...]
    supercell: tuple[int, int, int]
    source: str
    notes: str = ""
    structure: Structure = Field(exclude=True, repr=False)

    @property
    def n_atoms_supercell(self) -> int:
        """Atoms in the supercell the entry asks for."""
        return len(self.structure) * math.prod(self.supercell)

    def supercell_structure(self) -> Structure:
        """The conventional cell repeated by ``supercell`` (a new Structure)."""
        return self.structure * self.supercell


class _EntryError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def load_screening_set(path: str | Path | None = None) -> list[ScreeningEntry]:
    """Read, build and validate the screening set.

    Parameters
    ----------
    path
        A YAML (or JSON) file in the format documented in the header of the packaged
        ``workflows/data/screening_112.yaml``; None reads that packaged file.

    Returns
    -------
    list of ScreeningEntry
        In file order; ``entries[i].index == i``.

    Raises
    ------
    ValueError
        For an unreadable file, or the first malformed entry (naming its index, formula
        and the offending field), or two entries with the same name or the same reduced
        formula and space group (naming both).
    """
    if path is None:
        resource = resources.files("active_mlip.workflows.data").joinpath(SCREENING_FILE)
        label, text = f"packaged {SCREENING_FILE}", resource.read_text(encoding="utf-8")
    else:
        label = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"screening set {label!r} cannot be read: {exc}") from exc
    try:
        # JSON is valid YAML; the C loader when present is ~10x faster than the Python one
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ValueError(f"screening set {label!r} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"screening set {label!r} needs a top-level 'entries' list")

    entries: list[ScreeningEntry] = []
    for index, raw in enumerate(data["entries"]):
        formula = raw.get("formula") if isinstance(raw, dict) else None
        who = f"screening set {label!r}: entry {index} ({formula or 'formula missing'})"
        try:
            entries.append(_build_entry(index, raw))
        except _EntryError as exc:
            raise ValueError(f"{who}: field {exc.field!r}: {exc.message}") from None
    _check_unique(entries, label)
    return entries


def _check_unique(entries: list[ScreeningEntry], label: str) -> None:
    by_name: dict[str, ScreeningEntry] = {}
    by_key: dict[tuple[str, int], ScreeningEntry] = {}
    for e in entries:
        key = (Composition(e.formula).reduced_formula, e.spacegroup_number)
        for seen, k, what in ((by_name, e.name, "name"), (by_key, key, "formula and space group")):
            if k in seen:
                first = seen[k]
                raise ValueError(
                    f"screening set {label!r}: entries {first.index} ({first.name}) and "
                    f"{e.index} ({e.name}) have the same {what} "
                    f"({e.name if what == 'name' else f'{key[0]}, space group {key[1]}'})"
                )
            seen[k] = e


def _build_entry(index: int, raw: Any) -> ScreeningEntry:
    """Parse one raw mapping, build its structure and run every check; _EntryError on failure."""
    if not isinstance(raw, dict):
        raise _EntryError("entry", f"must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise _EntryError(unknown[0], f"unknown field; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    for key in _REQUIRED_KEYS:
        if raw.get(key) is None:
            raise _EntryError(key, "missing")

    formula = _text(raw, "formula")
    try:
        reduced = Composition(formula).reduced_formula
    except Exception as exc:
        raise _EntryError("formula", f"{formula!r} is not a chemical formula ({exc})") from None
    name = _text(raw, "name") if raw.get("name") is not None else formula
    if not _NAME_RE.match(name):
        raise _EntryError("name", f"{name!r}: use letters, digits, '-', '_', '(', ')' only")

    symbol, number, system = _spacegroup(raw["spacegroup"])
    lattice_params, lattice = _lattice(raw["lattice"], system)
    params = _params(raw.get("params") or {})
    sites = _sites(raw["sites"], params)
    supercell = _supercell(raw["supercell"])

    try:
        structure = Structure.from_spacegroup(
            symbol,
            lattice,
            [s.species for s in sites],
            [list(s.coords) for s in sites],
            site_properties={"asu_index": list(range(len(sites)))},
        )
    except Exception as exc:  # pymatgen: lattice incompatible with the space group, ...
        raise _EntryError("lattice", f"pymatgen cannot build the structure: {exc}") from None
    counts = np.bincount(structure.site_properties["asu_index"], minlength=len(sites))
    structure.remove_site_property("asu_index")
    for i, (site, n) in enumerate(zip(sites, counts, strict=True)):
        m = _WYCKOFF_RE.match(site.wyckoff) if site.wyckoff else None
        if m and int(m.group(1)) != n:
            raise _EntryError(
                f"sites[{i}].wyckoff",
                f"{site.species} {site.wyckoff} at {list(site.expression)} generates {n} atoms "
                f"in the conventional cell, not {m.group(1)}",
            )

    built = structure.composition.reduced_formula
    if built != reduced:
        raise _EntryError("formula", f"{formula!r} but the sites build {built}")
    _check_distances(structure)
    density = float(structure.density)
    if not DENSITY_RANGE[0] <= density <= DENSITY_RANGE[1]:
        raise _EntryError(
            "lattice", f"density {density:.2f} g/cm^3 is outside {list(DENSITY_RANGE)} g/cm^3"
        )
    n_super = len(structure) * math.prod(supercell)
    if not SUPERCELL_ATOMS[0] <= n_super <= SUPERCELL_ATOMS[1]:
        raise _EntryError(
            "supercell",
            f"{list(supercell)} of the {len(structure)}-atom cell has {n_super} atoms, "
            f"outside {list(SUPERCELL_ATOMS)}",
        )
    return ScreeningEntry(
        index=index,
        name=name,
        formula=formula,
        prototype=_text(raw, "prototype"),
        spacegroup_symbol=symbol,
        spacegroup_number=number,
        lattice=lattice_params,
        params=params,
        sites=tuple(sites),
        supercell=supercell,
        source=_text(raw, "source"),
        notes=_text(raw, "notes") if raw.get("notes") is not None else "",
        structure=structure,
    )


def _text(raw: dict, key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _EntryError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _EntryError(field, f"must be a finite number, got {value!r}")
    return float(value)


def _spacegroup(raw: Any) -> tuple[str, int, str]:
    if not isinstance(raw, dict) or set(raw) != {"symbol", "number"}:
        raise _EntryError("spacegroup", f"must be {{symbol: ..., number: ...}}, got {raw!r}")
    symbol, number = raw["symbol"], raw["number"]
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 230:
        raise _EntryError("spacegroup.number", f"must be an integer 1-230, got {number!r}")
    try:
        group = _space_group(str(symbol))
    except Exception:
        raise _EntryError("spacegroup.symbol", f"unknown space group {symbol!r}") from None
    if group.int_number != number:
        raise _EntryError(
            "spacegroup",
            f"symbol {symbol!r} is space group {group.int_number}, but number says {number}",
        )
    return str(symbol), number, group.crystal_system


@functools.cache
def _space_group(symbol: str) -> SpaceGroup:
    # SpaceGroup() takes up to ~0.5 s for cubic groups; pymatgen caches instances only while
    # they are alive (weak references), so holding them here also makes from_spacegroup fast.
    return SpaceGroup(symbol)


def _lattice(raw: Any, system: str) -> tuple[dict[str, float], Lattice]:
    needed = _LATTICE_KEYS[system]
    if not isinstance(raw, dict) or set(raw) != set(needed):
        got = sorted(raw) if isinstance(raw, dict) else raw
        raise _EntryError("lattice", f"a {system} cell needs exactly {list(needed)}, got {got!r}")
    p = {k: _number(raw[k], f"lattice.{k}") for k in needed}
    for k, v in p.items():
        limits = (0.0, 180.0) if k in ("alpha", "beta", "gamma") else (0.0, math.inf)
        if not limits[0] < v < limits[1]:
            raise _EntryError(f"lattice.{k}", f"{v} is out of range")
    if system == "cubic":
        lattice = Lattice.cubic(p["a"])
    elif system == "tetragonal":
        lattice = Lattice.tetragonal(p["a"], p["c"])
    elif system in ("trigonal", "hexagonal"):
        lattice = Lattice.hexagonal(p["a"], p["c"])  # rhombohedral groups: hexagonal setting
    elif system == "orthorhombic":
        lattice = Lattice.orthorhombic(p["a"], p["b"], p["c"])
    elif system == "monoclinic":
        lattice = Lattice.monoclinic(p["a"], p["b"], p["c"], p["beta"])
    else:
        lattice = Lattice.from_parameters(**p)
    return p, lattice


def _params(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise _EntryError("params", f"must be a mapping name -> value, got {raw!r}")
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not _PARAM_RE.match(k):
            raise _EntryError("params", f"parameter name {k!r} is not an identifier")
        out[k] = _number(v, f"params.{k}")
    return out


def _sites(raw: Any, params: dict[str, float]) -> list[WyckoffSite]:
    if not isinstance(raw, list) or not raw:
        raise _EntryError("sites", f"must be a non-empty list, got {raw!r}")
    used: set[str] = set()
    sites = []
    for i, site in enumerate(raw):
        field = f"sites[{i}]"
        if not isinstance(site, dict) or not {"species", "coords"} <= set(site):
            raise _EntryError(field, f"must be {{species, coords[, wyckoff]}}, got {site!r}")
        extra = sorted(set(site) - {"species", "coords", "wyckoff"})
        if extra:
            raise _EntryError(f"{field}.{extra[0]}", "unknown field")
        species = site["species"]
        try:
            z = Element(species).Z if isinstance(species, str) else None
        except ValueError:
            z = None
        if z is None:
            raise _EntryError(f"{field}.species", f"{species!r} is not an element symbol")
        if z > MAX_Z:
            raise _EntryError(f"{field}.species", f"{species} (Z={z}) is beyond Z={MAX_Z}")
        coords = site["coords"]
        if not isinstance(coords, list) or len(coords) != 3:
            raise _EntryError(f"{field}.coords", f"needs 3 fractional coordinates, got {coords!r}")
        values = [_coordinate(c, params, used, f"{field}.coords") for c in coords]
        wyckoff = site.get("wyckoff")
        if wyckoff is not None and not (isinstance(wyckoff, str) and _WYCKOFF_RE.match(wyckoff)):
            raise _EntryError(f"{field}.wyckoff", f"{wyckoff!r} is not a label such as '4a'")
        sites.append(
            WyckoffSite(
                species=species,
                wyckoff=wyckoff,
                coords=tuple(values),
                expression=tuple(str(c) for c in coords),
            )
        )
    unused = sorted(set(params) - used)
    if unused:
        raise _EntryError(f"params.{unused[0]}", "defined but used by no site")
    return sites


def _supercell(raw: Any) -> tuple[int, int, int]:
    ok = isinstance(raw, list) and len(raw) == 3
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in raw)
    if not ok:
        raise _EntryError("supercell", f"must be 3 positive integers, got {raw!r}")
    return (raw[0], raw[1], raw[2])


def _coordinate(token: Any, params: dict[str, float], used: set[str], field: str) -> float:
    if isinstance(token, str):
        token = token.strip()
        if token in params:
            used.add(token)
            return params[token]
        try:
            return float(Fraction(token))
        except (ValueError, ZeroDivisionError):
            raise _EntryError(
                field, f"{token!r} is neither a number, a fraction nor a name in params"
            ) from None
    return _number(token, field)


def _check_distances(structure: Structure) -> None:
    """No pair (periodic images included) closer than MIN_DISTANCE_FRACTION x covalent sum."""
    radii = np.array([covalent_radii[site.specie.Z] for site in structure])
    cutoff = MIN_DISTANCE_FRACTION * 2 * radii.max()
    centres, neighbours, _, distances = structure.get_neighbor_list(cutoff)
    if len(distances) == 0:
        return
    limit = MIN_DISTANCE_FRACTION * (radii[centres] + radii[neighbours])
    ratio = distances / limit
    k = int(np.argmin(ratio))
    if ratio[k] < 1.0:
        i, j = int(centres[k]), int(neighbours[k])
        raise _EntryError(
            "lattice/sites",
            f"atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie}) are "
            f"{distances[k]:.3f} A apart, below {MIN_DISTANCE_FRACTION} x the sum of their "
            f"covalent radii ({limit[k]:.3f} A)",
        )


@functools.cache
def _default_screening_set() -> tuple[ScreeningEntry, ...]:
    return tuple(load_screening_set())


def _screening_by_name() -> dict[str, ScreeningEntry]:
    return {e.name: e for e in _default_screening_set()}
