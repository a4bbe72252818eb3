"""The campaign report says what happened, with or without screening."""

from __future__ import annotations

import re

from active_mlip.app.campaign_report import MaterialOutcome, write_report


def _outcome(name: str, verdict: str, maes: list[float]) -> MaterialOutcome:
    return MaterialOutcome(
        material=name,
        verdict=verdict,
        first_mae_forces_meV_per_A=maes[0],
        final_mae_forces_meV_per_A=maes[-1],
        first_mae_energy_meV_per_atom=1.0,
        final_mae_energy_meV_per_atom=0.5,
        labels_used=28 + 6 * (len(maes) - 1),
        curve=[
            {"iteration": i, "n_train": 20 + 6 * i, "mae_forces": m, "mae_energy": 1.0}
            for i, m in enumerate(maes)
        ],
    )


def test_without_screening_every_material_learned_and_has_its_curve(tmp_path):
    outcomes = [_outcome(m, "not screened", [60.0, 40.0, 30.0]) for m in ("CuI", "AgI", "KCl")]
    page = write_report(outcomes, tmp_path, campaign="c").read_text()
    assert "screening was off: every material ran active learning" in page
    assert "flagged" not in page.split("<table>")[0]
    assert not (tmp_path / "verdicts.png").exists()  # no chart of 'not screened' bars
    assert (tmp_path / "learning_curves.png").stat().st_size > 5000
    assert "Learning curves of the 3 materials." in page
    assert re.search(r"<th>labels used</th>", page) and "not charged" in page


def test_with_screening_the_flagged_learned_and_the_ok_stopped(tmp_path):
    outcomes = [
        _outcome("CuI", "missing", [60.0, 35.0]),
        _outcome("KCl", "ok", [20.0]),
        _outcome("NaCl", "ok", [22.0]),
    ]
    page = write_report(outcomes, tmp_path, campaign="c").read_text()
    assert "3 screened: 2 judged ok (no active learning), 1 flagged" in page
    assert "Learning curves of the 1 flagged materials." in page
    assert (tmp_path / "verdicts.png").stat().st_size > 3000
