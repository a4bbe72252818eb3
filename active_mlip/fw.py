"""The FireWorks production path: LaunchPad, job store, submit, status, restart, web GUI.

Credentials never enter a file in the repository or a Firework spec:

- the LaunchPad is built from ``ACTIVE_MLIP_MONGO_URI`` (or from a launchpad YAML named
  by ``ACTIVE_MLIP_LAUNCHPAD``, refused when other users can read it and it holds a
  password) by :func:`load_launchpad`;
- every Firework carries an :class:`EnvJobStore`, which serialises to the database and
  collection prefix only; each worker builds the real store (MongoDB documents + GridFS
  data and cache, :func:`active_mlip.stores.make_job_store`) from its own
  ``ACTIVE_MLIP_MONGO_URI`` when the job runs.

Workflows are tagged with the campaign, material and settings fingerprint in their
metadata, which makes :func:`submit_flows` idempotent and lets :func:`campaign_status`
and :func:`restart_campaign` find a campaign's fireworks without loading documents.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jobflow import JobStore

from active_mlip.stores import (
    MONGO_DB_ENV,
    MONGO_URI_ENV,
    BlobsFirstJobStore,
    DatabaseUnreachableError,
    InsecureConfigError,
    StoreSettings,
    make_job_store,
    read_private_yaml,
)

if TYPE_CHECKING:
    from fireworks import LaunchPad, Workflow
    from jobflow import Flow

    from workflows.routing import RoutingTable

logger = logging.getLogger(__name__)

#: Environment variable naming a launchpad YAML (used instead of the URI for the LaunchPad).
LAUNCHPAD_ENV = "ACTIVE_MLIP_LAUNCHPAD"
#: Environment variable naming the FireWorks database (default: the URI's, else "fireworks").
FW_DB_ENV = "ACTIVE_MLIP_FW_DB"
#: Web GUI basic-auth credentials.
WEBGUI_USER_ENV = "ACTIVE_MLIP_WEBGUI_USERNAME"
WEBGUI_PASSWORD_ENV = "ACTIVE_MLIP_WEBGUI_PASSWORD"

DEPLOY_HINT = (
    "Start one with `docker compose -f deploy/compose.yaml --env-file deploy/.env up -d` "
    "(or see deploy/README.md for bare-metal) and export "
    f"{MONGO_URI_ENV}=mongodb://USER:PASSWORD@HOST:27017/?authSource=admin"
)


# ---------------------------------------------------------------------------------------
# LaunchPad
# ---------------------------------------------------------------------------------------
def redact_uri(uri: str) -> str:
    """``uri`` without its password (for messages)."""
    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def uri_hosts(uri: str) -> str:
    """The host list of a MongoDB URI, as ``host:port[,host:port]``."""
    m = re.match(r"mongodb(?:\+srv)?://(?:[^@/]*@)?([^/?]+)", uri)
    return m.group(1) if m else uri


def check_launchpad_file(path: str | Path) -> dict[str, Any]:
    """Read a launchpad YAML; refuse one that others can read when it holds a password.

    Raises
    ------
    InsecureConfigError
        If the file is readable by group or others and holds a password (a
        ``password:`` key or a URI with ``user:password@``).
    ValueError
        If the file is missing or not a mapping.
    """
    return read_private_yaml(path, "launchpad")


def launchpad_from_uri(uri: str, timeout_ms: int = 5000) -> LaunchPad:
    """A LaunchPad on ``uri``; database from the URI path, ${FW_DB_ENV} or "fireworks"."""
    from fireworks import LaunchPad
    from pymongo.uri_parser import parse_uri

    try:
        db = parse_uri(uri, validate=False).get("database")
    except Exception as exc:  # pymongo raises InvalidURI / ConfigurationError
        raise ValueError(f"invalid MongoDB URI {redact_uri(uri)!r}: {exc}") from exc
    db = os.environ.get(FW_DB_ENV) or db or "fireworks"
    return LaunchPad(
        host=uri,
        uri_mode=True,
        name=db,
        mongoclient_kwargs={"serverSelectionTimeoutMS": timeout_ms},
        strm_lvl="WARNING",
    )


def load_launchpad(
    path: str | Path | None = None,
    uri: str | None = None,
    timeout_ms: int = 5000,
    ping: bool = True,
) -> LaunchPad:
    """The configured LaunchPad, with credentials from the environment.

    Order: ``path``, ``uri``, ``$ACTIVE_MLIP_LAUNCHPAD`` (a launchpad YAML), then
    ``$ACTIVE_MLIP_MONGO_URI``.

    Raises
    ------
    ValueError
        Nothing configured, or a bad file/URI.
    InsecureConfigError
        A launchpad file with a password that others can read.
    DatabaseUnreachableError
        When ``ping`` and the server does not answer within ``timeout_ms``.
    """
    from fireworks import LaunchPad

    path = path or (None if uri else os.environ.get(LAUNCHPAD_ENV))
    uri = uri or os.environ.get(MONGO_URI_ENV)
    if path:
        data = check_launchpad_file(path)
        kwargs = dict(data.get("mongoclient_kwargs") or {})
        kwargs.setdefault("serverSelectionTimeoutMS", timeout_ms)
        try:
            lp = LaunchPad.from_dict({**data, "mongoclient_kwargs": kwargs})
        except (KeyError, TypeError) as exc:  # FireWorks: KeyError('host') for a missing key
            raise ValueError(
                f"launchpad file {path} lacks the key {exc}; copy the keys from "
                "launchers/launchpad.yaml.example (host, port, name, username, password)"
            ) from exc
        where = (
            uri_hosts(str(lp.host)) if lp.uri_mode else f"{lp.host}:{lp.port}"
        ) + f" (from {path})"
    elif uri:
        lp = launchpad_from_uri(uri, timeout_ms)
        where = uri_hosts(uri)
    else:
        raise ValueError(
            f"no database configured: set {MONGO_URI_ENV} (a MongoDB URI) or {LAUNCHPAD_ENV} "
            f"(a launchpad YAML). {DEPLOY_HINT}"
        )
    if ping:
        check_connection(lp.connection, where)
    return lp


def check_connection(client: Any, where: str) -> None:
    """Ping a MongoClient; raise :class:`DatabaseUnreachableError` naming ``where``."""
    from pymongo.errors import OperationFailure, PyMongoError

    try:
        client.admin.command("ping")
    except OperationFailure as exc:
        raise DatabaseUnreachableError(
            f"MongoDB at {where} refused the request ({exc.details or exc}); check the user "
            f"and password in {MONGO_URI_ENV} and authSource (admin for the root user)"
        ) from exc
    except PyMongoError as exc:
        first = str(exc).split(",")[0].split("Timeout:")[0].strip()
        raise DatabaseUnreachableError(
            f"cannot reach MongoDB at {where}: {first or type(exc).__name__}. {DEPLOY_HINT}"
        ) from exc


# ---------------------------------------------------------------------------------------
# Job store: resolved on each worker from its environment
# ---------------------------------------------------------------------------------------
class EnvJobStore(BlobsFirstJobStore):
    """A JobStore that serialises without credentials and connects from the environment.

    Firework specs hold ``{"@class": "EnvJobStore", "database": ..., "prefix": ...}``;
    the worker that runs a job builds MongoDB docs + GridFS ``data``/``cache`` from its own
    ``ACTIVE_MLIP_MONGO_URI`` (``ACTIVE_MLIP_MONGO_DB`` overrides the database).
    """

    def __init__(self, database: str = "active_mlip", prefix: str = "active_mlip", **_: Any):
        from maggma.stores import MemoryStore

        self.settings = StoreSettings(database=database, prefix=prefix)
        self.configured = self.settings.resolved_uri() is not None
        if self.configured:
            built = make_job_store(self.settings)
            docs, extra = built.docs_store, built.additional_stores
        else:  # built anywhere (GUI, rerun), usable only where the URI is set
            docs, extra = MemoryStore("unconfigured"), {}
        super().__init__(docs, additional_stores=extra)

    def connect(self, force_reset: bool = False) -> None:
        if not self.configured:
            raise RuntimeError(
                f"this worker has no job store: set {MONGO_URI_ENV} in the worker's environment "
                "(see launchers/README.md)"
            )
        super().connect(force_reset=force_reset)

    def as_dict(self) -> dict[str, Any]:
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "database": self.settings.database,
            "prefix": self.settings.prefix,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvJobStore:
        return cls(database=d.get("database", "active_mlip"), prefix=d.get("prefix", "active_mlip"))


def client_job_store(timeout_ms: int = 5000) -> JobStore:
    """The campaign's JobStore for commands run here (status); needs ${MONGO_URI_ENV}."""
    settings = StoreSettings()
    uri = settings.resolved_uri()
    if not uri:
        raise ValueError(f"set {MONGO_URI_ENV} to read job outputs. {DEPLOY_HINT}")
    store = make_job_store(settings)
    from pymongo import MongoClient

    client = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
    try:
        check_connection(client, uri_hosts(uri))
    finally:
        client.close()
    store.connect()
    return store


