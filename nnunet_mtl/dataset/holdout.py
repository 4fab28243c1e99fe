"""A test set held out inside one source dataset: the logic of ``nnunet_mtl holdout``.

Papers often test on images held out from the training source rather than on another dataset: Zhang, Moradi,
Saha hold out 15 % of BrEaST as an internal test set (38 of 252 images), Fan et al. 40 benign + 40 malignant BUSI
images. Our converters write a source either all as training (imagesTr / labelsTr) or all as test (imagesTs), so
this module writes a **new raw dataset**: a copy of the source in which the chosen training patients' cases are
test cases (imagesTs / labelsTs, ``split`` ``test`` in cases.csv, ``numTraining`` updated). The source is never
changed; its own test cases (an external test set added with ``--add-to-existing``) stay test cases.

How the test patients are chosen (:func:`choose_test_patients`), and why; the rules are drop-masks' (the functions
of :mod:`nnunet_mtl.dataset.partial` are reused, not copied):

- **per patient**, not per image: the images of one patient are near-duplicates (repeat views, cine frames); a
  patient with images on both sides would make the test set measure memory. Where a converter has no patient ids
  (BUSI, UDIAT, BrEaST) each image is its own patient, so per patient is per image there (Fan et al.'s 40 + 40
  are images);
- **stratified by class**: a patient's class is the most frequent class of its training images, ties to the lower
  class index (:func:`~nnunet_mtl.dataset.partial.patient_classes`);
- **exact quotas**: ``--fraction F`` takes F x patients rounded half up (at least one) in all, shared among the
  classes by the largest remainder (:func:`~nnunet_mtl.dataset.partial.keep_quotas`; exact fractions, so 0.15 x
  252 is 38 as Zhang, Moradi, Saha say, no class off its exact share by a whole patient). ``--per-class N`` takes N
  patients of every class that has training patients (the normal class too when the source has one);
  ``--classes`` restricts either rule to the classes named, the others stay training (Fan et al.'s BUSI with
  ``--normal include``: 40 benign + 40 malignant, the normal images all training);
- **every class keeps a training patient**: a quota that would take all of a class's training patients is refused
  before anything is written (the classifier could not learn that class), naming the class and its count;
- **seeded and deterministic**: within a class the patients, sorted by id (the order of cases.csv does not
  matter), are permuted by a numpy generator seeded with (seed, class index) and the first ones are taken
  (:func:`~nnunet_mtl.dataset.partial.pick_patients`). The same source and seed give byte-identical files; with
  one seed a larger quota takes the smaller one's patients plus more (not needed, but free).

A partially annotated source (box / none masks, or the ignore label declared) is refused: hold out first, then
``drop-masks`` the result, which hides only training masks, so the test set stays fully annotated. Every file is
copied byte for byte through the converters' writer (a hidden temporary folder, validated, moved into place only
when complete): an error leaves nothing, an existing dataset is replaced only with ``--overwrite``.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_mtl.dataset.contract import RawDataset
from nnunet_mtl.dataset.partial import (check_derived_target, default_name, keep_quotas, open_derived_source,
                                        patient_classes, patients_by_class, pick_patients)
from nnunet_mtl.errors import NnunetMtlError

DEFAULT_SEED = 0
PROVENANCE_KEY = "nnunet_mtl_holdout"  # the dataset.json key that says how the test set was held out
REPORT_FILE = "holdout_report.json"
RULE = ("patients chosen per class (the patient's most frequent class among its training images, ties to the lower "
        "index); --fraction: fraction x patients rounded half up (at least 1) in total, shared by largest remainder; "
        "--per-class: N patients of each class; the first ones of a numpy permutation seeded with (seed, class "
        "index) of the class's patients sorted by id")


# --- checking the arguments -------------------------------------------------------------------------------------
def check_fraction(fraction) -> Fraction:
    """``fraction`` as an exact fraction in (0, 1); one-line error naming the value otherwise."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise NnunetMtlError(f"--fraction {fraction!r} is not a number; expected a fraction in (0, 1), e.g. 0.15")
    if not math.isfinite(value) or not 0 < value < 1:
        raise NnunetMtlError(f"--fraction {fraction} is outside (0, 1); expected the fraction of training patients "
                             f"held out as test cases, e.g. 0.15")
    return Fraction(repr(value))


def check_per_class(per_class) -> int:
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise NnunetMtlError(f"--per-class {per_class!r} is not a positive integer; expected the number of patients "
                             f"of each class held out, e.g. 40")
    return int(per_class)


def check_mode(fraction, per_class) -> None:
    if (fraction is None) == (per_class is None):
        raise NnunetMtlError("expected exactly one of --fraction F and --per-class N"
                             + (f" (got --fraction {fraction} and --per-class {per_class})" if fraction is not None
                                else ""))
    if fraction is not None:
        check_fraction(fraction)
    else:
        check_per_class(per_class)


