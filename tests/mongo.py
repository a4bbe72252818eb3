"""The MongoDB wire-protocol server of the tests (jongodb, in memory), started on demand.

The server binary comes from $JONGODB_BIN, else ./.cache/jongodb/package/bin/jongodb,
installed there with ``npm pack @jongodb/memory-server-bin-linux-x64-gnu`` when missing.
A test that needs the server and cannot have it is skipped with the reason on a
developer's machine, and **fails** under CI (``CI`` set): a broken server must not pass
as a row of skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests import external

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "@jongodb/memory-server-bin-linux-x64-gnu"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable(why: str) -> None:
    """Skip (developer machine) or fail (CI) a test whose database server cannot start."""
    external.unavailable("MongoDB wire-protocol server", why)


def jongodb_binary() -> tuple[Path | None, str]:
    """The jongodb binary (installed with npm when missing), or None and why not."""
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


def start_jongodb(log: Path) -> tuple[subprocess.Popen, int]:
    """A fresh in-memory server logging to ``log``: (process, port); ready for requests."""
    from pymongo import MongoClient

    binary, why = jongodb_binary()
    if binary is None:
        unavailable(why)
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--host=127.0.0.1", f"--port={port}"],
        stdout=open(log, "w"),  # noqa: SIM115  (the server writes to it until it stops)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 60
    uri = f"mongodb://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            unavailable(f"jongodb exited with {proc.returncode}; see {log}")
        try:
            MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            return proc, port
        except Exception:
            if time.time() > deadline:
                proc.kill()
                unavailable(f"jongodb did not accept connections on port {port} within 60 s")
            time.sleep(0.2)


def stop_jongodb(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start_jongodb`."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
