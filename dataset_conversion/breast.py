"""Breast-ultrasound datasets as published: BrEaST-Lesions_USG and UDIAT Dataset B.

``nnunet_mtl convert breast SOURCE`` (alias ``BrEaST``) and ``nnunet_mtl convert udiat SOURCE`` (alias
``UDIAT``); the options every converter has are in :mod:`dataset_conversion.options`.

BrEaST-Lesions_USG (Pawlowska et al., Scientific Data 2024)::

    SOURCE/BrEaST-Lesions_USG-images_and_masks/caseNNN.png           RGBA B-mode image, transparent outside the scan
    SOURCE/BrEaST-Lesions_USG-images_and_masks/caseNNN_tumor.png     RGBA mask of the lesion
    SOURCE/BrEaST-Lesions_USG-images_and_masks/caseNNN_otherK.png    masks of other findings: not the lesion, ignored
    SOURCE/BrEaST-Lesions-USG-clinical-data-*.xlsx                   one row per case: Image_filename,
        Mask_tumor_filename, Pixel_size (cm), Age, BI-RADS descriptors, BIRADS, Diagnosis, Classification, ...

UDIAT Dataset B (Yap et al., IEEE JBHI 2018)::

    SOURCE[/BUS]/original/NNNNNN.png   8-bit grey images
    SOURCE[/BUS]/GT/NNNNNN.png         1-bit or 0/255 masks
    SOURCE[/BUS]/DatasetB.xlsx         Image, Type (Benign/Malignant), Diagnosis (code; legend in the same sheet)
"""
from __future__ import annotations

from pathlib import Path

from dataset_conversion.common import (MALIGNANCY, Case, Skipped, column_name, find_layout, list_files, read_xlsx_table,
                                       spacing_mm, split_cell)
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport
from nnunet_mtl.errors import NnunetMtlError

TARGETS = ("malignancy", "birads")
# BI-RADS assessment categories of a lesion (1 = negative, i.e. a normal image, is the 'normal' class; 0 and 6
# are not assessments of the image's appearance)
BIRADS_CATEGORIES = ("2", "3", "4a", "4b", "4c", "5")

BREAST_FOLDER = "BrEaST-Lesions_USG-images_and_masks"
BREAST_LAYOUT = (f"{BREAST_FOLDER}/ (caseNNN.png, caseNNN_tumor.png, caseNNN_otherK.png) and the clinical "
                 f"BrEaST-Lesions-USG-clinical-data-*.xlsx next to it")
BREAST_COLUMNS = ("Image_filename", "Mask_tumor_filename", "Classification", "Pixel_size")
# Pixel_size is in cm; a breast probe's pixel is ~0.05-0.2 mm, so [1e-4, 0.1] cm only rejects wrong units / typos
PIXEL_SIZE_CM_RANGE = (1e-4, 0.1)
AGE_RANGE = (0, 120)

UDIAT_LAYOUT = "original/NNNNNN.png, GT/NNNNNN.png and DatasetB.xlsx (columns Image, Type, Diagnosis)"


def register_converters(sources) -> None:
    """``convert breast`` and ``convert udiat`` (argparse subcommands with their aliases)."""
    b = add_converter(
        sources, "breast", convert_breast, aliases=["BrEaST"], default_id=601, default_name="BrEaST",
        passed=("target",),
        help="BrEaST-Lesions_USG (benign / malignant breast lesions, BI-RADS, clinical data)",
        description="Converts BrEaST-Lesions_USG as downloaded (folder with "
                    f"{BREAST_LAYOUT}). Only the tumor mask is the lesion; the 'other' masks are ignored. "
                    "RGBA images are composited onto black. Spacing from Pixel_size (cm). The clinical columns "
                    "are kept in cases.csv. The sheet has no patient column: each case is its own patient.",
        source_help="the downloaded BrEaST folder")
    b.add_argument("--target", choices=TARGETS, default="malignancy",
                   help="the class: malignancy (default; benign / malignant, from Classification) or the BI-RADS "
                        f"category ({', '.join(BIRADS_CATEGORIES)}) as classes")
    add_converter(
        sources, "udiat", convert_udiat, aliases=["UDIAT"], default_id=602, default_name="UDIAT",
        help="UDIAT Dataset B (benign / malignant breast lesions)",
        description=f"Converts UDIAT Dataset B as distributed (folder with {UDIAT_LAYOUT}, or its parent). "
                    "Image ids keep their zero padding even when the sheet stores them as numbers. No pixel size "
                    "and no patient ids are published: spacing is left empty and each image is its own patient.",
        source_help="the UDIAT Dataset B folder (or the BUS folder inside it)")


