"""Cross-validation splits grouped by patient and stratified by class.

nnU-Net's default split is a KFold over cases: images of one patient (or frames of one cine clip) would land
on both sides, and validation would measure memory, not generalization. We write nnU-Net's own
``splits_final.json`` format instead, so nnU-Net's trainers read our split unchanged.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from nnunet_mtl.errors import NnunetMtlError

DEFAULT_NUM_FOLDS = 5
DEFAULT_SEED = 12345  # nnU-Net's own split seed


def grouped_stratified_splits(case_ids: list[str], patient_ids: list[str], classes: list,
                              num_folds: int = DEFAULT_NUM_FOLDS, seed: int = DEFAULT_SEED) -> list[dict]:
    """k folds in nnU-Net's format ``[{'train': [...], 'val': [...]}, ...]``; no patient on both sides."""
    if not (len(case_ids) == len(patient_ids) == len(classes)):
        raise ValueError("case_ids, patient_ids and classes must have the same length")
    if num_folds < 2:
        raise NnunetMtlError(f"number of folds {num_folds} is too small; expected at least 2")
    n_patients = len(set(patient_ids))
    if n_patients < num_folds:
        raise NnunetMtlError(
            f"{num_folds} folds need at least {num_folds} patients, the training set has {n_patients}")
    order = np.argsort(case_ids, kind="stable")  # independent of the order the caller lists cases in
    ids = np.asarray(case_ids, dtype=object)[order]
    groups = np.asarray(patient_ids, dtype=object)[order]
    y = np.asarray(classes, dtype=object)[order].astype(str)
    # StratifiedGroupKFold balances class proportions across folds while keeping groups whole; it warns when a
    # class has fewer groups than folds, which is fine for us (that class just misses some folds).
    cv = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    splits = []
    for train_idx, val_idx in cv.split(ids, y, groups):
        splits.append({"train": sorted(ids[train_idx].tolist()), "val": sorted(ids[val_idx].tolist())})
    check_splits_grouped(splits, dict(zip(ids.tolist(), groups.tolist())))
    return splits


def grouped_stratified_holdout(case_ids: list[str], patient_ids: list[str], classes: list, fraction: float = 0.15,
                               seed: int = DEFAULT_SEED) -> list[dict]:
    """One split in nnU-Net's format, ``[{'train': [...], 'val': [...]}]``: ``fraction`` of the patients (rounded,
    at least one) as validation, stratified by each patient's most frequent class where every class has two
    patients or more; no patient on both sides. The breast consistency paper's internal 85 / 15 split
    (fraction 0.15; BrEaST: 252 patients, 38 of them for validation)."""
    from sklearn.model_selection import train_test_split
    if not (len(case_ids) == len(patient_ids) == len(classes)):
        raise ValueError("case_ids, patient_ids and classes must have the same length")
    if not 0 < fraction < 1:
        raise NnunetMtlError(f"hold-out fraction {fraction} must lie between 0 and 1 (e.g. 0.15 for 85/15)")
    cases_of: dict[str, list[str]] = {}
    classes_of: dict[str, list[str]] = {}
    for case, patient, cls in sorted(zip(case_ids, patient_ids, map(str, classes))):
        cases_of.setdefault(patient, []).append(case)
        classes_of.setdefault(patient, []).append(cls)
    patients = sorted(cases_of)
    if len(patients) < 2:
        raise NnunetMtlError(f"a hold-out split needs at least 2 patients, the training set has {len(patients)}")
    n_val = min(len(patients) - 1, max(1, round(fraction * len(patients))))
    label = [Counter(classes_of[p]).most_common(1)[0][0] for p in patients]
    counts = Counter(label)
    stratify = label if min(counts.values()) >= 2 and n_val >= len(counts) else None
    train_p, val_p = train_test_split(patients, test_size=n_val, stratify=stratify, random_state=seed)
    split = [{"train": sorted(c for p in train_p for c in cases_of[p]),
              "val": sorted(c for p in val_p for c in cases_of[p])}]
    check_splits_grouped(split, {c: p for p in patients for c in cases_of[p]})
    return split


