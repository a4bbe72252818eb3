"""Screening verdicts on control materials: a table of verdicts, evidence and wall time.

Runs (``--run``) or reads a local screening campaign and prints, per material, the
verdict, the evidence, the reference-MD comparison (off-site events, σ^A) and the wall
time. ``--rejudge`` recomputes each verdict from the stored screening (MLIP-MD, reference
MD, labels, test evaluation) with the rules of this checkout, without new calculations:
how a change of the rules changes the verdicts of the same runs.

    python benchmarks/screening_controls.py --workdir runs/controls --run \\
        --materials MgO,NaCl,KCl,GaAs,CuI,AgGaSe2
    python benchmarks/screening_controls.py --workdir runs/controls runs/more --rejudge

The campaign's output goes to ``<workdir>.log`` (appended), where the wall times are read.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from monty.json import MontyDecoder

from active_mlip.core.documents import as_model
from active_mlip.makers.diagnostics import ScreeningDocument
from active_mlip.makers.evaluation import EvaluationDocument
from active_mlip.makers.sampling import ForceConstantsDocument
from active_mlip.makers.schemas import LabelledBatch
from active_mlip.makers.screening_jobs import judge
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.workflows.settings import ActiveLearningSettings


def _output(store: Any, name: str) -> Any:
    doc = store.docs_store.query_one({"name": name}, sort={"completed_at": -1})
    if doc is None:
        raise LookupError(f"no job named {name!r} in the store")
    # decoded as a job receives it: models, not their dicts
    return MontyDecoder().process_decoded(store.get_output(doc["uuid"], load=True))


def _walltimes(log: Path) -> dict[str, float]:
    """Minutes each material took, from the campaign's log (start to the next start)."""
    marks: list[tuple[str, float]] = []
    hours = 0.0  # the log's clock is mm:ss and wraps after an hour
    for line in log.read_text().splitlines() if log.exists() else []:
        m = re.match(r"(\d+):(\d+) (starting (\S+) in)?", line)
        if m:
            t = int(m.group(1)) + int(m.group(2)) / 60 + hours
            if marks and t < marks[-1][1] - 30:
                hours += 60
                t += 60
            marks.append((m.group(4) or "", t))
    starts = [(i, name) for i, (name, _) in enumerate(marks) if name]
    out = {}
    for k, (i, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(marks) - 1
        out[name] = marks[end][1] - marks[i][1]
    return out


def rejudge(store: Any, material: str, settings: ActiveLearningSettings) -> ScreeningDocument:
    """The verdict of ``material``'s stored screening under this checkout's rules."""
    md = _output(store, f"{material} screening MD")
    explorations = md["explorations"] if isinstance(md, dict) else md.explorations
    refs, on_refs = [], []
    for t in settings.loop.temperatures:
        try:
            refs.append(_output(store, f"{material} screening reference MD {t:g} K"))
            on_refs.append(_output(store, f"{material} screening along reference {t:g} K"))
        except LookupError:
            break
    return judge.original(
        material,
        as_model(_output(store, f"{material} it0 evaluate"), EvaluationDocument),
        explorations,
        as_model(_output(store, f"{material} screening labels"), LabelledBatch),
        as_model(_output(store, f"{material} force constants: produce"), ForceConstantsDocument),
        settings.screening,
        refs,
        on_refs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, required=True, nargs="+",
        help="campaign work directories; with several, the table covers them all",
    )  # fmt: skip
    parser.add_argument("--materials", default=None, help="comma-separated (with --run)")
    parser.add_argument("--run", action="store_true", help="run the campaign first")
    parser.add_argument("--rejudge", action="store_true", help="recompute the verdicts")
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    if args.run and len(args.workdir) != 1:
        parser.error("--run takes one --workdir")
    settings = ActiveLearningSettings.from_preset(args.preset, loop={"max_iterations": 1})
    settings = settings.model_copy(
        update={"screening": settings.screening.model_copy(update={"enabled": True})}
    )
    print("| material | verdict | evidence | events ref / MLIP | σ^A ref / MLIP (expected) | min |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workdir in args.workdir:
        log = workdir.with_suffix(".log")
        if args.run:
            cmd = [
                str(Path(sys.executable).with_name("active-mlip")), "run",
                "--campaign", "screening-112",
                "--materials", args.materials, "--preset", args.preset,
                "--max-iterations", "1", "--workdir", str(workdir),
            ]  # fmt: skip
            # appended: an earlier run's wall times stay readable
            with log.open("a") as fh:
                subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
        _table(workdir, log, settings, args.rejudge)


def _table(workdir: Path, log: Path, settings: ActiveLearningSettings, again: bool) -> None:
    """Print the rows of one campaign work directory."""
    store = make_job_store(StoreSettings(local_path=workdir / "store"))
    store.connect()
    minutes = _walltimes(log)
    names = [
        d["name"].removesuffix(" screening verdict")
        for d in store.docs_store.query({"name": {"$regex": " screening verdict$"}})
    ]
    for name in dict.fromkeys(names):
        if again:
            doc = rejudge(store, name, settings)
        else:
            doc = as_model(_output(store, f"{name} screening verdict"), ScreeningDocument)
        refs = doc.references
        events = ", ".join(f"{r.events_reference} / {r.events_mlip}" for r in refs) or "—"
        sig = ", ".join(
            f"{r.sigma_a_reference:.2f} / {r.sigma_a_mlip:.2f} ({r.sigma_a_expected:.2f})"
            for r in refs
            if r.sigma_a_reference and r.sigma_a_mlip
        )
        evidence = (
            "; ".join(("*supporting:* " if e.supporting else "") + e.message for e in doc.evidence)
            or "—"
        )
        wall = f"{minutes[name]:.1f}" if name in minutes else "—"
        print(f"| {name} | **{doc.verdict}** | {evidence} | {events} | {sig or '—'} | {wall} |")


if __name__ == "__main__":
    main()
