"""The raw dataset contract: what every converter writes and every trainer / predictor reads.

``nnUNet_raw/DatasetNNN_Name/``: nnU-Net's 2D PNG layout (``imagesTr/{case}_0000.png``, ``labelsTr/{case}.png``,
``imagesTs``, ``labelsTs``), ``dataset.json`` with nnU-Net's keys plus ``class_labels`` ({name: index 0..C-1})
and ``numTest``, and ``cases.csv`` with one row per case: ``case_id, split, class, patient_id``, optionally
``spacing_row_mm, spacing_col_mm`` and ``mask`` (how the case's mask is annotated: ``full``, ``box`` or ``none``; a
missing column or an empty value means ``full``; test cases must be ``full``), then dataset-specific clinical
columns.

Everything here raises :class:`ContractError` with a one-line message naming the file and the bad value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_mtl.errors import ContractError

REQUIRED_COLUMNS = ("case_id", "split", "class", "patient_id")
SPACING_COLUMNS = ("spacing_row_mm", "spacing_col_mm")
NORMAL_CLASS = "normal"  # the class of lesion-free images (converters' --normal include): their masks are empty
MASK_COLUMN = "mask"
MASK_KINDS = ("full", "box", "none")  # a drawn outline (or an empty mask: no lesion); a bounding box; no mask
# Label values of the masks (labelsTr / labelsTs). A partially annotated dataset declares nnU-Net's ignore label
# ("labels": {"background": 0, "lesion": 1, "ignore": 2}; nnU-Net requires it to be the highest label) and stores
#  - mask "full": 0 / 1 (an all-zero map says "no lesion", never "not annotated"); never the ignore label;
#  - mask "none": the ignore label everywhere (nothing is known about any pixel);
#  - mask "box": 0 outside the lesion's bounding box (known background), the ignore label inside it (the box says
#    the lesion is somewhere in there, not which pixels): the decoder learns only from outside the box, while a
#    method that supervises a coarse lesion map (Fan et al.'s P) may take the filled box as its target.
# Test cases are always "full". A dataset without box / none cases may omit the ignore label.
BACKGROUND_LABEL, LESION_LABEL, IGNORE_LABEL = 0, 1, 2
FULL_LABELS = {"background": BACKGROUND_LABEL, "lesion": LESION_LABEL}
PARTIAL_LABELS = {**FULL_LABELS, "ignore": IGNORE_LABEL}
SPLITS = ("train", "test")
SPLIT_IMAGE_FOLDERS = {"train": "imagesTr", "test": "imagesTs"}
SPLIT_LABEL_FOLDERS = {"train": "labelsTr", "test": "labelsTs"}
CHANNEL_SUFFIX = "_0000"  # single-channel contract: the only channel file of a case


def read_class_labels(dataset_json: dict, source: str) -> dict[str, int]:
    """``class_labels`` of a dataset.json, checked: a dict of names to the indices 0..C-1, each used once."""
    if not isinstance(dataset_json, dict) or "class_labels" not in dataset_json:
        raise ContractError(f"{source} has no 'class_labels'; expected e.g. "
                            f"\"class_labels\": {{\"benign\": 0, \"malignant\": 1}}")
    labels = dataset_json["class_labels"]
    if not isinstance(labels, dict) or not labels:
        raise ContractError(f"{source}: 'class_labels' is {labels!r}; expected a non-empty object "
                            f"{{class name: index}}")
    for name, index in labels.items():
        # bool is an int subclass; True/False as a class index is certainly a mistake
        if not isinstance(name, str) or not name.strip() or not isinstance(index, int) or isinstance(index, bool):
            raise ContractError(f"{source}: class_labels entry {name!r}: {index!r} is not a name with an integer "
                                f"index")
    indices = sorted(labels.values())
    if indices != list(range(len(labels))):
        raise ContractError(f"{source}: class_labels indices {indices} are not 0..{len(labels) - 1}, each once; "
                            f"the classifier's outputs are numbered by them")
    return dict(labels)


def read_cases_csv(path, class_labels: dict[str, int] | None = None) -> pd.DataFrame:
    """cases.csv as a DataFrame of strings (spacing columns as float, NaN when empty), validated.

    ``class_labels`` None skips only the check that every class is one of them (for readers that do not know them).
    """
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path} does not exist; expected cases.csv with columns {', '.join(REQUIRED_COLUMNS)}")
    try:
        # dtype=str + keep_default_na=False: ids like "000123" and values like "NA" stay exactly as written
        cases = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ContractError(f"{path} is not a readable CSV file "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    missing = [c for c in REQUIRED_COLUMNS if c not in cases.columns]
    if missing:
        raise ContractError(f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)} "
                            f"(found {', '.join(map(str, cases.columns))})")
    for col in REQUIRED_COLUMNS:
        cases[col] = cases[col].str.strip()
    line = lambda i: i + 2  # noqa: E731  (file line: header is line 1)
    for col in ("case_id", "patient_id", "class", "split"):
        empty = cases.index[cases[col] == ""]
        if len(empty):
            i = empty[0]
            raise ContractError(f"{path} line {line(i)} (case {cases.at[i, 'case_id'] or '?'}): empty {col}")
    dup = cases["case_id"].duplicated(keep="first")
    if dup.any():
        i = cases.index[dup][0]
        raise ContractError(f"{path} line {line(i)}: duplicate case_id {cases.at[i, 'case_id']!r}; expected each "
                            f"case once")
    bad = ~cases["split"].isin(SPLITS)
    if bad.any():
        i = cases.index[bad][0]
        raise ContractError(f"{path} line {line(i)} (case {cases.at[i, 'case_id']}): split "
                            f"{cases.at[i, 'split']!r} is not one of {', '.join(SPLITS)}")
    if class_labels is not None:
        bad = ~cases["class"].isin(list(class_labels))
        if bad.any():
            i = cases.index[bad][0]
            raise ContractError(f"{path} line {line(i)} (case {cases.at[i, 'case_id']}): class "
                                f"{cases.at[i, 'class']!r} is not in class_labels "
                                f"{sorted(class_labels, key=class_labels.get)}")
    for col in SPACING_COLUMNS:
        if col not in cases.columns:
            continue
        text = cases[col].str.strip()
        values = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = (text != "") & ~(values > 0) | np.isinf(values)  # unparsable, zero, negative or infinite
        if bad.any():
            i = cases.index[bad][0]
            raise ContractError(f"{path} line {line(i)} (case {cases.at[i, 'case_id']}): {col} {text[i]!r} is not "
                                f"a positive number of mm (leave it empty when unknown)")
        cases[col] = values.astype(float)
    if MASK_COLUMN in cases.columns:
        cases[MASK_COLUMN] = cases[MASK_COLUMN].str.strip().replace("", "full")
        bad = ~cases[MASK_COLUMN].isin(MASK_KINDS)
        if bad.any():
            i = cases.index[bad][0]
            raise ContractError(f"{path} line {line(i)} (case {cases.at[i, 'case_id']}): mask "
                                f"{cases.at[i, MASK_COLUMN]!r} is not one of {', '.join(MASK_KINDS)}")
        partial = (cases["split"] == "test") & (cases[MASK_COLUMN] != "full")
        if partial.any():
            i = cases.index[partial][0]
            raise ContractError(f"{path} line {line(i)} (case {cases.at[i, 'case_id']}): a test case has mask "
                                f"{cases.at[i, MASK_COLUMN]!r}; expected 'full' (test cases are evaluated against "
                                f"their masks)")
    return cases


def class_index_by_case(cases: pd.DataFrame, class_labels) -> dict[str, int]:
    """{case_id: class index} for the rows of ``cases`` (as read by :func:`read_cases_csv`)."""
    try:
        return {c: int(class_labels[k]) for c, k in zip(cases["case_id"], cases["class"])}
    except KeyError as e:
        raise ContractError(f"class {e.args[0]!r} of cases.csv is not in class_labels {dict(class_labels)}")


@dataclass
class RawDataset:
    folder: Path
    dataset_json: dict
    class_labels: dict[str, int]
    cases: pd.DataFrame

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by index (index i -> class_names[i])."""
        return sorted(self.class_labels, key=self.class_labels.get)

    def cases_in_split(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise ContractError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return self.cases[self.cases["split"] == split].reset_index(drop=True)

    def spacing_mm(self, case_id: str) -> tuple[float, float] | None:
        """(row, col) pixel size in mm, or None when cases.csv does not know it."""
        row = self.cases.loc[self.cases["case_id"] == str(case_id)]
        if row.empty:
            raise ContractError(f"case {case_id!r} is not in {self.folder / 'cases.csv'}")
        if not all(c in row.columns for c in SPACING_COLUMNS):
            return None
        values = [float(row.iloc[0][c]) for c in SPACING_COLUMNS]
        return None if any(np.isnan(v) for v in values) else (values[0], values[1])


def _case_ids_in(folder: Path, suffix: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(suffix)] for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(suffix))


