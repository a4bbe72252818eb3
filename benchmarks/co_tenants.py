"""Sharing a node: a ``tiny`` run alone, beside one co-tenant and beside two.

HPC nodes are shared, and a run whose thread pools are sized from the whole node
oversubscribes it: on a 2-core machine a ``tiny`` run took 31 s alone, 83 s beside the
``quick`` main job (2.7x, where 2x is a fair share) and 463 s beside the main job and a
package installation (15x). Here each tenant is the same workload, the real
``active-mlip run CUI --preset tiny`` (CHGNet labels, MACE training through the fork
server, MLIP-MD with the ensemble) in a work directory of its own, started at the same
moment as its co-tenants. Rounds of alone / one co-tenant / two co-tenants run one
after another, ``--rounds`` times, so that a change of background load touches all
three; the slowdown of a scenario is the median tenant wall time over the alone time.

Targets: <= 2.5x beside one co-tenant, <= 4x beside two (with k tenants on the CPUs of
one, k x is a fair share; the excess is what oversubscription costs).

Run from the repository root, on an otherwise quiet machine::

    python benchmarks/co_tenants.py [--rounds 1] [--co-tenants 2] [--env OMP_NUM_THREADS=2]

``--env`` sets a variable in every tenant; ``--repo`` runs the tenants from another
checkout (e.g. ``git archive <commit> | tar -x -C /tmp/before``), to measure before and
after on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from active_mlip.core.cpus import usable_cpus  # noqa: E402

#: Slowdown targets by number of co-tenants.
TARGETS = {1: 2.5, 2: 4.0}


def tenant_command(material: str, preset: str, workdir: Path) -> list[str]:
    """The workload one tenant runs (a fresh work directory: nothing is cached)."""
    return [
        sys.executable, "-m", "active_mlip", "run", material,
        "--preset", preset, "--workdir", str(workdir),
    ]  # fmt: skip


def run_tenants(
    n: int, material: str, preset: str, root: Path, env: dict[str, str], repo: Path = REPO
) -> list[float]:
    """Start ``n`` tenants at once; the wall time (s) of each, in start order.

    Raises
    ------
    RuntimeError
        If a tenant fails (its log's tail is in the message).
    """
    procs = []
    t0 = time.perf_counter()
    for i in range(n):
        workdir = Path(tempfile.mkdtemp(prefix=f"tenant{i}-", dir=root)) / "run"
        log = open(workdir.parent / "log.txt", "w")  # noqa: SIM115 (closed below)
        cmd = tenant_command(material, preset, workdir)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repo)
        procs.append((proc, log, workdir.parent / "log.txt"))
    times: list[float | None] = [None] * n
    while any(t is None for t in times):
        for i, (proc, _, _) in enumerate(procs):
            if times[i] is None and proc.poll() is not None:
                times[i] = time.perf_counter() - t0
        time.sleep(0.2)
    for proc, log, path in procs:
        log.close()
        if proc.returncode != 0:
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"a tenant failed (exit code {proc.returncode}):\n{tail}")
    return [float(t) for t in times]


def slowdowns(rounds: list[dict[int, list[float]]]) -> dict[int, float]:
    """Median tenant time with ``k`` co-tenants over the median time alone, per ``k``.

    Parameters
    ----------
    rounds
        Per round, the tenants' wall times by number of co-tenants (0 = alone).
    """
    by_k: dict[int, list[float]] = {}
    for r in rounds:
        for k, times in r.items():
            by_k.setdefault(k, []).extend(times)
    alone = statistics.median(by_k[0])
    return {k: statistics.median(v) / alone for k, v in sorted(by_k.items()) if k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--material", default="CuI")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--co-tenants", type=int, default=2, help="Most co-tenants (default 2).")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workdir", type=Path, default=None, help="Where tenants run (tmp).")
    ap.add_argument("--repo", type=Path, default=REPO, help="Checkout the tenants run from.")
    args = ap.parse_args()

    env = dict(os.environ)
    repo = args.repo.resolve()
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    root = args.workdir or Path(tempfile.mkdtemp(prefix="co-tenants-"))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"usable CPUs {usable_cpus()}, load average before {os.getloadavg()[0]:.2f}, "
        f"tenants: active-mlip run {args.material} --preset {args.preset} from {repo}"
        + (f", env {' '.join(args.env)}" if args.env else "")
    )
    rounds = []
    for r in range(args.rounds):
        times = {}
        for k in range(args.co_tenants + 1):
            times[k] = run_tenants(k + 1, args.material, args.preset, root, env, repo)
            print(
                f"round {r + 1}, {k} co-tenant(s): "
                + ", ".join(f"{t:.1f} s" for t in times[k])
                + f" (load average now {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        rounds.append(times)
    for k, ratio in slowdowns(rounds).items():
        target = TARGETS.get(k)
        verdict = f"target <= {target}x: {'met' if ratio <= target else 'MISSED'}" if target else ""
        print(f"beside {k} co-tenant(s): slowdown {ratio:.2f}x (fair share {k + 1}x) {verdict}")


if __name__ == "__main__":
    main()
