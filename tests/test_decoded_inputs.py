"""The arrays the tool feeds the network against what ``nnabla_cli train`` fed it, bit for bit.

The oracle is nnabla's own data path, as ``nnabla.utils.load`` builds it from a dataset's
options: through the cache the console always makes (``CreateCache`` then
``data_iterator_cache``) or straight from the CSV (``data_iterator_csv_dataset``), each batch
put into a float32 variable by ``let_data_to_variable``. Where that path fails, or feeds
something odd, the tool refuses in one line naming the file, the row and the fix.
"""

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from sgd_influence_plugin.cells import CACHED
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import DatasetError, InputError


def _console_feeds(csv_path, shape, n, cached, normalize=True):
    """The float32 batch of ``x`` that nnabla_cli train feeds for the first ``n`` rows."""
    import nnabla as nn
    from nnabla.utils.cli.utility import let_data_to_variable
    from nnabla.utils.create_cache import CreateCache
    from nnabla.utils.data_iterator import data_iterator_cache, data_iterator_csv_dataset

    if cached:  # as nnabla.utils.load._create_dataset with create_cache_explicitly
        cache = csv_path + ".cache"
        shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache)
        CreateCache(csv_path, shuffle=False).create(cache, normalize=False)
        it = data_iterator_cache(cache, n, False, normalize=normalize, with_memory_cache=False)
    else:
        it = data_iterator_csv_dataset(csv_path, n, False, normalize=normalize)
    with it as di:
        x = di.next()[di.variables.index("x")]
    var = nn.Variable((n,) + tuple(shape))
    let_data_to_variable(var, x, data_name="x", variable_name="x")
    return var.data.cast(np.float32).copy()


def _pixels(rng, h, w, channels):
    """Every 8-bit value at least once (where the image has room), then random ones."""
    values = np.concatenate([np.arange(256), rng.randint(0, 256, h * w * channels)])
    return values[rng.permutation(h * w * channels)].astype(np.uint8).reshape(h, w, channels)


def _write_images(folder, names, mode, fmt, size=(16, 16), seed=0):
    rng = np.random.RandomState(seed)
    for name in names:
        path = os.path.join(folder, name.replace("\\", "/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        im = Image.fromarray(_pixels(rng, size[1], size[0], 3))
        im = im.quantize(64) if mode == "P" else im.convert(mode)
        im.save(path, format=fmt)


def _index(folder, cells, text=None, encoding="utf-8", newline="\n"):
    path = os.path.join(folder, "index.csv")
    lines = text or ["x:image,y:label"] + [f"{c},{i % 2}" for i, c in enumerate(cells)]
    with open(path, "wb") as f:
        f.write(newline.join(lines + [""]).encode(encoding))
    return path


FORMATS = [  # (name, Pillow mode, format, extension, the network's channels)
    ("png_gray", "L", "PNG", ".png", 1),
    ("png_rgb", "RGB", "PNG", ".png", 3),
    ("png_palette", "P", "PNG", ".png", 3),
    ("png_rgba", "RGBA", "PNG", ".png", 4),
    ("jpeg_gray", "L", "JPEG", ".jpg", 1),
    ("jpeg_rgb", "RGB", "JPEG", ".JPEG", 3),
    ("bmp", "RGB", "BMP", ".bmp", 3),
    ("gif", "P", "GIF", ".gif", 3),
    ("tiff", "RGB", "TIFF", ".TIF", 3),
    ("gray_for_colour_net", "L", "PNG", ".png", 3),
]


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "csv"])
@pytest.mark.parametrize("name, mode, fmt, ext, channels", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_image_kind_is_fed_as_nnabla_cli_train_feeds_it(
    tmp_path, name, mode, fmt, ext, channels, cached
):
    """Through the console's cache (8-bit values divided in float32) and straight from the
    CSV (in float64): two different roundings of 126 of the 256 values; a grayscale image in
    a colour network repeated in each channel (numpy broadcasting in nnabla's setter)."""
    names = [f"img/{i}{ext}" for i in range(3)]
    _write_images(str(tmp_path), names, mode, fmt)
    shape = (channels, 16, 16)
    csv_path = _index(str(tmp_path), names)
    want = _console_feeds(csv_path, shape, 3, cached)
    got = load_dataset(csv_path, {"x": shape, "y": (1,)}, CACHED if cached else True)
    assert got.arrays["x"].dtype == np.float32 and got.arrays["x"].shape == want.shape
    np.testing.assert_array_equal(got.arrays["x"].view(np.uint32), want.view(np.uint32))
    if mode in ("L", "RGB"):  # the two paths do differ: the right one must be chosen
        assert not np.array_equal(want, _console_feeds(csv_path, shape, 3, not cached))


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "csv"])
def test_paths_and_csvs_as_windows_users_write_them(tmp_path, cached):
    """Backslashes, spaces and Japanese in paths, '..', quoted cells with commas, a BOM and
    CRLF (Excel's 'CSV UTF-8'): the same files, the same values."""
    (tmp_path / "csv").mkdir()
    names = ["..\\画像 データ\\a 0.png", "../画像 データ/b,1.png", ".\\c.PNG"]
    _write_images(str(tmp_path / "csv"), [n.replace("\\", "/") for n in names], "L", "PNG")
    lines = ["x:image,y:label"] + [f'"{n}",{i}' for i, n in enumerate(names)]
    csv_path = _index(str(tmp_path / "csv"), None, lines, "utf-8-sig", "\r\n")
    want = _console_feeds(csv_path, (1, 16, 16), 3, cached)
    got = load_dataset(csv_path, {"x": (1, 16, 16), "y": (1,)}, CACHED if cached else True)
    np.testing.assert_array_equal(got.arrays["x"].view(np.uint32), want.view(np.uint32))


