"""TN3K (thyroid nodules, Gong et al., TRFE-Net 2021/2022) as published, with the TNCD benign / malignant labels.

``nnunet_mtl convert tn3k SOURCE`` (alias ``TN3K``); the options every converter has are in
:mod:`dataset_conversion.options`.

Layout (the TRFE-Net / Hugging Face ``TN3K.rar`` release; the label files as packaged with it by the ACL code)::

    SOURCE[/tn3k]/trainval-image/NNNN.jpg   2879 JPEG images
    SOURCE[/tn3k]/trainval-mask/NNNN.jpg    JPEG masks (0/255 with compression noise)
    SOURCE[/tn3k]/test-image/NNNN.jpg       614 JPEG images (numbered from 0000 again)
    SOURCE[/tn3k]/test-mask/NNNN.jpg
    SOURCE[/tn3k]/label4trainval.csv        no header: 'NNNN.jpg,label', 0 = benign, 1 = malignant
    SOURCE[/tn3k]/label4test.csv
    SOURCE[/tn3k]/tn3k-trainval-foldK.json  train/val folds inside trainval: not used (nnU-Net makes its own)

The published split is kept by default (``--as official``): trainval -> imagesTr, test -> imagesTs.
"""
from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.common import MALIGNANCY, Case, Skipped, find_layout, list_files, safe_id
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport
from nnunet_mtl.errors import NnunetMtlError

# published folder prefix -> split under --as official
TN3K_SPLITS = {"trainval": "train", "test": "test"}
TN3K_LAYOUT = ("trainval-image/, trainval-mask/, test-image/, test-mask/ (NNNN.jpg) and the label files "
               "label4trainval.csv, label4test.csv ('NNNN.jpg,label' without header, 0 benign, 1 malignant)")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TN3K_LABELS = {0: "benign", 1: "malignant"}


def register_converters(sources) -> None:
    """``convert tn3k`` (argparse subcommand with its alias)."""
    add_converter(
        sources, "tn3k", convert_tn3k, aliases=["TN3K"], default_id=607, default_name="TN3K",
        default_split="official",
        help="TN3K thyroid nodules (benign / malignant), published trainval / test split",
        description=f"Converts TN3K as downloaded (folder with {TN3K_LAYOUT}, or its parent). JPEG masks are "
                    "thresholded at half their maximum (compression noise removed). By default the published "
                    "split is kept (trainval -> imagesTr, test -> imagesTs). No patient ids and no pixel size are "
                    "published: each image is its own patient, spacing is left empty.",
        source_help="the TN3K folder (with trainval-image/ etc. and the label csv files)")


def file_key(name):
    """How an image is matched to its label row: the number of '0012.jpg' / '0012' / '12' (label files written by
    spreadsheets lose zero padding), else the file stem."""
    text = str(name).strip()
    stem = Path(text).stem if text.lower().endswith(IMAGE_SUFFIXES) else text
    return int(stem) if stem.isdigit() else stem


def _label_file(root: Path, prefix: str) -> Path:
    """label4<prefix>.csv, or the one other .csv whose name names the folder (copies renamed by other packagers)."""
    exact = list_files(root, f"label4{prefix}.csv")
    if exact:
        return exact[0]
    sheets = list_files(root, "*.csv")
    others = [p for p in sheets if re.search(rf"(^|[^a-z]|4){prefix}([^a-z]|$)", p.stem.lower())]
    if len(others) == 1:
        return others[0]
    found = ", ".join(p.name for p in sheets) or "none"
    raise NnunetMtlError(f"{root}: no label file for {prefix}-image/ (.csv files: {found}); expected "
                         f"label4{prefix}.csv with rows 'NNNN.jpg,label' (0 benign, 1 malignant)")


def read_label_file(path: Path) -> dict:
    """{file key: [label cells]} of a headerless 'name,label' file (a header line, a BOM and blank lines are
    tolerated; a name listed twice keeps all its labels, so a conflict can be reported)."""
    labels: dict = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            name, _, label = line.strip().rpartition(",")
            if i == 0 and not re.fullmatch(r"\s*\d+(\.0*)?\s*", label):
                continue  # a header row such as 'name,label'
            labels.setdefault(file_key(name), []).append(label.strip())
    return labels


def _class_of(cells: list[str]) -> str | None:
    values = {c.split(".")[0] for c in cells}  # '1' and '1.0' are one label
    if len(values) != 1 or not next(iter(values)).isdigit():
        return None
    return TN3K_LABELS.get(int(next(iter(values))))


def tn3k_cases(source, report: ConversionReport):
    """The TN3K cases, trainval then test, in file order (a generator of :class:`Case` / :class:`Skipped`)."""
    required = [f"{p}-{kind}/" for p in TN3K_SPLITS for kind in ("image", "mask")] + ["*.csv"]
    root = find_layout(source, required, dataset="TN3K", expected=TN3K_LAYOUT)
    label_files = {prefix: _label_file(root, prefix) for prefix in TN3K_SPLITS}  # both checked before any work
    report.note("TN3K publishes no patient ids and no pixel size: each image is its own patient, spacing empty "
                "(HD95 in pixels)")
    for prefix, split in TN3K_SPLITS.items():
        sheet = label_files[prefix]
        labels = read_label_file(sheet)
        masks = {p.stem: p for p in list_files(root / f"{prefix}-mask", "*") if p.suffix.lower() in IMAGE_SUFFIXES}
        images = [p for p in list_files(root / f"{prefix}-image", "*") if p.suffix.lower() in IMAGE_SUFFIXES]
        for path in images:
            case_id = f"tn3k_{prefix}_" + safe_id(path.stem)
            cells = labels.get(file_key(path.name))
            if cells is None:
                yield Skipped(case_id, f"{prefix}-image/{path.name} has no row in {sheet.name}; its class is unknown")
                continue
            cls = _class_of(cells)
            if cls is None:
                yield Skipped(case_id, f"label {'/'.join(cells)!r} in {sheet.name}: expected 0 (benign) or 1 "
                                       f"(malignant)")
                continue
            mask = masks.get(path.stem)
            if mask is None:
                yield Skipped(case_id, f"{prefix}-mask/{path.stem}.jpg does not exist; expected the mask of "
                                       f"{prefix}-image/{path.name}")
                continue
            yield Case(case_id, cls, patient_id=case_id, image=path, masks=(mask,), split=split,
                       clinical={"source_image": f"{prefix}-image/{path.name}", "label": cells[0]},
                       source=f"{prefix}-image/{path.name}")
        have = {file_key(p.name) for p in images}
        for key in sorted((k for k in labels if k not in have), key=str):
            yield Skipped(f"{sheet.name} {key}", f"listed but {prefix}-image/ has no such image")


def convert_tn3k(source, options: ConvertOptions, *, raw_root=None) -> ConversionReport:
    """Convert TN3K (benign / malignant; published split with ``split='official'``); returns the report."""
    return convert_source("TN3K", source, lambda report: tn3k_cases(source, report), options, classes=MALIGNANCY,
                          raw_root=raw_root, description="TN3K (Gong et al. 2021) thyroid nodules, benign / "
                          "malignant, published trainval / test split, converted by nnunet_mtl")
