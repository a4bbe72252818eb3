"""Campaign files: validated, with every error pointing at its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from active_mlip.workflows.campaign import CampaignError, load_campaign


def _write(tmp_path, text: str):
    f = tmp_path / "campaign.yaml"
    f.write_text(textwrap.dedent(text).lstrip())
    return f


def test_valid_campaign_builds_the_settings(tmp_path):
    f = _write(
        tmp_path,
        """
        name: halides
        materials: [CuI, AgGaSe2]
        temperatures: [300, 600]
        preset: tiny
        settings:
          loop: {max_iterations: 3}
        routing: {training: a100}
        """,
    )
    campaign, settings = load_campaign(f)
    assert [m.name for m in campaign.materials] == ["CuI", "AgGaSe2"]
    assert settings.loop.temperatures == [300.0, 600.0] and settings.loop.max_iterations == 3
    assert settings.routing.training == "a100" and settings.routing.labelling == "cpu"
    assert settings.preset == "tiny" and settings.loop.n_test == 8  # the rest from the preset


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("name: x\nmaterials:\n  - CuI\n  - CuJ\npreset: tiny\n", 4, ["'CuJ'", "CuI"]),
        ("name: x\nmaterials: [CuI]\npreset: tiny\ncolour: blue\n", 4, ["'colour'"]),
        (
            "name: x\nmaterials: [CuI]\nrouting:\n  labelling: cpu\n  trainin: gpu\n",
            5,
            ["training"],
        ),
        (
            "name: x\nmaterials: [CuI]\npreset: tiny\nsettings:\n  loop:\n    n_tset: 3\n",
            6,
            ["n_tset", "n_test"],
        ),
        ("name: x\nmaterials: [CuI]\ntemperatures: [300, -5]\n", 3, ["> 0 K"]),
        ("name: x\nmaterials: [CuI]\npreset: huge\n", 3, ["tiny"]),
        ("name: x\nmaterials: [missing/AgI.cif]\n", 2, ["does not exist"]),
    ],
)
def test_errors_name_the_line(tmp_path, text, line, words):
    f = _write(tmp_path, text)
    with pytest.raises(CampaignError) as err:
        load_campaign(f)
    msg = str(err.value)
    assert f"campaign.yaml:{line}:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_structure_paths_are_relative_to_the_campaign_file(tmp_path):
    from active_mlip.workflows.materials import get_structure

    (tmp_path / "s").mkdir()
    get_structure("CuI").to(filename=str(tmp_path / "s" / "CuI2.cif"))
    f = _write(tmp_path, "name: x\nmaterials: [s/CuI2.cif]\npreset: tiny\n")
    campaign, _ = load_campaign(f)
    assert campaign.materials[0].name == "CuI2"
    assert get_structure(campaign.materials[0].source).num_sites == 8


def test_trajectory_path_is_relative_to_the_campaign_file(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    f = _write(
        tmp_path / "c",
        """
        name: x
        materials: [CuI]
        preset: tiny
        settings:
          loop: {initial: trajectory, trajectory: aimd/CuI.extxyz}
        """,
    )
    monkeypatch.chdir(tmp_path)  # elsewhere than the file
    _, settings = load_campaign(Path("c/campaign.yaml"))
    assert settings.loop.trajectory == str(tmp_path / "c" / "aimd" / "CuI.extxyz")
    absolute = tmp_path / "elsewhere.extxyz"
    f.write_text(f.read_text().replace("aimd/CuI.extxyz", str(absolute)))
    assert load_campaign(f)[1].loop.trajectory == str(absolute)