def read_json_object(path, expected: str = "nnU-Net's dataset.json in the raw dataset folder") -> dict:
    """A JSON file holding an object (a dataset.json by default) as a dict; ``expected`` ends the error messages."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path} does not exist; expected {expected}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ContractError(f"{path} is not valid JSON ({e}); expected {expected}")
    if not isinstance(data, dict):
        raise ContractError(f"{path} is not a JSON object; expected {expected}")
    return data


def load_raw_dataset(folder, check_files: bool = True) -> RawDataset:
    """Read and validate ``folder`` (a DatasetNNN_Name); with ``check_files`` also match files and csv rows."""
    folder = Path(folder)
    json_path = folder / "dataset.json"
    dataset_json = read_json_object(json_path)
    class_labels = read_class_labels(dataset_json, source=str(json_path))
    cases = read_cases_csv(folder / "cases.csv", class_labels)
    check_ignore_label(dataset_json, cases, json_path, folder / "cases.csv")
    raw = RawDataset(folder=folder, dataset_json=dataset_json, class_labels=class_labels, cases=cases)
    if check_files:
        _check_files(raw, json_path)
    return raw


def _check_files(raw: RawDataset, json_path: Path) -> None:
    folder, cases = raw.folder, raw.cases
    file_ending = raw.dataset_json.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending:
        raise ContractError(f"{json_path} has no 'file_ending'; expected \".png\"")
    csv = folder / "cases.csv"
    split_of_row = dict(zip(cases["case_id"], cases["split"]))
    for split in SPLITS:
        image_dir = folder / SPLIT_IMAGE_FOLDERS[split]
        if split == "train" and not image_dir.is_dir():
            raise ContractError(f"{image_dir} does not exist; expected the training images there")
        files = _case_ids_in(image_dir, file_ending)
        for name in files:
            if not name.endswith(CHANNEL_SUFFIX):
                raise ContractError(f"{image_dir / (name + file_ending)} is not named <case>{CHANNEL_SUFFIX}"
                                    f"{file_ending}; expected one grey channel per case")
        images = {n[:-len(CHANNEL_SUFFIX)] for n in files}
        for case in sorted(images):
            if case not in split_of_row:
                raise ContractError(f"case without a row: {image_dir.name}/{case}{CHANNEL_SUFFIX}{file_ending} has "
                                    f"no row in {csv}")
            if split_of_row[case] != split:
                raise ContractError(f"case {case} is in {image_dir.name} but {csv} says split "
                                    f"{split_of_row[case]!r}; expected {split!r}")
        rows = cases.loc[cases["split"] == split, "case_id"]
        for case in rows:
            if case not in images:
                raise ContractError(f"row without a case: {csv} lists {case} ({split}) but "
                                    f"{image_dir / (case + CHANNEL_SUFFIX + file_ending)} does not exist")
        label_dir = folder / SPLIT_LABEL_FOLDERS[split]
        labels = set(_case_ids_in(label_dir, file_ending))
        # labelsTr is required for every training case (nnU-Net trains on it); labelsTs, when present, must
        # cover the test cases too: the evaluation needs them.
        if split == "train" or label_dir.is_dir():
            for case in sorted(images - labels):
                raise ContractError(f"{label_dir / (case + file_ending)} does not exist; expected a label for "
                                    f"{split} case {case}")
        for case in sorted(labels - images):
            raise ContractError(f"{label_dir / (case + file_ending)} has no image "
                                f"{image_dir.name}/{case}{CHANNEL_SUFFIX}{file_ending}")
        if split == "train":
            num = raw.dataset_json.get("numTraining")
            if num != len(images):
                raise ContractError(f"{json_path}: numTraining is {num!r} but {image_dir} has {len(images)} cases")


def declares_ignore_label(dataset_json: dict) -> bool:
    """Whether a dataset.json declares the ignore label (a partially annotated dataset, :data:`PARTIAL_LABELS`)."""
    labels = dataset_json.get("labels") if isinstance(dataset_json, dict) else None
    return isinstance(labels, dict) and labels.get("ignore") == IGNORE_LABEL


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(first row, last row, first column, last column), inclusive, of the nonzero pixels; None when there are none."""
    rows, cols = np.nonzero(np.asarray(mask))
    if rows.size == 0:
        return None
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def label_map_for(mask: np.ndarray, kind: str) -> np.ndarray:
    """The stored label map (uint8) of a 0/1 lesion ``mask`` annotated as ``kind`` (see :data:`IGNORE_LABEL`).
    A box needs a lesion: a lesion-free image annotated by boxes has no box, which is complete information and
    stored as ``full``; ask :func:`stored_kind` for the kind to write into cases.csv."""
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if kind == "full":
        return mask
    if kind == "none":
        return np.full(mask.shape, IGNORE_LABEL, dtype=np.uint8)
    if kind == "box":
        box = bounding_box(mask)
        out = np.zeros(mask.shape, dtype=np.uint8)
        if box is not None:
            r0, r1, c0, c1 = box
            out[r0:r1 + 1, c0:c1 + 1] = IGNORE_LABEL
        return out
    raise ContractError(f"mask kind {kind!r} is not one of {', '.join(MASK_KINDS)}")


