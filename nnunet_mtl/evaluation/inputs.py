"""What ``nnunet_mtl evaluate`` reads, read and checked: prediction and reference label maps, the lesion maps of
``--attention``, cases.csv, class labels, a classification-only folder's class predictions, and the validation cases
of a trained fold (or of nnU-Net's merged cross-validation folder). Every problem is one line naming the file."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from nnunet_mtl.dataset.contract import (
    MASK_COLUMN,
    SPACING_COLUMNS,
    kind_of_label_map,
    read_cases_csv,
    read_class_labels,
    read_json_object,
)
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import classification as cls_metrics
from nnunet_mtl.evaluation.shared import ATTENTION_FOLDER, UNANNOTATED_KINDS, some_ids
from nnunet_mtl.inference.class_predictions import CLASS_PREDICTIONS
from nnunet_mtl.inference.per_fold import FOLD_SUBFOLDER


def list_png_cases(folder, role: str) -> dict[str, Path]:
    """{case_id: path} of the *.png files directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NnunetMtlError(f"{role} folder {folder} does not exist; expected a folder of CASE_ID.png label maps")
    return {p.name[:-len(".png")]: p for p in sorted(folder.iterdir()) if p.name.endswith(".png") and p.is_file()}


CLASSIFICATION_ONLY_DEFINITION = (
    "a prediction folder with no CASE.png masks but a class_predictions.csv (nnunet_mtl predict of a "
    "classification-only model, e.g. nnUNetTrainerClsOnly, whose decoder is never run) is scored on classification "
    "only, over the reference folder's cases (the test set the segmentation runs are scored on): segmentation is "
    "null, confidence intervals are those of the classification metrics, per_case.csv has no segmentation columns")


def classification_only_note(pred_dir) -> str:
    return (f"classification only: no masks in {pred_dir} (a classification-only model); segmentation not "
            f"evaluated")


def classification_only_csv(pred_dir, class_predictions_csv=None, cases_csv=None, attention: bool = False) -> Path:
    """The class predictions of a prediction folder without masks (a classification-only model): the given CSV, else
    PRED/class_predictions.csv. One line naming the folder and what was expected when it has neither masks nor
    class predictions, when the reference classes are not given, or with ``attention`` (no masks to score)."""
    pred_dir = Path(pred_dir)
    path = Path(class_predictions_csv) if class_predictions_csv is not None else pred_dir / CLASS_PREDICTIONS
    if class_predictions_csv is None and not path.is_file():
        if any(pred_dir.glob("class_predictions_part*.csv")):
            raise NnunetMtlError(f"prediction folder {pred_dir} has no CASE_ID.png masks and no {CLASS_PREDICTIONS}, "
                                 f"only class_predictions_part*.csv (from -num_parts); expected {CLASS_PREDICTIONS} "
                                 f"(merge the parts, or pass one with --classes)")
        raise NnunetMtlError(f"prediction folder {pred_dir} has no CASE_ID.png masks and no {CLASS_PREDICTIONS}; "
                             f"expected the masks and / or the {CLASS_PREDICTIONS} that nnunet_mtl predict writes")
    if cases_csv is None:
        raise NnunetMtlError(f"prediction folder {pred_dir} has no masks, only class predictions {path} (a "
                             f"classification-only model); expected the reference classes: pass --cases or -d")
    if attention:
        raise NnunetMtlError(f"--attention: prediction folder {pred_dir} has no masks, only class predictions (a "
                             f"classification-only model); expected masks and lesion maps to score (leave "
                             f"--attention out)")
    return path


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except Exception as e:  # PIL raises several types for unreadable files
        raise NnunetMtlError(f"cannot read {path} as a PNG label map ({e.__class__.__name__}: {e})") from None
    if arr.ndim != 2:
        raise NnunetMtlError(f"{path} has shape {arr.shape}; expected a single-channel 2D label map")
    return arr


