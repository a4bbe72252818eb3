"""Faults injected into the tiny loop: SIGKILL in each stage, the database going away.

One uninterrupted tiny run (module fixture) is the reference. Each fault test starts
the same run again, injects its fault at an exact point (the start of a job, or right
after its n-th result reached the cache: see ``helpers_faults.Trigger``), resumes, and
compares with the reference: the same dataset, and every label computed exactly once
over the interrupted and the resumed invocation together (each label actually computed
is logged by ``helpers_faults.label_log``). SIGKILL during exploration is in
``test_active_learning.py``.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ase.io import read

from active_mlip.app.local import run_local
from active_mlip.core.frames import Frame
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.stores.mongo import DatabaseUnreachableError
from active_mlip.workflows.settings import ActiveLearningSettings
from tests.mongo import start_jongodb
from tests.workflows.helpers_faults import (
    TcpProxy,
    Trigger,
    armed,
    assert_nothing_half_written,
    killed_run,
    label_log,
    read_label_log,
)


def tiny() -> ActiveLearningSettings:
    return ActiveLearningSettings.from_preset("tiny")


def _dataset(workdir: Path) -> list[tuple]:
    """Each training frame as (structure hash, energy, iteration, subset)."""
    return [
        (Frame.from_atoms(a).structure_hash(), round(a.get_potential_energy(), 6))
        + (a.info["iteration"], a.info["subset"])
        for a in read(workdir / "dataset.extxyz", ":")
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("reference")
    log = tmp / "labels.log"
    with label_log(log):
        summary = run_local("CuI", tmp / "CuI", tiny())
    labels = read_label_log(log)
    assert len(labels) == len(set(labels)) > 30  # an uninterrupted run labels nothing twice
    return {"summary": summary, "dataset": _dataset(tmp / "CuI"), "labels": set(labels)}


def _frame_labels(labels: list[str]) -> list[str]:
    # Every single point counts, the E0s' isolated atoms (logged as "isolated:...") too:
    # they are cached per element like every other label.
    return list(labels)


def _assert_same_as_reference(reference, workdir: Path, labels: list[str]) -> None:
    labels = _frame_labels(labels)
    twice = [h for h, n in Counter(labels).items() if n > 1]
    assert not twice, f"{len(twice)} label(s) computed twice"
    assert set(labels) == set(_frame_labels(list(reference["labels"])))
    assert _dataset(workdir) == reference["dataset"]


# -- SIGKILL in each stage -------------------------------------------------------------
STAGES = {
    # after the 2nd of iteration 0's single points reached the cache
    "labelling": ("CuI it0 label", "label", 2),
    # after the first member of iteration 0's ensemble reached the cache
    "training": ("CuI it0", "mace-member", 1),
    # selection: exploration (with its per-frame acceptance) is stored, the pooling of
    # the candidates has just started
    "selection": ("CuI it0 collect", "", 0),
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_in_a_stage_resumes_to_the_same_dataset(reference, tmp_path, stage):
    job, kind, n = STAGES[stage]
    workdir, log = tmp_path / "CuI", tmp_path / "labels.log"
    assert killed_run(workdir, log, job, kind, n) == -signal.SIGKILL
    assert not (workdir / "summary.json").exists()
    before = read_label_log(log)
    with label_log(log):
        resumed = run_local("CuI", workdir, tiny())
    labels = read_label_log(log)
    _assert_same_as_reference(reference, workdir, labels)
    inv = resumed["this_invocation"]
    m = tiny().training.n_sub * tiny().training.n_seed
    if stage == "labelling":
        # the two labels written before the kill, and all before them, were reused
        assert inv["labels_reused"] >= tiny().loop.n_initial + 2
        assert inv["members_reused"] == m and inv["members_trained"] == m
    elif stage == "training":
        assert inv["members_reused"] == 1 and inv["members_trained"] == 2 * m - 1
    else:
        assert inv["members_reused"] == m and inv["members_trained"] == m
    assert inv["labels_computed"] == len(_frame_labels(labels)) - len(_frame_labels(before)) > 0
    assert resumed["iterations"] == reference["summary"]["iterations"] or all(
        a["n_train"] == b["n_train"] and a["n_selected"] == b["n_selected"]
        for a, b in zip(resumed["iterations"], reference["summary"]["iterations"], strict=True)
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_database_lost_mid_run_fails_clearly_and_the_rerun_finishes(
    reference, tmp_path, monkeypatch
):
    server, port = start_jongodb(tmp_path / "jongodb.log")
    proxy = TcpProxy(("127.0.0.1", port))
    direct = f"mongodb://127.0.0.1:{port}"
    try:
        monkeypatch.setenv("ACTIVE_MLIP_MONGO_URI", proxy.uri)
        monkeypatch.setenv("ACTIVE_MLIP_MONGO_DB", "faults")
        workdir, log = tmp_path / "CuI", tmp_path / "labels.log"
        cut_at: list[float] = []

        def cut() -> None:
            cut_at.append(time.time())
            proxy.cut()

        # Cut in the middle of the initial labels, right after the 3rd reached the cache.
        with label_log(log), armed(Trigger("CuI initial labels", "label", 3, cut)) as trig:
            with pytest.raises(DatabaseUnreachableError) as err:
                run_local("CuI", workdir, tiny())
        assert trig.fired
        waited = time.time() - cut_at[0]
        msg = str(err.value)
        assert f"MongoDB database 'faults' at 127.0.0.1:{proxy.port}" in msg, msg
        assert "run the same command again to resume CuI" in msg, msg
        assert "Traceback" not in msg and len(msg) < 600, msg
        assert waited < 60, f"took {waited:.0f} s to give up"
        assert not (workdir / "summary.json").exists()
        stored = assert_nothing_half_written(direct, "faults")
        labels_before = read_label_log(log)

        proxy.restore()  # the database is back, with everything it held
        with label_log(log):
            resumed = run_local("CuI", workdir, tiny())
        _assert_same_as_reference(reference, workdir, read_label_log(log))
        assert resumed["this_invocation"]["labels_reused"] >= 3
        after = assert_nothing_half_written(direct, "faults")
        assert after["cache"] > stored["cache"]
        print(
            f"gave up {waited:.1f} s after the cut; {len(labels_before)} labels before it, "
            f"{stored} stored then, {after} at the end"
        )
    finally:
        proxy.cut()
        server.kill()
        server.wait()


def test_cli_run_names_an_unreachable_database(tmp_path):
    from typer.testing import CliRunner

    from active_mlip.app.cli import app
    from tests.app.fireworks.helpers import free_port

    port = free_port()  # nothing listens there
    env = {"ACTIVE_MLIP_MONGO_URI": f"mongodb://u:secret@127.0.0.1:{port}/?authSource=admin"}
    t0 = time.time()
    out = CliRunner().invoke(
        app,
        ["run", "CuI", "--preset", "tiny", "--workdir", str(tmp_path / "w")],
        env={**env, "COLUMNS": "300"},
    )
    assert out.exit_code == 2, out.output
    text = re.sub(r"\s+", " ", out.output)
    assert f"cannot reach the job store, MongoDB database 'active_mlip' at 127.0.0.1:{port}" in text
    assert "secret" not in text and "Traceback" not in text
    assert time.time() - t0 < 30
    assert not (tmp_path / "w").exists()  # nothing was run or written


def test_a_job_document_is_written_only_with_its_data(tmp_path):
    """The database lost between a job's large objects and its document: jobflow's own
    order (document first) leaves a document pointing at nothing; ours leaves none."""
    from ase.build import bulk
    from jobflow import JobStore, run_locally

    from active_mlip.workflows.jobs import concat_frames

    frames = [Frame.from_atoms(bulk("Cu"))]

    def run(store) -> tuple[str, int]:
        data = store.additional_stores["data"]

        def lost(*args, **kwargs):
            raise ConnectionError("database went away (simulated)")

        data.update = lost
        j = concat_frames([frames])
        run_locally(j, store=store, log=False, ensure_success=False, root_dir=tmp_path)
        del data.update
        return j.uuid, store.docs_store.count({"uuid": j.uuid})

    ours = make_job_store(StoreSettings(local_path=tmp_path / "ours"))
    assert run(ours)[1] == 0
    theirs = make_job_store(StoreSettings(local_path=tmp_path / "theirs"))
    plain = JobStore(theirs.docs_store, additional_stores=theirs.additional_stores)
    uuid, n = run(plain)
    assert n == 1  # jobflow alone: the document exists ...
    doc = plain.docs_store.query_one({"uuid": uuid})
    blob = doc["output"]["frames"]["blob_uuid"]
    assert plain.additional_stores["data"].count({"blob_uuid": blob}) == 0  # ... its data not
    # and with the database back, the same job is stored whole
    ok = concat_frames([frames])
    run_locally(ok, store=ours, log=False, ensure_success=True, root_dir=tmp_path)
    assert ours.get_output(ok.uuid, load=True)["frames"][0]["numbers"] == [29]