# ---------------------------------------------------------------------------------------
# Routing check
# ---------------------------------------------------------------------------------------
def worker_categories(worker_files: list[str | Path]) -> set[str]:
    """Categories the FireWorker YAMLs pull (``__none__`` for uncategorised-only)."""
    cats: set[str] = set()
    for path in worker_files:
        data = yaml.safe_load(Path(path).read_text()) or {}
        c = data.get("category", "")
        cats |= set(c) if isinstance(c, list) else {c}
    return cats


def check_routing(categories: set[str], worker_files: list[str | Path]) -> list[str]:
    """Warnings for routed categories no FireWorker config pulls (their jobs would wait forever)."""
    if not worker_files:
        return []
    pulled = worker_categories(worker_files)
    if "" in pulled or "*" in pulled:  # a worker without category pulls everything
        return []
    names = ", ".join(str(p) for p in worker_files)
    return [
        f"routing sends jobs to category {c!r} but no worker config pulls it ({names}); "
        "they will stay READY until a worker with that category runs"
        for c in sorted(categories - pulled)
    ]


# ---------------------------------------------------------------------------------------
# Submit
# ---------------------------------------------------------------------------------------
@dataclass
class SubmitResult:
    """What a submit did, per material."""

    added: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def workflow_query(campaign: str, material: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"metadata.campaign": campaign}
    if material is not None:
        q["metadata.material"] = material
    return q


