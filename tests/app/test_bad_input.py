"""Bad input: every row of docs/bad-input.md that is not tested elsewhere.

Each error names the input and the fix, comes before any work starts, and changes
nothing stored: ``active-mlip run`` exits with code 2 and leaves the work directory as
it was (absent, or byte-identical for an existing run).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from pydantic import ValidationError
from typer.testing import CliRunner

from active_mlip.app.cli import app
from active_mlip.app.local import run_local
from active_mlip.core.blobs import CorruptArtifactError, write_manifest
from active_mlip.core.environment import MONGO_URI_ENV, STORE_FILE_ENV
from active_mlip.workflows.campaign import CampaignError, load_campaign
from active_mlip.workflows.settings import ActiveLearningSettings

LATTICE = 'Lattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"'
STRUCTURES = {
    "empty.extxyz": "",
    "no_atoms.extxyz": f"0\n{LATTICE}\n",
    "junk.cif": "this is not a CIF\n",
    "molecule.xyz": "2\n\nCu 0 0 0\nI 0 0 2.6\n",
    "overlap.extxyz": f"2\n{LATTICE}\nCu 0 0 0\nI 0 0 0.1\n",
    "unknown.extxyz": f"2\n{LATTICE}\nXx 0 0 0\nI 0 0 2.5\n",
    "oganesson.extxyz": f"2\n{LATTICE}\nOg 0 0 0\nI 0 0 2.5\n",
}


@pytest.fixture(autouse=True)
def _no_database(monkeypatch):
    monkeypatch.delenv(MONGO_URI_ENV, raising=False)
    monkeypatch.delenv(STORE_FILE_ENV, raising=False)
    monkeypatch.delenv("ACTIVE_MLIP_LAUNCHPAD", raising=False)


LE1, GE1 = "less than or equal to 1", "greater than or equal to 1"
EXTRA = "Extra inputs are not permitted"


def snapshot(directory: Path) -> dict[str, bytes] | None:
    """Every file under ``directory`` with its bytes (None when it does not exist)."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}  # fmt: skip


def run_cli(args: list[str], workdir: Path, env: dict | None = None):
    out = CliRunner().invoke(app, ["run", *args, "--workdir", str(workdir)], env=env)
    assert not isinstance(out.exception, Exception) or isinstance(out.exception, SystemExit), (
        out.exception
    )
    return out


def one_line(text: str) -> str:
    return " ".join(text.split())  # rich wraps long messages


# ---------------------------------------------------------------------------------------
# Structures given to `active-mlip run FILE`
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("missing.cif", ["missing.cif' does not exist"]),
        ("a_directory.cif", ["is a directory; give a file"]),
        ("empty.extxyz", ["could not read a structure", "Empty file", "Give a CIF"]),
        ("no_atoms.extxyz", ["no_atoms.extxyz' is empty (no atoms)", "Give a CIF"]),
        ("junk.cif", ["could not read a structure from", "junk.cif", "Give a CIF"]),
        ("molecule.xyz", ["molecule.xyz' is not periodic", "periodic cell"]),
        ("overlap.extxyz", ["atoms 0 and 1 overlap (0.100 A apart)", "check the positions"]),
        ("unknown.extxyz", ["unknown element 'Xx'", "element symbols"]),
        ("oganesson.extxyz", ["['Og']", "labeller 'chgnet' cannot handle"]),
        ("CuII", ["unknown material 'CuII'", "did you mean CuI"]),
    ],
)
def test_bad_structure_exits_2_and_creates_nothing(tmp_path, name, words):
    for fname, text in STRUCTURES.items():
        (tmp_path / fname).write_text(text)
    (tmp_path / "a_directory.cif").mkdir()
    source = name if name == "CuII" else str(tmp_path / name)
    out = run_cli([source, "--preset", "tiny"], tmp_path / "run")
    assert out.exit_code == 2, out.output
    msg = one_line(out.output)
    assert msg.startswith("error:")
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# Settings from the command line
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--temperatures", "-5"], ["loop.temperatures", "must be > 0 K", "[-5.0]"]),
        (["--temperatures", "300,0"], ["loop.temperatures", "must be > 0 K", "[0.0]"]),
        (["--temperatures", "nan"], ["loop.temperatures.0", "finite number", "(got nan)"]),
        (["--temperatures", "inf"], ["loop.temperatures.0", "finite number", "(got inf)"]),
        (["--temperatures", "hot"], ["--temperatures must be comma-separated numbers", "'hot'"]),
        (["--temperatures", ","], ["temperatures must name at least one temperature"]),
        (["--max-iterations", "0"], ["loop.max_iterations", GE1]),
        (["--max-iterations", "x"], ["Invalid value for '--max-iterations'"]),
        (["--preset", "huge"], ["unknown preset 'huge'; choose one of tiny, quick, paper"]),
        (["--colour", "red"], ["No such option: --colour"]),
    ],
)
def test_bad_option_exits_2_and_creates_nothing(tmp_path, options, words):
    out = run_cli(["CuI", *options], tmp_path / "run")
    assert out.exit_code == 2, out.output
    msg = one_line(out.output)
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [(["frobnicate"], ["no such command 'frobnicate'"]), (["run"], ["missing", "material"])],
)
def test_unknown_command_and_missing_argument(args, words):
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert all(w in one_line(out.output).lower() for w in words), out.output


