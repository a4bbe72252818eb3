"""Shared test settings: quiet, deterministic, CPU-only."""

from __future__ import annotations

import os

# Tiny models: thread start-up costs more than it gains, and tests stay deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