def to_workflow(
    flow: Flow,
    campaign: str,
    material: str,
    fingerprint: str,
    routing: RoutingTable | None = None,
    store: JobStore | None = None,
) -> Workflow:
    """Convert ``flow`` to a FireWorks workflow tagged with campaign, material, fingerprint.

    The tags also go into every job's metadata (and so every Firework's spec), including
    jobs the flow creates while it runs. The jobs jobflow inserts when a controller
    replaces itself are routed with ``routing``'s glue category.
    """
    from jobflow.managers.fireworks import flow_to_workflow

    from workflows.routing import RoutingTable, route_output_jobs

    route_output_jobs(flow, routing or RoutingTable())
    flow.update_metadata({"campaign": campaign, "material": material}, dynamic=True)
    return flow_to_workflow(
        flow,
        store=store if store is not None else EnvJobStore(),
        name=f"{flow.name} [{campaign}]" if material in flow.name else f"{material} {flow.name}",
        metadata={
            "campaign": campaign,
            "material": material,
            "fingerprint": fingerprint,
            # every job's hosts hold it: status tells this workflow's outputs from those of
            # an earlier, deleted one of the same material
            "flow_uuid": flow.uuid,
        },
    )


def ensure_initialized(lp: LaunchPad) -> None:
    """Initialise an empty FireWorks database (ids and indexes); never deletes anything."""
    if lp.fw_id_assigner.find_one({}) is not None:
        return
    if lp.fireworks.count_documents({}) or lp.workflows.count_documents({}):
        raise RuntimeError(
            f"FireWorks database {lp.name!r} holds fireworks but no id counter; repair it "
            "(e.g. restore a backup, deploy/README.md) before submitting"
        )
    lp._restart_ids(1, 1)
    lp.tuneup()


def submit_flows(
    lp: LaunchPad,
    campaign: str,
    flows: dict[str, tuple[Any, str]],
    routing: RoutingTable | None = None,
    store: JobStore | None = None,
) -> SubmitResult:
    """Add one workflow per material unless the campaign already has it.

    Parameters
    ----------
    flows
        ``material -> (flow or a zero-argument callable building it, settings fingerprint)``.
        A callable is only called for materials that are added.
    """
    ensure_initialized(lp)
    result = SubmitResult()
    # Build every new workflow before adding any: a material whose flow cannot be built
    # (bad trajectory, element the labeller lacks) must not leave a half-submitted campaign.
    todo = []
    for material, (flow, fingerprint) in flows.items():
        old = lp.workflows.find_one(workflow_query(campaign, material), {"metadata": 1, "nodes": 1})
        if old is not None:
            if old["metadata"].get("fingerprint") == fingerprint:
                result.skipped.append(material)
            else:
                result.conflicts.append(
                    f"{material}: campaign {campaign!r} already holds it with other settings "
                    f"(fingerprint {old['metadata'].get('fingerprint', '?')[:12]} != "
                    f"{fingerprint[:12]}); use a new campaign name to run the new settings"
                )
            continue
        flow = flow() if callable(flow) else flow
        todo.append((material, to_workflow(flow, campaign, material, fingerprint, routing, store)))
    for material, wf in todo:
        result.added[material] = sorted(lp.add_wf(wf).values())
    return result


