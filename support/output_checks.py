"""Checkers of what the user reads, for the tests: an influence CSV's rows, the summary and the
report, each against a ranking the test computed itself; the values a run recorded in its
settings file.
"""

from __future__ import annotations

import base64
import csv
import os
import re

import numpy as np
import pytest


def used(facts, key):
    """A value the run actually used, from the settings.yaml beside the output (top level,
    or under ``used:``).
    """
    return facts.get("used", facts)[key]


def csv_rows(path):
    """The rows of a CSV as dicts by header cell."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(path, name):
    """float64 (N,) column ``name`` of a CSV with ``datasource_index``, in training-row order."""
    rows = csv_rows(path)
    out = np.full(len(rows), np.nan)
    for r in rows:
        out[int(r["datasource_index"])] = float(r[name])
    return out


def rows_csv(val_csv, rows, name):
    """The CSV ``val_csv``'s rows ``rows`` alone (e.g. half A of the validation rows), as a CSV
    ``name`` beside it (so its relative file paths hold); its path.
    """
    path = os.path.join(os.path.dirname(val_csv), name)
    with open(val_csv, newline="") as f:
        table = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(table[0])
        w.writerows(table[1 + i] for i in rows)
    return str(path)


def ranked_from_csv(rows):
    """(datasource_index, label, influence, original) of an influence CSV's rows, in order."""
    return [
        (int(r["datasource_index"]), r["y:label"], float(r["influence"]), r["original"])
        for r in rows
    ]


def check_summary(text, ranked):
    """``ranked``: (datasource_index, label, influence, original) of every training sample,
    most harmful first, as the caller computed it.
    """
    scores = np.array([r[2] for r in ranked])
    counts = re.search(
        r"training samples: (\d+)\s+harmful \(influence < 0\): (\d+)\s+"
        r"helpful \(> 0\): (\d+)\s+zero: (\d+)",
        text,
    )
    assert counts, text
    assert [int(c) for c in counts.groups()] == [
        len(ranked),
        int(np.sum(scores < 0)),
        int(np.sum(scores > 0)),
        int(np.sum(scores == 0)),
    ]
    # Harmful share per class.
    per_class = {}
    for _, label, score, _ in ranked:
        h, n = per_class.get(label, (0, 0))
        per_class[label] = (h + (score < 0), n + 1)
    block = text.split("harmful share per class", 1)[1].split("\n\n", 1)[0]
    shown = {
        lab: (int(h), int(n), float(pct))
        for lab, h, n, pct in re.findall(r"^\s+(\S+): (\d+) / (\d+) \(([\d.]+)%\)$", block, re.M)
    }
    assert {k: v[:2] for k, v in shown.items()} == per_class
    for h, n, pct in shown.values():
        assert pct == pytest.approx(100 * h / n, abs=0.05)
    # The ten most harmful, in order.
    top = text.split("top 10 harmful", 1)[1].splitlines()[1:11]
    assert len(top) == 10
    for line, (index, label, score, original) in zip(top, ranked[:10]):
        cells = [c.strip() for c in line.split(",")]
        assert (int(cells[0]), cells[1], cells[3]) == (index, label, original), line
        assert float(cells[2]) == pytest.approx(score, rel=5e-3)  # shown to 3 digits
    return counts


def _tiles(section):
    """(index, label, score, image bytes) of each tile in a report section."""
    out = []
    for tile in section.split('class="tile"')[1:]:
        img = re.search(r"base64,([A-Za-z0-9+/=]+)", tile)
        lab = re.search(r'class="lab">([^<]*)(?:<br>|</div>)', tile)  # label, then model's class
        m = re.search(r"row (\d+) &middot; ([-+0-9.e]+)", tile)
        assert img and lab and m, tile[:200]
        out.append((int(m.group(1)), lab.group(1), float(m.group(2)), base64.b64decode(img[1])))
    return out


def check_report(page, ranked, folder):
    """The report's two galleries: the most harmful (lowest first) and the most helpful
    (highest first), each tile with the sample's own label, score and thumbnail.
    """
    assert "Most harmful" in page and "Most helpful" in page
    harmful_part, rest = page.split("Most harmful", 1)[1].split("Most helpful", 1)
    harmful, helpful = _tiles(harmful_part), _tiles(rest)
    k = len(harmful)
    assert 10 <= k == len(helpful) <= len(ranked) // 2
    images = {
        int(r["datasource_index"]): r["x:image"]
        for r in csv_rows(os.path.join(folder, "influence.csv"))
    }
    for tiles, expected in ((harmful, ranked[:k]), (helpful, ranked[::-1][:k])):
        assert [t[0] for t in tiles] == [r[0] for r in expected]
        for (index, label, score, png), (_, want_label, want_score, _) in zip(tiles, expected):
            assert label == want_label
            assert score == pytest.approx(want_score, rel=5e-3)
            # the very image the CSV's x:image names for that row
            with open(os.path.join(folder, images[index]), "rb") as f:
                assert png == f.read()
