"""Tests of the ensemble-training stage (tiny MACE models on EMT-labelled Cu, CPU)."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch
from jobflow import run_locally

from active_mlip.core.blobs import Blob
from active_mlip.core.frames import Frame
from active_mlip.makers.schemas import EnsembleDocument, MemberDocument
from active_mlip.makers.training import (
    EnsembleTrainingMaker,
    TrainingSettings,
    _parent_member,
    assign_subsets,
    run_mace_training,
    split_subset,
)
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.workflows.presets import training_preset
from tests.makers.helpers_training import E0S, emt_frames


def _result(responses: dict, flow) -> EnsembleDocument:
    out = responses[flow.output.uuid]
    return out[max(out)].output


# --------------------------------------------------------------------------------------
# subsets and settings (no training)
# --------------------------------------------------------------------------------------
def test_assign_subsets_is_a_balanced_partition_with_validation_frames():
    frames = [
        Frame(numbers=[29], positions=[[0.1 * i, 0, 0]], cell=np.eye(3).tolist()) for i in range(14)
    ]
    out = assign_subsets(frames, n_sub=3, seed=5, valid_fraction=0.2)
    assert [f.structure_hash() for f in out] == [f.structure_hash() for f in frames]
    counts = Counter(f.info["subset"] for f in out)
    assert set(counts) == {0, 1, 2}
    assert sorted(counts.values()) == [4, 5, 5]  # 14 frames over 3 subsets
    for s, n in counts.items():
        n_valid = sum(f.info["valid"] for f in out if f.info["subset"] == s)
        assert n_valid == max(1, round(0.2 * n))  # 1 of 4 or 5
    # 10 frames, 2 subsets, 20 %: exactly 5 per subset, one of them for validation.
    two = assign_subsets(frames[:10], n_sub=2, seed=0, valid_fraction=0.2)
    assert Counter(f.info["subset"] for f in two) == {0: 5, 1: 5}
    assert sum(f.info["valid"] for f in two) == 2
    # Deterministic, and the seed matters.
    again = assign_subsets(frames, n_sub=3, seed=5)
    assert [f.info for f in again] == [f.info for f in out]
    others = [assign_subsets(frames, n_sub=3, seed=s) for s in range(6, 12)]
    assert any([f.info["subset"] for f in o] != [f.info["subset"] for f in out] for o in others)


def test_assign_subsets_keeps_existing_roles_when_the_pool_grows():
    frames = [
        Frame(numbers=[29], positions=[[0.1 * i, 0, 0]], cell=np.eye(3).tolist()) for i in range(20)
    ]
    first = assign_subsets(frames[:12], n_sub=2, seed=1)
    # Appending frames never moves old ones, whether or not the old assignment was kept.
    grown_raw = assign_subsets(frames, n_sub=2, seed=1)
    grown_kept = assign_subsets(first + frames[12:], n_sub=2, seed=1)
    for a, b, c in zip(first, grown_raw, grown_kept, strict=False):
        assert a.info == b.info == c.info
    assert Counter(f.info["subset"] for f in grown_kept) == {0: 10, 1: 10}
    # A frame that already carries a subset and role keeps them, even if unbalanced.
    pinned = [f.with_info(subset=1, valid=False) for f in frames[:6]] + frames[6:10]
    out = assign_subsets(pinned, n_sub=2, seed=1)
    assert [f.info["subset"] for f in out[:6]] == [1] * 6
    assert [f.info["subset"] for f in out[6:]] == [0] * 4  # new frames fill the small subset
    with pytest.raises(ValueError, match="subset.*=3"):
        assign_subsets([frames[0].with_info(subset=3)], n_sub=2)


def test_settings_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="at least 2 members"):
        TrainingSettings(n_sub=1, n_seed=1)
    with pytest.raises(ValueError, match="n_sub must be >= 1, got 0"):
        TrainingSettings(n_sub=0, n_seed=4)
    with pytest.raises(ValueError, match="n_seed must be >= 1, got -1"):
        TrainingSettings(n_sub=3, n_seed=-1)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=f"valid_fraction.*got {bad}"):
            TrainingSettings(valid_fraction=bad)
    with pytest.raises(ValueError, match="max_L"):
        TrainingSettings(max_L=5)
    ok = TrainingSettings(n_sub=1, n_seed=2)
    assert ok.n_members == 2


def test_member_seeds_are_deterministic_and_distinct():
    s = TrainingSettings(n_sub=3, n_seed=2, seed=7)
    seeds = [s.member_seed(i, j) for i in range(3) for j in range(2)]
    assert len(set(seeds)) == 6
    assert seeds == [
        TrainingSettings(n_sub=3, n_seed=2, seed=7).member_seed(i, j)
        for i in range(3)
        for j in range(2)
    ]
    assert seeds != [TrainingSettings(seed=8).member_seed(i, j) for i in range(3) for j in range(2)]


def test_make_rejects_bad_inputs_before_any_work():
    maker = EnsembleTrainingMaker(settings=training_preset("tiny", n_sub=2))
    frames = emt_frames(6)
    with pytest.raises(ValueError, match="frame 2 has no energy"):
        maker.make(frames[:2] + [frames[2].unlabelled()] + frames[3:], E0S)
    with pytest.raises(ValueError, match=r"\['Cu'\] without a reference energy"):
        maker.make(frames, {"Ag": -0.1})
    with pytest.raises(ValueError, match="e0s\\['Cu'\\] must be a finite"):
        maker.make(frames, {"Cu": float("nan")})
    with pytest.raises(ValueError, match=r"subset \d has 1 training and 0 validation"):
        maker.make(frames[:3], E0S)  # 2 subsets need >= 2 frames each
    flow = maker.make(frames, E0S)
    assert len(flow.jobs) == 3  # 2 members + gather


def test_warm_start_parent_is_skipped_when_it_cannot_apply():
    settings = training_preset("tiny", n_sub=1, n_seed=2)
    member = MemberDocument(
        index=0, subset=0, seed=1, model_file=Blob.from_bytes(b"x", "m"), n_train=1, n_valid=1
    )
    prev = EnsembleDocument(
        members=[member],
        n_sub=1,
        n_seed=1,
        elements=["Cu"],
        e0s=E0S,
        r_max=settings.r_max,
        settings=settings.model_dump(),
    )
    assert _parent_member(prev, settings, 0, 0)[0] is member
    assert _parent_member(prev, settings, 0, 0, ["Cu"])[0] is member
    assert _parent_member(prev, settings, 0, 0, ["Cu", "I"])[0] is None  # a new element
    assert _parent_member(prev, settings, 1, 0)[0] is None  # no member 1 before
    assert _parent_member(None, settings, 0, 0)[0] is None
    off = settings.model_copy(update={"warm_start": False})
    assert _parent_member(prev, off, 0, 0)[0] is None
    wider = settings.model_copy(update={"num_channels": 32})
    assert _parent_member(prev, wider, 0, 0) == (
        None,
        "previous ensemble has a different architecture",
    )


def test_mace_failure_raises_with_the_log_tail(tmp_path):
    frames = emt_frames(4)
    bad = training_preset("tiny", extra_args={"loss": "no_such_loss"})
    with pytest.raises(RuntimeError, match="(?s)MACE training failed.*no_such_loss"):
        run_mace_training(frames[:3], frames[3:], E0S, bad, 1, tmp_path / "run", device="cpu")


# --------------------------------------------------------------------------------------
# training through jobflow (tiny models)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny ensemble (1 subset x 2 seeds) trained through run_locally, timed."""
    store = make_job_store(StoreSettings(local_path=tmp_path_factory.mktemp("store")))
    frames = emt_frames(12)
    settings = training_preset("tiny", n_sub=1, n_seed=2, device="cpu")
    maker = EnsembleTrainingMaker(settings=settings)
    flow = maker.make(frames, E0S)
    t0 = time.perf_counter()
    responses = run_locally(flow, store=store, ensure_success=True, log=False)
    seconds = time.perf_counter() - t0
    return dict(
        store=store,
        frames=frames,
        settings=settings,
        maker=maker,
        doc=_result(responses, flow),
        seconds=seconds,
    )


