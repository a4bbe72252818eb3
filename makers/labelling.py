"""The labelling stage: energies, forces and stresses for a batch of frames.

Three backends share one interface (``identity``, ``supported_elements``,
``label_frame``, ``isolated_atom_energies``):

:class:`CHGNetLabeller`
    The embedded default oracle: the CHGNet 0.3.0 universal potential whose weights
    ship in the ``chgnet`` wheel, so it works offline. It is a *stand-in* for DFT
    (``identity().is_dft`` is False), good for exercising the method end to end, not
    for publishable potentials.
:class:`ASECalculatorLabeller`
    Any ASE calculator named by import path plus keyword arguments (EMT in the tests,
    GPAW for users).
:class:`Atomate2Labeller`
    Real DFT through atomate2's static Makers (CP2K, VASP, FHI-aims). Each single
    point is its own job, so FireWorks can route it to CPU nodes; a gather job
    collects them and normalises units.

:class:`LabelMaker` runs one of them on a batch and returns a
:class:`~active_mlip.makers.schemas.LabelledBatch`. Every label is written to the
:class:`~active_mlip.stores.cache.ResultCache` the moment it exists, keyed by the structure
hash and the labeller's settings hash, so an interrupted or repeated run never
recomputes it. A failed single point becomes a :class:`~active_mlip.makers.schemas.LabelFailure`;
it never fails the batch.

Units everywhere: eV, eV/Å, eV/Å^3; stress in ASE's Voigt order and sign
(positive = tensile).

Over 500 lines on purpose: the three backends share one interface and one cache
path, and a reader comparing them wants them side by side.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import math
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, ClassVar, Literal

import ase
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.data import atomic_numbers, chemical_symbols
from ase.units import GPa
from jobflow import Flow, Job, JobConfig, Maker, OnMissing, Response, job
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pymatgen.core.units import Ha_to_eV, bohr_to_ang
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.documents import Document, as_model, without_mson_keys
from active_mlip.core.frames import Frame
from active_mlip.core.hashing import content_hash
from active_mlip.core.replacement import replacement
from active_mlip.makers.dft_environment import aims_species_dir, check_executable
from active_mlip.makers.dft_presets import (
    PRESET_NAMES,
    preset_settings,
    resolve_input_set_kwargs,
)
from active_mlip.makers.dft_runs import dft_single_point
from active_mlip.makers.schemas import DATA_FIELDS, LabelFailure, LabelledBatch, LabellerIdentity
from active_mlip.stores.cache import ResultCache

#: Cache entries written by this stage carry this ``kind``.
CACHE_KIND = "label"

#: Side of the cubic periodic box (Å) used for isolated-atom energies.
ISOLATED_ATOM_BOX = 20.0

#: Elements ASE's EMT has parameters for.
EMT_ELEMENTS = frozenset({"H", "C", "N", "O", "Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"})

#: CHGNet 0.3.0 was trained on the Materials Project: elements up to Pu (Z = 94).
CHGNET_ELEMENTS = frozenset(chemical_symbols[1:95])


class LabelError(RuntimeError):
    """A single point ran but gave no usable label (e.g. a non-finite energy)."""


# -- backends -------------------------------------------------------------------------------


class _LabellerBase(Document):
    """What every backend provides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Whether ``label_frame`` runs in the calling process.
    in_process: ClassVar[bool] = True

    def _identity_parts(self) -> tuple[str, str, dict[str, Any], bool]:
        raise NotImplementedError

    def identity(self) -> LabellerIdentity:
        """Who labels, with which settings; ``settings_hash`` keys the label cache."""
        name, version, settings, is_dft = self._identity_parts()
        return LabellerIdentity(
            name=name,
            version=version,
            settings=settings,
            settings_hash=content_hash({"name": name, "version": version, "settings": settings}),
            is_dft=is_dft,
        )

    def supported_elements(self) -> set[str] | None:
        """Element symbols this labeller handles, or ``None`` for no restriction."""
        return None

    def label_frame(self, frame: Frame) -> Frame:
        """Return a labelled copy of ``frame`` (raises on failure)."""
        raise NotImplementedError(f"{type(self).__name__} does not label in-process")

    def isolated_atom_energies(self, elements: list[str]) -> dict[str, float]:
        """Energy (eV) of each element as a single atom in a 20 Å periodic cubic box."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot compute isolated-atom energies in-process: its "
            "isolated atoms are jobs of their own (active_mlip.makers.dft_e0s."
            "IsolatedAtomEnergyMaker, which loop.e0s = 'isolated' runs), or pass E0s explicitly"
        )


class _InProcessLabeller(_LabellerBase):
    """A backend that evaluates an ASE calculator in the calling process."""

    def get_calculator(self) -> Calculator:
        """Return the ASE calculator that labels frames."""
        raise NotImplementedError

    def label_frame(self, frame: Frame) -> Frame:
        """Label ``frame`` with this backend's calculator.

        Returns
        -------
        Frame
            A copy with ``energy`` (eV), ``forces`` (eV/Å) and ``stress`` (Voigt,
            eV/Å^3, ASE sign; ``None`` where the calculator has no stress) and
            ``info["labeller"]`` set to the settings hash.

        Raises
        ------
        LabelError
            If the calculator returns a non-finite energy, force or stress.
        Exception
            Whatever the calculator raises.
        """
        atoms = frame.unlabelled().to_atoms()
        atoms.calc = self.get_calculator()
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)
        try:
            stress: np.ndarray | None = np.asarray(atoms.get_stress(voigt=True), dtype=float)
        except PropertyNotImplementedError:
            stress = None
        return make_labelled_frame(frame, energy, forces, stress, self.identity().settings_hash)

    def isolated_atom_energies(self, elements: list[str]) -> dict[str, float]:
        """Energy (eV) of each element as a single atom in a 20 Å periodic cubic box.

        Used to set MACE's E0s (for CHGNet: its per-element reference energy, see
        :meth:`CHGNetLabeller.isolated_atom_energies`).

        Raises
        ------
        ValueError
            For an unknown element symbol or one this labeller cannot handle.
        """
        elements = list(dict.fromkeys(elements))
        supported = self.supported_elements()
        for el in elements:
            if el not in atomic_numbers or el == "X":
                raise ValueError(f"unknown element symbol {el!r}")
            if supported is not None and el not in supported:
                raise ValueError(f"{self.identity().name} cannot handle element {el!r}")
        out: dict[str, float] = {}
        half = ISOLATED_ATOM_BOX / 2
        for el in elements:
            atoms = Atoms(
                el, positions=[[half, half, half]], cell=[ISOLATED_ATOM_BOX] * 3, pbc=True
            )
            # calculators may print about the lone atom; it is expected here
            with contextlib.redirect_stdout(io.StringIO()):
                out[el] = float(self.label_frame(Frame.from_atoms(atoms)).energy)
        return out


#: CHGNet calculators, one per (model, device): loading the model costs seconds.
_CHGNET_CALCULATORS: dict[tuple[str, str], Calculator] = {}


def _chgnet_calculator(model_name: str, device: str) -> Calculator:
    key = (model_name, device)
    if key not in _CHGNET_CALCULATORS:
        # CHGNet (and torch) load only where the labeller runs
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
        # stress_weight converts CHGNet's GPa (1/V dE/dstrain, tensile positive) to eV/Å^3.
        with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet will run on cpu"
            _CHGNET_CALCULATORS[key] = CHGNetCalculator(
                model=model, use_device=device, stress_weight=GPa
            )
    calc = _CHGNET_CALCULATORS[key]
    calc.reset()
    return calc


class CHGNetLabeller(_InProcessLabeller):
    """CHGNet universal potential: the embedded, offline stand-in for DFT.

    CHGNet 0.3.0's weights ship in the ``chgnet`` wheel. Its forces are about 0.8x
    PBE's (a known softening of universal potentials), so use it to exercise the
    method, and a DFT backend for production. The model runs in float32; the model
    is loaded once per process and device.

    Parameters
    ----------
    device
        Torch device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. Not part of
        the settings hash: it changes rounding only.
    model_name
        CHGNet model version shipped in the wheel.
    """

    kind: Literal["chgnet"] = "chgnet"
    device: str = "cpu"
    model_name: str = "0.3.0"

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v not in ("cpu", "cuda", "mps") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', not {v!r}")
        return v

    def _identity_parts(self) -> tuple[str, str, dict[str, Any], bool]:
        return "chgnet", version("chgnet"), {"model": self.model_name}, False

    def supported_elements(self) -> set[str]:
        return set(CHGNET_ELEMENTS)

    def get_calculator(self) -> Calculator:
        return _chgnet_calculator(self.model_name, self.device)

    def isolated_atom_energies(self, elements: list[str]) -> dict[str, float]:
        """Energy (eV) of each element as a lone atom in a 20 Å periodic cubic box.

        A lone atom has no neighbour within CHGNet's cutoff, for which CHGNet prints
        "isolated atom(s) ... CHGNet calculation will likely go wrong" to stderr. Here
        the lone atom is the point: its energy is CHGNet's per-element reference
        (composition model), the E0 MACE needs. So the graph converter ignores isolated
        atoms during these calls only; a labelled frame with one still warns.
        """
        converter = self.get_calculator().model.graph_converter
        previous = converter.on_isolated_atoms
        converter.set_isolated_atom_response("ignore")
        try:
            return super().isolated_atom_energies(elements)
        finally:
            converter.set_isolated_atom_response(previous)


def _import_object(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import calculator {path!r}: {exc}") from exc


class ASECalculatorLabeller(_InProcessLabeller):
    """Any ASE calculator, named by import path, built with ``kwargs`` for each frame.

    Parameters
    ----------
    calculator
        Import path of the calculator class, e.g. ``"ase.calculators.emt.EMT"`` or
        ``"gpaw.GPAW"``.
    kwargs
        Keyword arguments of the calculator (JSON-serialisable; part of the hash).
    elements
        Elements the calculator handles; ``None`` infers them (EMT's eleven) or
        allows any.
    is_dft
        Declare the calculator a DFT code (e.g. GPAW) in the labeller identity.
    """

    kind: Literal["ase"] = "ase"
    calculator: str = "ase.calculators.emt.EMT"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    elements: list[str] | None = None
    is_dft: bool = False

    @field_validator("calculator")
    @classmethod
    def _check_path(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) < 2 or not all(p.isidentifier() for p in parts):
            raise ValueError(
                f"calculator must be an import path like 'pkg.module.Class', not {v!r}"
            )
        return v

    @field_validator("elements")
    @classmethod
    def _check_elements(cls, v: list[str] | None) -> list[str] | None:
        for el in v or []:
            if el not in atomic_numbers or el == "X":
                raise ValueError(f"unknown element symbol {el!r} in elements")
        return v

    def _identity_parts(self) -> tuple[str, str, dict[str, Any], bool]:
        top = self.calculator.split(".")[0]
        try:
            pkg = version(top)
        except PackageNotFoundError:
            pkg = "unknown"
        ver = f"ase {ase.__version__}" + ("" if top == "ase" else f", {top} {pkg}")
        name = f"ase:{self.calculator.rsplit('.', 1)[1]}"
        settings = {"calculator": self.calculator, "kwargs": self.kwargs}
        return name, ver, settings, self.is_dft

    def calculator_class(self) -> type[Calculator]:
        """Import the calculator class (``ValueError`` if it cannot be imported)."""
        return _import_object(self.calculator)

    def supported_elements(self) -> set[str] | None:
        if self.elements is not None:
            return set(self.elements)

        cls = self.calculator_class()
        if isinstance(cls, type) and issubclass(cls, EMT):
            return set(EMT_ELEMENTS)
        return None

    def get_calculator(self) -> Calculator:
        return self.calculator_class()(**self.kwargs)


class Atomate2Labeller(_LabellerBase):
    """Real DFT single points through atomate2's static Makers.

    Each frame becomes one ``StaticMaker`` job (CP2K: ``atomate2.cp2k.jobs.core``;
    VASP: ``atomate2.vasp.jobs.core``; FHI-aims: ``atomate2.aims.jobs.core``, which
    needs ``pymatgen-io-aims``: ``pip install active-mlip[aims]``), wrapped by
    :mod:`active_mlip.makers.dft_makers` so that the job first checks, on the worker
    that runs it, that the code's executable is there (and for FHI-aims the species
    defaults). The gather job normalises the task documents' units (see
    :func:`normalise_dft_output`).

    Input settings are the named ``preset`` (see
    :mod:`active_mlip.makers.dft_presets` and ``docs/dft.md``) with
    ``input_set_kwargs`` laid over it: every preset value can be overridden.

    Parameters
    ----------
    code
        ``"cp2k"``, ``"vasp"`` or ``"aims"``.
    preset
        ``"forces"`` (default: settings tuned for forces of supercells), ``"forces-tight"``
        or ``None`` (atomate2's own defaults, e.g. VASP's tetrahedron smearing and
        Materials-Project +U, which do not suit force labels).
    input_set_kwargs
        Keyword arguments of the code's ``StaticSetGenerator`` (CP2K:
        ``user_input_settings``, ``user_kpoints_settings``; VASP:
        ``user_incar_settings``, ``user_kpoints_settings``, ...; aims: ``user_params``,
        ``user_kpoints_settings``). Settings dicts are merged into the preset's key by
        key (``{"user_incar_settings": {"EDIFF": 1e-7}}`` changes one tag; ``None``
        unsets a tag); other keys replace the preset's value.
    maker_kwargs
        Other fields of the ``StaticMaker`` (e.g. ``run_cp2k_kwargs``).
    compute_stress
        Ask the code for the analytical stress (CP2K: ``STRESS_TENSOR ANALYTICAL``;
        aims: ``compute_analytical_stress``; VASP computes it with ``ISIF`` >= 1).

    Notes
    -----
    The atoms keep the frame's order (``sort_structure=False``): atomate2 sorts VASP and
    CP2K structures by electronegativity by default, and the gather maps forces to
    atoms by index. Settings that reorder or transform the structure are refused.
    """

    kind: Literal["atomate2"] = "atomate2"
    code: Literal["cp2k", "vasp", "aims"] = "cp2k"
    preset: str | None = "forces"
    input_set_kwargs: dict[str, Any] = Field(default_factory=dict)
    maker_kwargs: dict[str, Any] = Field(default_factory=dict)
    compute_stress: bool = True
    in_process: ClassVar[bool] = False

    @field_validator("preset")
    @classmethod
    def _check_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in PRESET_NAMES:
            raise ValueError(
                f"unknown DFT preset {v!r}; choose one of {', '.join(PRESET_NAMES)} "
                "or None (atomate2's defaults)"
            )
        return v

    @field_validator("input_set_kwargs")
    @classmethod
    def _check_input_set_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Labels are matched to atoms by index: nothing may reorder or rebuild the cell.
        for key, harmless in (("sort_structure", False), ("standardize", False)):
            if v.get(key, harmless) is not harmless:
                raise ValueError(
                    f"input_set_kwargs[{key!r}]={v[key]!r} would reorder or rebuild the "
                    "structure; labels are matched to the frame's atoms by index, so it "
                    "must stay False"
                )
        if v.get("reduce_structure") is not None:
            raise ValueError(
                f"input_set_kwargs['reduce_structure']={v['reduce_structure']!r} would "
                "rebuild the cell; labels are matched to the frame's atoms by index"
            )
        if (v.get("user_params") or {}).get("compute_forces") is False:
            raise ValueError(
                "input_set_kwargs['user_params']['compute_forces'] is False: labels need forces"
            )
        return v

    def _identity_parts(self) -> tuple[str, str, dict[str, Any], bool]:
        settings: dict[str, Any] = {
            "input_set_kwargs": self.input_set_kwargs,
            "maker_kwargs": self.maker_kwargs,
            "compute_stress": self.compute_stress,
            # atoms are no longer sorted (see Notes): labels made before are not reused
            "atom_order": "as given",
        }
        if self.preset is not None:
            # The preset's values, not only its name: a changed preset is a new hash.
            settings["preset"] = self.preset
            settings["preset_settings"] = preset_settings(self.preset, self.code)
        return self.code, f"atomate2 {version('atomate2')}", settings, True

    def generator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the code's ``StaticSetGenerator``: the preset, the
        user's ``input_set_kwargs`` over it, and what labelling needs (forces, stress,
        the atoms in the frame's order)."""
        kwargs = resolve_input_set_kwargs(self.code, self.preset, self.input_set_kwargs)
        if self.code == "cp2k":
            if self.compute_stress:
                uis = kwargs.setdefault("user_input_settings", {})
                over = uis.setdefault("override_default_params", {})
                over.setdefault("FORCE_EVAL", {}).setdefault("STRESS_TENSOR", "ANALYTICAL")
            kwargs["sort_structure"] = False
        elif self.code == "vasp":
            kwargs["sort_structure"] = False
        else:
            params = kwargs.setdefault("user_params", {})
            params["compute_forces"] = True
            if self.compute_stress:
                params.setdefault("compute_analytical_stress", True)
        return kwargs

    def static_maker(self) -> Maker:
        """The atomate2 ``StaticMaker`` that runs one single point.

        Raises
        ------
        ImportError
            For ``code="aims"`` without ``pymatgen-io-aims``, saying what to install.
        """
        # atomate2 loads only for a DFT labeller, and only when a job is built
        from active_mlip.makers import dft_makers

        gen_kwargs = self.generator_kwargs()
        if self.code == "cp2k":
            from atomate2.cp2k.sets.core import StaticSetGenerator

            maker_cls: type = dft_makers.Cp2kStaticMaker
        elif self.code == "vasp":
            from atomate2.vasp.sets.core import StaticSetGenerator

            maker_cls = dft_makers.VaspStaticMaker
        else:
            maker_cls = dft_makers.aims_static_maker_class()
            from pymatgen.io.aims.sets.core import StaticSetGenerator
        generator = StaticSetGenerator(**gen_kwargs)
        return maker_cls(input_set_generator=generator, **_copy(self.maker_kwargs))

    def check_environment(self, elements: list[str] | None = None) -> None:
        """Check this machine can run the single points: the executable is on ``PATH``
        and, for FHI-aims, the species defaults exist (for ``elements`` if given).

        The static jobs run the same checks themselves on the worker; call this on a
        compute node to find a set-up problem before submitting a campaign.

        Raises
        ------
        active_mlip.makers.dft_environment.DFTSetupError
            Naming the missing executable or directory and how to fix it.
        """
        check_executable(self.code, self.maker_kwargs)
        if self.code == "aims":
            species = self.generator_kwargs()["user_params"].get("species_dir")
            if not isinstance(species, dict):  # a per-species map is pymatgen's to resolve
                aims_species_dir(species, list(elements or []))


