"""Initial data: supercell force constants, harmonic stochastic sampling, aiMD import.

The paper starts the loop from either an ab initio MD trajectory or DFT single points
on configurations drawn from the *harmonic* canonical distribution at the target
temperature. The harmonic distribution needs the supercell force constants Φ, which
are obtained by finite displacements (phonopy) labelled by the same labeller as
everything else -- so a DFT labeller gives DFT force constants, one job per single
point. Φ is also what the anharmonicity score σ^A is measured against.

Units are ASE's throughout: eV, Å, amu, and ASE's time unit (Å·sqrt(amu/eV)), so
ω² from the mass-weighted force constants is in eV/(Å²·amu) and velocities come
out in Å per ASE time unit, ready for ``atoms.set_velocities``.

Over 500 lines on purpose: force constants, their unstable modes and the harmonic
sampling built on them are one derivation; the aiMD import is the other way in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import units
from ase.data import atomic_masses
from jobflow import Flow, Maker, job
from pydantic import Field

from active_mlip.core.documents import Document
from active_mlip.core.frames import Frame, read_images
from active_mlip.makers.labelling import CHGNetLabeller, LabelMaker
from active_mlip.makers.schemas import DATA_FIELDS, LabelledBatch

logger = logging.getLogger(__name__)

#: Number of modes of a periodic supercell that are rigid translations (ω = 0).
N_ACOUSTIC = 3
#: info key that ties a displaced frame to its phonopy displacement (-1 = undisplaced).
FC_INDEX_KEY = "fc_displacement"
#: A mode with ω² <= this fraction of max |ω²| counts as unstable (or zero).
UNSTABLE_RTOL = 1e-8
#: THz per unit of ω in ASE units (1/ASE time): ω/(2π) with 1 ASE time = 1/units.fs fs.
THZ_PER_ASE_OMEGA = units.fs * 1e3 / (2 * np.pi)


class _FrameLabeller(Protocol):
    def label_frame(self, frame: Frame) -> Frame: ...


# -- documents ---------------------------------------------------------------------------
class UnstableMode(Document):
    """A normal mode of the supercell with ω² <= 0: R0 is not a minimum along it."""

    index: int = Field(description="Mode index, ω² ascending (as in :func:`normal_modes`).")
    omega2: float = Field(description="ω² (eV/(Å²·amu)); <= 0.")
    frequency_thz: float = Field(
        description="Frequency (THz), negative for imaginary: -sqrt(|ω²|)/(2π), phonopy's sign."
    )
    action: str = Field("skipped", description="What harmonic sampling did with the mode.")


class ForceConstantsDocument(Document):
    """Force constants of a supercell (the ground state), with its labelled reference."""

    reference: Frame = Field(description="Undisplaced supercell with its label (R0, E0).")
    force_constants: list[list[float]] = Field(
        repr=False, description="Φ, shape (3N, 3N), eV/Å^2; F = -Φ u with u flattened (N*3)."
    )
    displacement: float = Field(description="Finite displacement (Å).")
    labeller_hash: str = Field("", description="settings_hash of the labeller used.")
    n_displacements: int = Field(0, description="Symmetry-reduced displaced supercells.")
    symmetrized: bool = True
    max_row_sum: float = Field(
        0.0, description="max |Σ_j Φ_ij| (eV/Å^2): violation of the acoustic sum rule."
    )
    unstable_modes: list[UnstableMode] = Field(
        default_factory=list,
        description="Non-translational modes with ω² <= 0 (R0 is not a minimum along them).",
    )

    def fc_array(self) -> np.ndarray:
        """Φ as a float array of shape (3N, 3N)."""
        fc = np.asarray(self.force_constants, dtype=float)
        n3 = 3 * self.reference.n_atoms
        if fc.shape != (n3, n3):
            raise ValueError(f"force constants have shape {fc.shape}, expected ({n3}, {n3})")
        return fc


class DisplacementsDocument(Document):
    """Finite-displacement supercells (plus the undisplaced one) to be labelled."""

    frames: list[Frame] = Field(description="Undisplaced supercell first, then the displaced.")
    dataset: dict[str, Any] = Field(description="phonopy displacement dataset (JSON form).")
    displacement: float


class HarmonicSamplesDocument(Document):
    """Configurations drawn from the harmonic canonical distribution (unlabelled)."""

    frames: list[Frame]
    temperature: float
    n_samples: int
    seed: int
    quantum: bool = False
    skipped_modes: list[UnstableMode] = Field(
        default_factory=list, description="Unstable modes the samples do not move along."
    )


# -- phonopy helpers -----------------------------------------------------------------------
def _phonopy(supercell: Frame, symprec: float):
    """Phonopy object whose *unit cell is our supercell*, so its atom order is ours."""
    # phonopy loads only where force constants are computed
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    if not all(supercell.pbc):
        raise ValueError("force constants need a supercell periodic in all three directions")
    unit = PhonopyAtoms(
        numbers=supercell.numbers,
        cell=np.asarray(supercell.cell, dtype=float),
        positions=np.asarray(supercell.positions, dtype=float),
    )
    ph = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int), primitive_matrix="P", symprec=symprec)
    if list(ph.supercell.numbers) != list(supercell.numbers):
        raise RuntimeError("phonopy reordered the supercell atoms; cannot map forces back")
    return ph


def _dataset_to_json(dataset: dict[str, Any]) -> dict[str, Any]:
    return {
        "natom": int(dataset["natom"]),
        "first_atoms": [
            {"number": int(d["number"]), "displacement": np.asarray(d["displacement"]).tolist()}
            for d in dataset["first_atoms"]
        ],
    }


def displacement_frames(
    supercell: Frame, displacement: float = 0.01, symprec: float = 1e-5
) -> DisplacementsDocument:
    """Symmetry-reduced finite displacements of ``supercell`` as unlabelled frames.

    The first frame is the undisplaced supercell (its energy is the reference energy
    and its residual forces are subtracted from the displaced ones). Every frame carries
    ``info[FC_INDEX_KEY]`` (-1 for the undisplaced one) so labels can be matched back
    whatever order or subset a labelling batch returns.
    """
    if not displacement > 0:
        raise ValueError(f"displacement must be > 0 Å, got {displacement}")
    ph = _phonopy(supercell, symprec)
    ph.generate_displacements(distance=displacement, is_plusminus="auto")
    dataset = _dataset_to_json(ph.dataset)
    r0 = np.asarray(supercell.positions, dtype=float)
    frames = [supercell.unlabelled(**{FC_INDEX_KEY: -1})]
    for k, d in enumerate(dataset["first_atoms"]):
        pos = r0.copy()
        pos[d["number"]] += d["displacement"]
        frames.append(
            supercell.unlabelled(**{FC_INDEX_KEY: k}).model_copy(update={"positions": pos.tolist()})
        )
    return DisplacementsDocument(frames=frames, dataset=dataset, displacement=displacement)


def force_constants_from_frames(
    supercell: Frame,
    dataset: dict[str, Any],
    labelled: list[Frame],
    displacement: float,
    labeller_hash: str = "",
    symprec: float = 1e-5,
    symmetrize: bool = True,
) -> ForceConstantsDocument:
    """Force constants from labelled displacement frames (matched by ``info[FC_INDEX_KEY]``).

    Raises
    ------
    ValueError
        If the undisplaced frame or any displaced frame has no label.
    """
    by_index = {f.info.get(FC_INDEX_KEY): f for f in labelled if f.labelled}
    n_disp = len(dataset["first_atoms"])
    missing = [k for k in range(-1, n_disp) if k not in by_index]
    if missing:
        raise ValueError(
            f"force constants need every displacement labelled; missing {missing} "
            f"(-1 = undisplaced supercell) of {n_disp} displacements"
        )
    ref = by_index[-1]
    f0 = np.asarray(ref.forces, dtype=float)
    # Subtract the residual forces of the undisplaced cell: removes the first-order error
    # of a supercell that is not exactly at the labeller's minimum.
    forces = np.array([np.asarray(by_index[k].forces, dtype=float) - f0 for k in range(n_disp)])

    ph = _phonopy(supercell, symprec)
    ph.dataset = {
        "natom": dataset["natom"],
        "first_atoms": [
            {"number": d["number"], "displacement": np.asarray(d["displacement"], dtype=float)}
            for d in dataset["first_atoms"]
        ],
    }
    ph.forces = forces
    ph.produce_force_constants(show_drift=False)
    if symmetrize:
        ph.symmetrize_force_constants(show_drift=False)
    fc4 = np.asarray(ph.force_constants)  # (N, N, 3, 3): Φ[i, j, a, b]
    n = supercell.n_atoms
    fc = fc4.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    if symmetrize:
        fc = 0.5 * (fc + fc.T)
    reference = supercell.model_copy(
        update={"energy": ref.energy, "forces": ref.forces, "stress": ref.stress}, deep=True
    )
    reference.info.pop(FC_INDEX_KEY, None)
    row_sum = np.abs(fc.reshape(3 * n, n, 3).sum(axis=1)).max()
    doc = ForceConstantsDocument(
        reference=reference,
        force_constants=fc.tolist(),
        displacement=displacement,
        labeller_hash=labeller_hash or str(ref.info.get("labeller", "")),
        n_displacements=n_disp,
        symmetrized=symmetrize,
        max_row_sum=float(row_sum),
    )
    doc.unstable_modes = unstable_modes(doc)
    if doc.unstable_modes:
        logger.warning(
            "force constants: %d unstable modes (ω² <= 0), lowest %.3g THz: the reference "
            "is not a minimum of the labeller's potential",
            len(doc.unstable_modes),
            doc.unstable_modes[0].frequency_thz,
        )
    return doc


def compute_force_constants(
    supercell: Frame, labeller: _FrameLabeller, displacement: float = 0.01, symprec: float = 1e-5
) -> ForceConstantsDocument:
    """Force constants in-process with any backend that has ``label_frame`` (tests, benchmarks)."""
    disp = displacement_frames(supercell, displacement, symprec)
    labelled = [labeller.label_frame(f) for f in disp.frames]
    return force_constants_from_frames(supercell, disp.dataset, labelled, displacement, "", symprec)


# -- jobs ----------------------------------------------------------------------------------
@job(data=DATA_FIELDS)
def generate_displacements(
    supercell: Frame, displacement: float = 0.01, symprec: float = 1e-5
) -> DisplacementsDocument:
    """Job form of :func:`displacement_frames`."""
    return displacement_frames(supercell, displacement, symprec)


@job(data=DATA_FIELDS)
def produce_force_constants(
    supercell: Frame,
    displacements: DisplacementsDocument,
    batch: LabelledBatch,
    symprec: float = 1e-5,
    symmetrize: bool = True,
) -> ForceConstantsDocument:
    """Gather the labelled displacements into a :class:`ForceConstantsDocument`."""
    if batch.failures:
        reasons = "; ".join(f"#{f.index}: {f.reason}" for f in batch.failures[:3])
        raise ValueError(f"{batch.n_failed} displacement single points failed: {reasons}")
    return force_constants_from_frames(
        supercell,
        displacements.dataset,
        batch.frames,
        displacements.displacement,
        batch.labeller.settings_hash,
        symprec,
        symmetrize,
    )


@dataclass
class ForceConstantsMaker(Maker):
    """Supercell force constants by phonopy finite displacements labelled by ``labeller``.

    Parameters
    ----------
    name
        Flow name.
    labeller
        Any labeller of :mod:`active_mlip.makers.labelling`; ``None`` means the CHGNet stand-in.
    displacement
        Finite displacement (Å).
    symprec
        Symmetry tolerance for phonopy (Å).
    symmetrize
        Impose the acoustic sum rule and Φ = Φᵀ.
    """

    name: str = "force constants"
    labeller: Any = None
    displacement: float = 0.01
    symprec: float = 1e-5
    symmetrize: bool = True

    def __post_init__(self) -> None:
        if not self.displacement > 0:
            raise ValueError(f"displacement must be > 0 Å, got {self.displacement}")

    def make(self, supercell: Frame, labeller: Any = None) -> Flow:
        """Flow: displacements -> one single point per frame -> force constants.

        Parameters
        ----------
        supercell
            The ground-state supercell (e.g. relaxed with the labeller).
        labeller
            Overrides ``self.labeller`` when given.
        """

        labeller = labeller or self.labeller or CHGNetLabeller()
        label_maker = LabelMaker(labeller=labeller)
        if isinstance(supercell, Frame):  # may be an OutputReference at build time
            label_maker.validate([supercell])  # unsupported elements fail before any job
        disp = generate_displacements(supercell, self.displacement, self.symprec)
        disp.name = f"{self.name}: displacements"
        label = label_maker.make(disp.output.frames)
        fc = produce_force_constants(
            supercell, disp.output, label.output, self.symprec, self.symmetrize
        )
        fc.name = f"{self.name}: produce"
        return Flow([disp, label, fc], output=fc.output, name=self.name)


# -- harmonic sampling ---------------------------------------------------------------------
def normal_modes(fc_doc: ForceConstantsDocument) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ω² (eV/(Å²·amu)), mass-weighted eigenvectors (columns) and masses per coordinate.

    Eigen-decomposition of D = M^-1/2 Φ M^-1/2, eigenvalues ascending.
    """
    fc = fc_doc.fc_array()
    masses = np.repeat(atomic_masses[np.asarray(fc_doc.reference.numbers)], 3)
    inv_sqrt_m = 1.0 / np.sqrt(masses)
    dyn = fc * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    w2, vecs = np.linalg.eigh(0.5 * (dyn + dyn.T))
    return w2, vecs, masses