@pytest.mark.slow
def test_trained_ensemble_document(trained, tmp_path):
    doc: EnsembleDocument = trained["doc"]
    assert isinstance(doc, EnsembleDocument)
    assert doc.size == 2 and doc.n_sub == 1 and doc.n_seed == 2
    assert doc.elements == ["Cu"] and doc.e0s == E0S and doc.r_max == 4.5
    assert [m.index for m in doc.members] == [0, 1]
    train, valid = split_subset(trained["frames"], 0, 1, 0, 0.2)
    assert (len(train), len(valid)) == (10, 2)  # round(0.2 * 12) = 2 validation frames
    for m in doc.members:
        assert not m.reused and not m.warm_started
        assert m.n_train == 10 and m.n_valid == 2
        assert m.train_hashes == [f.structure_hash() for f in train]
        assert m.model_file.to_bytes()  # hash verifies
        assert m.metrics["epochs"] == 10
        assert np.isfinite(m.metrics["valid_rmse_f_meV_per_A"])
        # The saved model is the best checkpoint: no worse than before training.
        assert m.metrics["valid_loss"] < m.metrics["initial_valid_loss"]
    assert doc.members[0].seed != doc.members[1].seed
    # Two seeds on the same data give different weights.
    paths = [m.model_file.write(tmp_path / f"m{m.index}.model") for m in doc.members]
    models = [torch.load(p, weights_only=False, map_location="cpu") for p in paths]
    p0 = torch.cat([p.detach().flatten() for p in models[0].parameters()])
    p1 = torch.cat([p.detach().flatten() for p in models[1].parameters()])
    assert p0.shape == p1.shape and not torch.allclose(p0, p1)


