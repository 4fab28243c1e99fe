"""What the dataset converters share to read a source: cases, layout checks, spreadsheets, images and masks,
clinical values.

A converter yields :class:`Case` / :class:`Skipped` entries (a :class:`CaseStream` for a source too large to list
first), finds its folder with :func:`find_layout` and reads its files with :func:`read_image` / :func:`load_files`;
a problem with one case is a :class:`SkipCase`. How a converter is written: :mod:`dataset_conversion`; the
policies the driver applies: :mod:`dataset_conversion.driver`.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nnunet_mtl.errors import NnunetMtlError

MALIGNANCY = ("benign", "malignant")  # the benign / malignant target of every dataset that has one
# cells that mean "no value" in published spreadsheets: left empty in cases.csv, not reported as bad values
MISSING_TOKENS = frozenset({"", "-", "na", "n/a", "nan", "none", "null", "not available", "unknown", "?"})
PIXEL_SIZE_TO_MM = {"mm": 1.0, "cm": 10.0, "um": 1e-3, "m": 1e3}


def is_missing(value) -> bool:
    """True for an empty cell: None, NaN or one of :data:`MISSING_TOKENS` ("", "n/a", "not available", ...)."""
    return value is None or (isinstance(value, float) and value != value) or \
        (isinstance(value, str) and value.strip().lower() in MISSING_TOKENS)


class SkipCase(NnunetMtlError):
    """Raised (by a loader or a helper) for one case that cannot be converted; the case is skipped and reported."""


# --- layout -------------------------------------------------------------------------------------------------
def list_files(folder, pattern: str) -> list[Path]:
    """The entries of ``folder`` whose name matches the glob ``pattern`` case-insensitively (``INFO.csv`` finds
    info.csv, ``*.jpg`` finds 0001.JPG), sorted by name: files, or folders for a pattern ending in '/'. Dot files
    (.DS_Store, ._x from macOS archives) are never listed."""
    want_dir = pattern.endswith("/")
    pattern = pattern.rstrip("/").lower()
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".")
                  and fnmatch.fnmatchcase(p.name.lower(), pattern) and p.is_dir() == want_dir)


class UniqueNames:
    """Source files keyed by what they mean (an image number, a case id): a second file with the key of an
    earlier one is an error naming both (two files read as one case would merge silently). Keys that are strings
    compare without letter case: 'Benign (1).PNG' and 'benign (1).png' are one name to a case-insensitive file
    system, and to the case-insensitive matching of :func:`list_files`."""

    def __init__(self, where: str, unit: str):
        self.where, self.unit = where, unit
        self.files: dict = {}

    def add(self, key, path, what: str) -> None:
        norm = key.casefold() if isinstance(key, str) else key
        first = self.files.setdefault(norm, path)
        if first != path:
            raise NnunetMtlError(f"{self.where}: {str(first)!r} and {str(path)!r} both give {what}; expected one "
                                 f"file per {self.unit} (rename or remove one)")


def find_layout(source, required: Sequence[str], *, dataset: str, expected: str) -> Path:
    """The folder holding every glob pattern of ``required`` (a trailing '/' means a folder; file patterns match
    case-insensitively as in :func:`list_files`, folders by their exact name, which the converter opens):
    ``source`` itself or one of its direct subfolders (archives often unpack into an extra folder). Otherwise a
    one-line error naming ``source`` and the ``expected`` layout."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise NnunetMtlError(f"{source} is not a folder; expected the {dataset} folder: {expected}")

    def missing_in(folder: Path) -> list[str]:
        return [pattern for pattern in required
                if not ((folder / pattern).is_dir() if pattern.endswith("/") else list_files(folder, pattern))]

    missing = missing_in(source)
    if not missing:
        return source
    subfolders = [sub for sub in sorted(source.iterdir()) if sub.is_dir()]
    matches = [sub for sub in subfolders if not missing_in(sub)]
    if len(matches) == 1:
        return matches[0]
    # name what is missing where the layout almost is (the dataset's folder one level down), not in the parent
    closest = min([source, *subfolders], key=lambda folder: len(missing_in(folder)))
    if closest != source and len(missing_in(closest)) < len(missing):
        raise NnunetMtlError(f"{closest} looks like {dataset} but has no {', '.join(missing_in(closest))}; expected "
                             f"{expected}")
    raise NnunetMtlError(f"{source} does not look like {dataset} (no {', '.join(missing)}); expected {expected}")


def safe_id(text, fill: str = "_") -> str:
    """A source name as a case-id part: characters outside [A-Za-z0-9_.-] become ``fill``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", fill, str(text).strip())


def column_name(header) -> str:
    """A published column header as a cases.csv column: snake_case ("Pixel_size" -> "pixel_size",
    "Tissue composition" -> "tissue_composition", "CaseID" -> "case_id")."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(header).strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()


def read_xlsx_table(path, required: Sequence[str], *, dataset: str) -> list[dict]:
    """The rows of the first sheet of ``path`` whose header row (row 1) has every ``required`` column, as
    {header: value} dicts (empty rows dropped; openpyxl's cell types kept: ids may come as numbers). One-line
    error naming the file and the columns expected otherwise."""
    import openpyxl

    path = Path(path)
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile / KeyError / InvalidFileException on broken files
        raise NnunetMtlError(f"{path} is not a readable .xlsx file ({type(e).__name__}); expected the {dataset} "
                             f"spreadsheet")
    try:
        for sheet in book.worksheets:
            rows = sheet.iter_rows(values_only=True)
            header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
            if all(c in header for c in required):
                out = []
                for values in rows:
                    if values is None or all(v is None or str(v).strip() == "" for v in values):
                        continue
                    out.append({h: v for h, v in zip(header, values) if h})
                return out
    finally:
        book.close()
    raise NnunetMtlError(f"{path} has no sheet with the columns {', '.join(required)}; expected the {dataset} "
                         f"spreadsheet")


