"""How many CPUs this process may use, and the thread counts that follow from it.

``os.cpu_count()`` counts the node's cores, not this process's share of them: on a shared
HPC node a job gets a CPU set (affinity), a CFS quota (cgroup ``cpu.max``) or a Slurm
allocation (``SLURM_CPUS_PER_TASK``), and threads sized from the whole node
oversubscribe it (a 2-core run beside two co-tenants ran 15x slower than alone). The
smallest of those limits wins; :func:`usable_cpus` computes it, and everything that
sizes a thread pool goes through :func:`threads_per_process`, where an explicit
setting (a Maker's ``num_threads``, the user's ``OMP_NUM_THREADS``) wins.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path

#: Root of the cgroup file system.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: This process's cgroup membership (``0::/path`` on cgroup v2).
PROC_CGROUP = Path("/proc/self/cgroup")
#: Environment variables of the thread pools a child process sizes from its environment
#: (OpenMP: torch's intra-op pool; MKL and OpenBLAS: numpy's and torch's BLAS).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: OpenMP threads spin only briefly at a barrier before they sleep (libgomp, torch's
#: OpenMP: 300,000 spins by default). Long spinning burns the CPU time co-tenants and
#: our own other pools need; not spinning at all (OMP_WAIT_POLICY=PASSIVE) wakes threads
#: too late between torch's many small parallel regions. `tiny` CuI run, 2 cores,
#: measured side by side (benchmarks/co_tenants.py, 2026-12-05, quiet): libgomp's
#: default 25.6-26.4 s alone and >= 5.4x beside one co-tenant; PASSIVE 31.0-32.2 s and
#: 1.72x; 30,000 spins 26.4-27.0 s and 2.50x; 5,000 spins 27.1-27.4 s and 1.32x.
WAIT_POLICY = {"GOMP_SPINCOUNT": "5000"}
#: Variables by which a user chooses OpenMP's waiting: any one set leaves ours out.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_policy(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """:data:`WAIT_POLICY`, or nothing where ``environ`` (``os.environ``) sets a policy."""
    environ = os.environ if environ is None else environ
    return {} if any(environ.get(k) for k in WAIT_VARS) else dict(WAIT_POLICY)


def affinity_cpus(affinity: Iterable[int] | None = None) -> int:
    """CPUs in the affinity set (``os.sched_getaffinity(0)`` by default).

    Parameters
    ----------
    affinity
        The CPU set; None reads this process's (``os.cpu_count()`` where the platform
        has no affinity call).
    """
    if affinity is None:
        getaffinity: Callable[[int], set[int]] | None = getattr(os, "sched_getaffinity", None)
        return len(getaffinity(0)) if getaffinity else os.cpu_count() or 1
    return max(1, len(set(affinity)))


def quota_cpus(cpu_max: str | None) -> int | None:
    """CPUs a cgroup v2 ``cpu.max`` line (``"QUOTA PERIOD"``, or ``"max PERIOD"``) allows.

    A fractional quota rounds down (1.5 CPUs: one thread; a second would be throttled
    half the time), but never below 1. None when unlimited or unreadable.
    """
    if not cpu_max:
        return None
    parts = cpu_max.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:  # cgroup v1 writes -1 for "no limit"
        return None
    return max(1, math.floor(quota / period))


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, or None.

    Reads cgroup v2 (``cpu.max`` from the process's own cgroup up to the root) and, where
    that is absent, cgroup v1 (``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``).

    Parameters
    ----------
    root
        Mount point of the cgroup file system.
    proc_cgroup
        The ``/proc/self/cgroup`` file naming the process's cgroup.
    """
    limits: list[int] = []
    own = "/"
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip() or "/"
    except OSError:
        pass
    directory = root / own.lstrip("/")
    while True:
        limit = quota_cpus(_read(directory / "cpu.max"))
        if limit is not None:
            limits.append(limit)
        if directory == root or root not in directory.parents:
            break
        directory = directory.parent
    if not limits:
        quota, period = (
            _read(root / "cpu" / "cpu.cfs_quota_us"),
            _read(root / "cpu" / "cpu.cfs_period_us"),
        )
        if quota and period:
            limit = quota_cpus(f"{quota.strip()} {period.strip()}")
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def slurm_cpus(environ: Mapping[str, str] | None = None) -> int | None:
    """``SLURM_CPUS_PER_TASK`` when set to a positive integer, else None."""
    environ = os.environ if environ is None else environ
    return _positive_int(environ.get("SLURM_CPUS_PER_TASK"))


