"""The study report: one self-contained HTML page of plotly figures, readable offline.

Figures: the Pareto front (objective vs effective bits, every completed trial behind it, uniform
baselines and the budget marked); the best configuration as a per-layer heatmap of effective bits
(hover: format, bits, group, sparsity) beside the layer sensitivity profile when one is stored;
best-so-far objective vs evaluations for each strategy (the trial's ``origin`` up to ``:``).
plotly.js is inlined once, so the file opens without a network.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots
from sqlalchemy import inspect, select

from .errors import StoreError, translating
from .models import COMPLETE
from .profiles import ProfileRow
from .queries import NoResultError, study_budget
from .store import BASELINE_ORIGIN, StudyRecord, TrialRecord, TrialStore

# Layer names like ``encoder.layer.3.attention.self.query``: block 3, part ``attention.self.query``.
_BLOCK = re.compile(r"^(?P<stem>.*?)\.(?P<block>\d+)\.(?P<part>.+)$")

Sensitivity = Mapping[tuple[str, str], float]  # (gene name, option label) -> objective delta


def load_sensitivity(store: TrialStore, study: StudyRecord) -> Sensitivity | None:
    """The stored sensitivity profile of ``study``'s model and objective, as objective deltas.

    Profiles (:mod:`.profiles`) are keyed by a fingerprint of the calibration texts, which only a
    worker can compute; the report does not load texts, so it uses the rows of this model and
    objective when they come from a single calibration fingerprint, and none when several do.
    Never creates the profile table (the report only reads).
    """
    with translating(store.url, "read the sensitivity profile"), store.engine.connect() as conn:
        if not inspect(conn).has_table(ProfileRow.__tablename__):
            return None
        rows = conn.execute(select(ProfileRow.calibration, ProfileRow.layer, ProfileRow.option,
                                   ProfileRow.delta).where(
            ProfileRow.model == study.model, ProfileRow.objective == study.objective)).all()
    if len({r.calibration for r in rows}) != 1:
        return None
    return {(r.layer, r.option): r.delta for r in rows}


def strategy(origin: str) -> str:
    """The strategy that proposed a trial: ``evolutionary:g3`` → ``evolutionary``."""
    return origin.split(":", 1)[0] or "unknown"


def pareto_figure(study: StudyRecord, done: Sequence[TrialRecord], front: Sequence[TrialRecord],
                  best: TrialRecord | None) -> go.Figure:
    fig = go.Figure()
    for feasible, name, color in ((True, "within budget", "#7f8fa6"),
                                  (False, "over budget", "#e1b12c")):
        pts = [t for t in done if t.feasible == feasible and t.origin != BASELINE_ORIGIN]
        fig.add_trace(go.Scatter(
            x=[t.avg_bits for t in pts], y=[t.objective for t in pts], mode="markers",
            name=f"trials ({name})", marker={"color": color, "size": 6, "opacity": 0.6},
            text=[f"trial {t.number} · {t.origin}" for t in pts], hoverinfo="x+y+text"))
    fig.add_trace(go.Scatter(
        x=[t.avg_bits for t in front], y=[t.objective for t in front], mode="lines+markers",
        name="Pareto front", line={"color": "#273c75", "shape": "hv"}, marker={"size": 8},
        text=[f"trial {t.number}: {study.space.summarize(t.candidate)}" for t in front],
        hoverinfo="x+y+text"))
    uniform = [t for t in done if t.origin == BASELINE_ORIGIN]
    fig.add_trace(go.Scatter(
        x=[t.avg_bits for t in uniform], y=[t.objective for t in uniform], mode="markers+text",
        name="uniform baselines", marker={"symbol": "diamond", "size": 11, "color": "#c23616"},
        text=[_uniform_label(study, t) for t in uniform], textposition="top right"))
    if best is not None:
        fig.add_trace(go.Scatter(
            x=[best.avg_bits], y=[best.objective], mode="markers", name=f"best (trial {best.number})",
            marker={"symbol": "star", "size": 16, "color": "#44bd32"}))
    budget = study_budget(study).avg_bits
    if budget is not None:
        fig.add_vline(x=budget, line_dash="dash", line_color="#718093",
                      annotation_text=f"budget {budget:g} bits")
    fig.update_layout(title="Objective vs effective bits (lower-left is better)",
                      xaxis_title="average effective bits per searched weight",
                      yaxis_title=f"objective ({study.objective})", yaxis_type="log",
                      template="plotly_white", height=520)
    return fig


def _uniform_label(study: StudyRecord, t: TrialRecord) -> str:
    return next(iter(study.space.decode(t.candidate).values())).label


def _grid(names: Sequence[str]) -> tuple[list[str], list[str], dict[str, tuple[int, int]]]:
    """Rows (blocks), columns (parts) and each layer's cell; one row when names have no block."""
    parsed = [_BLOCK.match(n) for n in names]
    if not all(parsed):
        return ["layers"], list(names), {n: (0, i) for i, n in enumerate(names)}
    rows = sorted({int(m["block"]) for m in parsed if m}, key=int)
    cols = list(dict.fromkeys(m["part"] for m in parsed if m))
    cell = {n: (rows.index(int(m["block"])), cols.index(m["part"]))
            for n, m in zip(names, parsed, strict=True) if m}
    return [f"block {r}" for r in rows], cols, cell


