"""The presets, all defined in active_mlip.workflows.presets."""

import pytest

from active_mlip.core.hashing import content_hash
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


def test_preset_sections_are_stable():
    # What the presets define (loop, training, exploration, selection) hashes as it did
    # before they moved to workflows/presets.py (session 11's commit a882968): moving
    # them changed no setting and so no cache key.
    sections = {"loop", "training", "exploration", "selection"}
    hashes = {
        n: content_hash(
            ActiveLearningSettings.from_preset(n).model_dump(mode="json", include=sections)
        )[:16]
        for n in PRESETS
    }
    assert hashes == {
        "tiny": "5be0eb57fe4a2dae",
        "quick": "5a6761b148453674",
        "paper": "dd15a98b496b7f0a",
    }
    assert ActiveLearningSettings.from_preset("tiny").training.max_num_epochs == 30
    assert ActiveLearningSettings.from_preset("quick").training.n_members == 4
    assert ActiveLearningSettings.from_preset("paper").training.n_members == 6
