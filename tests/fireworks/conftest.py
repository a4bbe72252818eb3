"""A real MongoDB wire-protocol server for the FireWorks tests (jongodb, in memory).

The server binary comes from $JONGODB_BIN, else ./.cache/jongodb/package/bin/jongodb,
installed there with ``npm pack @jongodb/memory-server-bin-linux-x64-gnu`` when missing.
Tests that need it are skipped, with the reason, when it cannot be had.

jongodb lacks ``drop``/``listCollections``/``$push`` and GridFS-backed FireWorks
fallback storage, so FW_config.yaml sets ``GRIDFS_FALLBACK_COLLECTION: null``; it must be
in place before fireworks is first imported, hence at conftest import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.fireworks.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "@jongodb/memory-server-bin-linux-x64-gnu"

_FW_DIR = Path(tempfile.mkdtemp(prefix="fwconfig-"))
(_FW_DIR / "FW_config.yaml").write_text(
    "GRIDFS_FALLBACK_COLLECTION: null\nROCKET_STREAM_LOGLEVEL: WARNING\n"
    "STREAM_LOGLEVEL: WARNING\nPRINT_FW_JSON: false\n"
)
os.environ["FW_CONFIG_FILE"] = str(_FW_DIR / "FW_config.yaml")


def _jongodb_binary() -> tuple[Path | None, str]:
    env = os.environ.get("JONGODB_BIN")
    if env:
        p = Path(env)
        return (p, "") if p.is_file() else (None, f"JONGODB_BIN={env} does not exist")
    cache = REPO / ".cache" / "jongodb"
    binary = cache / "package" / "bin" / "jongodb"
    if binary.is_file():
        return binary, ""
    if shutil.which("npm") is None:
        return None, "no jongodb binary and no npm to fetch it (set JONGODB_BIN)"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["npm", "pack", PACKAGE], cwd=cache, capture_output=True, text=True, timeout=120
        )
        tgz = sorted(cache.glob("*.tgz"))
        if out.returncode != 0 or not tgz:
            return None, f"npm pack {PACKAGE} failed: {out.stderr.strip()[-300:]}"
        subprocess.run(["tar", "xzf", tgz[-1].name], cwd=cache, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not install {PACKAGE}: {exc}"
    return (binary, "") if binary.is_file() else (None, f"{binary} missing after npm pack")


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """``mongodb://127.0.0.1:PORT`` of a fresh in-memory server for this session."""
    binary, why = _jongodb_binary()
    if binary is None:
        pytest.skip(f"no MongoDB wire-protocol server: {why}")
    port = free_port()
    log = open(tmp_path_factory.mktemp("jongodb") / "jongodb.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(binary), "--host=127.0.0.1", f"--port={port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    from pymongo import MongoClient

    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            pytest.skip(f"jongodb exited with {proc.returncode}; see {log.name}")
        try:
            MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            break
        except Exception:
            if time.time() > deadline:
                proc.kill()
                pytest.skip(f"jongodb did not accept connections on port {port} within 60 s")
            time.sleep(0.2)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
