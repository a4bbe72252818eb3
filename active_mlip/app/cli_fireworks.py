"""``active-mlip submit | status | restart | webgui | launch``: campaigns on FireWorks.

The logic lives in :mod:`active_mlip.app.launchpad`, :mod:`~active_mlip.app.submit`,
:mod:`~active_mlip.app.status` and :mod:`~active_mlip.app.workers`; this module only
parses options and prints.
Credentials come from the environment (``ACTIVE_MLIP_MONGO_URI``, optionally
``ACTIVE_MLIP_LAUNCHPAD``); see launchers/README.md and deploy/README.md.

Commands import what they need when they run (function-local imports throughout), so
the CLI starts without FireWorks, pymongo or torch.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from active_mlip.app.console import console
from active_mlip.core.environment import environment

#: The FireWorks commands; :mod:`active_mlip.app.cli` adds them to ``active-mlip``.
app = typer.Typer()

_TIMEOUT = typer.Option(help="Seconds to wait for MongoDB before giving up.")


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", soft_wrap=True)
    raise typer.Exit(code=2)


def _launchpad(timeout: float):
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.stores.mongo import DatabaseUnreachableError, InsecureConfigError

    try:
        return load_launchpad(timeout_ms=int(timeout * 1000))
    except (DatabaseUnreachableError, InsecureConfigError, ValueError) as exc:
        _fail(str(exc))


def _default_worker_files() -> list[str]:
    env = environment().workers
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return sorted(glob.glob("launchers/fworker_*.yaml"))


@app.command()
def submit(
    campaign_file: Annotated[Path, typer.Argument(help="Campaign YAML (name, materials, ...).")],
    worker: Annotated[
        list[Path] | None,
        typer.Option(
            help="FireWorker YAML(s) that will run the campaign, to check the routing table "
            "against (default: $ACTIVE_MLIP_WORKERS, else launchers/fworker_*.yaml)."
        ),
    ] = None,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """Add one active-learning workflow per material of a campaign to the LaunchPad.

    Submitting the same campaign again adds nothing; a material already submitted
    with other settings is reported and left alone.
    """
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.submit import check_routing, submit_campaign
    from active_mlip.workflows.campaign import CampaignError, load_campaign

    try:
        campaign, settings = load_campaign(campaign_file)
    except CampaignError as exc:
        _fail(str(exc))
    files = [str(p) for p in worker] if worker else _default_worker_files()
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        _fail(
            f"worker file(s) {', '.join(map(repr, missing))} do not exist; pass existing "
            "FireWorker YAMLs with --worker (see launchers/fworker_*.yaml)"
        )
    for w in check_routing(settings.routing.categories(), files):
        console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)
    lp = _launchpad(timeout)
    try:
        result = submit_campaign(lp, campaign, settings)
    except ValueError as exc:
        _fail(str(exc))
    for material, ids in result.added.items():
        console.print(f"[green]added[/green] {campaign.name}/{material}: {len(ids)} fireworks")
    for material in result.skipped:
        console.print(f"[dim]already submitted[/dim] {campaign.name}/{material}")
    for msg in result.conflicts:
        console.print(f"[yellow]not added[/yellow] {msg}", soft_wrap=True)
    _index_outputs(timeout)
    if result.conflicts:
        raise typer.Exit(code=1)


def _index_outputs(timeout: float) -> None:
    """Index the job store for ``status``; a store that cannot be reached is only warned of."""
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.status import ensure_output_indexes
    from active_mlip.stores.mongo import DatabaseUnreachableError
    from active_mlip.stores.worker_store import client_job_store

    try:
        store = client_job_store(timeout_ms=int(timeout * 1000))
    except (ValueError, DatabaseUnreachableError) as exc:
        console.print(f"[yellow]warning:[/yellow] job store not indexed ({exc})", soft_wrap=True)
        return
    try:
        ensure_output_indexes(store)
    finally:
        store.close()


@app.command()
def status(
    campaign: Annotated[str | None, typer.Argument(help="Campaign name (default: all).")] = None,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """One row per material: state, iteration, labels, latest test force MAE, fireworks."""
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.status import campaign_status
    from active_mlip.stores.mongo import DatabaseUnreachableError
    from active_mlip.stores.worker_store import client_job_store

    lp = _launchpad(timeout)
    try:
        store = client_job_store(timeout_ms=int(timeout * 1000))
    except (ValueError, DatabaseUnreachableError) as exc:
        console.print(f"[yellow]warning:[/yellow] no job outputs ({exc})", soft_wrap=True)
        store = None
    rows = campaign_status(lp, campaign, store)
    if not rows:
        _fail(f"no campaign {campaign!r} on the LaunchPad" if campaign else "no campaigns yet")
    table = Table(title=f"campaign {campaign}" if campaign else "campaigns")
    for col in (
        "campaign",
        "material",
        "state",
        "iteration",
        "labels",
        "test force MAE (meV/Å)",
        "screening",
        "fireworks",
        "running",
        "failed",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.campaign,
            r.material,
            r.state,
            "-" if r.iteration is None else str(r.iteration),
            str(r.labels),
            "-" if r.test_force_mae is None else f"{r.test_force_mae:.1f}",
            r.verdict or "-",
            f"{r.counts.get('COMPLETED', 0)}/{sum(r.counts.values())} done",
            str(r.running),
            str(r.failed),
        )
    Console = type(console)
    Console(width=max(console.width, 140)).print(table)


@app.command()
def report(
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[
        Path | None, typer.Option(help="Report directory (default reports/<campaign>).")
    ] = None,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """Write the campaign report (MAE histograms, flagged materials, learning curves)."""
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.campaign_report import MaterialOutcome, outcomes_from_store, write_report
    from active_mlip.app.status import campaign_status
    from active_mlip.stores.mongo import DatabaseUnreachableError
    from active_mlip.stores.worker_store import client_job_store

    lp = _launchpad(timeout)
    try:
        store = client_job_store(timeout_ms=int(timeout * 1000))
    except (ValueError, DatabaseUnreachableError) as exc:
        _fail(str(exc))
    rows = campaign_status(lp, campaign, None)
    if not rows:
        _fail(f"no campaign {campaign!r} on the LaunchPad")
    outcomes = {o.material: o for o in outcomes_from_store(store, campaign)}
    for r in rows:  # materials without a final result: failed or still running
        if r.material not in outcomes:
            outcomes[r.material] = MaterialOutcome(
                material=r.material,
                verdict="failed" if r.state == "FIZZLED" else "not screened",
                stop_reason=f"workflow {r.state}",
            )
    out = out or Path("reports") / campaign
    page = write_report(list(outcomes.values()), out, campaign=campaign)
    done = sum(not o.stop_reason.startswith("workflow ") for o in outcomes.values())
    console.print(f"{done} of {len(rows)} materials finished; report in {page}")


@app.command()
def restart(
    campaign: Annotated[str | None, typer.Argument(help="Campaign name (default: all).")] = None,
    lost_after: Annotated[
        int,
        typer.Option(
            help="Seconds without a ping after which a RUNNING firework counts as lost "
            "(its worker died). Workers ping hourly: keep this above 3600 unless no "
            "worker is running."
        ),
    ] = 4 * 3600,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would rerun.")] = False,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """Rerun lost and fizzled fireworks; every label/member already computed is reused."""
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.status import restart_campaign

    lp = _launchpad(timeout)
    result = restart_campaign(lp, campaign, expiration_secs=lost_after, dry_run=dry_run)
    verb = "would rerun" if dry_run else "rerun"
    console.print(
        f"lost runs {verb}: {result.lost or 'none'}; fizzled {verb}: {result.fizzled or 'none'}"
    )


@app.command()
def webgui(
    host: Annotated[
        str, typer.Option(help="Address to bind (keep 127.0.0.1; tunnel with ssh).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    campaign: Annotated[str | None, typer.Option(help="Show only this campaign.")] = None,
    workers: Annotated[int, typer.Option(help="gunicorn workers.")] = 1,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """Serve FireWorks' web GUI for the configured LaunchPad (gunicorn).

    Basic auth from $ACTIVE_MLIP_WEBGUI_USERNAME / $ACTIVE_MLIP_WEBGUI_PASSWORD; required
    for any address other than loopback.
    """
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.workers import (
        serve_webgui,
        webgui_app,
    )

    lp = _launchpad(timeout)
    try:
        gui = webgui_app(lp, environment().webgui_username, environment().webgui_password, campaign)
        console.print(f"web GUI on http://{host}:{port}/")
        serve_webgui(gui, host=host, port=port, workers=workers)
    except ValueError as exc:
        _fail(str(exc))


@app.command()
def launch(
    worker_file: Annotated[
        Path, typer.Argument(help="FireWorker YAML (launchers/fworker_*.yaml).")
    ],
    nlaunches: Annotated[
        int, typer.Option(help="Jobs to run: 0 = until none is ready, -1 = keep polling.")
    ] = 0,
    sleep: Annotated[int, typer.Option(help="Seconds between polls.")] = 10,
    timeout_s: Annotated[
        int | None, typer.Option("--stop-after", help="Stop starting jobs after this many s.")
    ] = None,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """Run fireworks here (``rlaunch rapidfire`` with credentials from the environment)."""
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.workers import run_worker

    if not worker_file.is_file():
        _fail(f"worker file {str(worker_file)!r} does not exist")
    lp = _launchpad(timeout)
    try:
        run_worker(worker_file, lp, nlaunches=nlaunches, sleep_secs=sleep, timeout=timeout_s)
    except ValueError as exc:
        _fail(str(exc))
