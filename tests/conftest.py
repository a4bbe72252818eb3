"""Shared test settings (quiet, deterministic, CPU-only) and the one MongoDB fixture.

jongodb lacks ``drop``/``listCollections``/``$push`` and GridFS-backed FireWorks
fallback storage, so FW_config.yaml sets ``GRIDFS_FALLBACK_COLLECTION: null``; it must be
in place before fireworks is first imported, hence at conftest import.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.mongo import start_jongodb, stop_jongodb

# Tiny models: thread start-up costs more than it gains, and tests stay deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

_FW_DIR = Path(tempfile.mkdtemp(prefix="fwconfig-"))
(_FW_DIR / "FW_config.yaml").write_text(
    "GRIDFS_FALLBACK_COLLECTION: null\nROCKET_STREAM_LOGLEVEL: WARNING\n"
    "STREAM_LOGLEVEL: WARNING\nPRINT_FW_JSON: false\n"
)
os.environ["FW_CONFIG_FILE"] = str(_FW_DIR / "FW_config.yaml")


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """``mongodb://127.0.0.1:PORT`` of a fresh in-memory server for this session."""
    proc, port = start_jongodb(tmp_path_factory.mktemp("jongodb") / "jongodb.log")
    yield f"mongodb://127.0.0.1:{port}"
    stop_jongodb(proc)


@pytest.fixture
def db_env(mongo_server, monkeypatch):
    """Environment for one test: its own FireWorks and job-store databases."""
    import fireworks.core.launchpad as lpmod

    monkeypatch.setattr(lpmod, "GRIDFS_FALLBACK_COLLECTION", None)  # in case fireworks was early
    tag = uuid.uuid4().hex[:8]
    env = {
        "ACTIVE_MLIP_MONGO_URI": mongo_server,
        "ACTIVE_MLIP_FW_DB": f"fw_{tag}",
        "ACTIVE_MLIP_MONGO_DB": f"store_{tag}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ACTIVE_MLIP_LAUNCHPAD", raising=False)
    return env
