"""Named DFT input presets for labelling: settings tuned for forces of supercells.

A preset is, per code, a set of keyword arguments of that code's atomate2
``StaticSetGenerator``. :func:`resolve_input_set_kwargs` lays the user's
``input_set_kwargs`` over it, so every value can be overridden. The reason for each
value is in ``docs/dft.md``; the tests in ``tests/makers/test_labelling_{vasp,aims}.py``
read the written input files back and fail if a promised tag is missing or wrong.

``"forces"``
    Labels for training a potential: forces converged to about 1 meV/Å, smearing and
    k-points that suit supercells of hundreds of atoms, no +U, stress computed.
``"forces-tight"``
    The same choices one step tighter (FHI-aims "tight" species defaults, a denser
    k-mesh, a higher cutoff, tighter SCF): for checking the ``"forces"`` labels on a
    subset or for final production data.
"""

from __future__ import annotations

import copy
from typing import Any

#: Generator keyword arguments whose value is a settings dict: the user's dict is laid
#: over the preset's key by key (recursively), so ``{"EDIFF": 1e-7}`` changes one tag.
#: Any other keyword (e.g. ``user_kpoints_settings``) is replaced whole: k-point
#: schemes do not mix (pymatgen takes a ``length`` before a ``reciprocal_density``).
MERGED_KWARGS = frozenset({"user_incar_settings", "user_params", "user_input_settings"})

_VASP_FORCES: dict[str, Any] = {
    "user_incar_settings": {
        "GGA": "PE",
        "ENCUT": 520,
        "PREC": "Accurate",
        "LREAL": False,
        "LASPH": True,
        "EDIFF": 1e-6,
        "NELM": 200,
        # Gaussian: tetrahedra (atomate2's -5) give non-variational metal forces and
        # need >= 4 k-points, which supercells often lack
        "ISMEAR": 0,
        "SIGMA": 0.05,
        "ISYM": 0,  # never symmetrise the forces of a nearly symmetric frame
        "LDAU": False,  # atomate2 would apply the Materials Project's +U
        "IBRION": -1,
        "NSW": 0,
        "ISIF": 2,
        "KSPACING": None,  # the KPOINTS file sets and records the mesh
        "LWAVE": False,
        "LCHARG": False,
        "LAECHG": False,
        "LVTOT": False,
        "LELF": False,
        "LORBIT": None,
    },
    # per reciprocal volume: a supercell gets its primitive cell's sampling
    "user_kpoints_settings": {"reciprocal_density": 64},
    "auto_ismear": False,
    "auto_kspacing": False,
}

_AIMS_FORCES: dict[str, Any] = {
    "user_params": {
        "xc": "pbe",
        "relativistic": "atomic_zora scalar",
        "species_dir": "light",
        "occupation_type": "gaussian 0.01",
        "sc_accuracy_rho": 1e-6,
        "sc_accuracy_eev": 1e-3,
        "sc_accuracy_etot": 1e-6,
        "sc_accuracy_forces": 1e-4,
        "sc_iter_limit": 200,
    },
    # spacing <= 0.25 1/Å; not rounded up to even, so large supercells get Gamma only
    "user_kpoints_settings": {"density": 4.0, "even": False},
}

_CP2K_FORCES: dict[str, Any] = {
    "user_input_settings": {
        "cutoff": 600,
        "rel_cutoff": 60,
        "eps_scf": 1e-7,
        "eps_default": 1e-12,
    },
    "user_kpoints_settings": {"reciprocal_density": 64},
}


def merge_input_set_kwargs(preset: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """Lay ``user`` over ``preset`` (neither is modified).

    Keys in :data:`MERGED_KWARGS` are merged recursively (the user's value wins for
    each key it names; a user value of ``None`` stays ``None``, which pymatgen reads as
    "unset this tag"); any other key of ``user`` replaces the preset's value whole.
    """
    out = copy.deepcopy(preset)
    for key, value in user.items():
        if key in MERGED_KWARGS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: preset name -> code -> generator keyword arguments.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "forces": {"vasp": _VASP_FORCES, "aims": _AIMS_FORCES, "cp2k": _CP2K_FORCES},
}
PRESETS["forces-tight"] = {
    "vasp": merge_input_set_kwargs(
        _VASP_FORCES,
        {
            "user_incar_settings": {"ENCUT": 600, "EDIFF": 1e-7},
            "user_kpoints_settings": {"reciprocal_density": 125},
        },
    ),
    "aims": merge_input_set_kwargs(
        _AIMS_FORCES,
        {
            "user_params": {"species_dir": "tight", "sc_accuracy_rho": 1e-7},
            "user_kpoints_settings": {"density": 5.0, "even": False},
        },
    ),
    "cp2k": merge_input_set_kwargs(
        _CP2K_FORCES,
        {
            "user_input_settings": {"cutoff": 800, "rel_cutoff": 70, "eps_scf": 1e-8},
            "user_kpoints_settings": {"reciprocal_density": 125},
        },
    ),
}

#: The preset names :class:`~active_mlip.makers.labelling.Atomate2Labeller` accepts.
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset_settings(name: str, code: str) -> dict[str, Any]:
    """The generator keyword arguments of preset ``name`` for ``code`` (a copy).

    Raises
    ------
    ValueError
        For an unknown preset or code, naming the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown DFT preset {name!r}; known presets: {', '.join(PRESETS)}")
    if code not in PRESETS[name]:
        raise ValueError(
            f"preset {name!r} has no settings for code {code!r} (it has {', '.join(PRESETS[name])})"
        )
    return copy.deepcopy(PRESETS[name][code])


def resolve_input_set_kwargs(code: str, preset: str | None, user: dict[str, Any]) -> dict[str, Any]:
    """The generator keyword arguments a labeller uses: ``user`` laid over the preset.

    With ``preset=None`` this is a copy of ``user``: atomate2's own defaults apply.
    """
    if preset is None:
        return copy.deepcopy(user)
    return merge_input_set_kwargs(preset_settings(preset, code), user)