def _copy(obj: Any) -> Any:
    return copy.deepcopy(obj)


#: Any labeller; the ``kind`` field picks the backend when read from a dict.
Labeller = Annotated[
    CHGNetLabeller | ASECalculatorLabeller | Atomate2Labeller, Field(discriminator="kind")
]

_LABELLER_ADAPTER: TypeAdapter[Any] = TypeAdapter(Labeller)


def labeller_from_dict(data: dict[str, Any] | BaseModel) -> Any:
    """Build a labeller from a dict with a ``kind`` key (``chgnet``, ``ase``, ``atomate2``)."""
    if isinstance(data, _LabellerBase):
        return data
    if isinstance(data, dict):
        data = without_mson_keys(data)
    return _LABELLER_ADAPTER.validate_python(data)


# -- helpers --------------------------------------------------------------------------------


def make_labelled_frame(
    frame: Frame,
    energy: float,
    forces: Any,
    stress: Any | None,
    labeller_hash: str,
) -> Frame:
    """Return ``frame`` with labels attached, after checking shapes and finiteness.

    Raises
    ------
    LabelError
        For a non-finite energy/force/stress or forces of the wrong shape.
    """
    if energy is None or not math.isfinite(float(energy)):
        raise LabelError(f"non-finite energy {energy!r}")
    f = np.asarray(forces, dtype=float)
    if f.shape != (frame.n_atoms, 3):
        raise LabelError(f"forces have shape {f.shape}, expected ({frame.n_atoms}, 3)")
    if not np.all(np.isfinite(f)):
        raise LabelError("non-finite forces")
    s = None
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.shape == (3, 3):
            s = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if s.shape != (6,):
            raise LabelError(f"stress has shape {s.shape}, expected (6,) or (3, 3)")
        if not np.all(np.isfinite(s)):
            raise LabelError("non-finite stress")
    return frame.model_copy(
        update={
            "energy": float(energy),
            "forces": f.tolist(),
            "stress": None if s is None else s.tolist(),
            "info": {**frame.info, "labeller": labeller_hash},
        },
        deep=True,
    )