def submit_campaign(lp: LaunchPad, campaign: Any, settings: Any) -> SubmitResult:
    """Submit a :class:`workflows.campaign.Campaign`: one active-learning flow per material."""
    from workflows.active_learning import ActiveLearningMaker
    from workflows.materials import get_structure

    fingerprint = settings.fingerprint()
    flows: dict[str, tuple[Any, str]] = {}
    for entry in campaign.materials:
        structure = get_structure(entry.source)  # bad files fail here, before anything is added

        def build(structure=structure, name=entry.name):
            return ActiveLearningMaker(settings=settings).make(structure, material=name)

        flows[entry.name] = (build, fingerprint)
    return submit_flows(lp, campaign.name, flows, routing=settings.routing)


# ---------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------
_IT_RE = re.compile(r"\bit(\d+)\b")


@dataclass
class MaterialStatus:
    """One row of ``active-mlip status``."""

    campaign: str
    material: str
    state: str
    iteration: int | None
    labels: int
    test_force_mae: float | None
    counts: dict[str, int]
    verdict: str | None = None

    @property
    def running(self) -> int:
        return self.counts.get("RUNNING", 0) + self.counts.get("RESERVED", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("FIZZLED", 0)


def campaign_status(
    lp: LaunchPad, campaign: str | None = None, store: JobStore | None = None
) -> list[MaterialStatus]:
    """State of each material's workflow, in two queries.

    The firework counts come from each workflow's ``fw_states`` (FireWorks keeps them with
    every firework's state). Iteration, labels, the latest test force MAE and the screening
    verdict come from the job outputs in ``store`` (when given), found by the campaign and
    material every job carries in its metadata, so the fireworks (whose specs hold the
    serialised jobs) are not read at all: iteration = the highest ``itN`` among finished
    evaluation/controller jobs; labels = labelled + failed frames of every labelling job.
    Without a store only the iteration is read, from the completed fireworks.
    """
    q = workflow_query(campaign) if campaign else {"metadata.campaign": {"$exists": True}}
    wfs = list(lp.workflows.find(q, {"metadata": 1, "state": 1, "nodes": 1, "fw_states": 1}))
    if store is not None:
        summaries = _summaries_from_outputs(store, campaign, wfs)
    else:
        summaries = _iterations_from_fireworks(lp, wfs)
    rows = []
    for wf, (iteration, labels, mae, verdict) in zip(wfs, summaries, strict=True):
        counts: dict[str, int] = {}
        for state in (wf.get("fw_states") or {}).values():
            counts[state] = counts.get(state, 0) + 1
        rows.append(
            MaterialStatus(
                campaign=wf["metadata"]["campaign"],
                material=wf["metadata"]["material"],
                state=wf["state"],
                iteration=iteration,
                labels=labels,
                test_force_mae=mae,
                counts=counts,
                verdict=verdict,
            )
        )
    return sorted(rows, key=lambda r: (r.campaign, r.material))


_Summary = tuple[int | None, int, float | None, str | None]


def ensure_output_indexes(store: JobStore) -> None:
    """Index the job documents by campaign, the field status queries (idempotent).

    jobflow indexes only ``uuid`` and ``index``; without this index MongoDB scans every job
    document of every campaign for each ``active-mlip status``.
    """
    store.docs_store.ensure_index("metadata.campaign")


def _summaries_from_outputs(
    store: JobStore, campaign: str | None, wfs: list[dict[str, Any]]
) -> list[_Summary]:
    """(iteration, labels, test force MAE, verdict) of each workflow, from one store query.

    The first version read the completed fireworks and then their outputs: at 5,700
    fireworks the fireworks query alone took 1.3-2.5 s on the wire-protocol test server,
    which sends whole documents (benchmarks/campaign_scale.py).
    """
    crit: dict[str, Any] = {"metadata.kind": {"$in": list(_STATUS_KINDS)}}
    crit["metadata.campaign"] = campaign if campaign else {"$exists": True}
    props = [
        "uuid",
        "name",
        "hosts",
        "metadata.campaign",
        "metadata.material",
        "metadata.kind",
        "output.n_labelled",
        "output.n_failed",
        "output.mae_forces_meV_per_A",
        "output.verdict",
    ]
    docs_of: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for doc in store.docs_store.query(criteria=crit, properties=props):
        meta = doc.get("metadata") or {}
        docs_of.setdefault((meta.get("campaign"), meta.get("material")), []).append(doc)
    out = []
    for wf in wfs:
        meta = wf["metadata"]
        docs = docs_of.get((meta["campaign"], meta["material"]), [])
        flow_uuid = meta.get("flow_uuid")
        if flow_uuid:  # outputs of an earlier, deleted workflow of the material do not count
            docs = [d for d in docs if flow_uuid in (d.get("hosts") or [])]
        out.append(_summarise_outputs(docs))
    return out


def _iterations_from_fireworks(lp: LaunchPad, wfs: list[dict[str, Any]]) -> list[_Summary]:
    """(iteration, 0, None, None) of each workflow, from its completed fireworks' names."""
    owner: dict[int, int] = {}
    for i, wf in enumerate(wfs):
        for fw_id, state in (wf.get("fw_states") or {}).items():
            if state == "COMPLETED":
                owner[int(fw_id)] = i
    wanted = {"state": "COMPLETED", "spec.kind": {"$in": ["evaluation", "controller"]}}
    population = sum(len(wf["nodes"]) for wf in wfs)
    best: dict[int, int] = {}
    for fw in _find_ids(lp.fireworks, list(owner), wanted, {"fw_id": 1, "name": 1}, population):
        i = owner.get(fw["fw_id"])
        if i is not None and (m := _IT_RE.search(fw["name"])):
            best[i] = max(best.get(i, -1), int(m.group(1)))
    return [(best.get(i), 0, None, None) for i in range(len(wfs))]


_STATUS_KINDS = ("labelling", "evaluation", "controller")


#: Most values in one ``$in`` query (a MongoDB command is at most 16 MB).
_IN_CHUNK = 20_000


def _find_ids(
    collection: Any,
    ids: list[int],
    query: dict[str, Any],
    projection: dict[str, int],
    population: int = 0,
) -> list[dict[str, Any]]:
    """Documents matching ``query`` among the fireworks ``ids``, in few queries.

    ``ids`` were picked from ``population`` fireworks (the workflows' nodes). When they
    lie in a range of at most twice that many fw_ids (the usual case: FireWorks numbers
    a workflow's fireworks one after the other) the range is read, filtered by ``query``
    on the server, which spares it a long ``$in`` list; the caller drops the ids it did
    not ask for.
    """
    if not ids:
        return []
    lo, hi = min(ids), max(ids)
    if hi - lo + 1 <= 2 * max(len(ids), population):
        return list(collection.find({**query, "fw_id": {"$gte": lo, "$lte": hi}}, projection))
    ids = sorted(ids)
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), _IN_CHUNK):
        out += collection.find({**query, "fw_id": {"$in": ids[i : i + _IN_CHUNK]}}, projection)
    return out


