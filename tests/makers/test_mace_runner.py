"""How MACE training runs start: forked warm from a fork server, or a fresh ``python -c``.

Both must give the same member (same seed, same data, same threads), and a bad launch
setting must say what it expects.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from active_mlip.makers import mace_runner
from active_mlip.makers.training import run_mace_training
from active_mlip.workflows.presets import training_preset
from tests.makers.helpers_training import E0S, emt_frames

REPO = Path(__file__).resolve().parents[2]


def test_launch_mode_reads_the_environment(monkeypatch):
    monkeypatch.delenv(mace_runner.LAUNCH_ENV, raising=False)
    assert mace_runner.launch_mode() == "forkserver"
    monkeypatch.setenv(mace_runner.LAUNCH_ENV, " Subprocess ")
    assert mace_runner.launch_mode() == "subprocess"
    monkeypatch.setenv(mace_runner.LAUNCH_ENV, "fork")
    with pytest.raises(ValueError, match="ACTIVE_MLIP_MACE_LAUNCH='fork'.*'forkserver' or"):
        mace_runner.launch_mode()


@pytest.mark.slow
def test_forked_and_fresh_runs_train_the_same_member(tmp_path, monkeypatch):
    frames = emt_frames(8)
    settings = training_preset("tiny", max_num_epochs=4, num_threads=1)
    metrics = {}
    for mode in ("forkserver", "subprocess"):
        monkeypatch.setenv(mace_runner.LAUNCH_ENV, mode)
        model, metrics[mode] = run_mace_training(
            frames[:6], frames[6:], E0S, settings, 7, tmp_path / mode, device="cpu"
        )
        assert model.is_file()
        # MACE's own output reaches the run's log in both modes
        assert "MACE version" in (tmp_path / mode / "mace.log").read_text()
    # warm starts too, from a caller that never imported mace (which sets the variable
    # MACE's foundation-model load needs when mace is imported)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    for mode in ("forkserver", "subprocess"):
        monkeypatch.setenv(mace_runner.LAUNCH_ENV, mode)
        _, metrics[f"warm {mode}"] = run_mace_training(
            frames[:6], frames[6:], E0S, settings, 8, tmp_path / f"warm-{mode}", model, "cpu"
        )
    for a, b in (("forkserver", "subprocess"), ("warm forkserver", "warm subprocess")):
        assert metrics[a] and metrics[a].keys() == metrics[b].keys()
        for key, value in metrics[b].items():
            assert metrics[a][key] == pytest.approx(value, rel=1e-6), (a, key)


@pytest.mark.slow
def test_fork_server_keeps_its_import_warnings_off_the_terminal(tmp_path):
    # A fresh process, so that its fork server starts here; MACE's own output goes to
    # the run's log, and the server's import warnings go nowhere.
    code = (
        "import sys; from pathlib import Path; "
        "from active_mlip.makers.training import run_mace_training; "
        "from active_mlip.workflows.presets import training_preset; "
        "from tests.makers.helpers_training import E0S, emt_frames; "
        "f = emt_frames(4); s = training_preset('tiny', max_num_epochs=1); "
        "run_mace_training(f[:3], f[3:], E0S, s, 1, Path(sys.argv[1]), device='cpu')"
    )
    env = {**os.environ, mace_runner.LAUNCH_ENV: "forkserver", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cuequivariance" not in proc.stderr + proc.stdout
    assert "UserWarning" not in proc.stderr
    assert "MACE version" in (tmp_path / "run" / "mace.log").read_text()


@pytest.mark.slow
def test_unguarded_script_is_not_rerun_in_the_child(tmp_path):
    """A user's script without ``if __name__ == "__main__":`` runs once, not once per run.

    Without the fix, each forked child imported the script as ``__mp_main__`` and ran it
    again (a run_local in such a script failed every member's training).
    """
    marker = tmp_path / "ran.txt"
    script = tmp_path / "user_script.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "from active_mlip.makers.mace_runner import run_forked\n"
        "print('exit', run_forked(time.sleep, 0), run_forked(time.sleep, 0))\n"
    )
    env = {**os.environ, mace_runner.LAUNCH_ENV: "forkserver"}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exit 0 0" in proc.stdout
    assert marker.read_text() == "ran\n"


#: A worker-like parent: it trains one member through the real runner and is killed
#: mid-run by the test.
_WORKER = (
    "import sys; from pathlib import Path; "
    "from active_mlip.makers.training import run_mace_training; "
    "from active_mlip.workflows.presets import training_preset; "
    "from tests.makers.helpers_training import E0S, emt_frames; "
    "f = emt_frames(8); s = training_preset('tiny', max_num_epochs=10000, num_threads=1); "
    "run_mace_training(f[:6], f[6:], E0S, s, 1, Path(sys.argv[1]), device='cpu')"
)


def _gone(proc) -> bool:
    import psutil

    try:
        # a zombie holds no CPU, memory or GPU; whoever adopted it reaps it
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@pytest.mark.parametrize("mode", ["forkserver", "subprocess"])
def test_training_dies_with_its_worker(tmp_path, mode):
    """``kill -9`` of a worker mid-training leaves no descendant running.

    Before, the fork server's training child (re-parented to PID 1) trained on at full
    CPU, and on a GPU node held the GPU while the rerun trained the same member again.
    """
    psutil = pytest.importorskip("psutil")
    import signal
    import time

    log = tmp_path / "run" / "mace.log"
    env = {**os.environ, mace_runner.LAUNCH_ENV: mode, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(tmp_path / "run")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (log.is_file() and "Started training" in log.read_text(errors="replace")):
            assert worker.poll() is None, "the worker ended before training started"
            assert time.monotonic() < deadline, "training did not start within 240 s"
            time.sleep(0.5)
        descendants = psutil.Process(worker.pid).children(recursive=True)
        # the training process itself, and in forkserver mode its server
        assert len(descendants) >= (2 if mode == "forkserver" else 1), descendants
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [(p.pid, p.name()) for p in descendants if not _gone(p)]
        assert not alive, f"descendants outlived their worker: {alive}"
    finally:
        worker.kill()
        worker.wait()
        for p in locals().get("descendants", []):  # so that a failure leaves nothing behind
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