def _unstable_threshold(w2: np.ndarray) -> float:
    """ω² at or below which a mode is unstable (or zero): relative to the stiffest mode."""
    return UNSTABLE_RTOL * max(float(np.abs(w2).max()), 1e-12)


def frequency_thz(omega2: float | np.ndarray) -> float | np.ndarray:
    """Frequency (THz) from ω² (eV/(Å²·amu)); negative for ω² < 0 (imaginary), as phonopy."""
    w2 = np.asarray(omega2, dtype=float)
    f = np.sign(w2) * np.sqrt(np.abs(w2)) * THZ_PER_ASE_OMEGA
    return float(f) if f.ndim == 0 else f


def acoustic_modes(vecs: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Indices of the 3 modes closest to rigid translations (sorted).

    A mode with ω² < 0 sorts *below* the three ω² ≈ 0 translations, so "the lowest three"
    would mistake the most unstable modes for translations; the overlap with the
    mass-weighted translations does not.
    """
    sqrt_m = np.sqrt(masses).reshape(-1, 3)
    trans = np.zeros((masses.size, 3))
    for a in range(3):
        t = np.zeros_like(sqrt_m)
        t[:, a] = sqrt_m[:, a]
        trans[:, a] = t.ravel() / np.linalg.norm(t)
    overlap = ((trans.T @ vecs) ** 2).sum(axis=0)
    return np.sort(np.argsort(-overlap, kind="stable")[:N_ACOUSTIC])


def unstable_modes(fc_doc: ForceConstantsDocument) -> list[UnstableMode]:
    """Modes other than the 3 translations with ω² <= the threshold of :func:`harmonic_samples`.

    They mean R0 is not a minimum of the labeller's potential (a saddle point).
    Harmonic sampling skips them, so the samples hold no displacement along them.
    """
    w2, vecs, masses = normal_modes(fc_doc)
    is_unstable = w2 <= _unstable_threshold(w2)
    is_unstable[acoustic_modes(vecs, masses)] = False
    return [
        UnstableMode(index=int(k), omega2=float(w2[k]), frequency_thz=frequency_thz(w2[k]))
        for k in np.flatnonzero(is_unstable)
    ]


def harmonic_samples(
    fc_doc: ForceConstantsDocument,
    temperature: float,
    n: int,
    seed: int,
    quantum: bool = False,
) -> list[Frame]:
    """Draw configurations from the harmonic canonical distribution at ``temperature``.

    Each of the 3N-3 optical/acoustic-nonzero normal modes s gets an amplitude
    q_s ~ N(0, kT/ω_s²) and a mass-weighted velocity q̇_s ~ N(0, kT); the 3 rigid
    translations (the lowest ω²) are skipped, as are unstable modes (ω² <= 0, logged).
    So the harmonic potential energy and the kinetic energy each average (3N-3)/2·kT,
    the centre of mass does not move, and ASE's ``get_temperature`` (which counts 3N
    degrees of freedom) averages (3N-3)/(3N)·T. :func:`unstable_modes` lists the
    skipped unstable modes.

    Parameters
    ----------
    fc_doc
        Force constants and the reference (equilibrium) supercell.
    temperature
        Kelvin, > 0.
    n
        Number of samples, >= 1.
    seed
        Sample i depends only on (seed, i), so asking for more samples keeps the first ones.
    quantum
        Use the quantum (zero-point) variance ħ/(2ω)·coth(ħω/2kT) instead of kT/ω².

    Returns
    -------
    list[Frame]
        Unlabelled frames; ``info`` holds ``temperature``, ``seed``, ``sample``,
        ``velocities`` (N×3, Å/ASE time), ``harmonic_energy`` (eV), ``source="harmonic"``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    if n < 1:
        raise ValueError(f"number of samples must be >= 1, got {n}")
    w2, vecs, masses = normal_modes(fc_doc)
    keep = np.zeros_like(w2, dtype=bool)
    keep[N_ACOUSTIC:] = True
    unstable = keep & (w2 <= _unstable_threshold(w2))
    if unstable.any():
        logger.warning(
            "harmonic sampling: %d unstable modes (ω² <= 0) skipped; min ω² = %.3g eV/(Å² amu)",
            int(unstable.sum()),
            float(w2[unstable].min()),
        )
        keep &= ~unstable
    w2k = w2[keep]
    modes = vecs[:, keep]
    kt = units.kB * temperature
    if quantum:
        hbar = units._hbar * units.J * units.s  # eV · ASE time
        w = np.sqrt(w2k)
        x = hbar * w / (2 * kt)
        var_q = hbar / (2 * w) / np.tanh(x)
        var_v = w2k * var_q
    else:
        var_q = kt / w2k
        var_v = np.full_like(w2k, kt)
    inv_sqrt_m = 1.0 / np.sqrt(masses)
    r0 = np.asarray(fc_doc.reference.positions, dtype=float)
    fc = fc_doc.fc_array()
    base = fc_doc.reference.unlabelled()
    base.info.pop("labeller", None)  # samples are unlabelled: no labeller provenance
    frames = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        q = rng.standard_normal(w2k.size) * np.sqrt(var_q)
        qdot = rng.standard_normal(w2k.size) * np.sqrt(var_v)
        u = inv_sqrt_m * (modes @ q)
        v = inv_sqrt_m * (modes @ qdot)
        frames.append(
            base.model_copy(
                update={
                    "positions": (r0 + u.reshape(-1, 3)).tolist(),
                    "info": {
                        **base.info,
                        "source": "harmonic",
                        "temperature": float(temperature),
                        "seed": int(seed),
                        "sample": i,
                        "quantum": quantum,
                        "harmonic_energy": float(0.5 * u @ fc @ u),
                        "velocities": v.reshape(-1, 3).tolist(),
                    },
                },
                deep=True,
            )
        )
    return frames