def stored_kind(mask: np.ndarray, kind: str) -> str:
    """The cases.csv kind of a 0/1 ``mask`` annotated as ``kind``: a box around nothing is a full (empty) mask."""
    return "full" if kind == "box" and not np.asarray(mask).any() else kind


def kind_of_label_map(label: np.ndarray, name: str = "label map") -> str:
    """The mask kind a stored label map encodes (:func:`label_map_for`'s inverse); ContractError naming ``name``
    when it is none of them (unknown values, lesion and ignore pixels together, an ignore region that is not one
    filled rectangle)."""
    label = np.asarray(label)
    values = set(np.unique(label).tolist())
    if not values <= {BACKGROUND_LABEL, LESION_LABEL, IGNORE_LABEL}:
        raise ContractError(f"{name} has values {sorted(values)}; expected 0 (background), 1 (lesion) and 2 (ignore: "
                            f"not annotated)")
    if IGNORE_LABEL not in values:
        return "full"
    if LESION_LABEL in values:
        raise ContractError(f"{name} has lesion (1) and ignore (2) pixels; expected a full mask (0 / 1), no mask "
                            f"(all 2) or a box (2 inside a rectangle, 0 outside)")
    if values == {IGNORE_LABEL}:
        return "none"
    r0, r1, c0, c1 = bounding_box(label == IGNORE_LABEL)
    if not (label[r0:r1 + 1, c0:c1 + 1] == IGNORE_LABEL).all():
        raise ContractError(f"{name}: its ignore (2) pixels do not fill a rectangle; expected a box annotation (2 "
                            f"inside the box, 0 outside)")
    return "box"


