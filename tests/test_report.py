"""report.html: legible thumbnails, a legend that covers no bar, class names on the tiles."""

import base64
import re

import numpy as np
import pytest
from PIL import Image

from sgd_influence_plugin import figures, report


def _thumb(tmp_path, name, w, h):
    path = tmp_path / name
    Image.fromarray(np.full((h, w), 128, np.uint8)).save(path)
    return str(path)


def test_thumbnails_are_shown_at_least_96px_by_a_whole_factor(tmp_path):
    # (stored size) -> (shown size), worked out by hand: the smallest whole factor that takes
    # the longer side to 96 px or more; large thumbnails are shown as they are.
    cases = {(8, 8): (96, 96), (56, 56): (112, 112), (64, 32): (128, 64), (200, 100): (200, 100)}
    thumbs = [_thumb(tmp_path, f"t{i}.png", w, h) for i, (w, h) in enumerate(cases)]
    scores = np.array([-2.0, -1.0, 1.0, 2.0])
    labels = ["8", "0", "3", "8"]
    out = tmp_path / "report.html"
    report.write_report(
        str(out), scores, labels, thumbs, {"lr": 0.1}, k=4, label_names=[f"n{k}" for k in range(9)]
    )
    page = out.read_text(encoding="utf-8")
    shown = re.findall(
        r'<img src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)" alt="row (\d+)"',
        page,
    )
    assert len(shown) == 8  # four harmful and four helpful tiles
    for data, w, h, row in shown:
        stored = list(cases)[int(row)]
        assert (int(w), int(h)) == cases[stored]
        assert min(int(w), int(h)) >= 32 and max(int(w), int(h)) >= 96
        assert base64.b64decode(data) == open(thumbs[int(row)], "rb").read()
    assert "image-rendering:pixelated" in page
    # the tiles name the class: row 0 has label 8 -> the ninth name
    assert '<div class="lab">n8 (8)</div><div class="meta">row 0 &middot; -2.00e+00</div>' in page


def test_class_chart_legend_covers_no_bar():
    rng = np.random.RandomState(0)
    labels = [str(c) for c in rng.randint(0, 10, 500)]
    scores = rng.randn(500)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"] + [
        f"class {i}" for i in "abcde"
    ]
    fig = figures.class_figure(scores, labels, names)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        legend = ax.get_legend()
        assert legend is not None
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        # and it is inside what gets saved (bbox_inches="tight" keeps every artist)
        tight = fig.get_tightbbox(renderer)
        box = legend.get_window_extent(renderer).transformed(fig.dpi_scale_trans.inverted())
        assert tight.x0 <= box.x0 and box.x1 <= tight.x1
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == [f"{n} ({k})" for k, n in enumerate(names)]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_class_chart_bars_are_the_counts_and_log_nothing(caplog):
    """Labels that are strings of numbers (every console CSV's) give one bar per class with
    its count and harmful count, and no matplotlib note about categorical units in the
    user's log."""
    import logging

    labels = ["10", "2", "2", "0", "10", "10"]
    scores = np.array([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    with caplog.at_level(logging.INFO):
        fig = figures.class_figure(scores, labels, None)
    try:
        assert not [r for r in caplog.records if r.name.startswith("matplotlib")]
        (ax,) = fig.axes
        fig.canvas.draw()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "10"]
        heights = [round(b.get_height()) for b in ax.patches]
        assert heights == [1, 2, 3, 0, 1, 2]  # all samples, then harmful, per class
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _assert_readable(fig, ax, scale_text):
    """Tick labels apart, no offset text (the power of ten is in the label), and every axis
    label narrower than its axes (savefig's tight box crops a wider one)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = sorted(ax.get_xlim())
    shown = [
        t
        for loc, t in zip(ax.xaxis.get_majorticklocs(), ax.get_xticklabels())
        if lo <= loc <= hi and t.get_text()
    ]
    ticks = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    assert 3 <= len(ticks) <= figures.MAX_X_TICKS
    for left, right in zip(ticks, ticks[1:]):
        assert left.x1 < right.x0, [t.get_text() for t in shown]
    assert ax.xaxis.get_offset_text().get_text() == ""
    if ax.get_yscale() == "linear":
        assert ax.yaxis.get_offset_text().get_text() == ""
    axes = ax.get_window_extent(renderer)
    for label in (ax.xaxis.label, ax.yaxis.label):
        box = label.get_window_extent(renderer)
        along = box.width if label is ax.xaxis.label else box.height
        assert along <= (axes.width if label is ax.xaxis.label else axes.height)
    assert scale_text in ax.xaxis.label.get_text()


@pytest.mark.parametrize("scale, shown", [(1e-7, "10^{-7}"), (1e-4, "10^{-4}"), (0.1, "")])
def test_histogram_and_check_plot_are_legible_at_any_scale(scale, shown):
    import matplotlib.pyplot as plt

    from sgd_influence_plugin.check import check_figure
    from sgd_influence_plugin.fidelity import CheckResult

    rng = np.random.RandomState(1)
    scores = rng.permutation(np.linspace(-7.25, 3.3, 2000)) * scale  # like the sample's
    fig = figures.histogram_figure(scores)
    try:
        _assert_readable(fig, fig.axes[0], shown)
    finally:
        plt.close(fig)
    estimate = scores[:30]
    result = CheckResult(
        index=np.arange(30),
        group=["harmful"] * 10 + ["helpful"] * 10 + ["random"] * 10,
        estimate=estimate,
        actual=estimate * 1.1 + rng.randn(30) * scale / 10,
        pearson=0.99,
        spearman=0.98,
        verdict="good",
        seconds=1.0,
        timings={},
        lr=0.01,
        weight_decay=0.0,
        batch_size=32,
        val_loss_full=0.5,
        u_growth=1.0,
        n_train=2000,
    )
    fig = check_figure(result)
    try:
        _assert_readable(fig, fig.axes[0], shown)
        assert shown in fig.axes[0].yaxis.label.get_text()
    finally:
        plt.close(fig)


def test_scores_read_one_way_and_the_run_table_in_words():
    assert report.format_score(-0.000725341) == "-7.25e-04"
    assert report.format_score(12.0) == "1.20e+01"
    facts = {
        "used": {"lr": 0.0039, "batch_size": 64, "seeds": [0, 1, 2]},
        "lr_selection": {"source": "auto", "stable_lr_reason": "the reason"},
        "cache_bytes": 123481,
        "sign": "explained at the top",
        "made_up_fact": 7,
    }
    rows = dict(report.run_rows(facts))
    assert rows["learning rate of the replayed epoch"] == "0.0039"
    assert rows["seeds of the trials' sample orders"] == "0, 1, 2"
    assert rows["cache size per trial"] == "0.123 MB"
    assert rows["how the learning rate was chosen"] == "automatically: the reason"
    assert rows["made up fact"] == "7"
    assert not {"lr", "batch_size", "cache_bytes", "sign", "used"} & set(rows)