def read_cases_table(path, class_labels: dict | None = None) -> dict[str, dict]:
    """cases.csv -> {case_id: {"class": str, "spacing": (row_mm, col_mm) or None, "patient_id": str[, "mask": kind]}}.

    Read and checked by the contract's :func:`read_cases_csv` (ids stay text, so "000123" keeps its zeros; spacings
    are floats); with ``class_labels`` every class must be one of them, without (segmentation only) any name goes.
    ``mask`` (full / box / none, how the case's label map is annotated) only when cases.csv has that column: a box or
    none case has no reference for the segmentation metrics.
    """
    cases = read_cases_csv(path, class_labels)
    if all(c in cases.columns for c in SPACING_COLUMNS):
        pairs = zip(*(cases[c] for c in SPACING_COLUMNS))
        spacings = [None if math.isnan(r) or math.isnan(c) else (float(r), float(c)) for r, c in pairs]
    else:
        spacings = [None] * len(cases)
    table = {case: {"class": cls, "spacing": sp, "patient_id": patient}
             for case, cls, sp, patient in zip(cases["case_id"], cases["class"], spacings, cases["patient_id"])}
    if MASK_COLUMN in cases.columns:
        for case, kind in zip(cases["case_id"], cases[MASK_COLUMN]):
            table[case]["mask"] = kind
    return table


def load_class_labels(path) -> dict[str, int]:
    """class_labels of a dataset.json, checked by the contract; a JSON file holding just {name: index} works too."""
    data = read_json_object(path)
    if "class_labels" not in data and data and all(type(v) is int for v in data.values()):
        data = {"class_labels": data}  # the bare mapping
    return read_class_labels(data, source=str(path))


def class_names_of(class_labels: dict, source: str) -> list[str]:
    try:
        return cls_metrics.ordered_class_names(class_labels)
    except ValueError as e:
        raise NnunetMtlError(f"{source}: {e}") from None


def reference_kind(ref: np.ndarray, ref_path, table_kind: str | None = None) -> tuple[str, str]:
    """(mask kind, where it was read) of a reference label map: ``box`` / ``none`` when the map holds the ignore
    label (the label map says so), else the kind cases.csv gives (``table_kind``), else ``full``. The map is checked
    by the contract's :func:`~nnunet_mtl.dataset.contract.kind_of_label_map`: values other than 0 / 1 / 2, lesion
    and ignore pixels together, or an ignore region that is no box are one line naming the file. A 2 is never read as
    lesion."""
    kind = kind_of_label_map(ref, f"reference {ref_path}")
    if kind != "full":
        return kind, "label map"
    if table_kind in UNANNOTATED_KINDS:
        return table_kind, "cases.csv"
    return "full", "label map"


def read_attention_png(path: Path, shape: tuple) -> np.ndarray:
    """A stored lesion map (uint8 round(255 P), one channel) of the reference's ``shape``; one line naming the file
    otherwise."""
    att = read_label_png(path)
    if att.dtype != np.uint8:
        raise NnunetMtlError(f"{path} has pixel type {att.dtype}; expected the uint8 round(255 P) that nnunet_mtl "
                             f"predict --save-attention writes")
    if att.shape != shape:
        raise NnunetMtlError(f"{path} has shape {att.shape} but its reference has {shape}; expected the lesion map in "
                             f"the image's geometry (nnunet_mtl predict --save-attention)")
    return att


def check_attention_files(pred_dir, cases: list[str]) -> dict[str, Path]:
    """{case: PRED/attention/CASE.png} for every evaluated case, before any metric is computed; one line naming the
    folder and some missing cases otherwise."""
    folder = Path(pred_dir) / ATTENTION_FOLDER
    if not folder.is_dir():
        raise NnunetMtlError(f"--attention: {folder} does not exist; expected the lesion maps that nnunet_mtl predict "
                             f"--save-attention writes (a model whose head returns an attention map)")
    found = list_png_cases(folder, "attention")
    missing = [c for c in cases if c not in found]
    if missing:
        raise NnunetMtlError(f"--attention: {len(missing)} predicted case(s) have no lesion map in {folder}: "
                             f"{some_ids(missing)}; expected CASE.png for every predicted case (predict again with "
                             f"--save-attention)")
    return {c: found[c] for c in cases}


_CROSSVAL_FOLDER = re.compile(r"crossval_results_folds_(\d+(?:_\d+)*)")  # nnU-Net's folds_tuple_to_string