def _refusal(csv_path, shape, normalize=True):
    with pytest.raises((DatasetError, InputError)) as e:
        load_dataset(csv_path, {"x": shape, "y": (1,)}, normalize)
    message = str(e.value)
    assert "\n" not in message and csv_path in message
    return message


def _odd_image(path, kind):
    rng = np.random.RandomState(1)
    if kind == "16-bit png" or kind == "16-bit tiff":
        im = Image.fromarray(rng.randint(256, 65536, (16, 16)).astype(np.uint16))
    elif kind == "1-bit":
        im = Image.fromarray(rng.randint(0, 2, (16, 16)).astype(np.uint8) * 255).convert("1")
    elif kind == "float tiff":
        im = Image.fromarray(rng.uniform(0, 1, (16, 16)).astype(np.float32))
    else:  # CMYK JPEG
        im = Image.fromarray(_pixels(rng, 16, 16, 3)).convert("CMYK")
    im.save(path)


ODD = [  # (kind, file, the network's channels, what nnabla's loader feeds, the message)
    ("16-bit png", "a.png", 1, "low byte", r"16-bit image.*low byte"),
    ("16-bit tiff", "a.tif", 1, "low byte", r"16-bit image.*low byte"),
    ("1-bit", "a.png", 1, "0 and 1", r"1-bit black-and-white image.*0 and 1, not 0 and 255"),
    ("float tiff", "a.tiff", 1, "whole", r"floating-point image"),
    ("CMYK", "a.jpg", 4, "ink", r"CMYK image.*4 ink channels"),
]


@pytest.mark.parametrize("kind, name, channels, fed, pattern", ODD, ids=[o[0] for o in ODD])
def test_images_nnabla_feeds_oddly_are_refused(tmp_path, kind, name, channels, fed, pattern):
    """nnabla's loader reads them without a word, into values that are not the picture:
    refused, naming the file, the row and the fix."""
    from nnabla.utils.data_source_loader import load

    _odd_image(str(tmp_path / name), kind)
    with open(tmp_path / name, "rb") as f:
        fed_values = np.asarray(load(os.path.splitext(name)[1])(f, normalize=False))
    raw = np.asarray(Image.open(tmp_path / name))
    if fed == "low byte":
        np.testing.assert_array_equal(fed_values[0], raw % 256)
    elif fed == "0 and 1":
        assert set(np.unique(fed_values)) == {0, 1}
    elif fed == "whole":
        np.testing.assert_array_equal(fed_values[0], raw.astype(np.uint8))  # all 0
    else:
        assert fed_values.shape[0] == 4
    csv_path = _index(str(tmp_path), [name])
    message = _refusal(csv_path, (channels, 16, 16))
    assert f"row 1, column 'x:image': '{name}' is a" in message
    assert re.search(pattern, message) and "convert it to 8-bit grayscale or RGB" in message