def normalise_dft_output(
    code: str, energy: float | None, forces: Any, stress: Any | None
) -> tuple[float | None, np.ndarray | None, np.ndarray | None]:
    """Convert a task document's energy, forces and stress to eV, eV/Å and eV/Å^3.

    Parameters
    ----------
    code
        ``"cp2k"``: atomate2's CP2K TaskDocument holds the energy in eV (pymatgen
        converts it), forces in Hartree/Bohr and the stress tensor in GPa as CP2K
        prints it (positive = compressive, the opposite of ASE).
        ``"vasp"``: energy eV, forces eV/Å, stress in kBar with VASP's sign
        (positive = compressive). ``"aims"``: energy eV, forces eV/Å, stress in kBar
        (pymatgen-io-aims converts FHI-aims' eV/Å^3) with ASE's sign (positive =
        tensile), as FHI-aims prints it.
    energy, forces, stress
        As found in ``task_document.output``; stress as a 3x3 tensor or Voigt.

    Returns
    -------
    tuple
        energy (eV), forces (N, 3) eV/Å, stress (Voigt, eV/Å^3, tensile positive);
        each ``None`` where absent.
    """

    # pymatgen converted the CP2K energy with its (CODATA 2018) Hartree; the forces
    # must use the same constants to stay the energy's derivative.
    force_factor = {"cp2k": Ha_to_eV / bohr_to_ang, "vasp": 1.0, "aims": 1.0}
    stress_factor = {"cp2k": -GPa, "vasp": -0.1 * GPa, "aims": 0.1 * GPa}
    if code not in force_factor:
        raise ValueError(f"unknown DFT code {code!r}; expected cp2k, vasp or aims")
    e = None if energy is None else float(energy)
    f = None if forces is None else np.asarray(forces, dtype=float) * force_factor[code]
    s = None
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.shape == (3, 3):
            s = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        s = s * stress_factor[code]
    return e, f, s