def fold_validation_cases(pred_dir) -> tuple[list[str], str] | None:
    """The validation cases of a training fold's ``validation/`` folder (nnU-Net's
    ``nnUNet_results/DatasetNNN_X/TRAINER__PLANS__CONF/fold_K/validation``) and where they were read: fold K's
    ``val`` list of ``nnUNet_preprocessed/DatasetNNN_X/splits_final.json``, or, without it, the cases nnU-Net's own
    ``validation/summary.json`` scored. The same for nnU-Net's merged cross-validation folder
    (``TRAINER__PLANS__CONF/crossval_results_folds_0_1_2``, of accumulate_cv_results and
    nnUNetv2_find_best_configuration): the union of those folds' val lists. None for any other folder. A fold's
    validation holds a third or a fifth of the training cases: it is evaluated against those, not against every
    reference in labelsTr."""
    pred = Path(pred_dir).resolve()
    fold = FOLD_SUBFOLDER.fullmatch(pred.parent.name)
    merged = _CROSSVAL_FOLDER.fullmatch(pred.name)
    if merged is not None and "__" in pred.parent.name:  # nnU-Net's accumulate_cv_results: the folds' validations
        ks, dataset = [int(k) for k in merged.group(1).split("_")], pred.parent.parent.name
    elif pred.name == "validation" and fold is not None and "__" in pred.parent.parent.name:
        ks, dataset = [int(fold.group(1))], pred.parent.parent.parent.name
    else:
        return None
    root = os.environ.get("nnUNet_preprocessed")
    split = Path(root) / dataset / "splits_final.json" if root else None
    if split is not None and split.is_file():
        from nnunet_mtl.dataset.splits import read_splits
        folds = read_splits(split)
        if all(k < len(folds) for k in ks):
            what = f"fold {ks[0]}'s val list" if len(ks) == 1 else f"the val lists of folds {', '.join(map(str, ks))}"
            return [str(c) for k in ks for c in folds[k]["val"]], f"{what} in {split}"
    summary = pred / "summary.json"
    if summary.is_file():
        try:
            per_case = json.loads(summary.read_text()).get("metric_per_case") or []
            cases = [Path(str(r["reference_file"])).name.rsplit(".", 1)[0] for r in per_case]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if cases:
            return cases, f"the cases nnU-Net's {summary} scored"
    return None


def prediction_folder(pred) -> Path:
    """``-pred``: a folder (of ``nnunet_mtl predict``, nnUNetv2_predict or a per-fold prediction); a one-line error
    otherwise (nnunet_mtl evaluate and gallery)."""
    pred = Path(pred)
    if not pred.is_dir():
        raise NnunetMtlError(f"prediction folder {pred} {'is a file' if pred.exists() else 'does not exist'}; "
                             f"expected a folder of CASE_ID.png masks and / or the class_predictions.csv of "
                             f"nnunet_mtl predict")
    return pred


def reference_inputs(pred: Path, *, dataset=None, ref=None, cases=None, class_labels=None
                     ) -> tuple[Path | None, Path | None, Path | None, Path | None]:
    """(raw dataset folder, reference masks, cases.csv, dataset.json) for a prediction folder: ``ref``, ``cases``
    and ``class_labels`` (-ref, --cases, --class-labels) as given, the rest from ``dataset``'s raw folder (-d; used
    by nnunet_mtl evaluate and gallery). A training fold's validation folder is scored against the training
    references (labelsTr), everything else against labelsTs."""
    ref = Path(ref) if ref else None
    cases = Path(cases) if cases else None
    labels_json = Path(class_labels) if class_labels else None
    raw = None
    if dataset is not None:
        from nnunet_mtl.paths import find_dataset_folder, raw_root
        raw = find_dataset_folder(dataset, raw_root())
        ref = ref or raw / ("labelsTr" if fold_validation_cases(pred) is not None else "labelsTs")
        if cases is None and (raw / "cases.csv").is_file():
            cases = raw / "cases.csv"
        if labels_json is None and (raw / "dataset.json").is_file():
            labels_json = raw / "dataset.json"
    return raw, ref, cases, labels_json


def case_table(dataset=None, cases=None) -> Path | None:
    """The case table of ``-d DATASET`` or ``--cases CASES.csv`` (patients for the bootstrap and tests), or None
    (nnunet_mtl compare and average-seeds)."""
    if dataset is not None and cases is not None:
        raise NnunetMtlError("pass -d DATASET or --cases CASES.csv, not both; expected one case table")
    if cases is not None:
        cases = Path(cases)
        if not cases.is_file():
            raise NnunetMtlError(f"case table {cases} {'is a folder' if cases.is_dir() else 'does not exist'}; "
                                 f"expected a cases.csv with case_id and patient_id")
    elif dataset is not None:
        from nnunet_mtl.paths import find_dataset_folder, raw_root
        cases = find_dataset_folder(dataset, raw_root()) / "cases.csv"
        if not cases.is_file():
            raise NnunetMtlError(f"{cases} does not exist; expected the raw dataset's case table (case_id, "
                                 f"patient_id)")
    return cases