def split_cell(value, sep: str = "&") -> list[str]:
    """Several names in one spreadsheet cell ("a.png&b.png") as a list; empty cell -> []."""
    if value is None:
        return []
    return [part.strip() for part in str(value).split(sep) if part.strip()]


# --- cases --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One image to convert. Everything must be picklable: it travels to a worker process.

    ``image`` / ``masks`` are whatever ``loader`` reads (file paths for :func:`load_files`); the masks of one image
    are merged into one lesion map. ``lesion`` False marks a normal image (no lesion expected; ``--normal``
    decides). ``split`` is only used with ``--as official``. ``source`` names the case in messages.
    """
    case_id: str
    class_name: str
    patient_id: str
    image: Any
    masks: tuple = ()
    lesion: bool = True
    split: str | None = None
    spacing_mm: tuple[float, float] | None = None
    clinical: dict = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Skipped:
    """A source entry the converter cannot use; yielded among the cases so the report keeps the source's order."""
    case: str
    reason: str


class CaseStream:
    """Cases (and :class:`Skipped` entries) generated while they are converted, with their number known in
    advance for the progress bar: what ``cases(report)`` returns for a source too large to list first (AIMI's
    frames). Anything else it returns is listed before converting."""

    def __init__(self, items: Iterable, total: int):
        self.items, self.total = items, total

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return self.total


# --- images and masks -------------------------------------------------------------------------------------------
def read_image(path) -> np.ndarray:
    """A file as an array (H, W) or (H, W, C) in its own encoding (1-bit -> bool, palette -> RGB(A), 16-bit kept).
    Missing, unreadable or claiming a size no ultrasound frame has (a decompression bomb,
    :data:`nnunet_mtl.image_files.MAX_IMAGE_PIXELS`): :class:`SkipCase` naming the file, before decoding."""
    from nnunet_mtl.image_files import open_image

    path = Path(path)
    try:
        with open_image(path, "file") as im:
            if im.mode == "P":  # palette: resolve the colours (and the transparency, if any)
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.array(im)
    except NnunetMtlError as e:
        message = str(e)
        if message.endswith("does not exist"):
            message += "; expected the file the dataset lists"
        raise SkipCase(message)


def _size_text(shape) -> str:
    return f"{shape[1]}x{shape[0]}"


def check_same_size(image: np.ndarray, mask: np.ndarray, image_name, mask_name) -> None:
    """:class:`SkipCase` naming both files unless image and mask have the same height and width."""
    (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
    if (ih, iw) != (mh, mw):
        looks = (" (the image looks cropped relative to its mask: smaller in both directions)" if ih < mh and iw < mw
                 else " (the mask looks cropped relative to its image)" if ih > mh and iw > mw else "")
        raise SkipCase(f"{mask_name} is {_size_text(mask.shape)} px but {image_name} is {_size_text(image.shape)}"
                       f"{looks}; expected a mask of the image's size")


def merge_masks(masks: Sequence[np.ndarray], names: Sequence = ()) -> np.ndarray:
    """One 0/1 lesion map from several masks of one image: logical OR of the binarized masks (each annotated
    lesion stays lesion). Sizes must agree (:class:`SkipCase` naming the file otherwise); a mask of mixed
    encodings is a :class:`SkipCase` naming it (:func:`~nnunet_mtl.dataset.writer.read_mask`)."""
    from nnunet_mtl.dataset.writer import MaskEncodingError, binarize_mask

    if not masks:
        raise ValueError("merge_masks needs at least one mask")
    names = [str(n) for n in names] or [f"mask {i + 1}" for i in range(len(masks))]
    try:
        merged = binarize_mask(masks[0], names[0])
        for mask, name in zip(masks[1:], names[1:]):
            check_same_size(merged, mask, names[0], name)
            merged |= binarize_mask(mask, name)
    except MaskEncodingError as e:
        raise SkipCase(str(e))
    return merged


def spacing_mm(pixel_size: float | None, unit: str = "mm") -> tuple[float, float] | None:
    """(row, col) spacing in mm from a published pixel size (square pixels: datasets give one number); None stays
    None. ``unit``: mm, cm, um or m."""
    if pixel_size is None:
        return None
    if unit not in PIXEL_SIZE_TO_MM:
        raise ValueError(f"pixel size unit {unit!r}: expected one of {', '.join(PIXEL_SIZE_TO_MM)}")
    mm = float(pixel_size) * PIXEL_SIZE_TO_MM[unit]
    return (mm, mm)


def load_files(case: Case) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The default loader: ``case.image`` and ``case.masks`` are file paths; the masks as read (each binarized by
    its own encoding and merged by the worker, which names each file in messages), sizes checked.

    A loader is any picklable callable ``loader(case) -> (image array, mask array, list of mask arrays or None)``,
    run in the worker processes; a list of masks must follow ``case.masks`` (their names go into messages). State
    such as an open HDF5 file belongs in an object that opens it lazily on first call in the worker and drops it in
    ``__getstate__``."""
    image = read_image(case.image)
    if not case.masks:
        return image, None
    masks = [read_image(m) for m in case.masks]
    for m, name in zip(masks, case.masks):
        check_same_size(image, m, case.image, name)
    return image, masks
