"""Plots a scientist looks at first after a run, and a one-page HTML that shows them.

- ``test_errors.png``: test energy and force MAE per iteration, with the data size;
- ``uncertainty_trajectories.png``: the uncertainty along each exploration trajectory
  with the acceptance threshold (Ū + s·σ_U, where P_U = 0.5);
- ``acceptance.png``: acceptance probability against uncertainty and energy;
- ``parity.png``: the final ensemble against the reference on the test set;
- ``sigma_a.png``: anharmonicity σ^A of reference (test) frames and of MLIP-MD frames;
- ``calibration.png``: predicted uncertainty of each newly labelled frame against its
  true force error (Spearman rank correlation in the title);
- ``screening_reference.png``: the first ensemble's force error along the screening's
  reference MD in time order, with the largest displacement from the ground state.

Just over 500 lines: one page and its plots, in the order a reader sees them.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from active_mlip.core.documents import as_model, without_mson_keys
from active_mlip.makers.diagnostics import ScreeningDocument
from active_mlip.makers.selection import (
    ReferenceStatistics,
    anharmonicity_score,
    minimum_image_displacements,
)

logger = logging.getLogger(__name__)


def _plt():
    # matplotlib loads only when a plot is drawn (and picks its headless backend first)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (no ties correction needed for continuous data)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx = np.argsort(np.argsort(x[ok]))
    ry = np.argsort(np.argsort(y[ok]))
    return float(np.corrcoef(rx, ry)[0, 1])


def write_report(
    result: Any,
    store: Any,
    workdir: Path,
    settings: Any,
    ensemble: Any,
    test_frames: list[Any],
) -> Path:
    """Write ``report/*.png`` and ``report/report.html`` into ``workdir``."""
    plt = _plt()
    out = Path(workdir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    history = result.state.history
    figures: list[tuple[str, str]] = []

    def save(fig, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures.append((name, caption))

    # 1. learning curve ---------------------------------------------------------------
    it = [h.iteration for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(it, [h.test_mae_forces_meV_per_A for h in history], "o-", label="force MAE")
    a1.set_xlabel("iteration")
    a1.set_ylabel("test force MAE (meV/Å)")
    ax = a1.twinx()
    ax.plot(it, [h.n_train for h in history], "s--", color="grey", label="training frames")
    ax.set_ylabel("training frames", color="grey")
    a2.plot(it, [h.test_mae_energy_meV_per_atom for h in history], "o-", color="C1")
    a2.set_xlabel("iteration")
    a2.set_ylabel("test energy MAE (meV/atom)")
    for a in (a1, a2):
        a.xaxis.get_major_locator().set_params(integer=True)
    save(fig, "test_errors.png", "Test-set errors per iteration (grey: training-set size).")

    # 2./3. exploration ---------------------------------------------------------------
    shift = settings.selection.shift
    logs = []
    for h in history:
        for uuid in h.exploration_uuids:
            try:
                doc = store.get_output(uuid, load=True)
            except Exception as exc:  # a missing doc must not stop the report
                logger.warning("exploration %s not found: %s", uuid, exc)
                continue
            batch = doc.explorations if hasattr(doc, "explorations") else None
            if batch is None and isinstance(doc, dict):
                batch = doc.get("explorations")
            for d in batch if batch is not None else [doc]:
                log = d.log if hasattr(d, "log") else d.get("log", {})
                temp = d.temperature if hasattr(d, "temperature") else d.get("temperature")
                ref = (
                    d.acceptance_reference
                    if hasattr(d, "acceptance_reference")
                    else d.get("acceptance_reference")
                )
                if ref is None:  # explorations from before the thermal window
                    threshold = h.uncertainty_mean + shift * h.uncertainty_std
                else:
                    ref = ReferenceStatistics.model_validate(without_mson_keys(ref))
                    threshold = ref.u_mean + shift * ref.u_std
                logs.append((h, temp, log, threshold))
    if logs:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for k, (h, temp, log, threshold) in enumerate(logs):
            step = np.asarray(log.get("step", []), float)
            u = np.asarray(log.get("u", []), float)
            if not len(u):
                continue
            line = ax.plot(step, u, lw=1, color=f"C{k % 10}", label=f"it{h.iteration} {temp:g} K")[
                0
            ]
            ax.axhline(threshold, ls=":", color=line.get_color())
            acc = np.asarray(log.get("accepted", []), bool)
            if acc.any():
                ax.plot(step[acc], u[acc], "x", color=line.get_color())
        ax.set_xlabel("MD step")
        ax.set_ylabel(f"uncertainty ({history[0].uncertainty_key})")
        ax.legend(fontsize=7)
        save(
            fig,
            "uncertainty_trajectories.png",
            "Uncertainty along each exploration trajectory (scored frames, after equilibration); "
            f"dotted: that walker's acceptance threshold Ū + {shift:g}σ_U (P_U = 0.5, from its "
            "thermal window); crosses: accepted frames.",
        )

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        for k, (h, temp, log, _) in enumerate(logs):
            u = np.asarray(log.get("u", []), float)
            e = np.asarray(log.get("energy_per_atom", log.get("energy", [])), float)
            p = np.asarray(log.get("p", []), float)
            if not len(p):
                continue
            a1.scatter(u, p, s=8, color=f"C{k % 10}", label=f"it{h.iteration} {temp:g} K")
            a2.scatter(e, p, s=8, color=f"C{k % 10}")
        a1.set_xlabel("uncertainty")
        a1.set_ylabel("acceptance probability P = P_U·P_E")
        a2.set_xlabel("ensemble energy (eV/atom)")
        a1.legend(fontsize=7)
        save(fig, "acceptance.png", "Acceptance probability against uncertainty and energy.")

    # 4. parity -------------------------------------------------------------------------
    if test_frames:
        from active_mlip.makers.ensemble import (
            EnsembleCalculator,  # torch loads only where the ensemble runs
        )

        calc = EnsembleCalculator.from_document(ensemble, device="cpu")
        preds = calc.evaluate([f.to_atoms() for f in test_frames])
        e_ref = np.array([f.energy / f.n_atoms for f in test_frames])
        e_pred = np.array(
            [p["energy"] / f.n_atoms for p, f in zip(preds, test_frames, strict=True)]
        )
        f_ref = np.concatenate([np.ravel(f.forces) for f in test_frames])
        f_pred = np.concatenate([np.ravel(p["forces"]) for p in preds])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.8))
        for a, x, y, unit in ((a1, e_ref, e_pred, "eV/atom"), (a2, f_ref, f_pred, "eV/Å")):
            a.scatter(x, y, s=6, alpha=0.6)
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            a.set_xlabel(f"reference ({unit})")
            a.set_ylabel(f"ensemble mean ({unit})")
        a1.set_title(
            f"energy MAE {np.mean(np.abs(e_pred - e_ref)) * 1000:.2f} meV/atom", fontsize=9
        )
        a2.set_title(f"force MAE {np.mean(np.abs(f_pred - f_ref)) * 1000:.1f} meV/Å", fontsize=9)
        save(fig, "parity.png", "Final ensemble against the reference labeller on the test set.")

    # 5. sigma^A ------------------------------------------------------------------------
    selected: list[dict[str, Any]] = []
    try:
        fig_made, selected = _sigma_a_plot(plt, result, store, test_frames, save)
        if not fig_made:
            logger.info("no MLIP-MD frames yet: no sigma^A comparison")
    except Exception as exc:
        logger.warning("sigma^A plot skipped: %s", exc)

    # 6. calibration --------------------------------------------------------------------
    cal = [
        (c["uncertainty"], c["force_rmse_meV_per_A"], h.iteration)
        for h in history
        for c in h.calibration
    ]
    if cal:
        u, err, its = (np.array(v) for v in zip(*cal, strict=True))
        fig, ax = plt.subplots(figsize=(5, 4))
        if len(set(its.tolist())) > 1:
            sc = ax.scatter(u, err, c=its, cmap="viridis", s=14)
            fig.colorbar(sc, ax=ax, label="iteration")
        else:
            ax.scatter(u, err, s=14, label=f"iteration {int(its[0])}")
            ax.legend(fontsize=8)
        ax.set_xlabel("predicted uncertainty at selection")
        ax.set_ylabel("true force RMSE once labelled (meV/Å)")
        ax.set_title(f"Spearman ρ = {spearman(u, err):.2f} (n = {len(u)})", fontsize=9)
        save(
            fig,
            "calibration.png",
            "How well the ensemble's uncertainty ranks the true error of the frames it chose.",
        )

    # 7. screening beside the reference MD ---------------------------------------------
    try:
        _screening_plot(plt, result, store, save)
    except Exception as exc:  # an old or missing document must not stop the report
        logger.warning("screening plot skipped: %s", exc)

    _write_html(out, result, history, figures, selected)
    return out / "report.html"


def _screening_plot(plt, result, store, save) -> bool:
    """The ensemble's force error along the reference MD in time order (the paper's view)."""
    summary = result.state.screening
    if summary is None:
        return False
    doc = as_model(store.get_output(summary.screening_uuid, load=True), ScreeningDocument)
    if not doc.references:
        return False
    fig, axes = plt.subplots(
        1, len(doc.references), figsize=(8 * len(doc.references), 4.0), squeeze=False
    )
    levels = doc.reference_force_levels or [None] * len(doc.references)
    for ax, r, level in zip(axes[0], doc.references, levels, strict=True):
        handles = ax.plot(r.time_ps, r.force_rmse, "o-", ms=3, lw=1, label="ensemble force error")
        if level is not None:
            handles.append(ax.axhline(level, ls="--", color="C3", label="level ('missing')"))
        ax.set_ylim(0, 1.25 * max([level or 0.0, *r.force_rmse]))
        ax.set_xlabel("time along the reference MD (ps)")
        ax.set_ylabel("force RMSE (meV/Å)")
        twin = ax.twinx()
        handles += twin.plot(
            r.time_ps, r.max_displacement, color="grey", lw=1, label="largest displacement"
        )
        handles.append(
            twin.axhline(r.event_distance, ls=":", color="grey", label="off-site distance")
        )
        twin.set_ylim(0, 1.6 * max([r.event_distance, *r.max_displacement]))
        twin.set_ylabel("largest displacement from R0 (Å)", color="grey")
        sig = (
            f"; σ^A {r.sigma_a_reference:.2f} (reference), {r.sigma_a_mlip:.2f} (MLIP-MD)"
            if r.sigma_a_reference and r.sigma_a_mlip
            else ""
        )
        ax.set_title(
            f"{r.temperature:g} K: off-site events {r.events_reference} (reference), "
            f"{r.events_mlip} (MLIP-MD){sig}",
            fontsize=9,
        )
        ax.legend(
            handles=handles,
            fontsize=7,
            ncol=4,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            frameon=False,
        )
    save(
        fig,
        "screening_reference.png",
        f"Screening verdict '{doc.verdict}'. The first ensemble along a reference MD from the "
        "same start: its force error per frame in time order (dashed: the level above which "
        "the reference visits configurations the ensemble does not know) and the largest "
        "displacement of an atom from its ground-state site (dotted: an off-site event).",
    )
    return True


def _sigma_a_plot(plt, result, store, test_frames, save) -> tuple[bool, list[dict[str, Any]]]:
    """σ^A of test and selected frames; returns the selected frames' rows for the table."""

    fc_doc = store.get_output(result.state.fc_uuid, load=True)
    fc = fc_doc.fc_array() if hasattr(fc_doc, "fc_array") else np.asarray(fc_doc["force_constants"])
    ref = fc_doc.reference if hasattr(fc_doc, "reference") else fc_doc["reference"]
    ref_pos = np.asarray(ref.positions if hasattr(ref, "positions") else ref["positions"])
    cell = np.asarray(ref.cell if hasattr(ref, "cell") else ref["cell"])

    def score(f) -> float:
        u = minimum_image_displacements(np.asarray(f.positions), ref_pos, cell)
        return float(anharmonicity_score(np.asarray(f.forces), u, fc))

    def largest_displacement(f) -> float:
        u = minimum_image_displacements(np.asarray(f.positions), ref_pos, cell)
        return float(np.linalg.norm(u, axis=1).max())

    md = [f for f in result.state.train.frames if f.info.get("source") == "mlip-md"]
    if not md:
        return False, []
    s_ref = [score(f) for f in test_frames]
    s_md = [score(f) for f in md]
    rows = [
        {
            "iteration": int(f.info.get("iteration", 0)) - 1,
            "temperature": f.info.get("temperature"),
            "step": f.info.get("step"),
            "uncertainty": f.info.get("uncertainty"),
            "p": f.info.get("p"),
            "sigma_a": s,
            "max_displacement": largest_displacement(f),
            "precursor": bool(f.info.get("blowup_precursor", False)),
        }
        for f, s in zip(md, s_md, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, max(max(s_ref), max(s_md)) * 1.05, 25)
    ax.hist(s_ref, bins=bins, alpha=0.6, label=f"reference test frames (n={len(s_ref)})")
    ax.hist(s_md, bins=bins, alpha=0.6, label=f"selected MLIP-MD frames (n={len(s_md)})")
    ax.set_xlabel("σ^A (reference forces)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    save(
        fig,
        "sigma_a.png",
        "Anharmonicity σ^A of the reference test frames and of the MLIP-MD frames the loop "
        "selected; MLIP-MD frames far above the reference hint at hallucinated or rare states.",
    )
    fig, ax = plt.subplots(figsize=(6, 3.8))
    d_ref = [largest_displacement(f) for f in test_frames]
    ax.scatter(d_ref, s_ref, s=12, color="grey", label="test frames")
    its = np.array([r["iteration"] for r in rows])
    sc = ax.scatter(
        [r["max_displacement"] for r in rows],
        s_md,
        c=its,
        cmap="viridis",
        s=22,
        marker="D",
        label="selected MLIP-MD frames",
    )
    if len(set(its.tolist())) > 1:
        fig.colorbar(sc, ax=ax, label="explored in iteration", ticks=sorted(set(its.tolist())))
    ax.set_xlabel("largest atomic displacement from R0 (Å)")
    ax.set_ylabel("σ^A (reference forces)")
    ax.legend(fontsize=8)
    save(
        fig,
        "selected_frames.png",
        "What the selected frames are: the largest displacement of any atom from its site in "
        "R0 against σ^A. Frames to the right hold an atom far off its site (a Cu hop in CuI).",
    )
    return True, rows


def _acceptance_table(history: list[Any]) -> str:
    """Per iteration and temperature: what the exploration's frames were judged against."""
    rows = []
    for h in history:
        for t, a in sorted(h.acceptance_statistics.items(), key=lambda kv: float(kv[0])):
            if "u_mean" not in a:
                continue
            rows.append(
                f"<tr><td>{h.iteration}</td><td>{html.escape(t)}</td>"
                f"<td>{a['u_mean']:.4g}</td><td>{a['u_std']:.3g}</td><td>{a['u_threshold']:.4g}</td>"
                f"<td>{a['e_mean']:.4f}</td><td>{a['e_std']:.3g}</td><td>{a['e_knee']:.4f}</td>"
                f"<td>{html.escape(a['energy_reference'])}</td><td>{a['n_scored']}</td>"
                f"<td>{a['n_accepted']}</td><td>{a['md_ps']:.2f}</td>"
                f"<td>{html.escape(h.restarts.get(t, 'continues'))}</td></tr>"
            )
    if not rows:
        return "<p>No exploration has run.</p>"
    return (
        "<table><tr><th>iteration</th><th>T (K)</th><th>Ū</th><th>σ_U</th>"
        "<th>Ū + s·σ_U (P_U = ½)</th><th>Ē (eV)</th><th>σ_E (eV)</th>"
        "<th>Ē + knee·σ_E (P_E &lt; 1 above)</th><th>Ē, σ_U from</th><th>scored</th>"
        "<th>accepted</th><th>MD (ps)</th><th>next start</th></tr>" + "".join(rows) + "</table>"
    )


def _selected_table(selected: list[dict[str, Any]], limit: int = 40) -> str:
    if not selected:
        return "<p>No MLIP-MD frame has been selected yet.</p>"
    rows = sorted(selected, key=lambda r: -r["max_displacement"])[:limit]

    def num(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    body = "".join(
        f"<tr><td>{r['iteration']}</td><td>{num(r['temperature'], 'g')}</td>"
        f"<td>{num(r['step'], 'd')}</td><td>{num(r['uncertainty'], '.4g')}</td>"
        f"<td>{num(r['p'], '.3f')}</td><td>{r['sigma_a']:.3f}</td>"
        f"<td>{r['max_displacement']:.3f}</td><td>{'yes' if r['precursor'] else ''}</td></tr>"
        for r in rows
    )
    more = (
        f" ({limit} of {len(selected)}, largest displacement first)"
        if len(selected) > limit
        else ""
    )
    return (
        f"<p>{len(selected)} selected MLIP-MD frames{more}.</p><table><tr><th>explored in "
        "iteration</th><th>T (K)</th><th>MD step</th><th>U at selection</th><th>P</th>"
        "<th>σ^A</th><th>largest displacement from R0 (Å)</th><th>before a blow-up</th></tr>"
        + body
        + "</table>"
    )


def _structure_section(state: Any) -> str:
    parts = []
    r = state.relaxation
    if r:

        def stress(v: Any) -> str:
            return "n/a" if v is None else " ".join(f"{x:.3g}" for x in v[:3])

        parts.append(
            f"<p>R0 relaxed with the labeller in {r.get('n_steps')} steps (cell "
            f"{'relaxed' if (r.get('settings') or {}).get('relax_cell') else 'fixed'}): largest "
            f"residual force {r['max_force_before']:.3g} → {r['max_force_after']:.3g} eV/Å; "
            f"stress xx yy zz {stress(r.get('stress_before_gpa'))} → "
            f"{stress(r.get('stress_after_gpa'))} GPa; largest move "
            f"{r.get('max_displacement', 0.0):.3g} Å.</p>"
        )
    else:
        parts.append("<p>R0 was used as given (loop.relax off).</p>")
    modes = state.unstable_modes
    if modes:
        freqs = ", ".join(f"{m['frequency_thz']:.2f}" for m in modes[:12])
        more = ", …" if len(modes) > 12 else ""
        parts.append(
            f"<p>{len(modes)} harmonic modes of R0 with ω² ≤ 0 (THz, imaginary as negative): "
            f"{freqs}{more}; harmonic sampling {html.escape(modes[0].get('action', 'skipped'))} "
            "them. They are the softest, most anharmonic directions.</p>"
        )
    else:
        parts.append("<p>No harmonic mode of R0 has ω² ≤ 0.</p>")
    return "".join(parts)


def _plateau_line(details: dict[str, Any]) -> str:
    """The convergence test's numbers over its window, as the loop decided it."""
    if "force_mae_range" not in details:
        return ""
    its = details["iterations"]
    return (
        f"<p>Convergence test over iterations {its[0]}–{its[-1]}: the test force MAE varied "
        f"by {details['force_mae_range']:.1%} (tolerance {details['force_mae_rtol']:.0%}), "
        f"σ_U by {details['uncertainty_std_range']:.1%} (tolerance "
        f"{details['uncertainty_rtol']:.0%}): {'a plateau' if details['plateau'] else 'no plateau'}"
        ".</p>"
    )


def _write_html(
    out: Path,
    result: Any,
    history: list[Any],
    figures: list[tuple[str, str]],
    selected: list[dict[str, Any]] | None = None,
) -> None:
    rows = "".join(
        f"<tr><td>{h.iteration}</td><td>{h.n_train}</td><td>{h.n_selected}</td>"
        f"<td>{h.n_scored}</td><td>{h.test_mae_energy_meV_per_atom:.2f}</td>"
        f"<td>{h.test_mae_forces_meV_per_A:.1f}</td><td>{h.uncertainty_mean:.4g}</td>"
        f"<td>{h.uncertainty_std:.4g}</td><td>{h.wall_seconds:.0f}</td></tr>"
        for h in history
    )
    imgs = "".join(
        f'<figure><img src="{name}" alt="{html.escape(name)}"><figcaption>{html.escape(cap)}'
        "</figcaption></figure>"
        for name, cap in figures
    )
    verdict = "converged" if result.converged else "not converged"
    reason = result.stop_reason
    # the stop reason often starts with the same word: say it once
    reason = reason.split(":", 1)[1].strip() if reason.startswith(f"{verdict}:") else reason
    plateau = _plateau_line(getattr(result, "stop_details", None) or {})
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>active-mlip: {html.escape(result.material)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{max-width:100%}}figure{{margin:1em 0}}</style></head><body>
<h1>{html.escape(result.material)}: active learning report</h1>
<p><b>{verdict}</b>: {html.escape(reason)}.
Reference labels computed: {result.state.labels_used}
(labels reused from the result cache are not counted).</p>{plateau}
<table><tr><th>iteration</th><th>training frames</th><th>selected</th><th>scored</th>
<th>test E MAE (meV/atom)</th><th>test F MAE (meV/Å)</th><th>Ū</th><th>σ_U</th>
<th>wall (s)</th></tr>
{rows}</table>
<p><small>Ū, σ_U: the test set's, whose plateau decides convergence.</small></p>
<h2>Reference structure</h2>{_structure_section(result.state)}
<h2>What each exploration judged its frames against</h2>{_acceptance_table(history)}
<h2>Selected frames</h2>{_selected_table(selected or [])}
<h2>Figures</h2>{imgs}
</body></html>"""
    (out / "report.html").write_text(page)
