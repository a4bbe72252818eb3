"""The rare-events benchmark's measures on hand-made trajectories with known events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from active_mlip.core.frames import Frame
from active_mlip.makers.reference_md import EventSettings
from benchmarks.rare_events import (
    RATE_STARTS,
    Reference,
    Sequential,
    event_atoms,
    event_force_errors,
    event_rate,
    event_rate_ratio,
    events,
    load_runs,
    measure_rate,
    offset_per_event_atom,
    protocol_ratio,
    protocol_target,
    rate_ratio,
    read_npz,
    run_size,
    run_tag,
    shortest_bond,
    sigma_a_series,
    spread,
    target_check,
    time_split,
    training_overrides,
    validated,
    write_npz,
)

CU = Frame.from_atoms(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2))  # 32 atoms
R0 = np.asarray(CU.positions)


def _trajectory() -> list[np.ndarray]:
    """10 frames: atom 0 off by 1.3 Å in frames 2-4 (an event), atom 5 off in frame 7
    only (a flicker), atom 9 off from frame 8 to the end (an event still running)."""
    frames = [R0.copy() + 0.02 for _ in range(10)]  # a small uniform shift: no event
    for k in (2, 3, 4):
        frames[k][0] += [1.3, 0.0, 0.0]
    frames[7][5] += [0.0, 1.2, 0.0]
    for k in (8, 9):
        frames[k][9] += [0.0, 0.0, -1.1]
    return frames


def test_events_are_runs_beyond_a_fraction_of_the_shortest_bond():
    assert shortest_bond(CU) == pytest.approx(3.6 / np.sqrt(2))  # 2.546 Å: limit 1.018 Å
    traj = _trajectory()
    assert sorted(events(traj, CU)) == [(0, 2, 3), (9, 8, 2)]
    mask = event_atoms(traj, CU)
    assert mask.shape == (10, 32) and mask.sum() == 3 + 2
    assert mask[2:5, 0].all() and mask[8:, 9].all() and not mask[:, 5].any()
    # one logged frame suffices when asked: the flicker counts then
    assert len(events(traj, CU, EventSettings(min_frames=1))) == 3
    # 1.1 Å is no event for a limit of 0.45 x 2.546 = 1.146 Å
    assert sorted(events(traj, CU, EventSettings(distance_fraction=0.45))) == [(0, 2, 3)]


def test_event_rates_and_their_ratio():
    assert event_rate(3, 100) == pytest.approx(0.75)  # 3 events in 100 x 40 fs = 4 ps
    assert event_rate(3, 100, frame_fs=20.0) == pytest.approx(1.5)
    assert rate_ratio(0.75, 0.75) == 1.0 and rate_ratio(0.0, 1.5) == 0.0
    assert rate_ratio(0.0, 0.0) == 1.0 and rate_ratio(0.1, 0.0) == np.inf
    with pytest.raises(ValueError, match="without frames"):
        event_rate(1, 0)


def test_force_errors_on_event_atoms_and_on_the_rest():
    ref = [np.zeros((32, 3)) for _ in range(10)]
    pred = [np.full((32, 3), 0.010) for _ in range(10)]  # 10 meV/Å everywhere
    mask = event_atoms(_trajectory(), CU)
    for k in (2, 3, 4):
        pred[k][0] = [0.3, -0.3, 0.0]  # |err| mean over components: 0.2 eV/Å
    for k in (8, 9):
        pred[k][9] = [0.1, 0.1, 0.1]
    on_events, rest = event_force_errors(pred, ref, mask)
    assert on_events == pytest.approx((3 * 200.0 + 2 * 100.0) / 5)
    assert rest == pytest.approx(10.0)
    none, _ = event_force_errors(pred, ref, np.zeros_like(mask))
    assert none is None


def test_sigma_a_series_in_time_order():
    fc = np.eye(3 * 32)  # unit force constants: F2 = -u
    frames = []
    for k, pos in enumerate(_trajectory()[:3]):
        u = pos - R0
        extra = 0.0 if k == 0 else 0.05 * k
        forces = -u + extra  # harmonic, plus a uniform anharmonic part in frames 1, 2
        frames.append(Frame(numbers=CU.numbers, positions=pos.tolist(), cell=CU.cell,
                            pbc=CU.pbc, energy=0.0, forces=forces.tolist()))  # fmt: skip
    s = sigma_a_series(frames, CU, fc)
    assert s[0] == pytest.approx(0.0, abs=1e-12)
    # frame 1: F = -0.02 + 0.05 = 0.03 on every component, F - F2 = 0.05
    assert s[1] == pytest.approx(0.05 / 0.03)
    # frame 2: atom 0 is 1.3 Å off in x as well; F - F2 = 0.1 everywhere
    f2 = -(_trajectory()[2] - R0) + 0.1
    assert s[2] == pytest.approx(np.sqrt(96 * 0.01 / np.sum(f2**2)))


def test_time_split_keeps_the_held_out_part_last_and_apart():
    train, held = time_split(100, 0.2, gap=5)
    assert (train, held) == (range(75), range(80, 100))
    assert time_split(10, 0.25) == (range(8), range(8, 10))  # round(2.5) = 2
    with pytest.raises(ValueError, match="none for training"):
        time_split(10, 0.5, gap=5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        time_split(10, 1.0)


def _reference() -> Reference:
    frames = [CU.model_copy(update={"positions": p.tolist()}) for p in _trajectory()]
    mask = event_atoms([f.positions for f in frames], CU)
    return Reference(300.0, frames, CU, range(5), range(7, 10), mask)


def test_new_events_start_inside_the_window_after_its_first_frame():
    ref = _reference()
    # frames 1-6: atom 0's event starts at frame 2 (window index 1): one new event
    assert ref.new_events(1, 6) == 1
    # frames 2-6: the same event is already running at the window's first frame
    assert ref.new_events(2, 5) == 0
    # frames 6-9: atom 9 leaves its site at frame 8; atom 5's single frame is a flicker
    assert ref.new_events(6, 4) == 1
    frames, mask = ref.held_out(2)  # held-out frames 7 and 9
    assert len(frames) == 2 and mask[:, 9].tolist() == [False, True]


def test_rate_control_drives_the_same_md_with_an_ase_calculator():
    from ase.calculators.emt import EMT

    ref = _reference()
    # windows of 2 frames from held-out frames 7, 7, 8, 8 (fractions 0, .25, .5, .75 of 3)
    out = event_rate_ratio(EMT(), ref, n_frames=2, fc=None, seed=0)
    assert [w["start"] for w in out["windows"]] == [7, 7, 8, 8]
    # atom 9 leaves its site at frame 8: new in the windows from 7, running in those from 8
    assert [w["reference"] for w in out["windows"]] == [1, 1, 0, 0]
    assert out["reference_events"] == 2
    assert out["mlip_events"] == sum(w["mlip"] for w in out["windows"])
    assert out["mlip_ps"] == pytest.approx(4 * 2 * 0.04) and not out["blew_up"]
    assert out["sigma_a_mlip"] == [] and out["sigma_a_reference"] == []  # no force constants
    # at two MD seeds: the first seed's result, and against a control of the same runs ≈ 1
    first, protocol = measure_rate(EMT(), ref, 2, None, [0, 1], [out])
    assert first["windows"] == out["windows"] and first["mlip_events"] == out["mlip_events"]
    assert protocol is not None and len(protocol["per_seed"]) == 2
    assert protocol["per_seed"][0] == pytest.approx(1.0)  # seed 0 is the control itself
    assert measure_rate(EMT(), ref, 2, None, [0], [])[1] is None  # no control: no protocol


def test_protocol_ratio_averages_both_sides_over_md_seeds():
    def run(n: int, ps: float, starts=(7, 7, 8, 8), blew_up=False) -> dict:
        windows = [{"start": s, "mlip": 0, "reference": 0} for s in starts]
        return {"mlip_events": n, "mlip_ps": ps, "windows": windows, "blew_up": blew_up}

    control = [run(51, 12.0), run(69, 12.0)]  # 5 events per ps
    # 30 events in 12 ps and 18 in 6 ps (blew up halfway): 48 in 18 ps = 2.67 per ps
    out = protocol_ratio([run(30, 12.0), run(18, 6.0, blew_up=True)], control)
    assert out["ratio"] == pytest.approx((48 / 18) / 5.0)
    assert out["per_seed"] == pytest.approx([0.5, 0.6])
    assert out["control_events"] == [51, 69] and out["blew_up"]
    with pytest.raises(ValueError, match="windows differ"):
        protocol_ratio([run(3, 12.0, starts=(7, 8, 8, 9))], control)
    with pytest.raises(ValueError, match="at least one"):
        protocol_ratio([], control)


def test_aimd_sequential_takes_each_training_part_in_time_order_in_turn():
    a, b = _reference(), _reference()
    a.frames = [f.with_info(t=300, i=i) for i, f in enumerate(a.frames)]
    b.frames = [f.with_info(t=420, i=i) for i, f in enumerate(b.frames)]
    picked = Sequential([a, b]).first(5)
    # the source's own info is replaced: only its positions matter to the pool
    assert [f.info["index"] for f in picked] == [0, 1, 2, 3, 4]
    assert [f.positions for f in picked] == [
        a.frames[0].positions,
        b.frames[0].positions,
        a.frames[1].positions,
        b.frames[1].positions,
        a.frames[2].positions,
    ]
    with pytest.raises(IndexError):
        Sequential([a, b]).first(11)  # beyond both training parts (5 + 5 frames)


def test_spread_frames_cover_each_training_part_evenly_in_time():
    def part(t: float) -> Reference:  # 10 frames told apart by a shift; training part 0-4
        frames = [
            CU.model_copy(update={"positions": (R0 + 0.001 * k + t / 1e5).tolist()})
            for k in range(10)
        ]
        return Reference(t, frames, CU, range(5), range(7, 10), np.zeros((10, 32), bool))

    a, b = part(300.0), part(420.0)
    picked = spread([a, b], 5)  # 3 of a (frames 0, 2, 4), 2 of b (frames 0, 4), by time
    expected = [a.frames[0], b.frames[0], a.frames[2], a.frames[4], b.frames[4]]
    assert [f.positions for f in picked] == [f.positions for f in expected]
    assert [f.info["index"] for f in picked] == [0, 1, 2, 3, 4]
    # the whole training part and nothing past it (held-out frames start at 7)
    assert [f.positions for f in spread([a], 5)] == [f.positions for f in a.frames[:5]]


def test_run_overrides_get_their_own_work_directory():
    from argparse import Namespace

    plain = Namespace(size="small", iterations=None, explore_ps=None, period=False)
    assert run_tag(plain) == "small" and run_size(plain)["md_steps"] == 800
    long = Namespace(size="small", iterations=8, explore_ps=10.0, period=True)
    assert run_tag(long) == "small_it8_md10ps_period"
    size = run_size(long)
    assert size["md_steps"] == 2500 and size["iterations"] == 8 and size["period"]
    weighted = Namespace(**{**vars(plain), "training": ["energy_weight=1000"]})
    assert run_tag(weighted) == "small_energy_weight=1000"


def test_reused_cache_keeps_what_an_open_run_has_not_checkpointed(tmp_path):
    """montydb's SQLite is in WAL mode: a copy of the file alone would miss these rows."""
    import json
    import sqlite3

    from active_mlip.workflows.settings import ActiveLearningSettings
    from benchmarks.rare_events import seed_cache

    store = tmp_path / "seed0_old" / "active_learning" / "store"
    (store / "active_mlip" / "active_mlip_cache.payload").mkdir(parents=True)
    (store / "active_mlip" / "active_mlip_cache.payload" / "a.bson").write_bytes(b"x")
    (store / "monty.storage.cfg").write_text("[sqlite]\n")
    open_run = sqlite3.connect(store / "active_mlip" / "active_mlip_cache.collection")
    open_run.execute("PRAGMA journal_mode=WAL")
    open_run.execute("CREATE TABLE docs (k TEXT)")
    open_run.executemany("INSERT INTO docs VALUES (?)", [("a",), ("b",)])
    open_run.commit()  # committed to the WAL, not yet checkpointed into the file
    settings = ActiveLearningSettings()
    seed_cache(tmp_path / "seed0_old", tmp_path / "seed0_new", settings)
    new = tmp_path / "seed0_new" / "active_learning"
    with sqlite3.connect(new / "store" / "active_mlip" / "active_mlip_cache.collection") as c:
        assert sorted(c.execute("SELECT k FROM docs")) == [("a",), ("b",)]
    assert (new / "store" / "active_mlip" / "active_mlip_cache.payload" / "a.bson").exists()
    assert json.loads((new / "run.json").read_text())["fingerprint"] == settings.fingerprint()
    open_run.close()
    (new / "store" / "active_mlip" / "active_mlip_cache.payload" / "a.bson").write_bytes(b"y")
    seed_cache(tmp_path / "seed0_old", tmp_path / "seed0_new", settings)  # there: untouched
    assert (
        new / "store" / "active_mlip" / "active_mlip_cache.payload" / "a.bson"
    ).read_bytes() == b"y"
    assert sorted(p.name for p in new.parent.iterdir()) == ["active_learning"]  # no .partial
    with pytest.raises(FileNotFoundError, match="no result cache to reuse"):
        seed_cache(tmp_path / "seed1_none", tmp_path / "seed1_new", settings)
    assert not (tmp_path / "seed1_new").exists()


