"""What one cell of a console dataset CSV holds: a number, or the path of a file (image,
``.csv``, ``.npy``, ...) decoded as ``nnabla_cli train`` decodes it.

A cell that parses as a plain decimal number is that number; otherwise it must name a file by
one of :data:`FILE_EXTS`, relative to the CSV's folder. The file is read with nnabla's own
loader (8-bit grayscale and RGB PNGs with Pillow, bit for bit the same), so shapes, channel
order and the 1/255 normalization match what the console feeds the network: in float32 when
the console reads the images through its cache (:data:`CACHED`), in float64 otherwise. Images
nnabla's loader would feed oddly (1-bit, 16-bit, CMYK, ...) are refused. Every problem is a
:class:`DatasetError` that names the file, the row and the column.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import DatasetError
from .io_utils import data_path

#: The file kinds a cell may name (by extension); nnabla's loader reads each of them.
FILE_EXTS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".dcm",
    ".csv",
    ".npy",
    ".wav",
)
#: The image kinds among them, which Pillow can say more about when nnabla cannot read one.
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: A plain decimal number as a CSV cell may hold it (no '_' digit separators, no hex).
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
#: A Windows absolute path (``C:\\Users\\...``, ``\\\\server\\share``): on another system,
#: nnabla's loader (and so the tool) takes it as relative to the CSV's folder.
_WINDOWS_ABSOLUTE = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")
_NONFINITE = re.compile(r"^[+-]?(nan|inf|infinity)$", re.IGNORECASE)
#: Largest float32: a cell beyond it would become infinite in the network.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: ``normalize`` for a dataset the console reads through its cache (``cache_dir`` with
#: ``create_cache_explicitly``, as it writes every dataset): nnabla stores the images as 8-bit
#: integers and divides them by 255 in float32 when it reads a batch, not in float64 as its CSV
#: reader does; the two differ in the last bit for 126 of the 256 values.
CACHED = "cached"
#: Pillow modes nnabla's loader feeds as they are: gray, gray+alpha, RGB, RGBA, palette (as
#: RGB or RGBA). Any other is fed oddly (what it becomes) or not at all.
_PLAIN_MODES = ("L", "LA", "RGB", "RGBA", "P")
_ODD_MODES = {
    "1": "a 1-bit black-and-white image, which nnabla's loader feeds as 0 and 1, not 0 and 255",
    "I;16": "a 16-bit image, which nnabla's loader feeds as each value's low byte (mod 256)",
    "I": "a 32-bit integer image, which nnabla's loader cannot read",
    "F": "a floating-point image, which nnabla's loader cuts to whole numbers mod 256",
    "CMYK": "a CMYK image, which nnabla's loader feeds as 4 ink channels, not RGB",
    "PA": "a palette image with alpha, which nnabla's loader feeds as palette indices",
}


def is_file_cell(cell: str) -> bool:
    """True if a CSV cell names a file (by its extension) rather than holding a number."""
    return os.path.splitext(cell.strip())[1].lower() in FILE_EXTS


def variable_value(
    path: str,
    number: int,
    header: List[str],
    row: List[str],
    cols: Sequence[int],
    shape: Tuple[int, ...],
    name: str,
    folder: str,
    normalize,
) -> Tuple[np.ndarray, bool]:
    """``(value, widened)``: the float32 value of variable ``name``, shaped ``shape``, from
    the cells ``cols`` of the row messages call ``number`` (one cell, or one per element of a
    vector variable). ``widened``: a grayscale image repeated in each of the ``shape[0]``
    channels, as ``nnabla_cli train`` puts a batch of them into a colour network's input
    (numpy broadcasting); it cannot mix them with colour images in one batch (the caller
    checks).

    Raises:
        DatasetError: a cell is bad (see :func:`cell_value`), or the value has another size
            (an image of another shape or channel count).

    """
    values = [cell_value(path, number, header[ci], row[ci], folder, normalize) for ci in cols]
    value = values[0] if len(values) == 1 else np.concatenate([np.ravel(v) for v in values])
    value = np.asarray(value, dtype=np.float32)
    if _one_channel_of(value.shape, shape) and len(cols) == 1 and is_file_cell(row[cols[0]]):
        return np.broadcast_to(value, shape), True
    if value.shape != shape:
        if (
            value.size != int(np.prod(shape))
            or value.ndim > 1
            and len(cols) == 1
            and is_file_cell(row[cols[0]])
        ):
            raise DatasetError(
                _shape_message(path, number, header, cols, row, value.shape, shape, name)
            )
        value = value.reshape(shape)
    return value, False


def one_kind_per_variable(path, rows, numbers, plan, firsts) -> None:
    """Refuse a variable fed both grayscale images (widened, :func:`variable_value`) and
    images of the network's channels: ``nnabla_cli train`` cannot stack them in one batch or
    cache file. ``firsts``: ``(name, widened)`` -> the first such row (0-based) of ``rows``;
    ``plan``: name -> (shape, columns).
    """
    for name, (shape, cols) in plan.items():
        if (name, True) in firsts and (name, False) in firsts:
            gray, other = firsts[(name, True)], firsts[(name, False)]
            raise DatasetError(
                f"{path} row {numbers[gray]}: '{rows[gray][cols[0]]}' is grayscale but row "
                f"{numbers[other]}'s image has the {shape[0]} channels of the network's input "
                f"'{name}', and nnabla_cli train cannot put both kinds in one batch; convert "
                f"the grayscale images to {shape[0]} channels"
            )


def _one_channel_of(got: Tuple[int, ...], want: Tuple[int, ...]) -> bool:
    """Whether an image of shape ``got`` is the grayscale form of ``want`` (C, H, W)."""
    return len(got) == len(want) == 3 and got[0] == 1 < want[0] and got[1:] == want[1:]


def _shape_message(path, number, header, cols, row, got, want, name) -> str:
    where = f"{path} row {number}"
    if len(cols) == 1 and is_file_cell(row[cols[0]]):
        got, want = tuple(got), tuple(want)
        if len(got) == len(want) == 3 and got[1:] == want[1:] and got[0] != want[0]:
            kinds = {1: "grayscale", 3: "color (RGB)", 4: "color with alpha (RGBA)"}
            return (
                f"{where}: '{row[cols[0]]}' has {got[0]} channel(s), "
                f"{kinds.get(got[0], 'channels')}, but the network's input '{name}' takes "
                f"{want[0]} ({kinds.get(want[0], 'channels')}); convert the images to "
                f"{want[0]} channel(s), or change the network's input to {got[0]} channel(s)"
            )
        image = os.path.splitext(row[cols[0]].strip())[1].lower() in _IMAGE_EXTS
        if image and len(want) == 3:
            takes = f"{want} (channels, height, width); resize the images to the network's size"
        else:  # a per-sample CSV or .npy, or an image for a network that takes no image
            takes = f"{want}; give files that load with shape {want}"
        return (
            f"{where}: '{row[cols[0]]}' loads with shape {got} but the network's input "
            f"'{name}' takes {takes}, or change the network's input shape"
        )
    return (
        f"{where}: variable '{name}' has shape {tuple(got)} from columns "
        f"{[header[c] for c in cols]} but the network takes {tuple(want)}"
    )


def cell_value(path: str, number: int, column: str, cell: str, folder: str, normalize):
    """The value of one cell: a float32 number, or the array its file decodes to.

    Raises:
        DatasetError: neither a finite float32 number nor an existing, readable file of
            finite values; the message names ``path``, the row ``number`` and ``column``.

    """
    text = cell.strip()
    where = f"{path} row {number}, column '{column}'"
    if _NUMBER.match(text):
        return _number(where, cell, text)
    if _NONFINITE.match(text):
        raise DatasetError(
            f"{where}: '{cell}' is not a finite number; give a number (labels are class "
            "indices 0, 1, ...)"
        )
    if not is_file_cell(text):
        raise DatasetError(
            f"{where}: '{cell}' is neither a number nor a file path; labels must be numbers "
            "written plainly (class indices 0, 1, ...; no '_' separators), and data cells "
            f"paths to files ({', '.join(FILE_EXTS)})"
        )
    if text != cell:
        raise DatasetError(
            f"{where}: {cell!r} has spaces around the file name, which nnabla_cli train keeps "
            f"(it opens {cell!r}, not '{text}'); remove them from the cell"
        )
    return _file_value(where, text, folder, normalize)


def _number(where: str, cell: str, text: str) -> np.float32:
    """A number cell (``text`` is ``cell`` stripped) as float32, if it stays finite."""
    value = float(text)  # '1e400' parses to inf
    if not np.isfinite(value):
        raise DatasetError(
            f"{where}: '{cell}' is not a finite number; give a number (labels are class "
            "indices 0, 1, ...)"
        )
    if abs(value) > _FLOAT32_MAX:
        raise DatasetError(
            f"{where}: '{cell}' is beyond the range of the network's 32-bit numbers "
            f"(about +-{_FLOAT32_MAX:.3g}); give a smaller number (labels are class indices "
            "0, 1, ...)"
        )
    return np.float32(value)


def _refuse_pickled(where: str, text: str, full: str) -> None:
    """Refuse a ``.npy`` file whose header does not describe an array of plain values, before
    nnabla's loader reads it with ``allow_pickle=True``: an array of Python objects, and a
    file that is no ``.npy`` array at all, are unpickled there (a crafted file runs code).
    """
    if not full.lower().endswith(".npy"):
        return
    fix = "save it with numpy.save as an array of numbers"
    try:
        with open(full, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            header = read(f) if read else None
    except Exception as e:  # noqa: BLE001 - no .npy header: it would be read as a pickle
        raise DatasetError(
            f"{where}: '{text}' is not a .npy array file ({e}; it is not loaded: it would be "
            f"read as a pickle, which can run code); {fix}"
        ) from None
    if header is None:
        raise DatasetError(f"{where}: '{text}' is a .npy file of format {version}; {fix}")
    if header[2].hasobject:
        raise DatasetError(
            f"{where}: '{text}' holds Python objects, not numbers (it is not loaded: loading "
            f"it would run code it carries); {fix}"
        )


def _file_value(where: str, text: str, folder: str, normalize) -> np.ndarray:
    """The array of the file a cell names (``text``, relative to ``folder``)."""
    full = data_path(folder, text)
    if not os.path.isfile(full):
        if os.sep == "/" and _WINDOWS_ABSOLUTE.match(text):
            raise DatasetError(
                f"{where}: file {_shown(text)} not found: a Windows absolute path, of the "
                "machine that wrote the CSV; copy the files here and write their paths "
                f"relative to the CSV's folder {folder}"
            )
        raise DatasetError(
            f"{where}: file {_shown(text)} not found (paths are relative to the CSV's folder "
            f"{folder})"
        )
    _refuse_pickled(where, text, full)
    try:
        value = load_file(full, normalize)
    except OddImage as e:
        raise DatasetError(
            f"{where}: '{text}' is {e}; convert it to 8-bit grayscale or RGB (Pillow: "
            ".convert('L') or .convert('RGB')) and train again on the converted images"
        ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's fault
        fix = "replace or remove this file"
        if full.lower().endswith(".csv"):  # nnabla's reader: float() of every cell
            fix = "a per-sample CSV holds numbers only (no header, no comma at a line's end)"
        raise DatasetError(
            f"{where}: cannot read '{text}' ({_why_unreadable(full, e)}); {fix}"
        ) from e
    if value.dtype.kind not in "biuf":  # a .npy of strings or objects: a traceback later
        raise DatasetError(
            f"{where}: '{text}' holds {value.dtype} values, not numbers; save it as an array "
            "of numbers"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise DatasetError(
            f"{where}: '{text}' holds NaN or infinite values; replace them with numbers"
        )
    return value


class OddImage(ValueError):
    """An image nnabla's loader would feed oddly (:data:`_ODD_MODES`); the text says how."""


