"""The campaign report: errors over materials, the flagged ones and how they learned.

- ``mae_histograms.png``: test energy and force MAE of every material's first ensemble
  (the paper's Fig. 4), with the final ensembles of flagged materials on top;
- ``learning_curves.png``: test force MAE against reference labels for each flagged material;
- ``verdicts.png``: how many materials got each verdict;
- ``report.html``: the plots and the table of flagged materials with their evidence.

The same report comes from a local campaign (per-material ``summary.json``) and from a
FireWorks campaign (loop results in the job store): both become :class:`MaterialOutcome`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from active_mlip.core.documents import Document


class MaterialOutcome(Document):
    """One material's screening result and learning curve."""

    material: str
    verdict: str = Field(description="ok | missing | hallucinated | not screened | failed")
    evidence: list[str] = Field(default_factory=list)
    stop_reason: str = ""
    first_mae_energy_meV_per_atom: float | None = None
    first_mae_forces_meV_per_A: float | None = None
    final_mae_energy_meV_per_atom: float | None = None
    final_mae_forces_meV_per_A: float | None = None
    labels_used: int = 0
    curve: list[dict[str, float]] = Field(
        default_factory=list, description="Per iteration: iteration, n_train, force/energy MAE."
    )
    error: str | None = None

    @property
    def flagged(self) -> bool:
        return self.verdict in ("missing", "hallucinated")


def outcome_from_summary(summary: dict[str, Any]) -> MaterialOutcome:
    """From the ``summary.json`` of a run (see :func:`active_mlip.app.local.export_run`)."""
    its = summary.get("iterations") or []
    screening = summary.get("screening") or {}
    first, last = (its[0], its[-1]) if its else ({}, {})
    return MaterialOutcome(
        material=summary["material"],
        verdict=screening.get("verdict", "not screened"),
        evidence=list(screening.get("evidence", [])),
        stop_reason=summary.get("stop_reason", ""),
        first_mae_energy_meV_per_atom=first.get("test_mae_energy_meV_per_atom"),
        first_mae_forces_meV_per_A=first.get("test_mae_forces_meV_per_A"),
        final_mae_energy_meV_per_atom=last.get("test_mae_energy_meV_per_atom"),
        final_mae_forces_meV_per_A=last.get("test_mae_forces_meV_per_A"),
        labels_used=int(summary.get("labels_used", 0)),
        curve=[
            {
                "iteration": h["iteration"],
                "n_train": h["n_train"],
                "mae_forces": h["test_mae_forces_meV_per_A"],
                "mae_energy": h["test_mae_energy_meV_per_atom"],
            }
            for h in its
        ],
    )


def outcome_from_result(result: Any) -> MaterialOutcome:
    """From a loop's final output (:class:`active_mlip.workflows.active_learning.LoopResult`)."""
    state = result.state
    return outcome_from_summary(
        {
            "material": result.material,
            "stop_reason": result.stop_reason,
            "labels_used": state.labels_used,
            "screening": state.screening.model_dump() if state.screening else None,
            "iterations": [h.model_dump() for h in state.history],
        }
    )


def outcomes_from_store(store: Any, campaign: str) -> list[MaterialOutcome]:
    """Final loop results of a FireWorks campaign, read from its job store.

    Every job carries ``metadata.campaign``; the loop's final output is the one with a
    ``stop_reason``. Only small fields are read (frames stay in the data store).
    """
    docs = store.docs_store
    if getattr(docs, "_coll", None) is None:
        docs.connect()
    crit = {"metadata.campaign": campaign, "output.stop_reason": {"$exists": True}}
    props = [
        "output.material",
        "output.stop_reason",
        "output.state.labels_used",
        "output.state.screening",
        "output.state.history",
    ]
    outcomes = {}
    for doc in docs.query(criteria=crit, properties=props):
        out = doc["output"]
        state = out.get("state") or {}
        outcomes[out["material"]] = outcome_from_summary(
            {
                "material": out["material"],
                "stop_reason": out["stop_reason"],
                "labels_used": state.get("labels_used", 0),
                "screening": state.get("screening"),
                "iterations": state.get("history") or [],
            }
        )
    return [outcomes[k] for k in sorted(outcomes)]


def outcome_from_error(material: str, exc: BaseException, trace: str = "") -> MaterialOutcome:
    """A material whose run failed."""
    return MaterialOutcome(
        material=material,
        verdict="failed",
        stop_reason=f"failed: {exc}",
        error=(trace or str(exc))[-2000:],
    )


