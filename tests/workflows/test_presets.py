"""The presets, all defined in active_mlip.workflows.presets."""

import pytest

from active_mlip.workflows.presets import PRESETS, TRAINING_PRESETS, training_preset
from active_mlip.workflows.settings import ActiveLearningSettings


def test_training_presets_grow_from_tiny_to_paper():
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        training_preset("huge")
    tiny, quick, paper = (training_preset(p) for p in ("tiny", "quick", "paper"))
    assert tiny.num_channels < quick.radial_mlp[0] <= paper.num_channels
    assert paper.max_L >= 1 and paper.correlation == 3 and paper.max_num_epochs >= 100
    assert training_preset("tiny", n_sub=3).n_members == 3 * tiny.n_seed


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_loop_presets_start_from_the_training_presets(name):
    settings = ActiveLearningSettings.from_preset(name)
    assert settings.preset == name
    own = TRAINING_PRESETS[name]
    trained = settings.training.model_dump()
    assert {k: trained[k] for k in own} == own | {
        k: v for k, v in PRESETS[name]["training"].items() if k in own
    }


def test_preset_fingerprints_are_stable():
    # Cache keys hash these settings: moving the presets must not change a stored key.
    fingerprints = {n: ActiveLearningSettings.from_preset(n).fingerprint()[:16] for n in PRESETS}
    assert fingerprints == {
        "tiny": "31b9f4bedd7963bb",
        "quick": "3e1173908417ee10",
        "paper": "481c3b684705fe88",
    }
    assert ActiveLearningSettings.from_preset("tiny").training.max_num_epochs == 30
    assert ActiveLearningSettings.from_preset("quick").training.n_members == 4
    assert ActiveLearningSettings.from_preset("paper").training.n_members == 6
