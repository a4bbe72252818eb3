"""Reference energies (E0s) from isolated-atom DFT jobs, in the labeller's own code and settings.

MACE subtracts one reference energy per element from every total energy; the paper
references to isolated atoms computed like the labels. Here each element is one lone
atom in a large cubic box, spin-polarised at the Γ point, run by the labeller's atomate2
static Maker with the labeller's settings otherwise (basis, cutoff, functional, smearing),
as its own :func:`~active_mlip.makers.dft_runs.dft_single_point` job: FireWorks routes it
like the labels (it inherits the labelling job's category). Every energy is cached by
content (element, labeller settings hash, these settings), so a resumed or repeated run
computes none again.

Typing the E0s by hand (``loop.e0s: {Cu: ..., I: ...}``) stays possible; a failed
isolated-atom job stops the flow with the element, the reason and that alternative.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ase.data import atomic_numbers
from jobflow import Flow, JobConfig, Maker, OnMissing, Response, job
from pydantic import ConfigDict, Field
from pymatgen.core import Lattice, Structure

from active_mlip.core.documents import Document
from active_mlip.core.hashing import content_hash
from active_mlip.core.replacement import replacement
from active_mlip.makers.dft_runs import dft_single_point
from active_mlip.makers.labelling import (
    Atomate2Labeller,
    labeller_from_dict,
    normalise_dft_output,
    single_point_refs,
)
from active_mlip.makers.schemas import LabellerIdentity
from active_mlip.stores.cache import ResultCache

#: Cache entries of isolated-atom energies carry this ``kind`` (the in-process ones too).
CACHE_KIND = "isolated_atom"


class IsolatedAtomSettings(Document):
    """How the lone atom is computed (part of every E0's cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    box: float = Field(
        15.0,
        gt=5.0,
        description="Side (Å) of the cubic periodic box around the atom: large enough "
        "that the atom's periodic images do not interact.",
    )


class E0sDocument(Document):
    """The reference energy of each element, and where it came from."""

    labeller: LabellerIdentity
    settings: IsolatedAtomSettings
    energies: dict[str, float] = Field(description="eV per element symbol.")
    computed: list[str] = Field(
        default_factory=list, description="Elements computed by this run (the rest: cache)."
    )
    dirs: dict[str, str] = Field(
        default_factory=dict, description="Job directory of each computed element."
    )
    wall_seconds: float = 0.0


def e0_cache_key(element: str, settings_hash: str, settings: IsolatedAtomSettings) -> str:
    """Cache key of one isolated-atom energy: element, labeller settings and box."""
    return content_hash(["isolated-atom", element, settings_hash, settings.model_dump()])


def isolated_atom_labeller(labeller: Atomate2Labeller) -> Atomate2Labeller:
    """``labeller`` with what a lone atom needs: spin-polarised, Γ point, no stress.

    Everything else (basis, cutoff, functional, smearing, custodian settings) stays the
    labeller's, so the E0 and the labels share their systematic errors.
    """
    kwargs = copy.deepcopy(labeller.input_set_kwargs)
    if labeller.code == "cp2k":
        kwargs.setdefault("user_input_settings", {})["spin_polarized"] = True
        kwargs["user_kpoints_settings"] = None  # Γ point
    elif labeller.code == "vasp":
        from pymatgen.io.vasp import Kpoints

        kwargs.setdefault("user_incar_settings", {})["ISPIN"] = 2
        kwargs["user_kpoints_settings"] = Kpoints.gamma_automatic((1, 1, 1))
    else:  # aims
        params = kwargs.setdefault("user_params", {})
        params.update(spin="collinear", k_grid=[1, 1, 1])
        kwargs.pop("user_kpoints_settings", None)
    return labeller.model_copy(update={"input_set_kwargs": kwargs, "compute_stress": False})


def lone_atom(element: str, box: float) -> Structure:
    """One ``element`` atom at the centre of a cubic periodic box of side ``box`` (Å)."""
    return Structure(Lattice.cubic(box), [element], [[0.5, 0.5, 0.5]])


def _check_elements(elements: list[str]) -> list[str]:
    elements = list(dict.fromkeys(elements))
    if not elements:
        raise ValueError("no elements given for isolated-atom energies")
    for el in elements:
        if el not in atomic_numbers or el == "X":
            raise ValueError(f"unknown element symbol {el!r} for an isolated-atom energy")
    return elements