@pytest.mark.slow
def test_members_predict_forces_better_than_zero(trained, tmp_path):
    from mace.calculators import MACECalculator

    doc: EnsembleDocument = trained["doc"]
    test = emt_frames(4, start=100)  # never trained on
    ref_f = np.concatenate([np.asarray(f.forces) for f in test])
    for m in doc.members:
        path = m.model_file.write(tmp_path / f"m{m.index}.model")
        calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        pred_f, pred_e = [], []
        for f in test:
            atoms = f.to_atoms()
            atoms.calc = calc
            pred_e.append(atoms.get_potential_energy())
            pred_f.append(atoms.get_forces())
        rmse = np.sqrt(np.mean((np.concatenate(pred_f) - ref_f) ** 2))
        # Predicting zero forces (the trivial baseline) gives the forces' RMS.
        assert rmse < 0.7 * np.sqrt(np.mean(ref_f**2))
        assert np.all(np.isfinite(pred_e))


@pytest.mark.slow
def test_second_run_reuses_every_member(trained):
    flow = trained["maker"].make(trained["frames"], E0S)
    t0 = time.perf_counter()
    responses = run_locally(flow, store=trained["store"], ensure_success=True, log=False)
    seconds = time.perf_counter() - t0
    doc = _result(responses, flow)
    assert [m.reused for m in doc.members] == [True, True]
    assert [m.model_file.sha256 for m in doc.members] == [
        m.model_file.sha256 for m in trained["doc"].members
    ]
    assert seconds < 0.5 * trained["seconds"]


@pytest.mark.slow
def test_warm_start_beats_training_from_scratch(trained):
    """Same data, same epochs: fine-tuning the previous members ends at a lower loss."""
    frames = trained["frames"] + emt_frames(4, start=50)  # the pool grew
    store, settings = trained["store"], trained["settings"]
    warm_flow = EnsembleTrainingMaker(settings=settings).make(frames, E0S, trained["doc"])
    cold = settings.model_copy(update={"warm_start": False})
    cold_flow = EnsembleTrainingMaker(settings=cold).make(frames, E0S, trained["doc"])
    warm = _result(run_locally(warm_flow, store=store, ensure_success=True, log=False), warm_flow)
    cold = _result(run_locally(cold_flow, store=store, ensure_success=True, log=False), cold_flow)
    assert [m.warm_started for m in warm.members] == [True, True]
    assert [m.warm_started for m in cold.members] == [False, False]
    assert not any(m.reused for m in warm.members + cold.members)
    # The old frames kept their roles: the two earlier validation frames are still held out.
    assert all(
        set(m.train_hashes) >= set(trained["doc"].members[0].train_hashes) for m in warm.members
    )
    warm_loss = np.mean([m.metrics["valid_loss"] for m in warm.members])
    cold_loss = np.mean([m.metrics["valid_loss"] for m in cold.members])
    assert warm_loss < cold_loss


def test_mace_arguments(tmp_path):
    from active_mlip.makers.training import _mace_args

    s = training_preset("tiny", warm_start_epochs=3, warm_start_lr=0.001)
    e0s = {"I": -0.25, "Cu": -1.5}
    cold = _mace_args(s, tmp_path, 11, "cpu", e0s, None, n_train=3)
    opts = dict(zip(cold[::2], cold[1::2], strict=False))
    # E0s keyed by atomic number; every member gets the same element table, sorted by Z.
    assert opts["--E0s"] == "{53: -0.25, 29: -1.5}"
    assert opts["--atomic_numbers"] == "[29, 53]"
    assert opts["--batch_size"] == "3"  # MACE drops incomplete batches: never above n_train
    assert opts["--max_num_epochs"] == "10" and opts["--lr"] == "0.01"
    assert opts["--seed"] == "11" and "--foundation_model" not in opts
    warm = _mace_args(s, tmp_path, 11, "cpu", e0s, tmp_path / "p.model", n_train=30)
    wopts = dict(zip(warm[::2], warm[1::2], strict=False))
    assert wopts["--foundation_model"] == str(tmp_path / "p.model")
    assert wopts["--multiheads_finetuning"] == "False"
    assert wopts["--max_num_epochs"] == "3" and wopts["--lr"] == "0.001"
    assert wopts["--batch_size"] == "4"
    assert "--ema" not in cold and "--ema_decay" not in cold
    # The paper preset validates (and keeps) an EMA of the weights, warm runs too.
    p = training_preset("paper")
    pwarm = _mace_args(p, tmp_path, 11, "cpu", e0s, tmp_path / "p.model", n_train=30)
    assert pwarm.count("--ema") == 1 and pwarm[pwarm.index("--ema_decay") + 1] == "0.99"
    assert pwarm[pwarm.index("--lr") + 1] == "0.002"
    assert pwarm[pwarm.index("--foundation_model") + 1] == str(tmp_path / "p.model")


