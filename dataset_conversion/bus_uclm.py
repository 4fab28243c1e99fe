"""BUS-UCLM (breast ultrasound lesion segmentation dataset, Vallez et al., Scientific Data 2025) as published.

``nnunet_mtl convert bus-uclm SOURCE`` (alias ``BUS-UCLM``); the options every converter has are in
:mod:`dataset_conversion.options`.

Layout (the Mendeley Data download, 683 images of 38 patients)::

    SOURCE[/BUS-UCLM]/images/XXXX_NNN.png   B-mode images (some Doppler / with marks); XXXX = the patient
    SOURCE[/BUS-UCLM]/masks/XXXX_NNN.png    RGB masks of the same name: green = benign lesion, red = malignant
                                            lesion, black = normal tissue
    SOURCE[/BUS-UCLM]/INFO.csv              ';'-separated: Image;Resolution;Label;Doppler;Marks;Combined

The class comes from the mask colour (what the publishers define as ground truth); INFO.csv's ``Label`` is
cross-checked and every disagreement is reported. Yes/no columns are normalized (the file has a stray ``Y``).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dataset_conversion.common import (MALIGNANCY, Case, Skipped, SkipCase, column_name, find_layout, list_files,
                                       read_image, safe_id)
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport
from nnunet_mtl.errors import NnunetMtlError

UCLM_LAYOUT = ("images/*.png, masks/*.png with the same names (RGB: green benign, red malignant, black normal) and "
               "INFO.csv (Image;Resolution;Label;Doppler;Marks;Combined)")
UCLM_COLUMNS = ("Image", "Label")
YES_NO_COLUMNS = ("Doppler", "Marks", "Combined")
YES = frozenset({"yes", "y", "si", "sí", "s", "true", "1"})
NO = frozenset({"no", "n", "false", "0"})
PRINT_DISAGREEMENTS = 10  # listed in the note; the count is always complete


def register_converters(sources) -> None:
    """``convert bus-uclm`` (argparse subcommand with its aliases)."""
    p = add_converter(
        sources, "bus-uclm", convert_bus_uclm, aliases=["BUS-UCLM", "bus_uclm"], default_id=604,
        default_name="BUS-UCLM", help="BUS-UCLM (benign / malignant / normal breast ultrasound, 38 patients)",
        description=f"Converts BUS-UCLM as downloaded (folder with {UCLM_LAYOUT}, or its parent). The class "
                    "comes from the mask colour (green benign, red malignant, black normal); INFO.csv's Label is "
                    "cross-checked and disagreements are reported. Patient = the first four letters of the file "
                    "name. INFO.csv's columns are kept in cases.csv (yes/no columns normalized). No pixel size is "
                    "published: spacing is left empty.",
        source_help="the BUS-UCLM folder (with images/, masks/ and INFO.csv)", passed=("bmode_only",))
    p.add_argument("--bmode-only", action="store_true",
                   help="leave out the images INFO.csv marks as Doppler, with marks, or combined (the breast "
                        "consistency paper's test set: 117 images, 81 benign / 36 malignant, normal excluded)")


def mask_colour_class(path) -> str:
    """'benign' (green), 'malignant' (red) or 'normal' (black) from a BUS-UCLM mask; :class:`SkipCase` otherwise.

    A pixel is green where G >= 128 > R and red where R >= 128 > G (half the 8-bit range: robust to resampled or
    re-encoded edges, which are darker, never of the other hue). A mask with both colours has two lesions of
    different classes: one image cannot carry both, so it is skipped."""
    rgb = read_image(path)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise SkipCase(f"{path} is a grey mask; expected an RGB mask (green benign, red malignant, black normal)")
    rgb = rgb.astype(np.int32)
    if rgb.shape[2] == 4:  # transparent = black (as the writer composites RGBA masks)
        rgb = rgb[:, :, :3] * rgb[:, :, 3:] // 255
    r, g = rgb[:, :, 0], rgb[:, :, 1]
    green = int(np.count_nonzero((g >= 128) & (r < 128)))
    red = int(np.count_nonzero((r >= 128) & (g < 128)))
    if green and red:
        raise SkipCase(f"{path} has green (benign, {green} px) and red (malignant, {red} px) regions; expected "
                       f"one class per image")
    if green or red:
        return "benign" if green else "malignant"
    if rgb.max() >= 128:
        raise SkipCase(f"{path} has bright pixels that are neither green nor red; expected green (benign), red "
                       f"(malignant) or an all-black mask (normal)")
    return "normal"


def _info_table(path: Path) -> dict[str, dict]:
    """INFO.csv rows keyed by image stem. ``;``-separated (a European export); a BOM is tolerated."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=";")
            rows = list(reader)
            header = [(h or "").strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError) as e:
        raise NnunetMtlError(f"{path} is not a readable text file ({type(e).__name__}); expected the BUS-UCLM "
                             f"INFO.csv")
    missing = [c for c in UCLM_COLUMNS if c not in header]
    if missing:
        raise NnunetMtlError(f"{path} has no column {', '.join(missing)} (header {';'.join(header) or 'empty'}); "
                             f"expected Image;Resolution;Label;Doppler;Marks;Combined separated by ';'")
    table = {}
    for row in rows:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if row.get("Image"):
            table[Path(row["Image"]).stem] = row
    return table