# ---------------------------------------------------------------------------------------
# An existing run is never touched by bad input
# ---------------------------------------------------------------------------------------
@pytest.fixture
def existing_run(tmp_path) -> Path:
    wd = tmp_path / "CuI"
    (wd / "store").mkdir(parents=True)
    (wd / "run.json").write_text(json.dumps({"material": "CuI", "fingerprint": "0" * 64}))
    (wd / "store" / "active_mlip_jobs.sqlite").write_bytes(b"\x00jobs" * 50)
    (wd / "dataset.extxyz").write_text("labelled frames\n")
    return wd


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--temperatures", "-5"], "must be > 0 K"),
        (["--temperatures", "-5", "--restart"], "must be > 0 K"),
        (["--preset", "tiny"], "holds a run with different settings"),
        (["--preset", "huge", "--restart"], "unknown preset"),
    ],
)
def test_existing_run_is_byte_identical_after_bad_input(existing_run, options, words):
    before = snapshot(existing_run)
    out = run_cli(["CuI", *options], existing_run)
    assert out.exit_code == 2 and words in one_line(out.output), out.output
    assert snapshot(existing_run) == before


def test_bad_structure_with_restart_keeps_the_existing_run(existing_run, tmp_path):
    (tmp_path / "junk.cif").write_text("not a CIF")
    before = snapshot(existing_run)
    out = run_cli([str(tmp_path / "junk.cif"), "--restart"], existing_run)
    assert out.exit_code == 2 and "junk.cif" in out.output
    assert snapshot(existing_run) == before


# ---------------------------------------------------------------------------------------
# Store / launchpad YAML (credentials files)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ("mongo_uri: [\n", 0o600, "is not valid YAML"),
        ("- a list\n", 0o600, "is not a mapping"),
        ("mongo_uri: mongodb://u:secret@db.example.org/\n", 0o644, "chmod 600"),
    ],
)
def test_bad_store_file_stops_run_before_anything_is_written(tmp_path, text, mode, words):
    f = tmp_path / "store.yaml"
    f.write_text(text)
    f.chmod(mode)
    out = run_cli(["CuI", "--preset", "tiny"], tmp_path / "run", env={STORE_FILE_ENV: str(f)})
    assert out.exit_code == 2 and words in one_line(out.output), out.output
    assert "secret" not in out.output
    assert not (tmp_path / "run").exists()


