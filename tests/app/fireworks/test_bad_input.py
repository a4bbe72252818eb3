"""Bad input is refused before anything is submitted, with a message that says why."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from active_mlip.app.cli import app
from active_mlip.app.launchpad import check_launchpad_file, load_launchpad
from active_mlip.app.submit import check_routing
from active_mlip.stores.mongo import DatabaseUnreachableError, InsecureConfigError
from tests.app.fireworks.helpers import free_port, write_worker


def test_unreachable_mongodb_names_host_and_deploy(monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("ACTIVE_MLIP_MONGO_URI", f"mongodb://aml:secret@127.0.0.1:{port}/")
    monkeypatch.delenv("ACTIVE_MLIP_LAUNCHPAD", raising=False)
    with pytest.raises(DatabaseUnreachableError) as err:
        load_launchpad(timeout_ms=300)
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "deploy/compose.yaml" in msg
    assert "secret" not in msg
    out = CliRunner().invoke(app, ["status", "--timeout", "0.3"])
    assert out.exit_code == 2 and f"127.0.0.1:{port}" in out.output


def test_nothing_configured(monkeypatch):
    monkeypatch.delenv("ACTIVE_MLIP_MONGO_URI", raising=False)
    monkeypatch.delenv("ACTIVE_MLIP_LAUNCHPAD", raising=False)
    with pytest.raises(ValueError, match="ACTIVE_MLIP_MONGO_URI"):
        load_launchpad()


@pytest.mark.parametrize(
    "text",
    [
        "host: db.example.org\nusername: aml\npassword: hunter2\nname: fireworks\n",
        "host: mongodb://aml:hunter2@db.example.org/fw\nuri_mode: true\nname: fw\n",
    ],
)
def test_world_readable_launchpad_with_password_is_refused(tmp_path, monkeypatch, text):
    f = tmp_path / "launchpad.yaml"
    f.write_text(text)
    f.chmod(0o644)
    with pytest.raises(InsecureConfigError, match="chmod 600"):
        check_launchpad_file(f)
    monkeypatch.setenv("ACTIVE_MLIP_LAUNCHPAD", str(f))
    out = CliRunner().invoke(app, ["status"])
    assert out.exit_code == 2 and "readable by other users" in out.output
    f.chmod(0o600)
    assert check_launchpad_file(f)["name"] in ("fireworks", "fw")


def test_routing_to_a_category_no_worker_pulls_warns(tmp_path):
    cpu = write_worker(tmp_path / "fworker_cpu.yaml", "c", "cpu")
    gpu = write_worker(tmp_path / "fworker_gpu.yaml", "g", "gpu")
    assert check_routing({"cpu", "gpu"}, [cpu, gpu]) == []
    (warning,) = check_routing({"cpu", "gpu", "a100"}, [cpu, gpu])
    assert "'a100'" in warning and "no worker config pulls it" in warning
    anyone = tmp_path / "fworker_any.yaml"
    anyone.write_text("name: any\ncategory: ''\n")
    assert check_routing({"a100"}, [anyone]) == []


def test_a_material_that_cannot_be_built_leaves_nothing_submitted(db_env, tmp_path):
    """Every workflow is built before the first is added: no half-submitted campaign."""
    from active_mlip.app.launchpad import load_launchpad
    from active_mlip.app.submit import submit_flows
    from tests.app.fireworks.helpers import toy_flow

    def broken():
        raise ValueError("trajectory 'x.extxyz' frame 0 has atoms AgGaSe2 (16 atoms) ...")

    lp = load_launchpad()
    flows = {
        "CuI": (lambda: toy_flow("CuI", str(tmp_path / "labels.log")), "fp"),
        "AgGaSe2": (broken, "fp"),
    }
    with pytest.raises(ValueError, match="AgGaSe2"):
        submit_flows(lp, "half", flows)
    assert lp.workflows.count_documents({"metadata.campaign": "half"}) == 0
    assert lp.fireworks.count_documents({}) == 0