def load_file(full: str, normalize) -> np.ndarray:
    """Decode one data file as ``nnabla_cli train`` feeds it to the network.

    ``normalize``: False (``no_image_normalization``), True (8-bit values times 1/255 in
    float64, as nnabla's CSV reader does) or :data:`CACHED` (times 1/255 in float32, as its
    cache reader does). 8-bit grayscale and RGB PNGs (the console's usual images) are decoded
    here with Pillow, exactly as nnabla's loader would, at a fifth of its per-file cost; every
    other file goes through nnabla's loader itself.

    Raises:
        OddImage: an image of a kind nnabla's loader feeds oddly (1-bit, 16-bit, CMYK, ...).

    """
    ext = os.path.splitext(full)[1].lower()
    cached = isinstance(normalize, str) and normalize == CACHED
    if ext in _IMAGE_EXTS:
        value = _load_plain_image(full, ext)
        if value is not None:
            return _scaled(value, normalize)
    from nnabla import logger
    from nnabla.utils.data_source_loader import load

    quiet, logger.disabled = logger.disabled, True  # its own line before raising; ours names
    try:  # the row
        with open(full, "rb") as f:
            value = np.asarray(load(ext)(f, normalize=bool(normalize) and not cached))
    finally:
        logger.disabled = quiet
    return _scaled(value, normalize) if cached else value


