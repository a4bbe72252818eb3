"""Tests of the labelling stage: real calculators, real numbers.

EMT runs in float64, so its forces and stresses are checked against finite differences
tightly; CHGNet runs in float32 (about 7 significant digits), so its checks use a larger
step and a tolerance derived from that precision.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.units import Bohr, GPa, Hartree
from jobflow import Flow, OnMissing, Response, run_locally
from maggma.stores import MemoryStore
from monty.json import MontyDecoder, jsanitize
from pymatgen.io.ase import AseAtomsAdaptor

from active_mlip.core.frames import Frame
from active_mlip.makers.dft_runs import dft_single_point
from active_mlip.makers.labelling import (
    ASECalculatorLabeller,
    Atomate2Labeller,
    CHGNetLabeller,
    LabelMaker,
    build_dft_flow,
    gather_dft_labels,
    label_cache_key,
    labeller_from_dict,
    normalise_dft_output,
    validate_frames,
)
from active_mlip.stores.cache import ResultCache
from active_mlip.stores.job_store import StoreSettings, make_job_store
from active_mlip.workflows.materials import get_structure
from tests.makers.helpers_labelling import CountingEMT

HELPERS = "tests.makers.helpers_labelling"


def cu_frame(a: float = 3.6, rattle: float = 0.0, seed: int = 0, **info) -> Frame:
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    if rattle:
        atoms.rattle(stdev=rattle, seed=seed)
    return Frame.from_atoms(atoms, **info)


def cui_frame(rattle: float = 0.05, seed: int = 1) -> Frame:
    atoms = AseAtomsAdaptor.get_atoms(get_structure("CuI"))
    atoms.rattle(stdev=rattle, seed=seed)
    return Frame.from_atoms(atoms)


def displaced(frame: Frame, atom: int, axis: int, h: float) -> Frame:
    pos = np.array(frame.positions)
    pos[atom, axis] += h
    return frame.model_copy(update={"positions": pos.tolist()})


def strained(frame: Frame, axis: int, eps: float) -> Frame:
    """Homogeneous strain eps along one Cartesian axis (cell and positions)."""
    f = np.eye(3)
    f[axis, axis] += eps
    return frame.model_copy(
        update={
            "positions": (np.array(frame.positions) @ f.T).tolist(),
            "cell": (np.array(frame.cell) @ f.T).tolist(),
        }
    )


def store_at(path):
    return make_job_store(StoreSettings(local_path=path))


# -- CHGNet --------------------------------------------------------------------------------


def test_chgnet_forces_and_stress_match_finite_differences():
    labeller = CHGNetLabeller()
    frame = cui_frame()
    out = labeller.label_frame(frame)
    forces = np.array(out.forces)
    assert np.abs(forces).max() > 0.1  # rattled: the test is not 0 == 0
    # float32 energies of ~-25 eV carry ~3e-6 eV noise; over 2h = 0.02 Å that is
    # ~2e-4 eV/Å, and the h^2 truncation error is ~1e-3 eV/Å: tolerance 5e-3 eV/Å.
    h = 1e-2
    for atom, axis in [(0, 0), (3, 1), (6, 2)]:
        ep = labeller.label_frame(displaced(frame, atom, axis, h)).energy
        em = labeller.label_frame(displaced(frame, atom, axis, -h)).energy
        fd = -(ep - em) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, abs=5e-3)
    # Stress in eV/Å^3, ASE sign: sigma_xx = (1/V) dE/d(eps_xx).
    vol = abs(np.linalg.det(np.array(frame.cell)))
    eps = 5e-3
    ep = labeller.label_frame(strained(frame, 0, eps)).energy
    em = labeller.label_frame(strained(frame, 0, -eps)).energy
    fd_stress = (ep - em) / (2 * eps) / vol
    assert abs(fd_stress) > 1e-3  # sizeable, so sign and unit are really tested
    assert out.stress[0] == pytest.approx(fd_stress, rel=0.03)
    ident = labeller.identity()
    assert ident.is_dft is False and ident.name == "chgnet"
    assert out.info["labeller"] == ident.settings_hash


def test_chgnet_isolated_atom_energies_are_finite_and_distinct(capfd):
    labeller = CHGNetLabeller()
    e0 = labeller.isolated_atom_energies(["Cu", "I", "Cu"])
    assert set(e0) == {"Cu", "I"}
    assert all(np.isfinite(v) for v in e0.values())
    assert e0["Cu"] != e0["I"]
    # the lone atom is intended here: no "will likely go wrong" in the E0s job's log
    assert "isolated atom" not in capfd.readouterr().err
    # and frames labelled later still get CHGNet's warning
    converter = labeller.get_calculator().model.graph_converter
    assert converter.on_isolated_atoms == "warn"


# -- EMT through ASECalculatorLabeller -----------------------------------------------------


def test_emt_energy_of_fcc_cu_is_exactly_ases():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = EMT()
    expected = atoms.get_potential_energy()
    out = ASECalculatorLabeller().label_frame(cu_frame(3.6))
    assert out.energy == expected
    assert np.array_equal(np.array(out.stress), atoms.get_stress())


def test_emt_forces_match_finite_differences():
    labeller = ASECalculatorLabeller()
    frame = cu_frame(rattle=0.05, seed=3)
    forces = np.array(labeller.label_frame(frame).forces)
    assert np.abs(forces).max() > 0.05
    h = 1e-4  # float64: central differences good to ~1e-7 eV/Å
    for atom in range(frame.n_atoms):
        for axis in range(3):
            ep = labeller.label_frame(displaced(frame, atom, axis, h)).energy
            em = labeller.label_frame(displaced(frame, atom, axis, -h)).energy
            assert forces[atom, axis] == pytest.approx(-(ep - em) / (2 * h), abs=1e-6)


def test_emt_stress_sign_and_magnitude():
    labeller = ASECalculatorLabeller()
    # EMT's fcc Cu equilibrium is a ~ 3.59 Å: stretched -> tensile (positive in ASE's
    # convention), compressed -> negative.
    stretched = labeller.label_frame(cu_frame(3.70))
    compressed = labeller.label_frame(cu_frame(3.50))
    assert all(s > 0.005 for s in stretched.stress[:3])
    assert all(s < -0.005 for s in compressed.stress[:3])
    frame = cu_frame(3.70)
    vol = abs(np.linalg.det(np.array(frame.cell)))
    eps = 1e-5
    ep = labeller.label_frame(strained(frame, 2, eps)).energy
    em = labeller.label_frame(strained(frame, 2, -eps)).energy
    assert stretched.stress[2] == pytest.approx((ep - em) / (2 * eps) / vol, rel=1e-6)


def test_emt_isolated_atom_energy_matches_ase_directly():
    from ase import Atoms

    atoms = Atoms("Cu", positions=[[10, 10, 10]], cell=[20, 20, 20], pbc=True)
    atoms.calc = EMT()
    e0 = ASECalculatorLabeller().isolated_atom_energies(["Cu"])
    assert e0 == {"Cu": atoms.get_potential_energy()}
    with pytest.raises(ValueError, match="Fe"):
        ASECalculatorLabeller().isolated_atom_energies(["Fe"])
    with pytest.raises(NotImplementedError):
        Atomate2Labeller().isolated_atom_energies(["Si"])


# -- LabelMaker through a JobStore ---------------------------------------------------------


def test_labelled_frames_round_trip_through_the_store(tmp_path):
    frames = [cu_frame(rattle=0.05, seed=s, tag=s) for s in range(3)]
    labeller = ASECalculatorLabeller()
    store = store_at(tmp_path)
    job = LabelMaker(labeller=labeller).make(frames)
    run_locally(job, store=store, ensure_success=True, root_dir=tmp_path)
    out = store.get_output(job.uuid, load=True)
    assert out["n_requested"] == out["n_labelled"] == 3
    assert out["n_failed"] == out["n_reused"] == 0
    assert out["labeller"]["settings_hash"] == labeller.identity().settings_hash
    for f_in, stored in zip(frames, out["frames"], strict=True):
        stored = Frame.model_validate({k: v for k, v in stored.items() if k[0] != "@"})
        direct = labeller.label_frame(f_in)
        assert stored.energy == direct.energy
        assert np.array_equal(np.array(stored.forces), np.array(direct.forces))
        assert np.array_equal(np.array(stored.stress), np.array(direct.stress))
        assert stored.positions == f_in.positions
        assert stored.info["tag"] == f_in.info["tag"]  # info kept
        assert stored.info["labeller"] == labeller.identity().settings_hash
    # The job document holds a reference to the data store, not the frames.
    doc = store.docs_store.query_one({"uuid": job.uuid})
    assert not isinstance(doc["output"]["frames"], list)
    assert doc["output"]["frames"]["store"] == "data"


def test_failing_frame_is_recorded_and_others_labelled(tmp_path):
    frames = [
        cu_frame(rattle=0.03, seed=0),
        cu_frame(rattle=0.03, seed=1, fail="raise"),
        cu_frame(rattle=0.03, seed=2),
        cu_frame(rattle=0.03, seed=3, fail="nan"),
    ]
    store = store_at(tmp_path)
    labeller = ASECalculatorLabeller(calculator=f"{HELPERS}.FailingEMT")
    job = LabelMaker(labeller=labeller).make(frames)
    run_locally(job, store=store, ensure_success=True, root_dir=tmp_path)
    out = store.get_output(job.uuid, load=True)
    assert (out["n_requested"], out["n_labelled"], out["n_failed"]) == (4, 2, 2)
    fails = {f["index"]: f for f in out["failures"]}
    assert set(fails) == {1, 3}
    assert "SCF did not converge (simulated)" in fails[1]["reason"]
    assert "non-finite energy" in fails[3]["reason"]
    assert fails[1]["structure_hash"] == frames[1].structure_hash()
    assert [f["positions"] for f in out["frames"]] == [frames[0].positions, frames[2].positions]
    # failures are not cached: nothing under their keys
    cache = ResultCache(store.additional_stores["cache"])
    key = label_cache_key(frames[1], labeller.identity().settings_hash)
    assert cache.get(key) is None
    assert cache.get(label_cache_key(frames[0], labeller.identity().settings_hash)) is not None


def test_second_run_reuses_every_label_without_calculator_calls(tmp_path):
    frames = [cu_frame(rattle=0.04, seed=s) for s in range(4)]
    store = store_at(tmp_path)
    maker = LabelMaker(labeller=ASECalculatorLabeller(calculator=f"{HELPERS}.CountingEMT"))
    CountingEMT.calls = 0
    first = maker.make(frames)
    run_locally(first, store=store, ensure_success=True, root_dir=tmp_path)
    n_calls = CountingEMT.calls
    assert n_calls >= len(frames)
    second = maker.make([f.with_info(round=2) for f in frames])
    run_locally(second, store=store, ensure_success=True, root_dir=tmp_path)
    assert CountingEMT.calls == n_calls  # no calculator call at all
    a = store.get_output(first.uuid, load=True)
    b = store.get_output(second.uuid, load=True)
    assert a["n_reused"] == 0 and b["n_reused"] == b["n_labelled"] == len(frames)
    for fa, fb in zip(a["frames"], b["frames"], strict=True):
        assert fa["energy"] == fb["energy"] and fa["forces"] == fb["forces"]
        assert fb["info"]["round"] == 2  # the request's info, not the cached one


def test_label_maker_serialises_with_its_labeller():
    maker = LabelMaker(labeller=ASECalculatorLabeller(kwargs={"asap_cutoff": False}))
    job = maker.make([cu_frame()])
    back = MontyDecoder().process_decoded(jsanitize(job.as_dict(), strict=True))
    labeller = back.function.__self__.labeller
    assert isinstance(labeller, ASECalculatorLabeller)
    assert labeller.kwargs == {"asap_cutoff": False}
    assert job.config.expose_store is True
    assert labeller_from_dict({"kind": "atomate2", "code": "vasp"}).code == "vasp"


# -- bad input -----------------------------------------------------------------------------


def test_bad_input_is_rejected_before_any_work():
    emt = ASECalculatorLabeller()
    with pytest.raises(ValueError, match="empty batch"):
        validate_frames([], emt)
    molecule = cu_frame().model_copy(update={"pbc": [True, True, False]})
    with pytest.raises(ValueError, match="frame 1 is not periodic"):
        validate_frames([cu_frame(), molecule], emt)
    iron = Frame.from_atoms(bulk("Fe", "bcc", a=2.87))
    with pytest.raises(ValueError, match=r"frame 1 contains element\(s\) \['Fe'\]"):
        validate_frames([cu_frame(), iron], emt)
    empty = Frame(numbers=[], positions=[], cell=np.eye(3).tolist())
    with pytest.raises(ValueError, match="frame 0 has no atoms"):
        validate_frames([empty], emt)
    americium = Frame.from_atoms(bulk("Cu", "fcc", a=3.6)).model_copy(update={"numbers": [95]})
    with pytest.raises(ValueError, match="Am"):
        validate_frames([americium], CHGNetLabeller())
    validate_frames([americium, iron], Atomate2Labeller())  # DFT: no element limit
    with pytest.raises(ValueError, match="cannot import calculator"):
        validate_frames([cu_frame()], ASECalculatorLabeller(calculator="nosuchpkg.Calc"))
    with pytest.raises(ValueError, match="import path"):
        ASECalculatorLabeller(calculator="EMT")
    with pytest.raises(ValueError, match="device"):
        CHGNetLabeller(device="gpu")
    # The job itself validates before labelling anything.
    CountingEMT.calls = 0
    job = LabelMaker(labeller=ASECalculatorLabeller(calculator=f"{HELPERS}.CountingEMT")).make(
        [cu_frame(), iron]
    )
    store = make_job_store_memory()
    with pytest.raises(ValueError, match="Fe"):
        job.run(store)
    assert CountingEMT.calls == 0


def make_job_store_memory():
    from jobflow import JobStore

    store = JobStore(
        MemoryStore(), additional_stores={"data": MemoryStore(), "cache": MemoryStore()}
    )
    store.connect()
    return store


# -- atomate2 backends, without running a DFT code ------------------------------------------


def si_frames(n: int) -> list[Frame]:
    base = Frame.from_atoms(bulk("Si", "diamond", a=5.43, cubic=True))
    return [displaced(base, 0, 0, 0.01 * (i + 1)) for i in range(n)]


def test_cp2k_flow_has_one_static_job_per_uncached_frame():
    frames = si_frames(3)
    labeller = Atomate2Labeller(
        code="cp2k",
        input_set_kwargs={"user_input_settings": {"cutoff": 200}, "user_kpoints_settings": None},
    )
    store = MemoryStore()
    cache = ResultCache(store)
    # frame 1 is already labelled: only frames 0 and 2 get a DFT job
    cache.put(
        label_cache_key(frames[1], labeller.identity().settings_hash),
        "label",
        {"energy": -1.0, "forces": np.zeros((8, 3)).tolist(), "stress": None},
    )
    flow = build_dft_flow(frames, labeller, cache)
    assert isinstance(flow, Flow)
    statics, gather = flow.jobs[:-1], flow.jobs[-1]
    assert len(statics) == 2
    from atomate2.cp2k.jobs.core import StaticMaker

    for static, i in zip(statics, [0, 2], strict=True):
        # each single point is atomate2's StaticMaker run by dft_single_point
        assert static.function is dft_single_point.original
        maker, structure, code = static.function_args
        assert isinstance(maker, StaticMaker) and code == "cp2k"
        expected = AseAtomsAdaptor.get_structure(frames[i].to_atoms())
        assert structure == expected
        gen = maker.input_set_generator
        assert gen.user_input_settings["cutoff"] == 200
        assert gen.user_kpoints_settings is None
        over = gen.user_input_settings["override_default_params"]
        assert over["FORCE_EVAL"]["STRESS_TENSOR"] == "ANALYTICAL"
    assert gather.config.on_missing_references == OnMissing.NONE
    assert gather.config.expose_store is True
    assert flow.output.uuid == gather.uuid
    # the gather takes only energy/forces/stress references of each static job
    refs = {r.uuid for r in gather.input_references}
    assert refs == {s.uuid for s in statics}
    # all cached -> no DFT at all
    for i in (0, 2):
        cache.put(
            label_cache_key(frames[i], labeller.identity().settings_hash),
            "label",
            {"energy": -2.0, "forces": np.zeros((8, 3)).tolist(), "stress": None},
        )
    batch = build_dft_flow(frames, labeller, cache)
    assert batch.n_reused == batch.n_labelled == 3


def test_label_maker_job_replaces_itself_for_atomate2():
    job = LabelMaker(labeller=Atomate2Labeller(code="vasp")).make(si_frames(2))
    response = job.run(make_job_store_memory())
    assert isinstance(response, Response)
    assert isinstance(response.replace, Flow)
    # two statics + gather + jobflow's job that stores the flow output under our uuid
    assert len(response.replace.jobs) == 4
    assert response.replace.jobs[-1].uuid == job.uuid


def test_gather_normalises_units_and_records_failed_statics():
    frames = si_frames(3)
    labeller = Atomate2Labeller(code="cp2k")
    forces_au = np.zeros((8, 3))
    forces_au[0] = [0.01, -0.02, 0.0]
    good = {
        "uuid": "a",
        "energy": -846.69,
        "forces": forces_au.tolist(),
        "stress": [[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.5, 3.0]],
        "dir_name": "/scratch/a",
    }
    fizzled = {"uuid": "b", "energy": None, "forces": None, "stress": None, "dir_name": None}
    nan = {**good, "uuid": "c", "energy": float("nan")}
    batch = gather_dft_labels.original(
        frames, [None, None, None], [0, 1, 2], [good, fizzled, nan], labeller
    )
    assert (batch.n_labelled, batch.n_failed) == (1, 2)
    f = batch.frames[0]
    assert f.energy == -846.69
    assert f.forces[0] == pytest.approx([0.5142208619, -1.0284417238, 0.0], rel=1e-6)
    # CP2K prints pressure-like stress in GPa; ASE sign is the opposite, eV/Å^3
    assert f.stress == pytest.approx([-v / 160.21766208 for v in [1, 2, 3, 0.5, 0, 0]], rel=1e-9)
    assert f.info["dft_dir"] == "/scratch/a"
    reasons = {x.index: x.reason for x in batch.failures}
    assert "static job b produced no output" in reasons[1]
    assert "non-finite energy" in reasons[2]


def test_unit_normalisation_by_hand():
    # 1 Ha/Bohr = 27.211386245988 eV / 0.529177210903 Å = 51.42208619083232 eV/Å (CODATA
    # 2018). The factor used is pymatgen's (older CODATA, 4e-7 relative off), the one it
    # converted CP2K's energy with, so that forces stay the energy's derivative.
    from pymatgen.core.units import Ha_to_eV, bohr_to_ang

    ha_bohr = Ha_to_eV / bohr_to_ang
    assert ha_bohr == pytest.approx(51.42208619083232, rel=1e-6)
    assert Hartree / Bohr == pytest.approx(51.42208619083232, rel=1e-6)  # ASE's, too
    e, f, s = normalise_dft_output("cp2k", -10.0, [[1.0, 0.0, -2.0]], np.diag([1.0, 1, 1]))
    assert e == -10.0
    assert f.tolist() == [[ha_bohr, 0.0, -2 * ha_bohr]]
    # +1 GPa pressure (compressed) -> ASE stress -1 GPa = -1/160.21766208 eV/Å^3
    assert s == pytest.approx([-1 / 160.21766208] * 3 + [0, 0, 0], rel=1e-9)
    # VASP: forces eV/Å, stress kBar with pressure sign: 10 kBar = 1 GPa
    _, f, s = normalise_dft_output("vasp", -1.0, [[0.1, 0.2, 0.3]], [10.0, 0, 0, 0, 0, 0])
    assert f.tolist() == [[0.1, 0.2, 0.3]]
    assert s[0] == pytest.approx(-GPa)
    with pytest.raises(ValueError, match="qe"):
        normalise_dft_output("qe", 0.0, None, None)
