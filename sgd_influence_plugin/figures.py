"""The figures the tool draws: the report's histogram of the scores and its samples per
class, and the scaled axes every plot uses (the check's plot too), with at most
:data:`MAX_X_TICKS` ticks and the power of ten in the axis label.

matplotlib is imported only when a figure is drawn: the console's own Python may lack it.
"""

from __future__ import annotations

import base64
import io
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .labels import display_label


def _figure_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: Most ticks on a plot's x axis, so that their labels never run into each other.
MAX_X_TICKS = 7


def axis_scale(values) -> Tuple[float, str]:
    """``(factor, suffix)`` for plotting ``values`` in readable units: plot ``values / factor``
    and append ``suffix`` (mathtext that reads "(×10⁻⁴)") to the axis label.

    The power of ten goes into the label, not into matplotlib's offset text, which is drawn
    below the tick labels at the right end of the axis and collides with a long axis label.
    Values whose largest magnitude lies in [0.01, 1000) are left as they are.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    top = float(np.max(np.abs(finite))) if finite.size else 0.0
    if top == 0 or 1e-2 <= top < 1e3:
        return 1.0, ""
    e = int(math.floor(math.log10(top)))
    return 10.0**e, rf" ($\times 10^{{{e}}}$)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram_figure(scores: np.ndarray):
    """Histogram of the influence (log counts: the few extreme samples stay visible).

    At most :data:`MAX_X_TICKS` ticks on the x axis; the power of ten is in the axis label
    (:func:`axis_scale`).
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    factor, suffix = axis_scale(scores)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(np.asarray(scores, dtype=np.float64) / factor, bins=60, color="#4477aa")
    ax.set_yscale("log")
    ax.axvline(0, color="k", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_X_TICKS - 1))
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    # Two short lines: matplotlib crops an axis label wider than its axes from saved figures.
    ax.set_xlabel(f"influence{suffix}\nchange of the validation loss if removed; < 0 = harmful")
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
    # bars at positions 0..C-1 with the labels as tick text: labels given as strings of
    # numbers would otherwise make matplotlib log a note about categorical units on each run
    at = np.arange(len(classes))
    ax.bar(at, total, color="#dddddd", label="all samples")
    ax.bar(at, harmful, color="#cc3311", label="harmful (< 0)")
    ax.set_xticks(at)
    ax.set_xticklabels([display_label(c, names) for c in classes])
    if names is not None:
        ax.tick_params(axis="x", labelrotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.set_xlabel("label")
    ax.set_ylabel("samples")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def report_plots(
    scores: np.ndarray, labels: Optional[Sequence[str]], names: Optional[Sequence[str]]
) -> List[str]:
    """Base64 PNGs of the report's plots; none without matplotlib (the console's own Python
    may lack it: the report then says so instead).
    """
    try:
        plt = _pyplot()
    except ImportError:
        return []
    figures = [histogram_figure(scores)]
    if labels is not None:
        figures.append(class_figure(scores, labels, names))
    out = [_figure_b64(fig) for fig in figures]
    for fig in figures:
        plt.close(fig)
    return out
