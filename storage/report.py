"""The study report: one self-contained HTML page of plotly figures, readable offline.

Figures: the Pareto front (objective vs effective bits, every completed trial behind it, uniform
baselines and the budget marked); the best configuration as a per-layer heatmap of effective bits
(hover: format, bits, group, sparsity) beside the layer sensitivity profile when one is stored;
best-so-far objective vs evaluations for each strategy (the trial's ``origin`` up to ``:``).
plotly.js is inlined once, so the file opens without a network.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots
from sqlalchemy import inspect, select

from mpsearch.spaces.space import Budget, Cost

from .errors import StoreError, translating
from .models import COMPLETE
from .profiles import ProfileRow
from .queries import NoResultError
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


def _span(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    """A linear axis range around ``values``, padded by ``pad`` of their span at each end."""
    lo, hi = min(values), max(values)
    margin = (hi - lo) * pad or max(abs(hi) * pad, 0.05)
    return lo - margin, hi + margin


def _log_span(values: Sequence[float]) -> tuple[float, float]:
    """A log-axis range (as plotly takes it: log10 of the ends) around positive ``values``."""
    lo, hi = min(values), max(values)
    pad = max((math.log10(hi) - math.log10(lo)) * 0.08, 0.05)
    return math.log10(lo) - pad, math.log10(hi) + pad


# Log-axis ticks at 1, 2 and 5 of each decade, written as plain numbers (0.02, not "20m").
_LOG_TICKS = {"dtick": "D2", "tickformat": ".2~g"}
# Uniform baselines within this many bits of the searched trials and budgets are drawn; those
# farther (fp16 beside a 4-bit search) are listed under the plot.
_NEAR_BITS = 2.0
# Objectives at most this are drawn on the axis floor and labelled exact: a log axis has no 0,
# and the fp16 baseline of an encoder scores exactly 0.
_ZERO = 0.0


def pareto_figure(study: StudyRecord, done: Sequence[TrialRecord], front: Sequence[TrialRecord],
                  best: Sequence[tuple[Budget, TrialRecord]]) -> go.Figure:
    """Objective against bits. The x axis spans the searched trials and the budgets; uniform
    baselines far outside (fp16 at 16 bits beside a 4-bit search) are listed under the plot
    instead of squeezing the trials into one column. A zero objective sits on the axis floor,
    marked "0 (exact)". ``best`` is the best trial at each budget point."""
    searched = [t for t in done if t.origin != BASELINE_ORIGIN]
    budgets = [b.avg_bits for b in study.budgets if b.avg_bits is not None]
    core = [t.avg_bits for t in searched] + budgets or [t.avg_bits for t in done]
    near = [t for t in done if t.origin == BASELINE_ORIGIN
            and min(core) - _NEAR_BITS <= t.avg_bits <= max(core) + _NEAR_BITS]
    far = [t for t in done if t.origin == BASELINE_ORIGIN and t not in near]
    shown = searched + near
    lo, hi = _span([t.avg_bits for t in shown] + budgets)
    positive = [t.objective for t in shown if t.objective is not None and t.objective > _ZERO]
    floor = min(positive, default=1.0) / 3
    has_zero = any(t.objective is not None and t.objective <= _ZERO for t in shown)

    def y(t: TrialRecord) -> float:
        return floor if t.objective is not None and t.objective <= _ZERO else float(t.objective or 0)

    fig = go.Figure()
    for feasible, name, color in ((True, "within budget", "#7f8fa6"),
                                  (False, "over budget", "#e1b12c")):
        pts = [t for t in searched if t.feasible == feasible]
        fig.add_trace(go.Scatter(
            x=[t.avg_bits for t in pts], y=[y(t) for t in pts], mode="markers",
            name=f"trials ({name})", marker={"color": color, "size": 6, "opacity": 0.6},
            text=[f"trial {t.number} · {t.origin}" for t in pts], hoverinfo="x+y+text"))
    on_plot = [t for t in front if lo <= t.avg_bits <= hi]
    fig.add_trace(go.Scatter(
        x=[t.avg_bits for t in on_plot], y=[y(t) for t in on_plot], mode="lines+markers",
        name="Pareto front", line={"color": "#273c75", "shape": "hv"}, marker={"size": 8},
        text=[f"trial {t.number}: {study.space.summarize(t.candidate)}" for t in on_plot],
        hoverinfo="x+y+text"))
    fig.add_trace(go.Scatter(
        x=[t.avg_bits for t in near], y=[y(t) for t in near], mode="markers+text",
        name="uniform baselines", marker={"symbol": "diamond", "size": 11, "color": "#c23616"},
        text=[_uniform_label(study, t) + (" = 0 (exact)" if y(t) == floor and has_zero else "")
              for t in near],
        textposition=["top right" if t.avg_bits < (lo + hi) / 2 else "top left" for t in near]))
    if best:
        fig.add_trace(go.Scatter(
            x=[t.avg_bits for _, t in best], y=[y(t) for _, t in best], mode="markers",
            name="best at " + ("each budget" if len(best) > 1 else "the budget"),
            marker={"symbol": "star", "size": 16, "color": "#44bd32"},
            text=[f"best at {b.describe()}: trial {t.number}" for b, t in best],
            hoverinfo="x+y+text"))
    for bits in budgets:
        fig.add_vline(x=bits, line_dash="dash", line_color="#718093",
                      annotation_text=f"budget {bits:g}", annotation_position="top")
    if far:
        listed = [f"{_uniform_label(study, t)} at {t.avg_bits:.4g} bits: "
                  f"{_objective_text(t.objective)}" for t in far]
        lines = ["; ".join(listed[i:i + 3]) for i in range(0, len(listed), 3)]
        fig.add_annotation(text="uniform baselines off the plot: " + "<br>".join(lines),
                           showarrow=False, xref="paper", yref="paper", x=0, y=-0.17,
                           xanchor="left", yanchor="top", align="left",
                           font={"size": 12, "color": "#555"})
    ys = [y(t) for t in shown if t.objective is not None] or [1.0]
    fig.update_layout(title="Objective vs effective bits (lower-left is better)",
                      xaxis={"title": "average effective bits per searched weight",
                             "range": [lo, hi]},
                      yaxis={"title": f"objective ({study.objective})"
                                      + (", log; 0 drawn at the floor" if has_zero else ", log"),
                             "type": "log", "range": _log_span(ys), **_LOG_TICKS},
                      template="plotly_white", height=580, margin={"b": 130})
    return fig


def _objective_text(value: float | None) -> str:
    return "—" if value is None else "0 (exact)" if value <= _ZERO else f"{value:.4g}"


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
    """Best objective so far against evaluations: per strategy (each against its own count),
    and for a frontier study per budget point. The y range runs from the best found to the best
    uniform baseline within the budget (the yardstick, drawn dashed), so the improvement fills
    the plot rather than sitting under a poor first baseline."""
    fig = go.Figure()
    by_strategy: dict[str, list[TrialRecord]] = {}
    for t in done:  # ``done`` is in trial (dispatch) order
        by_strategy.setdefault(strategy(t.origin), []).append(t)
    points = study.budgets
    series: dict[str, tuple[list[TrialRecord], Budget]] = {
        f"all strategies, {b.describe()}" if len(points) > 1 else "all strategies": (list(done), b)
        for b in points}
    series.update({name: (trials, points[-1]) for name, trials in by_strategy.items()})
    finals, yardsticks = [], []
    for name, (trials, budget) in series.items():
        xs, ys, best = [], [], math.inf
        for i, t in enumerate(trials, 1):
            if (t.objective is not None and t.feasible and budget.admits(_cost(t))
                    and t.objective > _ZERO):
                best = min(best, t.objective)
            if best < math.inf:
                xs.append(i)
                ys.append(best)
        if ys:
            finals.append(ys[-1])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line={"shape": "hv"}))
    at_value: dict[float, list[str]] = {}  # best uniform objective → the budgets it serves
    for budget in points:
        uniform = [t.objective for t in done if t.origin == BASELINE_ORIGIN and t.feasible
                   and t.objective is not None and t.objective > _ZERO
                   and budget.admits(_cost(t))]
        if uniform:
            at_value.setdefault(min(uniform), []).append(budget.describe())
    for value, names in at_value.items():  # add_hline's annotation lands off a log axis
        yardsticks.append(value)
        fig.add_hline(y=value, line_dash="dot", line_color="#c23616")
        fig.add_annotation(x=1, xref="paper", xanchor="right", y=math.log10(value),
                           yanchor="bottom", showarrow=False,
                           text=f"best uniform, {', '.join(names)}",
                           font={"size": 11, "color": "#c23616"})
    span = finals + yardsticks
    fig.update_layout(title="Best feasible objective so far",
                      xaxis_title="completed evaluations (of that strategy)",
                      yaxis={"title": f"best objective ({study.objective}), log", "type": "log",
                             **_LOG_TICKS, **({"range": _log_span(span)} if span else {})},
                      template="plotly_white", height=460)
    return fig


def _cost(t: TrialRecord) -> Cost:
    return Cost(t.avg_bits, t.total_bytes)


def _summary(study: StudyRecord, counts: Mapping[str, int], best: TrialRecord | None,
             at_points: Sequence[tuple[Budget, TrialRecord]] = ()) -> str:
    budgets = study.budgets
    rows = [("study", study.name), ("model", study.model), ("objective", study.objective),
            ("frontier" if len(budgets) > 1 else "budget",
             "; ".join(b.describe() for b in budgets)),
            ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none")]
    if best is not None:
        rows += [("best trial", f"{best.number} ({best.origin})"),
                 ("best objective", f"{best.objective:.6g}"),
                 ("best avg bits", f"{best.avg_bits:.4f}"),
                 ("best layers", study.space.summarize(best.candidate))]
    if len(study.budgets) > 1:
        rows += [(f"best at {b.describe()}", f"trial {t.number}: {_objective_text(t.objective)} "
                  f"at {t.avg_bits:.4f} bits") for b, t in at_points]
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
    # figures on every calibration sample: a screen's (multi-step selection) is not comparable
    done = [t for t in store.trials(study_name, COMPLETE) if t.samples is None]
    if not done:
        raise NoResultError(f"study {study_name!r} has no completed trial to report on")
    best = next(iter(store.best(study_name, top=1)), None)
    at_points = [(b, t) for b, t in store.frontier(study_name) if t is not None]
    sensitivity = load_sensitivity(store, study)
    figures = [pareto_figure(study, done, store.pareto(study_name), at_points)]
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
            f"{_summary(study, store.counts(study_name), best, at_points)}{body}</body></html>")


def write_report(store: TrialStore, study: str, out: str | Path) -> Path:
    path = Path(out)
    page = report_html(store, study)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot write report {path}: {exc.strerror or exc}") from None
    return path
