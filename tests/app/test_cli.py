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


CAMPAIGN = """\
name: merge-check
materials: [CuI]
preset: quick
temperatures: [500]
label_budget: 40
settings:
  loop: {temperatures: [300], max_iterations: 3}
  screening: {md_steps: 200}
"""


def test_campaign_settings_are_merged_once_with_a_documented_precedence(captured, tmp_path):
    from active_mlip.workflows.campaign import load_campaign

    f = tmp_path / "campaign.yaml"
    f.write_text(CAMPAIGN)
    campaign, submitted = load_campaign(f)  # what `active-mlip submit` runs
    # File top-level keys win over its settings: sections; screening is on by default.
    assert submitted.preset == "quick"
    assert submitted.loop.temperatures == [500.0] and submitted.loop.max_iterations == 3
    assert submitted.screening.enabled and submitted.screening.md_steps == 200
    assert submitted.loop.shared_budget.total == 40
    # A local run of the same file gets the same settings ...
    args = ["run", "--campaign", str(f), "--workdir", str(tmp_path / "w")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert captured["settings"] == submitted
    # ... and the command line wins over the file, the rest of the file still applies.
    args += ["--preset", "tiny", "--temperatures", "700", "--label-budget", "10"]
    assert CliRunner().invoke(app, args).exit_code == 0
    local = captured["settings"]
    assert local == campaign.build_settings("tiny", {"loop": {"temperatures": [700.0]}}, 10)
    assert (local.preset, local.loop.temperatures) == ("tiny", [700.0])
    assert local.loop.max_iterations == 3 and local.loop.shared_budget.total == 10
    # A file that turns screening off runs plain active learning everywhere.
    f.write_text(CAMPAIGN.replace("{md_steps: 200}", "{enabled: false}"))
    assert not load_campaign(f)[1].screening.enabled