def test_training_overrides_are_validated():
    from active_mlip.makers.training import TrainingSettings

    base = TrainingSettings(energy_weight=10.0)
    over = training_overrides(["energy_weight=1000", "num_channels=32"])
    assert over == {"energy_weight": 1000, "num_channels": 32}
    t = validated(base, over)
    assert (t.energy_weight, t.num_channels, base.energy_weight) == (1000.0, 32, 10.0)
    with pytest.raises(ValueError, match="unknown training settings \\['energy_wieght'\\]"):
        validated(base, {"energy_wieght": 1.0})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        training_overrides(["energy_weight"])
    with pytest.raises(ValueError, match="not JSON"):
        training_overrides(["max_L=one"])
    with pytest.raises(ValueError):
        validated(base, {"max_L": 5})


def test_a_run_without_aimd_sequential_takes_that_curve_from_the_same_seed(tmp_path):
    import json

    def write(name: str, seed: int, curves: dict) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"seed": seed, "curves": curves}))
        return path

    aimd = [_point(32, 170.0), _point(180, 75.0)]
    full = [
        write("full0.json", 0, {"aiMD-sequential": [_point(1, 1.0)]}),
        write("full1.json", 1, {"aiMD-sequential": aimd}),
    ]
    lean = write("lean1.json", 1, {"active learning": [_point(60, 70.0)]})
    (run,) = load_runs([lean], full)
    assert run["curves"]["aiMD-sequential"] == aimd  # seed 1's, not seed 0's
    assert run["sequential_from"].endswith("full1.json")
    with pytest.raises(ValueError, match="seed 1 has no aiMD-sequential curve"):
        load_runs([lean], full[:1])


