"""Is the machine set up for a DFT code? Clear errors before a single point starts.

The checks run where the DFT runs: inside each atomate2 static job (see
:mod:`active_mlip.makers.dft_makers`), on the worker that executes it. On a cluster the
executable and the FHI-aims species defaults exist on the compute nodes, not
necessarily where the workflow is built or submitted, so nothing here is checked at
submit time. :meth:`~active_mlip.makers.labelling.Atomate2Labeller.check_environment`
runs the same checks on demand (e.g. on a compute node before a campaign).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
from pathlib import Path
from typing import Any

#: The environment variable naming FHI-aims' ``species_defaults`` directory. FHI-aims'
#: own tools and ASE read it; pymatgen-io-aims reads the same key from ~/.pmgrc.yaml.
AIMS_SPECIES_ENV = "AIMS_SPECIES_DIR"

#: Per code: atomate2 setting holding the command, the ``StaticMaker`` field and key
#: that override it, a pattern for the code's own executable inside a longer command
#: line (after ``mpirun -n 4`` or ``srun``) and how to get the code.
_CODES: dict[str, dict[str, str]] = {
    "vasp": {
        "name": "VASP",
        "setting": "VASP_CMD",
        "run_kwargs": "run_vasp_kwargs",
        "cmd_key": "vasp_cmd",
        "pattern": r"vasp",
        "install": "VASP is licensed software (https://www.vasp.at); build it or load its "
        "module (e.g. `module load vasp`)",
    },
    "cp2k": {
        "name": "CP2K",
        "setting": "CP2K_CMD",
        "run_kwargs": "run_cp2k_kwargs",
        "cmd_key": "cp2k_cmd",
        "pattern": r"cp2k",
        "install": "install CP2K (Debian/Ubuntu: `apt-get install cp2k`; conda: "
        "`conda install -c conda-forge cp2k`) or load its module",
    },
    "aims": {
        "name": "FHI-aims",
        "setting": "AIMS_CMD",
        "run_kwargs": "run_aims_kwargs",
        "cmd_key": "aims_cmd",
        "pattern": r"aims",
        "install": "FHI-aims is licensed software (https://fhi-aims.org); build aims.x "
        "or load its module",
    },
}

#: Shell tokens that end the command proper (redirections, pipes, separators).
_END_TOKENS = re.compile(r"^(\d*>>?|&>|<|\||;|&&|\|\|)")


class DFTSetupError(RuntimeError):
    """The machine is not set up to run the DFT code (executable or data missing)."""


def dft_command(code: str, maker_kwargs: dict[str, Any] | None = None) -> tuple[str, str]:
    """The command atomate2 will run for ``code``, and where it came from.

    ``maker_kwargs`` (the labeller's ``StaticMaker`` fields) may override atomate2's
    setting through ``run_<code>_kwargs``.
    """
    info = _code_info(code)
    run_kwargs = (maker_kwargs or {}).get(info["run_kwargs"]) or {}
    if run_kwargs.get(info["cmd_key"]):
        origin = f"maker_kwargs['{info['run_kwargs']}']['{info['cmd_key']}']"
        return str(run_kwargs[info["cmd_key"]]), origin
    from atomate2 import SETTINGS  # atomate2 settings: env ATOMATE2_<X> or ~/.atomate2.yaml

    return str(getattr(SETTINGS, info["setting"])), f"atomate2's {info['setting']}"


def command_executables(code: str, command: str) -> list[str]:
    """Programs in ``command`` that must be found: its first word (the code or a
    launcher such as ``mpirun``/``srun``) and any later word naming the code itself."""
    info = _code_info(code)
    try:
        words = shlex.split(os.path.expandvars(command))
    except ValueError as exc:
        raise DFTSetupError(f"cannot parse the {info['name']} command {command!r}: {exc}") from exc
    kept: list[str] = []
    for w in words:
        if _END_TOKENS.match(w):
            break
        kept.append(w)
    if not kept:
        raise DFTSetupError(f"the {info['name']} command is empty ({command!r})")
    found = [kept[0]]
    for w in kept[1:]:
        if not w.startswith("-") and re.search(info["pattern"], Path(w).name, re.IGNORECASE):
            found.append(w)
    return list(dict.fromkeys(found))


def check_executable(code: str, maker_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Check that the programs of ``code``'s command are on ``PATH`` (or exist).

    Returns
    -------
    list of str
        The full paths found.

    Raises
    ------
    DFTSetupError
        Naming the missing executable, the command it came from, how to install the
        code and how to point atomate2 at it.
    """
    info = _code_info(code)
    command, origin = dft_command(code, maker_kwargs)
    paths = []
    for exe in command_executables(code, command):
        path = shutil.which(exe)
        if path is None:
            raise DFTSetupError(
                f"{info['name']} executable {exe!r} not found on PATH on host "
                f"{socket.gethostname()!r} (command {command!r}, from {origin}). "
                f"{info['install'][0].upper()}{info['install'][1:]}; then put it on PATH, "
                f"or set the command: environment variable ATOMATE2_{info['setting']} "
                f"(or {info['setting']} in ~/.atomate2.yaml), or "
                f"Atomate2Labeller(maker_kwargs={{'{info['run_kwargs']}': "
                f"{{'{info['cmd_key']}': '/path/to/{Path(exe).name} ...'}}}})."
            )
        paths.append(path)
    return paths


def aims_species_root() -> Path:
    """FHI-aims' ``species_defaults`` directory: ``$AIMS_SPECIES_DIR``, else
    ``AIMS_SPECIES_DIR`` in pymatgen's settings (~/.pmgrc.yaml).

    Raises
    ------
    DFTSetupError
        If neither is set, or the directory does not exist.
    """
    value = os.environ.get(AIMS_SPECIES_ENV)
    origin = f"environment variable {AIMS_SPECIES_ENV}"
    if not value:
        from pymatgen.core import SETTINGS

        value = SETTINGS.get(AIMS_SPECIES_ENV)
        origin = f"{AIMS_SPECIES_ENV} in pymatgen's settings (~/.pmgrc.yaml)"
    if not value:
        raise DFTSetupError(
            f"FHI-aims species defaults not configured: set the environment variable "
            f"{AIMS_SPECIES_ENV} to the species_defaults directory of your FHI-aims "
            "installation (the one holding defaults_2020/light, defaults_2020/tight), or "
            "give an absolute path in input_set_kwargs['user_params']['species_dir']"
        )
    root = Path(os.path.expanduser(os.path.expandvars(value)))
    if not root.is_dir():
        raise DFTSetupError(
            f"FHI-aims species defaults directory {str(root)!r} (from {origin}) does not "
            f"exist on host {socket.gethostname()!r}; point {AIMS_SPECIES_ENV} at the "
            "species_defaults directory of your FHI-aims installation"
        )
    return root


def aims_species_dir(species_dir: str | None, elements: list[str]) -> Path:
    """The directory of one family of FHI-aims species defaults, checked for ``elements``.

    Parameters
    ----------
    species_dir
        ``None``: :func:`aims_species_root` itself is the family (ASE's convention,
        ``AIMS_SPECIES_DIR=.../defaults_2020/light``). An absolute path: that family.
        A family name (``"light"``, ``"tight"``): looked up under
        :func:`aims_species_root` and its ``defaults_2020`` folder (pymatgen-io-aims'
        convention), or :func:`aims_species_root` itself if it carries that name.
    elements
        Element symbols whose species files (``14_Si_default``) must be there.

    Returns
    -------
    Path
        The family directory, absolute.

    Raises
    ------
    DFTSetupError
        Naming the variable and the path, if the family or an element's file is missing.
    """
    from ase.data import atomic_numbers

    path = (
        None if species_dir is None else Path(os.path.expanduser(os.path.expandvars(species_dir)))
    )
    if path is not None and path.is_absolute():
        candidates = [path]
        where = f"species_dir {species_dir!r}"
    else:
        root = aims_species_root()
        where = f"{AIMS_SPECIES_ENV}={str(root)!r}"
        if species_dir is None:
            candidates = [root]
        else:
            candidates = [root / species_dir, root / "defaults_2020" / species_dir]
            if root.name == species_dir:
                candidates.insert(0, root)
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise DFTSetupError(
            f"FHI-aims species defaults {species_dir!r} not found: looked for "
            f"{' and '.join(repr(str(c)) for c in candidates)} ({where}). Point "
            f"{AIMS_SPECIES_ENV} at the species_defaults directory of your FHI-aims "
            "installation (the one holding defaults_2020/)"
        )
    missing = []
    for el in dict.fromkeys(elements):
        stem = found / f"{atomic_numbers[el]:02d}_{el}_default"
        if not (stem.is_file() or Path(f"{stem}.gz").is_file()):
            missing.append(stem.name)
    if missing:
        raise DFTSetupError(
            f"FHI-aims species defaults {str(found)!r} ({where}) lack the file(s) "
            f"{', '.join(missing)}"
        )
    return found.resolve()


def _code_info(code: str) -> dict[str, str]:
    if code not in _CODES:
        raise ValueError(f"unknown DFT code {code!r}; expected {', '.join(_CODES)}")
    return _CODES[code]