def check_classes(classes, class_labels: dict[str, int], source: str) -> list[str]:
    """The classes that get a quota, in class index order: ``classes`` (names of ``class_labels``) or all."""
    names = sorted(class_labels, key=class_labels.get)
    if classes is None:
        return names
    classes = [str(c) for c in classes]
    if not classes:
        raise NnunetMtlError(f"--classes names no class; expected some of {', '.join(names)}")
    for c in classes:
        if c not in class_labels:
            raise NnunetMtlError(f"--classes {c!r} is not a class of {source}; expected some of {', '.join(names)}")
    return [c for c in names if c in classes]


# --- choosing the patients --------------------------------------------------------------------------------------
@dataclass
class HoldoutSelection:
    """Which training patients become test patients; every field is plain data for holdout_report.json."""
    fraction: float | None
    per_class: int | None
    classes: list[str]                # the classes that got a quota
    seed: int
    class_of_patient: dict[str, str]  # every training patient of the source
    quotas: dict[str, int]            # class -> held-out patients
    held_out: list[str] = field(default_factory=list)  # sorted patient ids


def choose_test_patients(train: pd.DataFrame, class_labels: dict[str, int], *, fraction=None, per_class=None,
                         classes=None, seed: int = DEFAULT_SEED, source: str = "the source") -> HoldoutSelection:
    """The training patients held out as test patients (``train``: the training rows of cases.csv, with
    ``patient_id`` and ``class``): per patient, stratified by class, exact quotas, seeded; see the module docstring.
    One-line :class:`NnunetMtlError` when a quota cannot be met leaving a training patient in every class."""
    check_mode(fraction, per_class)
    chosen = check_classes(classes, class_labels, source)
    if train.empty:
        raise NnunetMtlError(f"{source} has no training cases; expected some to hold out as test cases")
    class_of = patient_classes(train["patient_id"], train["class"], class_labels)
    members = patients_by_class(class_of, class_labels)
    counts = {c: len(p) for c, p in members.items()}
    if per_class is not None:
        n = check_per_class(per_class)
        # every class with training patients by default; a class named in --classes must have them
        quotas = {c: n if c in chosen and (counts[c] or classes is not None) else 0 for c in members}
        for c in chosen:
            if quotas[c] and counts[c] < n + 1:
                raise NnunetMtlError(f"--per-class {n}: class '{c}' has {counts[c]} training patient(s) in {source}; "
                                     f"expected at least {n + 1} ({n} held out, one left for training): a smaller "
                                     f"--per-class" + ("" if classes is not None else f", or --classes without '{c}'"))
    else:
        shares = keep_quotas({c: counts[c] for c in chosen}, check_fraction(fraction), class_labels)
        quotas = {c: shares.get(c, 0) for c in members}
        for c in chosen:
            if counts[c] and quotas[c] >= counts[c]:
                raise NnunetMtlError(f"--fraction {fraction} would hold out all {counts[c]} training patient(s) of "
                                     f"class '{c}' in {source}; expected at least one left for training (a smaller "
                                     f"--fraction, or --classes without '{c}')")
    if not any(quotas.values()):  # only with --classes: the classes named have no training patients
        raise NnunetMtlError(f"--classes {' '.join(chosen)}: no training patient of {source} is of "
                             f"{'that class' if len(chosen) == 1 else 'these classes'}; expected classes with "
                             f"training patients ({', '.join(c for c in members if counts[c])})")
    held_out = pick_patients(members, quotas, class_labels, seed)
    return HoldoutSelection(fraction=None if fraction is None else float(fraction),
                         per_class=None if per_class is None else int(per_class), classes=chosen, seed=int(seed),
                         class_of_patient=class_of, quotas=quotas, held_out=held_out)


def holdout_name(source_name: str, *, fraction=None, per_class=None) -> str:
    """The new dataset's name: the source's plus ``_holdout15`` for --fraction 0.15, ``_holdout40each`` for
    --per-class 40."""
    if fraction is not None:
        return default_name(source_name, check_fraction(fraction), what="holdout")
    return f"{source_name}_holdout{check_per_class(per_class)}each"


# --- checks before any work ---------------------------------------------------------------------------------------
@dataclass
class HoldoutPlan:
    """Everything :func:`write_holdout_dataset` needs, checked by :func:`plan_holdout` before any file is written."""
    source: RawDataset
    raw_root: Path
    target_id: int
    name: str
    overwrite: bool
    selection: HoldoutSelection


def plan_holdout(source, target_id, *, fraction=None, per_class=None, classes=None, seed: int = DEFAULT_SEED,
                 name: str | None = None, overwrite: bool = False, raw_root: Path | None = None) -> HoldoutPlan:
    """Check everything that can be checked from the arguments and the source's files (no pixel read), choose the
    test patients, and return the plan; one-line :class:`NnunetMtlError` otherwise. ``source``: a dataset id or
    name in ``raw_root`` (default ``$nnUNet_raw``)."""
    check_mode(fraction, per_class)
    target_id, root, folder, raw = open_derived_source(
        source, target_id, seed, name, raw_root,
        if_partial=": hold out first, then drop-masks the result (it hides training masks only)")
    check_classes(classes, raw.class_labels, folder.name)
    name = name or holdout_name(folder.name.split("_", 1)[1], fraction=fraction, per_class=per_class)
    check_derived_target(root, target_id, name, overwrite, raw)
    selection = choose_test_patients(raw.cases_in_split("train"), raw.class_labels, fraction=fraction,
                                     per_class=per_class, classes=classes, seed=seed, source=folder.name)
    return HoldoutPlan(source=raw, raw_root=root, target_id=target_id, name=name, overwrite=overwrite,
                       selection=selection)