def mask_kind_by_case(cases: pd.DataFrame) -> dict[str, str]:
    """{case_id: mask kind} of a cases table (as read by :func:`read_cases_csv`): ``full`` for every case when it
    has no mask column, as the contract reads a missing column."""
    if MASK_COLUMN not in cases.columns:
        return {case: "full" for case in cases["case_id"]}
    return dict(zip(cases["case_id"], cases[MASK_COLUMN]))


def check_ignore_label(dataset_json: dict, cases: pd.DataFrame, json_path, csv_path) -> None:
    """The labels of dataset.json agree with the mask kinds of cases.csv (checked from the two files alone, no
    pixel is read, so loading stays cheap):

    - a dataset.json whose ``labels`` name ``ignore`` uses exactly :data:`PARTIAL_LABELS` (nnU-Net requires the
      ignore label to be the highest one, and our trainers read 1 as lesion and 2 as "not annotated");
    - a cases.csv with ``box`` or ``none`` rows comes with that declaration: without it nnU-Net's integrity check
      refuses the label value 2, or, worse, a 2 would be trained as a third class.
    """
    labels = dataset_json.get("labels") if isinstance(dataset_json, dict) else None
    if isinstance(labels, dict) and "ignore" in labels and labels != PARTIAL_LABELS:
        raise ContractError(f"{json_path}: 'labels' is {json.dumps(labels)}; a dataset with the ignore label expected "
                            f"exactly {json.dumps(PARTIAL_LABELS)}")
    if MASK_COLUMN not in cases.columns or declares_ignore_label(dataset_json):
        return
    partial = cases[MASK_COLUMN] != "full"
    if partial.any():
        i = cases.index[partial][0]
        raise ContractError(f"{csv_path} line {i + 2} (case {cases.at[i, 'case_id']}): mask "
                            f"{cases.at[i, MASK_COLUMN]!r} but {json_path} declares no ignore label; expected "
                            f"\"labels\": {json.dumps(PARTIAL_LABELS)} in a partially annotated dataset")
