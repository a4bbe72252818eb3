"""Usable CPUs from hand-made limits: affinity sets, cgroup files, Slurm's variable."""

from __future__ import annotations

import pytest

from active_mlip.core import cpus


def _cgroup(tmp_path, own="/", files=None):
    """A cgroup tree under ``tmp_path``: ``files`` maps relative paths to contents."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "self_cgroup").write_text(f"12:cpu:/ignored\n0::{own}\n")
    for rel, text in (files or {}).items():
        path = tmp_path / "fs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "fs").mkdir(exist_ok=True)
    return {"cpu_max_root": tmp_path / "fs", "proc_cgroup": tmp_path / "self_cgroup"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000", 1),  # 1.5 CPUs: a second thread would be throttled half the time
        ("50000 100000", 1),  # never below one
        ("400000", 4),  # period defaults to 100 ms
        ("", None),
        (None, None),
        ("garbage here", None),
        ("-1 100000", None),  # cgroup v1's "no limit"
    ],
)
def test_quota_cpus_parses_cpu_max(text, expected):
    assert cpus.quota_cpus(text) == expected


def test_cgroup_v2_takes_the_tightest_limit_up_the_tree(tmp_path):
    paths = _cgroup(
        tmp_path,
        own="/job/step",
        files={
            "cpu.max": "max 100000",
            "job/cpu.max": "300000 100000",
            "job/step/cpu.max": "max 100000",
        },
    )
    assert cpus.cgroup_cpus(paths["cpu_max_root"], paths["proc_cgroup"]) == 3


def test_cgroup_v1_quota_is_read_where_v2_is_absent(tmp_path):
    paths = _cgroup(
        tmp_path, files={"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    )
    assert cpus.cgroup_cpus(paths["cpu_max_root"], paths["proc_cgroup"]) == 2
    unlimited = _cgroup(tmp_path, files={"cpu/cpu.cfs_quota_us": "-1\n"})
    assert cpus.cgroup_cpus(unlimited["cpu_max_root"], unlimited["proc_cgroup"]) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cpus.cgroup_cpus(tmp_path / "absent", tmp_path / "absent-too") is None


def test_slurm_cpus_per_task():
    assert cpus.slurm_cpus({"SLURM_CPUS_PER_TASK": "4"}) == 4
    assert cpus.slurm_cpus({"SLURM_CPUS_PER_TASK": "0"}) is None
    assert cpus.slurm_cpus({"SLURM_CPUS_PER_TASK": "x"}) is None
    assert cpus.slurm_cpus({}) is None


def test_usable_cpus_is_the_smallest_limit(tmp_path):
    paths = _cgroup(tmp_path, files={"cpu.max": "600000 100000"})
    affinity = set(range(16))
    assert cpus.usable_cpus(affinity, environ={}, **paths) == 6
    assert cpus.usable_cpus(affinity, environ={"SLURM_CPUS_PER_TASK": "3"}, **paths) == 3
    assert cpus.usable_cpus({0, 5}, environ={"SLURM_CPUS_PER_TASK": "3"}, **paths) == 2
    none = _cgroup(tmp_path / "none")
    assert cpus.usable_cpus(set(range(8)), environ={}, **none) == 8


def test_usable_cpus_of_this_process_is_positive():
    assert 1 <= cpus.usable_cpus() <= (cpus.affinity_cpus())


def test_threads_per_process_never_oversubscribes():
    for usable in range(1, 9):
        for parallel in range(1, 5):
            threads = cpus.threads_per_process(parallel=parallel, environ={}, usable=usable)
            assert threads >= 1
            assert threads * parallel <= usable or threads == 1


def test_an_explicit_setting_wins():
    assert cpus.threads_per_process(5, environ={"OMP_NUM_THREADS": "2"}, usable=1) == 5
    assert cpus.threads_per_process(environ={"OMP_NUM_THREADS": "3"}, usable=1) == 3
    assert cpus.threads_per_process(environ={"OMP_NUM_THREADS": ""}, usable=4) == 4
    with pytest.raises(ValueError, match=">= 1"):
        cpus.threads_per_process(0)


def test_thread_env_sets_every_pool_and_a_short_spin():
    assert cpus.thread_env(3, environ={}) == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "GOMP_SPINCOUNT": "5000",
    }
    # the user's waiting is theirs, by either variable
    for user in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "100"}):
        env = cpus.thread_env(1, environ=user)
        assert "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env


def test_configure_process_fills_in_what_the_user_left_unset(monkeypatch):
    monkeypatch.setattr(cpus, "usable_cpus", lambda **_: 3)
    environ = {"MKL_NUM_THREADS": "1"}
    assert cpus.configure_process(environ) == 3
    assert environ == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "3",
        "GOMP_SPINCOUNT": "5000",
    }
    environ = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}
    assert cpus.configure_process(environ) == 2
    assert "GOMP_SPINCOUNT" not in environ
    assert environ["MKL_NUM_THREADS"] == "2" and environ["OMP_WAIT_POLICY"] == "ACTIVE"