# --- the work ---------------------------------------------------------------------------------------------------
def write_holdout_dataset(plan: HoldoutPlan) -> tuple[Path, dict]:
    """Write ``plan``'s dataset through :class:`~nnunet_mtl.dataset.writer.RawDatasetWriter` (a hidden temporary
    folder, validated, moved into place only when complete; an error leaves nothing): every image and label copied
    byte for byte, the held-out patients' training cases into imagesTs / labelsTs; dataset.json the source's (its
    counts recomputed) plus :data:`PROVENANCE_KEY`; cases.csv the source's with ``split`` ``test`` for the held-out
    cases. Returns (dataset folder, the report written as ``holdout_report.json``)."""
    from nnunet_mtl.dataset.writer import WRITER_JSON_KEYS, RawDatasetWriter, case_file_paths

    raw, sel = plan.source, plan.selection
    src_json = raw.dataset_json
    provenance = {"source": raw.folder.name, "fraction": sel.fraction, "per_class": sel.per_class,
                  "classes": sel.classes, "seed": sel.seed, "held_out_patients": len(sel.held_out),
                  "patients": len(sel.class_of_patient)}
    if PROVENANCE_KEY in src_json:  # a hold-out of a hold-out: the earlier record stays
        provenance["source_holdout"] = src_json[PROVENANCE_KEY]
    extra = {k: v for k, v in src_json.items() if k not in WRITER_JSON_KEYS and k != PROVENANCE_KEY}
    extra[PROVENANCE_KEY] = provenance
    # cases.csv as text (the contract reader turns spacing into floats): every value is copied as written
    rows = pd.read_csv(raw.folder / "cases.csv", dtype=str, keep_default_na=False).to_dict("records")
    held_out = set(sel.held_out)
    names = raw.class_names
    counts = {c: {"train_images": 0, "test_images": 0, "held_out_images": 0} for c in names}
    held_out_cases = []
    writer = RawDatasetWriter(plan.target_id, plan.name, raw.class_labels, raw_root=plan.raw_root,
                              description=src_json.get("description", ""), overwrite=plan.overwrite,
                              extra_json=extra)
    with writer:
        for row in rows:
            case, split = row["case_id"].strip(), row["split"].strip()
            class_name, patient = row["class"].strip(), row["patient_id"].strip()
            new_split = "test" if split == "train" and patient in held_out else split
            for src, dst in zip(case_file_paths(raw.folder, case, split), case_file_paths(writer.tmp, case, new_split)):
                shutil.copyfile(src, dst)
            row["split"] = new_split
            writer.register_case(row)
            counts[class_name][f"{new_split}_images"] += 1
            if new_split != split:
                counts[class_name]["held_out_images"] += 1
                held_out_cases.append(case)
        report = {
            "source": raw.folder.name, "dataset": writer.folder_name, "fraction": sel.fraction,
            "per_class": sel.per_class, "classes": sel.classes, "seed": sel.seed, "rule": RULE,
            "patients": len(sel.class_of_patient), "held_out_patients": len(sel.held_out),
            "held_out_images": len(held_out_cases),
            "by_class": {c: {"patients": sum(k == c for k in sel.class_of_patient.values()),
                             "held_out_patients": sel.quotas[c], **counts[c]} for c in names},
            "held_out": sel.held_out, "held_out_cases": sorted(held_out_cases),
        }
        (writer.tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return writer.path, report


def format_holdout_table(report: dict) -> str:
    """Images per class x (train, test, of them held out) and held-out patients: what ``holdout`` prints."""
    header = ["class", "train", "test", "held out", "patients held out"]
    body = [[c, str(v["train_images"]), str(v["test_images"]), str(v["held_out_images"]),
             f"{v['held_out_patients']} of {v['patients']}"] for c, v in report["by_class"].items()]
    body.append(["total"] + [str(sum(int(r[i]) for r in body)) for i in range(1, 4)]
                + [f"{report['held_out_patients']} of {report['patients']}"])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def holdout(source, target_id, *, fraction=None, per_class=None, classes=None, seed: int = DEFAULT_SEED,
            name: str | None = None, overwrite: bool = False, raw_root: Path | None = None) -> tuple[Path, dict]:
    """:func:`plan_holdout` then :func:`write_holdout_dataset`: (the new dataset folder, its report)."""
    plan = plan_holdout(source, target_id, fraction=fraction, per_class=per_class, classes=classes, seed=seed,
                        name=name, overwrite=overwrite, raw_root=raw_root)
    return write_holdout_dataset(plan)
