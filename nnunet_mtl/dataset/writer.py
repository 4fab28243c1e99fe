"""The one writer that produces a raw dataset following the nnunet_mtl contract: every converter
(``dataset_conversion``), ``nnunet_mtl holdout`` and ``nnunet_mtl drop-masks`` write through it.

A converter only decides *what* a case is (image, mask, class, patient, clinical values); this writer decides
*how* it is stored: nnU-Net's 2D PNG layout, ``dataset.json`` with ``class_labels``, and ``cases.csv``.
Everything is written into a hidden temporary sibling folder and moved into place only after the finished
folder passes :func:`nnunet_mtl.dataset.contract.load_raw_dataset`, so a crash or Ctrl-C never leaves a
half-written dataset where nnU-Net would find it.

Typical use::

    with RawDatasetWriter(501, "BUSI", {"benign": 0, "malignant": 1, "normal": 2}) as w:
        for ...:
            w.add_case(case_id, image, mask, split="train", class_name="benign", patient_id=pid, age=54)
    print(format_summary(w.summary()), w.path)

Partially annotated datasets: ``add_case(..., mask_kind="box" | "none")`` stores the label map of that kind
(:func:`nnunet_mtl.dataset.contract.label_map_for`: the ignore label 2 where the annotation says nothing), the
``mask`` column appears in cases.csv as soon as one case is not ``full`` (a fully annotated dataset keeps today's
cases.csv byte for byte) and dataset.json declares nnU-Net's ignore label (``PARTIAL_LABELS``) as soon as one
training case is partial, or when the converter asks for it (``partial_labels=True``).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from nnunet_mtl import paths
# NORMAL_CLASS: images without a lesion, their masks are empty (one definition, in the contract)
from nnunet_mtl.dataset.contract import (FULL_LABELS, MASK_COLUMN, MASK_KINDS, NORMAL_CLASS, PARTIAL_LABELS,
                                         REQUIRED_COLUMNS, SPACING_COLUMNS, SPLITS, declares_ignore_label,
                                         label_map_for, load_raw_dataset, read_cases_csv, read_class_labels,
                                         stored_kind)
from nnunet_mtl.errors import ContractError

SPLIT_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
FILE_ENDING = ".png"
# case ids become file names and nnU-Net identifiers; a conservative alphabet keeps them portable (no spaces,
# separators or shell characters). Converters map source names like "benign (12)" onto it.
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# PNG zlib level 1: ~3-5x faster than PIL's default (6) for a few percent larger files; converters are
# benchmarked on images/s and raw folders are small anyway.
PNG_COMPRESS_LEVEL = 1
# ITU-R BT.601 luma weights: the standard RGB -> grey conversion (what PIL's convert("L") uses too).
LUMA_601 = np.array([0.299, 0.587, 0.114])
# dataset.json keys the writer computes itself; ``extra_json`` may add others (a provenance record, another
# channel name) but never these, which the contract and nnU-Net read.
WRITER_JSON_KEYS = ("labels", "numTraining", "numTest", "file_ending", "name", "description", "class_labels")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + SPACING_COLUMNS + (MASK_COLUMN,)


def check_mask_kind(kind, split: str, name: str) -> str:
    """``kind`` if it is a mask kind a case of ``split`` may have; one-line ContractError naming ``name`` otherwise.
    Test cases are always ``full``: they are what the segmentation is evaluated against."""
    if kind not in MASK_KINDS:
        raise ContractError(f"{name}: mask kind {kind!r} is not one of {', '.join(MASK_KINDS)}")
    if split == "test" and kind != "full":
        raise ContractError(f"{name}: a test case with mask kind {kind!r}; expected 'full' (test cases are evaluated "
                            f"against their masks)")
    return kind


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Any-dtype array -> uint8 without changing what the values mean.

    uint8 stays; bool -> 0/255; uint16 -> top 8 bits (the usual 16-bit PNG range); floats in [0, 1] are taken as
    normalised intensities (x255), other floats and ints are clipped to 0..255 (already 8-bit values).
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ContractError("image contains NaN or infinite values; expected finite intensities")
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a, 0, 255).astype(np.uint8)
    raise ContractError(f"image dtype {a.dtype} is not supported; expected an integer, float or bool array")


def to_grey_uint8(array) -> np.ndarray:
    """A 2D uint8 grey image from grey, grey+alpha, RGB or RGBA input (H, W[, C]).

    Colour -> ITU-R 601 luma. Alpha: the image is composited onto black (value * alpha / max), so transparent
    regions (often the area outside the scan in exported images) become 0 like the background of a B-mode image.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return _scale_to_uint8(a)
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise ContractError(f"image of shape {a.shape} is not 2D grey, grey+alpha, RGB or RGBA")
    channels = _scale_to_uint8(a).astype(np.float32)
    colour, alpha = (channels[:, :, :-1], channels[:, :, -1]) if a.shape[2] in (2, 4) else (channels, None)
    grey = colour[:, :, 0] if colour.shape[2] == 1 else colour @ LUMA_601.astype(np.float32)
    if alpha is not None:
        grey = grey * (alpha / 255.0)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