def _plt():
    # matplotlib loads only when a plot is drawn (and picks its headless backend first)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(
    outcomes: list[MaterialOutcome],
    out: str | Path,
    campaign: str = "",
    budget: dict[str, Any] | None = None,
) -> Path:
    """Write the plots, ``outcomes.json`` and ``report.html`` into ``out``; return the HTML."""
    plt = _plt()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []

    def save(fig, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures.append((name, caption))

    # MaxNLocator: axes that count materials step in whole materials
    from matplotlib.ticker import MaxNLocator

    done = [o for o in outcomes if o.first_mae_forces_meV_per_A is not None]
    flagged = [o for o in outcomes if o.flagged]
    screened = [o for o in outcomes if o.verdict in ("ok", "missing", "hallucinated")]
    # With screening, the flagged materials learned; without, every material did.
    learned = flagged if screened else [o for o in outcomes if len(o.curve) >= 2]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, what, unit in (
        (axes[0], "energy_meV_per_atom", "energy", "meV/atom"),
        (axes[1], "forces_meV_per_A", "force", "meV/Å"),
    ):
        first = np.array([getattr(o, f"first_mae_{key}") for o in done], dtype=float)
        final = np.array([getattr(o, f"final_mae_{key}") for o in learned], dtype=float)
        final = final[np.isfinite(final)]
        if first.size:
            bins = np.histogram_bin_edges(np.concatenate([first, final]), bins="auto")
            ax.hist(first, bins=bins, alpha=0.6, label="first ensemble (all)")
            if final.size:
                whose = "flagged" if screened else "all"
                ax.hist(final, bins=bins, alpha=0.6, label=f"final ({whose})")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"test {what} MAE ({unit})")
        ax.set_ylabel("materials")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    final_of = "the flagged ones" if screened else "every material after active learning"
    save(
        fig,
        "mae_histograms.png",
        f"Test-set errors of the first ensemble of {len(done)} materials, and of the final "
        f"ensemble of {final_of}.",
    )

    if screened:
        verdicts = ["ok", "missing", "hallucinated", "not screened", "failed"]
        colours = dict(zip(verdicts, ["C2", "C1", "C3", "C7", "k"], strict=True))
        shown = [v for v in verdicts if v in verdicts[:3] or any(o.verdict == v for o in outcomes)]
        counts = [sum(o.verdict == v for o in outcomes) for v in shown]
        fig, ax = plt.subplots(figsize=(1.3 * len(shown) + 1.5, 3))
        ax.bar(shown, counts, color=[colours[v] for v in shown])
        ax.set_ylabel("materials")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        save(fig, "verdicts.png", "Screening verdicts.")

    if learned:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        legend = len(learned) <= 12  # beyond that, names would hide the curves
        for o in learned:
            ax.plot(
                [c["n_train"] for c in o.curve],
                [c["mae_forces"] for c in o.curve],
                "o-" if legend else "-",
                lw=1.5 if legend else 0.8,
                alpha=1.0 if legend else 0.5,
                label=f"{o.material} ({o.verdict})" if screened else o.material,
            )
        ax.set_xlabel("training frames")
        ax.set_ylabel("test force MAE (meV/Å)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if legend:
            ax.legend(fontsize=8, ncol=2 if len(learned) > 6 else 1)
        whose = "flagged materials" if screened else "materials"
        save(fig, "learning_curves.png", f"Learning curves of the {len(learned)} {whose}.")

    (out / "outcomes.json").write_text(json.dumps([o.model_dump() for o in outcomes], indent=2))
    page = out / "report.html"
    page.write_text(_html(outcomes, figures, campaign, budget))
    return page


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _html(
    outcomes: list[MaterialOutcome],
    figures: list[tuple[str, str]],
    campaign: str,
    budget: dict[str, Any] | None,
) -> str:
    esc = html.escape
    rows = []
    for o in sorted(outcomes, key=lambda o: (not o.flagged, o.verdict != "failed", o.material)):
        evidence = "<br>".join(esc(e) for e in o.evidence) or esc(o.error or "")
        rows.append(
            f"<tr class='{esc(o.verdict.replace(' ', '-'))}'><td>{esc(o.material)}</td>"
            f"<td>{esc(o.verdict)}</td><td>{evidence}</td>"
            f"<td>{_fmt(o.first_mae_forces_meV_per_A)} → {_fmt(o.final_mae_forces_meV_per_A)}</td>"
            f"<td>{_fmt(o.first_mae_energy_meV_per_atom, 2)} → "
            f"{_fmt(o.final_mae_energy_meV_per_atom, 2)}</td>"
            f"<td>{o.labels_used}</td><td>{esc(o.stop_reason)}</td></tr>"
        )
    n_flag = sum(o.flagged for o in outcomes)
    n_screened = sum(o.verdict in ("ok", "missing", "hallucinated") for o in outcomes)
    n_failed = sum(o.verdict == "failed" for o in outcomes)
    if n_screened:
        what = (
            f"{n_screened} screened: {n_screened - n_flag} judged ok (no active learning), "
            f"{n_flag} flagged (missing or hallucinated events) went on to active learning"
        )
        rest = len(outcomes) - n_screened - n_failed
        what += f"; {rest} not screened" if rest else ""
    else:
        what = "screening was off: every material ran active learning from its first ensemble"
    what += f"; {n_failed} failed" if n_failed else ""
    spent = ""
    if budget and budget.get("label_budget"):
        spent = (
            f"<p>Shared label budget: {budget.get('label_budget_used', '?')} of "
            f"{budget['label_budget']} labels used.</p>"
        )
    figs = "".join(
        f"<figure><img src='{esc(n)}'><figcaption>{esc(c)}</figcaption></figure>"
        for n, c in figures
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>campaign {esc(campaign)}</title><style>
body {{ font-family: sans-serif; margin: 2em; max-width: 75em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
tr.missing td:nth-child(2) {{ color: #b60; }} tr.hallucinated td:nth-child(2) {{ color: #c00; }}
tr.failed td:nth-child(2) {{ color: #000; font-weight: bold; }}
figure {{ display: inline-block; margin: 1em; }} img {{ max-width: 40em; }}
</style></head><body>
<h1>Campaign {esc(campaign)}</h1>
<p>{len(outcomes)} materials; {esc(what)}.</p>{spent}
<table><tr><th>material</th><th>verdict</th><th>evidence</th>
<th>test force MAE (meV/Å) first → final</th><th>energy MAE (meV/atom)</th>
<th>labels used</th><th>stop reason</th></tr>
{"".join(rows)}</table>
<p><small>Labels used: reference calculations charged to the label budget (initial
training and test frames, screening checks, the loop's new labels). The force-constant
displacements and isolated atoms are not charged; <code>active-mlip status</code> counts
every reference calculation, these included.</small></p>
{figs}
</body></html>
"""
