"""``active-mlip webgui``: offline assets, no anonymous access, named fireworks, readable graph.

The GUI runs as the command does (gunicorn in a subprocess) against the jongodb test
server; the workflow page is loaded by headless Chromium with every address but
127.0.0.1 unreachable, as on a login node without internet.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jobflow import Flow, JobStore, Response, job
from maggma.stores import MemoryStore

from tests import external
from tests.app.fireworks.helpers import (
    REPO,
    active_mlip_exe,
    free_port,
    stop,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.timeout(180)

# A ~25-firework loop: 4 harmonic-sampling temperatures and 8 ensemble members side by side.
CAMPAIGN = """\
name: gui-offline
materials: [CuI]
temperatures: [300, 600, 900, 1200]
preset: tiny
settings:
  training: {n_sub: 4, n_seed: 2}
"""
NODE_COLOURS = {(0x1F, 0x62, 0xA2), (0x2E, 0x92, 0xF2)}  # FireWorks' WAITING, READY


def _submit(tmp_path: Path) -> tuple[object, int]:
    """The campaign above on the test LaunchPad: (LaunchPad, id of one firework)."""
    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.app.submit import submit_campaign
    from active_mlip.workflows.campaign import load_campaign

    f = tmp_path / "campaign.yaml"
    f.write_text(CAMPAIGN)
    campaign, settings = load_campaign(f)
    lp = load_launchpad()
    result = submit_campaign(lp, campaign, settings)
    return lp, result.added["CuI"][0]


def _start_gui(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp_path / f"gui-{port}.log"
    proc = subprocess.Popen(
        [active_mlip_exe(), "webgui", "--port", str(port)],
        env=worker_env(env),
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(url + "/")[0] is not None, 60, "the web GUI to answer")
    except TimeoutError:
        stop(proc)
        raise AssertionError(log.read_text()) from None
    return proc, url, log


def _get(url: str, user: str | None = None, password: str | None = None) -> tuple:
    req = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None, b""


def _chromium(url: str, *mode: str) -> str:
    """Headless Chromium on ``url`` with only 127.0.0.1 reachable; its stdout."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        external.unavailable("headless Chromium", "no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                # the network off: no name resolves, and what is not loopback goes to a
                # closed port (Chromium never proxies loopback)
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--proxy-server=http://127.0.0.1:9",
                # let the graph's JSON request and the relabelling finish before the dump
                "--virtual-time-budget=5000",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_workflow_graph_renders_offline_and_readable(db_env, tmp_path):
    lp, fw_id = _submit(tmp_path)
    assert len(lp.get_wf_by_fw_id(fw_id).fws) >= 20
    proc, url, _ = _start_gui(
        tmp_path, {"ACTIVE_MLIP_WEBGUI_USERNAME": "ann", "ACTIVE_MLIP_WEBGUI_PASSWORD": "pw"}
    )
    try:
        page = url.replace("http://", "http://ann:pw@") + f"/wf/{fw_id}"
        dom = _chromium(page, "--dump-dom")
        # our jQuery, not the CDN's
        assert "code.jquery.com" not in dom and 'src="/_active_mlip/jquery-3.7.1.min.js"' in dom
        # jQuery ran: the JSON tree is built and cytoscape drew the graph from /wf/N/json
        assert 'class="jsonview"' in dom
        cy = dom[dom.index('<div id="cy"') :]
        assert 'data-id="layer2-node"' in cy[:3000] and "cy-panzoom" in cy, cy[:1500]
        # the heading names the workflow, campaign first
        assert re.search(r'<h4 class="text-center">\[gui-offline\] CuI active learning', dom)

        shot = tmp_path / "wf.png"
        _chromium(page, f"--screenshot={shot}")
        from PIL import Image

        image = Image.open(shot).convert("RGB")
        drawn = sum(n for n, colour in image.getcolors(1 << 20) if colour in NODE_COLOURS)
        # Nodes are drawn at a readable size: FireWorks' own one-line, name-wide nodes
        # fitted into its 500 px box give 8,000-9,000 node pixels at 1400x1000 (4-5 px text);
        # wrapped labels in the taller box give ~35,000. A page without the graph has
        # ~2,000 (the state legend).
        assert drawn > 20_000, f"{drawn} node pixels: graph missing or drawn too small ({shot})"
    finally:
        stop(proc)


def test_node_labels_drop_the_material(db_env, tmp_path):
    lp, fw_id = _submit(tmp_path)
    proc, url, _ = _start_gui(
        tmp_path, {"ACTIVE_MLIP_WEBGUI_USERNAME": "ann", "ACTIVE_MLIP_WEBGUI_PASSWORD": "pw"}
    )
    try:
        status, body = _get(f"{url}/wf/{fw_id}/json", "ann", "pw")
        assert status == 200
        labels = [n["data"]["name"] for n in json.loads(body)["nodes"]]
        assert "it0 decide" in labels and "relax R0" in labels
        assert not any(label.startswith("CuI ") for label in labels), labels
    finally:
        stop(proc)


