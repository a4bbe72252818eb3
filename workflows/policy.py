"""The loop's rules: when it stops, how many labels it may take, when a walker restarts.

Pure functions of the loop's records and settings (no jobs, no store), used by every
controller job (``decide``, ``proceed``, the screening gate) so that the rules are
stated once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from active_mlip.workflows.settings import ActiveLearningSettings, LoopSettings
    from active_mlip.workflows.state import IterationRecord, LoopState


def plateau(history: list[IterationRecord], loop: Any) -> dict[str, Any]:
    """The numbers of the convergence test over the last ``loop.converge_window`` iterations.

    Converged means a plateau of the test set's force MAE and of σ_U, the spread of the
    uncertainty over the test set (ALmoMD's criterion): the relative range
    (max − min)/max of each over the window is within its tolerance.
    """
    w = loop.converge_window
    recent = history[-w:]
    out: dict[str, Any] = {
        "window": w,
        "iterations": [h.iteration for h in recent],
        "test_mae_forces_meV_per_A": [h.test_mae_forces_meV_per_A for h in recent],
        "uncertainty_std": [h.uncertainty_std for h in recent],
        "force_mae_rtol": loop.force_mae_rtol,
        "uncertainty_rtol": loop.uncertainty_rtol,
    }
    if len(recent) < w:
        return {**out, "plateau": False}
    rel = {
        key: (max(v) - min(v)) / max(max(v), 1e-300)
        for key, v in (
            ("force_mae_range", out["test_mae_forces_meV_per_A"]),
            ("uncertainty_std_range", out["uncertainty_std"]),
        )
    }
    ok = rel["force_mae_range"] <= loop.force_mae_rtol and (
        rel["uncertainty_std_range"] <= loop.uncertainty_rtol
    )
    return {**out, **rel, "plateau": bool(ok)}


def stopping_reason(state: LoopState, settings: ActiveLearningSettings) -> tuple[bool, str] | None:
    """Return (converged, reason) when the loop should stop after the latest iteration.

    An exploration that accepted nothing never reaches here:
    :func:`~active_mlip.workflows.iteration.proceed` stops the loop before any
    retraining, with its own reason stated in picoseconds of MD.
    """
    loop = settings.loop
    history = state.history
    p = plateau(history, loop)
    if p["plateau"]:
        maes, sus = p["test_mae_forces_meV_per_A"], p["uncertainty_std"]
        return True, (
            f"converged: over iterations {p['iterations'][0]}-{p['iterations'][-1]} the test "
            f"force MAE stayed within {p['force_mae_range']:.1%} ({min(maes):.1f}-"
            f"{max(maes):.1f} meV/Å; tolerance {loop.force_mae_rtol:.0%}) and σ_U within "
            f"{p['uncertainty_std_range']:.1%} ({min(sus):.4g}-{max(sus):.4g}; tolerance "
            f"{loop.uncertainty_rtol:.0%})"
        )
    last = history[-2] if len(history) > 1 else None
    if last is not None and last.n_label_failures > 0 and last.n_labelled == 0:
        # Every single point failed: another iteration would explore and fail again.
        reasons = "; ".join(last.label_failure_reasons) or "no reason recorded"
        return False, (
            f"labeller failed on every frame: 0 of {last.n_selected} single points of "
            f"iteration {last.iteration} were labelled ({reasons})"
        )
    if state.iteration + 1 >= loop.max_iterations:
        return False, f"max_iterations ({loop.max_iterations}) reached"
    if loop.max_labels is not None and state.labels_used >= loop.max_labels:
        return False, f"label budget ({loop.max_labels}) used: {state.labels_used} labels"
    return None


def nothing_accepted(facts: dict[str, Any]) -> str:
    """Why an exploration gave nothing to label, in picoseconds of MD per temperature."""
    parts = []
    for key, row in facts["acceptance_statistics"].items():
        text = f"{row['md_ps']:.3g} ps of MLIP-MD at {key} K"
        if "u_threshold" in row:
            text += (
                f" ({row['n_scored']} frames scored against Ū + s·σ_U = "
                f"{row['u_threshold']:.4g} and Ē = {row['e_mean']:.6g} eV)"
            )
        if "blowup" in row:
            b = row["blowup"]
            text += f", blown up at step {b['step']}: {b['reason']}"
        parts.append(text)
    return "no frame accepted in " + "; ".join(parts)


def walker_seed(seed: int, iteration: int, k: int) -> int:
    """The MD seed of walker ``k`` (temperature index) in ``iteration``."""
    return int(seed) * 1_000_003 + 1000 * iteration + k


def tkey(t: float) -> str:
    """A temperature as the key of per-temperature dicts ("300", "612.5")."""
    return f"{float(t):g}"


def shared_budget_spent(spent: int, total: int, name: str) -> str | None:
    """Why the loop stops when a campaign's shared budget has nothing left, else None."""
    if spent < total:
        return None
    return f"campaign label budget spent: {spent} of {total} labels of {name!r} used"


def label_quota(loop: LoopSettings, labels_used: int) -> tuple[int, int | None]:
    """(frames to label this iteration, labels left under ``loop.max_labels`` or None)."""
    left = None if loop.max_labels is None else loop.max_labels - labels_used
    quota = loop.n_new if left is None else max(0, min(loop.n_new, left))
    return quota, left


def walker_restart(
    stopped_by: str, blowup_step: Any, worst_error: float, limit: float | None
) -> str | None:
    """Why a walker restarts from R0 in the next iteration, or None when it continues.

    It restarts when its MD blew up, or when a frame it found was ``worst_error``
    (meV/atom) off the ensemble's energy, more than ``limit``: the walker sat in a false
    basin of that ensemble (a hallucinated state) and would lead the next, barely
    corrected ensemble deeper into it.
    """
    if stopped_by == "blowup":
        return f"blew up at step {blowup_step if blowup_step is not None else '?'}"
    if limit is not None and worst_error > limit:
        return (
            f"a labelled frame's energy was {worst_error:.0f} meV/atom off the ensemble's "
            f"(limit {limit:g})"
        )
    return None
