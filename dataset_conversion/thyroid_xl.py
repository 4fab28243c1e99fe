"""ThyroidXL as published (Duong Viet et al., MICCAI 2025; huggingface.co/datasets/VNPT-AI/ThyroidXL).

``nnunet_mtl convert thyroidxl SOURCE`` (alias ``ThyroidXL``); the options every converter has are in
:mod:`dataset_conversion.options`. Layout::

    SOURCE/train/images/<patient>_<hash>_<K>.png    B-mode images (9,541 in the release)
    SOURCE/train/masks/<same name>                   nodule masks
    SOURCE/test/images/, SOURCE/test/masks/          the official test split (2,094 images)
    SOURCE/stats/id2info_eng.json                    {patient: {age, gender, conclusion, nodule_1, nodule_2, ...,
                                                     images}}; nodule_k: {Position, Width, Height, Depth, TIRADS,
                                                     FNAC, Conclusion, Histopathology}
    (train/labels/, train/labels_orig/, stats/*_patients.txt, ...: not needed, ignored)

What is read from the published files and what is inferred (see also the module constants):

- patient id = the file name up to the first ``_`` (the key of id2info_eng.json); the split is the folder.
- The trailing ``_K`` is an image counter within the patient (0, 1, ... ; the publisher's own example patient
  00000058 has images ``_0`` and ``_1`` and a single nodule record), not a nodule index. The publisher states that
  every image shows one nodule, the most suspicious one when a patient has several, and public code reproducing
  the paper's Table 1 reads ``nodule_1`` for every image of a patient. So: the first non-empty ``nodule_k`` record
  (``nodule_1`` in practice) describes every image of the patient; patients with further records are counted in a
  note.
- ``--target tirads`` (default, the thyroid paper's target): classes TR1..TR5 from the record's ``TIRADS``.
- ``--target malignancy``: benign / malignant, by ``--malignancy-from``:
  - ``conclusion`` (default): the record's top-level ``conclusion`` code (:data:`CONCLUSION_CODES`: 1 malignant by
    histopathology, 2 malignant by FNAC, 3 benign by FNAC, 4 benign by histopathology), what public code reading
    the real files uses and what reproduces the thyroid paper's malignant counts (877 train / 353 test patients,
    ../shared/DESIGN.md); a patient without a code 1-4 is skipped with the reason;
  - ``pathology``: our reading of the nodule's texts: ``Histopathology`` when it names a benign or a malignant
    diagnosis, else ``FNAC`` read as a Bethesda category (:data:`BETHESDA_CLASS`: II benign; V suspicious for
    malignancy and VI malignant -> malignant; I non-diagnostic, III AUS/FLUS, IV follicular neoplasm are
    indeterminate); a patient with neither is skipped with the reason.
  Both readings are kept in cases.csv (``conclusion_code``, ``bethesda``, ``label_source``) and the patients where
  they disagree are counted in a note.
- ``gender`` is a code (1 / 2); ``sex`` is inferred as 2 = F, 1 = M (public code found 3,650 patients with code 2,
  the paper's number of women). No pixel size is published: spacing is left empty.
- Messy values (an age of 2005, a TIRADS of 7) are reported and left empty, never fatal.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from dataset_conversion.common import (MALIGNANCY, Case, Skipped, column_name, find_layout, is_missing, list_files,
                                       safe_id)
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport
from nnunet_mtl.errors import NnunetMtlError

TIRADS_CLASSES = ("TR1", "TR2", "TR3", "TR4", "TR5")  # ACR TI-RADS levels; shared with the AIMI converter
TARGETS = ("tirads", "malignancy")
MALIGNANCY_SOURCES = ("conclusion", "pathology")
INFO_FILE = "stats/id2info_eng.json"
LAYOUT = ("train/{images,masks}/, test/{images,masks}/ (<patient>_<hash>_<K>.png) and "
          "stats/id2info_eng.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
AGE_RANGE = (0, 120)
# Bethesda System for Reporting Thyroid Cytopathology (2017/2023): category -> class (None: indeterminate).
# V (suspicious for malignancy) counts as malignant, as in the malignancy labels of public thyroid datasets.
BETHESDA_CLASS = {1: None, 2: "benign", 3: None, 4: None, 5: "malignant", 6: "malignant"}
ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6}
# Bethesda category names, for FNAC cells written as text
BETHESDA_TEXT = (("non-diagnostic", 1), ("nondiagnostic", 1), ("unsatisfactory", 1), ("atypia", 3), ("aus", 3),
                 ("flus", 3), ("follicular neoplasm", 4), ("suspicious for malignancy", 5), ("benign", 2),
                 ("malignant", 6))
# Histopathology text -> class: a diagnosis naming only malignant words is malignant, only benign words benign;
# both or neither is not a usable label (reported, then FNAC decides). English as in id2info_eng.json, plus the
# Vietnamese words for cancer / benign / goitre in case a cell was left untranslated.
MALIGNANT_WORDS = ("carcinoma", "cancer", "malignan", "lymphoma", "sarcoma", "metasta", "ptc", "ftc", "mtc",
                   "ung thư")
BENIGN_WORDS = ("benign", "adenoma", "goit", "hyperplas", "thyroiditis", "hashimoto", "graves", "cyst", "colloid",
                "nodular", "lành tính", "bướu giáp")
SEX_CODES = {"2": "F", "1": "M", "f": "F", "female": "F", "nữ": "F", "m": "M", "male": "M", "nam": "M"}
CONCLUSION_CODES = {1: "malignant", 2: "malignant", 3: "benign", 4: "benign"}  # 1/2: histo/FNAC, 3/4: FNAC/histo


def register_converters(sources) -> None:
    """``convert thyroidxl`` (alias ``ThyroidXL``)."""
    p = add_converter(
        sources, "thyroidxl", convert_thyroid_xl, aliases=["ThyroidXL"], default_id=605, default_name="ThyroidXL",
        default_split="official", passed=("target", "malignancy_from"),
        help="ThyroidXL (thyroid nodules: TI-RADS TR1-TR5 or benign / malignant, official train/test split)",
        description=f"Converts ThyroidXL as downloaded (folder with {LAYOUT}). Patient = the file name up to the "
                    "first '_'; the official split is the train/test folder (--as official, the default). The "
                    "patient's first nodule record describes all its images (the publisher: one nodule per image, "
                    "the most suspicious). No pixel size is published: spacing is left empty.",
        source_help="the downloaded ThyroidXL folder")
    p.add_argument("--target", choices=TARGETS, default="tirads",
                   help="the class: tirads (default; TR1..TR5 from the nodule's TIRADS) or malignancy (benign / "
                        "malignant, see --malignancy-from)")
    p.add_argument("--malignancy-from", dest="malignancy_from", choices=MALIGNANCY_SOURCES, default="conclusion",
                   help="with --target malignancy: conclusion (default; the record's conclusion code, 1-2 malignant, "
                        "3-4 benign: what reproduces the thyroid paper's counts) or pathology (Histopathology text, "
                        "else the FNAC Bethesda category: II benign, V-VI malignant); patients without one are "
                        "skipped")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise NnunetMtlError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")


def target_classes(target: str) -> tuple[str, ...]:
    """The classes of a thyroid target (the same for ThyroidXL and AIMI, so one can be the other's test set)."""
    check_target(target)
    return TIRADS_CLASSES if target == "tirads" else MALIGNANCY


# --- thyroid values (shared with the AIMI converter) ---------------------------------------------------------
def _text(value) -> str:
    return "" if value is None else str(value).strip()


def tirads_class(value) -> str | None:
    """'TR1'..'TR5' from an ACR TI-RADS level written as 3, 3.0, '3', 'TR3', 'TI-RADS 3'; None otherwise."""
    match = re.fullmatch(r"(?:ti-?rads|tr)?\s*([0-9]+(?:\.0+)?)", _text(value).lower())
    if not match:
        return None
    level = int(float(match.group(1)))
    return f"TR{level}" if 1 <= level <= 5 else None


def histopathology_class(value) -> str | None:
    """benign / malignant from a histopathology diagnosis text (see :data:`MALIGNANT_WORDS`); None if the text
    names neither or both."""
    text = _text(value).lower()
    malignant = any(re.search(rf"(?<![a-z]){re.escape(w)}", text) for w in MALIGNANT_WORDS)
    benign = any(w in text for w in BENIGN_WORDS)
    if malignant != benign:
        return "malignant" if malignant else "benign"
    return None


def bethesda_category(value) -> int | None:
    """The Bethesda category 1..6 of an FNAC cell: 2, '2', 'II', 'Bethesda V', 'Benign', ...; None otherwise."""
    text = _text(value).lower()
    text = re.sub(r"^(?:bethesda|tbsrtc|category|cat\.?)\s*", "", text)
    match = re.fullmatch(r"([0-9]+)(?:\.0+)?|(i{1,3}|iv|vi?)", text)
    if match:
        number = int(match.group(1)) if match.group(1) else ROMAN[match.group(2)]
        return number if number in BETHESDA_CLASS else None
    for words, number in BETHESDA_TEXT:
        if re.search(rf"(?<![a-z]){re.escape(words)}(?![a-z])", text):
            return number
    return None


# --- ThyroidXL --------------------------------------------------------------------------------------------
def _load_info(root: Path) -> dict:
    path = root / INFO_FILE
    if not path.is_file():
        raise NnunetMtlError(f"{root}: no {INFO_FILE}; expected the ThyroidXL folder: {LAYOUT}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NnunetMtlError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:80]}); expected the "
                             f"ThyroidXL patient records")
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise NnunetMtlError(f"{path} is not an object of patient records; expected "
                             "{\"00000058\": {\"age\": ..., \"nodule_1\": {...}}, ...}")
    return {str(k).strip(): v for k, v in info.items()}


def _nodules(record: dict) -> list[tuple[str, dict]]:
    """The non-empty nodule_k records in k order."""
    keys = [k for k in record if re.fullmatch(r"nodule_\d+", str(k)) and isinstance(record[k], dict) and record[k]]
    return [(k, record[k]) for k in sorted(keys, key=lambda k: int(k.split("_")[1]))]


class _Patient:
    """One patient record read once: class per target (or the reason there is none), clinical columns; bad values
    reported once per patient, not once per image."""

    def __init__(self, pid: str, record: dict, report: ConversionReport, target: str,
                 malignancy_from: str = "conclusion"):
        ref = f"patient {pid}"
        nodules = _nodules(record)
        self.extra_nodules = max(0, len(nodules) - 1)
        key, nodule = nodules[0] if nodules else ("", {})
        clinical: dict = {}
        for k, v in record.items():
            if k == "images" or re.fullmatch(r"nodule_\d+", str(k)) or isinstance(v, (dict, list)):
                continue
            col = column_name(k)
            if col == "age":
                v = report.number(ref, "age", v, low=AGE_RANGE[0], high=AGE_RANGE[1], integer=True)
            elif col == "gender":
                clinical["sex"] = SEX_CODES.get(_text(v).lower(), "")
                if not is_missing(v) and not clinical["sex"]:
                    report.bad_value(ref, "gender", v, "1 (male) or 2 (female)")
            elif col == "conclusion":
                col = "conclusion_code"
            clinical[col] = v
        clinical["nodule_record"] = key
        clinical["nodule_records"] = len(nodules)
        for k, v in nodule.items():
            col = column_name(k)
            clinical["nodule_conclusion" if col == "conclusion" else
                     col if col not in clinical else f"nodule_{col}"] = v
        tirads = tirads_class(nodule.get("TIRADS"))
        if not is_missing(nodule.get("TIRADS")) and tirads is None:
            report.bad_value(ref, "TIRADS", nodule.get("TIRADS"), "a TI-RADS level 1-5")
        clinical["tirads"] = int(tirads[2:]) if tirads else ""  # the level as a number; bad values left empty
        histo, fnac = nodule.get("Histopathology"), nodule.get("FNAC")
        histo_class = histopathology_class(histo)
        if not is_missing(histo) and histo_class is None:
            report.bad_value(ref, "Histopathology", histo, "a diagnosis naming a benign or a malignant lesion")
        bethesda = bethesda_category(fnac)
        if not is_missing(fnac) and bethesda is None:
            report.bad_value(ref, "FNAC", fnac, "a Bethesda category I-VI")
        clinical["bethesda"] = bethesda or ""
        malignancy = histo_class or (BETHESDA_CLASS.get(bethesda) if bethesda else None)
        code = report.number(ref, "conclusion", record.get("conclusion"), integer=True) \
            if "conclusion" in record else None
        self.publisher_class = CONCLUSION_CODES.get(code)
        if "conclusion" in record and not is_missing(record.get("conclusion")) and self.publisher_class is None:
            report.bad_value(ref, "conclusion", record.get("conclusion"), "a conclusion code 1-4")
        self.pathology_class = malignancy
        if malignancy_from == "conclusion":
            malignancy = self.publisher_class
            clinical["label_source"] = "conclusion" if malignancy else ""
        else:
            clinical["label_source"] = ("histopathology" if histo_class else "FNAC" if malignancy else "")
        self.malignancy = malignancy
        self.clinical = clinical
        if not nodules:
            self.class_name, self.reason = None, f"patient {pid} has no nodule record in {INFO_FILE}"
        elif target == "tirads":
            self.class_name = tirads
            self.reason = None if tirads else (f"{key}.TIRADS {nodule.get('TIRADS')!r} of patient {pid}: expected "
                                               f"a TI-RADS level 1-5")
        elif malignancy_from == "conclusion":
            self.class_name = malignancy
            self.reason = None if malignancy else (
                f"patient {pid}: conclusion {record.get('conclusion')!r} is not a code 1-4; expected 1-2 (malignant) "
                f"or 3-4 (benign), or --malignancy-from pathology")
        else:
            self.class_name = malignancy
            self.reason = None if malignancy else (
                f"patient {pid}: neither Histopathology ({histo!r}) nor FNAC ({fnac!r}) gives benign / malignant; "
                f"expected a diagnosis or Bethesda II, V or VI")


def _image_files(folder: Path) -> list[Path]:
    return [p for p in list_files(folder, "*") if p.suffix.lower() in IMAGE_SUFFIXES]


def thyroid_xl_cases(source, report: ConversionReport, *, target: str = "tirads",
                     malignancy_from: str = "conclusion"):
    """The ThyroidXL cases, train then test, by file name (a generator of :class:`Case` / :class:`Skipped`)."""
    check_target(target)
    if malignancy_from not in MALIGNANCY_SOURCES:
        raise NnunetMtlError(f"--malignancy-from {malignancy_from!r}: expected one of {', '.join(MALIGNANCY_SOURCES)}")
    root = find_layout(source, ["train/", "test/", "stats/"], dataset="ThyroidXL", expected=LAYOUT)
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            if not (root / split / sub).is_dir():
                raise NnunetMtlError(f"{root}: no {split}/{sub}/ folder; expected the ThyroidXL folder: {LAYOUT}")
    info = _load_info(root)
    report.note("the trailing _K of a file name is read as an image counter; the patient's first nodule record "
                "describes all its images (the publisher: one nodule per image, the most suspicious one)")
    report.note("ThyroidXL publishes no pixel size: spacing left empty (HD95 in pixels)")
    patients: dict[str, _Patient] = {}
    seen = {"train": set(), "test": set()}
    disagree = []
    for split in ("train", "test"):
        masks = {p.stem: p for p in _image_files(root / split / "masks")}
        for image in _image_files(root / split / "images"):
            pid = image.stem.split("_")[0]
            seen[split].add(pid)
            case_id = f"ThyroidXL_{safe_id(image.stem, '-')}"
            record = info.get(pid)
            if record is None:
                yield Skipped(case_id, f"patient {pid} has no record in {INFO_FILE}; its class is unknown")
                continue
            if pid not in patients:
                patients[pid] = _Patient(pid, record, report, target, malignancy_from)
            patient = patients[pid]
            if patient.class_name is None:
                yield Skipped(case_id, patient.reason)
                continue
            if target == "malignancy" and None not in (patient.publisher_class, patient.pathology_class) \
                    and patient.publisher_class != patient.pathology_class:
                disagree.append(pid)
            mask = masks.get(image.stem, root / split / "masks" / image.name)  # missing: skipped by the loader
            clinical = {"source_image": f"{split}/images/{image.name}",
                        "image_index": image.stem.rsplit("_", 1)[-1] if "_" in image.stem else "",
                        **patient.clinical}
            yield Case(case_id, patient.class_name, patient_id=pid, image=image, masks=(mask,), split=split,
                       clinical=clinical, source=f"{split}/images/{image.name}")
    both = seen["train"] & seen["test"]
    if both:
        report.note(f"{len(both)} patient(s) have images in both train/ and test/ (e.g. {sorted(both)[0]}): the "
                    f"official split is not patient-disjoint for them")
    extra = sum(1 for p in patients.values() if p.extra_nodules)
    if extra:
        report.note(f"{extra} patient(s) have more than one nodule record; the first (nodule_1) labels their images")
    if disagree:
        unique = sorted(set(disagree))
        used = "the conclusion code" if malignancy_from == "conclusion" else "the Histopathology / FNAC class"
        report.note(f"{len(unique)} patient(s) whose Histopathology / FNAC class differs from the record's "
                    f"'conclusion' code (e.g. {unique[0]}); {used} is used (--malignancy-from {malignancy_from})")
    if target == "malignancy":
        malignant = {split: len({c for c, p in patients.items() if p.malignancy == "malignant" and c in seen[split]})
                     for split in ("train", "test")}
        report.note(f"malignant patients (--malignancy-from {malignancy_from}): {malignant['train']} with train "
                    f"images, {malignant['test']} with test images (the thyroid paper, by the conclusion code: "
                    f"877 / 353)")


def convert_thyroid_xl(source, options: ConvertOptions, *, target: str = "tirads",
                       malignancy_from: str = "conclusion", raw_root=None) -> ConversionReport:
    """Convert ThyroidXL; returns the report (``report.path`` is the dataset folder)."""
    return convert_source("ThyroidXL", source, lambda report: thyroid_xl_cases(source, report, target=target,
                                                                               malignancy_from=malignancy_from),
                          options, classes=target_classes(target), raw_root=raw_root, chunksize=8,
                          description=f"ThyroidXL (Duong Viet et al., MICCAI 2025), target {target}"
                                      + (f" (from the {malignancy_from})" if target == "malignancy" else "")
                                      + ", converted by nnunet_mtl")