def read_splits(path, identifiers=None) -> list[dict]:
    """nnU-Net's splits_final.json, checked: a JSON list of {"train": [...], "val": [...]} with case ids (of
    ``identifiers``, the preprocessed cases, when given) and a non-empty validation set per fold. One-line
    :class:`NnunetMtlError` naming the file and the first problem otherwise (nnU-Net would fail with a traceback,
    or train on cases that do not exist)."""
    path = Path(path)
    expected = ("expected nnU-Net's splits_final.json: a list of {\"train\": [case ids], \"val\": [case ids]} "
                "(nnunet_mtl split -d DATASET --overwrite writes one)")
    try:
        splits = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NnunetMtlError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:80]}); {expected}")
    if not isinstance(splits, list) or not splits:
        raise NnunetMtlError(f"{path} is not a non-empty JSON list; {expected}")
    known = None if identifiers is None else set(identifiers)
    for fold, split in enumerate(splits):
        if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val")):
            raise NnunetMtlError(f"{path}: fold {fold} is not an object with 'train' and 'val' lists; {expected}")
        if not split["val"]:
            raise NnunetMtlError(f"{path}: fold {fold} has no validation cases; expected at least one")
        for key in ("train", "val"):
            bad = [c for c in split[key] if not isinstance(c, str)]
            if bad:
                raise NnunetMtlError(f"{path}: fold {fold} '{key}' holds {bad[0]!r}; expected case ids (strings)")
            if known is not None:
                unknown = sorted(set(split[key]) - known)
                if unknown:
                    raise NnunetMtlError(f"{path}: fold {fold} '{key}' names {len(unknown)} case(s) that are not in "
                                         f"the preprocessed dataset (e.g. {unknown[0]}); expected the split of this "
                                         f"dataset (nnunet_mtl split -d DATASET --overwrite)")
    return splits


def check_splits_grouped(splits: list[dict], patient_of_case: dict[str, str], folds=None) -> None:
    """Raise if a case, or a patient, appears in both train and val of one fold (of ``folds``, default all)."""
    for fold, split in enumerate(splits):
        if folds is not None and fold not in folds:
            continue
        both = sorted(set(split["train"]) & set(split["val"]))
        if both:
            raise NnunetMtlError(f"fold {fold} has case(s) {', '.join(both[:5])} in both train and val; expected "
                                 f"every case on one side only")
        train_patients = {patient_of_case[c] for c in split["train"] if c in patient_of_case}
        leaked = sorted({patient_of_case[c] for c in split["val"] if c in patient_of_case} & train_patients)
        if leaked:
            raise NnunetMtlError(
                f"fold {fold} has patient(s) {', '.join(leaked[:5])} in both train and val; "
                f"expected every patient on one side only")


def describe_splits(splits: list[dict], class_of_case: dict[str, str]) -> str:
    def fmt(counts: Counter) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))

    lines = []
    for fold, split in enumerate(splits):
        tr = Counter(class_of_case.get(c, "?") for c in split["train"])
        va = Counter(class_of_case.get(c, "?") for c in split["val"])
        lines.append(f"fold {fold}: train {len(split['train'])} ({fmt(tr)}) | val {len(split['val'])} ({fmt(va)})")
    return "\n".join(lines)


def write_splits(splits: list[dict], path: Path) -> None:
    """nnU-Net's splits_final.json, atomically (two folds started at once may both write it)."""
    from nnunet_mtl.atomic import write_text_atomic
    write_text_atomic(json.dumps(splits, indent=2), path)


SPLIT_FILE_HELP = ("a given split: nnU-Net's splits_final.json (a list of {\"train\": [case ids], \"val\": "
                   "[case ids]}) or a CSV with a column patient (or case) and a column fold, the fold whose validation "
                   "set holds it (every training patient listed, unless --unlisted train)")