def test_bad_store_file_with_restart_keeps_the_existing_run(existing_run, tmp_path):
    f = tmp_path / "store.yaml"
    f.write_text("mongo_uri: [\n")
    f.chmod(0o600)
    before = snapshot(existing_run)
    out = run_cli(["CuI", "--preset", "tiny", "--restart"], existing_run, {STORE_FILE_ENV: str(f)})
    assert out.exit_code == 2
    assert snapshot(existing_run) == before


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, "launchpad file '{path}' does not exist"),
        ("host: [\n", "launchpad file {path} is not valid YAML"),
        ("- a list\n", "launchpad file {path} is not a mapping"),
        ("hots: localhost\nname: fw\n", "lacks the key 'host'"),
    ],
)
def test_bad_launchpad_file(tmp_path, text, words):
    path = tmp_path / "launchpad.yaml"
    if text is not None:
        path.write_text(text)
        path.chmod(0o600)
    out = CliRunner().invoke(
        app, ["status", "--timeout", "0.2"], env={"ACTIVE_MLIP_LAUNCHPAD": str(path)}
    )
    assert out.exit_code == 2, (out.output, out.exception)
    assert words.format(path=path) in one_line(out.output), out.output


# ---------------------------------------------------------------------------------------
# Settings objects (campaign files and Python callers build them too)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "values", "where", "words"),
    [
        ("loop", {"temperatures": []}, "loop.temperatures", "at least one temperature"),
        ("loop", {"temperatures": [300, -1]}, "loop.temperatures", "> 0 K"),
        ("loop", {"temperatures": [math.inf]}, "loop.temperatures.0", "finite"),
        ("loop", {"n_initial": 1}, "loop.n_initial", "greater than or equal to 2"),
        ("loop", {"n_test": 0}, "loop.n_test", "greater than or equal to 2"),
        ("loop", {"n_new": 0}, "loop.n_new", GE1),
        ("loop", {"max_iterations": 0}, "loop.max_iterations", GE1),
        ("loop", {"max_labels": 0}, "loop.max_labels", GE1),
        ("loop", {"supercell": (2, 0, 2)}, "loop.supercell", "3 positive integers"),
        ("loop", {"force_mae_rtol": 0}, "loop.force_mae_rtol", "greater than 0"),
        ("loop", {"force_mae_rtol": math.nan}, "loop.force_mae_rtol", "finite"),
        ("loop", {"uncertainty_rtol": 0}, "loop.uncertainty_rtol", "greater than 0"),
        ("loop", {"converge_window": 1}, "loop.converge_window", "greater than or equal to 2"),
        ("loop", {"acceptance_threshold": 0.05}, "loop", "acceptance_threshold is retired"),
        (
            "loop",
            {"temperatures": [300, 600, 300.0]},
            "loop.temperatures",
            "lists 300 K more than once",
        ),
        ("loop", {"trajectory_split": "random"}, "loop.trajectory_split", "'shuffle' or 'time'"),
        ("loop", {"e0s": {"Cu": math.nan, "I": 0.0}}, "loop.e0s", "finite"),
        ("loop", {"initial": "trajectory"}, "loop", "needs loop.trajectory"),
        ("loop", {"n_tset": 3}, "loop.n_tset", EXTRA),
        ("training", {"n_sub": 1, "n_seed": 1}, "training", "at least 2 members"),
        ("training", {"n_sub": 0}, "training.n_sub", "must be >= 1"),
        ("training", {"valid_fraction": 1.0}, "training.valid_fraction", "strictly between"),
        ("training", {"max_num_epochs": 0}, "training.max_num_epochs", "must be >= 1"),
        ("training", {"lr": -0.01}, "training.lr", "positive number"),
        ("training", {"r_max": math.inf}, "training.r_max", "finite"),
        ("training", {"forces_weight": -1}, "training.forces_weight", "must be >= 0"),
        ("training", {"ema_decay": 1.0}, "training.ema_decay", "strictly between 0 and 1"),
        ("training", {"epochs": 3}, "training.epochs", EXTRA),
        ("exploration", {"timestep_fs": 0}, "exploration.timestep_fs", "greater than 0"),
        ("exploration", {"timestep_fs": 50}, "exploration.timestep_fs", "less than or equal to 10"),
        ("exploration", {"timestep_fs": math.nan}, "exploration.timestep_fs", "finite"),
        ("exploration", {"max_steps": 0}, "exploration", "max_steps must be an integer >= 1"),
        ("exploration", {"budget_ps": 0}, "exploration.budget_ps", "greater than 0"),
        ("exploration", {"equilibration_ps": -1}, "exploration.equilibration_ps", "greater than"),
        (
            "exploration",
            {"equilibration_ps": 1.0, "budget_ps": 1.1},
            "exploration",
            "equilibration_ps (1) + thermal_window_ps (0.2) = 1.2 ps must be shorter than the "
            "MD budget budget_ps (1.1 ps)",
        ),
        (
            "exploration",
            {"thermal_window_ps": 0.02},
            "exploration",
            "thermal_window_ps (0.02 ps) holds fewer than 2 frames",
        ),
        ("exploration", {"loginterval": 0}, "exploration.loginterval", GE1),
        ("exploration", {"friction": math.inf}, "exploration.friction", "finite"),
        (
            "exploration",
            {"min_distance_fraction": 1},
            "exploration.min_distance_fraction",
            "less than 1",
        ),
        ("exploration", {"timestep": 1.0}, "exploration.timestep", EXTRA),
        ("selection", {"decay_to": 0}, "selection.decay_to", "greater than 0"),
        ("selection", {"decay_to": 1.2}, "selection.decay_to", LE1),
        ("selection", {"knee": math.inf}, "selection.knee", "finite"),
        ("selection", {"shift": math.nan}, "selection.shift", "finite"),
        ("selection", {"grad": 0}, "selection.grad", "greater than 0"),
        ("selection", {"knee": 2.0}, "selection", "decay_at (1.8) must be larger than knee (2.0)"),
        ("selection", {"decay_too": 0.3}, "selection.decay_too", EXTRA),
        ("labeller", {"kind": "vasp2"}, "labeller", "does not match any of the expected tags"),
    ],
)
def test_bad_setting_names_its_field(section, values, where, words):
    with pytest.raises(ValidationError) as err:
        ActiveLearningSettings.from_preset("tiny", **{section: values})
    places = {".".join(str(p) for p in e["loc"]) for e in err.value.errors()}
    assert any(p == where or p.startswith(where + ".") for p in places), places
    assert words in str(err.value)


