"""The loop is composed of Makers: a user swaps one the usual jobflow way."""

from __future__ import annotations

from jobflow import Flow, Response

from active_mlip.makers.labelling import ASECalculatorLabeller, CHGNetLabeller, LabelMaker
from active_mlip.workflows.active_learning import ActiveLearningMaker
from active_mlip.workflows.iteration import IterationMaker, proceed
from active_mlip.workflows.materials import get_structure
from active_mlip.workflows.screening import ScreeningMaker
from active_mlip.workflows.settings import ActiveLearningSettings
from active_mlip.workflows.state import Candidates, FrameSet, LoopRefs, Walker
from tests.workflows.helpers_loop import cu_frame, exploration_doc, loop_state

#: Another labeller (Lennard-Jones through ASE): distinguishable from the default CHGNet.
OTHER = ASECalculatorLabeller(
    calculator="ase.calculators.lj.LennardJones", elements=["Cu", "I"], kwargs={"sigma": 2.5}
)


def _job(flow: Flow, suffix: str):
    (job,) = [j for j in flow.jobs if j.name.endswith(suffix)]
    return job


def test_update_maker_kwargs_swaps_the_labeller_now_and_in_later_iterations():
    settings = ActiveLearningSettings.from_preset("tiny", screening={"enabled": True})
    flow = ActiveLearningMaker(settings=settings).make(get_structure("CuI"))
    flow.update_maker_kwargs({"labeller": OTHER}, class_filter=LabelMaker)

    # The labelling job of this flow ...
    assert _job(flow, "initial labels").maker.labeller == OTHER
    # ... and the Makers the controller builds later iterations and the screening from.
    decide = _job(flow, "it0 decide")
    iteration, screening = decide.function_args[4], decide.function_args[5]
    assert isinstance(iteration, IterationMaker) and isinstance(screening, ScreeningMaker)
    assert iteration.label_maker.labeller == OTHER
    assert screening.label_maker.labeller == OTHER
    # class_filter scopes the change: the relaxation keeps its own labeller.
    assert isinstance(_job(flow, "relax R0").maker.labeller, CHGNetLabeller)

    # An iteration built by the controller labels with the swapped labeller.
    state = loop_state([50.0, 40.0]).model_copy(update={"e0s": {"Cu": -0.5}})
    ids = {"state": "s", "ensemble": "e", "evaluation": "v", "fc": "f", "initial": "i"}
    refs = LoopRefs(**ids, collect="c", explorations=["x"])
    found = [exploration_doc(300.0, 40, [cu_frame(0)], 1.3)]
    nxt = proceed.original(
        Candidates(frames=[cu_frame(0)]), found, state, FrameSet(), {}, refs, iteration
    )
    assert isinstance(nxt, Response)
    assert _job(nxt.replace, "it1 label").maker.labeller == OTHER
    top_up = _job(nxt.replace, "it1 top up labels")
    assert top_up.function_args[3] == OTHER  # replacements of failed single points too


def test_a_stage_maker_given_as_a_field_replaces_the_default():
    settings = ActiveLearningSettings.from_preset("tiny")
    custom = IterationMaker(settings=settings, label_maker=LabelMaker(labeller=OTHER))
    maker = ActiveLearningMaker(settings=settings, iteration_maker=custom)
    assert maker.label_maker.labeller == OTHER
    # Unset stage Makers are built from the settings.
    assert maker.iteration_maker.training_maker.settings == settings.training
    assert maker.screening_maker is None  # screening is off in the tiny preset


def test_walkers_run_in_one_job_or_one_job_per_temperature():
    from active_mlip.makers.exploration import ExplorationBatchDocument
    from active_mlip.workflows.jobs import flatten_explorations

    walkers = [Walker(temperature=t, seed=s) for t, s in ((300.0, 11), (600.0, 12))]
    state = loop_state([50.0]).model_copy(
        update={"material": "X", "iteration": 1, "walkers": walkers}
    )
    ids = {"state": "s", "ensemble": "e", "evaluation": "v", "fc": "f", "initial": "i"}
    for batch, names in (
        (True, ["X it1 explore 300K,600K"]),
        (False, ["X it1 explore 300K", "X it1 explore 600K"]),
    ):
        settings = ActiveLearningSettings.from_preset(
            "tiny", loop={"temperatures": [300.0, 600.0], "batch_walkers": batch}
        )
        flow = IterationMaker(settings=settings).make(state, LoopRefs(**ids))
        explore = [j for j in flow.jobs if " explore " in j.name]
        assert [j.name for j in explore] == names
        # Every walker has its own temperature and seed, whichever way they are grouped.
        temps = [t for j in explore for t in j.function_kwargs["temperatures"]]
        seeds = [s for j in explore for s in j.function_kwargs["seeds"]]
        assert temps == [300.0, 600.0] and seeds == [11, 12]
    # Consumers see one document per walker, from batched or single jobs alike.
    a, b = exploration_doc(300.0, 10, [], 1.0), exploration_doc(600.0, 20, [], 1.0)
    batch = ExplorationBatchDocument.model_construct(explorations=[a, b])
    assert flatten_explorations([batch]) == [a, b] == flatten_explorations([a, b])


def test_the_ensembles_gather_job_goes_with_the_light_jobs_not_to_a_gpu():
    from jobflow import job

    from active_mlip.makers.training import EnsembleTrainingMaker
    from active_mlip.workflows.presets import training_preset
    from active_mlip.workflows.routing import RoutingTable, route, tag

    @job
    def pool() -> list:
        return []

    frames = pool()
    flow = EnsembleTrainingMaker(settings=training_preset("tiny", n_sub=2, n_seed=1)).make(
        frames.output, {"Cu": -1.0}
    )
    tag(flow, "training")  # as the loop tags its training stage
    route(flow, RoutingTable(training="gpu", glue="cpu"))
    categories = {j.name: j.config.manager_config.get("_category") for j in flow.jobs}
    assert categories == {
        "train ensemble member 0": "gpu",
        "train ensemble member 1": "gpu",
        "train ensemble gather": "cpu",
    }
