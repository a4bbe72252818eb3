"""CP2K for the tests that run it: the availability check, pymatgen's data and a light input.

Needs ``cp2k.psmp`` (Debian: ``apt-get install -y cp2k``, which brings the MOLOPT basis
sets and GTH potentials in /usr/share/cp2k). Missing, a test skips on a developer's
machine and fails under CI (:func:`tests.external.unavailable`).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.external import unavailable

CP2K_SHARE = Path("/usr/share/cp2k")

#: The environment pymatgen's CP2K sets read (``data_dir`` filled in by :func:`cp2k_env`).
PMG_ENV = ("PMG_CP2K_DATA_DIR", "PMG_DEFAULT_CP2K_FUNCTIONAL")


def require_cp2k() -> None:
    """Skip (developer machine) or fail (CI) unless CP2K and its data are installed."""
    from atomate2 import SETTINGS

    cmd = shlex.split(SETTINGS.CP2K_CMD)[0]
    if shutil.which(cmd) is None:
        unavailable("CP2K", f"binary {cmd!r} not on PATH (apt-get install -y cp2k)")
    if not (CP2K_SHARE / "BASIS_MOLOPT").is_file():
        unavailable("CP2K data", "cp2k-data: /usr/share/cp2k/BASIS_MOLOPT not installed")


def pymatgen_cp2k_data(workdir: Path) -> Path:
    """pymatgen's per-element YAML data built from the two files the tests use (~3 s;
    ``pmg config --cp2k`` over all of /usr/share/cp2k takes ~35 s)."""
    src = workdir / "cp2k_src"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("BASIS_MOLOPT", "GTH_POTENTIALS"):
        if not (src / name).exists():
            (src / name).symlink_to(CP2K_SHARE / name)
    out = workdir / "cp2k_yaml" / "data"  # pmg creates the last folder itself
    out.parent.mkdir(parents=True, exist_ok=True)
    pmg = Path(sys.executable).parent / "pmg"  # the venv's pmg
    pmg_cmd = str(pmg) if pmg.exists() else (shutil.which("pmg") or "pmg")
    proc = subprocess.run(
        [pmg_cmd, "config", "--cp2k", str(src), str(out)], capture_output=True, text=True
    )
    assert (out / "Cu").is_file(), proc.stdout + proc.stderr
    return out


def cp2k_environment(data_dir: Path) -> dict[str, str]:
    """Variables for pymatgen's CP2K sets (pymatgen reads them at import, so a test sets
    both ``os.environ`` and ``pymatgen.core.SETTINGS``)."""
    return {"PMG_CP2K_DATA_DIR": str(data_dir), "PMG_DEFAULT_CP2K_FUNCTIONAL": "PBE"}


def light_cp2k(
    elements: list[str],
    cutoff: float = 150,
    rel_cutoff: float = 30,
    eps_default: float = 1e-8,
    eps_scf: float = 1e-6,
) -> dict:
    """A CP2K input light enough for CI (Γ point, DZVP-MOLOPT-SR, low cutoff).

    atomate2 0.1.5's parser needs UKS (it fails on RKS outputs), so the default
    ``spin_polarized=True`` stays; diagonalisation (not OT) converges the lone atoms
    and the frames alike.
    """
    basis: dict[str, Any] = {
        el: {"basis": "DZVP-MOLOPT-SR-GTH", "potential": "GTH-PBE", "aux_basis": None}
        for el in elements
    }
    return {
        "user_input_settings": {
            "basis_and_potential": basis,
            "cutoff": cutoff,
            "rel_cutoff": rel_cutoff,
            "eps_scf": eps_scf,
            "eps_default": eps_default,
            "eps_pgf_orb": None,
            "ot": False,
            "alpha": 0.3,
        },
        "user_kpoints_settings": None,  # Γ point
    }
