"""Reading a download as its publisher ships it: finding the root, skipping junk, decoding any image format.

Shared by every file-based adapter (see ``medad/datasets/files.py``). Images are decoded by their
content, not their extension (several sets hold PNGs named ``.jpg``); 16-bit images are scaled by
the bit depth actually used (a 12-bit X-ray in a 16-bit PNG is divided by 4095, not 65535);
DICOM goes through pydicom with the modality LUT (rescale slope/intercept) and a VOI window.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medad.datasets.base import DatasetError

# Decoding a file never allocates for more pixels than this (a 126-byte PNG may claim 12000 x 12000);
# $MEDAD_MAX_IMAGE_PIXELS raises or lowers it.
MAX_PIXELS_ENV = "MEDAD_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000
JUNK_NAMES = {"thumbs.db", ".ds_store", "desktop.ini"}
JUNK_DIRS = {"__macosx", ".ipynb_checkpoints"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff", ".dcm", ".ppm"}
RESIZE_MODES = ("stretch", "pad")


def read_label_text(path: Path) -> str:
    """A label or split file's text: UTF-8, with or without a byte-order mark; anything else names the file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DatasetError(f"{path} line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as "
                           "UTF-8 (a spreadsheet's 'CSV UTF-8' export)") from None


def listed_file(root: Path, entry: str, *, folder: Path | None = None, source: Path, line: int) -> Path:
    """The file a label-file entry names, resolved (symlinks followed) and refused unless it lies inside ``root``.

    ``entry`` is relative to ``folder`` (default ``root``). An absolute path, or one that climbs out of
    the dataset root through ``..`` or a symbolic link, raises a DatasetError naming ``source`` and
    ``line``: a label file never makes medad read outside the dataset it describes.
    """
    text = entry.strip()
    if not text:
        raise DatasetError(f"{source} line {line}: an empty file name")
    if "\0" in text:
        raise DatasetError(f"{source} line {line}: the file name holds a NUL character")
    if Path(text).is_absolute():
        raise DatasetError(f"{source} line {line}: {text!r} is an absolute path; entries are file names relative "
                           f"to {folder or root}")
    resolved = Path(os.path.realpath((folder or root) / text))
    if not is_inside(resolved, root):
        raise DatasetError(f"{source} line {line}: {text!r} points outside the dataset root {root}; entries must name "
                           "files inside it")
    return resolved


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` (already resolved) lies inside ``root`` once ``root``'s own links are resolved."""
    return Path(path).is_relative_to(os.path.realpath(root))


def is_junk(path: Path) -> bool:
    """OS and archive litter every adapter skips (``Thumbs.db``, ``.DS_Store``, ``__MACOSX/``, ``._*``)."""
    if path.name.lower() in JUNK_NAMES or path.name.startswith("._"):
        return True
    return any(part.lower() in JUNK_DIRS for part in path.parts)


def walk_files(root: Path, max_depth: int = 8) -> list[Path]:
    """Every non-junk file under ``root`` (sorted, symlinked folders not followed, depth-limited)."""
    found: list[Path] = []
    root_depth = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d.lower() not in JUNK_DIRS and len(here.parts) - root_depth < max_depth)
        found.extend(here / f for f in sorted(files) if not is_junk(here / f))
    return found


def child_dir(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name`` ignoring case and a trailing space or underscore."""
    wanted = name.lower()
    if not folder.is_dir():
        return None
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name.lower().rstrip(" _") == wanted:
            return child
    return None


def _listing(folder: Path, limit: int = 12) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not is_junk(p))
    except OSError:
        return "(unreadable)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "(empty)"


def find_root(given: Path, is_root: Callable[[Path], bool], *, dataset: str, expected: str, download: str,
              max_depth: int = 4) -> Path:
    """The shallowest folder at or below ``given`` (depth <= ``max_depth``) that ``is_root`` accepts.

    Archives often unpack with an extra nesting level (``head_ct/head_ct``); searching downward finds
    the data without ever reading outside ``given``. A missing or wrong layout raises a DatasetError
    that says what was expected where, what was found, and where the download comes from.
    """
    given = Path(given)
    fix = f"unpack the download so that {given}/ holds:\n{expected}\nGet it from: {download}"
    if not given.exists():
        archives = sorted(given.parent.glob(given.name + ".*")) if given.parent.exists() else []
        hint = f" (found {archives[0].name}: extract it first)" if archives else ""
        raise DatasetError(f"{dataset}: data folder {given} does not exist{hint}. Fix: {fix}")
    if given.is_file():
        raise DatasetError(f"{dataset}: {given} is a file, not a folder; extract it first. Fix: {fix}")
    level = [given]
    for _ in range(max_depth + 1):
        for folder in level:
            if is_root(folder):
                return folder
        level = [child for folder in level for child in sorted(folder.iterdir())
                 if child.is_dir() and not child.is_symlink() and not is_junk(child)]
        if not level:
            break
    archives = [p.name for p in given.iterdir() if p.suffix.lower() in {".zip", ".gz", ".tar", ".tgz", ".7z", ".rar"}]
    hint = f" Found archive(s) {', '.join(sorted(archives))}: extract them first." if archives else ""
    raise DatasetError(f"{dataset}: the expected layout is not under {given} (searched {max_depth} levels).{hint}\n"
                       f"Found: {_listing(given)}\nFix: {fix}")


def max_image_pixels() -> int:
    """The largest width x height a file may declare (``$MEDAD_MAX_IMAGE_PIXELS``, default 64 million)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise DatasetError(f"${MAX_PIXELS_ENV} must be a whole number of pixels, got {text!r}") from None
    return value if value > 0 else DEFAULT_MAX_PIXELS


def check_pixel_count(path: Path, width: int, height: int) -> None:
    """Refuse, before decoding, a file that declares more pixels than :func:`max_image_pixels`."""
    limit = max_image_pixels()
    if width * height > limit:
        raise DatasetError(f"image {path} declares {width} x {height} = {width * height} pixels, more than the limit of "
                           f"{limit} (a damaged or hostile file?); set ${MAX_PIXELS_ENV} higher if the image is real")


def is_dicom(path: Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` at byte 128)."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _scale_integer(array: np.ndarray) -> np.ndarray:
    """Integer pixels to [0, 1], dividing by the bit depth actually used (at least 8 bits)."""
    top = int(array.max()) if array.size else 0
    bits = max(8, top.bit_length())
    return array.astype(np.float32) / float(2 ** bits - 1)