def _point(labels: int, event: float) -> dict:
    return {"labels": labels, "300K": {"event": event, "rest": 10.0}}


def test_target_needs_the_event_error_with_a_third_of_the_labels_and_a_fair_rate():
    run = {
        "temperatures": [300.0, 420.0],
        "curves": {
            "aiMD-sequential": [_point(30, 90.0), _point(90, 60.0), _point(180, 50.0)],
            "active learning": [_point(30, 90.0), _point(50, 55.0), _point(60, 48.0)],
        },
        "rates": {"active learning": {"rate_ratio": 1.2}},
    }
    c = target_check(run)
    # aiMD's 50 meV/Å with 180 labels; AL gets below it at 60 = 180 / 3
    assert c["goal_meV_per_A"] == 50.0 and c["aimd_labels"] == 180
    assert c["al_labels_to_goal"] == 60 and c["labels_ok"] and c["rate_ok"]
    run["curves"]["aiMD-sequential"][-1] = _point(150, 50.0)  # a third is 50 labels
    assert not target_check(run)["labels_ok"]
    run["rates"]["active learning"]["rate_ratio"] = 1.4
    assert not target_check(run)["rate_ok"]


def test_protocol_target_with_every_strategy_trained_alike():
    al = [{"labels": 32, "event_mae": 200.0}, {"labels": 48, "event_mae": 70.0}]
    al.append({"labels": 64, "event_mae": 55.0})
    seq = [{"labels": 96, "event_mae": 80.0, "rate": 0.4}]
    seq.append({"labels": 192, "event_mae": 56.0, "rate": 0.56})
    c = protocol_target(al, seq, {48: 1.5, 64: 0.99})
    # aiMD-sequential's 56 meV/Å at 192; AL first below it at 64 = 192 / 3
    assert (c["goal_meV_per_A"], c["aimd_labels"], c["aimd_rate"]) == (56.0, 192, 0.56)
    assert c["al_labels_to_goal"] == 64 and c["labels_ok"] and c["rate_ok"]
    # against the 96-label budget: the goal is 80, reached at 48 > 96 / 3, at a rate of 1.5
    c = protocol_target(al, seq, {48: 1.5, 64: 0.99}, budget=96)
    assert c["al_labels_to_goal"] == c["rate_at_labels"] == 48
    assert not c["labels_ok"] and not c["rate_ok"]
    # a goal from elsewhere (the mean over aiMD's seeds); the rate of 48 not measured: the last
    c = protocol_target(al, seq, {64: 0.99}, goal=70.0)
    assert (c["goal_meV_per_A"], c["aimd_event_mae"]) == (70.0, 56.0)
    assert c["al_labels_to_goal"] == 48 and c["rate_at_labels"] == 64 and c["rate_ok"]
    assert not protocol_target(al[:2], seq, {48: 1.0})["labels_ok"]  # never reaches 56
    # within a third of the budget, the first goal ensemble whose rate is in the window
    al.insert(2, {"labels": 60, "event_mae": 50.0})  # 60: goal reached, rate 0.6
    c = protocol_target(al, seq, {60: 0.6, 64: 0.99})
    assert c["al_labels_to_goal"] == 60 and (c["rate_at_labels"], c["rate"]) == (64, 0.99)
    assert c["met"]
    c = protocol_target(al, seq, {60: 0.6, 64: 1.4})  # neither in the window: the first's
    assert (c["rate_at_labels"], c["rate"], c["rate_ok"], c["met"]) == (60, 0.6, False, False)
    # a rate in the window, but only beyond a third of the budget (96 / 3 = 32)
    assert not protocol_target(al, seq, {48: 1.0}, budget=96)["met"]
    # the goal ensembles' rates not measured: the last measured is shown, and does not count
    c = protocol_target(al, seq, {128: 1.0})
    assert c["labels_ok"] and (c["rate_at_labels"], c["rate_measured_within"]) == (128, False)
    assert not c["rate_ok"] and not c["met"]
    with pytest.raises(ValueError, match="no point at 150 labels"):
        protocol_target(al, seq, {64: 1.0}, budget=150)


