"""Partially annotated datasets made from fully annotated ones: the logic of ``nnunet_mtl drop-masks``.

Fan et al.'s lesion-aware network is trained on images of which only some have masks (25 %, 50 %, 75 % of them
kept). To reproduce that from a fully annotated dataset, the masks of the training patients that are *not* kept are
replaced by the contract's "not annotated" label maps (:func:`nnunet_mtl.dataset.contract.label_map_for`: all
ignore for ``none``, the ignore label inside the lesion's bounding box for ``box``) in a **new raw dataset**, before
nnU-Net ever sees it. Hiding a mask only inside a trainer is not enough: nnU-Net's preprocessing stores, for every
case, where its lesion pixels are (``class_locations``, used to oversample foreground patches), so a trainer that
hides the mask would still be shown where the lesion is.

How the kept patients are chosen (:func:`choose_kept_patients`), and why:

- **per patient**, not per image: the images of one patient are near-duplicates (repeat views, cine frames); a
  patient whose other views keep their masks would leak its lesion's outline into the "unannotated" images;
- **stratified by class**: each class keeps about the fraction ``keep`` of its patients, so the annotated subset
  has the class mix of the whole training set. A patient's class is the most frequent class of its training
  images, ties going to the lower class index (a patient with images of several classes is rare; it must fall into
  exactly one stratum);
- **rounding**: the total kept is ``keep`` x patients rounded half up, at least one; it is shared among the
  classes by the largest-remainder rule (each class gets the floor of ``keep`` x its patients, the remaining
  patients go to the classes with the largest fractional parts, ties to the lower class index), so the total is
  exact and no class is off by more than one patient. Computed with exact fractions: 0.57 x 100 is 57, not
  56.99...;
- **seeded and deterministic**: within a class the patients (sorted by id, so the order of cases.csv does not
  matter) are shuffled by a numpy generator seeded with (seed, class index), and the first ones are kept. A plain
  per-class permutation rather than scikit-learn's ``train_test_split``: it gives the exact quota above, accepts
  strata of one patient (which ``train_test_split`` refuses) and, for one seed, takes every class's patients in one
  order, so a larger ``keep`` keeps the smaller one's patients plus more in every class whose rounded quota does
  not shrink (the 25 % masks are then among the 50 % ones, as in a learning-curve experiment).

Test cases (and labelsTs) are never touched: they are what the segmentation is evaluated against. A lesion-free
training image (class ``normal``, empty mask) stays ``full`` whatever ``--as`` says: its class already says there
is no lesion, so the empty mask tells nothing the image's class does not, and hiding it would only throw away known
background.
"""
from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_mtl.dataset.contract import (MASK_COLUMN, MASK_KINDS, NORMAL_CLASS, RawDataset, declares_ignore_label,
                                         kind_of_label_map, load_raw_dataset, mask_kind_by_case)
from nnunet_mtl.errors import ContractError, NnunetMtlError

DROP_KINDS = ("none", "box")  # what a not-kept patient's lesion images become
DEFAULT_SEED = 0
PROVENANCE_KEY = "nnunet_mtl_partial"  # the dataset.json key that says how a partial dataset was made
REPORT_FILE = "partial_report.json"


# --- choosing the patients --------------------------------------------------------------------------------------
def check_keep(keep) -> Fraction:
    """``keep`` as an exact fraction in (0, 1]; one-line error naming the value otherwise."""
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise NnunetMtlError(f"--keep {keep!r} is not a number; expected a fraction in (0, 1], e.g. 0.25")
    if not math.isfinite(value) or not 0 < value <= 1:
        raise NnunetMtlError(f"--keep {keep} is outside (0, 1]; expected the fraction of training patients whose "
                             f"masks are kept, e.g. 0.25")
    return Fraction(repr(value))  # the decimal as written: Fraction("0.57") == 57/100 exactly


def patient_classes(patient_ids, classes, class_labels: dict[str, int]) -> dict[str, str]:
    """{patient: class} from the patient and class of each training image: the patient's most frequent class,
    ties to the lower class index."""
    counts: dict[str, Counter] = {}
    for patient, class_name in zip(patient_ids, classes):
        counts.setdefault(str(patient), Counter())[str(class_name)] += 1
    return {p: min(c, key=lambda k: (-c[k], class_labels[k])) for p, c in counts.items()}


