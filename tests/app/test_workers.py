"""A FireWorks worker's log: one line per event, nothing repeated that is expected.

Run in a fresh interpreter: logging's and warnings' state is per process, and pytest
installs handlers and filters of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: What a worker's process does: FireWorks logs through its own logger, a job loads MACE
#: models (MACE logs through the root logger, which runs logging.basicConfig), and
#: libraries change the warning filters in between.
_WORKER = """
import logging, sys, warnings
from fireworks.utilities.fw_utilities import get_fw_logger
from active_mlip.app.workers import worker_logging
from active_mlip.makers import mace_runner

if sys.argv[1] == "fixed":  # as run_worker does, before any job imports mace
    mace_runner.quiet_weights_only_warning()
from mace.calculators import MACECalculator
from tests.models import make_mace_model, write_model
path = write_model(make_mace_model(0), sys.argv[2])
context = worker_logging() if sys.argv[1] == "fixed" else __import__("contextlib").nullcontext()
with context:
    fw = get_fw_logger("rocket.launcher", stream_level="INFO")
    fw.info("line-before-mace")
    for _ in range(3):
        MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
        warnings.filterwarnings("ignore", message="unrelated")  # resets per-line registries
    fw.info("line-after-mace")
    logging.getLogger("active_mlip.makers.training").warning("our-warning")
"""


def _worker_output(mode: str, tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, mode, str(tmp_path / "member.model")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_worker_log_has_one_line_per_event(tmp_path):
    out = _worker_output("fixed", tmp_path)
    assert out.count("line-before-mace") == 1
    assert out.count("line-after-mace") == 1, out
    assert out.count("our-warning") == 1, out
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in out, out  # expected: silenced


@pytest.mark.slow
def test_without_the_guards_the_worker_log_repeats(tmp_path):
    """The reproduction the guards are tested against: both repeats happen without them."""
    out = _worker_output("plain", tmp_path)
    assert out.count("line-after-mace") == 2, out
    assert out.count("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected") > 1, out
