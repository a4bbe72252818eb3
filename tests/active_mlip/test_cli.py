"""``active-mlip run``: what its options put into the settings a run gets."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from active_mlip.app.cli import app


@pytest.fixture
def captured(monkeypatch):
    """Replace the runners by recorders: the settings they would have been given."""
    import active_mlip.app.local
    import active_mlip.app.local_campaign

    seen: dict = {}

    def fake_run_local(material, workdir, settings, restart=False):
        seen["settings"] = settings
        it = {"test_mae_forces_meV_per_A": 1.0, "test_mae_energy_meV_per_atom": 1.0}
        return {
            "material": material,
            "iterations": [it],
            "n_dataset": 0,
            "stop_reason": "recorded",
            "this_invocation": dict.fromkeys(
                ("labels_computed", "labels_reused", "members_trained", "members_reused"), 0
            ),
        }

    def fake_campaign(name, chosen, settings, workdir, sources, restart):
        seen["settings"] = settings
        return {"outcomes": []}

    monkeypatch.setattr(active_mlip.app.local, "run_local", fake_run_local)
    monkeypatch.setattr(active_mlip.app.local_campaign, "run_campaign_local", fake_campaign)
    return seen


@pytest.mark.parametrize("target", [["CuI"], ["--campaign", "screening-112", "--materials", "CuI"]])
def test_seed_reaches_the_loop_and_the_members(captured, tmp_path, target):
    args = ["run", *target, "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--seed", "7"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    settings = captured["settings"]
    assert settings.loop.seed == 7
    assert settings.training.seed == 7
    # Member seeds derive from the training seed: another --seed trains other members.
    assert settings.training.member_seed(0, 0) != settings.training.model_copy(
        update={"seed": 0}
    ).member_seed(0, 0)


def test_without_seed_the_preset_seeds_stay(captured, tmp_path):
    args = ["run", "CuI", "--preset", "tiny", "--workdir", str(tmp_path / "w")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert (captured["settings"].loop.seed, captured["settings"].training.seed) == (0, 0)
