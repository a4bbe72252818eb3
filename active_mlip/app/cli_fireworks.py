"""``active-mlip submit | status | restart | cancel | webgui | launch``: campaigns on FireWorks.

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
    """FireWorker files to check routing against: $ACTIVE_MLIP_WORKERS, else launchers/.

    ``launchers/`` is looked up in the current directory and then beside the package (a
    checkout's own launchers), so that submitting from elsewhere still checks the routing.
    """
    env = environment().workers
    if env:
        return [p for p in env.split(os.pathsep) if p]
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        found = sorted(glob.glob(str(root / "launchers" / "fworker_*.yaml")))
        if found:
            return found
    return []


def _say_checked(files: list[str]) -> None:
    if files:
        console.print(f"[dim]routing checked against {', '.join(files)}[/dim]", soft_wrap=True)
    else:
        console.print(
            "[yellow]warning:[/yellow] routing not checked: no FireWorker files found (pass "
            "--worker or set ACTIVE_MLIP_WORKERS); a category no worker pulls stays READY",
            soft_wrap=True,
        )


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
    _say_checked(files)
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
    """One row per material: state, iteration, labels, latest test force MAE, fireworks.

    Running jobs whose worker has not pinged for 10 min are listed (their worker most
    likely died); so are READY jobs whose category no known worker pulls. "labels" counts
    every reference calculation the material's jobs made (initial data, test set, force
    constants, screening checks and the loop's labels); the campaign report's "labels
    used" counts those charged to the label budget.
    """
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.status import (
        STALE_AFTER_S,
        campaign_status,
        summary_line,
        unpulled_ready,
    )
    from active_mlip.app.submit import workflow_query
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
        if campaign:
            _fail(f"no campaign {campaign!r} on the LaunchPad")
        # the database answered: a working connection with nothing submitted yet
        console.print("no campaigns yet (the LaunchPad answers; submit one with "
                      "`active-mlip submit CAMPAIGN.yaml`)")  # fmt: skip
        return
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
        stale = sum(j.stale() for j in r.running_jobs)
        table.add_row(
            r.campaign,
            r.material,
            r.state,
            "-" if r.iteration is None else str(r.iteration),
            str(r.labels),
            "-" if r.test_force_mae is None else f"{r.test_force_mae:.1f}",
            r.verdict or "-",
            f"{r.counts.get('COMPLETED', 0)}/{sum(r.counts.values())} done",
            f"{r.running} ({stale} stale)" if stale else str(r.running),
            str(r.failed),
        )
    Console = type(console)
    wide = Console(width=max(console.width, 140))
    wide.print(table)
    wide.print(summary_line(rows))
    wide.print(
        "[dim]labels: every reference calculation of the material's jobs (the report's "
        '"labels used" counts those charged to the label budget)[/dim]',
        soft_wrap=True,
    )
    jobs = [(r, j) for r in rows for j in r.running_jobs]
    for _, j in jobs:
        age = "never" if j.last_ping_age_s is None else f"{_duration(j.last_ping_age_s)} ago"
        where = f" on {j.host}" if j.host else ""
        flag = " [red]stale: worker lost?[/red]" if j.stale() else ""
        wide.print(f"  running {j.fw_id} {j.name}{where}: last ping {age}{flag}", soft_wrap=True)
    stale = [j for _, j in jobs if j.stale()]
    if stale:
        names = {r.campaign for r, j in jobs if j.stale()}
        wide.print(
            f"[yellow]{len(stale)} running job(s) without a ping for over "
            f"{_duration(STALE_AFTER_S)}: their worker most likely died. Rerun them with "
            f"`active-mlip restart {' '.join(sorted(names))} --lost-after {STALE_AFTER_S}`"
            "[/yellow]",
            soft_wrap=True,
        )
    query = workflow_query(campaign) if campaign else {"metadata.campaign": {"$exists": True}}
    waiting, pulled = unpulled_ready(lp, query, _default_worker_files())
    for w in waiting:
        wide.print(
            f"[yellow]{w.n_ready} READY job(s) of category {w.category!r} (e.g. {w.example}) "
            f"that no known worker pulls (known: {', '.join(sorted(pulled))}): they wait "
            "until a worker of that category runs[/yellow]",
            soft_wrap=True,
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
    from active_mlip.app.status import campaign_fw_ids, restart_campaign

    lp = _launchpad(timeout)
    if campaign and not campaign_fw_ids(lp, campaign):
        _fail(f"no campaign {campaign!r} on the LaunchPad")
    result = restart_campaign(lp, campaign, expiration_secs=lost_after, dry_run=dry_run)
    verb = "would rerun" if dry_run else "rerun"
    if not result.lost and not result.fizzled:
        console.print("nothing to rerun: no lost or fizzled fireworks")
    if result.lost:
        console.print(f"lost runs {verb} (no ping for {lost_after} s):")
        console.print(result.describe(result.lost), soft_wrap=True, highlight=False)
    if result.fizzled:
        console.print(f"fizzled runs {verb}:")
        console.print(result.describe(result.fizzled), soft_wrap=True, highlight=False)


@app.command()
def cancel(
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    materials: Annotated[
        str | None, typer.Option(help="Comma-separated materials (default: all).")
    ] = None,
    delete: Annotated[
        bool,
        typer.Option(
            "--delete",
            help="Remove the workflows (submit adds them anew) instead of defusing them.",
        ),
    ] = False,  # fmt: skip
    undo: Annotated[
        bool, typer.Option("--undo", help="Reignite defused workflows: they go on.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would change.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    timeout: Annotated[float, _TIMEOUT] = 5.0,
) -> None:
    """Stop a campaign's workflows (defuse), or remove them (--delete).

    Cached labels, trained members and explorations stay in the job store: a material
    submitted again reuses them.
    """
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.cancel import cancel_campaign

    if delete and undo:
        _fail("--delete and --undo exclude each other")
    action = "delete" if delete else "undo" if undo else "defuse"
    wanted = [m.strip() for m in materials.split(",") if m.strip()] if materials else None
    lp = _launchpad(timeout)
    try:
        plan = cancel_campaign(lp, campaign, wanted, action, dry_run=True)
    except ValueError as exc:
        _fail(str(exc))
    verb = {"defuse": "defuse", "delete": "delete", "undo": "reignite"}[action]
    n = sum(plan.fireworks.values())
    running = sum(plan.running.values())
    console.print(
        f"{verb} {n} firework(s) of {len(plan.fireworks)} material(s) of {campaign!r}: "
        + ", ".join(f"{m} ({k})" for m, k in plan.fireworks.items()),
        soft_wrap=True,
    )
    if running and action != "undo":
        console.print(f"{running} of them running: their workers finish the step in hand")
    if dry_run or not n:
        return
    if not yes and not typer.confirm("go on?", default=False):
        console.print("nothing changed")
        raise typer.Exit(code=1)
    cancel_campaign(lp, campaign, wanted, action)
    done = {"defuse": "defused", "delete": "deleted", "undo": "reignited"}[action]
    console.print(f"{done}; cached labels and members stay in the job store")


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
    """Serve FireWorks' web GUI for the configured LaunchPad (gunicorn), behind basic auth.

    Credentials from $ACTIVE_MLIP_WEBGUI_USERNAME / $ACTIVE_MLIP_WEBGUI_PASSWORD; without
    them a one-time password is generated and printed (127.0.0.1 only: any other address
    needs them). jQuery is served from the package, so the GUI works offline.
    """
    # deferred: `active-mlip --help` and the other commands start without the loop's stack
    from active_mlip.app.workers import (
        serve_webgui,
        webgui_app,
        webgui_credentials,
    )

    env = environment()
    try:
        # before anything is announced: a refused address must never be printed as served
        user, password, generated = webgui_credentials(
            host, env.webgui_username, env.webgui_password
        )
    except ValueError as exc:
        _fail(str(exc))
    lp = _launchpad(timeout)
    try:
        gui = webgui_app(lp, user, password, campaign)
        console.print(f"web GUI on http://{host}:{port}/", soft_wrap=True)
        if generated:
            console.print(
                f"log in as {user} with the one-time password {password} (valid until this "
                "server stops; set ACTIVE_MLIP_WEBGUI_USERNAME and ..._PASSWORD to choose)",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
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
