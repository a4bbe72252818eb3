"""The built-in materials and the packaged 112-material screening set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from ase.data import covalent_radii
from pymatgen.core import Composition
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from active_mlip.workflows.materials import (
    DENSITY_RANGE,
    MIN_DISTANCE_FRACTION,
    SUPERCELL_ATOMS,
    ScreeningEntry,
    default_supercell,
    get_structure,
    load_screening_set,
    material_names,
    validate_structure,
)

ENTRIES = load_screening_set()
N_AVOGADRO = 6.02214076e23


# ---------------------------------------------------------------------------------------
# The packaged set as a whole
# ---------------------------------------------------------------------------------------
def test_set_has_112_uniquely_named_entries_in_file_order():
    assert len(ENTRIES) == 112
    assert [e.index for e in ENTRIES] == list(range(112))
    names = [e.name for e in ENTRIES]
    assert len(set(names)) == 112
    keys = {(Composition(e.formula).reduced_formula, e.spacegroup_number) for e in ENTRIES}
    assert len(keys) == 112
    assert all(isinstance(e, ScreeningEntry) for e in ENTRIES)


def test_set_covers_the_families_of_the_screen():
    prototypes = {e.prototype for e in ENTRIES}
    for family in (
        "zincblende",
        "wurtzite",
        "rocksalt",
        "chalcopyrite",
        "cubic perovskite",
        "fluorite",
        "antifluorite",
        "delafossite",
        "CsCl",
        "rutile",
        "cuprite",
    ):
        assert family in prototypes
    assert max(max(site.specie.Z for site in e.structure) for e in ENTRIES) <= 94


@pytest.mark.parametrize("name, number", [("CuI", 216), ("AgGaSe2", 122)])
def test_builtin_materials_are_in_the_set_unchanged(name, number):
    entry = next(e for e in ENTRIES if e.name == name)
    assert entry.spacegroup_number == number
    assert SpacegroupAnalyzer(entry.structure, symprec=0.01).get_space_group_number() == number
    # get_structure keeps returning the hand-coded builder's cell; the set agrees with it
    assert get_structure(name) == entry.structure
    assert default_supercell(name) == entry.supercell
    assert entry.n_atoms_supercell == 64


def test_cui_numbers_by_hand():
    cui = next(e for e in ENTRIES if e.name == "CuI").structure
    assert len(cui) == 8
    assert cui.lattice.abc == pytest.approx((6.054,) * 3)
    d = cui.distance_matrix + np.eye(8) * 1e3
    # zincblende nearest neighbour: a*sqrt(3)/4 between Cu and I
    assert d.min() == pytest.approx(6.054 * math.sqrt(3) / 4, abs=1e-6)
    # 4 formula units of CuI (63.546 + 126.904 g/mol) in a^3
    rho = 4 * (63.546 + 126.904) / (N_AVOGADRO * (6.054e-8) ** 3)
    assert cui.density == pytest.approx(rho, rel=1e-3)


def test_free_parameters_enter_the_structure():
    zno = next(e for e in ENTRIES if e.name == "ZnO")
    a, c, u = zno.lattice["a"], zno.lattice["c"], zno.params["u"]
    zn = [s for s in zno.structure if s.specie.symbol == "Zn"]
    o = [s for s in zno.structure if s.specie.symbol == "O"]
    # wurtzite Zn-O bonds: one axial, u*c, and three basal, sqrt(a^2/3 + (1/2 - u)^2 c^2)
    axial, basal = u * c, math.sqrt(a**2 / 3 + (0.5 - u) ** 2 * c**2)
    images = [np.array(j) - 1 for j in np.ndindex(3, 3, 3)]
    shifted = sorted(zn[0].distance(x, jimage=j) for x in o for j in images)
    assert shifted[:4] == pytest.approx(sorted([axial, basal, basal, basal]), abs=1e-6)
    assert zno.structure.lattice.abc == pytest.approx((a, a, c))
    cu2o = next(e for e in ENTRIES if e.name == "Cu2O").structure
    assert cu2o.composition.reduced_formula == "Cu2O"
    dm = cu2o.distance_matrix + np.eye(len(cu2o)) * 1e3
    assert dm.min() == pytest.approx(4.270 * math.sqrt(3) / 4, abs=1e-6)


def test_entry_serialises_without_its_structure():
    dumped = ENTRIES[0].model_dump()
    assert "structure" not in dumped
    json.dumps(dumped)
    assert dumped["sites"][1]["expression"] == ("1/4", "1/4", "1/4")


# ---------------------------------------------------------------------------------------
# Every entry, one test id each
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_entry_builds_a_valid_structure(entry):
    s = entry.structure
    validate_structure(s, source=entry.name)
    assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == entry.spacegroup_number
    assert s.composition.reduced_formula == Composition(entry.formula).reduced_formula
    assert DENSITY_RANGE[0] <= s.density <= DENSITY_RANGE[1]
    # the Wyckoff labels' multiplicities add up to the conventional cell
    labelled = [int(site.wyckoff[:-1]) for site in entry.sites if site.wyckoff]
    if len(labelled) == len(entry.sites):
        assert sum(labelled) == len(s)
    # supercell size, and no overlaps (checked here on the supercell, independently of the
    # loader's neighbour list on the conventional cell)
    big = entry.supercell_structure()
    assert len(big) == entry.n_atoms_supercell
    assert SUPERCELL_ATOMS[0] <= len(big) <= SUPERCELL_ATOMS[1]
    radii = np.array([covalent_radii[site.specie.Z] for site in big])
    ratio = big.distance_matrix / (radii[:, None] + radii[None, :])
    np.fill_diagonal(ratio, np.inf)
    assert ratio.min() >= MIN_DISTANCE_FRACTION
    assert entry.source.strip()


# ---------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------
def test_get_structure_and_supercell_of_screening_names():
    names = material_names()
    assert {"CuI", "AgGaSe2", "ZnS", "ZnS-wurtzite", "PbTe"} <= set(names)
    assert len(names) == 112  # CuI and AgGaSe2 are in the set
    zb, wz = get_structure("ZnS"), get_structure("ZnS-wurtzite")
    assert (len(zb), len(wz)) == (8, 4)
    assert SpacegroupAnalyzer(wz, symprec=0.01).get_space_group_number() == 186
    assert default_supercell("ZnS-wurtzite") == (3, 3, 2)
    assert default_supercell("PbTe") == (2, 2, 2)
    assert default_supercell("not-a-material") == (2, 2, 2)
    # callers get a copy: changing it leaves the set alone
    zb.perturb(0.1)
    assert get_structure("ZnS") != zb


@pytest.mark.parametrize(
    "name, suggestion",
    [("ZnS-wurtz", "ZnS-wurtzite"), ("cuinse2", "CuInSe2"), ("CuIi", "CuI"), ("PbTee", "PbTe")],
)
def test_unknown_name_suggests_close_matches(name, suggestion):
    with pytest.raises(ValueError, match=f"unknown material '{name}'; did you mean {suggestion}"):
        get_structure(name)


# ---------------------------------------------------------------------------------------
# Malformed files
# ---------------------------------------------------------------------------------------
def _cui(**changes) -> dict:
    entry = {
        "formula": "CuI",
        "prototype": "zincblende",
        "spacegroup": {"symbol": "F-43m", "number": 216},
        "lattice": {"a": 6.054},
        "sites": [
            {"species": "Cu", "wyckoff": "4a", "coords": [0, 0, 0]},
            {"species": "I", "wyckoff": "4c", "coords": ["1/4", "1/4", "1/4"]},
        ],
        "supercell": [2, 2, 2],
        "source": "test",
    }
    for key, value in changes.items():
        if value is None:
            del entry[key]
        else:
            entry[key] = value
    return entry


_ZNS = {
    "formula": "ZnS",
    "prototype": "wurtzite",
    "spacegroup": {"symbol": "P6_3mc", "number": 186},
    "lattice": {"a": 3.823, "c": 6.261},
    "params": {"u": 0.375},
    "sites": [
        {"species": "Zn", "coords": ["1/3", "2/3", 0]},
        {"species": "S", "coords": ["1/3", "2/3", "u"]},
    ],
    "supercell": [3, 3, 2],
    "source": "test",
}


def _write(tmp_path, entries, name="set.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"entries": entries}))
    return path


def test_small_file_loads(tmp_path):
    entries = load_screening_set(_write(tmp_path, [_ZNS, _cui()]))
    assert [e.name for e in entries] == ["ZnS", "CuI"]
    assert entries[0].params == {"u": 0.375}
    assert entries[0].sites[1].coords == pytest.approx((1 / 3, 2 / 3, 0.375))
    assert entries[1].structure == get_structure("CuI")
    # JSON is read too
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"entries": [_cui()]}))
    assert load_screening_set(path)[0].supercell == (2, 2, 2)


_CU, _I = {"species": "Cu", "wyckoff": "4a", "coords": [0, 0, 0]}, {"species": "I"}


@pytest.mark.parametrize(
    "bad, field, words",
    [
        (_cui(lattice=None), "lattice", "missing"),
        (_cui(colour="blue"), "colour", "unknown field"),
        (_cui(spacegroup={"symbol": "F-43x", "number": 216}), "spacegroup.symbol", "F-43x"),
        (_cui(spacegroup={"symbol": "F-43m", "number": 225}), "spacegroup", "216"),
        (_cui(spacegroup={"symbol": "F-43m", "number": 231}), "spacegroup.number", "1-230"),
        (_cui(lattice={"a": 6.0, "c": 6.0}), "lattice", "cubic cell needs exactly ['a']"),
        (_cui(lattice={"a": -6.0}), "lattice.a", "out of range"),
        (_cui(sites=[_CU, {**_I, "coords": [0.25, 0.25]}]), "sites[1].coords", "3 fractional"),
        (_cui(sites=[_CU, {**_I, "coords": [0.25, 0.25, "y"]}]), "sites[1].coords", "'y'"),
        (_cui(sites=[_CU, {**_I, "coords": [0.25] * 3, "wyckoff": "8c"}]), "sites[1].wyckoff", "4"),
        (_cui(sites=[_CU, {"species": "Xx", "coords": [0.25] * 3}]), "sites[1].species", "Xx"),
        (_cui(sites=[_CU, {"species": "Am", "coords": [0.25] * 3}]), "sites[1].species", "Z=95"),
        (_cui(params={"x": 0.3}), "params.x", "used by no site"),
        (_cui(formula="Cu2I"), "formula", "build CuI"),
        (_cui(formula="C u"), "formula", "not a chemical formula"),
        (_cui(name="Cu I.cif"), "name", "letters, digits"),
        (_cui(lattice={"a": 2.0}), "lattice/sites", "covalent radii"),
        (_cui(lattice={"a": 12.0}), "lattice", "density"),
        (_cui(supercell=[1, 1, 1]), "supercell", "8 atoms"),
        (_cui(supercell=[2, 2]), "supercell", "3 positive integers"),
        (_cui(source=""), "source", "non-empty"),
    ],
)
def test_malformed_entry_error_names_entry_and_field(tmp_path, bad, field, words):
    path = _write(tmp_path, [_ZNS, bad])
    with pytest.raises(ValueError) as info:
        load_screening_set(path)
    message = str(info.value)
    formula = bad["formula"]
    assert f"entry 1 ({formula})" in message
    assert f"field '{field}'" in message
    assert words in message
    assert str(path) in message


def test_entry_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ValueError, match=r"entry 0 \(formula missing\): field 'entry'"):
        load_screening_set(_write(tmp_path, ["CuI"]))


def test_duplicates_name_both_entries(tmp_path):
    same = [_ZNS, _cui(), _cui(name="CuI-again")]
    both = r"entries 1 \(CuI\) and 2 \(CuI-again\) have the same formula and space group"
    with pytest.raises(ValueError, match=both + r" \(CuI, space group 216\)"):
        load_screening_set(_write(tmp_path, same))
    renamed = [_cui(), {**_ZNS, "name": "CuI"}]
    with pytest.raises(ValueError, match=r"entries 0 \(CuI\) and 1 \(CuI\) have the same name"):
        load_screening_set(_write(tmp_path, renamed))


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        load_screening_set(tmp_path / "missing.yaml")
    path = tmp_path / "flat.yaml"
    path.write_text("- formula: CuI\n")
    with pytest.raises(ValueError, match="top-level 'entries' list"):
        load_screening_set(path)
    path.write_text("entries: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_screening_set(path)