def _as_frame(obj: Any) -> Frame:
    try:
        return as_model(obj, Frame)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def validate_frames(frames: list[Frame], labeller: Any) -> None:
    """Check a batch before any single point runs.

    Raises
    ------
    ValueError
        For an empty batch, a frame without atoms, a frame that is not periodic in
        all three directions or has a degenerate cell, an unknown atomic number, or
        an element the labeller cannot handle -- naming the frame index and element.
    """
    if frames is None or len(frames) == 0:
        raise ValueError("empty batch: there are no frames to label")
    labeller = labeller_from_dict(labeller)
    supported = labeller.supported_elements()
    name = labeller.identity().name
    for i, raw in enumerate(frames):
        frame = _as_frame(raw)
        if frame.n_atoms == 0:
            raise ValueError(f"frame {i} has no atoms")
        if not all(frame.pbc):
            raise ValueError(
                f"frame {i} is not periodic (pbc={frame.pbc}); labelling needs a periodic cell"
            )
        if abs(np.linalg.det(np.asarray(frame.cell, dtype=float))) < 1e-6:
            raise ValueError(f"frame {i} has a degenerate cell (zero volume)")
        bad_z = sorted({z for z in frame.numbers if not 0 < z < len(chemical_symbols)})
        if bad_z:
            raise ValueError(f"frame {i} has invalid atomic numbers {bad_z}")
        if supported is not None:
            missing = sorted({chemical_symbols[z] for z in frame.numbers} - supported)
            if missing:
                raise ValueError(
                    f"frame {i} contains element(s) {missing} that labeller {name!r} "
                    f"cannot handle (supported: {sorted(supported)})"
                )