def _summarise_outputs(outputs: list[dict[str, Any]]) -> _Summary:
    """Iteration, labels, latest test force MAE and verdict from one workflow's job outputs."""
    labels = 0
    verdict = None
    iteration: int | None = None
    best: tuple[int, float] | None = None
    for doc in outputs:
        out = doc.get("output") or {}
        kind = (doc.get("metadata") or {}).get("kind")
        m = _IT_RE.search(doc.get("name") or "")
        it = int(m.group(1)) if m else -1
        if isinstance(out.get("verdict"), str):  # the screening verdict job
            verdict = out["verdict"]
        if kind == "labelling" and isinstance(out.get("n_labelled"), int):
            labels += out["n_labelled"] + int(out.get("n_failed") or 0)
        if kind in ("evaluation", "controller") and m:
            iteration = it if iteration is None else max(iteration, it)
        if kind == "evaluation" and out.get("mae_forces_meV_per_A") is not None:
            if best is None or it >= best[0]:
                best = (it, float(out["mae_forces_meV_per_A"]))
    return iteration, labels, None if best is None else best[1], verdict


# ---------------------------------------------------------------------------------------
# Restart
# ---------------------------------------------------------------------------------------
@dataclass
class RestartResult:
    """Fireworks found lost (worker died) or fizzled (job failed), and rerun."""

    lost: list[int] = field(default_factory=list)
    fizzled: list[int] = field(default_factory=list)


