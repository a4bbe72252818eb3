"""Run MACE's trainer (``mace.cli.run_train``) in a process of its own, started warm.

Every training run gets a fresh process, so MACE's global state (default dtype,
logging handlers, thread settings) never leaks into the worker or into the next member.
Starting that process with ``python -c`` costs ~5.5 s on a 2-core machine before MACE
logs its first line -- importing torch, e3nn and MACE -- which is a fifth of a tiny
member's training and more than a warm-started member's epochs
(``benchmarks/training_cost.py``). A :mod:`multiprocessing` fork server that has
imported them once forks each run from that state instead: a clean process, started in
milliseconds.

``ACTIVE_MLIP_MACE_LAUNCH=subprocess`` goes back to one ``python -c`` per run (e.g.
where forking is unwelcome); the result is the same.

A run dies with the process that started it. Without that, a ``kill -9`` of a worker left
the training child (re-parented to PID 1) training on at full CPU, and on a GPU node
holding the GPU, while the rerun trained the same member again. The fork server exits
when its parent does (multiprocessing's "alive" pipe, once each run has closed the copy
multiprocessing gives it); each run asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``, Linux): the fork server for a forked run, the worker for a
``python -c`` run. The resource tracker exits once the last of them has closed its pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, spawn
from pathlib import Path

from active_mlip.core.cpus import thread_env, wait_policy
from active_mlip.core.environment import MACE_LAUNCH_ENV, environment

#: Modules the fork server imports once; each run starts with them loaded.
PRELOAD = ["torch", "e3nn.util.jit", "mace.cli.run_train"]

#: Environment variable choosing how runs start: "forkserver" (default) or "subprocess".
LAUNCH_ENV = MACE_LAUNCH_ENV

_lock = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None


def _forkserver() -> multiprocessing.context.BaseContext:
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _start_quietly()
            _context = ctx
        return _context


def _start_quietly() -> None:
    """Start the fork server with its output going nowhere.

    Its imports print warnings (e3nn's torch.load, MACE's missing cuEquivariance) that a
    fresh ``python -c`` used to write into each run's log; the server would write them
    to the user's terminal. Each run redirects its own output to its log.
    """

    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    # OpenMP reads its spin count when the server imports torch, not when a run starts
    added = wait_policy()
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.environ.update(added)
        forkserver.ensure_running()  # spawns the server, which inherits 1 and 2 now
    finally:
        for key in added:
            os.environ.pop(key, None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (null, *saved):
            os.close(fd)


def quiet_weights_only_warning() -> None:
    """Silence torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` warning in this process.

    Importing mace sets that variable for the whole process (its model files are whole
    pickled modules), and torch then warns on every ``torch.load`` that does not pass
    ``weights_only``: once per model a worker loads. It is expected, and the models we
    load are files we wrote, verified by content hash. "once" would not hold it to one
    line: the C warnings module keeps "once" per calling module and forgets it whenever
    a library enters ``warnings.catch_warnings`` (torch and e3nn do on each load).
    Idempotent.
    """
    warnings.filterwarnings("ignore", message=_NO_WEIGHTS_ONLY_WARNING, category=UserWarning)


#: Start of the warning torch gives on each load while TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set.
_NO_WEIGHTS_ONLY_WARNING = "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected"


def launch_mode() -> str:
    """How runs start: ``"forkserver"`` or ``"subprocess"`` (``ACTIVE_MLIP_MACE_LAUNCH``)."""
    mode = (environment().mace_launch or "forkserver").strip().lower()
    if mode not in ("forkserver", "subprocess"):
        raise ValueError(f"{LAUNCH_ENV}={mode!r}: expected 'forkserver' or 'subprocess'")
    if mode == "forkserver" and "forkserver" not in multiprocessing.get_all_start_methods():
        return "subprocess"
    return mode


def run_train(args: list[str], workdir: Path, log_path: Path, threads: int) -> int:
    """Run ``mace_run_train ARGS`` in ``workdir`` with its output in ``log_path``.

    Parameters
    ----------
    args
        Command-line arguments of MACE's ``run_train``.
    workdir
        Working directory of the run.
    log_path
        File receiving the run's standard output and error.
    threads
        CPU threads (OpenMP/MKL) the run may use.

    Returns
    -------
    int
        The run's exit code (0 on success).
    """
    env = {**os.environ, **thread_env(threads)}
    if launch_mode() == "subprocess":
        with open(log_path, "w") as log:
            # the child arms its parent-death signal itself (no preexec_fn: unsafe in a
            # threaded parent); the parent pid closes the race with an early death
            cmd = [sys.executable, "-c", _SCRIPT, str(os.getpid()), *args]
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        return proc.returncode
    return run_forked(_child, args, str(workdir), str(log_path), threads, env, os.getpid())


def run_forked(target: Callable[..., object], *args: object) -> int:
    """Run ``target(*args)`` in a process forked from the warm fork server; its exit code.

    ``target`` must be importable by name (a module-level function). The child does not
    import the caller's ``__main__``: multiprocessing would re-run a script that has no
    ``if __name__ == "__main__":`` guard in every child (run_local called from such a
    script would start again inside each member's training), and ``target`` needs
    nothing from it.
    """
    proc = _forkserver().Process(target=target, args=args, daemon=False)
    with _lock, _main_not_imported():
        proc.start()
    proc.join()
    return proc.exitcode if proc.exitcode is not None else 1


@contextlib.contextmanager
def _main_not_imported() -> Iterator[None]:
    """Leave the caller's main module out of the data a starting child prepares from."""

    original = spawn.get_preparation_data

    def without_main(name: str) -> dict:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = without_main
    try:
        yield
    finally:
        spawn.get_preparation_data = original


def _main(args: list[str]) -> None:
    """MACE's ``run_train`` with TorchScript compilation disabled.

    run_train compiles a second copy of the model after training (seconds to tens of
    seconds on a CPU) and swallows any exception raised there; we only ever use the
    plain ``.model`` file.
    """
    # MACE (and torch) load only in the process that evaluates or trains
    from e3nn.util import jit

    def _no_compile(*a: object, **k: object) -> None:
        raise RuntimeError("compilation disabled by active-mlip")

    jit.compile = _no_compile
    from mace.cli.run_train import main

    sys.argv = ["mace_run_train", *args]
    main()


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; else nothing).

    The signal follows the thread that forked this process: call it only in a child whose
    parent thread waits for it (``subprocess.run``, the fork server's main loop).

    Parameters
    ----------
    parent_pid
        The process that asked for this one. If it (or the current parent, when this
        process was re-parented before the call) is already gone, exit now: the signal
        only covers deaths after it is armed.
    """
    ppid = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != ppid or (parent_pid is not None and not _alive(parent_pid)):
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release_fork_server() -> None:
    """Close this forked child's copy of the fork server's "alive" pipe.

    multiprocessing hands every child the pipe's write end, and the server exits only
    when all of them are closed: the worker's and each running child's. A child that
    kept it kept its server, hence itself, alive after the worker died.
    """
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None and getattr(server, "_forkserver_pid", None) is None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # a fork server this child needs starts afresh


def _child(
    args: list[str], workdir: str, log_path: str, threads: int, env: dict, worker_pid: int
) -> None:
    _release_fork_server()
    die_with_parent(worker_pid)  # the fork server is the parent; it exits with the worker
    # The fork server's environment is the one it started with, plus what the preloaded
    # modules set on import (mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which its
    # foundation-model load needs): lay the caller's on top (CUDA_VISIBLE_DEVICES and the
    # like are read when CUDA starts, i.e. after this).
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(workdir)
    # torch loads only where a model trains or runs
    import torch

    torch.set_num_threads(threads)
    try:
        _main(args)
    finally:
        logging.shutdown()
        sys.stdout.flush(), sys.stderr.flush()


_SCRIPT = (
    "import sys; from active_mlip.makers.mace_runner import _main, die_with_parent; "
    "die_with_parent(int(sys.argv[1])); _main(sys.argv[2:])"
)
#: ``prctl`` option asking for a signal when the parent exits (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