# --------------------------------------------------------------------------------------
# faults: a diverging member
# --------------------------------------------------------------------------------------
def _member(frames, settings, store, tmp_path, subset=0, seed_index=0) -> MemberDocument:
    from active_mlip.makers.training import train_member

    job = train_member(frames, E0S, settings, subset, seed_index)
    responses = run_locally(job, store=store, ensure_success=True, log=False, root_dir=tmp_path)
    return responses[job.uuid][1].output


def test_diverging_member_is_retried_then_marked_failed(tmp_path):
    from active_mlip.makers.training import retry_seed
    from active_mlip.stores.cache import ResultCache

    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    # A learning rate of 1e6 makes MACE's loss NaN within the first epoch (MACE goes on).
    settings = training_preset("tiny", n_sub=1, n_seed=2, device="cpu", lr=1e6, max_num_epochs=2)
    doc = _member(emt_frames(6), settings, store, tmp_path)
    seed = settings.member_seed(0, 0)
    assert doc.failed and doc.model_file is None
    assert doc.retried_with_seed == retry_seed(seed) != seed
    assert doc.failure.count("training diverged: non-finite") == 2
    assert f"seed {seed}:" in doc.failure and f"seed {retry_seed(seed)}:" in doc.failure
    cache = ResultCache(store.additional_stores["cache"])
    assert cache.get(doc.cache_key) is None  # failures are never cached


def test_member_recovers_with_the_retry_seed(trained, tmp_path, monkeypatch):
    import active_mlip.makers.training as training
    from active_mlip.stores.cache import ResultCache

    good = trained["doc"].members[0].model_file
    seeds = []

    def flaky(train, valid, e0s, settings, seed, workdir, parent_model=None, device=None):
        seeds.append(seed)
        if len(seeds) == 1:
            raise RuntimeError("MACE training failed (exit code 1): loss is NaN")
        workdir.mkdir(parents=True)
        return good.write(workdir / "member.model"), {"valid_loss": 0.1, "epochs": 2.0}

    monkeypatch.setattr(training, "run_mace_training", flaky)
    store = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    settings = trained["settings"]
    doc = _member(trained["frames"], settings, store, tmp_path, seed_index=1)
    assert seeds == [settings.member_seed(0, 1), training.retry_seed(seeds[0])]
    assert not doc.failed and doc.retried_with_seed == seeds[1]
    assert doc.model_file.sha256 == good.sha256
    cache = ResultCache(store.additional_stores["cache"])
    assert cache.get(doc.cache_key) is not None  # a good member is cached


def test_gather_drops_failed_members_and_needs_two(trained):
    from active_mlip.makers.training import gather_ensemble

    ok = trained["doc"].members  # indices 0 and 1
    failed = MemberDocument(
        index=2, subset=0, seed=5, n_train=8, n_valid=2, failed=True, failure="diverged"
    )
    settings = training_preset("tiny", n_sub=1, n_seed=3)
    doc = gather_ensemble.original([*ok, failed], E0S, settings)
    assert [m.index for m in doc.members] == [0, 1]
    assert doc.dropped_members == [{"index": 2, "reason": "diverged"}]
    second = ok[1].model_copy(update={"failed": True, "failure": "NaN", "model_file": None})
    with pytest.raises(ValueError, match="only 1 of 3 ensemble members trained"):
        gather_ensemble.original([ok[0], second, failed], E0S, settings)


def test_warm_start_skips_a_dropped_member(trained):
    doc = trained["doc"]
    previous = doc.model_copy(
        update={"members": [doc.members[0]], "dropped_members": [{"index": 1, "reason": "x"}]}
    )
    parent, why = _parent_member(previous, trained["settings"], 1, 0)
    assert parent is None and "failed and was dropped" in why
    parent, _ = _parent_member(previous, trained["settings"], 0, 0)
    assert parent is doc.members[0]
