"""atomate2's static Makers, each checking its machine before the single point runs.

Each ``make`` first runs the checks of :mod:`active_mlip.makers.dft_environment` on the
worker that executes the job (where the DFT code must be), then atomate2's own job:
a missing executable fails the job with :class:`DFTSetupError` naming it, before any
input is written, instead of a shell's "command not found" buried in a log and an
unparsable output. FHI-aims also gets its species defaults resolved to an absolute
directory here (from ``AIMS_SPECIES_DIR`` on that worker) and checked for every
element of the structure.

Importing this module imports atomate2's VASP and CP2K jobs; the FHI-aims Maker needs
``pymatgen-io-aims`` (``pip install active-mlip[aims]``) and is defined only with it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomate2.cp2k.jobs.base import cp2k_job
from atomate2.cp2k.jobs.core import StaticMaker as _Cp2kStaticMaker
from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import StaticMaker as _VaspStaticMaker
from jobflow import job
from pymatgen.core import Structure

from active_mlip.makers.dft_environment import (
    DFTSetupError,
    aims_species_dir,
    check_executable,
)

__all__ = ["Cp2kStaticMaker", "DFTSetupError", "VaspStaticMaker", "aims_static_maker_class"]


@dataclass
class VaspStaticMaker(_VaspStaticMaker):
    """atomate2's VASP ``StaticMaker``; checks the VASP executable first."""

    @vasp_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Any:
        """Check the executable, then run atomate2's VASP static job."""
        check_executable("vasp", {"run_vasp_kwargs": self.run_vasp_kwargs})
        return _VaspStaticMaker.make.original(self, structure, prev_dir)


@dataclass
class Cp2kStaticMaker(_Cp2kStaticMaker):
    """atomate2's CP2K ``StaticMaker``; checks the CP2K executable first."""

    @cp2k_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Any:
        """Check the executable, then run atomate2's CP2K static job."""
        check_executable("cp2k", {"run_cp2k_kwargs": self.run_cp2k_kwargs})
        return _Cp2kStaticMaker.make.original(self, structure, prev_dir)


try:
    from atomate2.aims.jobs.core import StaticMaker as _AimsStaticMaker
except ImportError:  # pymatgen-io-aims is an optional extra
    _AimsStaticMaker = None
else:

    @dataclass
    class AimsStaticMaker(_AimsStaticMaker):
        """atomate2's FHI-aims ``StaticMaker``; checks the executable and the species
        defaults first, and writes the species directory as an absolute path."""

        @job
        def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Any:
            """Check the machine, resolve the species defaults, run the static job."""
            check_executable("aims", {"run_aims_kwargs": self.run_aims_kwargs})
            generator = copy.deepcopy(self.input_set_generator)
            params = generator.user_params
            elements = [el.symbol for el in structure.composition.elements]
            species = params.get("species_dir")
            if not isinstance(species, dict):  # a per-species map is pymatgen's to resolve
                # pymatgen-io-aims skips a species file it cannot find without a word;
                # resolving and checking here turns that into an error naming the path.
                params["species_dir"] = str(aims_species_dir(species, elements))
            checked = dataclasses.replace(self, input_set_generator=generator)
            return _AimsStaticMaker.make.original(checked, structure, prev_dir)


def aims_static_maker_class() -> type:
    """The FHI-aims ``StaticMaker`` (raises ``ImportError`` without pymatgen-io-aims)."""
    if _AimsStaticMaker is None:
        raise ImportError(
            "the FHI-aims backend needs pymatgen-io-aims: pip install 'active-mlip[aims]' "
            "(or pip install pymatgen-io-aims)"
        )
    return AimsStaticMaker