def read_dicom(path: Path, window: str = "dicom") -> np.ndarray:
    """A DICOM slice as float32 (H, W) in [0, 1].

    The modality LUT (RescaleSlope/RescaleIntercept) is applied first; then ``window='dicom'`` uses
    the file's WindowCenter/WindowWidth where it has them (else the 1st-99th percentile), and
    ``window='percentile'`` always uses the 1st-99th percentile. MONOCHROME1 is inverted.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        check_pixel_count(path, int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
        values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"cannot decode DICOM file {path}: {type(error).__name__}: {error}") from error
    if values.ndim != 2:
        raise DatasetError(f"DICOM file {path}: expected one 2-D slice, got pixel data of shape {values.shape}")
    low = high = None
    if window == "dicom" and "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        low, high = center - width / 2.0, center + width / 2.0
    if low is None or high <= low:
        low, high = np.percentile(values, [1.0, 99.0]) if values.size else (0.0, 1.0)
    scaled = np.clip((values - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled


def read_image(path: Path, window: str = "dicom") -> np.ndarray:
    """Any image the publishers use, decoded by content, as float32 (H, W) or (H, W, 3) in [0, 1].

    Palette images are expanded, alpha is composited on black then dropped, 16-bit integers are
    scaled by the bit depth actually used. Raises DatasetError naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        if is_dicom(path):
            return read_dicom(path, window)
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # check_pixel_count below refuses first, with the file and the setting named
    try:
        with Image.open(path) as image:
            check_pixel_count(path, *image.size)
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA")
            if image.mode in ("RGBA", "LA"):
                pixels = np.asarray(image, dtype=np.float32) / 255.0
                colour, alpha = pixels[..., :-1], pixels[..., -1:]
                composited = colour * alpha
                return composited[..., 0] if composited.shape[-1] == 1 else composited
            if image.mode == "CMYK" or image.mode == "YCbCr":
                image = image.convert("RGB")
            if image.mode == "1":
                image = image.convert("L")
            array = np.asarray(image)
    except Image.DecompressionBombError as error:
        raise DatasetError(f"image {path}: {error}; set ${MAX_PIXELS_ENV} higher if the image is real") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot decode image {path}: {type(error).__name__}: {error}") from error
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        return _scale_integer(np.clip(array, 0, None))
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float32))
        low, high = float(finite.min()), float(finite.max())
        return (finite - low) / (high - low) if high > low else np.zeros_like(finite)
    raise DatasetError(f"image {path}: unsupported pixel type {array.dtype}")


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) float -> (C, H, W) with C = ``channels`` (ITU-R 601 luma for grey)."""
    if pixels.ndim == 3 and pixels.shape[-1] >= 3:
        if channels == 3:
            return np.ascontiguousarray(np.moveaxis(pixels[..., :3], -1, 0))
        grey = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    else:
        grey = pixels if pixels.ndim == 2 else pixels[..., 0]
    return np.repeat(grey[None], channels, axis=0)


def resize(planes: np.ndarray, size: int, mode: str = "stretch", *, nearest: bool = False) -> np.ndarray:
    """(C, H, W) float -> (C, size, size): ``stretch`` to the square, or ``pad`` (keep aspect, centre on black)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    tensor = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[None]
    height, width = tensor.shape[-2:]
    if mode == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        tensor = F.pad(tensor, (left, side - width - left, top, side - height - top))
    if nearest:
        out = F.interpolate(tensor, size=(size, size), mode="nearest")
    else:
        out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].numpy()


