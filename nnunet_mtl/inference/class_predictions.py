"""``class_predictions.csv``: the class probabilities nnunet_mtl writes beside nnU-Net's masks; its one home.

Format: ``case_id, predicted_class, prob_<class>...`` with one ``prob_`` column per class in index order (the
dataset's ``class_labels``), probabilities with 6 decimals, ``predicted_class`` their arg max, one row per case sorted
by case id. ``nnunet_mtl predict`` writes ``class_predictions.csv`` (``class_predictions_partK.csv`` for one part of a
``-num_parts`` prediction), a trainer's final validation ``fold_K/validation/class_predictions.csv``; the ensemble
and the cross-validation merge write the same format. Every write is atomic (:mod:`nnunet_mtl.atomic`).

Readers: :func:`read_class_prediction_rows` (the raw rows, for merging a new prediction into a folder: refuses a file
of other classes), :func:`read_class_predictions` (checked numbers, for scoring: probabilities in [0, 1] summing to
1), :func:`read_class_tables` (one prediction, whole or in parts).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nnunet_mtl.atomic import atomic_open
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.tables import class_index, read_csv_rows, rows_by_case


def prediction_row(case: str, class_names, probabilities) -> dict:
    """One row: case_id, predicted_class (the arg max), prob_<class> with 6 decimals."""
    row = {"case_id": case, "predicted_class": class_names[int(np.argmax(probabilities))]}
    row.update({f"prob_{n}": f"{float(p):.6f}" for n, p in zip(class_names, probabilities)})
    return row
CLASS_PREDICTIONS = "class_predictions.csv"  # what nnunet_mtl predict writes next to the masks
# class_predictions.csv stores 6 decimals: a row of K rounded probabilities sums to 1 within K * 5e-7
PROBABILITY_TOLERANCE = 1e-3


def read_class_predictions(path, class_names: list[str] | None) -> tuple[list[str], dict[str, tuple[int, np.ndarray]]]:
    """class_predictions.csv -> (class names, {case_id: (predicted index, probabilities in index order)}).

    Without ``class_names`` the classes are the prob_<name> columns in file order (the predictor writes them by
    index). An empty predicted_class falls back to the arg max of the probabilities.
    """
    path = Path(path)
    if not path.is_file():
        raise NnunetMtlError(f"class predictions {path} do not exist; expected the class_predictions.csv written by "
                             f"nnunet_mtl predict")
    fields, rows = read_csv_rows(path, "the class_predictions.csv written by nnunet_mtl predict")
    prob_cols = [c for c in fields if c.startswith("prob_")]
    if "case_id" not in fields or not prob_cols:
        raise NnunetMtlError(f"{path} has columns {', '.join(fields) or 'none'}; expected case_id, predicted_class, "
                             f"prob_<class>...")
    if class_names is None:
        class_names = [c[len("prob_"):] for c in prob_cols]
        if len(class_names) < 2:
            raise NnunetMtlError(f"{path} has one prob_ column; expected one per class (at least two)")
    elif sorted(prob_cols) != sorted(f"prob_{n}" for n in class_names):
        raise NnunetMtlError(f"{path} has probability columns {', '.join(prob_cols)}; expected "
                             f"{', '.join('prob_' + n for n in class_names)} (from class_labels)")
    out = {}
    for case, row in rows_by_case(rows, path).items():
        try:
            probs = np.array([float(row[f"prob_{n}"]) for n in class_names])
        except ValueError:
            raise NnunetMtlError(f"{path}: case {case} has a probability that is not a number; expected floats "
                                 f"in prob_ columns") from None
        if not np.all(np.isfinite(probs)):
            raise NnunetMtlError(f"{path}: case {case} has a non-finite probability; expected finite floats")
        if probs.min() < -PROBABILITY_TOLERANCE or probs.max() > 1 + PROBABILITY_TOLERANCE:
            worst = probs.min() if probs.min() < 0 else probs.max()
            raise NnunetMtlError(f"{path}: case {case} has a probability of {worst:g}; expected class probabilities "
                                 f"in [0, 1] (not logits)")
        if abs(probs.sum() - 1.0) > PROBABILITY_TOLERANCE:
            raise NnunetMtlError(f"{path}: the probabilities of case {case} sum to {probs.sum():g}; expected one "
                                 f"distribution over the classes, summing to 1 (within {PROBABILITY_TOLERANCE:g})")
        predicted = row.get("predicted_class", "")
        index = (int(np.argmax(probs)) if predicted == "" else
                 class_index(predicted, class_names, f"{path}: predicted_class of case {case}"))
        out[case] = (index, probs)
    return class_names, out


def class_predictions_file_name(num_parts: int = 1, part_id: int = 0) -> str:
    """The class_predictions CSV of one part of a prediction (nnUNetv2_predict's ``-num_parts`` / ``-part_id``),
    (``nnunet_mtl predict`` and the continued prediction both name it by this)."""
    return CLASS_PREDICTIONS if num_parts == 1 else f"class_predictions_part{part_id}.csv"


def write_class_predictions(path: Path, class_names, probabilities: dict, merge_existing: bool = True) -> Path:
    """``probabilities`` ({case: probabilities ordered as class_names}) as class_predictions.csv at ``path``
    written atomically. The rows of a CSV already at ``path`` are kept and those of the cases given replaced
    (a folder predicted in several runs keeps one row per mask); ``merge_existing`` False writes only these cases."""
    class_names = list(class_names)
    rows = read_class_prediction_rows(path, class_names) if merge_existing else {}
    for case, probs in probabilities.items():
        rows[case] = prediction_row(case, class_names, probs)
    fields = class_prediction_fields(class_names)
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for case in sorted(rows):
            writer.writerow({k: rows[case].get(k, "") for k in fields})
    return path


def class_prediction_fields(class_names) -> list[str]:
    """The columns, in order: case_id, predicted_class, prob_<class> per class in index order."""
    return ["case_id", "predicted_class"] + [f"prob_{n}" for n in class_names]


def read_class_prediction_rows(path, class_names) -> dict[str, dict]:
    """The rows of an existing class_predictions.csv by case id ({} when there is none), for merging with a new
    prediction. Refused with one line when it cannot be read or has other columns than this model writes: merging
    would mix the classes of two models. Run before predicting (``nnunet_mtl predict`` does) and again when
    writing."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise NnunetMtlError(f"{path} is not a file; expected the class_predictions.csv of this output folder")
    expected = class_prediction_fields(class_names)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = {row["case_id"]: row for row in reader} if fields == expected else None
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as e:
        raise NnunetMtlError(f"{path} is not a readable class_predictions.csv ({type(e).__name__}); expected the "
                             f"file nnunet_mtl predict writes, or another -o")
    if rows is None:
        raise NnunetMtlError(f"{path} has columns {','.join(fields) or 'none'}, this model writes "
                             f"{','.join(expected)}: its rows come from another model; expected another -o (or "
                             f"remove the file)")
    return rows


def folder_class_csvs(folder: Path) -> list[Path]:
    """class_predictions.csv of a folder, or the class_predictions_partK.csv of a -num_parts prediction; []."""
    whole = folder / CLASS_PREDICTIONS
    if whole.exists():
        if not whole.is_file():
            raise NnunetMtlError(f"{whole} is not a file; expected the class_predictions.csv nnunet_mtl predict writes")
        return [whole]
    return sorted(p for p in folder.glob("class_predictions_part*.csv") if p.is_file())


def read_class_tables(csv_paths) -> tuple[list[str], dict[str, np.ndarray]]:
    """The class names (prob_ columns in file order) and {case: probabilities} of one prediction: one
    class_predictions.csv, or the parts of a -num_parts prediction (which must agree on the columns, and hold each
    case once)."""
    names, probabilities, source = None, {}, {}
    for path in csv_paths:
        these, rows = read_class_predictions(path, None)
        if names is not None and these != names:
            raise NnunetMtlError(f"{path} has columns {prob_columns(these)}, {csv_paths[0]} has {prob_columns(names)}; "
                                 f"expected the parts of one prediction to have the same prob_<class> columns")
        names = these
        for case, (_index, probs) in rows.items():
            if case in probabilities:
                raise NnunetMtlError(f"case {case} is in both {source[case]} and {path}; expected each case in one "
                                     f"part of the prediction")
            probabilities[case], source[case] = probs, path
    return names or [], probabilities


def prob_columns(names) -> str:
    """The prob_<class> columns of ``names``, comma-separated (for messages)."""
    return ",".join(f"prob_{n}" for n in names)


def write_class_prediction_rows(rows: list[dict], names: list[str], path) -> Path:
    """class_predictions.csv (case_id, predicted_class, prob_<class>...), sorted by case id, written atomically."""
    fields = class_prediction_fields(names)
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["case_id"]):
            writer.writerow({k: row.get(k, "") for k in fields})
    return Path(path)