def usable_cpus(
    affinity: Iterable[int] | None = None,
    cpu_max_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_CGROUP,
    environ: Mapping[str, str] | None = None,
) -> int:
    """CPUs this process may use: the smallest of affinity, cgroup quota and Slurm's share.

    Parameters
    ----------
    affinity
        CPU set; None: this process's.
    cpu_max_root, proc_cgroup
        Where the cgroup limits are read (tests point them at hand-made files).
    environ
        Environment holding ``SLURM_CPUS_PER_TASK``; None: ``os.environ``.

    Returns
    -------
    int
        At least 1.
    """
    limits = [affinity_cpus(affinity), cgroup_cpus(cpu_max_root, proc_cgroup), slurm_cpus(environ)]
    return max(1, min(n for n in limits if n is not None))


def threads_per_process(
    explicit: int | None = None,
    parallel: int = 1,
    environ: Mapping[str, str] | None = None,
    usable: int | None = None,
) -> int:
    """Threads each of ``parallel`` concurrent computations may use without oversubscribing.

    Parameters
    ----------
    explicit
        A setting the user made (e.g. ``TrainingSettings.num_threads``): returned as is.
    parallel
        Computations sharing the CPUs at once (members trained or evaluated side by side).
    environ
        Environment whose ``OMP_NUM_THREADS``, when set, is the user's explicit choice;
        None: ``os.environ``.
    usable
        Usable CPUs; None: :func:`usable_cpus`.

    Returns
    -------
    int
        ``explicit``, else ``OMP_NUM_THREADS``, else ``usable // parallel`` (at least 1),
        so that ``parallel`` x threads never exceeds the usable CPUs.
    """
    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"thread count must be >= 1, got {explicit}")
        return int(explicit)
    environ = os.environ if environ is None else environ
    from_env = _positive_int(environ.get("OMP_NUM_THREADS"))
    if from_env is not None:
        return from_env
    usable = usable_cpus(environ=environ) if usable is None else usable
    return max(1, usable // max(1, parallel))


def thread_env(threads: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables giving a child process's thread pools ``threads`` threads.

    Also :data:`WAIT_POLICY`, unless ``environ`` (default ``os.environ``) chooses the
    waiting itself (:data:`WAIT_VARS`): the user's choice wins.
    """
    environ = os.environ if environ is None else environ
    out = {name: str(int(threads)) for name in THREAD_ENV_VARS}
    out.update(wait_policy(environ))
    return out


def configure_process(environ: MutableMapping[str, str] | None = None) -> int:
    """Size this process's thread pools from the usable CPUs; call before torch loads.

    OpenMP and MKL read their settings once, when torch loads them; afterwards only
    ``torch.set_num_threads`` changes anything. Variables already set (the user's) are
    left as they are.

    Parameters
    ----------
    environ
        The environment to complete; None: ``os.environ`` (children inherit it).

    Returns
    -------
    int
        The threads this process's pools get.
    """
    environ = os.environ if environ is None else environ
    threads = threads_per_process(environ=environ)
    for key, value in thread_env(threads, environ).items():
        if not environ.get(key):
            environ[key] = value
    return threads


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(str(value).strip())
    except ValueError:
        return None
    return n if n >= 1 else None