def to_uint8(planes: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8, rounded."""
    return np.round(np.clip(planes, 0.0, 1.0) * 255.0).astype(np.uint8)


def disc_mask(shape: tuple[int, int], circles: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """A bool (H, W) mask, true inside or on any (row, col, radius) disc (pixel (r, c) is the point (r, c))."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for row, col, radius in circles:
        mask |= (rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2
    return mask


def ellipse_mask(shape: tuple[int, int], ellipses: tuple[tuple[float, float, float, float, float], ...]) -> np.ndarray:
    """A bool (H, W) mask, true inside or on any rotated ellipse (row, col, rx, ry, theta).

    Pixel (r, c) is the point (x = c, y = r); with dx = c - col, dy = r - row it is inside when
    ``((dx cos theta + dy sin theta) / rx)**2 + ((dy cos theta - dx sin theta) / ry)**2 <= 1``: the ``rx``
    semi-axis points along (cos theta, sin theta) in (x, y), theta turning from +x towards +y (VIA's ellipse).
    """
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for row, col, rx, ry, theta in ellipses:
        dx, dy, cos, sin = cols - col, rows - row, np.cos(theta), np.sin(theta)
        mask |= ((dx * cos + dy * sin) / rx) ** 2 + ((dy * cos - dx * sin) / ry) ** 2 <= 1.0
    return mask


def polygon_mask(shape: tuple[int, int], polygons: tuple[tuple[tuple[float, float], ...], ...]) -> np.ndarray:
    """A bool (H, W) mask, true inside any polygon of (row, col) vertices (clipped to the image).

    Pixel (r, c) is the point (r, c), filled by ``skimage.draw.polygon``, which counts a pixel on an edge as inside.
    """
    from skimage.draw import polygon

    mask = np.zeros(shape, dtype=bool)
    for vertices in polygons:
        rows, cols = polygon([r for r, _ in vertices], [c for _, c in vertices], shape=shape)
        mask[rows, cols] = True
    return mask


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``y2`` before ``y10``."""
    return [int(token) if token.isdigit() else token.lower() for token in re.split(r"(\d+)", text)]