def test_verdict_reads_runs_rates_and_ceilings(tmp_path, capsys):
    import json

    from benchmarks.rare_events import main

    run_dir = tmp_path / "seed4_small"
    run_dir.mkdir()
    curve = [_point(32, 150.0), _point(40, 75.0), _point(48, 60.0)]
    run = {"seed": 4, "labels_al": 48, "curves": {"active learning": curve}}
    (run_dir / "rare_events.json").write_text(json.dumps(run))
    sigma = {"sigma_a_mlip": [1.0, 2.0], "sigma_a_reference": [1.5, 2.5]}
    rates = {"active learning": {"labels": 48, **sigma, "protocol": {"ratio": 0.9}}}
    rates["at 40 labels"] = {"labels": 40, **sigma, "protocol": {"ratio": 1.5}}
    ceilings = []
    for seed, mae in ((4, 62.0), (5, 92.0)):
        path = tmp_path / f"seed{seed}_other" / "ceiling_sequential.json"
        path.parent.mkdir()
        rows = [{"labels": 144, "event_mae": mae, "rest_mae": 30.0, "protocol": {"ratio": 0.5}}]
        path.write_text(json.dumps(rows))  # no "seed" field: the directory's name says it
        ceilings.append(str(path))
    args = ["verdict", str(run_dir), "--sequential", *ceilings, "--plot", str(tmp_path / "v.png")]
    with pytest.raises(FileNotFoundError, match="rates_protocol.json missing"):
        main(args)
    (run_dir / "rates_protocol.json").write_text(json.dumps(rates))
    with pytest.raises(ValueError, match="seed 4 at 144 labels is given twice"):
        main([*args, "--sequential", *ceilings, ceilings[0]])
    main([*args, "--goal", "per-seed"])
    assert "labels met (goal 62.0 at 144, AL reaches it at 48), rate met" in capsys.readouterr().out
    # the mean goal, (62 + 92) / 2 = 77, is reached at 40, where the rate is 1.5; the
    # rate is judged at 48 (<= 144 / 3), which reaches the goal at a rate in the window
    main([*args, "--out", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert "mean over its seeds 77.0" in out and "0.90 (48)" in out
    assert "labels met (goal 77.0 at 144, AL reaches it at 40), rate met => target met" in out
    [row] = json.loads((tmp_path / "v.json").read_text())
    assert row["seed"] == 4 and row["aimd_rate"] == 0.5 and row["aimd_event_mae"] == 62.0
    assert (tmp_path / "v.png").stat().st_size > 10_000


def test_shipped_copy_keeps_events_and_labels(tmp_path):
    frames = [
        CU.model_copy(
            update={"positions": p.tolist(), "energy": -1.5 - k, "forces": (p - R0).tolist()}
        )
        for k, p in enumerate(_trajectory())
    ]
    write_npz(frames, tmp_path / "t.npz")
    back = read_npz(tmp_path / "t.npz")
    assert len(back) == 10 and [f.energy for f in back] == [-1.5 - k for k in range(10)]
    assert np.allclose([f.positions for f in back], [f.positions for f in frames], atol=1e-5)
    assert np.allclose(back[3].forces[0], [1.32, 0.02, 0.02], atol=1e-6)
    assert sorted(events([f.positions for f in back], CU)) == [(0, 2, 3), (9, 8, 2)]


@pytest.mark.slow
def test_smoke_run_and_report_on_the_shipped_trajectories(tmp_path, capsys):
    """The whole benchmark at its smoke size (a minute): the numbers mean nothing, the
    bookkeeping does."""
    import json

    from benchmarks.rare_events import main

    # no cached extxyz in --references: the shipped copies in benchmarks/data are read
    args = ["--seed", "3", "--size", "smoke", "--references", str(tmp_path / "none")]
    main(["run", *args, "--workdir", str(tmp_path), "--temperatures", "300"])
    run = json.loads((tmp_path / "seed3_smoke" / "rare_events.json").read_text())
    al = run["curves"]["active learning"]
    aimd = run["curves"]["aiMD-sequential"]
    assert al[0]["labels"] == 8 and run["labels_al"] == al[-1]["labels"] > 8
    # aiMD-sequential goes on to 2x active learning's labels (the smoke size's "beyond")
    assert aimd[-1]["labels"] == round(2 * run["labels_al"])
    assert [p["labels"] for p in run["curves"]["random MLIP-MD"]] == [p["labels"] for p in al]
    # the first ensemble is shared: the same scores at 8 labels for all three
    assert aimd[0]["300K"] == al[0]["300K"] == run["curves"]["random MLIP-MD"][0]["300K"]
    assert set(run["rates"]) == {
        "first ensemble",
        "active learning",
        "aiMD-sequential at AL's labels",
        "aiMD-sequential, full budget",
        "random MLIP-MD",
    }
    for r in run["rates"].values():
        assert r["reference_events"] >= 0 and len(r["sigma_a_reference"]) == len(RATE_STARTS) * 6
    main(
        [
            "report",
            str(tmp_path / "seed3_smoke" / "rare_events.json"),
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    out = capsys.readouterr().out
    assert "target:" in out and (tmp_path / "p.png").stat().st_size > 10_000
    # one more iteration, reusing the first run's cache: only the new members are trained
    main(
        ["run", *args, "--workdir", str(tmp_path), "--temperatures", "300", "--al-only"]
        + ["--iterations", "3", "--reuse-from", "smoke"]
    )
    longer = tmp_path / "seed3_smoke_it3"
    summary = json.loads((longer / "active_learning" / "summary.json").read_text())
    assert summary["this_invocation"]["members_reused"] == 2 * len(al)
    assert summary["this_invocation"]["members_trained"] == 2
    al3 = json.loads((longer / "rare_events.json").read_text())["curves"]["active learning"]
    assert al3[: len(al)] == al and len(al3) == len(al) + 1


def test_energy_offset_per_event_atom_is_the_slope_of_the_gaps():
    # 0.08 eV too high per atom in an event, 0.02 eV overall: an exact line
    n = [0, 2, 5, 9]
    slope, intercept = offset_per_event_atom([0.02 + 0.08 * k for k in n], n)
    assert slope == pytest.approx(0.08) and intercept == pytest.approx(0.02)
    with pytest.raises(ValueError, match="differ in their number"):
        offset_per_event_atom([0.1, 0.2], [3, 3])