def test_unknown_settings_section():
    with pytest.raises(ValueError, match="unknown settings section 'looop'"):
        ActiveLearningSettings.from_preset("tiny", looop={})


# ---------------------------------------------------------------------------------------
# aiMD trajectories (loop.trajectory): refused before any job, nothing created
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cu(tmp_path_factory):
    """A Cu CIF and 30 EMT-labelled rattled frames of its 2x1x1 supercell."""
    d = tmp_path_factory.mktemp("cu")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    write(d / "Cu.cif", atoms)
    images = []
    for k in range(30):
        a = atoms.repeat((2, 1, 1))
        a.rattle(0.05, seed=k)
        a.calc = EMT()
        a.get_forces()
        images.append(a)
    write(d / "aimd.extxyz", images)
    return d


def _traj_settings(traj) -> ActiveLearningSettings:
    return ActiveLearningSettings.from_preset(
        "tiny",
        labeller={"kind": "ase", "calculator": "ase.calculators.emt.EMT"},
        loop={"initial": "trajectory", "trajectory": str(traj), "supercell": (2, 1, 1),
              "n_initial": 16, "n_test": 8, "e0s": {"Cu": 0.0}},
    )  # fmt: skip


def test_trajectory_rows(cu, tmp_path):
    cif = cu / "Cu.cif"
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="trajectory file '.*nope.extxyz' does not exist"):
        run_local(str(cif), run, _traj_settings(tmp_path / "nope.extxyz"))
    junk = tmp_path / "junk.traj"
    junk.write_bytes(b"\x00\x01 not a trajectory")
    with pytest.raises(ValueError, match="could not read a trajectory from '.*junk.traj'"):
        run_local(str(cif), run, _traj_settings(junk))
    bare = tmp_path / "bare.extxyz"
    write(bare, [bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))] * 30)
    with pytest.raises(ValueError, match="frame 0 has no energy: an aiMD trajectory must carry"):
        run_local(str(cif), run, _traj_settings(bare))
    # a trajectory with a SHA256SUMS beside it that no longer matches
    copy = tmp_path / "aimd.extxyz"
    copy.write_bytes((cu / "aimd.extxyz").read_bytes())
    write_manifest(tmp_path, [copy])
    text = copy.read_text().replace("Cu ", "Cu  ", 1)  # one byte more: a changed file
    copy.write_text(text)
    with pytest.raises(CorruptArtifactError, match="aimd.extxyz' is corrupted"):
        run_local(str(cif), run, _traj_settings(copy))
    assert not run.exists()


