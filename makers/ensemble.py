"""The ensemble as one ASE calculator: mean energy/forces/stress and the uncertainties.

The M members (MACE models, or any module following MACE's forward interface
``model(data: dict, compute_stress=..., training=...) -> {"energy", "forces", "stress"}``)
are evaluated on ONE neighbour graph per structure: the graph is built once and each member
runs one forward pass on it. Several structures (MD walkers, test frames) go into one batched
graph, so evaluating them costs M forward passes in total, not M per structure. A scored
(logged) MD frame costs nothing extra: every calculation leaves the member predictions and
the uncertainties in ``results``.

Uncertainties (population std over members; METHOD.md §3):

- ``energy``: U_E = std_m E_m, where E_m is referenced to member m's own prediction for the
  ground-state structure when ``reference_atoms`` is given (a constant offset between members
  then cancels);
- ``force_mean`` / ``force_max``: per atom σ_I = sqrt(mean_m |F_m,I − F̄_I|²), then the mean /
  max over atoms;
- ``*_relative``: divided by |mean| -- for the energy |mean_m E_m| of the same (referenced when a
  reference is given) energies, i.e. relative to the excitation energy above the ground state,
  because relative to the absolute total energy (hundreds of eV of E0s) it would be ~1e-5 and
  meaningless; for forces σ_I / |F̄_I| per atom, then mean / max. Denominators are floored at
  ``energy_eps`` / ``force_eps`` so (near-)zero means do not divide by zero.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import atomic_numbers as ATOMIC_NUMBERS
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from active_mlip.makers.schemas import EnsembleDocument

#: Keys of the uncertainty dictionary (also the keys selection can monitor).
UNCERTAINTY_KEYS = (
    "energy",
    "force_mean",
    "force_max",
    "energy_relative",
    "force_mean_relative",
    "force_max_relative",
)
#: Floor of |mean energy| (eV) in the relative energy uncertainty.
ENERGY_EPS = 1e-3
#: Floor of |mean force| (eV/Å) per atom in the relative force uncertainties.
FORCE_EPS = 1e-3


# -- uncertainty ----------------------------------------------------------------------------
def force_spread(member_forces: np.ndarray) -> np.ndarray:
    """Per-atom spread of the members' forces, sigma_i = sqrt(mean_m |F_mi - <F_i>|^2) (eV/Å).

    ``member_forces`` has shape (..., M, N, 3) (leading axes, e.g. structures, are kept);
    the result has shape (..., N).
    """
    f = np.asarray(member_forces, dtype=float)
    return np.sqrt(((f - f.mean(axis=-3, keepdims=True)) ** 2).sum(axis=-1).mean(axis=-2))


def ensemble_uncertainty(
    member_energies: Sequence[float] | np.ndarray,
    member_forces: np.ndarray,
    reference_energies: Sequence[float] | np.ndarray | None = None,
    energy_eps: float = ENERGY_EPS,
    force_eps: float = FORCE_EPS,
) -> dict[str, float]:
    """Uncertainties of one structure from the members' predictions.

    Parameters
    ----------
    member_energies
        Energy of each member (eV), shape (M,).
    member_forces
        Forces of each member (eV/Å), shape (M, N, 3).
    reference_energies
        Each member's energy of the ground-state structure (eV), shape (M,); when given the
        member energies are referenced to them before the spread is taken.
    energy_eps, force_eps
        Floors of the denominators of the relative variants (eV, eV/Å).

    Returns
    -------
    dict
        Keys :data:`UNCERTAINTY_KEYS`; energies in eV, forces in eV/Å, relative ones unitless.
    """
    e = np.asarray(member_energies, dtype=float)
    f = np.asarray(member_forces, dtype=float)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"member_energies must have shape (M,), got {e.shape}")
    if f.ndim != 3 or f.shape[0] != e.size or f.shape[2] != 3:
        raise ValueError(f"member_forces must have shape ({e.size}, N, 3), got {f.shape}")
    if reference_energies is not None:
        ref = np.asarray(reference_energies, dtype=float)
        if ref.shape != e.shape:
            raise ValueError(f"reference_energies must have shape {e.shape}, got {ref.shape}")
        e = e - ref
    u_e = float(e.std())  # population std (ddof=0)
    f_mean = f.mean(axis=0)  # (N, 3)
    sigma = force_spread(f)  # (N,)
    sigma_rel = sigma / np.maximum(np.linalg.norm(f_mean, axis=1), force_eps)
    return {
        "energy": u_e,
        "force_mean": float(sigma.mean()),
        "force_max": float(sigma.max()),
        "energy_relative": u_e / max(abs(float(e.mean())), energy_eps),
        "force_mean_relative": float(sigma_rel.mean()),
        "force_max_relative": float(sigma_rel.max()),
    }


# -- loading --------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; others pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


def load_models(ensemble: EnsembleDocument, device: str = "cpu") -> list[torch.nn.Module]:
    """Load the members' model files, verifying each blob's hash first.

    Raises
    ------
    active_mlip.core.blobs.CorruptArtifactError
        If a model file's bytes do not match the hash recorded when it was trained.
    ValueError
        If the document holds no member.
    """
    import mace.calculators  # noqa: F401  (registers MACE's classes for unpickling)

    if not ensemble.members:
        raise ValueError("the ensemble document holds no member")
    device = resolve_device(device)
    models = []
    for member in sorted(ensemble.members, key=lambda m: m.index):
        data = member.model_file.to_bytes()  # raises CorruptArtifactError on a hash mismatch
        # weights_only=False unpickles arbitrary objects; safe only because the bytes were
        # just verified against the hash recorded by the training job that wrote them.
        model = torch.load(io.BytesIO(data), map_location=device, weights_only=False)
        models.append(model.eval())
    return models


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's global default dtype (restored even on errors)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if torch.is_floating_point(t):
            return t.dtype
    return torch.float64


# -- calculator -----------------------------------------------------------------------------
class EnsembleCalculator(Calculator):
    """ASE calculator returning the ensemble mean and the members' spread.

    Parameters
    ----------
    models
        The M members (eval mode is enforced; their parameters stop requiring gradients).
    r_max
        Cut-off radius of the neighbour graph (Å); must equal the members' ``r_max``.
    atomic_numbers
        Elements the members were trained on. When the members carry an ``atomic_numbers``
        buffer (MACE does) its order defines the one-hot encoding; the sets must agree.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    reference_atoms
        Ground-state structure; each member's energy is referenced to its own prediction for
        it, for the energy uncertainty only (the mean energy stays absolute).
    compute_stress
        Whether members compute the stress (needed for NPT).
    member_threads
        Members evaluated concurrently, each in its own thread (its own autograd graph). On a
        CPU a forward pass of a small MACE model is mostly per-operation overhead that leaves
        cores idle; overlapping members recovers them (``benchmarks/exploration_throughput.py``
        measures it). ``None``: 2 on a CPU with at least 2 torch threads (the setting
        measured; more threads contend for the GIL and, with many-core OpenMP teams, for
        the cores), 1 (members in turn) on a GPU. 1 evaluates members in turn.

    Notes
    -----
    After :meth:`calculate`, ``results`` holds ``energy``, ``free_energy``, ``forces``,
    ``stress`` (when computed; Voigt, eV/Å^3) as ensemble means, ``member_energies`` (M,),
    ``member_forces`` (M, N, 3), ``member_stress`` (M, 6) and ``uncertainty`` (dict, keys
    :data:`UNCERTAINTY_KEYS`). ``n_forward_passes`` counts member forward calls.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        r_max: float,
        atomic_numbers: Sequence[int],
        device: str = "cpu",
        reference_atoms: Atoms | None = None,
        compute_stress: bool = True,
        member_threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # MACE (and torch) load only in the process that evaluates or trains
        from mace.tools import utils as mace_utils

        if len(models) == 0:
            raise ValueError("an ensemble needs at least one member")
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        for m in self.models:
            for p in m.parameters():
                p.requires_grad_(False)  # forces need gradients w.r.t. positions only
        dtypes = {_model_dtype(m) for m in self.models}
        if len(dtypes) != 1:
            raise ValueError(f"members have different dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()

        self.r_max = float(r_max)
        if self.r_max <= 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        for i, m in enumerate(self.models):
            member_r_max = getattr(m, "r_max", None)
            if member_r_max is not None and abs(float(member_r_max) - self.r_max) > 1e-6:
                raise ValueError(
                    f"member {i} has r_max={float(member_r_max)} Å but the ensemble uses "
                    f"r_max={self.r_max} Å"
                )

        zs = [int(z) for z in atomic_numbers]
        if not zs:
            raise ValueError("atomic_numbers is empty")
        model_zs = getattr(self.models[0], "atomic_numbers", None)
        if model_zs is not None:
            model_zs = [int(z) for z in model_zs]
            if set(model_zs) != set(zs):
                raise ValueError(
                    f"atomic_numbers {sorted(zs)} differ from the members' {sorted(model_zs)}"
                )
            zs = model_zs  # the members' one-hot order
        for i, m in enumerate(self.models[1:], start=1):
            other = getattr(m, "atomic_numbers", None)
            if other is not None and [int(z) for z in other] != zs:
                raise ValueError(f"member {i} has a different element table than member 0")
        self.z_table = mace_utils.AtomicNumberTable(zs)

        heads = list(getattr(self.models[0], "heads", None) or ["Default"])
        if len(heads) == 1:
            self.head = heads[0]
        elif "Default" in heads or "default" in heads:
            self.head = "Default" if "Default" in heads else "default"
        else:
            raise ValueError(f"multi-head members {heads} have no 'Default' head")
        self.heads = heads

        self.compute_stress = bool(compute_stress)
        if member_threads is None:
            cpu = self.device == "cpu"
            member_threads = min(len(self.models), torch.get_num_threads(), 2) if cpu else 1
        if member_threads < 1:
            raise ValueError(f"member_threads must be >= 1, got {member_threads}")
        self.member_threads = int(member_threads)
        self._pool: ThreadPoolExecutor | None = None
        self.n_forward_passes = 0
        self.reference_energies: np.ndarray | None = None
        if reference_atoms is not None:
            self.check_elements(reference_atoms)
            ref = self._predict([reference_atoms])[0]
            self.reference_energies = ref["member_energies"]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_document(
        cls, ensemble: EnsembleDocument, device: str = "auto", compute_stress: bool = True
    ) -> EnsembleCalculator:
        """Build the calculator of a trained ensemble (hashes verified, reference applied).

        The element table comes from the members' ``atomic_numbers`` buffer (it fixes the
        one-hot order the members were trained with); ``ensemble.elements`` must be covered.
        """
        models = load_models(ensemble, device=resolve_device(device))
        model_zs = getattr(models[0], "atomic_numbers", None)
        if model_zs is not None:
            zs = [int(z) for z in model_zs]
            missing = sorted(set(ensemble.elements) - {chemical_symbols[z] for z in zs})
            if missing:
                raise ValueError(
                    f"the ensemble document lists elements {missing} its members do not know"
                )
        else:
            zs = [ATOMIC_NUMBERS[el] for el in ensemble.elements]
        reference = None
        if ensemble.reference_frame is not None:
            reference = ensemble.reference_frame.unlabelled().to_atoms()
        return cls(
            models,
            r_max=ensemble.r_max,
            atomic_numbers=zs,
            device=device,
            reference_atoms=reference,
            compute_stress=compute_stress,
        )

    @property
    def size(self) -> int:
        """Number of members M."""
        return len(self.models)

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the members were trained on."""
        return [chemical_symbols[z] for z in self.z_table.zs]

    def check_elements(self, atoms: Atoms) -> None:
        """Raise ``ValueError`` when ``atoms`` holds elements the ensemble was not trained on."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.elements))
        if unknown:
            raise ValueError(
                f"structure {atoms.get_chemical_formula()} contains elements {unknown} that "
                f"the ensemble was not trained on (it knows {self.elements})"
            )

    # -- evaluation ---------------------------------------------------------------------------
    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        """Evaluate every member on one graph of ``atoms``; fill ``self.results``."""
        super().calculate(atoms, properties, system_changes)
        if properties and "stress" in properties and not self.compute_stress:
            raise PropertyNotImplementedError("stress: calculator built with compute_stress=False")
        self.results = self.evaluate([self.atoms])[0]

    def evaluate(self, atoms_list: Sequence[Atoms], batch_size: int | None = None) -> list[dict]:
        """Evaluate several structures in one batched graph per member.

        Parameters
        ----------
        atoms_list
            Structures (any sizes / cells).
        batch_size
            Structures per batch (all in one batch when ``None``); each batch costs M passes.

        Returns
        -------
        list of dict
            One results dictionary per structure, with the keys of ``self.results``.
        """
        atoms_list = list(atoms_list)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for atoms in atoms_list:
            self.check_elements(atoms)
        step = batch_size or max(len(atoms_list), 1)
        out: list[dict] = []
        for start in range(0, len(atoms_list), step):
            for pred in self._predict(atoms_list[start : start + step]):
                unc = ensemble_uncertainty(
                    pred["member_energies"], pred["member_forces"], self.reference_energies
                )
                out.append({**pred, "uncertainty": unc})
        return out

    def _batch(self, atoms_list: Sequence[Atoms]):
        """One torch_geometric batch holding the neighbour graphs of all structures."""
        # MACE (and torch) load only in the process that evaluates or trains
        from mace import data as mace_data
        from mace.tools import torch_geometric

        keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})
        graphs = []
        with _default_dtype(self.dtype):  # from_config builds tensors in the default dtype
            for atoms in atoms_list:
                config = mace_data.config_from_atoms(
                    atoms, key_specification=keyspec, head_name=self.head
                )
                graphs.append(
                    mace_data.AtomicData.from_config(
                        config, z_table=self.z_table, cutoff=self.r_max, heads=self.heads
                    )
                )
        batch = torch_geometric.Batch.from_data_list(graphs)
        return batch if self.device == "cpu" else batch.to(self.device)

    def _run_member(self, model: torch.nn.Module, batch) -> tuple:
        """One member's energies, forces and stresses (NumPy, float64) on ``batch``."""
        # A fresh copy per member: MACE's forward replaces positions/shifts in the dict and
        # flags positions as requiring grad. Grad mode is per thread, so it is set here:
        # forces are gradients even if the caller disabled grad.
        data = batch.clone().to_dict()
        with torch.enable_grad():
            res = model(data, compute_stress=self.compute_stress, training=False)
        energy = res["energy"].detach().to("cpu", torch.float64).numpy()
        forces = res["forces"].detach().to("cpu", torch.float64).numpy()
        s = res.get("stress") if self.compute_stress else None
        stress = s.detach().to("cpu", torch.float64).numpy() if s is not None else None
        return energy, forces, stress

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None  # threads are not copied; a copy starts its own pool
        return state

    def _predict(self, atoms_list: Sequence[Atoms]) -> list[dict]:
        """Members' energies, forces, stresses for a list of structures (M passes)."""
        if not atoms_list:
            return []
        batch = self._batch(atoms_list)
        if self.member_threads > 1 and len(self.models) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.member_threads, "ensemble-member")
            outputs = list(self._pool.map(lambda m: self._run_member(m, batch), self.models))
        else:
            outputs = [self._run_member(m, batch) for m in self.models]
        self.n_forward_passes += len(self.models)
        energies = [o[0] for o in outputs]
        forces = [o[1] for o in outputs]
        stresses = [o[2] for o in outputs if o[2] is not None]
        e = np.stack(energies)  # (M, G)
        f = np.stack(forces)  # (M, N_total, 3)
        s_all = np.stack(stresses) if len(stresses) == len(self.models) else None
        ptr = batch["ptr"].cpu().numpy()
        out = []
        for g in range(len(atoms_list)):
            fg = f[:, ptr[g] : ptr[g + 1]]
            pred: dict[str, Any] = {
                "energy": float(e[:, g].mean()),
                "free_energy": float(e[:, g].mean()),
                "forces": fg.mean(axis=0),
                "member_energies": e[:, g].copy(),
                "member_forces": fg.copy(),
            }
            if s_all is not None:
                member_stress = np.array([full_3x3_to_voigt_6_stress(x) for x in s_all[:, g]])
                pred["stress"] = member_stress.mean(axis=0)
                pred["member_stress"] = member_stress
            out.append(pred)
        return out
