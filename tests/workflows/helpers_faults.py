"""Faults for the loop's tests: misbehaving labellers, kills, a database that goes away.

Labellers are imported by path (``tests.workflows.helpers_faults.CHGNetFailingOnMD``)
the way a user names an ASE calculator. :func:`label_log` records every label actually
computed; :class:`Trigger` and :func:`armed` act (SIGKILL, cut the database) at an exact
point of a run: the start of a job, or right after its n-th result reached the cache.
:class:`TcpProxy` stands between a run and the database so a test can cut and restore it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator

from active_mlip.stores.job_store import StoreSettings, make_job_store

REPO = Path(__file__).resolve().parents[2]


@cache
def _model() -> CHGNet:
    # The labeller builds a calculator per frame; load the weights once.
    return CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


class CHGNetFailingOnMD(CHGNetCalculator):
    """CHGNet that labels the initial data but fails every frame found by MLIP MD."""

    def __init__(self, **kwargs):
        super().__init__(model=_model(), use_device="cpu", **kwargs)

    def calculate(self, atoms=None, properties=None, system_changes=None):
        if (atoms if atoms is not None else self.atoms).info.get("source") == "mlip-md":
            raise RuntimeError("SCF did not converge (simulated)")
        super().calculate(atoms, properties, system_changes)


# ---------------------------------------------------------------------------------------
# Fault injection in a run of the loop: count every label computed, act at a chosen point
# ---------------------------------------------------------------------------------------
@contextmanager
def label_log(path: str | Path) -> Iterator[None]:
    """Append the structure hash of every label actually computed to ``path``.

    Wraps the in-process labellers' single point, so labels taken from the cache are
    not logged: a hash logged twice is a label computed twice. The isolated-atom single
    points behind ``loop.e0s = "isolated"`` are logged with the prefix ``isolated:``.
    """
    from active_mlip.makers.labelling import _InProcessLabeller

    original = _InProcessLabeller.label_frame

    def logged(self, frame):
        out = original(self, frame)
        # A lone atom is one of the E0 single points (isolated_atom_energies).
        tag = "isolated:" if len(frame.numbers) == 1 else ""
        with open(path, "a") as f:
            f.write(f"{tag}{frame.structure_hash()}\n")
        return out

    _InProcessLabeller.label_frame = logged
    try:
        yield
    finally:
        _InProcessLabeller.label_frame = original


def read_label_log(path: str | Path) -> list[str]:
    path = Path(path)
    return path.read_text().split() if path.exists() else []


@dataclass
class Trigger:
    """Act once inside job ``job`` (a name prefix): at its start (``n == 0``) or right
    after its ``n``-th result of ``kind`` was written to the cache."""

    job: str
    kind: str = ""
    n: int = 0
    action: Callable[[], None] = field(default=lambda: os.kill(os.getpid(), signal.SIGKILL))
    current: str = ""
    count: int = 0
    fired: bool = False

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.action()

    def on_start(self, name: str) -> None:
        self.current, self.count = name, 0
        if self.n == 0 and name.startswith(self.job):
            self._fire()

    def after_put(self, kind: str) -> None:
        if self.n and kind == self.kind and self.current.startswith(self.job):
            self.count += 1
            if self.count == self.n:
                self._fire()


class _JobStarts(logging.Handler):
    def __init__(self, trigger: Trigger):
        super().__init__(level=logging.INFO)
        self.trigger = trigger

    def emit(self, record: logging.LogRecord) -> None:
        m = _START_RE.match(record.getMessage())
        if m:
            self.trigger.on_start(m.group(1))


_START_RE = re.compile(r"Starting job - (.*) \(")


@contextmanager
def armed(trigger: Trigger) -> Iterator[Trigger]:
    """Watch job starts (jobflow's log) and cache writes for ``trigger``."""
    from active_mlip.stores.cache import ResultCache

    original = ResultCache.put

    def put(self, key, kind, payload):
        original(self, key, kind, payload)
        trigger.after_put(kind)

    lg = logging.getLogger("jobflow.core.job")
    handler = _JobStarts(trigger)
    old_level = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    ResultCache.put = put
    try:
        yield trigger
    finally:
        ResultCache.put = original
        lg.removeHandler(handler)
        lg.setLevel(old_level)


def killed_run(workdir: Path, log: Path, job: str, kind: str = "", n: int = 0) -> int:
    """Run the tiny loop for CuI in a subprocess that SIGKILLs itself at the trigger.

    Returns the subprocess's return code (``-9`` when the trigger fired).
    """
    code = (
        "import sys; from tests.workflows.helpers_faults import _killed_main; "
        "sys.exit(_killed_main(*sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(workdir), str(log), job, kind, str(n)],
        cwd=workdir.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(
            f"run to be killed in {job!r} ended with {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return proc.returncode


def _killed_main(workdir: str, log: str, job: str, kind: str, n: str) -> int:
    import warnings

    from active_mlip.app.local import run_local
    from active_mlip.workflows.settings import ActiveLearningSettings

    warnings.simplefilter("ignore")
    with label_log(log), armed(Trigger(job, kind, int(n))):
        run_local("CuI", workdir, ActiveLearningSettings.from_preset("tiny"))
    return 3  # the trigger never fired


# ---------------------------------------------------------------------------------------
# A TCP proxy in front of the database, to cut the connection and restore it
# ---------------------------------------------------------------------------------------
class TcpProxy:
    """Forward ``127.0.0.1:port`` to a MongoDB server ``upstream``, message by message.

    :meth:`cut` drops every connection and refuses new ones (a network partition or a
    dead server); :meth:`restore` listens again on the same port (the server is back,
    with its data).

    ``serialize`` names commands run one at a time across all connections. jongodb
    runs ``findAndModify`` without MongoDB's single-document atomicity (concurrent
    clients can claim the same document), which FireWorks relies on to hand each
    firework to one worker and to draw unique ids; serialising it restores that.
    """

    def __init__(self, upstream: tuple[str, int], serialize: frozenset[str] = frozenset()):
        self.upstream = upstream
        self.serialize = serialize
        self.port = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._command_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def restore(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            # RST, not FIN: the client sees the connection die at once.
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close(), server.close()
                    return
                self._conns += [client, server]
            held = threading.Event()  # this connection holds the command lock
            for pump, a, b in ((self._requests, client, server), (self._replies, server, client)):
                threading.Thread(target=pump, args=(a, b, held), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, held: threading.Event) -> None:
        try:
            while (msg := _read_message(src)) is not None:
                if self.serialize and _command_name(msg) in self.serialize:
                    self._command_lock.acquire()
                    held.set()
                dst.sendall(msg)
        except OSError:
            pass
        _close(src, dst)

    def _replies(self, src: socket.socket, dst: socket.socket, held: threading.Event) -> None:
        try:
            while (msg := _read_message(src)) is not None:
                # Decide before forwarding: once the client has this reply it may send
                # its next serialised command, whose ``held`` this reply must not clear.
                owned = held.is_set()
                held.clear()
                try:
                    dst.sendall(msg)
                finally:
                    if owned:
                        self._command_lock.release()
        except OSError:
            pass
        finally:
            if held.is_set():
                held.clear()
                self._command_lock.release()
        _close(src, dst)


def _read_message(sock: socket.socket) -> bytes | None:
    """One MongoDB wire-protocol message (its first 4 bytes are its length), or None."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    body = _read_exact(sock, int.from_bytes(head, "little") - 4)
    return None if body is None else head + body


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _command_name(msg: bytes) -> str | None:
    """The command of an OP_MSG: the first key of its body section (kind 0)."""
    if int.from_bytes(msg[12:16], "little") != 2013:
        return None
    pos = 20
    while pos < len(msg):
        if msg[pos] == 0:
            start = pos + 1 + 4 + 1  # section kind, document length, element type
            return msg[start : msg.index(b"\0", start)].decode()
        pos += 1 + int.from_bytes(msg[pos + 1 : pos + 5], "little")
    return None


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- the database goes away -------------------------------------------------------------
def _blob_uuids(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        if "blob_uuid" in obj and "store" in obj:
            return {obj["blob_uuid"]}
        return set().union(*(_blob_uuids(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_blob_uuids(v) for v in obj)) if obj else set()
    return set()


def assert_nothing_half_written(uri: str, database: str) -> dict[str, int]:
    """Every job document's data-store parts exist; every cache entry has its payload."""
    from pymongo import MongoClient

    db = MongoClient(uri, serverSelectionTimeoutMS=5000)[database]
    data = {d["metadata"]["blob_uuid"] for d in db["active_mlip_data.files"].find({}, ["metadata"])}
    jobs = list(db["active_mlip_jobs"].find({}, ["uuid", "name", "output"]))
    for doc in jobs:
        missing = _blob_uuids(doc.get("output")) - data
        assert not missing, f"{doc['name']}: data-store parts {missing} missing"
    store = make_job_store(StoreSettings(mongo_uri=uri, database=database))
    store.connect()
    cache = store.additional_stores["cache"]
    keys = []
    for entry in cache.query({}):  # reads every GridFS file in full
        assert entry.get("payload") is not None, entry.get("cache_key")
        keys.append(entry["cache_key"])
    assert len(keys) == len(set(keys))
    n_files = db["active_mlip_cache.files"].count_documents({})
    assert n_files == len(keys)
    return {"jobs": len(jobs), "cache": len(keys)}