# ---------------------------------------------------------------------------------------
# Campaign files (more in tests/app/fireworks/test_campaign.py)
# ---------------------------------------------------------------------------------------
def _campaign(tmp_path, text: str) -> Path:
    f = tmp_path / "campaign.yaml"
    f.write_text(textwrap.dedent(text).lstrip())
    return f


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: x\nmaterials: [CuI, CuI]\n", ["campaign.yaml:2:", "named more than once: CuI"]),
        ("name: x\nmaterials: [CuI, {name: CuI}]\n", ["campaign.yaml:2:", "more than once: CuI"]),
        ("name: x\nmaterials: []\n", ["campaign.yaml:2:", "at least 1 item"]),
        ("name: x\nmaterials: [CuI\n", ["not valid YAML"]),
        ("- CuI\n", ["campaign.yaml:1: a campaign file is a mapping"]),
        ("", ["campaign.yaml:1: a campaign file is a mapping"]),
        ("name: 'a b'\nmaterials: [CuI]\n", ["campaign.yaml:1: name:", "should match pattern"]),
        ("name: x\nmaterials: [CuI]\nsettings:\n  selection: {decay_too: 0.3}\n",
         ["campaign.yaml:4:", "unknown key 'decay_too'", "did you mean 'decay_to'"]),
        ("name: x\nmaterials: [CuI]\nsettings:\n  looop: {n_new: 3}\n",
         ["campaign.yaml:3:", "unknown settings section 'looop'; did you mean 'loop'"]),
        ("name: x\nmaterials: [CuI]\nlabeller: {kind: vasp2}\n", ["campaign.yaml:3: labeller"]),
    ],
)  # fmt: skip
def test_bad_campaign_file(tmp_path, text, words):
    f = _campaign(tmp_path, text)
    with pytest.raises(CampaignError) as err:
        load_campaign(f)
    for w in words:
        assert w in str(err.value), str(err.value)
    # the CLI stops at the file, before it looks for a database
    out = CliRunner().invoke(app, ["submit", str(f)])
    assert out.exit_code == 2 and "campaign.yaml" in out.output
    assert "ACTIVE_MLIP_MONGO_URI" not in out.output


def test_missing_campaign_file(tmp_path):
    with pytest.raises(CampaignError, match="campaign file '.*nope.yaml' does not exist"):
        load_campaign(tmp_path / "nope.yaml")


def test_binary_campaign_file(tmp_path):
    f = tmp_path / "campaign.yaml"
    f.write_bytes(bytes(range(256)))
    with pytest.raises(CampaignError, match="campaign.yaml"):
        load_campaign(f)


def test_missing_worker_file_for_submit(tmp_path):
    f = _campaign(tmp_path, "name: x\nmaterials: [CuI]\npreset: tiny\n")
    out = CliRunner().invoke(app, ["submit", str(f), "--worker", str(tmp_path / "w.yaml")])
    assert out.exit_code == 2, (out.output, out.exception)
    assert "w.yaml'" in out.output and "do not exist" in one_line(out.output)


def test_bad_mace_launch_setting_stops_run_before_anything_is_written(tmp_path):
    out = run_cli(
        ["CuI", "--preset", "tiny"], tmp_path / "run", env={"ACTIVE_MLIP_MACE_LAUNCH": "spawn"}
    )
    assert out.exit_code == 2, out.output
    assert "ACTIVE_MLIP_MACE_LAUNCH='spawn': expected 'forkserver' or 'subprocess'" in one_line(
        out.output
    )
    assert not (tmp_path / "run").exists()
