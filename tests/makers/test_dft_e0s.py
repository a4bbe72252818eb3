"""E0s of a DFT labeller: isolated-atom jobs, their cache, their routing and their errors.

No DFT code runs here: the jobs are built and inspected, the gather is called on made-up
results. The real CP2K run is in tests/workflows/test_dft_loop.py.
"""

from __future__ import annotations

import pytest
from jobflow import Flow, JobStore, OnMissing, Response
from maggma.stores import MemoryStore

from active_mlip.makers.dft_e0s import (
    CACHE_KIND,
    E0sDocument,
    IsolatedAtomEnergyMaker,
    IsolatedAtomSettings,
    e0_cache_key,
    gather_e0s,
    isolated_atom_labeller,
)
from active_mlip.makers.labelling import Atomate2Labeller
from active_mlip.stores.cache import ResultCache
from active_mlip.workflows.active_learning import ActiveLearningMaker
from active_mlip.workflows.materials import get_structure
from active_mlip.workflows.settings import ActiveLearningSettings

SETTINGS = IsolatedAtomSettings(box=12.0)


def cp2k_labeller() -> Atomate2Labeller:
    return Atomate2Labeller(
        code="cp2k",
        input_set_kwargs={
            "user_input_settings": {"cutoff": 150, "spin_polarized": False},
            "user_kpoints_settings": {"reciprocal_density": 64},
        },
    )


def memory_store() -> JobStore:
    store = JobStore(
        MemoryStore(), additional_stores={"data": MemoryStore(), "cache": MemoryStore()}
    )
    store.connect()
    return store


def test_the_lone_atom_runs_the_labellers_settings_spin_polarised_at_gamma():
    labeller = cp2k_labeller()
    atom = isolated_atom_labeller(labeller)
    uis = atom.input_set_kwargs["user_input_settings"]
    assert uis == {"cutoff": 150, "spin_polarized": True}  # the labeller's cutoff, kept
    assert atom.input_set_kwargs["user_kpoints_settings"] is None  # Γ point
    assert atom.compute_stress is False and atom.code == "cp2k"
    assert labeller.input_set_kwargs["user_input_settings"]["spin_polarized"] is False  # a copy
    gen = atom.static_maker().input_set_generator
    assert gen.user_input_settings["cutoff"] == 150 and gen.user_kpoints_settings is None


def test_a_vasp_lone_atom_is_spin_polarised_at_gamma_too():
    labeller = Atomate2Labeller(
        code="vasp", input_set_kwargs={"user_incar_settings": {"ENCUT": 400, "ISPIN": 1}}
    )
    gen = isolated_atom_labeller(labeller).static_maker().input_set_generator
    assert gen.user_incar_settings["ISPIN"] == 2 and gen.user_incar_settings["ENCUT"] == 400
    assert [list(k) for k in gen.user_kpoints_settings.kpts] == [[1, 1, 1]]


def test_cached_e0s_need_no_job_and_missing_ones_one_job_each():
    labeller = cp2k_labeller()
    store = memory_store()
    cache = ResultCache(store.additional_stores["cache"])
    h = labeller.identity().settings_hash
    cache.put(e0_cache_key("Cu", h, SETTINGS), CACHE_KIND, {"element": "Cu", "energy": -1306.1})
    maker = IsolatedAtomEnergyMaker(labeller=labeller, settings=SETTINGS)
    # I is missing: one single point for I (not Cu) and a gather
    response = maker.make(["Cu", "I", "Cu"]).run(store)
    assert isinstance(response, Response) and isinstance(response.replace, Flow)
    jobs = response.replace.jobs
    names = [j.name for j in jobs]
    assert names[:2] == ["isolated I", "gather E0s"]
    static = jobs[0]
    maker_arg, structure, code = static.function_args
    assert code == "cp2k" and [s.symbol for s in structure.species] == ["I"]
    assert structure.lattice.abc == (12.0, 12.0, 12.0)
    assert maker_arg.input_set_generator.user_input_settings["spin_polarized"] is True
    assert jobs[1].config.on_missing_references == OnMissing.NONE
    # every element cached (another box is another key): the document, no DFT
    cache.put(e0_cache_key("I", h, SETTINGS), CACHE_KIND, {"element": "I", "energy": -310.8})
    out = maker.make(["Cu", "I"]).run(store).output
    assert isinstance(out, E0sDocument)
    assert out.energies == {"Cu": -1306.1, "I": -310.8} and out.computed == []
    other_box = IsolatedAtomEnergyMaker(labeller=labeller, settings=IsolatedAtomSettings(box=20))
    assert isinstance(other_box.make(["Cu"]).run(store).replace, Flow)