# --- BrEaST -------------------------------------------------------------------------------------------------
def _find_breast_sheet(root: Path) -> Path:
    """The clinical xlsx: the one whose header has BrEaST's columns (the file name carries a release date)."""
    for path in list_files(root, "*.xlsx"):
        if path.name.startswith("~$"):  # an Excel lock file
            continue
        try:
            read_xlsx_table(path, BREAST_COLUMNS, dataset="BrEaST")
            return path
        except NnunetMtlError:
            continue
    raise NnunetMtlError(f"{root}: no .xlsx with the columns {', '.join(BREAST_COLUMNS)}; expected the BrEaST "
                         f"clinical data sheet (BrEaST-Lesions-USG-clinical-data-*.xlsx)")


def breast_cases(source, report: ConversionReport, *, target: str = "malignancy"):
    """The BrEaST cases in the sheet's order (a generator of :class:`Case` / :class:`Skipped`)."""
    root = find_layout(source, [f"{BREAST_FOLDER}/", "*.xlsx"], dataset="BrEaST", expected=BREAST_LAYOUT)
    images = root / BREAST_FOLDER
    sheet = _find_breast_sheet(root)
    rows = read_xlsx_table(sheet, BREAST_COLUMNS, dataset="BrEaST")
    report.note(f"clinical data from {sheet.name}; the sheet has no patient column: each case is its own patient")
    listed: set[str] = set()
    for row in rows:
        names = split_cell(row.get("Image_filename"))
        listed.update(names + split_cell(row.get("Mask_tumor_filename")) + split_cell(row.get("Mask_other_filename")))
        ref = names[0] if names else f"{sheet.name} CaseID {row.get('CaseID')}"
        if len(names) != 1:
            yield Skipped(ref, f"Image_filename {row.get('Image_filename')!r}: expected exactly one image per row")
            continue
        stem = Path(names[0]).stem
        case_id = f"BrEaST_{stem}"
        classification = str(row.get("Classification") or "").strip().lower()
        if classification not in MALIGNANCY + ("normal",):
            yield Skipped(case_id, f"Classification {row.get('Classification')!r}: expected benign, malignant or "
                                   f"normal")
            continue
        lesion = classification != "normal"
        birads = str(row.get("BIRADS") or "").strip().lower()
        if not lesion:
            class_name = "normal"
        elif target == "birads":
            if birads not in BIRADS_CATEGORIES:
                yield Skipped(case_id, f"BIRADS {row.get('BIRADS')!r} is not a lesion category; expected one of "
                                       f"{', '.join(BIRADS_CATEGORIES)}")
                continue
            class_name = f"birads_{birads}"
        else:
            class_name = classification
        # only the tumor mask is the lesion; several tumor masks of one image are merged
        masks = tuple(images / m for m in split_cell(row.get("Mask_tumor_filename")))
        if lesion and not masks:
            yield Skipped(case_id, f"no Mask_tumor_filename in {sheet.name}; expected the lesion mask of a "
                                   f"{classification} case")
            continue
        pixel_cm = report.number(case_id, "Pixel_size", row.get("Pixel_size"), low=PIXEL_SIZE_CM_RANGE[0],
                                 high=PIXEL_SIZE_CM_RANGE[1])
        clinical = {}  # every published column (Image_filename names the source file)
        for header, value in row.items():
            col = column_name(header)
            if header == "CaseID":
                col = "source_case_id"  # "case_id" is the contract's column
            elif header == "Pixel_size":
                col, value = "pixel_size_cm", pixel_cm
            elif header == "Age":
                value = report.number(case_id, "Age", value, low=AGE_RANGE[0], high=AGE_RANGE[1], integer=True)
            elif header == "BIRADS":
                value = birads
            clinical[col] = value
        yield Case(case_id, class_name, patient_id=case_id, image=images / names[0], masks=masks, lesion=lesion,
                   spacing_mm=spacing_mm(pixel_cm, "cm"), clinical=clinical, source=names[0])
    # files the sheet does not mention: reported, not converted (the sheet holds the classes)
    unlisted = [p.name for p in list_files(images, "*.png") if p.name not in listed]
    for name in unlisted:
        yield Skipped(name, f"not listed in {sheet.name}; expected a row for every file")
    others = len(list_files(images, "*_other*.png"))
    if others:
        report.note(f"{others} 'other' masks (other findings, not the lesion) ignored")


def breast_classes(target: str) -> tuple[str, ...]:
    if target not in TARGETS:
        raise NnunetMtlError(f"--target {target!r}: expected malignancy or birads")
    return MALIGNANCY if target == "malignancy" else tuple(f"birads_{c}" for c in BIRADS_CATEGORIES)