# How a mask file's values were read (counted per file in the conversion report).
MASK_ENCODINGS = {
    "binary": "one lesion value (1-bit, 0/1, 0/255 or one colour)",
    "labels": "a label map (several values below 128): every label is lesion",
    "intensity": "grey levels (e.g. JPEG): lesion where the value is at least half the maximum",
    "empty": "all zero",
}


class MaskEncodingError(ContractError):
    """A mask whose values mix two encodings (a 0/1 lesion with 0/255 pixels): no reading of it is safe."""


def mask_values(array) -> np.ndarray:
    """The 2D value array of a mask: grey as is; RGB -> the brightest channel (a pure red annotation counts fully);
    RGBA / grey+alpha composited onto black first (transparent pixels are background whatever colour they store)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3:
        if a.shape[2] not in (2, 3, 4):
            raise ContractError(f"mask of shape {a.shape} is not 2D, grey+alpha, RGB or RGBA")
        has_alpha = a.shape[2] in (2, 4)
        colour = a[:, :, :-1] if has_alpha else a
        value = colour[:, :, 0]
        for k in range(1, colour.shape[2]):  # channel max pairwise, in the input dtype: ~10x faster than max(axis=2)
            value = np.maximum(value, colour[:, :, k])
        if has_alpha:
            alpha = a[:, :, -1].astype(np.float64)
            alpha_max = alpha.max()
            return value * (alpha / alpha_max) if alpha_max > 0 else np.zeros(a.shape[:2])
        return value
    if a.ndim != 2:
        raise ContractError(f"mask of shape {a.shape} is not a 2D array")
    return a


def read_mask(array, name: str = "mask") -> tuple[np.ndarray, str]:
    """(2D uint8 0/1 lesion mask, encoding) from any common mask encoding, decided per file from its values
    (:data:`MASK_ENCODINGS`):

    - ``binary``: bool, or one nonzero value (0/1, 0/255): that value is lesion.
    - ``labels``: integer values all below 128 (a label map): any nonzero label is lesion.
    - ``intensity``: grey levels up to 128 or more (JPEG-compressed 0/255 masks): lesion where the value is at
      least half the maximum, which removes JPEG ringing around edges and near-zero background noise.
    - A mask that would lose its lesion to that threshold is refused (:class:`MaskEncodingError` naming ``name``):
      when the most frequent value below 128 covers at least as many pixels as the values above half the maximum,
      the file mixes a 0/1 lesion with 0/255 pixels (one stray 255 in a 0/1 mask would otherwise turn a
      150-pixel lesion into 1 pixel); JPEG ringing never dominates the lesion it rings around.
    """
    a = mask_values(array)
    if a.dtype == bool:
        return a.astype(np.uint8), "binary" if a.any() else "empty"
    if a.size == 0:
        return np.zeros(a.shape, np.uint8), "empty"
    peak = float(a.max())
    if peak <= 0:
        return np.zeros(a.shape, dtype=np.uint8), "empty"
    integral = np.issubdtype(a.dtype, np.integer) or np.array_equal(a, np.round(a))
    if not integral:
        return (a >= peak / 2.0).astype(np.uint8), "intensity"
    nonzero = a > 0
    if peak < 128:  # a label map: every nonzero label is lesion
        single = bool(np.all(a[nonzero] == peak))
        return nonzero.astype(np.uint8), "binary" if single else "labels"
    lesion = a >= peak / 2.0
    low = a[nonzero & ~lesion]
    if low.size:
        values, counts = np.unique(low[low < 128], return_counts=True)
        if counts.size and counts.max() >= np.count_nonzero(lesion):
            value = values[np.argmax(counts)].item()
            raise MaskEncodingError(
                f"{name} mixes mask encodings: {counts.max()} px of value {value:g} (a 0/1-style lesion) and "
                f"{np.count_nonzero(lesion)} px of {peak:g} or at least half of it (0/255-style); expected one "
                f"encoding per mask (reading it at half the maximum would shrink the lesion to those "
                f"{np.count_nonzero(lesion)} px)")
        return lesion.astype(np.uint8), "intensity"
    return lesion.astype(np.uint8), "binary"


def binarize_mask(array, name: str = "mask") -> np.ndarray:
    """A 2D uint8 0/1 lesion mask from any common mask encoding (:func:`read_mask` without the encoding)."""
    return read_mask(array, name)[0]


def _cell(value) -> str:
    """A clinical value as cases.csv text; done here so pandas never turns a column of ints with gaps into
    floats ("50" -> "50.0") or ids into numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)