def keep_quotas(patients_per_class: dict[str, int], keep, class_labels: dict[str, int]) -> dict[str, int]:
    """{class: patients to keep}: ``keep`` x all patients rounded half up (at least one) in total, shared by the
    largest-remainder rule (ties to the lower class index); see the module docstring."""
    keep = check_keep(keep)
    total_patients = sum(patients_per_class.values())
    if total_patients == 0:
        return {c: 0 for c in patients_per_class}
    total = max(1, math.floor(keep * total_patients + Fraction(1, 2)))
    exact = {c: keep * n for c, n in patients_per_class.items()}
    quotas = {c: math.floor(q) for c, q in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - quotas[c]), class_labels[c]))
    for c in by_remainder[:total - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


@dataclass
class PatientSelection:
    """Which training patients keep their masks; every field is plain data for partial_report.json."""
    keep: float
    seed: int
    class_of_patient: dict[str, str]
    quotas: dict[str, int]            # class -> kept patients
    kept: list[str] = field(default_factory=list)       # sorted patient ids
    not_kept: list[str] = field(default_factory=list)   # sorted patient ids


def choose_kept_patients(train: pd.DataFrame, class_labels: dict[str, int], keep, seed: int = DEFAULT_SEED
                         ) -> PatientSelection:
    """The training patients whose masks are kept (``train``: the training rows of cases.csv, with
    ``patient_id`` and ``class``): per patient, stratified by class, seeded; see the module docstring."""
    check_keep(keep)
    if train.empty:
        raise NnunetMtlError("the source dataset has no training cases; expected some to keep or drop masks of")
    class_of = patient_classes(train["patient_id"], train["class"], class_labels)
    members = patients_by_class(class_of, class_labels)
    quotas = keep_quotas({c: len(p) for c, p in members.items()}, keep, class_labels)
    kept = pick_patients(members, quotas, class_labels, seed)
    return PatientSelection(keep=float(keep), seed=int(seed), class_of_patient=class_of, quotas=quotas,
                            kept=kept, not_kept=sorted(set(class_of) - set(kept)))


def patients_by_class(class_of: dict[str, str], class_labels: dict[str, int]) -> dict[str, list[str]]:
    """{class: its patients sorted by id} for every class of ``class_labels``, in class index order (``class_of``:
    :func:`patient_classes`)."""
    return {c: sorted(p for p, k in class_of.items() if k == c) for c in sorted(class_labels, key=class_labels.get)}


def pick_patients(members: dict[str, list[str]], quotas: dict[str, int], class_labels: dict[str, int],
                  seed: int) -> list[str]:
    """The first ``quotas[c]`` patients of each class's ``members`` (sorted by id) in a numpy permutation seeded
    with (seed, class index); sorted ids. One seed takes every class's patients in one order, so a larger quota
    takes the smaller one's patients plus more (``nnunet_mtl holdout`` picks its test patients the same way)."""
    picked = []
    for c, patients in members.items():
        order = np.random.default_rng([int(seed), class_labels[c]]).permutation(len(patients))
        picked += [patients[i] for i in order[:quotas.get(c, 0)]]
    return sorted(picked)


def default_name(source_name: str, keep, what: str = "masks") -> str:
    """The new dataset's name: the source's plus ``_masks25`` for keep 0.25 (``_masks12p5`` for 0.125); ``what``
    replaces ``masks`` (``nnunet_mtl holdout``: ``_holdout15`` for --fraction 0.15)."""
    percent = check_keep(keep) * 100
    text = str(int(percent)) if percent.denominator == 1 else f"{float(percent):.4g}".replace(".", "p")
    return f"{source_name}_{what}{text}"


# --- checks before any work ---------------------------------------------------------------------------------------
@dataclass
class DropMasksPlan:
    """Everything :func:`write_partial_dataset` needs, checked by :func:`plan_drop_masks` before any file is written."""
    source: RawDataset
    raw_root: Path
    target_id: int
    name: str
    as_kind: str
    overwrite: bool
    selection: PatientSelection


def source_is_partial(raw: RawDataset) -> str | None:
    """Why ``raw`` is not a fully annotated dataset (None when it is): it declares the ignore label, or a case's mask
    kind is not ``full``."""
    if declares_ignore_label(raw.dataset_json):
        return f"{raw.folder / 'dataset.json'} declares the ignore label"
    kinds = mask_kind_by_case(raw.cases)
    partial = [c for c, k in kinds.items() if k != "full"]
    if partial:
        return f"{raw.folder / 'cases.csv'} has {len(partial)} case(s) without a full mask (e.g. {partial[0]}: " \
               f"{kinds[partial[0]]})"
    return None


def open_derived_source(source, target_id, seed, name: str | None, raw_root: Path | None,
                        if_partial: str = "") -> tuple[int, Path, Path, RawDataset]:
    """The checks a derived dataset (``drop-masks``, ``holdout``) makes of its arguments and source before it chooses
    patients: ``--seed`` a non-negative integer, ``--into`` an id in nnU-Net's range (and ``name`` a valid one) that
    is not the source's, the source found in ``raw_root`` (default ``$nnUNet_raw``) with its files and fully
    annotated (``if_partial`` ends that error); ``(target_id, raw_root, source folder, source dataset)``."""
    from nnunet_mtl import paths
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NnunetMtlError(f"--seed {seed!r} is not a non-negative integer")
    try:
        target_id = int(target_id)
    except (TypeError, ValueError):
        raise NnunetMtlError(f"--into {target_id!r} is not a dataset id; expected an integer from 1 to 999")
    paths.dataset_folder_name(target_id, name or "X")  # the id's range, and a given name, before any reading
    root = Path(raw_root) if raw_root is not None else paths.raw_root()
    folder = paths.find_dataset_folder(source, root)
    raw = load_raw_dataset(folder, check_files=True)
    why = source_is_partial(raw)
    if why:
        raise NnunetMtlError(f"source {folder.name} is already partially annotated ({why}); expected a fully annotated "
                             f"dataset{if_partial}")
    if target_id == paths.parse_dataset_id(folder.name):
        raise NnunetMtlError(f"--into {target_id} is the source dataset {folder.name}; expected another id (the source "
                             f"is never changed)")
    return target_id, root, folder, raw


def check_derived_target(root: Path, target_id: int, name: str, overwrite: bool, raw: RawDataset) -> None:
    """The target of a derived dataset: no dataset with its id in ``root`` unless ``overwrite`` (and never a file
    in its folder's place), ``root`` writable, and the source's test masks all there (the test cases are copied
    unchanged and evaluated against them)."""
    from nnunet_mtl import paths
    from nnunet_mtl.outputs import check_output_folder
    folder_name = paths.dataset_folder_name(target_id, name)
    existing = sorted(p for p in root.glob(f"Dataset{target_id:03d}_*") if p.is_dir())
    if existing and not overwrite:
        raise NnunetMtlError(f"{existing[0]} already exists (dataset id {target_id}); pass --overwrite to replace it")
    if (root / folder_name).exists() and not (root / folder_name).is_dir():
        raise NnunetMtlError(f"{root / folder_name} is a file; expected nothing there, or the dataset folder (move the "
                             f"file away: --overwrite replaces datasets, never other files)")
    check_output_folder(root, "nnUNet_raw folder")
    file_ending = raw.dataset_json["file_ending"]
    for case in raw.cases_in_split("test")["case_id"]:
        label = raw.folder / "labelsTs" / f"{case}{file_ending}"
        if not label.is_file():
            raise ContractError(f"{label} does not exist; expected the full mask of test case {case} (test cases are "
                                f"copied unchanged and evaluated against their masks)")


def plan_drop_masks(source, target_id, *, keep, as_kind: str = "none", seed: int = DEFAULT_SEED,
                    name: str | None = None, overwrite: bool = False, raw_root: Path | None = None) -> DropMasksPlan:
    """Check everything that can be checked from the arguments and the source's files (no pixel read), choose the
    kept patients, and return the plan; one-line :class:`NnunetMtlError` otherwise. ``source``: a dataset id or
    name in ``raw_root`` (default ``$nnUNet_raw``)."""
    check_keep(keep)
    if as_kind not in DROP_KINDS:
        raise NnunetMtlError(f"--as {as_kind!r} is not one of {', '.join(DROP_KINDS)}")
    target_id, root, folder, raw = open_derived_source(source, target_id, seed, name, raw_root)
    name = name or default_name(folder.name.split("_", 1)[1], keep)
    check_derived_target(root, target_id, name, overwrite, raw)
    selection = choose_kept_patients(raw.cases_in_split("train"), raw.class_labels, keep, seed)
    if selection.kept and all(selection.class_of_patient[p] == NORMAL_CLASS for p in selection.kept):
        raise NnunetMtlError(f"--keep {keep} keeps the masks of {len(selection.kept)} patient(s), all of class "
                             f"'{NORMAL_CLASS}'; nnU-Net needs at least one fully annotated lesion, expected a larger "
                             f"--keep (or another --seed)")
    return DropMasksPlan(source=raw, raw_root=root, target_id=target_id, name=name, as_kind=as_kind,
                         overwrite=overwrite, selection=selection)


# --- the work ---------------------------------------------------------------------------------------------------
def _read_label(path: Path) -> np.ndarray:
    from nnunet_mtl.image_files import open_image
    with open_image(path, "label") as im:
        return np.asarray(im)


def write_partial_dataset(plan: DropMasksPlan) -> tuple[Path, dict]:
    """Write ``plan``'s dataset through :class:`~nnunet_mtl.dataset.writer.RawDatasetWriter` (a hidden temporary
    folder, validated, moved into place only when complete; an error leaves nothing): images and test labels copied
    byte for byte, kept patients' labels too, the other training labels rewritten as ``plan.as_kind``; dataset.json
    the source's plus the ignore label (``PARTIAL_LABELS``) and :data:`PROVENANCE_KEY`, cases.csv the source's plus
    the ``mask`` column. Returns (dataset folder, the report written as ``partial_report.json``)."""
    from nnunet_mtl.dataset.writer import WRITER_JSON_KEYS, RawDatasetWriter, case_file_paths, write_label_file

    raw, sel = plan.source, plan.selection
    src_json = raw.dataset_json
    provenance = {"source": raw.folder.name, "keep": sel.keep, "as": plan.as_kind, "seed": sel.seed,
                  "kept_patients": len(sel.kept), "patients": len(sel.class_of_patient)}
    extra = {k: v for k, v in src_json.items() if k not in WRITER_JSON_KEYS and k != PROVENANCE_KEY}
    extra[PROVENANCE_KEY] = provenance
    # cases.csv as text (the contract reader turns spacing into floats): every value is copied as written
    rows = pd.read_csv(raw.folder / "cases.csv", dtype=str, keep_default_na=False).to_dict("records")
    kept = set(sel.kept)
    names = raw.class_names
    kinds = {c: {k: 0 for k in MASK_KINDS} for c in names}
    test_images = {c: 0 for c in names}
    lesion_free_left_full = 0
    writer = RawDatasetWriter(plan.target_id, plan.name, raw.class_labels, raw_root=plan.raw_root,
                              description=src_json.get("description", ""), overwrite=plan.overwrite,
                              partial_labels=True, extra_json=extra)
    with writer:
        for row in rows:
            case, split = row["case_id"].strip(), row["split"].strip()
            class_name, patient = row["class"].strip(), row["patient_id"].strip()
            src_image, src_label = case_file_paths(raw.folder, case, split)
            dst_image, dst_label = case_file_paths(writer.tmp, case, split)
            shutil.copyfile(src_image, dst_image)
            kind = "full"
            if split == "train" and patient not in kept:
                label = _read_label(src_label)
                if kind_of_label_map(label, str(src_label)) != "full":  # values other than 0 / 1 / 2 raise here
                    raise ContractError(f"{src_label} holds ignore (2) pixels although {raw.folder / 'cases.csv'} says "
                                        f"mask 'full'; expected a fully annotated source")
                lesion = label == 1
                if lesion.any():
                    kind = write_label_file(writer.tmp, case, split, lesion, plan.as_kind)
                else:  # lesion-free: stays full (module docstring)
                    lesion_free_left_full += 1
                    shutil.copyfile(src_label, dst_label)
            else:
                shutil.copyfile(src_label, dst_label)
            row[MASK_COLUMN] = kind
            writer.register_case(row)
            if split == "train":
                kinds[class_name][kind] += 1
            else:
                test_images[class_name] += 1
        report = {
            "source": raw.folder.name, "dataset": writer.folder_name, "keep": sel.keep, "as": plan.as_kind,
            "seed": sel.seed,
            "rule": "patients chosen per class (the patient's most frequent class, ties to the lower index): "
                    "keep x patients rounded half up (at least 1) in total, shared by largest remainder; a "
                    "numpy permutation seeded with (seed, class index) of the patients sorted by id",
            "patients": len(sel.class_of_patient), "kept_patients": len(sel.kept),
            "by_class": {c: {"patients": sum(k == c for k in sel.class_of_patient.values()),
                             "kept_patients": sel.quotas[c],
                             "train_images": kinds[c], "test_images": test_images[c]} for c in names},
            "lesion_free_images_left_full": lesion_free_left_full,
            "kept": sel.kept, "not_kept": sel.not_kept,
        }
        (writer.tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return writer.path, report


def format_partial_table(report: dict) -> str:
    """Training images per class x (annotated, box, none), and test images: what ``drop-masks`` prints."""
    header = ["class", "annotated", "box", "none", "test"]
    body = [[c, str(v["train_images"]["full"]), str(v["train_images"]["box"]), str(v["train_images"]["none"]),
             str(v["test_images"])] for c, v in report["by_class"].items()]
    body.append(["total"] + [str(sum(int(r[i]) for r in body)) for i in range(1, len(header))])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def drop_masks(source, target_id, *, keep, as_kind: str = "none", seed: int = DEFAULT_SEED, name: str | None = None,
               overwrite: bool = False, raw_root: Path | None = None) -> tuple[Path, dict]:
    """:func:`plan_drop_masks` then :func:`write_partial_dataset`: (the new dataset folder, its report)."""
    plan = plan_drop_masks(source, target_id, keep=keep, as_kind=as_kind, seed=seed, name=name, overwrite=overwrite,
                           raw_root=raw_root)
    return write_partial_dataset(plan)