def _scaled(value: np.ndarray, normalize) -> np.ndarray:
    """Integer image values as nnabla scales them: by 1/255 (1/65535 for 16-bit) in float64
    (``normalize`` True, its CSV reader), in float32 (:data:`CACHED`, its cache reader,
    ``CacheDataSource``), or not at all (False).
    """
    if not normalize or value.dtype not in (np.uint8, np.uint16):
        return value
    top = 255.0 if value.dtype == np.uint8 else 65535.0
    if isinstance(normalize, str) and normalize == CACHED:
        return value.astype(np.float32) * (1.0 / top)
    return value * (1.0 / top)


def _load_plain_image(full: str, ext: str) -> Optional[np.ndarray]:
    """(C, H, W) uint8 of an 8-bit ``L`` or ``RGB`` PNG as nnabla's loader reads it; None for
    any other image nnabla's loader feeds as it is (palette, alpha, other formats), and for a
    file Pillow cannot open (nnabla's loader then says why, or reads a JPEG named ``.png``).

    Raises:
        OddImage: a mode nnabla's loader feeds oddly or not at all.

    """
    from PIL import Image, UnidentifiedImageError

    # formats=("PNG",): the extension says PNG, so Pillow need not try its other decoders
    # first (a quarter of the per-file cost); a file that is no PNG goes to nnabla's loader.
    try:
        im = Image.open(full, formats=("PNG",) if ext == ".png" else None)
    except UnidentifiedImageError:  # another format under a .png name: its mode checked
        return _load_plain_image(full, "") if ext == ".png" else None
    except OSError:
        return None
    with im:
        if im.mode not in _PLAIN_MODES:
            mode = "I;16" if im.mode.startswith("I;16") else im.mode
            raise OddImage(
                _ODD_MODES.get(mode, f"a {mode} image, which nnabla's loader feeds as raw {mode}")
            )
        if ext != ".png" or im.mode not in ("L", "RGB"):
            return None
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _why_unreadable(full: str, error: Exception) -> str:
    """A reason a user can act on: nnabla's loader only says "No backend available" when
    every image decoder failed, so ask Pillow what is wrong with an image file.
    """
    ext = os.path.splitext(full)[1].lower()
    if ext in _IMAGE_EXTS:
        try:
            from PIL import Image

            with Image.open(full) as im:
                im.load()
        except Exception as pil_error:  # noqa: BLE001 - we only want its message
            return f"not a readable image: {pil_error}"
    return f"{type(error).__name__}: {error}"


def _shown(text: str) -> str:
    """A cell in quotes for a one-line message (a line break in it shown escaped)."""
    return repr(text) if any(c in text for c in "\r\n") else f"'{text}'"