def label_cache_key(frame: Frame, settings_hash: str) -> str:
    """Cache key of one label: the structure hash and the labeller's settings hash."""
    return content_hash([frame.structure_hash(), settings_hash])


def _frame_from_cache(frame: Frame, payload: dict[str, Any], settings_hash: str) -> Frame:
    return make_labelled_frame(
        frame, payload["energy"], payload["forces"], payload.get("stress"), settings_hash
    )


def _cache_payload(frame: Frame) -> dict[str, Any]:
    return {
        "structure_hash": frame.structure_hash(),
        "energy": frame.energy,
        "forces": frame.forces,
        "stress": frame.stress,
    }


def _failure(i: int, frame: Frame, exc: BaseException | str) -> LabelFailure:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return LabelFailure(index=i, structure_hash=frame.structure_hash(), reason=reason)


def _batch(
    identity: LabellerIdentity,
    n: int,
    labelled: dict[int, Frame],
    failures: list[LabelFailure],
    n_reused: int,
    t0: float,
) -> LabelledBatch:
    frames = [labelled[i] for i in sorted(labelled)]
    return LabelledBatch(
        labeller=identity,
        frames=frames,
        failures=sorted(failures, key=lambda f: f.index),
        n_requested=n,
        n_labelled=len(frames),
        n_failed=len(failures),
        n_reused=n_reused,
        wall_seconds=time.perf_counter() - t0,
    )