def convert_breast(source, options: ConvertOptions, *, target: str = "malignancy", raw_root=None
                   ) -> ConversionReport:
    """Convert BrEaST; returns the report (``report.path`` is the dataset folder)."""
    return convert_source("BrEaST", source, lambda report: breast_cases(source, report, target=target), options,
                          classes=breast_classes(target), raw_root=raw_root,
                          description=f"BrEaST-Lesions_USG (Pawlowska et al. 2024), target {target}, converted by "
                                      f"nnunet_mtl")


# --- UDIAT Dataset B --------------------------------------------------------------------------------------
def _image_number(value):
    """The sheet's Image cell as an int: '000012', 12 and 12.0 all name original/000012.png (a spreadsheet that
    read the ids as numbers lost the zero padding)."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() and number >= 0 else None


def _udiat_legend(sheet: Path) -> dict[str, str]:
    """Diagnosis code -> name from the legend the sheet carries beside the table (a cell 'Llegend' / 'Legend', then
    code / name pairs below it in two unnamed columns); {} when absent."""
    import openpyxl

    book = openpyxl.load_workbook(sheet, read_only=True, data_only=True)
    try:
        grid = [list(r) for r in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if isinstance(value, str) and value.strip().lower() in ("legend", "llegend"):
                pairs = ((r[j], r[j + 1] if j + 1 < len(r) else None) for r in grid[i + 1:] if j < len(r))
                return {str(c).strip().upper(): str(n).strip() for c, n in pairs
                        if isinstance(c, str) and isinstance(n, str) and c.strip()}
    return {}


def udiat_cases(source, report: ConversionReport):
    """The UDIAT cases in the sheet's order (a generator of :class:`Case` / :class:`Skipped`)."""
    root = find_layout(source, ["original/", "GT/", "*.xlsx"], dataset="UDIAT Dataset B", expected=UDIAT_LAYOUT)
    sheets = [p for p in list_files(root, "*.xlsx") if not p.name.startswith("~$")]  # not Excel lock files
    sheet = next((p for p in sheets if p.name.lower() == "datasetb.xlsx"), sheets[0])
    # the sheet's own header row ("Image" etc.) is read with the other columns; the legend sits beside the table
    rows = read_xlsx_table(sheet, ("Image", "Type"), dataset="UDIAT Dataset B")
    legend = _udiat_legend(sheet)
    listed = {_image_number(r.get("Image")) for r in rows}
    files = {}
    for path in list_files(root / "original", "*.png"):
        number = _image_number(path.stem)
        if number is not None:
            files[number] = path
    report.note("UDIAT publishes no patient ids and no pixel size: each image is its own patient, spacing empty "
                "(HD95 in pixels)")
    used: set[int] = set()
    for row in rows:
        number = _image_number(row.get("Image"))
        if number is None:
            if row.get("Image") not in (None, ""):
                yield Skipped(f"{sheet.name} Image {row.get('Image')!r}", "not an image number; expected e.g. 000001")
            continue
        image = files.get(number)
        case_ref = f"UDIAT_{number:06d}" if image is None else f"UDIAT_{image.stem}"
        if image is None:
            yield Skipped(case_ref, f"{root / 'original' / f'{number:06d}.png'} does not exist; the sheet lists it")
            continue
        if number in used:
            yield Skipped(case_ref, f"listed twice in {sheet.name}; the first row is used")
            continue
        used.add(number)
        kind = str(row.get("Type") or "").strip().lower()
        if kind not in MALIGNANCY:
            yield Skipped(case_ref, f"Type {row.get('Type')!r}: expected Benign or Malignant")
            continue
        code = str(row.get("Diagnosis") or "").strip()
        clinical = {"source_image": f"original/{image.name}", "type": row.get("Type"), "diagnosis": code,
                    "diagnosis_name": legend.get(code.upper(), "")}
        yield Case(case_ref, kind, patient_id=case_ref, image=image, masks=(root / "GT" / image.name,),
                   clinical=clinical, source=f"original/{image.name}")
    for number, path in sorted(files.items()):
        if number not in listed:
            yield Skipped(f"UDIAT_{path.stem}", f"original/{path.name} has no row in {sheet.name}; its class is "
                                                f"unknown")


def convert_udiat(source, options: ConvertOptions, *, raw_root=None) -> ConversionReport:
    """Convert UDIAT Dataset B; returns the report (``report.path`` is the dataset folder)."""
    return convert_source("UDIAT", source, lambda report: udiat_cases(source, report), options, classes=MALIGNANCY,
                          raw_root=raw_root, description="UDIAT Dataset B (Yap et al. 2018), benign / malignant, "
                                                         "converted by nnunet_mtl")