def layers_figure(study: StudyRecord, best: TrialRecord,
                  sensitivity: Sensitivity | None) -> go.Figure:
    decoded = study.space.decode(best.candidate)
    shapes = {layer.name: layer for layer in study.space.layers}
    rows, cols, cell = _grid(list(decoded))
    bits: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    text: list[list[str]] = [[""] * len(cols) for _ in rows]
    for name, option in decoded.items():
        r, c = cell[name]
        bits[r][c] = option.effective_bits(shapes[name].in_features)
        text[r][c] = option.label
    heatmap = go.Heatmap(z=bits, x=cols, y=rows, text=text, texttemplate="%{text}",
                         colorscale="Viridis", colorbar={"title": "bits"},
                         hovertemplate="%{y} · %{x}<br>%{text}<br>%{z:.4f} bits<extra></extra>")
    title = f"Best configuration (trial {best.number}): effective bits per layer"
    height = max(320, 120 + 40 * len(rows))
    if not sensitivity:
        fig = go.Figure(heatmap)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(title=title, template="plotly_white", height=height)
        return fig
    gene_of = {layer.name: g.name for g in study.space.genes for layer in g.layers}
    delta: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    for name, option in decoded.items():
        r, c = cell[name]
        delta[r][c] = sensitivity.get((gene_of[name], option.label))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.16, subplot_titles=(
        "effective bits per layer", "sensitivity: objective delta of the chosen option"))
    heatmap.update(colorbar={"title": "bits", "x": 0.42})
    fig.add_trace(heatmap, row=1, col=1)
    fig.add_trace(go.Heatmap(z=delta, x=cols, y=rows, colorscale="Reds",
                             colorbar={"title": "Δ objective"},
                             hovertemplate="%{y} · %{x}<br>Δ %{z:.3g}<extra></extra>"),
                  row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, template="plotly_white", height=height)
    return fig


def progress_figure(study: StudyRecord, done: Sequence[TrialRecord]) -> go.Figure:
    """Best feasible objective so far against each strategy's own count of evaluations."""
    fig = go.Figure()
    by_strategy: dict[str, list[TrialRecord]] = {}
    for t in done:  # ``done`` is in trial (dispatch) order
        by_strategy.setdefault(strategy(t.origin), []).append(t)
    series = {"all strategies": list(done), **by_strategy}
    for name, trials in series.items():
        xs, ys, best = [], [], float("inf")
        for i, t in enumerate(trials, 1):
            if t.feasible and t.objective is not None:
                best = min(best, t.objective)
            if best < float("inf"):
                xs.append(i)
                ys.append(best)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line={"shape": "hv"}))
    fig.update_layout(title="Best feasible objective so far, per strategy",
                      xaxis_title="completed evaluations (of that strategy)",
                      yaxis_title=f"best objective ({study.objective})", yaxis_type="log",
                      template="plotly_white", height=440)
    return fig


def _summary(study: StudyRecord, counts: Mapping[str, int], best: TrialRecord | None) -> str:
    budget = study_budget(study)
    rows = [("study", study.name), ("model", study.model), ("objective", study.objective),
            ("budget", budget.describe()),
            ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")]
    if best is not None:
        rows += [("best trial", f"{best.number} ({best.origin})"),
                 ("best objective", f"{best.objective:.6g}"),
                 ("best avg bits", f"{best.avg_bits:.4f}"),
                 ("best layers", study.space.summarize(best.candidate))]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    return f'<table class="summary">{cells}</table>'


_STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
table.summary{border-collapse:collapse;margin-bottom:16px}
table.summary th{text-align:left;padding:2px 16px 2px 0;color:#555;font-weight:600}
section{margin:24px 0}"""


def report_html(store: TrialStore, study_name: str) -> str:
    """The report page of ``study_name`` as one HTML string."""
    study = store.study(study_name)
    done = store.trials(study_name, COMPLETE)
    if not done:
        raise NoResultError(f"study {study_name!r} has no completed trial to report on")
    best = next(iter(store.best(study_name, top=1)), None)
    # log axes cannot show 0 (the fp16 baseline scores exactly 0 on some models): clamp to a floor
    floor = min((t.objective for t in done if t.objective and t.objective > 0), default=1e-12)
    done = [_floored(t, floor / 10) for t in done]
    front = [_floored(t, floor / 10) for t in store.pareto(study_name)]
    best_shown = next((t for t in done if best and t.number == best.number), None)
    sensitivity = load_sensitivity(store, study)
    figures = [pareto_figure(study, done, front, best_shown)]
    if best is not None:
        figures.append(layers_figure(study, best, sensitivity))
    figures.append(progress_figure(study, done))
    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}")
             for i, fig in enumerate(figures)]
    if best is None:
        parts.insert(1, "<p>No completed trial is within the budget: no best configuration.</p>")
    elif not sensitivity:
        parts.insert(2, '<p id="sensitivity-profile">Sensitivity profile: none is stored for '
                        "this study's model and objective (or several, from different "
                        "calibration data), so the per-layer heatmap above is shown alone "
                        "(measure one with <code>mpsearch profile</code>).</p>")
    body = "".join(f"<section>{p}</section>" for p in parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>mpsearch report: {html.escape(study.name)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>mpsearch report: {html.escape(study.name)}</h1>"
            f"{_summary(study, store.counts(study_name), best)}{body}</body></html>")


def _floored(t: TrialRecord, floor: float) -> TrialRecord:
    return t if t.objective is None or t.objective > 0 else replace(t, objective=floor)


def write_report(store: TrialStore, study: str, out: str | Path) -> Path:
    path = Path(out)
    page = report_html(store, study)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot write report {path}: {exc.strerror or exc}") from None
    return path