# -- jobs -----------------------------------------------------------------------------------


def label_in_process(
    frames: list[Frame], labeller: Any, cache: ResultCache | None = None
) -> LabelledBatch:
    """Label ``frames`` in this process, reusing and filling ``cache``.

    A frame whose single point raises (or gives non-finite numbers) is recorded as a
    :class:`LabelFailure`; the others are labelled.
    """
    t0 = time.perf_counter()
    labeller = labeller_from_dict(labeller)
    frames = [_as_frame(f) for f in frames]
    validate_frames(frames, labeller)
    cache = cache or ResultCache(None)
    identity = labeller.identity()
    labelled: dict[int, Frame] = {}
    failures: list[LabelFailure] = []
    reused: set[int] = set()
    for i, frame in enumerate(frames):

        def compute(i: int = i, frame: Frame = frame) -> Frame | LabelFailure:
            try:
                return labeller.label_frame(frame)
            except Exception as exc:  # any calculator error is one failed frame
                return _failure(i, frame, exc)

        def load(payload: dict[str, Any], i: int = i, frame: Frame = frame) -> Frame:
            reused.add(i)
            return _frame_from_cache(frame, payload, identity.settings_hash)

        # Each label is stored the moment it exists; a failure is not (a rerun retries it).
        out = cache.get_or_compute(
            label_cache_key(frame, identity.settings_hash),
            CACHE_KIND,
            compute,
            load,
            lambda r: _cache_payload(r) if isinstance(r, Frame) else None,
        )
        if isinstance(out, LabelFailure):
            failures.append(out)
        else:
            labelled[i] = out
    return _batch(identity, len(frames), labelled, failures, len(reused), t0)