def _split_csv(path: Path):
    """(id column: 'patient' or 'case', {id: fold}) of a split CSV, checked."""
    import csv
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise NnunetMtlError(f"{path} is not a readable CSV ({type(e).__name__}: {str(e)[:80]}); expected "
                             f"{SPLIT_FILE_HELP}") from None
    ids = [c for c in ("patient", "patient_id", "case", "case_id") if c in columns]
    if len(ids) != 1 or "fold" not in columns:
        raise NnunetMtlError(f"{path} has columns {', '.join(columns) or '(none)'}; expected fold and one of patient, "
                             f"case (the fold whose validation set holds each)")
    column = ids[0]
    folds: dict[str, int] = {}
    for line, r in enumerate(rows, start=2):
        key, fold = r.get(column, ""), r.get("fold", "")
        if not key or not fold.isdigit():
            raise NnunetMtlError(f"{path} line {line}: {column} {key!r}, fold {fold!r}; expected an id and a fold "
                                 f"0, 1, ...")
        if folds.setdefault(key, int(fold)) != int(fold):
            raise NnunetMtlError(f"{path} line {line}: {column} {key} is in folds {folds[key]} and {fold}; expected "
                                 f"one validation fold per {column}")
    if not folds:
        raise NnunetMtlError(f"{path} lists no {column}; expected {SPLIT_FILE_HELP}")
    used = set(folds.values())
    if used != set(range(max(used) + 1)):
        missing = sorted(set(range(max(used) + 1)) - used)
        raise NnunetMtlError(f"{path}: fold {missing[0]} has no {column}; expected folds 0..{max(used)} each to "
                             f"validate on some")
    return column.split("_")[0], folds


def _split_file_format(path: Path) -> str:
    """'json' or 'csv', by the file's suffix."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("json", "csv"):
        raise NnunetMtlError(f"{path}: expected a .json or .csv file ({SPLIT_FILE_HELP})")
    return suffix


def count_split_file_folds(path) -> int:
    """How many folds a given split file defines (a recipe plans its grid before the dataset exists)."""
    path = Path(path)
    if _split_file_format(path) == "csv":
        return max(_split_csv(path)[1].values()) + 1
    return len(read_splits(path))


UNLISTED = ("refuse", "train")


def splits_from_file(path, case_ids: list[str], patient_ids: list[str], test_ids=(),
                     unlisted: str = "refuse") -> list[dict]:
    """The split a file gives, in nnU-Net's format, checked against the training cases ``case_ids`` (of patients
    ``patient_ids``): every id known, none of the test set, no patient on both sides of a fold. A CSV that leaves
    training patients (cases) out would train them in every fold and validate them in none: refused, naming them,
    unless ``unlisted`` is "train"."""
    path = Path(path)
    patient_of_case = dict(zip(case_ids, patient_ids))
    if _split_file_format(path) == "json":
        test = set(test_ids) - set(case_ids)
        splits = read_splits(path, identifiers=[*case_ids, *test])  # unknown ids refused here, test cases below
        for fold, split in enumerate(splits):
            held = sorted({c for k in ("train", "val") for c in split[k]} & test)
            if held:
                raise NnunetMtlError(f"{path}: fold {fold} names {held[0]}, a test case; expected training cases only")
        splits = [{"train": sorted(s["train"]), "val": sorted(s["val"])} for s in splits]
    else:
        kind, fold_of = _split_csv(path)
        known = set(patient_ids) if kind == "patient" else set(case_ids)
        unknown = sorted(set(fold_of) - known)
        if unknown:
            raise NnunetMtlError(f"{path} names {len(unknown)} {kind}(s) that are not training cases of the dataset "
                                 f"(e.g. {unknown[0]}); expected {kind} ids of its cases.csv")
        left_out = sorted(known - set(fold_of))
        if left_out and unlisted != "train":
            shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
            raise NnunetMtlError(f"{path} does not list {len(left_out)} {kind}(s) of the training cases ({shown}): "
                                 f"they would train in every fold and be validated in none; expected every {kind} "
                                 f"listed, or --unlisted train to keep them in training on purpose")
        key = (lambda c: patient_of_case[c]) if kind == "patient" else (lambda c: c)
        splits = []
        for fold in range(max(fold_of.values()) + 1):
            val = sorted(c for c in case_ids if fold_of.get(key(c)) == fold)
            splits.append({"train": sorted(c for c in case_ids if fold_of.get(key(c)) != fold), "val": val})
    for fold, split in enumerate(splits):
        both = sorted(set(split["train"]) & set(split["val"]))
        if both:
            raise NnunetMtlError(f"{path}: fold {fold} has {both[0]} in both train and val; expected each case on "
                                 f"one side")
        if not split["train"]:
            raise NnunetMtlError(f"{path}: fold {fold} leaves nothing to train on; expected some cases outside its "
                                 f"validation set")
    try:
        check_splits_grouped(splits, patient_of_case)
    except NnunetMtlError as e:
        raise NnunetMtlError(f"{path}: {e}") from None
    return splits
