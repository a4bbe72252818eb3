"""The ``active-mlip`` command line.

Commands import what they need when they run (function-local imports throughout), so
``active-mlip --help`` answers in a tenth of a second and ``status`` never loads torch.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from active_mlip.app import cli_fireworks
from active_mlip.app.console import console

app = typer.Typer(
    help="Active learning of MACE interatomic potentials for strongly anharmonic materials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(cli_fireworks.app)  # submit, status, report, restart, cancel, webgui, launch


def _bookkeeping(name: str) -> bool:
    """jobflow's output-mapping job of a replaced job (``store_inputs``, named
    ``"<job> output"`` by :func:`~active_mlip.workflows.routing.replacement`): not shown."""
    return name.startswith("store_inputs") or name.endswith(" output")


_JOB_RE = re.compile(r"(Starting|Finished) job - (.*) \(([0-9a-f-]+)")


class ProgressHandler(logging.Handler):
    """Turns jobflow's job start/finish log lines and our own messages into a live display."""

    def __init__(self, status) -> None:
        super().__init__(level=logging.INFO)
        self.status = status
        self.started: dict[str, float] = {}
        self.t0 = time.time()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        elapsed = time.strftime("%M:%S", time.gmtime(time.time() - self.t0))
        m = _JOB_RE.match(msg)
        if m:
            what, name, uuid = m.groups()
            if what == "Starting":
                self.started[uuid] = time.time()
                self.status.update(f"[{elapsed}] running [bold]{name}[/bold]")
                if not console.is_terminal and not _bookkeeping(name):
                    # no live spinner in logs: say what starts, so a log shows where it stopped
                    console.print(f"{elapsed} ▶ {name}")
            else:
                dt = time.time() - self.started.pop(uuid, time.time())
                if not _bookkeeping(name):
                    console.print(
                        f"[dim]{elapsed}[/dim] [green]✓[/green] {name} [dim]({dt:.1f} s)[/dim]"
                    )
            return
        if record.name.startswith("jobflow"):
            return
        style = "yellow" if record.levelno >= logging.WARNING else "cyan"
        console.print(f"[dim]{elapsed}[/dim] [{style}]{msg}[/{style}]")


def _configure_logging(status) -> None:
    handler = ProgressHandler(status)
    for name in ("jobflow.core.job", "active_mlip", "makers", "workflows"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.handlers = [handler]
        lg.propagate = False


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code=2)