@dataclass
class HarmonicSamplingMaker(Maker):
    """Job wrapper of :func:`harmonic_samples`; output ``.frames`` feeds a LabelMaker."""

    name: str = "harmonic sampling"
    quantum: bool = False

    @job(data=DATA_FIELDS)
    def make(
        self, fc_doc: ForceConstantsDocument, temperature: float, n_samples: int, seed: int
    ) -> HarmonicSamplesDocument:
        """Draw ``n_samples`` harmonic configurations at ``temperature`` (K)."""
        frames = harmonic_samples(fc_doc, temperature, n_samples, seed, self.quantum)
        return HarmonicSamplesDocument(
            frames=frames,
            temperature=temperature,
            n_samples=n_samples,
            seed=seed,
            quantum=self.quantum,
            skipped_modes=unstable_modes(fc_doc),
        )


# -- aiMD import ---------------------------------------------------------------------------
def import_trajectory(
    path: str | Path, every: int = 1, max_frames: int | None = None
) -> list[Frame]:
    """Read a labelled aiMD trajectory (extxyz, ASE .traj, anything ASE reads with labels).

    Parameters
    ----------
    path
        Trajectory file.
    every
        Keep every ``every``-th frame (>= 1).
    max_frames
        Keep at most this many frames (after thinning); ``None`` keeps all.

    Returns
    -------
    list[Frame]
        Labelled frames with ``info`` ``source="aimd"``, ``aimd_index`` (index in the
        file) and ``velocities`` when the file has them.

    Raises
    ------
    ValueError
        Missing/unreadable/empty file, bad ``every``/``max_frames``, or a frame without
        energy or forces (naming its index).
    """

    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    images = read_images(path, ":", what="trajectory")
    indices = list(range(0, len(images), every))
    if max_frames is not None:
        indices = indices[:max_frames]
    frames = []
    for k in indices:
        atoms = images[k]
        info: dict[str, Any] = {"source": "aimd", "aimd_index": k}
        if atoms.has("momenta"):
            info["velocities"] = atoms.get_velocities().tolist()
        try:
            frame = Frame.from_atoms(atoms, **info)
        except Exception as exc:
            raise ValueError(f"{str(path)!r}, frame {k}: cannot read labels ({exc})") from exc
        if not frame.labelled:
            what = "energy" if frame.energy is None else "forces"
            raise ValueError(
                f"{str(path)!r}, frame {k} has no {what}: an aiMD trajectory must carry "
                "energies and forces for every frame"
            )
        frames.append(frame)
    return frames