def case_file_paths(folder: Path, case_id: str, split: str) -> tuple[Path, Path]:
    """(image file, label file) of a case inside a dataset folder (or a writer's temporary folder)."""
    image_dir, label_dir = SPLIT_FOLDERS[split]
    return (Path(folder) / image_dir / f"{case_id}_0000{FILE_ENDING}",
            Path(folder) / label_dir / f"{case_id}{FILE_ENDING}")


def image_and_mask(image, label, *, name: str = "case", mask_names=()) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(2D uint8 grey image, 2D uint8 0/1 mask, the encoding of each mask file) as stored. ``label``: one mask,
    a list of masks of the image (merged: a pixel is lesion when any mask says so), or None (all zero, no
    encoding). ``name`` and ``mask_names`` go into errors."""
    grey = to_grey_uint8(image)
    if label is None:
        return grey, np.zeros(grey.shape, np.uint8), ()
    masks = list(label) if isinstance(label, (list, tuple)) else [label]
    names = list(mask_names) if len(mask_names) == len(masks) else (
        [name] if len(masks) == 1 else [f"{name}'s mask {i + 1}" for i in range(len(masks))])
    merged = np.zeros(grey.shape, np.uint8)
    encodings = []
    for mask, mask_name in zip(masks, names):
        binary, encoding = read_mask(mask, mask_name)
        if binary.shape != grey.shape:
            raise ContractError(f"{mask_name}: image shape {grey.shape} and label shape {binary.shape} differ; "
                                f"expected the same height and width")
        merged |= binary
        encodings.append(encoding)
    return grey, merged, tuple(encodings)


def write_case_files(folder: Path, case_id: str, split: str, grey: np.ndarray, mask: np.ndarray,
                     mask_kind: str = "full") -> str:
    """Write a case's PNGs (from :func:`image_and_mask`) into ``folder``; safe to call from a worker process.

    The label file is the 0/1 ``mask`` stored as ``mask_kind`` (:func:`~nnunet_mtl.dataset.contract.label_map_for`:
    all 2 for ``none``, 2 inside the lesion's bounding box for ``box``); returns the kind its cases.csv row must
    say (:func:`~nnunet_mtl.dataset.contract.stored_kind`: a box around no lesion is a full, empty mask)."""
    check_mask_kind(mask_kind, split, f"case {case_id}")  # before any file is written
    _write_png(case_file_paths(folder, case_id, split)[0], grey)
    return write_label_file(folder, case_id, split, mask, mask_kind)


def write_label_file(folder: Path, case_id: str, split: str, mask: np.ndarray, mask_kind: str = "full") -> str:
    """Write only a case's label file: the 0/1 ``mask`` stored as ``mask_kind``; returns the kind for cases.csv
    (see :func:`write_case_files`; ``nnunet_mtl drop-masks`` copies the images byte for byte and writes only the
    labels it hides)."""
    check_mask_kind(mask_kind, split, f"case {case_id}")
    _write_png(case_file_paths(folder, case_id, split)[1], label_map_for(mask, mask_kind))
    return stored_kind(mask, mask_kind)


def summarize_cases(split_and_class, class_labels: dict[str, int]) -> dict:
    """Counts per class and split from (split, class) pairs, e.g. ``zip(cases["split"], cases["class"])``."""
    classes = sorted(class_labels, key=class_labels.get)
    out = {"classes": classes}
    for split in SPLITS:
        out[split] = {c: 0 for c in classes}
    for split, class_name in split_and_class:
        out[split][class_name] += 1
    return out


def format_summary(summary: dict) -> str:
    """A small text table of :meth:`RawDatasetWriter.summary` (classes x splits)."""
    classes = list(summary["classes"])
    header = ["class"] + list(SPLITS) + ["total"]
    rows = [[c] + [str(summary[s][c]) for s in SPLITS] + [str(sum(summary[s][c] for s in SPLITS))] for c in classes]
    rows.append(["total"] + [str(sum(summary[s].values())) for s in SPLITS]
                + [str(sum(sum(summary[s].values()) for s in SPLITS))])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731
        v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


class RawDatasetWriter:
    """Write ``raw_root/DatasetNNN_Name`` atomically; see the module docstring."""

    def __init__(self, dataset_id: int, name: str, class_labels: dict[str, int], *, raw_root: Path | None = None,
                 description: str = "", overwrite: bool = False, add_to_existing: bool = False,
                 partial_labels: bool = False, extra_json: dict | None = None):
        """``partial_labels``: declare nnU-Net's ignore label even if every case ends up ``full`` (a dataset meant
        to be partial, so that the datasets of one experiment share their labels); ``extra_json``: further
        dataset.json keys after the writer's own (e.g. a provenance record), never one of
        :data:`WRITER_JSON_KEYS`."""
        extra_json = dict(extra_json or {})
        clash = [k for k in extra_json if k in WRITER_JSON_KEYS]
        if clash:
            raise ContractError(f"extra dataset.json key {clash[0]!r} is written by the writer itself; expected other "
                                f"keys than {', '.join(WRITER_JSON_KEYS)}")
        self.partial_labels = bool(partial_labels)
        self.extra_json = extra_json
        self.dataset_id = int(dataset_id)
        self.name = name
        self.folder_name = paths.dataset_folder_name(dataset_id, name)
        self.class_labels = read_class_labels({"class_labels": class_labels}, source="the converter's class_labels")
        self.description = description
        self.root = Path(raw_root) if raw_root is not None else paths.raw_root()
        from nnunet_mtl.outputs import check_output_folder
        check_output_folder(self.root, "nnUNet_raw folder")
        self.path = self.root / self.folder_name
        if self.path.exists() and not self.path.is_dir():
            raise ContractError(f"{self.path} is a file; expected nothing there, or the dataset folder (move the "
                                f"file away: --overwrite replaces datasets, never other files)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.existing = sorted(p for p in self.root.glob(f"Dataset{self.dataset_id:03d}_*") if p.is_dir())
        if self.existing and not (overwrite or add_to_existing):
            raise ContractError(
                f"{self.existing[0]} already exists (dataset id {self.dataset_id}); pass --overwrite "
                f"(overwrite=True) to replace it")
        if add_to_existing and len(self.existing) != 1:
            raise ContractError(
                f"add_to_existing needs exactly one folder Dataset{self.dataset_id:03d}_* in {self.root}, "
                f"found {len(self.existing)}")
        if add_to_existing:  # cases go into the existing folder, whatever name this converter would give it
            self.path = self.existing[0]
            self.folder_name = self.path.name
            self.name = self.folder_name.split("_", 1)[1]
        self.tmp = self.root / f".{self.folder_name}.partial-{os.getpid()}"
        if self.tmp.exists():  # left over by a killed run of this same process id
            shutil.rmtree(self.tmp)
        self._rows: dict[str, dict] = {}  # case id -> cases.csv row, in the order added
        self._folded: dict[str, str] = {}  # case id without letter case -> the case id
        self._clinical_columns: list[str] = []
        self._done = False
        self._summary: dict | None = None
        if add_to_existing:
            self._start_from_existing(self.existing[0])
        else:
            for split in SPLITS:
                for folder in SPLIT_FOLDERS[split]:
                    (self.tmp / folder).mkdir(parents=True)

    def _start_from_existing(self, folder: Path) -> None:
        old = load_raw_dataset(folder, check_files=True)
        if old.class_labels != self.class_labels:
            raise ContractError(f"{folder / 'dataset.json'} has class_labels {old.class_labels}; the converter "
                                f"adds cases with {self.class_labels}; expected the same classes")
        self.description = self.description or old.dataset_json.get("description", "")
        self.name = str(old.dataset_json.get("name") or self.name)
        # a partial dataset stays partial, and its other keys (a provenance record) stay; the converter's win
        self.partial_labels = self.partial_labels or declares_ignore_label(old.dataset_json)
        self.extra_json = {**{k: v for k, v in old.dataset_json.items() if k not in WRITER_JSON_KEYS},
                           **self.extra_json}
        shutil.copytree(folder, self.tmp)
        for split in SPLITS:
            for sub in SPLIT_FOLDERS[split]:
                (self.tmp / sub).mkdir(exist_ok=True)
        cases = read_cases_csv(folder / "cases.csv", self.class_labels)
        for col in cases.columns:
            if col not in CONTRACT_COLUMNS:
                self._clinical_columns.append(col)
        for row in cases.to_dict("records"):
            for col in SPACING_COLUMNS:  # back to text: the csv is rewritten as it was read
                if col in row:
                    row[col] = "" if pd.isna(row[col]) else repr(float(row[col]))
            self._rows[row["case_id"]] = row
            self._folded[row["case_id"].casefold()] = row["case_id"]

    # --- adding cases ---------------------------------------------------------------------------------------
    def add_case(self, case_id: str, image: np.ndarray, label: np.ndarray | None, *, split: str, class_name: str,
                 patient_id: str, spacing_mm: tuple[float, float] | None = None, mask_kind: str = "full",
                 **clinical) -> None:
        """Write one case (image, binarized mask or all-zero for ``None``) and remember its cases.csv row.

        ``mask_kind``: how the mask is annotated (``full``; ``box``: ``label`` is the lesion whose bounding box is
        known, stored as the ignore label inside the box; ``none``: no mask, ``label`` may be None, stored all
        ignore). A ``box`` around an image without a lesion is stored as ``full``: "no box" is complete
        information."""
        row = self.check_case(case_id, split=split, class_name=class_name, patient_id=patient_id,
                              spacing_mm=spacing_mm, mask_kind=mask_kind, **clinical)
        grey, mask, _ = image_and_mask(image, label, name=f"case {row['case_id']}")
        kind = write_case_files(self.tmp, row["case_id"], split, grey, mask, mask_kind)
        if kind == "full":
            row.pop(MASK_COLUMN, None)
        else:
            row[MASK_COLUMN] = kind
        self.register_case(row)

    def check_case(self, case_id: str, *, split: str, class_name: str, patient_id: str,
                   spacing_mm: tuple[float, float] | None = None, mask_kind: str = "full", **clinical) -> dict:
        """Validate one case's cases.csv row without writing anything; returns the row for :meth:`register_case`.

        Parallel converters call this in the main process *before* a worker writes the case's files with
        :func:`write_case_files` into :attr:`tmp` (so a bad case id can never name a path outside it), then
        :meth:`register_case` once the files exist.
        """
        if self._done:
            raise ContractError(f"{self.folder_name}: case {case_id!r} added after finish(); the dataset is closed")
        case_id = str(case_id)
        if not CASE_ID_PATTERN.fullmatch(case_id):
            raise ContractError(f"case id {case_id!r} is not usable as a file name; expected letters, digits, "
                                f"'_', '-' or '.' (not starting with '_', '-' or '.')")
        if case_id in self._rows:
            raise ContractError(f"case id {case_id!r} is added twice to {self.folder_name}; expected unique ids")
        folded = self._folded.get(case_id.casefold())
        if folded is not None and folded != case_id:
            raise ContractError(f"case id {case_id!r} differs from {folded!r} of {self.folder_name} only in letter "
                                f"case; expected ids that stay distinct on case-insensitive file systems")
        if split not in SPLIT_FOLDERS:
            raise ContractError(f"case {case_id}: split {split!r} is not one of {list(SPLITS)}")
        if class_name not in self.class_labels:
            raise ContractError(f"case {case_id}: class {class_name!r} is not in class_labels "
                                f"{sorted(self.class_labels, key=self.class_labels.get)}")
        patient_id = "" if patient_id is None else str(patient_id)
        if not patient_id.strip():
            raise ContractError(f"case {case_id}: empty patient_id; expected the patient (or clip) it comes from")
        for key in clinical:
            if key in CONTRACT_COLUMNS:
                raise ContractError(f"case {case_id}: clinical column {key!r} clashes with a contract column")
        check_mask_kind(mask_kind, split, f"case {case_id}")
        spacing = ("", "")
        if spacing_mm is not None:
            if len(spacing_mm) != 2 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing_mm):
                raise ContractError(f"case {case_id}: spacing_mm {spacing_mm!r} is not two positive numbers "
                                    f"(row, col) in mm")
            spacing = tuple(repr(float(s)) for s in spacing_mm)
        row = {"case_id": case_id, "split": split, "class": class_name, "patient_id": patient_id,
               "spacing_row_mm": spacing[0], "spacing_col_mm": spacing[1]}
        if mask_kind != "full":  # full rows carry no mask key: a fully annotated dataset's rows stay as they were
            row[MASK_COLUMN] = mask_kind
        row.update({key: _cell(value) for key, value in clinical.items()})
        return row

    def register_case(self, row: dict) -> None:
        """Add a row from :meth:`check_case` whose files are already in :attr:`tmp` (written by a worker)."""
        case_id, split = row["case_id"], row["split"]
        if case_id in self._rows:
            raise ContractError(f"case id {case_id!r} is added twice to {self.folder_name}; expected unique ids")
        for path in case_file_paths(self.tmp, case_id, split):
            if not path.is_file():
                raise ContractError(f"case {case_id}: {path} was not written; expected the case's image and label "
                                    f"files before its row is registered")
        if MASK_COLUMN in row:
            check_mask_kind(row[MASK_COLUMN], split, f"case {case_id}")
        for key in row:
            if key not in CONTRACT_COLUMNS and key not in self._clinical_columns:
                self._clinical_columns.append(key)
        self._rows[case_id] = row
        self._folded[case_id.casefold()] = case_id

    def remove_case(self, case_id: str, split: str) -> None:
        """Delete a case's files from :attr:`tmp` and its row, if any (e.g. a duplicate found after it was written);
        O(1): the rows are kept by case id."""
        for path in case_file_paths(self.tmp, case_id, split):
            path.unlink(missing_ok=True)
        if self._rows.pop(case_id, None) is not None:
            self._folded.pop(case_id.casefold(), None)

    def set_patient(self, case_id: str, patient_id: str) -> None:
        """Change a registered case's patient_id (e.g. two ids found to be one person)."""
        if not str(patient_id).strip():
            raise ContractError(f"case {case_id}: empty patient_id; expected the patient (or clip) it comes from")
        self._rows[case_id]["patient_id"] = str(patient_id)

    @property
    def rows(self) -> list[dict]:
        """The cases.csv rows so far (a copy), in order; with add_to_existing the existing ones first."""
        return [dict(r) for r in self._rows.values()]

    @property
    def case_ids(self) -> frozenset[str]:
        return frozenset(self._rows)

    # --- finishing ------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """``{"classes": [...], "train": {class: n}, "test": {class: n}}`` over all cases added so far."""
        return summarize_cases([(r["split"], r["class"]) for r in self._rows.values()], self.class_labels)

    @property
    def is_partial(self) -> bool:
        """Whether dataset.json will declare the ignore label: asked for, or a training case is not ``full``."""
        return self.partial_labels or any(r.get(MASK_COLUMN, "full") != "full" for r in self._rows.values())

    def finish(self) -> Path:
        """Write dataset.json + cases.csv, validate, move into place; returns the dataset folder."""
        if self._done:
            return self.path
        try:
            if not self._rows:
                raise ContractError(f"{self.folder_name}: no cases were added; expected at least one")
            train = [r for r in self._rows.values() if r["split"] == "train"]
            if train and all(r["class"] == NORMAL_CLASS for r in train):
                # every lesion class has a non-empty mask (the converters check it): these masks are all empty
                raise ContractError(f"{self.folder_name}: every one of the {len(train)} training case(s) is a normal "
                                    f"image with an empty mask; nnU-Net's preprocessing cannot plan a lesion from "
                                    f"that (it crashes); expected lesion cases in the training set (or --as test)")
            # only a full mask shows nnU-Net a lesion pixel: box and none cases are no evidence of lesions
            if train and not any(r["class"] != NORMAL_CLASS and r.get(MASK_COLUMN, "full") == "full" for r in train):
                raise ContractError(f"{self.folder_name}: none of the {len(train)} training case(s) is a lesion with a "
                                    f"full mask (the lesion cases are all box / none); nnU-Net's preprocessing cannot "
                                    f"plan a lesion from that; expected at least one fully annotated lesion")
            counts = {s: sum(r["split"] == s for r in self._rows.values()) for s in SPLITS}
            partial = self.is_partial
            dataset_json = {
                "channel_names": {"0": "ultrasound"},
                "labels": dict(PARTIAL_LABELS if partial else FULL_LABELS),
                "numTraining": counts["train"],
                "numTest": counts["test"],
                "file_ending": FILE_ENDING,
                "name": self.name,
                "description": self.description,
                "class_labels": self.class_labels,
                **self.extra_json,
            }
            (self.tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
            # the mask column only in a partial dataset: a fully annotated one keeps today's cases.csv byte for byte
            mask_column = [MASK_COLUMN] if partial else []
            rows = [{**r, MASK_COLUMN: r.get(MASK_COLUMN) or "full"} if mask_column else r for r in self._rows.values()]
            columns = list(REQUIRED_COLUMNS) + list(SPACING_COLUMNS) + mask_column + self._clinical_columns
            table = pd.DataFrame(rows, columns=columns).fillna("")
            table.to_csv(self.tmp / "cases.csv", index=False)
            load_raw_dataset(self.tmp, check_files=True)  # never publish a folder our own reader rejects
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def _move_into_place(self) -> None:
        # rename old folders aside first (os.replace cannot replace a non-empty directory), then the new one
        # in; a failure in between puts the old ones back.
        aside = []
        try:
            for i, old in enumerate(self.existing):
                if old.exists():
                    target = self.root / f".{old.name}.old-{os.getpid()}-{i}"
                    os.replace(old, target)
                    aside.append((old, target))
            os.replace(self.tmp, self.path)
        except BaseException:
            for old, target in aside:
                if target.exists() and not old.exists():
                    os.replace(target, old)
            raise
        for _, target in aside:
            shutil.rmtree(target, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far; the target folder is not touched."""
        self._done = True
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "RawDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
            return False
        self.finish()
        return False