@pytest.mark.parametrize("jobs", [1, 3])
def test_grayscale_among_colour_images_is_refused(tmp_path, monkeypatch, jobs):
    """nnabla_cli train cannot stack a (1, H, W) and a (3, H, W) image (it fails making the
    cache); the tool names the first grayscale row and a colour one, read in one process or
    in workers."""
    from sgd_influence_plugin import dataset

    monkeypatch.setattr(dataset, "PARALLEL_MIN_ROWS", 4)
    names = [f"{i}.png" for i in range(12)]
    _write_images(str(tmp_path), names, "RGB", "PNG")
    _write_images(str(tmp_path), names[9:10], "L", "PNG")
    csv_path = _index(str(tmp_path), names)
    with pytest.raises(ValueError):
        _console_feeds(csv_path, (3, 16, 16), 12, True)
    with pytest.raises(DatasetError) as e:
        load_dataset(csv_path, {"x": (3, 16, 16), "y": (1,)}, jobs=jobs)
    assert str(e.value).startswith(f"{csv_path} row 10: '9.png' is grayscale but row 1's image")
    assert "convert the grayscale images to 3 channels" in str(e.value)


@pytest.mark.parametrize("cell", [" a.png", "a.png "])
def test_spaces_around_a_file_name_are_refused(tmp_path, cell):
    """nnabla opens the name with its spaces (and fails here); the tool used to strip them
    and read another file."""
    _write_images(str(tmp_path), ["a.png"], "L", "PNG")
    csv_path = _index(str(tmp_path), [cell])
    with pytest.raises(OSError):
        _console_feeds(csv_path, (1, 16, 16), 1, False)
    message = _refusal(csv_path, (1, 16, 16))
    assert f"row 1, column 'x:image': '{cell}' has spaces around the file name" in message


def test_a_blank_line_is_refused(tmp_path):
    """nnabla's CSV reader takes a blank line for a sample without values and fails."""
    _write_images(str(tmp_path), ["a.png", "b.png"], "L", "PNG")
    csv_path = _index(str(tmp_path), None, ["x:image,y:label", "a.png,0", "", "b.png,1"])
    with pytest.raises(IndexError):
        _console_feeds(csv_path, (1, 16, 16), 2, True)
    assert "row 2: a blank line" in _refusal(csv_path, (1, 16, 16))


def test_windows_csvs_that_nnabla_cannot_read_say_why(tmp_path):
    """Excel's 'CSV' on Japanese Windows is Shift-JIS; an absolute Windows path names a file
    of another machine. nnabla fails on both; the tool says what to do."""
    _write_images(str(tmp_path), ["画像/a.png"], "L", "PNG")
    sjis = _index(str(tmp_path), ["画像/a.png"], encoding="cp932", newline="\r\n")
    with pytest.raises(UnicodeDecodeError):
        _console_feeds(sjis, (1, 16, 16), 1, True)
    assert "'CSV UTF-8 (Comma delimited)'" in _refusal(sjis, (1, 16, 16))
    windows = _index(str(tmp_path), ["C:\\Users\\me\\a.png"])
    message = _refusal(windows, (1, 16, 16))
    assert "not found: a Windows absolute path" in message and str(tmp_path) in message


