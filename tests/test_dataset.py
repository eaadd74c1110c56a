"""The dataset reader against nnabla's own CsvDataSource, on real PNG files; the row numbers
its messages give, as the user sees them."""

import os

import numpy as np
import pytest
from PIL import Image

from sgd_influence_plugin import cli
from sgd_influence_plugin.dataset import (
    load_dataset,
    parse_header_cell,
    read_csv_rows,
    read_csv_table,
)
from support.user_files import argv_for, one_line_error, tree


def _csv_data_source_rows(path, normalize):
    from nnabla.utils.data_source_implements import CsvDataSource

    src = CsvDataSource(path, shuffle=False, normalize=normalize)
    rows = [src._get_data(i) for i in range(src.size)]
    return src.variables, rows


@pytest.mark.parametrize("normalize", [True, False])
def test_grayscale_pngs_match_nnabla_csv_data_source(data28, normalize):
    ds = load_dataset(data28["train"], {"x": (1, 28, 28), "y": (1,)}, normalize=normalize)
    variables, rows = _csv_data_source_rows(data28["train"], normalize)
    assert variables == ("x", "y")
    assert ds.size == len(rows) == 256
    for i in (0, 1, 17, 255):
        x_ref, y_ref = (np.asarray(v, dtype=np.float32) for v in rows[i])
        assert x_ref.shape == (1, 28, 28)
        np.testing.assert_array_equal(ds.arrays["x"][i], x_ref)
        np.testing.assert_array_equal(ds.arrays["y"][i], y_ref.reshape(1))
    assert 0.0 <= ds.arrays["x"].min() and ds.arrays["x"].max() <= (1.0 if normalize else 255.0)


