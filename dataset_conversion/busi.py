"""BUSI (Breast Ultrasound Images Dataset, Al-Dhabyani et al., Data in Brief 2020) as published.

``nnunet_mtl convert busi SOURCE`` (alias ``BUSI``); the options every converter has are in
:mod:`dataset_conversion.options`.

Layout (the Kaggle / Cairo University download)::

    SOURCE/Dataset_BUSI_with_GT/benign/benign (N).png              RGB image (some with coloured calliper marks)
    SOURCE/Dataset_BUSI_with_GT/benign/benign (N)_mask.png         its lesion mask (mostly 1-bit, a few RGBA)
    SOURCE/Dataset_BUSI_with_GT/benign/benign (N)_mask_K.png       further masks of the same image (K = 1, 2)
    SOURCE/Dataset_BUSI_with_GT/malignant/malignant (N)[_mask[_K]].png
    SOURCE/Dataset_BUSI_with_GT/normal/normal (N)[_mask].png       all-zero RGB masks

780 images (437 benign / 210 malignant / 133 normal). The folder is the class; there is no spreadsheet, no patient
id and no pixel size. ``benign (433).png`` and ``malignant (145).png`` are the same image: the shared duplicate
policy drops both (ambiguous label) and reports them. Other scans are filed under both classes with a different
crop and outline (near-identical, dHash distance 0, not byte-identical): the report names them as label conflicts,
kept unless ``--label-conflicts drop`` (:mod:`dataset_conversion.driver`).
"""
from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.common import MALIGNANCY, Case, Skipped, UniqueNames, find_layout, list_files
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport

BUSI_FOLDERS = MALIGNANCY + ("normal",)
BUSI_LAYOUT = ("Dataset_BUSI_with_GT/{benign,malignant,normal}/ holding 'benign (N).png' with its "
               "'benign (N)_mask.png' (and '_mask_1.png', '_mask_2.png')")
# "benign (12).png", "benign (12)_mask.png", "benign (12)_mask_1.png"; case-insensitive and the space optional
# (re-packaged copies change the case of the extension or drop the space)
BUSI_NAME = re.compile(r"(?P<cls>benign|malignant|normal) ?\((?P<number>\d+)\)(?P<mask>_mask(?:_(?P<k>\d+))?)?\.png",
                       re.IGNORECASE)


def register_converters(sources) -> None:
    """``convert busi`` (argparse subcommand with its alias)."""
    add_converter(
        sources, "busi", convert_busi, aliases=["BUSI"], default_id=603, default_name="BUSI",
        help="BUSI, Dataset_BUSI_with_GT (benign / malignant / normal breast ultrasound)",
        description=f"Converts BUSI as downloaded (folder with {BUSI_LAYOUT}, or its parent). The folder is the "
                    "class. The masks of one image are merged; RGB images (some with coloured marks) are "
                    "converted to grey. No patient ids and no pixel size are published: each image is its own "
                    "patient and spacing is left empty. The image filed as both benign (433) and malignant (145) "
                    "is dropped as ambiguous and reported; near-identical scans filed under both classes are "
                    "listed as label conflicts (--label-conflicts drop drops them).",
        source_help="the Dataset_BUSI_with_GT folder (or the folder holding it)")


def _busi_files(folder: Path, cls: str):
    """{number: image path}, {number: [mask paths, main mask first]} and the files that do not fit the naming.
    Two files that name the same image or mask once case and leading zeros are ignored ('benign (1).png' and
    'benign (01).png', or 'Benign (1).PNG') are an error naming both: which mask belongs to which is unknowable."""
    images: dict[int, Path] = {}
    masks: dict[int, list[tuple[int, Path]]] = {}
    odd: list[tuple[str, str]] = []
    seen = UniqueNames(f"BUSI folder {folder}", "image or mask number (leading zeros and letter case aside)")
    for path in list_files(folder, "*.png"):  # not Thumbs.db, .DS_Store, ...: not part of the dataset
        m = BUSI_NAME.fullmatch(path.name)
        if m is None:
            odd.append((f"{cls}/{path.name}", f"unexpected file name; expected '{cls} (N).png' or "
                                              f"'{cls} (N)_mask[_K].png'"))
        elif m["cls"].lower() != cls:
            odd.append((f"{cls}/{path.name}", f"a {m['cls'].lower()} file in {cls}/; expected only {cls} files "
                                              f"there (the folder is the class)"))
        elif m["mask"]:
            # _mask.png first (k = 0), then _mask_1, _mask_2: the merge does not depend on the order, the messages do
            seen.add((int(m["number"]), int(m["k"] or 0)), path.name,
                     f"mask {int(m['k'] or 0)} of image {int(m['number'])}")
            masks.setdefault(int(m["number"]), []).append((int(m["k"] or 0), path))
        else:
            seen.add(int(m["number"]), path.name, f"image {int(m['number'])}")
            images[int(m["number"])] = path
    return images, {n: [p for _, p in sorted(v)] for n, v in masks.items()}, odd


def busi_cases(source, report: ConversionReport, normal: str = "include"):
    """The BUSI cases, class by class in number order (a generator of :class:`Case` / :class:`Skipped`). With
    ``normal`` "exclude" the normal/ folder is not required (a copy without it converts): its images would be left
    out anyway; when it is there they are read and reported as excluded."""
    required = BUSI_FOLDERS if normal == "include" else MALIGNANCY
    root = find_layout(source, [f"{c}/" for c in required], dataset="BUSI", expected=BUSI_LAYOUT)
    report.note("BUSI publishes no patient ids and no pixel size: each image is its own patient (a patient-level "
                "split cannot group repeat images of one woman; see the near-duplicates), spacing empty (HD95 in "
                "pixels)")
    merged = 0
    for cls in BUSI_FOLDERS:
        if not (root / cls).is_dir():  # normal/, not required with --normal exclude
            report.note(f"no {cls}/ folder in {root}: its images are not converted (--normal exclude leaves them out)")
            continue
        images, masks, odd = _busi_files(root / cls, cls)
        for ref, reason in odd:
            yield Skipped(ref, reason)
        for number in sorted(images):
            path = images[number]
            case_id = f"busi_{cls}_{number:04d}"
            own = tuple(masks.get(number, ()))
            lesion = cls != "normal"
            if lesion and not own:
                yield Skipped(case_id, f"{cls}/{path.name} has no mask; expected '{path.stem}_mask.png' next to it")
                continue
            merged += len(own) > 1
            yield Case(case_id, cls, patient_id=case_id, image=path, masks=own, lesion=lesion,
                       clinical={"source_image": f"{cls}/{path.name}", "masks": len(own)},
                       source=f"{cls}/{path.name}")
        for number in sorted(set(masks) - set(images)):
            for mask in masks[number]:
                yield Skipped(f"{cls}/{mask.name}", f"a mask without its image; expected '{cls} ({number}).png'")
    if merged:
        report.note(f"{merged} image(s) with several masks: merged into one lesion map")


def convert_busi(source, options: ConvertOptions, *, raw_root=None) -> ConversionReport:
    """Convert BUSI (benign / malignant; ``normal`` with ``--normal include``); returns the report
    (``report.path`` is the dataset folder)."""
    return convert_source("BUSI", source, lambda report: busi_cases(source, report, options.normal), options,
                          classes=MALIGNANCY,
                          raw_root=raw_root, description="BUSI, Dataset_BUSI_with_GT (Al-Dhabyani et al. 2020), "
                                                         "benign / malignant, converted by nnunet_mtl")
