"""The HTML report: built from a constructed study, rendered by headless Chromium, plots present."""

import math
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from mpsearch.storage import NoResultError, StoreError
from mpsearch.storage.report import report_html, strategy, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def fill(builder):
    study = builder.study()
    for i in range(4):  # uniform baselines, the fp16 one scoring exactly 0
        builder.add(study, (i, i), [0.8, 0.3, 0.05, 0.0][i], origin="uniform")
    for n, (choices, obj) in enumerate([((1, 2), 0.2), ((0, 2), 0.25), ((2, 1), 0.12),
                                        ((1, 1), 0.28), ((2, 0), 0.4)]):
        builder.add(study, choices, obj, origin=f"evolutionary:g{n // 2}")
    builder.add(study, (0, 1), 0.5, origin="random")
    builder.add(study, (0, 0), None, origin="random")  # failed: not plotted
    return study


def test_report_page_is_self_contained(builder):
    fill(builder)
    page = report_html(builder.store, "s")
    assert page.count('class="plotly-graph-div"') == 3
    assert "<script src=" not in page  # plotly.js is inlined, nothing is fetched
    assert "uniform baselines" in page and "Pareto front" in page
    assert 'id="sensitivity-profile"' in page  # the labelled note while no profile is stored
    for name in ("uniform", "evolutionary", "random", "all strategies"):
        assert f'"name":"{name}"' in page


def test_report_draws_a_stored_sensitivity_profile(builder):
    from mpsearch.storage.profiles import ProfileKey, save_profile

    study = fill(builder)
    without = report_html(builder.store, "s").count('"type":"heatmap"')
    rows = [SimpleNamespace(layer=gene.name, option=option, value=0.1 * i, delta=0.1 * i,
                            weight_error=None, hessian_error=None, seconds=0.1)
            for gene in study.space.genes for i, option in enumerate(gene.options)]
    save_profile(builder.store, ProfileKey("m", "calib-fingerprint", "kl"), rows)
    page = report_html(builder.store, "s")
    assert page.count('"type":"heatmap"') == without + 1  # the profile beside the bits
    assert "sensitivity: objective delta" in page
    assert 'id="sensitivity-profile"' not in page
    # a second calibration's profile of the same model: ambiguous, so none is drawn
    save_profile(builder.store, ProfileKey("m", "other-fingerprint", "kl"), rows)
    assert 'id="sensitivity-profile"' in report_html(builder.store, "s")


def test_report_bad_input(builder, tmp_path):
    builder.study()
    with pytest.raises(NoResultError, match="no completed trial"):
        report_html(builder.store, "s")
    with pytest.raises(StoreError, match="no study 'x'"):
        report_html(builder.store, "x")


def test_strategy_of_origin():
    assert [strategy(o) for o in ("evolutionary:g3", "uniform", "")] == [
        "evolutionary", "uniform", "unknown"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install -y chromium); the page cannot be rendered")
def test_report_renders_in_headless_chromium(sqlite_builder, tmp_path):
    fill(sqlite_builder)
    path = write_report(sqlite_builder.store, "s", tmp_path / "report.html")
    with pytest.raises(StoreError, match="cannot write report"):
        write_report(sqlite_builder.store, "s", tmp_path / "no" / "report.html")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
         "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    # plotly.js ran: each figure div became a plot with its SVG layers
    plots = re.findall(r'<div id="fig\d"[^>]*class="[^"]*js-plotly-plot', dom)
    assert len(plots) == 3, dom[:2000]
    assert dom.count('class="main-svg"') >= 6
    assert dom.count('class="point"') >= 10  # the trials, front and baselines as markers
    assert 'class="hm"' in dom  # the per-layer heatmap trace
    assert dom.count('class="trace scatter') >= 8


def _figures(builder, name="s"):
    from mpsearch.storage.models import COMPLETE
    from mpsearch.storage.report import pareto_figure, progress_figure

    store = builder.store
    study = store.study(name)
    done = store.trials(name, COMPLETE)
    best = [(b, t) for b, t in store.frontier(name) if t is not None]
    return study, pareto_figure(study, done, store.pareto(name), best), \
        progress_figure(study, done)


def test_axes_span_the_search_and_an_exact_zero_is_named(builder):
    fill(builder)
    study, pareto, progress = _figures(builder)
    lo, hi = pareto.layout.xaxis.range
    assert 1.5 < lo < 2.25 and 8.25 < hi < 9  # int2 … int8 and the trials, not fp16 at 16 bits
    note = " ".join(a.text for a in pareto.layout.annotations)
    assert "off the plot: fp16 at 16 bits: 0 (exact)" in note
    assert pareto.layout.yaxis.dtick == "D2" and pareto.layout.yaxis.tickformat == ".2~g"
    shown = [y for tr in pareto.data for y in (tr.y or ())]
    assert min(shown) > 0.01  # no floor for a zero that is off the plot
    # The progress range runs from the best found (0.12) to the best uniform within the budget
    # (0.05 is int8 at 8.25 bits, over the 6.25 budget; int4 at 0.3 is the yardstick), not to
    # int2's 0.8.
    low, high = progress.layout.yaxis.range
    assert low < math.log10(0.12) < math.log10(0.3) < high < math.log10(0.8)
    assert [a.text for a in progress.layout.annotations] == ["best uniform, avg_bits <= 6.25"]


def test_a_frontier_study_draws_every_budget_and_its_best(builder):
    from mpsearch.spaces import Budget

    points = (Budget(4.25), Budget(5.25), Budget(6.25))
    spec = {"study": "f", "budget": {"avg_bits": [4.25, 5.25, 6.25]}}
    study, _ = builder.store.open_study("f", spec, spec, builder.space, "m", "kl", 100,
                                        budget=points[-1], frontier=points)
    for i in range(4):
        builder.add(study, (i, i), [0.8, 0.3, 0.05, 0.0][i], origin="uniform")
    for choices, obj in (((1, 2), 0.2), ((0, 2), 0.25), ((1, 1), 0.28), ((2, 0), 0.15)):
        builder.add(study, choices, obj, origin="evolutionary:g0")
    _, pareto, progress = _figures(builder, "f")
    assert sorted(s.x0 for s in pareto.layout.shapes) == [4.25, 5.25, 6.25]
    stars = next(tr for tr in pareto.data if tr.name == "best at each budget")
    assert list(stars.y) == [0.28, 0.15, 0.15]
    assert {tr.name for tr in progress.data} >= {f"all strategies, avg_bits <= {b:g}"
                                                 for b in (4.25, 5.25, 6.25)}
    page = report_html(builder.store, "f")
    assert "frontier</th><td>avg_bits &lt;= 4.25; avg_bits &lt;= 5.25; avg_bits &lt;= 6.25" in page
    assert "best at avg_bits &lt;= 4.25</th><td>trial 6: 0.28 at 4.2500 bits" in page