def build_dft_flow(
    frames: list[Frame], labeller: Atomate2Labeller, cache: ResultCache | None = None
) -> Flow | LabelledBatch:
    """One atomate2 static single point per uncached frame, plus a gather job.

    Each single point is a :func:`~active_mlip.makers.dft_runs.dft_single_point` job
    running ``labeller.static_maker()``: a failed or unconverged run comes back as a
    reason, which the gather records.

    Returns
    -------
    Flow or LabelledBatch
        The Flow (its output is the gather job's :class:`LabelledBatch`), or the
        batch itself when every frame was already in the cache.
    """
    t0 = time.perf_counter()
    frames = [_as_frame(f) for f in frames]
    cache = cache or ResultCache(None)
    identity = labeller.identity()
    # Lookups only: a frame's compute step is a job of its own that runs elsewhere, and
    # gather_dft_labels stores what it produced.
    cached: list[dict[str, Any] | None] = [
        cache.get(label_cache_key(f, identity.settings_hash)) for f in frames
    ]
    pending = [i for i, p in enumerate(cached) if p is None]
    if not pending:
        labelled = {
            i: _frame_from_cache(f, p, identity.settings_hash)
            for i, (f, p) in enumerate(zip(frames, cached, strict=True))
        }
        return _batch(identity, len(frames), labelled, [], len(frames), t0)

    maker = labeller.static_maker()
    statics = []
    results = []
    for i in pending:
        structure = AseAtomsAdaptor.get_structure(frames[i].unlabelled().to_atoms())
        static = dft_single_point(maker, structure, labeller.code)
        static.name = f"{maker.name} {i}"
        statics.append(static)
        results.append(single_point_refs(static))
    gather = gather_dft_labels(frames, cached, pending, results, labeller)
    # A fizzled static job resolves to None instead of failing the gather.
    gather.config = JobConfig(expose_store=True, on_missing_references=OnMissing.NONE)
    gather.name = "gather labels"
    return Flow([*statics, gather], output=gather.output, name="dft labels")


def single_point_refs(static: Job) -> dict[str, Any]:
    """What of one :func:`dft_single_point` job the gather needs: its numbers or reason.

    Only these travel to the gather job, not the whole task document; each resolves to
    ``None`` when the job did not run (killed worker, fizzled firework).
    """
    out = static.output
    return {
        "uuid": static.uuid,
        "energy": out.energy,
        "forces": out.forces,
        "stress": out.stress,
        "dir_name": out.dir_name,
        "reason": out.reason,
    }


