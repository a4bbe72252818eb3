"""The ``active-mlip`` command line."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Active learning of MACE interatomic potentials for strongly anharmonic materials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

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
                if not console.is_terminal and not name.startswith("store_inputs"):
                    # no live spinner in logs: say what starts, so a log shows where it stopped
                    console.print(f"{elapsed} ▶ {name}")
            else:
                dt = time.time() - self.started.pop(uuid, time.time())
                if not name.startswith("store_inputs"):
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
        str, typer.Argument(help="Built-in formula (CuI, AgGaSe2) or a CIF/POSCAR/extxyz file.")
    ],
    preset: Annotated[str, typer.Option(help="Settings preset: tiny, quick or paper.")] = "quick",
    workdir: Annotated[
        Path | None, typer.Option(help="Work directory (default runs/<material>).")
    ] = None,
    temperatures: Annotated[
        str | None, typer.Option(help="Comma-separated temperatures in K (default: the preset's).")
    ] = None,
    max_iterations: Annotated[
        int | None, typer.Option(help="Override the preset's maximum iterations.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Delete a previous run in WORKDIR and start over.")
    ] = False,
) -> None:
    """Run (or resume) the active-learning loop locally on the embedded default.

    The embedded default is a file-backed job store in WORKDIR, the CHGNet universal
    potential as a stand-in for DFT, and the CPU (a GPU when present).
    """
    import warnings

    from pydantic import ValidationError

    from workflows.local import RunConflictError, run_local

    # Library deprecation chatter (jobflow, e3nn, chgnet) would bury the progress display.
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    from workflows.settings import ActiveLearningSettings

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
    try:
        settings = ActiveLearningSettings.from_preset(preset, **({"loop": loop} if loop else {}))
    except ValidationError as exc:
        _fail("invalid settings:\n" + _pretty_validation(exc))
    except ValueError as exc:
        _fail(str(exc))
    name = Path(material).stem if Path(material).suffix else material
    workdir = workdir or Path("runs") / name
    t0 = time.time()
    with console.status("preparing …") as status:
        _configure_logging(status)
        try:
            summary = run_local(material, workdir, settings, restart=restart)
        except RunConflictError as exc:
            _fail(str(exc))
        except ValueError as exc:
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


from active_mlip import cli_fireworks  # noqa: E402,F401  (registers submit/status/restart/webgui)