@app.command()
def run(
    material: Annotated[
        str | None,
        typer.Argument(
            help="Built-in formula (CuI, AgGaSe2) or a CIF/POSCAR/extxyz file "
            "(omit with --campaign)."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Settings preset: tiny, quick or paper (default: quick, or a campaign "
            "file's preset:)."
        ),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Work directory (default runs/<material>).")
    ] = None,
    temperatures: Annotated[
        str | None, typer.Option(help="Comma-separated temperatures in K (default: the preset's).")
    ] = None,
    max_iterations: Annotated[
        int | None, typer.Option(help="Override the preset's maximum iterations.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of every random choice: sampling, splits, MD, selection and the "
            "members' initial weights (default: the preset's)."
        ),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Delete a previous run in WORKDIR and start over.")
    ] = False,
    campaign: Annotated[
        str | None,
        typer.Option(
            help="Run a screening campaign instead of one material: 'screening-112' "
            "(the built-in set) or a campaign YAML file."
        ),
    ] = None,
    materials: Annotated[
        str | None,
        typer.Option(help="With --campaign: comma-separated subset, e.g. CuI,AgGaSe2."),
    ] = None,
    label_budget: Annotated[
        int | None,
        typer.Option(help="With --campaign: reference labels shared by all its materials."),
    ] = None,
) -> None:
    """Run (or resume) the active-learning loop locally on the embedded default.

    The embedded default is a file-backed job store in WORKDIR, the CHGNet universal
    potential as a stand-in for DFT, and the CPU (a GPU when present). With
    ``--campaign`` every material is screened first (short MLIP-MD checked against the
    reference) and only flagged ones continue with active learning; the campaign report
    lands in WORKDIR/report/.
    """
    from active_mlip.core import cpus

    # thread pools sized from the CPUs this run may use, before torch loads: beside a
    # co-tenant, the node's full count oversubscribes it (benchmarks/co_tenants.py)
    cpus.configure_process()
    from pydantic import ValidationError
    from rich.markup import escape  # messages quote lists like [nan], which rich would eat

    from active_mlip.app.local import RunConflictError, run_local
    from active_mlip.core.blobs import CorruptArtifactError
    from active_mlip.makers import mace_runner
    from active_mlip.stores.mongo import DatabaseUnreachableError

    # Library deprecation chatter (jobflow, e3nn, chgnet) would bury the progress display.
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    from active_mlip.workflows.settings import ActiveLearningSettings

    loop: dict = {}
    try:
        if temperatures is not None:
            loop["temperatures"] = [float(t) for t in temperatures.split(",") if t.strip()]
    except ValueError:
        _fail(f"--temperatures must be comma-separated numbers, got {temperatures!r}")
    if max_iterations is not None:
        loop["max_iterations"] = max_iterations
    if seed is not None:
        loop["seed"] = seed
    sections: dict = {"loop": loop} if loop else {}
    if seed is not None:  # the members' weight initialisations too, not only the loop's draws
        sections["training"] = {"seed": seed}
    try:  # a bad ACTIVE_MLIP_MACE_LAUNCH fails now, not at the first ensemble member
        mace_runner.launch_mode()
    except ValueError as exc:
        _fail(escape(str(exc)))
    if campaign is not None:
        if material is not None:
            _fail(f"give either a material ({material!r}) or --campaign, not both")
        _run_campaign(campaign, materials, preset, label_budget, sections, workdir, restart)
        return
    if material is None:
        _fail("missing MATERIAL: name one (e.g. CuI) or give --campaign screening-112")
    if materials is not None or label_budget is not None:
        _fail("--materials and --label-budget need --campaign")
    try:
        settings = ActiveLearningSettings.from_preset(preset or "quick", **sections)
    except ValidationError as exc:
        pretty = _pretty_validation(exc).replace("Value error, ", "")
        _fail("invalid settings:\n" + escape(pretty))
    except ValueError as exc:
        _fail(escape(str(exc)))
    name = Path(material).stem if Path(material).suffix else material
    workdir = workdir or Path("runs") / name
    t0 = time.time()
    with console.status("preparing …") as status:
        _configure_logging(status)
        try:
            summary = run_local(material, workdir, settings, restart=restart)
        except RunConflictError as exc:
            _fail(escape(str(exc)))
        except ValueError as exc:
            _fail(escape(str(exc)))
        except CorruptArtifactError as exc:  # a stored file or frame failed its hash check
            _fail(escape(str(exc)))
        except DatabaseUnreachableError as exc:  # no stack dump: what, where, how to resume
            _fail(str(exc))
    last = summary["iterations"][-1]
    console.print(
        f"[bold]{summary['material']}[/bold]: {len(summary['iterations'])} iterations, "
        f"{summary['n_dataset']} training frames, test force MAE "
        f"{last['test_mae_forces_meV_per_A']:.1f} meV/Å, energy MAE "
        f"{last['test_mae_energy_meV_per_atom']:.2f} meV/atom; {summary['stop_reason']}"
    )
    inv = summary["this_invocation"]
    console.print(
        f"labels computed {inv['labels_computed']}, reused {inv['labels_reused']}; members trained "
        f"{inv['members_trained']}, reused {inv['members_reused']}; {time.time() - t0:.0f} s"
    )
    console.print(
        f"results in {workdir}/ (summary.json, dataset.extxyz, models/, report/report.html)"
    )


def _pretty_validation(exc) -> str:
    return "\n".join(
        f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
        for e in exc.errors()
    )


def _run_campaign(
    campaign: str,
    materials: str | None,
    preset: str | None,
    label_budget: int | None,
    overrides: dict,
    workdir: Path | None,
    restart: bool,
) -> None:
    """``active-mlip run --campaign …``: screen materials, learn where flagged, report."""
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from pydantic import ValidationError
    from rich.markup import escape

    from active_mlip.app.local import RunConflictError
    from active_mlip.app.local_campaign import run_campaign_local
    from active_mlip.workflows.campaign import Campaign, CampaignError, load_campaign
    from active_mlip.workflows.screening import builtin_campaigns, select_materials

    if label_budget is not None and label_budget < 1:
        _fail(f"--label-budget must be at least 1, got {label_budget}")
    if campaign in builtin_campaigns():
        spec = Campaign(name=campaign, materials=campaign)
    elif Path(campaign).suffix in (".yaml", ".yml") or Path(campaign).is_file():
        try:
            spec, _ = load_campaign(campaign)
        except CampaignError as exc:
            _fail(escape(str(exc)))
    else:
        known = sorted(builtin_campaigns())
        close = difflib.get_close_matches(campaign, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        _fail(
            f"unknown campaign {campaign!r}{hint} Built-in: {', '.join(known)}; "
            "or give a campaign YAML file"
        )
    name = spec.name
    sources = {m.name: m.structure for m in spec.materials if m.structure}
    try:
        chosen = select_materials([m.name for m in spec.materials], materials, name)
        # The one campaign -> settings merge (its precedence: Campaign.build_settings).
        settings = spec.build_settings(preset, overrides, label_budget)
    except ValidationError as exc:
        _fail("invalid settings:\n" + escape(_pretty_validation(exc)))
    except ValueError as exc:
        _fail(escape(str(exc)))
    workdir = workdir or Path("runs") / name
    t0 = time.time()
    with console.status("preparing …") as status:
        _configure_logging(status)
        try:
            record = run_campaign_local(name, chosen, settings, workdir, sources, restart)
        except RunConflictError as exc:
            _fail(escape(str(exc)))
    for o in record["outcomes"]:
        style = {"ok": "green", "failed": "red"}.get(o["verdict"], "yellow")
        mae = o["final_mae_forces_meV_per_A"]
        console.print(
            f"[bold]{o['material']}[/bold]: [{style}]{o['verdict']}[/{style}]"
            + (f", test force MAE {mae:.1f} meV/Å" if mae is not None else "")
            + f"; {escape(o['stop_reason'])}"
        )
    if record.get("label_budget"):
        console.print(
            f"shared label budget: {record.get('label_budget_used')} of "
            f"{record['label_budget']} used"
        )
    console.print(f"{time.time() - t0:.0f} s; campaign report in {workdir}/report/report.html")
