"""The shared label budget: grants, forced charges, and idempotent redraws."""

from __future__ import annotations

import pytest

from active_mlip.stores.budget import LabelBudget, draw, used
from active_mlip.stores.job_store import StoreSettings, make_job_store


@pytest.fixture
def store(tmp_path):
    s = make_job_store(StoreSettings(local_path=tmp_path / "store"))
    s.connect()
    return s


def test_draws_are_capped_forced_and_idempotent(store):
    budget = LabelBudget(name="camp", total=10)
    assert draw(store, budget, "A:initial", 6, force=True) == 6
    assert draw(store, budget, "A:it0:collect", 3) == 3
    assert draw(store, budget, "B:it0:collect", 3) == 1  # only 1 of 10 left
    assert draw(store, budget, "B:it1:collect", 3) == 0
    # A job rerun after a crash gets its grant again and takes nothing more.
    assert draw(store, budget, "A:it0:collect", 3) == 3
    assert used(store, budget) == 10
    # Labels already spent are charged even beyond the total.
    assert draw(store, budget, "C:initial", 4, force=True) == 4
    assert used(store, budget) == 14
    assert draw(store, budget, "C:it0:collect", 2) == 0


def test_budgets_of_two_campaigns_are_separate(store):
    a, b = LabelBudget(name="a", total=5), LabelBudget(name="b", total=5)
    assert draw(store, a, "x", 5) == 5
    assert draw(store, b, "x", 5) == 5
    assert used(store, a) == used(store, b) == 5


def test_bad_budgets_and_draws_are_refused(store):
    with pytest.raises(ValueError, match="total"):
        LabelBudget(name="c", total=0)
    with pytest.raises(ValueError, match="negative"):
        draw(store, LabelBudget(name="c", total=3), "k", -1)