def test_no_anonymous_access_one_time_password(db_env, tmp_path):
    _submit(tmp_path)
    proc, url, log = _start_gui(
        tmp_path, {"ACTIVE_MLIP_WEBGUI_USERNAME": "", "ACTIVE_MLIP_WEBGUI_PASSWORD": ""}
    )
    try:
        text = log.read_text()
        found = re.findall(r"log in as (\S+) with the one-time password (\S+)", text)
        assert len(found) == 1, text  # printed once
        user, password = found[0]
        assert len(password) >= 20
        # every URL needs it: pages, FireWorks' static files, its report figures, our jQuery
        for path in (
            "/",
            "/wf/",
            "/static/css/bootstrap.css",
            "/reports/fireworks/hours/12/fig.png",
            "/_active_mlip/jquery-3.7.1.min.js",
        ):
            assert _get(url + path)[0] == 401, path
            assert _get(url + path, user, "wrong")[0] == 401, path
        status, html = _get(url + "/", user, password)
        assert status == 200 and b"[gui-offline] CuI" in html
        status, js = _get(url + "/_active_mlip/jquery-3.7.1.min.js", user, password)
        assert status == 200 and js.startswith(b"/*! jQuery v3.7.1")
        # the Google Fonts import of FireWorks' stylesheet is dropped (offline, private)
        status, css = _get(url + "/static/css/flat-ui.css", user, password)
        assert status == 200 and b"fonts.googleapis" not in css and b"font-family" in css
    finally:
        stop(proc)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5"])
def test_non_loopback_without_credentials_refused_before_announcing(tmp_path, host):
    env = worker_env({"ACTIVE_MLIP_WEBGUI_USERNAME": "", "ACTIVE_MLIP_WEBGUI_PASSWORD": ""})
    out = subprocess.run(
        [active_mlip_exe(), "webgui", "--host", host, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "without authentication" in out.stderr
    assert "web GUI on http" not in out.stdout + out.stderr
    assert "one-time password" not in out.stdout + out.stderr


def test_credentials_rules():
    from active_mlip.app.workers import webgui_credentials

    assert webgui_credentials("0.0.0.0", "ann", "pw") == ("ann", "pw", False)
    user, password, generated = webgui_credentials("127.0.0.1")
    assert generated and user and len(password) >= 20
    assert webgui_credentials("::1")[1] != password  # a fresh one each start
    with pytest.raises(ValueError, match="without authentication"):
        webgui_credentials("10.0.0.1")
    with pytest.raises(ValueError, match="set both"):
        webgui_credentials("127.0.0.1", "ann", None)


def test_submitted_workflow_names(db_env, tmp_path):
    lp, fw_id = _submit(tmp_path)
    wf = lp.workflows.find_one({"nodes": fw_id})
    assert wf["name"] == "[gui-offline] CuI active learning"  # campaign first
    names = [fw["name"] for fw in lp.fireworks.find({"fw_id": {"$in": wf["nodes"]}})]
    assert len(names) == len(wf["nodes"]) >= 20
    for name in names:
        assert name and name.startswith("CuI ") and "store_inputs" not in name, name
        assert not name.startswith("Unnamed"), name


@job
def _add_one(x: int) -> int:
    return x + 1


@job
def _controller(x: int) -> Response:
    from active_mlip.core.replacement import replacement

    nxt = _add_one(x)
    nxt.name = "CuI it1 add"
    return Response(replace=replacement(Flow([nxt], output=nxt.output, name="CuI iteration 2")))


def test_replacing_controller_brings_no_bare_store_inputs():
    """The fireworks a controller's replacement adds are named (FireWorks' own path)."""
    from jobflow.managers.fireworks import flow_to_workflow

    store = JobStore(MemoryStore())
    store.connect()
    ctl = _controller(1)
    ctl.name = "CuI it0 decide"
    response = ctl.run(store)  # what jobflow's JobFiretask does on a worker ...
    wf = flow_to_workflow(response.replace, store)  # ... and how it adds the detour
    assert sorted(fw.name for fw in wf.fws) == ["CuI it0 decide output", "CuI it1 add"]


def test_every_replacing_controller_uses_replacement():
    """jobflow names the job it adds ``store_inputs`` unless the flow is wrapped."""
    sources = sorted((REPO / "workflows").glob("*.py")) + sorted((REPO / "makers").glob("*.py"))
    bare = [
        f"{p.name}: {m.group(0)}"
        for p in sources
        for m in re.finditer(r"return Response\(\s*replace=(?!replacement\()[^\n]*", p.read_text())
    ]
    assert not bare, "wrap the flow with core.replacement.replacement():\n" + "\n".join(bare)
