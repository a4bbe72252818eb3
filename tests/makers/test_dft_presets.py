"""Named DFT presets: how user settings are laid over them, and what they do to the hash."""

from __future__ import annotations

import pytest

from active_mlip.makers.dft_environment import DFTSetupError, command_executables
from active_mlip.makers.dft_presets import (
    PRESET_NAMES,
    merge_input_set_kwargs,
    preset_settings,
    resolve_input_set_kwargs,
)
from active_mlip.makers.labelling import Atomate2Labeller, labeller_from_dict


def test_user_settings_are_laid_over_the_preset_key_by_key():
    preset = {
        "user_incar_settings": {"EDIFF": 1e-6, "ISMEAR": 0, "LDAU": False},
        "user_kpoints_settings": {"reciprocal_density": 64},
        "auto_ismear": False,
    }
    user = {
        "user_incar_settings": {"EDIFF": 1e-7, "ISMEAR": None},
        "user_kpoints_settings": {"length": 30},
    }
    out = merge_input_set_kwargs(preset, user)
    # settings dicts merge: the user's tag wins, None stays (pymatgen: "unset"), the rest stays
    assert out["user_incar_settings"] == {"EDIFF": 1e-7, "ISMEAR": None, "LDAU": False}
    # any other key is replaced whole: k-point schemes do not mix
    assert out["user_kpoints_settings"] == {"length": 30}
    assert out["auto_ismear"] is False
    assert preset["user_incar_settings"]["EDIFF"] == 1e-6  # inputs untouched
    # CP2K's nested settings merge recursively
    cp2k = merge_input_set_kwargs(
        {"user_input_settings": {"cutoff": 600, "override_default_params": {"A": {"B": 1}}}},
        {"user_input_settings": {"override_default_params": {"A": {"C": 2}}}},
    )
    assert cp2k["user_input_settings"] == {
        "cutoff": 600,
        "override_default_params": {"A": {"B": 1, "C": 2}},
    }


def test_presets_cover_every_code_and_none_means_atomate2_defaults():
    assert PRESET_NAMES == ("forces", "forces-tight")
    for name in PRESET_NAMES:
        for code in ("vasp", "aims", "cp2k"):
            assert preset_settings(name, code)
    assert resolve_input_set_kwargs("vasp", None, {"a": 1}) == {"a": 1}
    tight = preset_settings("forces-tight", "vasp")["user_incar_settings"]
    assert (tight["EDIFF"], tight["ENCUT"], tight["ISMEAR"]) == (1e-7, 600, 0)
    with pytest.raises(ValueError, match="unknown DFT preset 'fast'; known presets: forces"):
        preset_settings("fast", "vasp")


def test_preset_is_part_of_the_labeller_identity():
    default = Atomate2Labeller(code="vasp")
    assert default.preset == "forces"
    ids = {
        default.identity().settings_hash,
        Atomate2Labeller(code="vasp", preset="forces-tight").identity().settings_hash,
        Atomate2Labeller(code="vasp", preset=None).identity().settings_hash,
    }
    assert len(ids) == 3
    settings = default.identity().settings
    assert settings["preset"] == "forces"
    assert settings["preset_settings"]["user_incar_settings"]["EDIFF"] == 1e-6
    assert "preset" not in Atomate2Labeller(code="vasp", preset=None).identity().settings
    # a stored config from before presets loads, with today's default
    old = labeller_from_dict({"kind": "atomate2", "code": "cp2k", "input_set_kwargs": {}})
    assert old.preset == "forces"
    assert labeller_from_dict(default.model_dump()) == default  # round trip


def test_bad_labeller_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown DFT preset 'tight'; choose one of forces"):
        Atomate2Labeller(code="aims", preset="tight")
    with pytest.raises(ValueError, match="reduce_structure.*rebuild the cell"):
        Atomate2Labeller(code="vasp", input_set_kwargs={"reduce_structure": "niggli"})
    with pytest.raises(ValueError, match="standardize.*must stay False"):
        Atomate2Labeller(code="cp2k", input_set_kwargs={"standardize": True})
    with pytest.raises(ValueError, match="compute_forces.*labels need forces"):
        Atomate2Labeller(code="aims", input_set_kwargs={"user_params": {"compute_forces": False}})


def test_cp2k_keeps_atom_order_and_asks_for_the_stress():
    gen = Atomate2Labeller(code="cp2k").static_maker().input_set_generator
    assert gen.sort_structure is False
    assert gen.user_input_settings["cutoff"] == 600
    assert gen.user_input_settings["eps_scf"] == 1e-7
    over = gen.user_input_settings["override_default_params"]
    assert over["FORCE_EVAL"]["STRESS_TENSOR"] == "ANALYTICAL"


def test_command_words_that_must_be_found():
    assert command_executables("aims", "aims.x > aims.out") == ["aims.x"]
    assert command_executables("vasp", "srun -n 64 --exclusive vasp_std") == ["srun", "vasp_std"]
    assert command_executables("cp2k", "mpirun -np 2 /opt/cp2k/bin/cp2k.psmp -i in") == [
        "mpirun",
        "/opt/cp2k/bin/cp2k.psmp",
    ]
    with pytest.raises(DFTSetupError, match="command is empty"):
        command_executables("vasp", "> out")
