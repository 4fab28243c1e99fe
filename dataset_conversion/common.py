"""What every dataset converter shares: the driver, CLI options, layout checks, parallel conversion, duplicates,
the report.

A converter module only knows its dataset's layout and quirks. It has two functions and a generator:

- ``register_converters(sources)`` calls :func:`add_converter` (``nnunet_mtl convert NAME SOURCE`` with the
  options every converter has, :func:`add_common_arguments`: ``-d``, ``--name``, ``--as`` (with the dataset's
  default split), ``--add-to-existing``, ``--overwrite``, ``--normal``, ``-j``, ``--no-progress``) and adds its
  own options (``--target``, ...) to the parser it returns; running the command calls the converter function and
  prints :meth:`ConversionReport.format`.
- ``convert_NAME(source, options, *, <its own options>, raw_root=None) -> ConversionReport`` calls
  :func:`convert_source` with the dataset's target classes and a ``cases(report)`` function; the driver resolves
  nnUNet_raw (its one-line error before any work), builds the report, lists the cases and converts them.
- ``cases(report)`` checks the source folder with :func:`find_layout` (a wrong folder gives one line naming the
  layout expected) and yields one :class:`Case` per image (what to read, class, patient, spacing, clinical
  columns) or a :class:`Skipped` (with the reason) for an entry it cannot use, recording unusable clinical values
  with :meth:`ConversionReport.number` / :meth:`ConversionReport.bad_value`. A source too large to list first
  returns a :class:`CaseStream` (the cases with their number).

:func:`convert` (called by the driver) loads, converts and PNG-encodes the cases in worker processes, keeps the
bookkeeping (cases.csv rows, duplicates, counts) in the main process in the source's order, and publishes the
dataset atomically through :class:`~dataset_conversion.writer.RawDatasetWriter` together with
``conversion_report.json``.

Policies (documented here once, for every converter)

- ``--normal exclude`` (default): images without a lesion are left out and reported. The task is lesion
  segmentation + lesion classification (benign / malignant, TI-RADS, ...): a normal image has no lesion to
  classify, and a third class with a handful of examples (BrEaST has 4 of 256) cannot be learnt and skews the
  classifier. ``--normal include`` keeps them (all-zero mask) under an extra class ``normal``; the class list then
  always has ``normal`` (also for a dataset without normal images), so datasets converted with the same
  ``--normal`` share class_labels and can be combined with ``--add-to-existing``.
- Exact duplicates (identical decoded grey pixels, whatever the file bytes): the first occurrence in the
  source's order is kept and later copies are skipped and reported. If the copies carry *different* classes
  (BUSI files one image as both benign and malignant), every copy is dropped: the label is ambiguous, training on
  it teaches both answers and a test case with two truths cannot be scored. A new case identical to a case of the
  existing dataset (``--add-to-existing``) is skipped: a test image that is also a training image is leakage.
  ``--duplicates keep`` keeps every copy within the source, as published (to test on a paper's count; copies of
  the existing dataset are still skipped), and lists them in the report.
- Exact duplicates filed under two patient ids are one person (BUS-UCLM's CHCO_000-003 are CHVI_005, 008, 009,
  013): the later-seen patient's kept images get the earlier patient's id, so a patient-grouped split keeps the
  person in one fold, and the report lists each merge with the identical pairs that prove it.
- ``--resize SIZE``: every image (bilinear) and mask (nearest) becomes SIZE x SIZE, as a paper's fixed input size
  (nnU-Net never resizes 2D PNGs); the spacing columns are scaled with it, and a lesion that vanishes is skipped.
- Near-duplicates (difference hashes at most :data:`NEAR_DUPLICATE_MAX_BITS` of 64 bits apart) between cases of
  *different* patients are listed in the report, never removed: they are often the same lesion seen twice
  (a patient id the dataset does not publish), which a patient-level split cannot see. Pairs within one patient
  (cine frames, repeat views) are expected and not listed. All pairs are counted; the report lists the first
  :data:`REPORT_LIST_LIMIT` (cine frames of one scanner hash alike: ~150,000 pairs per 2,000 frames).
- Label conflicts: near-duplicates (the same rule: dHash, different patients) whose *classes* differ. BUSI files
  one scan under both classes with different crops and outlines (dHash distance 0, so not an exact duplicate):
  the same image with two truths, like the exact copies dropped as ambiguous. They are counted and listed in their
  own section of the report. ``--label-conflicts keep`` (default) keeps them, as near-duplicates are kept: the
  8-bit rule also pairs unrelated images that share a scanner's layout (cine frames of different clips hash
  alike by the thousand), so removing every pair by default would remove valid images; the report says they are
  kept and how to drop them. ``--label-conflicts drop`` drops every case of the conversion that is in a conflict
  (all of them, not only the pairs listed); a case already in the dataset (``--add-to-existing``) is never
  changed, so of such a pair only the new case is dropped.
- A problem with one case's files (missing, unreadable, image and mask of different sizes, a lesion case with an
  empty mask) skips that case with a one-line reason naming the file; a problem with the dataset as a whole
  (wrong folder, unreadable spreadsheet, missing column) stops the run. Bad clinical values are reported, never
  fatal; the cell is left empty in cases.csv.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import signal
import time
from collections import deque
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nnunet_mtl.dataset.contract import NORMAL_CLASS  # the class of --normal include (one definition)
from nnunet_mtl.errors import NnunetMtlError

MALIGNANCY = ("benign", "malignant")  # the benign / malignant target of every dataset that has one
NORMAL_CHOICES = ("exclude", "include")
DUPLICATE_CHOICES = ("drop", "keep")
LABEL_CONFLICT_CHOICES = ("keep", "drop")
MIN_RESIZE, MAX_RESIZE = 32, 4096
SPLIT_CHOICES = ("train", "test", "official")
REPORT_FILE = "conversion_report.json"
# dHash distance (of 64 bits) up to which two images are listed as near-duplicates. Measured on the real data:
# two acquisitions of one lesion in UDIAT are 6 and 8 bits apart; unrelated BrEaST images are 7+ bits apart (their
# common fan-shaped scan area makes the hashes alike), most 12+. 8 lists every re-acquisition found, at the cost of
# an occasional unrelated pair: the list is for a human to check, nothing is removed.
NEAR_DUPLICATE_MAX_BITS = 8
REPORT_LIST_LIMIT = 1000  # near-duplicate pairs listed in the report: the first in (i, j) order; the total is complete
PAIR_BLOCK_BYTES = 32 * 2 ** 20  # working memory of the near-duplicate search (XOR, popcount and test of one block)
PRINT_LIMIT = 15  # lines per section when the report is printed
# cells that mean "no value" in published spreadsheets: left empty in cases.csv, not reported as bad values
MISSING_TOKENS = frozenset({"", "-", "na", "n/a", "nan", "none", "null", "not available", "unknown", "?"})
PIXEL_SIZE_TO_MM = {"mm": 1.0, "cm": 10.0, "um": 1e-3, "m": 1e3}


def is_missing(value) -> bool:
    """True for an empty cell: None, NaN or one of :data:`MISSING_TOKENS` ("", "n/a", "not available", ...)."""
    return value is None or (isinstance(value, float) and value != value) or \
        (isinstance(value, str) and value.strip().lower() in MISSING_TOKENS)


class SkipCase(NnunetMtlError):
    """Raised (by a loader or a helper) for one case that cannot be converted; the case is skipped and reported."""


# --- command line -----------------------------------------------------------------------------------------------
def default_num_processes() -> int:
    """2 worker processes, fewer on a 1-core machine: PNG encoding dominates and scales with cores, and 2 is what
    the benchmarks target; use -j for more."""
    return max(1, min(2, os.cpu_count() or 1))


def add_common_arguments(parser: argparse.ArgumentParser, default_id: int, default_name: str, *,
                         default_split: str = "train") -> None:
    """Add the options every converter has. ``default_split`` is what ``--as`` defaults to (``--add-to-existing``
    defaults to test): "train" or "test" (every case there), or "official" for a dataset with a published
    train/test split, which then also offers ``--as official``."""
    if default_split not in SPLIT_CHOICES:
        raise ValueError(f"default_split {default_split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id, help="dataset id (DatasetNNN_...; default %(default)s)")
    parser.add_argument("--name", default=default_name, help="dataset name (folder DatasetNNN_NAME; default %(default)s)")
    official = default_split == "official"
    parser.add_argument(
        "--as", dest="split", choices=SPLIT_CHOICES if official else SPLIT_CHOICES[:2], default=None,
        help="write every case as training set (imagesTr/labelsTr) or as external test set (imagesTs/labelsTs)"
             + ("; 'official' keeps the publisher's train/test split" if official else "")
             + f". Default: {default_split}" + ("" if default_split == "test" else ", or test with --add-to-existing"))
    parser.add_argument("--add-to-existing", action="store_true",
                        help="add the cases to the existing dataset with this id (e.g. as its external test set); "
                             "its classes must match")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")
    parser.add_argument("--normal", choices=NORMAL_CHOICES, default="exclude",
                        help="images without a lesion: exclude them (default; a normal image has no lesion to "
                             "classify) or include them as an extra class 'normal' with an empty mask")
    parser.add_argument("--resize", type=int, default=None, metavar="SIZE",
                        help="resize every image (bilinear) and mask (nearest) to SIZE x SIZE pixels, e.g. 256 as "
                             "in the breast consistency paper (nnU-Net never resizes 2D images); the pixel spacing "
                             "in cases.csv is scaled with it; use the same SIZE for a test set added later")
    parser.add_argument("--duplicates", choices=DUPLICATE_CHOICES, default="drop",
                        help="exact duplicates within the source: drop later copies and ambiguous ones (default; "
                             "see the report) or keep every copy as published (e.g. to test on a paper's count); "
                             "copies of cases already in the dataset are always skipped")
    parser.add_argument("--label-conflicts", choices=LABEL_CONFLICT_CHOICES, default="keep",
                        help="near-duplicates of different patients whose classes differ (one scan filed under "
                             "two classes, as in BUSI): keep them (default; listed in the report as label "
                             "conflicts: the near-duplicate rule also pairs unrelated look-alike images) or drop "
                             "every case of this conversion that is in one")
    parser.add_argument("-j", "--num-processes", type=int, default=default_num_processes(),
                        help="worker processes for decoding / converting / PNG encoding (default %(default)s; "
                             "1: no workers)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(default_split=default_split)


@dataclass
class ConvertOptions:
    """Where and how a converter writes; :func:`options_from_args` builds it from :func:`add_common_arguments`."""
    dataset_id: int
    name: str
    split: str = "train"  # "train" | "test": every case there; "official": each Case.split as published
    add_to_existing: bool = False
    overwrite: bool = False
    normal: str = "exclude"
    num_processes: int = field(default_factory=default_num_processes)
    progress: bool = True
    resize: int | None = None     # square size every image and mask is resized to; None: as published
    duplicates: str = "drop"      # "drop": the policy of the module docstring; "keep": every copy as published
    label_conflicts: str = "keep"  # near-duplicates with different classes: "keep" (listed) or "drop"

    def __post_init__(self):
        if self.resize is not None and not MIN_RESIZE <= self.resize <= MAX_RESIZE:
            raise NnunetMtlError(f"--resize {self.resize}: expected a size from {MIN_RESIZE} to {MAX_RESIZE} pixels")
        if self.duplicates not in DUPLICATE_CHOICES:
            raise NnunetMtlError(f"--duplicates {self.duplicates!r}: expected one of {', '.join(DUPLICATE_CHOICES)}")
        if self.label_conflicts not in LABEL_CONFLICT_CHOICES:
            raise NnunetMtlError(f"--label-conflicts {self.label_conflicts!r}: expected one of "
                                 f"{', '.join(LABEL_CONFLICT_CHOICES)}")
        if self.split not in SPLIT_CHOICES:
            raise NnunetMtlError(f"--as {self.split!r}: expected train, test or official")
        if self.normal not in NORMAL_CHOICES:
            raise NnunetMtlError(f"--normal {self.normal!r}: expected one of {', '.join(NORMAL_CHOICES)}")
        if self.add_to_existing and self.overwrite:
            raise NnunetMtlError("--add-to-existing and --overwrite exclude each other; expected one of them")
        if self.num_processes < 1:
            raise NnunetMtlError(f"-j {self.num_processes}: expected at least 1 process")


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    """:class:`ConvertOptions` from args parsed with :func:`add_common_arguments`."""
    split = args.split or ("test" if args.add_to_existing else getattr(args, "default_split", "train"))
    return ConvertOptions(dataset_id=args.dataset_id, name=args.name, split=split,
                          add_to_existing=args.add_to_existing, overwrite=args.overwrite, normal=args.normal,
                          num_processes=args.num_processes, progress=not args.no_progress,
                          resize=getattr(args, "resize", None), duplicates=getattr(args, "duplicates", "drop"),
                          label_conflicts=getattr(args, "label_conflicts", "keep"))


def class_labels_for(classes: Sequence[str], normal: str) -> dict[str, int]:
    """class_labels {name: index} for the target classes, plus ``normal`` last when ``--normal include``."""
    names = list(classes)
    if normal == "include" and NORMAL_CLASS not in names:
        names.append(NORMAL_CLASS)
    return {c: i for i, c in enumerate(names)}


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
    encodings is a :class:`SkipCase` naming it (:func:`~dataset_conversion.writer.read_mask`)."""
    from dataset_conversion.writer import MaskEncodingError, binarize_mask

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
    run in the worker processes; a list of masks must follow ``case.masks`` (their names go into messages). State such as an open HDF5 file belongs in an object that opens it lazily on first call in the
    worker and drops it in ``__getstate__``."""
    image = read_image(case.image)
    if not case.masks:
        return image, None
    masks = [read_image(m) for m in case.masks]
    for m, name in zip(masks, case.masks):
        check_same_size(image, m, case.image, name)
    return image, masks


# --- hashes ---------------------------------------------------------------------------------------------------
def pixel_digest(grey: np.ndarray) -> str:
    """Exact-duplicate key: a hash of the decoded pixels and the shape (not of the file: re-encoded copies of one
    image have different bytes but the same pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(grey.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(grey).tobytes())
    return h.hexdigest()


def difference_hash(grey: np.ndarray) -> int:
    """64-bit dHash: the image box-averaged to 9x8, one bit per horizontally adjacent pair (left brighter than
    right). Robust to re-encoding, resizing and global brightness, so close hashes mean near-identical images."""
    from PIL import Image

    small = np.asarray(Image.fromarray(grey).resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicate_pairs(hashes: Sequence[int], groups: Sequence[str], max_bits: int = NEAR_DUPLICATE_MAX_BITS, *,
                         limit: int = REPORT_LIST_LIMIT) -> tuple[int, list[tuple[int, int, int]]]:
    """(number of pairs, the first ``limit`` pairs) of hashes at most ``max_bits`` apart whose ``groups``
    (patients) differ; a pair is (i, j, distance) with i < j, in (i, j) order (:func:`scan_near_duplicates`)."""
    scan = scan_near_duplicates(hashes, groups, max_bits=max_bits, limit=limit)
    return scan.total, scan.pairs


@dataclass
class PairScan:
    """What :func:`scan_near_duplicates` found: near-duplicate pairs and, among them, the label conflicts."""
    total: int = 0
    pairs: list = field(default_factory=list)            # the first ``limit`` pairs (i, j, distance)
    conflicts_total: int = 0
    conflicts: list = field(default_factory=list)        # the first ``limit`` pairs whose labels differ
    conflicts_by_distance: dict = field(default_factory=dict)  # bits -> conflicting pairs (all of them)
    in_conflict: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per hash: in any conflict


def scan_near_duplicates(hashes: Sequence[int], groups: Sequence[str], labels: Sequence[str] | None = None, *,
                         max_bits: int = NEAR_DUPLICATE_MAX_BITS, limit: int = REPORT_LIST_LIMIT) -> PairScan:
    """Pairs of hashes at most ``max_bits`` apart whose ``groups`` (patients) differ, and among them those whose
    ``labels`` (classes) differ too: the label conflicts. Every pair is counted, the first ``limit`` of each kind
    (in (i, j) order, i < j) are listed, and every hash in a conflict is marked in ``in_conflict`` (what
    ``--label-conflicts drop`` needs, however many pairs there are).

    Pairs are counted in place, never collected: the frames of one scanner's cine clips share their layout and
    hash alike across clips (~150,000 pairs among 2,000 frames). Vectorised in row blocks (XOR + popcount) whose
    working memory stays under :data:`PAIR_BLOCK_BYTES` however many hashes: 20,000 images take about a second."""
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    lab = None if labels is None else np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)[1]
    scan = PairScan(in_conflict=np.zeros(len(h), bool))
    by_distance = np.zeros(max_bits + 1, np.int64)
    # bytes per compared pair at worst: uint64 XOR, uint8 popcount, bool tests, two int64 indices of a hit
    rows = max(1, PAIR_BLOCK_BYTES // (32 * max(1, len(h))))
    for start in range(0, len(h), rows):
        stop = min(len(h), start + rows)
        dist = np.bitwise_count(h[start:stop, None] ^ h[None, start:])  # columns from `start`: only j >= i matter
        ii, jj = np.nonzero(dist <= max_bits)
        keep = (jj > ii) & (g[ii + start] != g[jj + start])
        ii, jj = ii[keep], jj[keep]
        scan.total += len(ii)
        _first_pairs(scan.pairs, ii, jj, start, dist, limit)
        if lab is not None:
            differ = lab[ii + start] != lab[jj + start]
            ci, cj = ii[differ], jj[differ]
            scan.conflicts_total += len(ci)
            scan.in_conflict[ci + start] = True
            scan.in_conflict[cj + start] = True
            by_distance += np.bincount(dist[ci, cj], minlength=max_bits + 1)[:max_bits + 1]
            _first_pairs(scan.conflicts, ci, cj, start, dist, limit)
    scan.conflicts_by_distance = {bits: int(n) for bits, n in enumerate(by_distance.tolist()) if n}
    return scan


def _first_pairs(into: list, ii: np.ndarray, jj: np.ndarray, start: int, dist: np.ndarray, limit: int) -> None:
    """Append the block's pairs (row ``ii`` + ``start``, column ``jj`` + ``start``) to ``into`` up to ``limit``."""
    if len(into) < limit:
        ii, jj = ii[:limit - len(into)], jj[:limit - len(into)]
        into.extend(zip((ii + start).tolist(), (jj + start).tolist(), dist[ii, jj].tolist()))


# --- the report -----------------------------------------------------------------------------------------------
class ConversionReport:
    """What a conversion did: counts, skipped cases, duplicates, near-duplicates, label conflicts (near-duplicates
    of different classes), bad clinical values, notes.

    Printed with :meth:`format` and written as ``conversion_report.json`` into the dataset folder (a list of
    conversions: ``--add-to-existing`` appends). nnU-Net and the contract ignore extra files there."""

    def __init__(self, converter: str, source):
        self.converter = converter
        self.source = str(source)
        self.dataset = ""
        self.options: dict = {}
        self.summary: dict = {}
        self.added: dict = {}
        self.skipped: list[dict] = []
        self.duplicates: list[dict] = []
        self.near_duplicates: list[dict] = []
        self.near_duplicates_total = 0
        self.label_conflicts: list[dict] = []  # near-duplicates of different classes: the first REPORT_LIST_LIMIT
        self.label_conflicts_total = 0
        self.label_conflicts_by_distance: dict[int, int] = {}  # dHash bits -> conflicting pairs (all of them)
        self.label_conflicts_policy = "keep"  # --label-conflicts
        self.label_conflicts_dropped: list[str] = []  # case ids dropped for a conflict (every one, not a sample)
        self.bad_values: list[dict] = []
        self.patients_merged: list[dict] = []  # identical images under two patient ids: merged into one
        self.mask_encodings: dict[str, int] = {}  # encoding -> mask files of the cases added, read that way
        self.notes: list[str] = []
        self.seconds = 0.0
        self.path: Path | None = None

    def skip(self, case: str, reason: str) -> None:
        self.skipped.append({"case": str(case), "reason": reason})

    def note(self, text: str) -> None:
        """A fact the user should know about the conversion (e.g. "no patient ids: one patient per image")."""
        if text not in self.notes:
            self.notes.append(text)

    def bad_value(self, case: str, column: str, value, expected: str) -> None:
        self.bad_values.append({"case": str(case), "column": column, "value": _jsonable(value), "expected": expected})

    def number(self, case: str, column: str, value, *, low: float | None = None, high: float | None = None,
               integer: bool = False):
        """A clinical number, or None when the cell is empty / "not available" (silently) or unusable (reported
        as a bad value, not fatal): not a number, not an integer when ``integer``, outside [low, high]."""
        if is_missing(value):
            return None
        try:
            number = float(str(value).strip().replace(",", "."))  # European decimal commas occur in sheets
        except ValueError:
            self.bad_value(case, column, value, "a number")
            return None
        rng = f" in [{low}, {high}]" if low is not None or high is not None else ""
        if not np.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
            self.bad_value(case, column, value, f"a number{rng}")
            return None
        if integer:
            if number != int(number):
                self.bad_value(case, column, value, f"an integer{rng}")
                return None
            return int(number)
        return number

    def to_dict(self) -> dict:
        return {
            "converter": self.converter, "source": self.source, "dataset": self.dataset, "options": self.options,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(self.seconds, 2),
            "counts": self.summary, "added": self.added, "notes": self.notes,
            "mask_encodings": dict(sorted(self.mask_encodings.items())),
            "skipped": self.skipped, "duplicates": self.duplicates, "patients_merged": self.patients_merged,
            "near_duplicates": {"max_distance_bits": NEAR_DUPLICATE_MAX_BITS, "scope": "different patients",
                                "total": self.near_duplicates_total, "pairs": self.near_duplicates},
            "label_conflicts": {"max_distance_bits": NEAR_DUPLICATE_MAX_BITS,
                                "scope": "near-duplicates of different patients whose classes differ",
                                "policy": self.label_conflicts_policy, "total": self.label_conflicts_total,
                                "by_distance": {str(k): v for k, v in self.label_conflicts_by_distance.items()},
                                "pairs": self.label_conflicts, "dropped": self.label_conflicts_dropped},
            "bad_values": self.bad_values,
        }

    def _conflict_action(self) -> str:
        """What was done with the label conflicts, for the printed section's title."""
        if self.label_conflicts_policy == "drop":
            return f"{len(self.label_conflicts_dropped)} case(s) dropped, --label-conflicts drop"
        return "all kept, --label-conflicts drop drops them"

    def format(self) -> str:
        """The printed summary: counts per class and split, then what was skipped and why, duplicates, notes."""
        from dataset_conversion.writer import format_summary

        lines = [f"{self.converter}: {self.source} -> {self.dataset}"]
        if self.summary:
            lines.append(format_summary(self.summary))
        n_added = sum(sum(v.values()) for k, v in self.added.items() if k != "classes")
        lines.append(f"added {n_added} case(s) in {self.seconds:.1f} s")

        def section(title: str, items: list[str], total: int | None = None):
            total = len(items) if total is None else total
            lines.append(f"{title}: {total if total else 'none'}")
            lines.extend("  " + s for s in items[:PRINT_LIMIT])
            if total > min(len(items), PRINT_LIMIT):
                lines.append(f"  ... {total - min(len(items), PRINT_LIMIT)} more in {REPORT_FILE}")

        section("skipped", [f"{s['case']}: {s['reason']}" for s in self.skipped])
        section("exact duplicates", [f"{', '.join(d['cases'])}: {d['action']}" for d in self.duplicates])
        section("patients merged (identical images under two patient ids: one person)",
                [f"{', '.join(m['patients'])} -> patient_id {m['into']} ({len(m['cases_moved'])} case(s) moved; "
                 f"identical: {', '.join(m['identical_images'][:3])}"
                 f"{', ...' if len(m['identical_images']) > 3 else ''})" for m in self.patients_merged])
        section(f"near-duplicates of different patients (dHash <= {NEAR_DUPLICATE_MAX_BITS} bits, listed only)",
                [f"{p['a']} ~ {p['b']} ({p['distance']} bits)" for p in self.near_duplicates],
                self.near_duplicates_total)
        by_distance = ", ".join(f"{bits} bits: {n}" for bits, n in sorted(self.label_conflicts_by_distance.items()))
        section(f"label conflicts (near-duplicates whose classes differ; {self._conflict_action()}"
                + (f"; pairs at {by_distance}" if by_distance else "") + ")",
                [f"{p['a']} ({p['classes'][0]}) ~ {p['b']} ({p['classes'][1]}) ({p['distance']} bits)"
                 for p in self.label_conflicts], self.label_conflicts_total)
        section("bad clinical values (left empty)",
                [f"{b['case']} {b['column']}={b['value']!r}: expected {b['expected']}" for b in self.bad_values])
        if self.mask_encodings:
            from dataset_conversion.writer import MASK_ENCODINGS
            lines.append("mask files read as: " + "; ".join(
                f"{n} {encoding} ({MASK_ENCODINGS.get(encoding, encoding)})"
                for encoding, n in sorted(self.mask_encodings.items(), key=lambda kv: -kv[1])))
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.path is not None:
            lines.append(f"wrote {self.path} (report: {REPORT_FILE})")
        return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# --- the worker side ----------------------------------------------------------------------------------------
@dataclass
class _Done:
    """What a worker sends back for a written case (the pixels stay in the files)."""
    digest: str
    dhash: int
    shape: tuple
    source_shape: tuple = ()  # before --resize
    encodings: tuple = ()     # how each mask file was read (dataset_conversion.writer.MASK_ENCODINGS)


def resize_case(grey: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear, mask nearest-neighbour, both to size x size (a lesion smaller than a pixel of the result may
    vanish: the caller checks the mask again)."""
    from PIL import Image
    image = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))
    label = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return image, label


_WORKER: dict = {}


def _init_worker(loader: Callable, folder: str, resize: int | None = None) -> None:
    # Ctrl-C reaches every process of the terminal's group: workers ignore it and the main process, which owns the
    # temporary folder, stops them and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(loader=loader, folder=Path(folder), resize=resize)


def _convert_case(case: Case, split: str, loader: Callable, folder: Path, resize: int | None = None):
    """Load -> grey image + 0/1 mask -> checks -> (resize) -> PNGs into ``folder``; a :class:`SkipCase` comes back
    as text."""
    from dataset_conversion.writer import MaskEncodingError, image_and_mask, write_case_files

    try:
        image, mask = loader(case)
        name = case.source or case.case_id
        masks = [] if mask is None else list(mask) if isinstance(mask, (list, tuple)) else [mask]
        files = [m for m in case.masks if isinstance(m, (str, Path))]
        names = [str(m) for m in files] if len(files) == len(masks) else []
        for i, m in enumerate(masks):
            check_same_size(np.asarray(image), np.asarray(m), name, names[i] if names else "its mask")
        try:
            grey, label, encodings = image_and_mask(image, mask, name=name, mask_names=names)
        except MaskEncodingError as e:
            raise SkipCase(str(e))
        source_shape = grey.shape
        if resize is not None:
            had_lesion = bool(label.any())
            grey, label = resize_case(grey, label, resize)
            if had_lesion and not label.any():
                raise SkipCase(f"{case.source or case.case_id}: the lesion vanishes when {source_shape[1]}x"
                               f"{source_shape[0]} is resized to {resize}x{resize}; expected a larger lesion or "
                               f"--resize")
        if case.lesion and not label.any():
            raise SkipCase(f"{case.source or case.case_id}: the lesion mask is empty; expected a lesion "
                           f"(class {case.class_name})")
        if not case.lesion and label.any():
            raise SkipCase(f"{case.source or case.case_id}: a normal image with a non-empty mask; expected none")
        write_case_files(folder, case.case_id, split, grey, label)
        return _Done(pixel_digest(grey), difference_hash(grey), grey.shape, source_shape, encodings)
    except SkipCase as e:
        return str(e)


def _convert_chunk(chunk: list) -> list:
    return [_convert_case(case, split, _WORKER["loader"], _WORKER["folder"], _WORKER.get("resize"))
            for case, split in chunk]


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_results(work: Iterator, loader: Callable, folder: Path, num_processes: int, chunksize: int,
                     resize: int | None = None):
    """(work item, result) in the order of ``work``; at most ``2 * num_processes`` chunks in flight, so memory
    stays flat however long the source is."""
    if num_processes <= 1:
        for case, split in work:
            yield (case, split), _convert_case(case, split, loader, folder, resize)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver: workers start from a clean single-threaded server (no fork of a threaded parent), cheaper than
    # spawn; spawn where it does not exist.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    executor = ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_worker, initargs=(loader, str(folder), resize))
    pending: deque = deque()
    chunks = _chunks(work, chunksize)
    try:
        for chunk in chunks:
            pending.append((chunk, executor.submit(_convert_chunk, chunk)))
            if len(pending) >= 2 * num_processes:
                break
        while pending:
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except BrokenProcessPool as e:
                raise NnunetMtlError(
                    f"a worker process died ({e}); out of memory, or a Python script that starts the conversion "
                    f"without `if __name__ == '__main__':` (workers import the main module); rerun with -j 1") from e
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append((nxt, executor.submit(_convert_chunk, nxt)))
            yield from zip(chunk, results)
    finally:
        # on any error or Ctrl-C: drop queued chunks and wait for the running ones, so no worker writes into the
        # temporary folder after the writer removed it
        executor.shutdown(wait=True, cancel_futures=True)


# --- the main side ---------------------------------------------------------------------------------------
def convert(cases: Iterable[Case | Skipped], options: ConvertOptions, report: ConversionReport, *,
            class_labels: dict[str, int], description: str = "", loader: Callable = load_files,
            total: int | None = None, raw_root=None, chunksize: int = 4) -> Path:
    """Convert ``cases`` into ``nnUNet_raw/DatasetNNN_Name`` (atomically) and fill ``report``; returns the folder.

    Normal images are dropped or kept per ``options.normal``; duplicates as in the module docstring. Cases reach
    the workers in chunks of ``chunksize`` (fewer round trips for small frames)."""
    from tqdm import tqdm

    from dataset_conversion.writer import RawDatasetWriter, summarize_cases

    started = time.perf_counter()
    if total is None and hasattr(cases, "__len__"):
        total = len(cases)
    report.options = {k: v for k, v in asdict(options).items() if k not in ("progress",)}
    writer = RawDatasetWriter(options.dataset_id, options.name, class_labels, raw_root=raw_root,
                              description=description, overwrite=options.overwrite,
                              add_to_existing=options.add_to_existing)
    report.dataset = writer.folder_name
    dups = _Duplicates(writer, report, keep=options.duplicates == "keep")
    added: list[dict] = []  # this run's rows
    encodings: dict[str, tuple] = {}  # case id -> how each of its mask files was read
    with writer, tqdm(total=total, desc=report.converter, unit="img", disable=not options.progress) as bar:
        dups.load_existing()
        rows: dict[str, dict] = {}
        # case ids become file names: two that differ only in letter case are one file on macOS / Windows
        ids = UniqueNames(report.source, "case id (ids that differ only in letter case are one file name on "
                                         "macOS and Windows)")

        def work() -> Iterator[tuple[Case, str]]:
            """Cases to convert, with their split; skips and normal images handled here, in the main process."""
            for item in cases:
                if isinstance(item, Skipped):
                    report.skip(item.case, item.reason)
                    bar.update(1)
                    continue
                if not item.lesion and options.normal == "exclude":
                    report.skip(item.case_id, "normal image (no lesion) excluded; --normal include keeps it")
                    bar.update(1)
                    continue
                split = item.split if options.split == "official" else options.split
                if split is None:
                    raise NnunetMtlError(f"case {item.case_id}: --as official but the converter gave no split")
                ids.add(item.case_id, item.source or item.case_id, f"case id {item.case_id.casefold()!r}")
                # validated before a worker writes a file named after it
                rows[item.case_id] = writer.check_case(
                    item.case_id, split=split, class_name=item.class_name, patient_id=item.patient_id,
                    spacing_mm=item.spacing_mm, **item.clinical)
                yield item, split

        # closing(): the workers are stopped before the writer removes its temporary folder on an error
        from nnunet_mtl.resources import capped
        processes, capping = capped(options.num_processes, "-j", total, what="images")
        if capping:
            report.note(capping)
        with closing(_ordered_results(work(), loader, writer.tmp, processes, chunksize,
                                      options.resize)) as results:
            for (case, split), result in results:
                bar.update(1)
                row = rows.pop(case.case_id)
                if isinstance(result, str):
                    report.skip(case.case_id, result)
                elif dups.admit(case, split, result):
                    encodings[case.case_id] = result.encodings
                    if options.resize is not None:
                        _scale_spacing(row, result.source_shape, result.shape)
                    writer.register_case(row)
                    added.append(row)
        if options.resize is not None:
            report.note(f"every image resized to {options.resize}x{options.resize} (bilinear; masks nearest), "
                        f"spacing scaled with it: masks, Dice and HD95 are at that size")
        dups.merge_patients()
        dups.near_duplicates(options.label_conflicts)
        kept = writer.case_ids
        added = [r for r in added if r["case_id"] in kept]  # minus copies dropped as ambiguous or conflicting later
        for row in added:
            for encoding in encodings[row["case_id"]]:
                report.mask_encodings[encoding] = report.mask_encodings.get(encoding, 0) + 1
        if not added:
            first = report.skipped[0]["reason"] if report.skipped else "the source lists no cases"
            conflicts = (f", {len(report.label_conflicts_dropped)} dropped as label conflicts"
                         if report.label_conflicts_dropped else "")
            raise NnunetMtlError(f"{report.source}: no case could be converted ({len(report.skipped)} skipped"
                                 f"{conflicts}; first: {first})")
        report.summary = writer.summary()
        report.added = summarize_cases([(r["split"], r["class"]) for r in added], writer.class_labels)
        report.seconds = time.perf_counter() - started
        _write_report(writer.tmp / REPORT_FILE, report)
    report.path = writer.path
    return writer.path


def _scale_spacing(row: dict, source_shape: tuple, shape: tuple) -> None:
    """A resized case's pixel size: the published one times the source size over the new size, per axis."""
    for column, before, after in (("spacing_row_mm", source_shape[0], shape[0]),
                                  ("spacing_col_mm", source_shape[1], shape[1])):
        if row.get(column):
            row[column] = repr(float(row[column]) * before / after)


# --- the driver -------------------------------------------------------------------------------------------------
def add_converter(sources, name: str, convert_fn: Callable[..., ConversionReport], *, aliases: Sequence[str] = (),
                  help: str, description: str, source_help: str, default_id: int, default_name: str,
                  default_split: str = "train", passed: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Add ``nnunet_mtl convert NAME SOURCE`` (and its ``aliases``) with :func:`add_common_arguments`; returns the
    parser, for the dataset's own options. Running the command calls ``convert_fn(args.source,
    options_from_args(args), **{opt: args.opt for opt in passed})`` and prints the report."""
    p = sources.add_parser(name, aliases=list(aliases), help=help, description=description)
    p.add_argument("source", type=Path, help=source_help)
    add_common_arguments(p, default_id, default_name, default_split=default_split)

    def run(args) -> int:
        report = convert_fn(args.source, options_from_args(args), **{k: getattr(args, k) for k in passed})
        print(report.format())
        return 0

    p.set_defaults(func=run)
    return p


def convert_source(converter: str, source, cases: Callable[[ConversionReport], Iterable], options: ConvertOptions,
                   *, classes: Sequence[str], description: str, raw_root=None, loader: Callable = load_files,
                   chunksize: int = 4) -> ConversionReport:
    """Convert the dataset at ``source`` into ``nnUNet_raw/DatasetNNN_Name``; returns the report
    (``report.path`` is the dataset folder).

    ``converter`` names it in the report; ``cases(report)`` yields its :class:`Case` / :class:`Skipped` entries
    (listed first for the progress bar's total, a few thousand small records, unless it returns a
    :class:`CaseStream`); ``classes`` are the target classes (+ ``normal`` with ``--normal include``);
    ``loader`` reads a case in the workers (a ``close()`` it has is called at the end); ``chunksize`` cases travel
    to a worker at once (more for small frames). ``raw_root`` None: $nnUNet_raw, resolved before any work so that
    its one-line error comes first."""
    from nnunet_mtl.paths import raw_root as env_raw_root

    root = Path(raw_root) if raw_root is not None else env_raw_root()
    class_labels = class_labels_for(classes, options.normal)
    report = ConversionReport(converter, source)
    listed = cases(report)
    if not isinstance(listed, CaseStream):
        listed = list(listed)
    try:
        convert(listed, options, report, class_labels=class_labels, raw_root=root, description=description,
                loader=loader, chunksize=chunksize)
    finally:
        if hasattr(loader, "close"):
            loader.close()
    return report


def _write_report(path: Path, report: ConversionReport) -> None:
    runs = []
    if path.is_file():  # --add-to-existing: the existing dataset's report was copied along
        try:
            runs = list(json.loads(path.read_text()).get("conversions", []))
        except (json.JSONDecodeError, AttributeError):
            runs = []
    runs.append(report.to_dict())
    path.write_text(json.dumps({"conversions": runs}, indent=1) + "\n")


class _Duplicates:
    """Exact-duplicate policy and near-duplicate listing (see the module docstring), in the main process."""

    def __init__(self, writer, report: ConversionReport, keep: bool = False):
        self.writer, self.report, self.keep = writer, report, keep
        self.first: dict[str, dict] = {}  # digest -> {"case_id", "split", "class", "existing"}
        self.groups: dict[str, dict] = {}  # digest -> report entry
        self.ambiguous: set[str] = set()
        self.kept: dict[str, tuple[str, int]] = {}  # case_id -> (patient, dhash)
        self.existing: set[str] = set()  # cases of the dataset before this conversion (--add-to-existing)
        # patients of this source that share an identical image: one person under two ids (BUS-UCLM files
        # CHCO_000-003 again as CHVI_005, 008, 009, 013), merged by merge_patients()
        self.same_patient: dict[str, str] = {}  # patient -> the patient it is merged into (union-find parent)
        self.patient_order: dict[str, int] = {}  # patient -> when it was first seen: the earliest names a group
        self.evidence: list[tuple[str, str, str, str]] = []  # (first case, its patient, copy, its patient)

    def load_existing(self) -> None:
        """Hashes of the cases already in the dataset (``--add-to-existing``): a copy of them is not added."""
        from PIL import Image

        from dataset_conversion.writer import case_file_paths

        for row in self.writer.rows:
            with Image.open(case_file_paths(self.writer.tmp, row["case_id"], row["split"])[0]) as im:
                grey = np.asarray(im.convert("L"))
            # the first of identical copies already there (kept with --duplicates keep) names them
            self.first.setdefault(pixel_digest(grey), {"case_id": row["case_id"], "split": row["split"],
                                                       "class": row["class"], "existing": True})
            self.kept[row["case_id"]] = (row["patient_id"], difference_hash(grey))
            self.existing.add(row["case_id"])

    def admit(self, case: Case, split: str, done: _Done) -> bool:
        """True: register the case. False: it was a duplicate; its files (and maybe the first copy's) are gone."""
        self.patient_order.setdefault(case.patient_id, len(self.patient_order))
        first = self.first.get(done.digest)
        if first is None:
            self.first[done.digest] = {"case_id": case.case_id, "split": split, "class": case.class_name,
                                       "existing": False, "patient": case.patient_id}
            self.kept[case.case_id] = (case.patient_id, done.dhash)
            return True
        group = self.groups.get(done.digest)
        if group is None:
            group = self.groups[done.digest] = {"cases": [first["case_id"]], "classes": [first["class"]]}
            self.report.duplicates.append(group)
        group["cases"].append(case.case_id)
        group["classes"].append(case.class_name)
        if not first["existing"] and first["patient"] != case.patient_id:
            self._union(first["patient"], case.patient_id)
            self.evidence.append((first["case_id"], first["patient"], case.case_id, case.patient_id))
        if self.keep and not first["existing"]:  # --duplicates keep: every copy of the source, as published
            classes = sorted(set(group["classes"]))
            group["action"] = "identical images, all kept (--duplicates keep)" + (
                f"; their classes differ ({', '.join(classes)})" if len(classes) > 1 else "")
            self.kept[case.case_id] = (case.patient_id, done.dhash)
            return True
        self.writer.remove_case(case.case_id, split)
        if first["existing"]:
            group["action"] = f"already in the dataset as {first['case_id']}; the new copy is skipped"
        elif done.digest in self.ambiguous or first["class"] != case.class_name:
            if done.digest not in self.ambiguous:  # drop the first copy too, once
                self.writer.remove_case(first["case_id"], first["split"])
                self.kept.pop(first["case_id"], None)
                self.ambiguous.add(done.digest)
            group["action"] = (f"identical images with different classes ({', '.join(sorted(set(group['classes'])))})"
                               f": all dropped as ambiguous")
        else:
            group["action"] = f"identical images of one class: {first['case_id']} kept, later copies skipped"
        return False

    def _root(self, patient: str) -> str:
        while self.same_patient.get(patient, patient) != patient:
            patient = self.same_patient[patient]
        return patient

    def _union(self, a: str, b: str) -> None:
        a, b = self._root(a), self._root(b)
        if a != b:
            first, later = sorted((a, b), key=self.patient_order.get)
            self.same_patient[later] = first

    def merge_patients(self) -> None:
        """Exact duplicates filed under two patient ids are one person: every kept case of the later-seen patient
        gets the earlier one's id (a patient-grouped split then keeps them in one fold), and the report says so.
        Only merges that change a kept case are reported (a copy dropped with its only image changes nothing)."""
        groups: dict[str, list[str]] = {}
        for patient in self.same_patient:
            groups.setdefault(self._root(patient), []).append(patient)
        for into, merged in sorted(groups.items(), key=lambda kv: self.patient_order[kv[0]]):
            moved = [row["case_id"] for row in self.writer.rows
                     if row["patient_id"] in merged and row["case_id"] in self.kept]
            if not moved:
                continue
            for case_id in moved:
                self.writer.set_patient(case_id, into)
                self.kept[case_id] = (into, self.kept[case_id][1])
            members = {into, *merged}
            pairs = [f"{a} = {b}" for a, pa, b, pb in self.evidence if pa in members and pb in members]
            self.report.patients_merged.append({"patients": sorted(members, key=self.patient_order.get),
                                                "into": into, "identical_images": pairs, "cases_moved": moved})

    def _scan(self, rows: dict[str, dict]) -> tuple[list[str], PairScan]:
        ids = list(self.kept)
        return ids, scan_near_duplicates([self.kept[c][1] for c in ids], [self.kept[c][0] for c in ids],
                                         [rows[c]["class"] for c in ids])

    def near_duplicates(self, label_conflicts: str = "keep") -> None:
        """List the near-duplicates of different patients and, among them, the label conflicts (classes differ);
        with ``label_conflicts`` "drop", drop every case of this conversion in a conflict first, so that the
        near-duplicates listed are those of the dataset written."""
        rows = {row["case_id"]: row for row in self.writer.rows}
        ids, scan = self._scan(rows)
        self.report.label_conflicts_policy = label_conflicts
        self.report.label_conflicts_total = scan.conflicts_total
        self.report.label_conflicts_by_distance = scan.conflicts_by_distance
        # closest first: a pair at 0 bits (the same scan, as in BUSI) before look-alikes of one scanner's layout
        self.report.label_conflicts = [{"a": ids[i], "b": ids[j], "distance": d,
                                        "classes": [rows[ids[i]]["class"], rows[ids[j]]["class"]]}
                                       for i, j, d in sorted(scan.conflicts, key=lambda pair: pair[2])]
        if label_conflicts == "drop" and scan.conflicts_total:
            spared = 0
            for index in np.flatnonzero(scan.in_conflict).tolist():
                case_id = ids[index]
                if case_id in self.existing:  # adding to a dataset never changes the cases already there
                    spared += 1
                    continue
                self.writer.remove_case(case_id, rows[case_id]["split"])
                del self.kept[case_id]
                self.report.label_conflicts_dropped.append(case_id)
            if spared:
                self.report.note(f"{spared} case(s) already in the dataset are in a label conflict: kept, as "
                                 f"--add-to-existing never changes them (only cases of this conversion are dropped)")
            ids, scan = self._scan(rows)
        self.report.near_duplicates_total = scan.total
        self.report.near_duplicates = [{"a": ids[i], "b": ids[j], "distance": d} for i, j, d in scan.pairs]
