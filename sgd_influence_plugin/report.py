"""A single-file HTML report that works offline (plots and images inline as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
from typing import Dict, List, Optional, Sequence

import numpy as np

from .io_utils import atomic_write
from .labels import display_label


def _png_b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def _figure_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(
    scores: np.ndarray, labels: Optional[Sequence[str]], names: Optional[Sequence[str]]
) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(scores, bins=60, color="#4477aa")
    ax.set_yscale("log")  # heavy tails: the few extreme samples stay visible
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("influence (change of validation loss if removed; < 0 = harmful)")
    ax.set_ylabel("samples")
    out.append(_figure_b64(fig))
    plt.close(fig)
    if labels is not None:
        classes = sorted(set(labels), key=lambda x: (len(x), x))
        harmful = [int(np.sum((scores < 0) & (np.asarray(labels) == c))) for c in classes]
        total = [int(np.sum(np.asarray(labels) == c)) for c in classes]
        fig, ax = plt.subplots(figsize=(6, 3))
        ticks = [display_label(c, names) for c in classes]
        ax.bar(ticks, total, color="#dddddd", label="all")
        ax.bar(ticks, harmful, color="#cc3311", label="harmful")
        if names is not None:
            ax.tick_params(axis="x", labelrotation=45)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
        ax.set_xlabel("label")
        ax.set_ylabel("samples")
        ax.legend()
        out.append(_figure_b64(fig))
        plt.close(fig)
    return out


def _tiles(indices, scores, labels, thumbs, names) -> str:
    cells = []
    for i in indices:
        img = f'<img src="data:image/png;base64,{_png_b64(thumbs[i])}">' if thumbs[i] else ""
        lab = html.escape(display_label(str(labels[i]), names)) if labels is not None else ""
        cells.append(f'<div class="tile">{img}<br>#{int(i)} label {lab}<br>{scores[i]:.3g}</div>')
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
        for key, v in info.items()
        if not isinstance(v, (dict, list))
    )
    warnings = "".join(
        f'<p class="warn">Warning: {html.escape(str(w))}</p>' for w in info.get("warnings", [])
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SGD-influence report</title>
<style>body{{font-family:sans-serif;margin:2em}} .tile{{display:inline-block;margin:4px;
text-align:center;font-size:12px;width:90px}} .tile img{{image-rendering:pixelated}}
td{{padding:2px 8px}} .warn{{background:#fff3cd;padding:6px;border:1px solid #e0c060}}
</style></head><body>
<h1>SGD-influence report</h1>
<p>Influence = estimated change of the mean validation loss if the sample were removed from
training. <b>Negative = harmful</b> (removing it would lower the validation loss).</p>
{warnings}<h2>Most harmful</h2>{_tiles(order[:k], scores, labels, thumbs, label_names)}
<h2>Most helpful</h2>{_tiles(order[::-1][:k], scores, labels, thumbs, label_names)}
<h2>Distribution</h2>{plots}
<h2>Run</h2><table>{facts}</table>
</body></html>
"""
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)
