"""Tiny models shared by the tests: random MACE members and synthetic members.

Every member here follows MACE's forward interface, ``model(data: dict, compute_stress=...,
training=...) -> {"energy": (G,), "forces": (N, 3), "stress": (G, 3, 3) | None}``, and carries
the ``atomic_numbers`` and ``r_max`` buffers and the ``heads`` list that
:class:`~active_mlip.makers.ensemble.EnsembleCalculator` reads,
so any mix of them can form an ensemble.

- :func:`make_mace_model`: a small randomly initialised ``ScaleShiftMACE`` (fast on CPU).
- :func:`write_model`: save a member the way MACE does, so ``MACECalculator`` loads it.
- :func:`make_ensemble_document`: an
  :class:`~active_mlip.makers.schemas.EnsembleDocument` holding the
  members as verified :class:`~active_mlip.core.blobs.Blob` model files.
- :class:`OffsetModel`: another member plus a constant energy (forces and stress unchanged).
- :class:`PairModel`: a smooth pair potential; attractive settings collapse a crystal.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from active_mlip.core.blobs import Blob
from active_mlip.core.frames import Frame
from active_mlip.makers.schemas import EnsembleDocument, MemberDocument


def make_mace_model(
    seed: int,
    atomic_numbers: Sequence[int] = (29, 53),
    r_max: float = 4.0,
    channels: int = 8,
    dtype: torch.dtype = torch.float64,
    e0s: Sequence[float] | None = None,
) -> torch.nn.Module:
    """Build a small randomly initialised MACE model (max_L=0, correlation 2, 2 interactions).

    Parameters
    ----------
    seed
        Torch seed of the random initialisation; different seeds give different members.
    atomic_numbers
        Elements the model knows, in one-hot order.
    r_max
        Cut-off radius (Å).
    channels
        Number of scalar channels (``{channels}x0e`` hidden irreps).
    dtype
        Parameter dtype; the global default dtype is left unchanged.
    e0s
        Isolated-atom energies (eV) in the order of ``atomic_numbers``; zeros by default.
    """
    import mace  # noqa: F401  (first: it lets torch.load read e3nn's pickled constants)
    from e3nn import o3
    from mace import modules

    z = [int(x) for x in atomic_numbers]
    e0 = np.zeros(len(z)) if e0s is None else np.asarray(e0s, dtype=float)
    if e0.shape != (len(z),):
        raise ValueError(f"e0s has shape {e0.shape}, expected ({len(z)},)")
    previous = torch.get_default_dtype()
    try:
        # Build in the target dtype so buffers made with the default dtype (r_max) match.
        torch.set_default_dtype(dtype)
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=float(r_max),
            num_bessel=6,
            num_polynomial_cutoff=5,
            max_ell=1,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=2,
            num_elements=len(z),
            hidden_irreps=o3.Irreps(f"{channels}x0e"),
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=e0,
            avg_num_neighbors=8.0,
            atomic_numbers=z,
            correlation=2,
            gate=torch.nn.functional.silu,
            radial_MLP=[16, 16],
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def write_model(model: torch.nn.Module, path: str | Path) -> Path:
    """Save a whole model with ``torch.save`` (the format ``MACECalculator`` loads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def make_ensemble_document(
    models: Sequence[torch.nn.Module],
    elements: Sequence[str] | None = None,
    r_max: float = 4.0,
    e0s: dict[str, float] | None = None,
    n_seed: int = 1,
    reference_frame: Frame | None = None,
) -> EnsembleDocument:
    """Wrap members in an :class:`EnsembleDocument` with their model files as blobs.

    Parameters
    ----------
    models
        The members (any module following MACE's forward interface; must be picklable).
    elements
        Chemical symbols; taken from the first member's ``atomic_numbers`` when omitted.
    r_max
        Cut-off radius recorded in the document (Å).
    e0s
        Isolated-atom energies per element; zeros when omitted.
    n_seed
        Seeds per subset; ``len(models)`` must be divisible by it.
    reference_frame
        Ground-state frame each member's energy is referenced to for the uncertainty.
    """
    if len(models) % n_seed:
        raise ValueError(f"{len(models)} members cannot be split into n_seed={n_seed}")
    if elements is None:
        elements = [chemical_symbols[int(z)] for z in models[0].atomic_numbers]
    members = []
    for i, model in enumerate(models):
        buffer = io.BytesIO()
        torch.save(model, buffer)
        members.append(
            MemberDocument(
                index=i,
                subset=i // n_seed,
                seed=i % n_seed,
                model_file=Blob.from_bytes(buffer.getvalue(), f"member_{i}.model"),
                n_train=0,
                n_valid=0,
            )
        )
    return EnsembleDocument(
        members=members,
        n_sub=len(models) // n_seed,
        n_seed=n_seed,
        elements=list(elements),
        e0s=dict(e0s) if e0s is not None else {el: 0.0 for el in elements},
        r_max=float(r_max),
        reference_frame=reference_frame,
    )


class OffsetModel(torch.nn.Module):
    """A member equal to ``base`` plus a constant energy ``offset_eV`` per structure.

    Forces and stress are those of ``base``, so an ensemble of offsets has a known
    energy spread and zero force uncertainty.
    """

    def __init__(self, base: torch.nn.Module, offset_eV: float):
        super().__init__()
        self.base = base
        self.offset_eV = float(offset_eV)
        self.register_buffer("atomic_numbers", base.atomic_numbers.clone())
        self.register_buffer("r_max", base.r_max.clone())
        self.heads = list(getattr(base, "heads", ["Default"]))

    def forward(self, data: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor | None]:
        out = dict(self.base(data, **kwargs))
        out["energy"] = out["energy"] + self.offset_eV
        return out


class PairModel(torch.nn.Module):
    """A smooth pair potential on MACE's graph, for tests that need known physics.

    ``E = ½ Σ_{i≠j, r_ij<r_max} strength · (r_ij − r0)² · f_c(r_ij)`` with the cosine cut-off
    ``f_c(r) = ½(cos(π r / r_max) + 1)`` (so E and F are continuous when neighbours enter), plus
    ``e0`` per atom. Forces (and stress through MACE's symmetric-displacement trick) come from
    autograd, exactly like MACE.

    ``strength > 0``: springs with rest length ``r0``, a stable solid. ``strength < 0`` with
    ``r0 >= r_max``: every pair inside the cut-off is pulled together (energy falls
    monotonically as r -> 0), so MD collapses atoms onto each other — the blow-up case.
    """

    def __init__(
        self,
        strength: float = 1.0,
        r0: float = 2.6,
        r_max: float = 4.0,
        atomic_numbers: Sequence[int] = (29, 53),
        e0: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        self.register_buffer("strength", torch.tensor(float(strength), dtype=dtype))
        self.register_buffer("r0", torch.tensor(float(r0), dtype=dtype))
        self.register_buffer("r_max", torch.tensor(float(r_max), dtype=dtype))
        self.register_buffer("e0", torch.tensor(float(e0), dtype=dtype))
        self.register_buffer(
            "atomic_numbers", torch.tensor([int(z) for z in atomic_numbers], dtype=torch.int64)
        )
        self.heads = ["Default"]

    def forward(
        self,
        data: dict[str, torch.Tensor],
        training: bool = False,
        compute_force: bool = True,
        compute_stress: bool = False,
        **kwargs,
    ) -> dict[str, torch.Tensor | None]:
        from mace.modules.utils import get_outputs, prepare_graph

        ctx = prepare_graph(data, compute_stress=compute_stress)
        r = ctx.lengths.squeeze(-1)
        fc = 0.5 * (torch.cos(torch.pi * r / self.r_max) + 1.0) * (r < self.r_max)
        pair = 0.5 * self.strength * (r - self.r0) ** 2 * fc  # ½: each pair is two edges
        graph_of_edge = data["batch"][data["edge_index"][0]]
        energy = torch.zeros(ctx.num_graphs, dtype=r.dtype, device=r.device)
        energy = energy.index_add(0, graph_of_edge, pair)
        energy = energy + self.e0 * torch.bincount(data["batch"], minlength=ctx.num_graphs)
        forces, _, stress, _, _ = get_outputs(
            energy=energy,
            positions=ctx.positions,
            cell=ctx.cell,
            displacement=ctx.displacement,
            training=training,
            compute_force=compute_force,
            compute_virials=False,
            compute_stress=compute_stress,
        )
        return {"energy": energy, "forces": forces, "stress": stress}
