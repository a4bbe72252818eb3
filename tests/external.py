"""Tests that need something outside Python (a MongoDB wire-protocol server, CP2K).

Where it is missing such a test is skipped with the reason on a developer's machine and
**fails** under CI (``CI`` set, as ``.ci/run`` does): a broken install must not pass as a
row of skips.
"""

from __future__ import annotations

import os

import pytest


def unavailable(what: str, why: str) -> None:
    """Skip (developer machine) or fail (CI) the running test: ``what`` is missing."""
    msg = f"no {what}: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{msg} (CI must have it: see .ci/run)", pytrace=False)
    pytest.skip(msg)