def yes_no(report: ConversionReport, case: str, column: str, value):
    """'yes' / 'no' from Yes, Y, No, N, Si, ... (case-insensitive); empty stays empty; anything else is reported
    and left empty."""
    text = str(value or "").strip().lower()
    if not text:
        return ""
    if text in YES or text in NO:
        return "yes" if text in YES else "no"
    report.bad_value(case, column, value, "yes or no")
    return ""


def bus_uclm_cases(source, report: ConversionReport, bmode_only: bool = False):
    """The BUS-UCLM cases in file-name order (a generator of :class:`Case` / :class:`Skipped`); ``bmode_only``
    skips the images INFO.csv marks as Doppler, with marks, or combined."""
    root = find_layout(source, ["images/", "masks/", "INFO.csv"], dataset="BUS-UCLM", expected=UCLM_LAYOUT)
    sheet = list_files(root, "INFO.csv")[0]
    info = _info_table(sheet)
    report.note("BUS-UCLM publishes no pixel size: spacing empty (HD95 in pixels); patient = the first four "
                "letters of the file name")
    disagree: list[str] = []
    no_row = 0
    images = list_files(root / "images", "*.png")
    for path in images:
        stem = path.stem
        case_id = "bus_uclm_" + safe_id(stem)
        mask = root / "masks" / path.name
        if not mask.is_file():
            yield Skipped(case_id, f"{mask} does not exist; expected the mask of images/{path.name}")
            continue
        try:
            cls = mask_colour_class(mask)
        except SkipCase as e:
            yield Skipped(case_id, str(e))
            continue
        row = info.get(stem)
        clinical = {"source_image": f"images/{path.name}"}
        if row is None:
            no_row += 1
            if bmode_only:
                yield Skipped(case_id, f"images/{path.name} has no row in {sheet.name}: --bmode-only cannot tell "
                                       f"whether it is a plain B-mode image, left out")
                continue
        else:
            label = row.get("Label", "")
            if label.lower() != cls:
                disagree.append(f"{stem} (Label {label or 'empty'}, mask {cls})")
            for header, value in row.items():
                if header and header != "Image":
                    clinical[column_name(header)] = (yes_no(report, case_id, header, value)
                                                     if header in YES_NO_COLUMNS else value)
            features = [h for h in YES_NO_COLUMNS if clinical.get(column_name(h)) == "yes"]
            if bmode_only and features:
                yield Skipped(case_id, f"INFO.csv marks images/{path.name} as {', '.join(features)}: left out by "
                                       f"--bmode-only")
                continue
        # the file names start with a four-letter code per patient (38 codes for 38 patients in the paper)
        yield Case(case_id, cls, patient_id=stem[:4], image=path, masks=(mask,), lesion=cls != "normal",
                   clinical=clinical, source=f"images/{path.name}")
    for stem in sorted(set(info) - {p.stem for p in images}):
        yield Skipped(stem, f"listed in {sheet.name} but images/{stem}.png does not exist")
    if disagree:
        more = f", ... {len(disagree) - PRINT_DISAGREEMENTS} more" if len(disagree) > PRINT_DISAGREEMENTS else ""
        report.note(f"{sheet.name} Label disagrees with the mask colour for {len(disagree)} image(s); the mask "
                    f"colour is used: {', '.join(disagree[:PRINT_DISAGREEMENTS])}{more}")
    if no_row:
        report.note(f"{no_row} image(s) without a row in {sheet.name}: class from the mask, clinical columns empty")


def convert_bus_uclm(source, options: ConvertOptions, *, bmode_only: bool = False, raw_root=None) -> ConversionReport:
    """Convert BUS-UCLM (benign / malignant; ``normal`` with ``--normal include``); returns the report."""
    return convert_source("BUS-UCLM", source, lambda report: bus_uclm_cases(source, report, bmode_only), options,
                          classes=MALIGNANCY, raw_root=raw_root, description="BUS-UCLM (Vallez et al. 2025), "
                          "benign / malignant from the mask colours, converted by nnunet_mtl")
