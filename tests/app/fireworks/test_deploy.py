"""deploy/ and launchers/ files parse, are consistent, and the GUI entry point works."""

from __future__ import annotations

import base64
import importlib.util
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"


def test_compose_file_is_valid_and_safe():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mongo, gui = compose["services"]["mongo"], compose["services"]["webgui"]
    assert mongo["image"] == "mongo:7" and "--auth" in mongo["command"]
    assert "mongo-data" in compose["volumes"]
    assert any(v.startswith("mongo-data:") for v in mongo["volumes"])
    assert "mongosh" in mongo["healthcheck"]["test"] and "ping" in str(mongo["healthcheck"])
    assert gui["depends_on"]["mongo"]["condition"] == "service_healthy"
    for service in (mongo, gui):
        (port,) = service["ports"]
        assert port.startswith("${") and ":-127.0.0.1}" in port  # loopback by default
    # every variable compose reads is in .env.example, and no secret is in compose.yaml
    used = set(re.findall(r"\$\{([A-Z_]+)", (DEPLOY / "compose.yaml").read_text()))
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used <= set(example), used - set(example)
    assert "PASSWORD" in str(mongo["environment"]) and "CHANGE-ME" not in str(compose)


def test_launchers_parse_and_route(tmp_path):
    from fireworks.utilities.fw_serializers import load_object_from_file

    launchers = REPO / "launchers"
    cats = {yaml.safe_load(p.read_text())["category"] for p in launchers.glob("fworker_*.yaml")}
    from active_mlip.workflows.routing import RoutingTable

    assert RoutingTable().categories() <= cats
    gpu = load_object_from_file(str(launchers / "qadapter_gpu.yaml"))
    script = gpu.get_script_str(str(tmp_path))
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --partition=gpu" in script
    assert "active-mlip launch" in script and "fworker_gpu.yaml" in script
    cpu = load_object_from_file(str(launchers / "qadapter_cpu.yaml")).get_script_str("x")
    assert "--gres" not in cpu and "fworker_cpu.yaml" in cpu and "None" not in cpu


def test_webgui_wsgi_requires_auth(db_env, monkeypatch):
    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.app.submit import submit_flows
    from tests.app.fireworks.helpers import toy_flow

    submit_flows(load_launchpad(), "wsgi", {"CuI": (toy_flow("CuI", "/dev/null"), "fp")})
    monkeypatch.setenv("ACTIVE_MLIP_WEBGUI_USERNAME", "ann")
    monkeypatch.setenv("ACTIVE_MLIP_WEBGUI_PASSWORD", "pw")
    spec = importlib.util.spec_from_file_location("deploy_wsgi", DEPLOY / "webgui" / "wsgi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = module.app.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/static/css/bootstrap.css").status_code == 401  # every URL
    auth = {"Authorization": "Basic " + base64.b64encode(b"ann:pw").decode()}
    page = client.get("/", headers=auth)
    assert page.status_code == 200 and "[wsgi] CuI active learning" in page.text
    # the workflow page loads the local jQuery (offline), which is served
    fw_id = load_launchpad().get_fw_ids()[0]
    wf = client.get(f"/wf/{fw_id}", headers=auth).text
    assert "code.jquery.com" not in wf and 'src="/_active_mlip/jquery-3.7.1.min.js"' in wf
    js = client.get("/_active_mlip/jquery-3.7.1.min.js", headers=auth)
    assert js.status_code == 200 and js.data.startswith(b"/*! jQuery v3.7.1")


def test_webgui_image_fetches_the_packaged_jquery():
    """The image downloads jQuery by hash: the same file as the package's copy."""
    import hashlib

    packaged = REPO / "active_mlip" / "app" / "webgui_static" / "jquery-3.7.1.min.js"
    digest = hashlib.sha256(packaged.read_bytes()).hexdigest()
    dockerfile = (DEPLOY / "webgui" / "Dockerfile").read_text()
    assert digest in dockerfile and "jquery-3.7.1.min.js" in dockerfile
    assert "(MIT License)" in (packaged.parent / "LICENSE-jquery.txt").read_text()
