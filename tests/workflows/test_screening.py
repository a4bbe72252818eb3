"""The screening campaign: material selection, campaign files, and a two-material run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from active_mlip.app.cli import app
from active_mlip.workflows.campaign import CampaignError, load_campaign
from active_mlip.workflows.screening import SCREENING_112, builtin_campaigns, select_materials


def test_the_builtin_campaign_is_the_screening_set():
    names = builtin_campaigns()[SCREENING_112]
    assert len(names) == 112 and len(set(names)) == 112
    assert {"CuI", "AgGaSe2"} <= set(names)


def test_select_materials_keeps_the_order_given_and_refuses_bad_names():
    names = builtin_campaigns()[SCREENING_112]
    assert select_materials(names, "AgGaSe2, CuI", SCREENING_112) == ["AgGaSe2", "CuI"]
    assert select_materials(names, None, SCREENING_112) == names
    with pytest.raises(ValueError, match=r"no material 'Cul' \(did you mean .*CuI"):
        select_materials(names, "Cul", SCREENING_112)
    with pytest.raises(ValueError, match="more than once"):
        select_materials(names, "CuI,CuI", SCREENING_112)
    with pytest.raises(ValueError, match="names no material"):
        select_materials(names, " , ", SCREENING_112)


def test_cli_refuses_unknown_campaigns_and_materials_before_any_work(tmp_path):
    runner = CliRunner()
    out = runner.invoke(
        app, ["run", "--campaign", "screening-12", "--workdir", str(tmp_path / "w")]
    )
    assert out.exit_code == 2 and "did you mean 'screening-112'" in out.output
    out = runner.invoke(
        app,
        [
            "run",
            "--campaign",
            SCREENING_112,
            "--materials",
            "CuI,AgGaSe",
            "--workdir",
            str(tmp_path / "w"),
        ],
    )
    assert out.exit_code == 2 and "AgGaSe2" in out.output
    out = runner.invoke(app, ["run", "CuI", "--materials", "CuI"])
    assert out.exit_code == 2 and "need --campaign" in out.output
    out = runner.invoke(
        app,
        [
            "run",
            "--campaign",
            SCREENING_112,
            "--label-budget",
            "0",
            "--workdir",
            str(tmp_path / "w"),
        ],
    )
    assert out.exit_code == 2 and "--label-budget must be at least 1" in out.output
    assert not (tmp_path / "w").exists()


def test_a_campaign_file_may_name_the_set_and_share_a_budget(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "name: scr\nmaterials: screening-112\npreset: tiny\nlabel_budget: 500\n"
        "settings:\n  screening: {enabled: true}\n"
    )
    campaign, settings = load_campaign(f)
    assert len(campaign.materials) == 112
    assert settings.screening.enabled
    assert settings.loop.shared_budget.name == "scr" and settings.loop.shared_budget.total == 500
    f.write_text("name: scr\nmaterials: screening-999\n")
    with pytest.raises(CampaignError, match="not a material set"):
        load_campaign(f)
    f.write_text("name: scr\nmaterials: [CuI]\nlabel_budget: 0\n")
    with pytest.raises(CampaignError, match=r"c.yaml:3: label_budget"):
        load_campaign(f)


@pytest.mark.slow
def test_two_material_tiny_campaign_end_to_end(tmp_path):
    """CuI and AgGaSe2 screened, the flagged ones learned, a shared budget, the report.

    Budget arithmetic (tiny preset: 28 initial labels, 7 screening checks, 6 per
    iteration): CuI is charged 28 + 7, then draws 6 for its one iteration (41 of 60);
    AgGaSe2's initial data and checks are charged (76 > 60) and it stops with the
    budget spent instead of exploring.
    """
    workdir = tmp_path / "camp"
    out = CliRunner().invoke(
        app,
        [
            "run",
            "--campaign",
            SCREENING_112,
            "--materials",
            "CuI,AgGaSe2",
            "--preset",
            "tiny",
            "--label-budget",
            "60",
            "--workdir",
            str(workdir),
        ],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output
    record = json.loads((workdir / "campaign.json").read_text())
    outcomes = {o["material"]: o for o in record["outcomes"]}
    assert list(outcomes) == ["CuI", "AgGaSe2"]
    cui, agse = outcomes["CuI"], outcomes["AgGaSe2"]
    # Tiny ensembles (20 frames of 8/16 atoms) are flagged, with evidence.
    for o in (cui, agse):
        assert o["verdict"] in ("missing", "hallucinated"), o
        assert o["evidence"] and o["first_mae_forces_meV_per_A"] > 0
    assert [c["n_train"] for c in cui["curve"]] == [20, 26]  # one iteration of 6 labels
    assert cui["labels_used"] == 28 + 7 + 6
    assert agse["labels_used"] == 28 + 7 and len(agse["curve"]) == 1
    assert "campaign label budget spent" in agse["stop_reason"]
    assert record["label_budget_used"] == cui["labels_used"] + agse["labels_used"] == 76
    summary = json.loads((workdir / "CuI" / "summary.json").read_text())
    assert summary["screening"]["verdict"] == cui["verdict"]
    # the screening ran a reference MD beside the MLIP-MD and plotted the comparison
    assert (workdir / "CuI" / "report" / "screening_reference.png").stat().st_size > 5000
    report = (workdir / "report" / "report.html").read_text()
    assert "CuI" in report and "AgGaSe2" in report and "76 of 60" in report
    for png in ("mae_histograms.png", "verdicts.png", "learning_curves.png"):
        assert (workdir / "report" / png).stat().st_size > 5000
    assert "campaign report in" in out.output


@pytest.mark.slow
def test_a_harmonic_material_is_screened_ok_and_learns_no_further(tmp_path):
    """The negative control of the campaign: KCl (rocksalt, nearly harmonic at 300 K).

    Its first ensemble's MD stays where its test set and the reference MD are, so the
    verdict is 'ok' and the material stops after the screening (the CuI/AgGaSe2 test
    above shows the flags).
    """
    workdir = tmp_path / "ctrl"
    args = ["run", "--campaign", SCREENING_112, "--materials", "KCl", "--preset", "tiny"]
    out = CliRunner().invoke(app, [*args, "--workdir", str(workdir)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    (kcl,) = json.loads((workdir / "campaign.json").read_text())["outcomes"]
    assert kcl["verdict"] == "ok", kcl["evidence"]
    assert "no active learning needed" in kcl["stop_reason"]
    assert len(kcl["curve"]) == 1 and kcl["labels_used"] == 28 + 7
    assert (workdir / "KCl" / "report" / "screening_reference.png").stat().st_size > 5000


def test_the_shipped_screening_campaign_file_loads():
    from pathlib import Path

    campaign, settings = load_campaign(Path(__file__).parents[2] / "launchers/screening-112.yaml")
    assert campaign.name == SCREENING_112 and len(campaign.materials) == 112
    assert settings.screening.enabled and settings.loop.shared_budget.total == 5000
    assert settings.routing.category("labelling") == "cpu"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("aimd_with_well", "verdict"),
    [(True, "hallucinated"), (False, "missing")],
    ids=["false-state-learned", "event-never-seen"],
)
def test_a_constructed_failure_is_flagged_with_its_events(tmp_path, aimd_with_well, verdict):
    """The campaign's positive controls by construction (tests/workflows/helpers_constructed).

    The first ensemble learns an "aiMD" of one potential and is screened against the
    other: trained with the false dense state, its MLIP-MD collapses where the reference
    does not (hallucinated); trained without it, the reference collapses where the
    ensemble never looked (missing). Either way the decisive evidence comes from the
    comparison with the reference MD (measured for the seeds 5, 17 and 101 as well, see
    docs/screening.md).
    """
    from ase.calculators.lj import LennardJones
    from ase.io import write

    from tests.workflows.helpers_constructed import (
        LJ,
        WELL,
        PairWellLJ,
        lj_crystal,
        write_aimd,
    )

    write(tmp_path / "LJ.extxyz", lj_crystal(), format="extxyz")
    plain = {"kind": "ase", "calculator": "ase.calculators.lj.LennardJones", "kwargs": LJ}
    well = {
        "kind": "ase",
        "calculator": "tests.workflows.helpers_constructed.PairWellLJ",
        "kwargs": WELL,
    }
    aimd_calc = PairWellLJ(**WELL) if aimd_with_well else LennardJones(**LJ)
    write_aimd(tmp_path / "aimd.extxyz", aimd_calc, 28)
    campaign = {
        "name": "constructed",
        "materials": [{"name": "LJ", "structure": "LJ.extxyz"}],
        "temperatures": [600],
        "preset": "tiny",
        "labeller": {**(plain if aimd_with_well else well), "elements": ["Ar"]},
        "settings": {
            "loop": {"initial": "trajectory", "trajectory": "aimd.extxyz", "max_iterations": 1},
            "screening": {"enabled": True},
        },
    }
    (tmp_path / "c.yaml").write_text(json.dumps(campaign))  # JSON is YAML
    out = CliRunner().invoke(
        app,
        ["run", "--campaign", str(tmp_path / "c.yaml"), "--workdir", str(tmp_path / "w")],
        env={"COLUMNS": "200"},
    )
    assert out.exit_code == 0, out.output
    (lj,) = json.loads((tmp_path / "w" / "campaign.json").read_text())["outcomes"]
    assert lj["verdict"] == verdict, lj["evidence"]
    decisive = [e for e in lj["evidence"] if not e.startswith("supporting:")]
    # decided beside the reference MD: event counts, trajectory σ^A or the force error
    # along the reference (which of them fires depends on how the collapse goes)
    beside = ("off-site events", "σ^A of the MLIP-MD", "along the reference MD")
    assert any(b in e for e in decisive for b in beside), decisive
    if aimd_with_well:  # the ensemble's own dense state: the reference relaxes away from it
        assert any("relaxes away" in e for e in decisive), decisive