def campaign_fw_ids(lp: LaunchPad, campaign: str | None) -> list[int]:
    q = workflow_query(campaign) if campaign else {"metadata.campaign": {"$exists": True}}
    ids: list[int] = []
    for wf in lp.workflows.find(q, {"nodes": 1}):
        ids += wf["nodes"]
    return ids


def restart_campaign(
    lp: LaunchPad,
    campaign: str | None = None,
    expiration_secs: int = 4 * 3600,
    dry_run: bool = False,
) -> RestartResult:
    """Rerun a campaign's lost and fizzled fireworks.

    A run is lost when its worker stopped pinging for ``expiration_secs`` (a killed
    node). Reruns recompute nothing already stored: labels, members and explorations
    are cached by content in the job store and reused by the rerun jobs.
    """
    ids = campaign_fw_ids(lp, campaign)
    result = RestartResult()
    if not ids:
        return result
    query = {"fw_id": {"$in": ids}}
    _, lost, _ = lp.detect_lostruns(expiration_secs=expiration_secs, query=query, rerun=not dry_run)
    result.lost = sorted(lost)
    result.fizzled = sorted(lp.get_fw_ids({**query, "state": "FIZZLED"}))
    if not dry_run:
        for fw_id in result.fizzled:
            lp.rerun_fw(fw_id)
    return result


# ---------------------------------------------------------------------------------------
# Workers and the web GUI
# ---------------------------------------------------------------------------------------
def run_worker(
    worker_file: str | Path,
    lp: LaunchPad | None = None,
    nlaunches: int = 0,
    sleep_secs: int = 10,
    timeout: int | None = None,
    launch_dir: str | Path | None = None,
) -> None:
    """``rlaunch rapidfire`` with the LaunchPad from the environment (no launchpad file).

    ``nlaunches``: 0 = until nothing is ready, -1 = keep polling (stop with ``timeout``).
    """
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    lp = lp or load_launchpad()
    if not os.environ.get(MONGO_URI_ENV):
        raise ValueError(f"workers need {MONGO_URI_ENV} for the job store (launchers/README.md)")
    rapidfire(
        lp,
        FWorker.from_file(str(worker_file)),
        m_dir=str(launch_dir) if launch_dir else None,
        nlaunches=nlaunches,
        sleep_time=sleep_secs,
        timeout=timeout,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webgui_app(
    lp: LaunchPad,
    username: str | None = None,
    password: str | None = None,
    campaign: str | None = None,
) -> Any:
    """FireWorks' Flask web GUI on ``lp``, behind basic auth when credentials are given."""
    from fireworks.flask_site.app import app

    if bool(username) != bool(password):
        raise ValueError(f"set both {WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}, or neither")
    app.lp = lp
    app.config["WEBGUI_USERNAME"] = username or None
    app.config["WEBGUI_PASSWORD"] = password or None
    app.BASE_Q_WF = workflow_query(campaign) if campaign else {}
    return app


def serve_webgui(app: Any, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> None:
    """Serve the GUI with gunicorn; a non-loopback address needs credentials."""
    if not is_loopback(host) and not app.config.get("WEBGUI_USERNAME"):
        raise ValueError(
            f"refusing to serve the web GUI on {host} without authentication: set "
            f"{WEBGUI_USER_ENV} and {WEBGUI_PASSWORD_ENV}, or use 127.0.0.1 and an SSH tunnel"
        )
    from fireworks.flask_site.gunicorn import StandaloneApplication

    # One worker unless FWAPP_SECRET_KEY is set: each worker otherwise draws its own session key.
    StandaloneApplication(app, {"bind": f"{host}:{port}", "workers": workers}).run()


__all__ = [
    "DatabaseUnreachableError",
    "EnvJobStore",
    "InsecureConfigError",
    "MONGO_DB_ENV",
    "campaign_status",
    "check_launchpad_file",
    "check_routing",
    "load_launchpad",
    "restart_campaign",
    "submit_campaign",
    "submit_flows",
    "webgui_app",
]