def test_gather_caches_new_e0s_and_names_an_element_that_failed():
    labeller = cp2k_labeller()
    store = memory_store()
    ok = {"uuid": "a", "energy": -310.8, "forces": [[0, 0, 0]], "dir_name": "/d/I", "reason": None}
    job = gather_e0s(["Cu", "I"], {"Cu": {"energy": -1306.1}}, {"I": ok}, labeller, SETTINGS)
    out = job.run(store).output
    assert out.energies == {"Cu": -1306.1, "I": -310.8}
    assert out.computed == ["I"] and out.dirs == {"I": "/d/I"}
    cache = ResultCache(store.additional_stores["cache"])
    hit = cache.get(e0_cache_key("I", labeller.identity().settings_hash, SETTINGS))
    assert hit["energy"] == -310.8 and hit["box"] == 12.0
    failed = {**ok, "energy": None, "reason": "cp2k SCF not converged (see /d/Cu)"}
    with pytest.raises(RuntimeError) as err:
        gather_e0s.original(["Cu", "I"], {}, {"Cu": failed, "I": ok}, labeller, SETTINGS)
    msg = str(err.value)
    assert "E0) for Cu" in msg and "SCF not converged" in msg
    assert "loop.e0s: {Cu: <eV>, I: <eV>}" in msg
    lost = {"uuid": "b", "energy": None, "forces": None, "dir_name": None, "reason": None}
    with pytest.raises(RuntimeError, match="for Cu: its isolated-atom job b produced no energy"):
        gather_e0s.original(["Cu"], {}, {"Cu": lost}, labeller, SETTINGS)


def test_in_process_labellers_are_refused():
    with pytest.raises(ValueError, match="in-process labellers compute E0s themselves"):
        IsolatedAtomEnergyMaker(labeller={"kind": "chgnet"})
    with pytest.raises(ValueError, match="unknown element symbol 'Xx'"):
        IsolatedAtomEnergyMaker(labeller=cp2k_labeller()).make.original(
            IsolatedAtomEnergyMaker(labeller=cp2k_labeller()), ["Cu", "Xx"]
        )


def dft_settings(**loop) -> ActiveLearningSettings:
    return ActiveLearningSettings.from_preset(
        "tiny",
        loop={"relax": False, **loop},
        labeller={"kind": "atomate2", "code": "cp2k"},
    )


def test_loop_runs_isolated_atom_jobs_routed_like_the_labels():
    flow = ActiveLearningMaker(settings=dft_settings(e0s="isolated")).make(get_structure("CuI"))
    jobs = {j.name: j for j in flow.jobs}
    e0, labels = jobs["CuI E0s"], jobs["CuI initial labels"]
    assert isinstance(e0.function.__self__, IsolatedAtomEnergyMaker)
    assert e0.function_args == (["Cu", "I"],)
    # the single points it creates inherit the category the label statics inherit
    assert e0.config.manager_config == labels.config.manager_config == {"_category": "cpu"}
    assert e0.config.response_manager_config == labels.config.response_manager_config
    assert e0.metadata["kind"] == "labelling"


def test_an_e0_maker_with_other_settings_than_the_labels_is_refused():
    settings = dft_settings(e0s="isolated")
    other = IsolatedAtomEnergyMaker(labeller=cp2k_labeller())
    maker = ActiveLearningMaker(settings=settings, e0_maker=other)
    with pytest.raises(ValueError, match="same code and settings as the labels"):
        maker.make(get_structure("CuI"))


def test_e0s_missing_for_an_element_name_it_and_how_to_give_it():
    settings = dft_settings(e0s={"Cu": -1306.1})
    with pytest.raises(ValueError) as err:
        ActiveLearningMaker(settings=settings).make(get_structure("CuI"))
    msg = str(err.value)
    assert "no reference energy (E0) for I (needed by CuI: Cu, I)" in msg
    assert "loop.e0s: {Cu: <eV>, I: <eV>}" in msg and "loop.e0s: isolated" in msg
