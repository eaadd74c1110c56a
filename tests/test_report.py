"""report.html: legible thumbnails, a legend that covers no bar, class names on the tiles."""

import base64
import re

import numpy as np
from PIL import Image

from sgd_influence_plugin import report


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
    assert '<div class="lab">n8 (8)</div><div class="meta">row 0 &middot; -2</div>' in page


def test_class_chart_legend_covers_no_bar():
    rng = np.random.RandomState(0)
    labels = [str(c) for c in rng.randint(0, 10, 500)]
    scores = rng.randn(500)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"] + [
        f"class {i}" for i in "abcde"
    ]
    fig = report.class_figure(scores, labels, names)
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