@dataclass
class IsolatedAtomEnergyMaker(Maker):
    """E0s of a DFT labeller: one isolated-atom single point per element, then a gather.

    Parameters
    ----------
    name
        Job name.
    labeller
        The :class:`~active_mlip.makers.labelling.Atomate2Labeller` that labels the data.
    settings
        The box (:class:`IsolatedAtomSettings`).
    """

    name: str = "isolated-atom energies"
    labeller: Atomate2Labeller = field(default_factory=Atomate2Labeller)
    settings: IsolatedAtomSettings = field(default_factory=IsolatedAtomSettings)

    def __post_init__(self) -> None:
        self.labeller = labeller_from_dict(self.labeller)
        if not isinstance(self.labeller, Atomate2Labeller):
            raise ValueError(
                f"IsolatedAtomEnergyMaker is for DFT labellers through atomate2, not "
                f"{self.labeller.kind!r} (in-process labellers compute E0s themselves)"
            )
        if isinstance(self.settings, dict):
            self.settings = IsolatedAtomSettings.model_validate(self.settings)

    @job(config=JobConfig(expose_store=True))
    def make(self, elements: list[str]) -> E0sDocument | Response:
        """The E0 of each of ``elements``: from the cache, else by replacing this job.

        Returns
        -------
        E0sDocument or Response
            The document when every element is cached; otherwise a replacement by one
            :func:`~active_mlip.makers.dft_runs.dft_single_point` job per missing
            element and :func:`gather_e0s`, whose output is the document.
        """
        t0 = time.perf_counter()
        elements = _check_elements(elements)
        cache = ResultCache.from_current_job()
        identity = self.labeller.identity()
        cached = {
            el: cache.get(e0_cache_key(el, identity.settings_hash, self.settings))
            for el in elements
        }
        pending = [el for el, hit in cached.items() if hit is None]
        if not pending:
            return E0sDocument(
                labeller=identity,
                settings=self.settings,
                energies={el: float(hit["energy"]) for el, hit in cached.items()},
                wall_seconds=time.perf_counter() - t0,
            )
        maker = isolated_atom_labeller(self.labeller).static_maker()
        statics = []
        for el in pending:
            static = dft_single_point(maker, lone_atom(el, self.settings.box), self.labeller.code)
            static.name = f"isolated {el}"
            statics.append(static)
        gather = gather_e0s(
            elements,
            {el: hit for el, hit in cached.items() if hit is not None},
            {el: single_point_refs(s) for el, s in zip(pending, statics, strict=True)},
            self.labeller,
            self.settings,
        )
        # A single point that did not run resolves to None: the gather names it.
        gather.config = JobConfig(expose_store=True, on_missing_references=OnMissing.NONE)
        gather.name = "gather E0s"
        flow = Flow([*statics, gather], output=gather.output, name="isolated atoms")
        return Response(replace=replacement(flow))


def _missing_e0_error(element: str, why: str, elements: list[str]) -> RuntimeError:
    example = ", ".join(f"{el}: <eV>" for el in elements)
    return RuntimeError(
        f"no reference energy (E0) for {element}: its isolated-atom job {why}. Fix the "
        f"input (see its job directory) or give the E0s by hand, loop.e0s: {{{example}}}"
    )


@job(config=JobConfig(expose_store=True))
def gather_e0s(
    elements: list[str],
    cached: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any] | None],
    labeller: Any,
    settings: IsolatedAtomSettings,
) -> E0sDocument:
    """Collect the isolated-atom energies, cache the new ones, and return the document.

    Raises
    ------
    RuntimeError
        Naming the element, the reason and how to give E0s by hand, when an element's
        single point failed (no energy, an unconverged SCF, a crash) or did not run:
        the loop cannot reference energies without every element's E0.
    """
    t0 = time.perf_counter()
    labeller = labeller_from_dict(labeller)
    if isinstance(settings, dict):
        settings = IsolatedAtomSettings.model_validate(settings)
    identity = labeller.identity()
    cache = ResultCache.from_current_job()
    energies = {el: float(hit["energy"]) for el, hit in cached.items()}
    dirs: dict[str, str] = {}
    for el, res in results.items():
        res = res or {}
        if res.get("reason"):
            raise _missing_e0_error(el, f"failed: {res['reason']}", elements)
        energy, _, _ = normalise_dft_output(labeller.code, res.get("energy"), None, None)
        if energy is None or not math.isfinite(energy):
            raise _missing_e0_error(
                el, f"{res.get('uuid')} produced no energy (it failed or did not run)", elements
            )
        energies[el] = energy
        dirs[el] = str(res.get("dir_name") or "")
        payload = {
            "element": el,
            "energy": energy,
            "labeller": identity.settings_hash,
            "box": settings.box,
            "dir_name": dirs[el],
        }
        cache.put(e0_cache_key(el, identity.settings_hash, settings), CACHE_KIND, payload)
    return E0sDocument(
        labeller=identity,
        settings=settings,
        energies={el: energies[el] for el in elements},
        computed=sorted(results),
        dirs=dirs,
        wall_seconds=time.perf_counter() - t0,
    )
