"""A single-file HTML report that works offline (plots and images inline as base64 PNG), and
how the tool shows a score wherever it does (:func:`format_score`). The plots are
:mod:`.figures`.
"""

from __future__ import annotations

import base64
import functools
import html
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .figures import report_plots
from .io_utils import atomic_write
from .labels import display_label
from .target import centring_words


def _png_b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def _mime(path: str) -> str:
    """Media type of an image file for a data: URL (PNG unless the extension says else)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "bmp": "image/bmp", "gif": "image/gif"}.get(
        ext, "image/png"
    )


#: Thumbnails are shown at least this many CSS pixels wide or high, enlarged by a whole factor.
MIN_TILE_PX = 96


def format_score(x: float) -> str:
    """How an influence score is shown to a reader (summary, report, demo): three
    significant digits in scientific notation, e.g. ``-7.25e-04``. The CSVs keep every digit.
    """
    return f"{float(x):.2e}"


def _plots_html(scores, labels, names) -> str:
    """The report's plots as inline images, or a line saying why there are none."""
    shown = "".join(
        f'<img src="data:image/png;base64,{p}">' for p in report_plots(scores, labels, names)
    )
    return shown or "<p>Plots left out: matplotlib is not installed in this Python.</p>"


def _shown_size(path: str) -> Tuple[int, int]:
    """CSS size of a thumbnail: its pixels times the smallest whole factor reaching
    :data:`MIN_TILE_PX` on its longer side (56x56 -> 112x112), so pixels stay square.
    """
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    k = max(1, -(-MIN_TILE_PX // max(w, h)))
    return w * k, h * k


def _tiles(
    indices, scores, labels, thumbs, names, actions=None, suggested=None, details=None
) -> str:
    cells = []
    for i in indices:
        width = MIN_TILE_PX + 24
        img = ""
        if details is not None and details[i] and not thumbs[i]:
            width = max(width, 160)
            img = f'<div class="feat">{html.escape(details[i])}</div>'
        if thumbs[i]:
            w, h = _shown_size(thumbs[i])
            width = max(width, w)
            img = (
                f'<img src="data:{_mime(thumbs[i])};base64,{_png_b64(thumbs[i])}" width="{w}" '
                f'height="{h}" alt="row {int(i)}">'
            )
        lab = html.escape(display_label(str(labels[i]), names)) if labels is not None else ""
        if suggested is not None and suggested[i] != "" and labels is not None:
            act = actions[i] if actions is not None else "keep"
            lab += (
                f'<br><span class="meta">model: '
                f"{html.escape(display_label(str(suggested[i]), names))}</span>"
                + (f' <span class="act">{html.escape(act)}</span>' if act != "keep" else "")
            )
        cells.append(
            f'<div class="tile" style="width:{width}px">{img}<div class="lab">{lab}</div>'
            f'<div class="meta">row {int(i)} &middot; {format_score(scores[i])}</div></div>'
        )
    return "\n".join(cells)


#: The run's facts (keys of ``settings.yaml``, top level or under ``used``) the report's Run
#: table shows first, in this order and in these words.
RUN_ROWS = (
    ("model", "model"),
    ("train_csv", "training CSV"),
    ("val_csv", "validation CSV"),
    ("n_train", "training samples"),
    ("n_val", "validation samples"),
    ("n_params", "trained parameters"),
    ("lr", "learning rate of the replayed epoch"),
    ("weight_decay", "weight decay"),
    ("batch_size", "batch size"),
    ("epochs", "epochs of the training phase"),
    ("trials", "trials combined"),
    ("seeds", "seeds of the trials' sample orders"),
    ("cache", "cache"),
    ("context", "compute context"),
    ("validation_loss", "mean validation loss after the replayed epoch"),
    ("cache_bytes", "cache size per trial"),
    ("label_names", "class names file"),
    ("influence", "scores"),
)
#: Facts the report explains elsewhere (the sign at the top) or that are not for reading.
_NOT_SHOWN = {"sign"}


def _fact_text(key: str, value) -> str:
    if key == "cache_bytes":
        return f"{value / 1e6:.3g} MB" if value >= 1e5 else f"{value / 1e3:.3g} kB"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def checked_table(rec: Dict) -> str:
    """The changes the recommendation's check tried (``settings.yaml``'s ``recommendation``),
    one table row each, the recommended one marked; '' when none was tried.
    """
    checked = rec.get("checked") or []
    if not checked:
        return ""

    def num(x, fmt: str) -> str:
        return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"

    body = "".join(
        f"<tr><td>{html.escape(str(c.get('action')))} {int(c.get('rows', 0))}</td>"
        f"<td>{html.escape(str(c.get('which', '')))}</td>"
        f"<td>{num(c.get('heldout_loss_change'), '+.4g')}</td><td>{num(c.get('z'), '+.1f')}</td>"
        f"<td>{'yes' if c.get('passes') else 'no'}</td>"
        f"<td>{'<b>recommended</b>' if c.get('recommended') else ''}</td></tr>"
        for c in checked
    )
    again = (rec.get("check") or {}).get("second_order")
    if again:
        body += (
            f"<tr><td>{html.escape(str(again.get('action')))} {int(again.get('rows', 0))}</td>"
            "<td>the chosen change again, in a second sample order</td>"
            f"<td>{num(again.get('heldout_loss_change'), '+.4g')}</td>"
            f"<td>{num(again.get('z'), '+.1f')}</td>"
            f"<td>{'yes' if again.get('passes') else 'no'}</td><td></td></tr>"
        )
    bar = rec.get("z_required")
    return (
        "<h3>Changes the check tried</h3><p>One settling epoch from the trained model on the "
        "data with each change, then the loss on held-out validation rows against the data as "
        f"given. A change passes at z {num(-bar if bar is not None else math.nan, '+.2f')} or "
        "below; the smallest within one standard error of the best is recommended if it "
        "passes again in a second sample order.</p><table>"
        "<tr><th>change</th><th>which rows</th><th>held-out loss change</th><th>z</th>"
        f"<th>passes</th><th></th></tr>{body}</table>"
    )


def _pairs_html(pairs: Optional[Sequence[str]]) -> str:
    """The class pairs the changes concentrate on (:func:`.labels.class_pairs`), or ''."""
    if not pairs:
        return ""
    items = "".join(f"<li>{html.escape(p)}</li>" for p in pairs)
    return (
        f"<p>The changes concentrate on these class pairs (check them first):</p><ul>{items}</ul>"
    )


def run_rows(info: Dict) -> List[Tuple[str, str]]:
    """The Run table: ``(what, value)`` in words, for the facts of :data:`RUN_ROWS`, then how
    the learning rate was chosen, then any other plain fact with its key in words.
    """
    facts = {**info, **info.get("used", {})}
    rows = [
        (what, _fact_text(key, facts[key]))
        for key, what in RUN_ROWS
        if facts.get(key) is not None and not isinstance(facts[key], dict)
    ]
    reason = info.get("lr_selection", {}).get("stable_lr_reason")
    if reason and info.get("lr_selection", {}).get("source") == "auto":
        rows.append(("how the learning rate was chosen", f"automatically: {reason}"))
    known = {key for key, _ in RUN_ROWS} | _NOT_SHOWN
    for key, value in facts.items():
        if key not in known and not isinstance(value, (dict, list)) and value is not None:
            rows.append((str(key).replace("_", " "), str(value)))
    return rows


#: The report's page; ``{{`` and ``}}`` are the style sheet's braces.
_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SGD-influence report</title>
<style>body{{font-family:sans-serif;margin:2em}}
.tile{{display:inline-block;vertical-align:top;margin:6px;text-align:center;font-size:13px}}
.tile img{{image-rendering:pixelated;display:block;margin:0 auto 3px}} .lab{{font-weight:bold}}
.meta{{color:#555;font-size:11px}} td{{padding:2px 8px}}
.warn{{background:#fff3cd;padding:6px;border:1px solid #e0c060}}
.feat{{font-family:monospace;font-size:11px;text-align:left;margin-bottom:3px}}
.act{{background:#cc3311;color:#fff;padding:0 4px;border-radius:3px}}
</style></head><body>
<h1>SGD-influence report</h1>
<p>Influence = estimated change of the mean validation loss if the sample were removed from
training ({centring}). <b>Negative = harmful</b> (removing it would lower the validation
loss).</p>
<p>Each tile: the image (or the row's values), its label, its row in the training CSV
(0-based, the influence CSV's <code>datasource_index</code>) and its influence.</p>
{warnings}{recommendation}
<h2>Most harmful</h2>{harmful}
<h2>Most helpful</h2>{helpful}
<h2>Distribution</h2>{plots}
<h2>Run</h2><table>{facts}</table>
</body></html>
"""


def recommendation_html(rec: Dict) -> str:
    """The Recommendation section from ``settings.yaml``'s ``recommendation`` (counts,
    reason, what to do next, the changes the check tried, the class pairs); '' without one.
    """
    if not rec:
        return ""
    counts = rec.get("counts", {})
    changes = counts.get("relabel", 0) or counts.get("remove", 0)
    return (
        f"<h2>Recommendation</h2><p><b>keep {counts.get('keep', 0)}, relabel "
        f"{counts.get('relabel', 0)}, remove {counts.get('remove', 0)}</b>. "
        f"{html.escape(str(rec.get('reason', '')))}.</p>"
        + (
            "<p>Next: retrain on the cleansed CSV written beside the influence CSV; it applies "
            "this recommendation.</p>"
            if changes
            else "<p>Next: nothing to change.</p>"
        )
        + checked_table(rec)
        + _pairs_html(rec.get("class_pairs") if changes else None)
    )


def _facts_html(info: Dict) -> str:
    """The Run table's rows (:func:`run_rows`)."""
    return "".join(
        f"<tr><td>{html.escape(what)}</td><td>{html.escape(value)}</td></tr>"
        for what, value in run_rows(info)
    )


def write_report(
    path: str,
    scores: np.ndarray,
    labels: Optional[Sequence[str]],
    thumbs: Sequence[str],
    info: Dict,
    k: int = 24,
    label_names: Optional[Sequence[str]] = None,
    actions: Optional[Sequence[str]] = None,
    suggested: Optional[Sequence[str]] = None,
    details: Optional[Sequence[str]] = None,
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
        actions / suggested: (N,) the recommendation's action and the model's class per row
            ('' = none); each tile shows the given label beside the suggested one.
        details: (N,) text shown in a tile instead of an image ('' = none): a table row's
            feature values, or the data file it names. For a regression (``info["task"]``)
            the plot by class is left out (the label is a number, not a class).

    """
    order = np.argsort(scores, kind="stable")
    by_class = labels if info.get("task") != "regression" else None
    tiles = functools.partial(
        _tiles,
        scores=scores,
        labels=labels,
        thumbs=thumbs,
        names=label_names,
        actions=actions,
        suggested=suggested,
        details=details,
    )
    recommendation = recommendation_html(info.get("recommendation") or {})
    changed = [i for i in order if actions is not None and actions[i] != "keep"]
    if changed:
        recommendation += "<h3>Rows to change (most harmful first)</h3>" + tiles(changed[:k])
    page = _PAGE.format(
        warnings="".join(
            f'<p class="warn">Warning: {html.escape(str(w))}</p>' for w in info.get("warnings", [])
        ),
        recommendation=recommendation,
        centring=html.escape(centring_words(info.get("used", {}).get("target"))),
        harmful=tiles(order[:k]),
        helpful=tiles(order[::-1][:k]),
        plots=_plots_html(scores, by_class, label_names),
        facts=_facts_html(info),
    )
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)
