"""A single-file HTML report that works offline (plots and images inline as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .io_utils import atomic_write
from .labels import display_label


def _png_b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def _mime(path: str) -> str:
    """Media type of an image file for a data: URL (PNG unless the extension says else)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "bmp": "image/bmp", "gif": "image/gif"}.get(
        ext, "image/png"
    )


def _figure_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: Thumbnails are shown at least this many CSS pixels wide or high, enlarged by a whole factor.
MIN_TILE_PX = 96


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_figure(scores: np.ndarray):
    """Histogram of the influence (log counts: the few extreme samples stay visible)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(scores, bins=60, color="#4477aa")
    ax.set_yscale("log")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("influence (change of validation loss if removed; < 0 = harmful)")
    ax.set_ylabel("samples")
    return fig


def class_figure(scores: np.ndarray, labels: Sequence[str], names: Optional[Sequence[str]]):
    """Samples per class (grey) and the harmful ones among them (red, influence < 0).

    The legend sits to the right of the axes, so it covers no bar.
    """
    plt = _pyplot()
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()), key=lambda x: (len(x), x))
    harmful = [int(np.sum((scores < 0) & (labels == c))) for c in classes]
    total = [int(np.sum(labels == c)) for c in classes]
    fig, ax = plt.subplots(figsize=(7, 3))
    ticks = [display_label(c, names) for c in classes]
    ax.bar(ticks, total, color="#dddddd", label="all samples")
    ax.bar(ticks, harmful, color="#cc3311", label="harmful (< 0)")
    if names is not None:
        ax.tick_params(axis="x", labelrotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.set_xlabel("label")
    ax.set_ylabel("samples")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def _plots(
    scores: np.ndarray, labels: Optional[Sequence[str]], names: Optional[Sequence[str]]
) -> List[str]:
    plt = _pyplot()
    figures = [histogram_figure(scores)]
    if labels is not None:
        figures.append(class_figure(scores, labels, names))
    out = [_figure_b64(fig) for fig in figures]
    for fig in figures:
        plt.close(fig)
    return out


def _shown_size(path: str) -> Tuple[int, int]:
    """CSS size of a thumbnail: its pixels times the smallest whole factor reaching
    :data:`MIN_TILE_PX` on its longer side (56x56 -> 112x112), so pixels stay square.
    """
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    k = max(1, -(-MIN_TILE_PX // max(w, h)))
    return w * k, h * k


def _tiles(indices, scores, labels, thumbs, names) -> str:
    cells = []
    for i in indices:
        width = MIN_TILE_PX + 24
        img = ""
        if thumbs[i]:
            w, h = _shown_size(thumbs[i])
            width = max(width, w)
            img = (
                f'<img src="data:{_mime(thumbs[i])};base64,{_png_b64(thumbs[i])}" width="{w}" '
                f'height="{h}" alt="row {int(i)}">'
            )
        lab = html.escape(display_label(str(labels[i]), names)) if labels is not None else ""
        cells.append(
            f'<div class="tile" style="width:{width}px">{img}<div class="lab">{lab}</div>'
            f'<div class="meta">row {int(i)} &middot; {scores[i]:.3g}</div></div>'
        )
    return "\n".join(cells)


def write_report(
    path: str,
    scores: np.ndarray,
    labels: Optional[Sequence[str]],
    thumbs: Sequence[str],
    info: Dict,
    k: int = 24,
    label_names: Optional[Sequence[str]] = None,
) -> None:
    """Write the report: top-``k`` harmful and helpful samples, histogram, per-class counts.

    Args:
        path: the HTML file to write.
        scores: float64 (N,), training-row order; negative = harmful.
        labels: (N,) label cells as written in the training CSV, or None.
        thumbs: (N,) thumbnail paths ('' = none), embedded as base64.
        info: run facts; scalar values are listed, ``warnings`` shown on top.
        k: samples shown in each of the harmful and helpful rows.
        label_names: class names, ``label_names[j]`` for label j; None = numbers only.

    """
    order = np.argsort(scores, kind="stable")
    plots = "".join(
        f'<img src="data:image/png;base64,{p}">' for p in _plots(scores, labels, label_names)
    )
    facts = "".join(
        f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(str(v))}</td></tr>"
        for key, v in {**info.get("used", {}), **info}.items()
        if not isinstance(v, (dict, list))
    )
    warnings = "".join(
        f'<p class="warn">Warning: {html.escape(str(w))}</p>' for w in info.get("warnings", [])
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SGD-influence report</title>
<style>body{{font-family:sans-serif;margin:2em}}
.tile{{display:inline-block;vertical-align:top;margin:6px;text-align:center;font-size:13px}}
.tile img{{image-rendering:pixelated;display:block;margin:0 auto 3px}} .lab{{font-weight:bold}}
.meta{{color:#555}} td{{padding:2px 8px}}
.warn{{background:#fff3cd;padding:6px;border:1px solid #e0c060}}
</style></head><body>
<h1>SGD-influence report</h1>
<p>Influence = estimated change of the mean validation loss if the sample were removed from
training. <b>Negative = harmful</b> (removing it would lower the validation loss).</p>
<p>Each tile: the image, its label, its row in the training CSV (0-based, the influence CSV's
<code>datasource_index</code>) and its influence.</p>
{warnings}<h2>Most harmful</h2>{_tiles(order[:k], scores, labels, thumbs, label_names)}
<h2>Most helpful</h2>{_tiles(order[::-1][:k], scores, labels, thumbs, label_names)}
<h2>Distribution</h2>{plots}
<h2>Run</h2><table>{facts}</table>
</body></html>
"""
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)
