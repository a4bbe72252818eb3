"""Reference MD: events, the labeller's own MD, and the comparison with an MLIP's MD."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from jobflow import Flow, run_locally

from active_mlip.core.frames import Frame
from active_mlip.makers.diagnostics import DiagnosticsSettings, FrameCheck, screening_verdict
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.labelling import ASECalculatorLabeller
from active_mlip.makers.reference_md import (
    EventSettings,
    ReferenceComparison,
    ReferenceMDDocument,
    ReferenceMDMaker,
    ReferenceMDSettings,
    compare_with_reference,
    nearest_neighbour_distance,
    off_site_events,
    run_reference_md,
)
from active_mlip.makers.selection import ReferenceStatistics
from active_mlip.stores.job_store import StoreSettings, make_job_store

EMT_LABELLER = ASECalculatorLabeller(calculator="ase.calculators.emt.EMT")


def _pair(positions) -> Frame:
    return Frame(
        numbers=[29, 29],
        positions=positions,
        cell=(10 * np.eye(3)).tolist(),
        pbc=[True, True, True],
    )


def test_off_site_events_hand_counted():
    r0 = _pair([[2.0, 5.0, 5.0], [4.0, 5.0, 5.0]])
    base = np.asarray(r0.positions)
    frames = [base.copy() for _ in range(8)]
    for i in (2, 3, 4):  # atom 0 leaves its site for three frames
        frames[i][0, 0] += 1.2
    frames[6][1, 1] += 1.5  # atom 1 flickers out for one frame only
    frames[7][0, 0] -= 9.5  # 0.5 Å across the periodic boundary: on site
    assert off_site_events(frames, r0, distance=1.0, min_frames=2) == [(0, 2, 3)]
    assert off_site_events(frames, r0, distance=1.0, min_frames=1) == [(0, 2, 3), (1, 6, 1)]
    assert off_site_events(frames, r0, distance=1.3, min_frames=1) == [(1, 6, 1)]
    # a run that lasts to the end of the trajectory counts too
    frames[7][0, 0] += 9.5 + 1.2
    assert off_site_events(frames, r0, 1.0, 2)[-1] == (0, 2, 3)
    assert off_site_events(frames, r0, 1.0, 1)[-1] == (0, 7, 1)
    assert nearest_neighbour_distance(r0) == pytest.approx(2.0)


def test_reference_md_is_the_labellers_own_md_seeded_like_a_walker():
    cu = Frame.from_atoms(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    settings = ReferenceMDSettings(n_steps=20, timestep_fs=2.0, loginterval=5)
    frames = run_reference_md(EMT_LABELLER, cu, 300.0, 7, settings)
    assert [f.info["step"] for f in frames] == [5, 10, 15, 20]
    assert [f.info["time_fs"] for f in frames] == [10.0, 20.0, 30.0, 40.0]
    for f in frames:  # every frame carries the reference's own label for its positions
        atoms = f.unlabelled().to_atoms()
        atoms.calc = EMT()
        assert f.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        assert np.allclose(f.forces, atoms.get_forces(), atol=1e-9)
        assert f.info["labeller"] == EMT_LABELLER.identity().settings_hash
    again = run_reference_md(EMT_LABELLER, cu, 300.0, 7, settings)
    assert [f.positions for f in again] == [f.positions for f in frames]
    other = run_reference_md(EMT_LABELLER, cu, 300.0, 8, settings)
    assert other[0].positions != frames[0].positions
    with pytest.raises(ValueError, match="temperature > 0"):
        run_reference_md(EMT_LABELLER, cu, 0.0, 7, settings)


def test_reference_md_job_is_cached_by_content(tmp_path):
    cu = Frame.from_atoms(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    maker = ReferenceMDMaker(
        labeller=EMT_LABELLER, settings=ReferenceMDSettings(n_steps=10, loginterval=5)
    )
    store = make_job_store(StoreSettings(local_path=tmp_path))
    outs = []
    for _ in range(2):
        job = maker.make(cu, 300.0, 3)
        outs.append(run_locally(Flow([job]), store=store, ensure_success=True)[job.uuid][1].output)
    assert not outs[0].reused and outs[1].reused
    assert outs[0].cache_key == outs[1].cache_key and len(outs[1].frames) == 2
    assert outs[1].frames[0].positions == outs[0].frames[0].positions


def _comparison(**kw) -> ReferenceComparison:
    base = dict(
        temperature=300.0,
        duration_ps=2.4,
        mlip_duration_ps=2.4,
        event_distance=1.05,
        events_reference=0,
        events_mlip=0,
        time_ps=[0.04 * (i + 1) for i in range(60)],
        force_rmse=[50.0] * 60,
        uncertainty=[0.1] * 60,
        max_displacement=[0.3] * 60,
        sigma_a_reference=0.45,
        sigma_a_mlip=0.48,
        n_reference_steps=600,
    )
    return ReferenceComparison(**{**base, **kw})


def _evaluation() -> EvaluationDocument:
    return EvaluationDocument(
        n_frames=16,
        n_members=4,
        mae_energy_meV_per_atom=1.0,
        rmse_energy_meV_per_atom=1.0,
        mae_forces_meV_per_A=40.0,
        rmse_forces_meV_per_A=50.0,
        reference=ReferenceStatistics(
            key="force_max", u_mean=0.1, u_std=0.01, e_mean=0.0, e_std=1.0, n_frames=16
        ),
        predictions={"force_rmse": [46.0, 48.0, 50.0, 52.0, 54.0, 50.0, 49.0, 51.0] * 2},
    )


@pytest.mark.parametrize(
    ("comparison", "verdict", "tests"),
    [
        (_comparison(), "ok", []),
        # a reference event the ensemble does not know: its force error spikes there
        (
            _comparison(force_rmse=[50.0] * 40 + [240.0] * 3 + [50.0] * 17),
            "missing",
            ["reference_force_error"],
        ),
        # a uniform rise along the whole reference (thermal frames against a harmonic
        # test set) is no event: the level follows the trajectory's own errors
        (_comparison(force_rmse=[80.0 + 3 * np.sin(i) for i in range(60)]), "ok", []),
        # 7 reference events, none in the MLIP-MD of the same length: p = 0.5^7 < 0.01
        (_comparison(events_reference=7, events_mlip=0), "missing", ["event_rate"]),
        # 3 against 0 is not yet significant at 1 %
        (_comparison(events_reference=3, events_mlip=0), "ok", []),
        (_comparison(events_reference=0, events_mlip=8), "hallucinated", ["event_rate"]),
        (_comparison(sigma_a_mlip=0.9), "hallucinated", ["sigma_a_trajectory"]),
        (_comparison(sigma_a_mlip=0.2), "missing", ["sigma_a_trajectory"]),
        # MgO-like: a harmonic reference (0.19) seen through 27 % force errors shows 0.33
        # in MLIP-MD without visiting anything new: sqrt(0.19² + 0.27²) = 0.33
        (
            _comparison(sigma_a_reference=0.19, sigma_a_mlip=0.33, relative_force_error=0.27),
            "ok",
            [],
        ),
        (
            _comparison(sigma_a_reference=0.19, sigma_a_mlip=0.33, relative_force_error=0.05),
            "hallucinated",
            ["sigma_a_trajectory"],
        ),
    ],
)
def test_reference_evidence_on_constructed_comparisons(comparison, verdict, tests):
    calm = [0.1] * 60
    doc = screening_verdict(
        _evaluation(), {300.0: calm}, [], DiagnosticsSettings(), "X", [comparison]
    )
    assert doc.verdict == verdict, doc.summary
    assert [e.test for e in doc.evidence] == tests
    assert doc.references == [comparison]
    for e in doc.evidence:
        assert e.value > e.threshold


def test_the_first_spike_along_the_reference_is_reported_with_its_time():
    c = _comparison(
        force_rmse=[50.0] * 40 + [150.0, 260.0, 120.0] + [50.0] * 17,
        max_displacement=[0.3] * 41 + [1.2] + [0.3] * 18,
    )
    doc = screening_verdict(_evaluation(), {300.0: [0.1] * 60}, [], DiagnosticsSettings(), "X", [c])
    (e,) = doc.evidence
    assert e.value == 260.0
    assert "at 1.68 ps (an atom 1.20 Å from its site)" in e.message
    assert "first above the level" in e.message and "at 1.64 ps" in e.message


def test_compare_with_reference_counts_events_on_both_trajectories():
    cu = Frame.from_atoms(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))
    fc = SimpleNamespace(reference=cu, fc_array=lambda: np.eye(3 * cu.n_atoms))
    base = np.asarray(cu.positions)

    def frame(pos, **info):
        forces = -(pos - base) + 0.01  # harmonic with unit force constants, plus a bit
        return Frame(
            numbers=cu.numbers, positions=pos.tolist(), cell=cu.cell, pbc=cu.pbc,
            energy=0.0, forces=forces.tolist(), info=info,
        )  # fmt: skip

    hop = [base.copy() for _ in range(6)]
    for p in hop[2:5]:
        p[0] += [1.3, 0.0, 0.0]  # 1.3 Å > 0.4 x 2.55 Å
    reference = ReferenceMDDocument(
        temperature=300.0, seed=1, timestep_fs=4.0, n_steps=60,
        frames=[frame(p, time_fs=40.0 * (i + 1)) for i, p in enumerate(hop)],
    )  # fmt: skip
    mlip_frames = [frame(base + 0.05, forces_mlip=(-0.05 + 0.01 * np.ones_like(base)).tolist())]
    exploration = SimpleNamespace(samples=mlip_frames * 6, n_steps=60)
    on_reference = _evaluation().model_copy(
        update={"predictions": {"force_rmse": [50.0] * 6, "u_force_max": [0.1] * 6}}
    )
    c = compare_with_reference(reference, on_reference, exploration, fc, EventSettings())
    assert c.event_distance == pytest.approx(0.4 * 3.6 / np.sqrt(2))
    assert (c.events_reference, c.events_mlip) == (1, 0)
    assert c.duration_ps == c.mlip_duration_ps == pytest.approx(0.24)
    assert c.time_ps == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.20, 0.24])
    assert c.max_displacement[2] == pytest.approx(1.3) and c.max_displacement[0] == 0.0
    assert c.force_rmse == [50.0] * 6 and c.uncertainty == [0.1] * 6
    # 0.05 eV/Å errors against the reference forces: 0.01 on every component of the
    # still frames; the hop frames add one component of -1.29 among 96
    still, hop_ms = 1e-4, (1.29**2 + 95e-4) / 96
    assert c.relative_force_error == pytest.approx(0.05 / np.sqrt((3 * still + 3 * hop_ms) / 6))
    # F − F⁽²⁾ = 0.01 on every component while the hop lasts, and all forces are 0.01 on
    # the still frames: the trajectory σ^A is sqrt(<Σ(0.01)²> / <ΣF²>)
    f2 = [np.sum(np.asarray(f.forces) ** 2) for f in reference.frames]
    expected = np.sqrt(3 * cu.n_atoms * 1e-4 / np.mean(f2))
    assert c.sigma_a_reference == pytest.approx(expected)
    # the MLIP-MD: F = -0.04, u = +0.05, F⁽²⁾ = -0.05 on every component: 0.01 / 0.04
    assert c.sigma_a_mlip == pytest.approx(0.25)


def test_checked_frames_are_judged_against_the_thermal_errors_along_the_reference():
    # The test set is harmonic samples (errors ~50 meV/Å); thermal frames carry larger
    # errors (~70 along the reference MD). A checked MLIP-MD frame at 110 is above twice the
    # test mean (100) but not twice the mean of test and thermal frames together (117).
    check = FrameCheck(
        kind="md", temperature=300.0, step=300, energy_gap_meV_per_atom=0.0,
        energy_gap_eV=0.0, force_rmse_meV_per_A=110.0, max_reference_force=1.0,
    )  # fmt: skip
    settings = DiagnosticsSettings()
    alone = screening_verdict(_evaluation(), {300.0: [0.1] * 60}, [check], settings)
    assert alone.verdict == "missing" and alone.evidence[0].test == "force_error"
    thermal = _comparison(force_rmse=[70.0 + 5 * np.sin(i) for i in range(60)])
    beside = screening_verdict(
        _evaluation(), {300.0: [0.1] * 60}, [check], settings, "X", [thermal]
    )
    assert beside.verdict == "ok", beside.summary


def test_beside_a_reference_md_the_mlip_md_checks_support_but_do_not_decide():
    # A checked MLIP-MD frame at 300 meV/Å: far above any baseline (level ~110). Alone it
    # decides 'missing'; beside a flat reference MD without events it is supporting
    # evidence only, and the verdict is 'ok'. A reference-MD spike decides again, with
    # the MLIP-MD frame kept as support behind it.
    check = FrameCheck(
        kind="md", temperature=300.0, step=300, energy_gap_meV_per_atom=0.0,
        energy_gap_eV=0.0, force_rmse_meV_per_A=300.0, max_reference_force=1.0,
    )  # fmt: skip
    settings, calm = DiagnosticsSettings(), {300.0: [0.1] * 60}
    alone = screening_verdict(_evaluation(), calm, [check], settings)
    assert (alone.verdict, alone.flags) == ("missing", ["missing"])
    flat = screening_verdict(_evaluation(), calm, [check], settings, "X", [_comparison()])
    assert (flat.verdict, flat.flags) == ("ok", [])
    (e,) = flat.evidence
    assert e.test == "force_error" and e.supporting and e.value == 300.0
    assert flat.summary.startswith("ok: no spike")
    spike = _comparison(force_rmse=[50.0] * 40 + [400.0] * 3 + [50.0] * 17)
    both = screening_verdict(_evaluation(), calm, [check], settings, "X", [spike])
    assert (both.verdict, both.flags) == ("missing", ["missing"])
    assert [(e.test, e.supporting) for e in both.evidence] == [
        ("reference_force_error", False),
        ("force_error", True),
    ]
    # where no reference MD ran, an energy gap at an MLIP minimum decides as before
    gap = check.model_copy(update={"kind": "minimum", "energy_gap_eV": 0.5})
    assert screening_verdict(_evaluation(), calm, [gap], settings).verdict == "hallucinated"
    beside = screening_verdict(_evaluation(), calm, [gap], settings, "X", [_comparison()])
    assert beside.verdict == "hallucinated"


def test_beside_a_reference_md_an_energy_gap_decides_at_an_mlip_minimum_only():
    md = FrameCheck(
        kind="md", temperature=300.0, step=200, energy_gap_meV_per_atom=0.0,
        energy_gap_eV=0.5, force_rmse_meV_per_A=50.0, max_reference_force=0.05,
    )  # fmt: skip
    settings, calm, flat = DiagnosticsSettings(), {300.0: [0.1] * 60}, [_comparison()]
    # without a reference MD the MD frame's 0.5 eV gap decides, as before
    assert screening_verdict(_evaluation(), calm, [md], settings).verdict == "hallucinated"
    doc = screening_verdict(_evaluation(), calm, [md], settings, "X", flat)
    assert doc.verdict == "ok" and [(e.test, e.supporting) for e in doc.evidence] == [
        ("energy_gap", True)
    ]
    minimum = md.model_copy(update={"kind": "minimum", "energy_gap_eV": 0.4})
    doc = screening_verdict(_evaluation(), calm, [md, minimum], settings, "X", flat)
    assert doc.verdict == "hallucinated"
    assert [(e.test, e.supporting, e.value) for e in doc.evidence] == [
        ("energy_gap", False, 0.4),
        ("energy_gap", True, 0.5),
    ]