@job(data=DATA_FIELDS)
def gather_dft_labels(
    frames: list[Frame],
    cached: list[dict[str, Any] | None],
    pending: list[int],
    results: list[dict[str, Any]],
    labeller: Any,
) -> LabelledBatch:
    """Collect the static jobs' outputs into a :class:`LabelledBatch`.

    Units are normalised with :func:`normalise_dft_output`; each new label is written
    to the cache. A single point that failed (its ``reason``: the code or custodian
    raised, an unconverged SCF, no forces), did not run (its references resolve to
    ``None``) or gave non-finite numbers is recorded as a failure, never cached.
    """
    t0 = time.perf_counter()
    labeller = labeller_from_dict(labeller)
    frames = [_as_frame(f) for f in frames]
    identity = labeller.identity()
    cache = ResultCache.from_current_job()
    labelled: dict[int, Frame] = {}
    failures: list[LabelFailure] = []
    for i, payload in enumerate(cached):
        if payload is not None:
            labelled[i] = _frame_from_cache(frames[i], payload, identity.settings_hash)
    for i, res in zip(pending, results, strict=True):
        frame = frames[i]
        res = res or {}
        if res.get("reason"):  # the run failed, did not converge or gave nothing
            failures.append(_failure(i, frame, str(res["reason"])))
            continue
        if res.get("energy") is None and res.get("forces") is None:
            failures.append(
                _failure(
                    i,
                    frame,
                    f"{labeller.code} static job {res.get('uuid')} produced no output "
                    "(it failed or did not run; see its job directory or launch)",
                )
            )
            continue
        try:
            e, f, s = normalise_dft_output(
                labeller.code, res.get("energy"), res.get("forces"), res.get("stress")
            )
            if f is None:
                raise LabelError("task document holds no forces")
            out = make_labelled_frame(frame, e, f, s, identity.settings_hash)
        except Exception as exc:  # bad numbers are one failed frame
            failures.append(_failure(i, frame, exc))
            continue
        if res.get("dir_name"):
            out = out.with_info(dft_dir=str(res["dir_name"]))
        cache.put(label_cache_key(frame, identity.settings_hash), CACHE_KIND, _cache_payload(out))
        labelled[i] = out
    n_reused = sum(p is not None for p in cached)
    return _batch(identity, len(frames), labelled, failures, n_reused, t0)


@dataclass
class LabelMaker(Maker):
    """Label a batch of frames with one labeller.

    Parameters
    ----------
    name
        Job name.
    labeller
        :class:`CHGNetLabeller` (default), :class:`ASECalculatorLabeller` or
        :class:`Atomate2Labeller`.
    """

    name: str = "label"
    labeller: Labeller = field(default_factory=CHGNetLabeller)

    def __post_init__(self) -> None:
        self.labeller = labeller_from_dict(self.labeller)

    def validate(self, frames: list[Frame]) -> None:
        """Check ``frames`` at flow-build time (see :func:`validate_frames`)."""
        validate_frames(frames, self.labeller)

    @job(data=DATA_FIELDS, config=JobConfig(expose_store=True))
    def make(self, frames: list[Frame]) -> LabelledBatch | Response:
        """Label ``frames``; returns a :class:`LabelledBatch`.

        In-process backends label here, writing each label to the cache as soon as
        it exists. atomate2 backends replace this job by one static job per uncached
        frame and a gather job.

        Raises
        ------
        ValueError
            For bad input (see :func:`validate_frames`), before any single point runs.
        """
        frames = [_as_frame(f) for f in frames]
        if not frames:
            # Inside the loop an exploration may select nothing; that is not an error.
            return LabelledBatch(
                labeller=self.labeller.identity(),
                frames=[],
                n_requested=0,
                n_labelled=0,
                n_failed=0,
            )
        validate_frames(frames, self.labeller)
        cache = ResultCache.from_current_job()
        if self.labeller.in_process:
            return label_in_process(frames, self.labeller, cache)
        flow = build_dft_flow(frames, self.labeller, cache)
        if isinstance(flow, LabelledBatch):
            return flow
        return Response(replace=replacement(flow))