def test_a_run_reads_each_dataset_with_its_own_options(results, tmp_path):
    """The definition's dataset options decide the scaling, as nnabla.utils.load decides it
    for nnabla_cli train: the training set through the console's cache, the validation set
    with no_image_normalization (the tool used to read both as the training set, without
    the cache's rounding)."""
    import nnabla as nn
    from nnabla.utils.cli.utility import let_data_to_variable
    from nnabla.utils.load import load

    from sgd_influence_plugin.inputs import read_datasets
    from sgd_influence_plugin.nnabla_adapter import load_model
    from sgd_influence_plugin.settings import InfluenceSettings

    folder = results("logreg")
    text = open(os.path.join(folder, "net.nntxt")).read().replace("shuffle: true", "shuffle: false")
    cache = str(tmp_path / "train.cache")
    first, second = text.split("dataset {", 2)[1:]
    first = f'\n  cache_dir: "{cache}"\n  create_cache_explicitly: true' + first
    second = "\n  no_image_normalization: true" + second
    nntxt = tmp_path / "net.nntxt"
    nntxt.write_text(text.split("dataset {")[0] + "dataset {" + first + "dataset {" + second)
    model = load_model(config=str(nntxt), params=os.path.join(folder, "parameters.h5"))
    ref = load([str(nntxt)], prepare_data_iterator=True)  # what nnabla_cli train builds
    uris = [d.uri for d in ref.datasets.values()]
    got = read_datasets([(uri, None) for uri in uris], model, InfluenceSettings())
    for dataset, ds in zip(ref.datasets.values(), got):
        with dataset.data_iterator() as di:
            batches = [di.next()[di.variables.index("x")] for _ in range(-(-ds.size // 16))]
        x = np.concatenate(batches)[: ds.size]
        var = nn.Variable(x.shape)
        let_data_to_variable(var, x)
        want = var.data.cast(np.float32)
        np.testing.assert_array_equal(ds.arrays["x"].view(np.uint32), want.view(np.uint32))
    assert got[1].arrays["x"].max() > 1  # validation images not divided by 255


def test_a_parent_step_after_a_linked_folder_is_taken_as_nnabla_takes_it(tmp_path):
    """'../imgs/a.png' in a CSV reached through a link: nnabla's loader takes the '..' in the
    text (the folder beside the link); the file system would take it beside the link's
    target, another image the tool used to read."""
    for folder, value in (("real/imgs", 10), ("imgs", 200)):
        (tmp_path / folder).mkdir(parents=True)
        Image.fromarray(np.full((4, 5), value, np.uint8)).save(tmp_path / folder / "a.png")
    (tmp_path / "real" / "csv").mkdir()
    os.symlink(tmp_path / "real" / "csv", tmp_path / "link")
    csv_path = _index(str(tmp_path / "link"), ["../imgs/a.png"])
    want = _console_feeds(csv_path, (1, 4, 5), 1, False)
    got = load_dataset(csv_path, {"x": (1, 4, 5), "y": (1,)}).arrays["x"]
    assert want.max() * 255 == pytest.approx(200)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "csv"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_npy_and_per_sample_csv_files_are_fed_as_nnabla_feeds_them(tmp_path, dtype, cached):
    """Integer .npy arrays are divided by 255 (or 65535) through the cache only, as its reader
    divides every 8- or 16-bit array; per-sample CSVs of several columns as they are."""
    rng = np.random.RandomState(2)
    names = []
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", rng.randint(0, 256, (2, 3, 4)).astype(dtype))
        np.savetxt(tmp_path / f"{i}.csv", rng.uniform(-1, 1, (3, 4)), delimiter=",")
        names.append(f"{i}")
    for ext, shape in ((".npy", (2, 3, 4)), (".csv", (3, 4))):
        csv_path = _index(str(tmp_path), [n + ext for n in names])
        want = _console_feeds(csv_path, shape, 3, cached)
        got = load_dataset(csv_path, {"x": shape, "y": (1,)}, CACHED if cached else True)
        np.testing.assert_array_equal(got.arrays["x"].view(np.uint32), want.view(np.uint32))


def test_an_empty_header_cell_is_refused(tmp_path):
    """A comma too many at the end of the header (Excel keeps a column once used): nnabla's
    CSV reader fails on the empty name; the tool used to read the file."""
    _write_images(str(tmp_path), ["a.png"], "L", "PNG")
    csv_path = _index(str(tmp_path), None, ["x:image,y:label,", "a.png,1,"])
    with pytest.raises(IndexError):
        _console_feeds(csv_path, (1, 16, 16), 1, True)
    assert "column 3 of the header is empty" in _refusal(csv_path, (1, 16, 16))


@pytest.mark.parametrize(
    "text",
    ["a,b\n1,2\n3,4\n", "1,2,\n3,4,\n", "\ufeff1,2\r\n3,4\r\n"],
    ids=["header", "comma", "bom"],
)
def test_per_sample_csvs_nnabla_cannot_read_say_what_it_reads(tmp_path, text):
    """A header, a comma at a line's end, a BOM (Excel): nnabla's reader fails on each."""
    (tmp_path / "s.csv").write_bytes(text.encode())
    csv_path = _index(str(tmp_path), ["s.csv"])
    with pytest.raises(ValueError):
        _console_feeds(csv_path, (2, 2), 1, False)
    message = _refusal(csv_path, (2, 2))
    assert "cannot read 's.csv'" in message and "holds numbers only (no header" in message


def test_an_odd_image_under_a_png_name_is_refused_too(tmp_path):
    """A CMYK JPEG saved as 'a.png' (it happens): nnabla's loader opens it by its content."""
    _odd_image(str(tmp_path / "a.jpg"), "CMYK")
    os.rename(tmp_path / "a.jpg", tmp_path / "a.png")
    csv_path = _index(str(tmp_path), ["a.png"])
    assert _console_feeds(csv_path, (4, 16, 16), 1, False).shape == (1, 4, 16, 16)
    assert "'a.png' is a CMYK image" in _refusal(csv_path, (4, 16, 16))