def test_rgb_vectors_and_comment_columns_match_nnabla(tmp_path):
    rng = np.random.RandomState(0)
    os.makedirs(tmp_path / "img")
    lines = ["#note,x:image,v__0,v__1,v__2,y:label"]
    for i in range(5):
        Image.fromarray(rng.randint(0, 256, (6, 4, 3)).astype(np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
        lines.append(f"comment {i},img/{i}.png,{i},{i * 0.5},-1,{i % 3}")
    path = str(tmp_path / "d.csv")
    open(path, "w").write("\n".join(lines) + "\n")
    ds = load_dataset(path, {"x": (3, 6, 4), "v": (3,), "y": (1,)})
    variables, rows = _csv_data_source_rows(path, True)
    assert variables == ("x", "v", "y")
    for i, (x, v, y) in enumerate(rows):
        np.testing.assert_allclose(ds.arrays["x"][i], np.asarray(x, np.float32), rtol=1e-7)
        np.testing.assert_allclose(ds.arrays["v"][i], np.asarray(v, np.float32))
        np.testing.assert_allclose(ds.arrays["y"][i], np.asarray(y, np.float32).ravel())
    assert ds.cell(2, "#note") == "comment 2"
    assert ds.columns["v"] == ["v__0", "v__1", "v__2"]


def test_header_cells_parse():
    assert parse_header_cell("x:image") == ("x", None, "image")
    assert parse_header_cell("y__3:label") == ("y", 3, "label")
    assert parse_header_cell("t") == ("t", None, None)


def test_paths_are_relative_to_the_csv_folder(data28, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # far from the CSV
    ds = load_dataset(data28["train"], {"x": (1, 28, 28), "y": (1,)})
    assert ds.arrays["x"].shape == (256, 1, 28, 28)
    header, rows = read_csv_table(data28["train"])
    assert header == ["x:image", "y:label"] and len(rows) == 256


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
@pytest.mark.parametrize("normalize", [True, False])
def test_png_decoding_is_nnabla_loaders_bit_for_bit(tmp_path, mode, normalize):
    """The fast PNG path (L and RGB) and the fallback give exactly what nnabla_cli reads
    (16-bit and 1-bit PNGs, which it reads oddly, are refused: test_decoded_inputs.py)."""
    from nnabla.utils.data_source_loader import load as nnabla_load
    from PIL import Image

    from sgd_influence_plugin.cells import load_file

    rng = np.random.RandomState(0)
    rgb = Image.fromarray(rng.randint(0, 256, (9, 7, 3)).astype(np.uint8))
    if mode == "P":
        im = rgb.quantize(16)
    else:
        im = rgb.convert(mode)
    path = str(tmp_path / f"im_{mode.replace(';', '')}.png")
    im.save(path)
    with open(path, "rb") as f:
        want = np.asarray(nnabla_load(".png")(f, normalize=normalize))
    got = load_file(path, normalize)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_reading_in_worker_processes_gives_the_same_dataset(tmp_path, monkeypatch, start):
    """Blocks of rows decoded by forked or spawned (Windows) workers: the same arrays, in row
    order, the same progress total, and a bad row's error with its file and row."""
    from sgd_influence_plugin import dataset, parallel
    from sgd_influence_plugin.errors import DatasetError

    if start == "fork" and not parallel.fork_available():
        pytest.skip("no fork on this platform")
    monkeypatch.setenv("SGD_INFLUENCE_START", start)
    monkeypatch.setattr(dataset, "PARALLEL_MIN_ROWS", 10)
    rng = np.random.RandomState(0)
    (tmp_path / "img").mkdir()
    lines = ["x:image,y:label,#note"]
    for i in range(203):
        Image.fromarray(rng.randint(0, 256, (5, 4)).astype(np.uint8)).save(
            tmp_path / "img" / f"{i}.png"
        )
        lines.append(f"img/{i}.png,{i % 7},n{i}")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    needs = {"x": (1, 5, 4), "y": (1,)}
    seen = []
    serial = load_dataset(str(csv_path), needs)
    forked = load_dataset(str(csv_path), needs, progress=lambda d, t: seen.append((d, t)), jobs=3)
    for k in needs:
        np.testing.assert_array_equal(forked.arrays[k], serial.arrays[k])
    assert forked.rows == serial.rows and forked.arrays["y"][:8, 0].tolist() == [
        0, 1, 2, 3, 4, 5, 6, 0,
    ]  # fmt: skip
    assert seen[-1] == (203, 203)  # rows, not cells (2 variables)
    serial_seen = []
    load_dataset(str(csv_path), needs, progress=lambda d, t: serial_seen.append((d, t)))
    assert serial_seen == [(203, 203)]
    # A broken image in the last block: the worker's error reaches the caller.
    (tmp_path / "img" / "190.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"d\.csv row 191, column 'x:image'.*img/190\.png"):
        load_dataset(str(csv_path), needs, jobs=3)


def test_a_png_named_file_holding_another_format_still_decodes(tmp_path):
    """The fast path opens '.png' files as PNG only; a JPEG saved under a .png name (it
    happens) goes to nnabla's loader instead of failing."""
    from PIL import Image

    from sgd_influence_plugin.cells import load_file

    pixels = (np.random.RandomState(0).rand(28, 28) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png", format="JPEG")
    Image.fromarray(pixels).save(tmp_path / "b.png")
    jpeg, png = load_file(str(tmp_path / "a.png"), True), load_file(str(tmp_path / "b.png"), True)
    assert jpeg.shape == png.shape == (1, 28, 28)
    np.testing.assert_allclose(png[0], pixels / 255.0, atol=1e-12)
    assert np.abs(jpeg[0] - pixels / 255.0).mean() < 0.1  # lossy, but the same picture


# ----------------------------------------------------------------------------------------
# Row numbers count blank lines, as the user sees them (issue 18, case 15); a dataset CSV's
# blank line is refused (nnabla_cli train fails on it), other CSVs skip them
# ----------------------------------------------------------------------------------------


def test_blank_lines_keep_the_row_numbers(world, capsys):
    lines = open(world["train"]).read().splitlines()
    lines[10:10] = ["", ""]  # two blank lines: the user sees the first on row 10
    (world["data"] / "train.csv").write_text("\n".join(lines) + "\n")
    before = tree(world["root"])
    assert cli.main(argv_for(world, lambda w: [])) == 2
    one_line_error(capsys, r"train\.csv row 10: a blank line, which nnabla_cli train cannot read")
    assert tree(world["root"]) == before
    header, rows, numbers = read_csv_rows(world["train"])  # the influence CSV's reader
    assert len(rows) == len(lines) - 3 and numbers[8:10] == [9, 12]
