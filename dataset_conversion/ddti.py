"""DDTI (Digital Database of Thyroid Ultrasound Images, Pedraza et al., SPIE 2015) as published.

``nnunet_mtl convert ddti SOURCE`` (alias ``DDTI``); the options every converter has are in
:mod:`dataset_conversion.options`.

Layout (the CIM@LAB download, also mirrored on Kaggle; one flat folder)::

    SOURCE[/DDTI]/N.xml     one case (patient) N: <case><number/><age/><sex/><composition/><echogenicity/>
                            <margins/><calcifications/><tirads>4a</tirads><reportbacaf/><reporteco/>
                            <mark><image>M</image><svg>[{"points": [{"x": .., "y": ..}, ...],
                            "regionType": "freehand"}, ...]</svg></mark> ...</case>
    SOURCE[/DDTI]/N_M.jpg   image M of case N

There are no mask files: the lesion map is the union of the polygons of the ``<mark>`` elements whose ``<image>`` is
M, rasterized at the image's size. TI-RADS is the Kwak et al. scale (2, 3, 4a, 4b, 4c, 5).

Three things of the published copy are handled on purpose:

- ``<reportbacaf>`` (the cytology report) is empty in all 390 XML files, so the copy has no pathology. A class
  that claims malignancy must come from pathology: ``--target malignancy`` uses the report, skips images without
  one, and refuses a source where no report names one (before anything is written), unless
  ``--malignancy-from-tirads`` asks for TI-RADS 2-3 benign / 4a-5 malignant, which cases.csv's ``class_source``
  then names (:data:`TIRADS_MAPPING`).
- Eight ``<svg>`` fields are cut at exactly 2,500 characters; their points are read up to the cut. In four of
  them (54_1, 127_1, 176_1, 203_1) an outline stops part-way, so filling it would close it with a straight edge of
  74-148 px and give a partial mask: an outline whose last point is more than :data:`OPEN_OUTLINE_PX` from its
  first is skipped with the gap in the reason (``--keep-open-outlines`` keeps it; the report lists it).
- Outlines are not guaranteed to lie inside their image: 338_2 has, besides the nodule's, an outline drawn over
  the burned-in text strip below the scan, 30 of its 51 points below the image. Rasterizing clips it, which used
  to add a region of text strip to the lesion without a word. An image with an outline that leaves the image is
  skipped with the outline, its points and area outside in the reason (``--outside-outlines drop-outline`` drops
  that outline and keeps the image with its others, ``keep`` keeps it clipped; the report lists either).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset_conversion.common import MALIGNANCY, Case, Skipped, column_name, find_layout, list_files, read_image
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.image_files import image_header

DDTI_LAYOUT = ("one flat folder of N.xml (case N: tirads, clinical fields, <mark><image>M</image><svg>polygon "
               "points</svg></mark>) and N_M.jpg (image M of case N)")
TIRADS_CATEGORIES = ("2", "3", "4a", "4b", "4c", "5")
TARGETS = ("tirads", "malignancy")
# Kwak TI-RADS without pathology: 2-3 (no suspicious feature) benign, 4a-5 (one or more suspicious features)
# malignant. A risk proxy, not a diagnosis: 4a carries a few percent malignancy risk. Used only when the case's
# report gives no pathology (class_source says which).
TIRADS_MALIGNANT = frozenset({"4a", "4b", "4c", "5"})
# what cases.csv's class_source says for a class derived from TI-RADS (only with --malignancy-from-tirads)
TIRADS_MAPPING = "tirads (no pathology: TI-RADS 2-3 benign, 4a-5 malignant)"
# A drawn outline ends where it started: complete DDTI outlines close within about 2 px. Eight published <svg>
# fields are cut at 2,500 characters; in four (54_1, 127_1, 176_1, 203_1) the outline stops part-way and filling it
# closes it with a straight edge of 74-148 px, a partial mask. Anything above this gap is an open outline.
OPEN_OUTLINE_PX = 20.0
# An outline with a point outside its image (338_2 of the published copy: an extra outline over the text strip
# below the scan) would be clipped at the edge: the image is skipped (default), the outline dropped, or it is kept
# clipped as before. Skipping is the default because the converter cannot tell a stray outline from a lesion that
# runs past the edge (its visible part is lesion): either repair can be wrong, a skipped image cannot.
OUTSIDE_CHOICES = ("skip-case", "drop-outline", "keep")
# pathology words in the FNA / cytology report (<reportbacaf>, Spanish "BACAF"), English and Spanish; Bethesda
# II = benign, V / VI = (suspicious for) malignant; anything else (I, III, IV, free text) gives no pathology
PATHOLOGY_MALIGNANT = re.compile(r"malign|carcinom|bethesda\s*(v|vi|5|6)\b", re.IGNORECASE)
PATHOLOGY_BENIGN = re.compile(r"benign|benigno|bethesda\s*(ii|2)\b", re.IGNORECASE)
CLINICAL_TAGS = ("number", "age", "sex", "composition", "echogenicity", "margins", "calcifications", "tirads",
                 "reportbacaf", "reporteco")
AGE_RANGE = (0, 120)
IMAGE_NAME = re.compile(r"(?P<case>\d+)_(?P<image>\d+)\.jpe?g", re.IGNORECASE)
POINT = re.compile(r'"x"\s*:\s*(-?[\d.]+)\s*,\s*"y"\s*:\s*(-?[\d.]+)')


def register_converters(sources) -> None:
    """``convert ddti`` (argparse subcommand with its alias and ``--target``)."""
    p = add_converter(
        sources, "ddti", convert_ddti, aliases=["DDTI"], default_id=608, default_name="DDTI",
        help="DDTI thyroid nodules (TI-RADS 2-5, or malignancy), masks from the XML polygons",
        description=f"Converts DDTI as downloaded ({DDTI_LAYOUT}). Masks are rasterized from the polygons of each "
                    "image's <mark> (several polygons merged). Patient = the case N (all its images). The XML's "
                    "clinical fields are kept in cases.csv. No pixel size is published: spacing is left empty.",
        source_help="the DDTI folder (N.xml and N_M.jpg files)",
        passed=("target", "malignancy_from_tirads", "keep_open_outlines", "outside_outlines"))
    p.add_argument("--target", choices=TARGETS, default="tirads",
                   help="the class: tirads (default; the published Kwak TI-RADS category "
                        f"{', '.join(TIRADS_CATEGORIES)} as classes TR2 .. TR5) or malignancy (benign / malignant "
                        "from the cytology report, <reportbacaf>; images without one are skipped)")
    p.add_argument("--malignancy-from-tirads", action="store_true",
                   help="with --target malignancy: label images whose report names no pathology by TI-RADS (2-3 "
                        "benign, 4a-5 malignant; a risk category, not a diagnosis), named in cases.csv's "
                        "class_source. The published copy has no pathology at all: without this option "
                        "--target malignancy refuses it")
    p.add_argument("--keep-open-outlines", action="store_true",
                   help=f"keep images whose outline does not close (ends more than {OPEN_OUTLINE_PX:g} px from its "
                        "start: cut off in the published XML), filled as if closed by a straight edge; by default "
                        "they are skipped and listed")
    p.add_argument("--outside-outlines", choices=OUTSIDE_CHOICES, default="skip-case",
                   help="images with an outline partly outside the image (a stray outline over the text strip below "
                        "the scan, or a lesion running past the edge): skip the image (skip-case, default), drop "
                        "that outline and keep the image with its other outlines (drop-outline), or keep it clipped "
                        "at the edge (keep); the report lists them")


def parse_tirads(value) -> str | None:
    """A TI-RADS category as '2', '3', '4a', '4b', '4c' or '5' from '4a', '4A', 'TR4a', 'TI-RADS 4 a', ...;
    None when it is not one of these (empty, '1', '4' without subcategory, free text)."""
    text = re.sub(r"^(ti-?rads|tr)", "", re.sub(r"\s+", "", str(value or "").lower()))
    return text if text in TIRADS_CATEGORIES else None


def tirads_class(category: str) -> str:
    """The class name of a Kwak TI-RADS category: 'TR2', 'TR3', 'TR4a', 'TR4b', 'TR4c', 'TR5' (named like the ACR
    TR1-TR5 classes of ThyroidXL / AIMI, but a different scale: the class lists differ, so --add-to-existing refuses
    to mix them; --target malignancy combines)."""
    return f"TR{category}"


def pathology_class(report_text) -> str | None:
    """'benign' / 'malignant' when the cytology report names one (not both), else None."""
    text = str(report_text or "")
    malignant, benign = bool(PATHOLOGY_MALIGNANT.search(text)), bool(PATHOLOGY_BENIGN.search(text))
    return None if malignant == benign else "malignant" if malignant else "benign"


def parse_regions(svg_text) -> tuple[list[tuple[tuple[float, float], ...]], bool]:
    """The polygons of a <svg> element (a JSON list of {"points": [{"x", "y"}, ...]}) and whether the text had to
    be salvaged. Some published files are cut off after the last point (e.g. 197.xml, 205.xml lose the closing
    '"regionType": "freehand"}]'): then the points are read region by region with a pattern."""
    text = (svg_text or "").strip()
    if not text:
        return [], False
    try:
        data = json.loads(text)
        regions = [tuple((float(p["x"]), float(p["y"])) for p in r.get("points", [])) for r in data]
        return [r for r in regions if r], False
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
        chunks = text.split('"points"')[1:]
        regions = [tuple((float(x), float(y)) for x, y in POINT.findall(c)) for c in chunks]
        return [r for r in regions if r], True


def rasterize(polygons, shape) -> np.ndarray:
    """0/1 uint8 map of ``shape`` (H, W): the union of the filled polygons ((x, y) in pixels, x = column), their
    outline included (the drawn contour is part of the annotated lesion, as the annotation tool shows it). Points
    outside the image are clipped (the listing has already decided about such outlines: ``--outside-outlines``);
    polygons of fewer than 3 points enclose nothing and are ignored."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (int(shape[1]), int(shape[0])), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) >= 3:
            draw.polygon([tuple(p) for p in polygon], fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def load_ddti(case: Case):
    """Loader (worker side): the image file and its mask rasterized from ``case.masks`` (the polygons)."""
    image = read_image(case.image)
    return image, rasterize(case.masks, image.shape[:2])


def _read_case_xml(path: Path):
    """(root element, None) or (None, reason) for one case's XML."""
    import xml.etree.ElementTree as ET

    try:
        return ET.parse(path).getroot(), None
    except (ET.ParseError, OSError) as e:
        return None, f"{path.name} is not readable XML ({type(e).__name__}: {str(e)[:80]})"


def _clinical(root, case_ref: str, report: ConversionReport) -> dict:
    """The case's clinical fields (every simple child element but the marks), snake_case; age checked."""
    clinical = {}
    for child in root:
        if child.tag == "mark" or len(child):
            continue
        col = column_name(child.tag)
        col = "source_number" if col == "number" else col  # the case number, next to the contract's columns
        value = (child.text or "").strip()
        if child.tag == "age":
            value = report.number(case_ref, "age", value, low=AGE_RANGE[0], high=AGE_RANGE[1], integer=True)
        elif child.tag == "tirads":
            value = parse_tirads(value) or value
        clinical[col] = value
    return clinical


def _class_for(target: str, tirads: str | None, pathology: str | None,
               from_tirads: bool = False) -> tuple[str | None, str]:
    """(class or None, where it comes from: cases.csv's class_source). Malignancy comes from pathology; from
    TI-RADS only when ``from_tirads`` (--malignancy-from-tirads)."""
    if target == "tirads":
        return (tirads_class(tirads), "tirads") if tirads else (None, "tirads")
    if pathology:
        return pathology, "pathology"
    if tirads and from_tirads:
        return ("malignant" if tirads in TIRADS_MALIGNANT else "benign"), TIRADS_MAPPING
    return None, "none"


def closing_gap(polygon) -> float:
    """Pixels between an outline's last point and its first (what filling it closes with a straight edge)."""
    (x0, y0), (x1, y1) = polygon[0], polygon[-1]
    return float(np.hypot(x1 - x0, y1 - y0))


def polygon_area(polygon) -> float:
    """The area enclosed by an outline (shoelace formula; a self-crossing outline's loops may partly cancel)."""
    if len(polygon) < 3:
        return 0.0
    xy = np.asarray(polygon, dtype=float)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def clip_to_image(polygon, width: int, height: int) -> list[tuple[float, float]]:
    """The outline clipped to the image, the rectangle [0, width] x [0, height] (Sutherland-Hodgman), for the share
    of its area that lies outside."""
    points = [tuple(map(float, p)) for p in polygon]
    for axis, bound, inside_low in ((0, 0.0, True), (0, float(width), False), (1, 0.0, True),
                                    (1, float(height), False)):
        def inside(p, axis=axis, bound=bound, low=inside_low):
            return p[axis] >= bound if low else p[axis] <= bound

        def cross(a, b, axis=axis, bound=bound):
            t = (bound - a[axis]) / (b[axis] - a[axis])
            other = a[1 - axis] + t * (b[1 - axis] - a[1 - axis])
            return (bound, other) if axis == 0 else (other, bound)

        clipped = []
        for k, current in enumerate(points):
            previous = points[k - 1]
            if inside(current):
                if not inside(previous):
                    clipped.append(cross(previous, current))
                clipped.append(current)
            elif inside(previous):
                clipped.append(cross(previous, current))
        points = clipped
        if not points:
            break
    return points


@dataclass(frozen=True)
class OutsideOutline:
    """An outline of an image with points outside the image: which one, and how much of it is outside."""
    number: int           # its place among the image's outlines, from 1 (in the XML's order)
    of: int               # the image's outlines
    points_outside: int
    points: int
    area_outside: float   # share of the enclosed area outside the image, 0..1
    size: tuple[int, int]  # the image's (width, height)

    def describe(self) -> str:
        return (f"outline {self.number} of {self.of} ({self.points_outside} of {self.points} points, "
                f"{self.area_outside:.0%} of its area outside the {self.size[0]}x{self.size[1]} image)")


def find_outside_outlines(polygons, width: int, height: int) -> list[OutsideOutline]:
    """The outlines (of 3 points or more: fewer enclose nothing and are not drawn) with a point outside the image,
    which :func:`rasterize` would clip at the edge without a word. The image is the rectangle [0, width] x
    [0, height]: a point on its edge (x = width is the right edge of the last column where a pixel spans [i, i + 1),
    as annotation tools often count) is inside, so an outline that follows a lesion to the edge is not caught."""
    found = []
    for number, polygon in enumerate(polygons, 1):
        if len(polygon) < 3:
            continue
        xy = np.asarray(polygon, dtype=float)
        out = int(np.count_nonzero((xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] > width) | (xy[:, 1] > height)))
        if out:
            area = polygon_area(polygon)
            share = 1.0 - polygon_area(clip_to_image(polygon, width, height)) / area if area > 0 else 1.0
            found.append(OutsideOutline(number, len(polygons), out, len(polygon), min(1.0, max(0.0, share)),
                                        (width, height)))
    return found


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when it cannot be read (the loader then skips the case
    with the reason)."""
    try:
        width, height, _ = image_header(path)
    except NnunetMtlError:
        return None
    return width, height


def _marks(root, xml_name: str):
    """{image index: [polygons]} merged over the <mark> elements, the salvaged count, and per-mark problems."""
    marks: dict[str, list] = {}
    salvaged, problems = 0, []
    for mark in root.findall("mark"):
        index = (mark.findtext("image") or "").strip()
        if not index.isdigit():
            problems.append(f"a <mark> in {xml_name} has <image> {index!r}; expected the image number M of N_M.jpg")
            continue
        regions, fixed = parse_regions(mark.findtext("svg"))
        salvaged += fixed
        marks.setdefault(str(int(index)), []).extend(regions)
    return marks, salvaged, problems


def ddti_cases(source, report: ConversionReport, *, target: str = "tirads", malignancy_from_tirads: bool = False,
               keep_open_outlines: bool = False, outside_outlines: str = "skip-case"):
    """The DDTI cases, case by case and image by image in number order (a generator of :class:`Case` /
    :class:`Skipped`). With ``target`` malignancy and no pathology in any XML (the published copy), and without
    ``malignancy_from_tirads``, it raises at the end of the listing, before anything is written.
    ``outside_outlines`` (one of :data:`OUTSIDE_CHOICES`) is what becomes of an image with an outline partly
    outside it; the image sizes are read from the files' headers while listing."""
    if outside_outlines not in OUTSIDE_CHOICES:
        raise NnunetMtlError(f"--outside-outlines {outside_outlines!r}: expected one of {', '.join(OUTSIDE_CHOICES)}")
    if malignancy_from_tirads and target != "malignancy":
        raise NnunetMtlError("--malignancy-from-tirads only applies to --target malignancy; expected it with "
                             "--target malignancy, or --target tirads alone")
    root = find_layout(source, ["*.xml", "*_*.jp*g"], dataset="DDTI", expected=DDTI_LAYOUT)
    images: dict[str, dict[str, Path]] = {}
    for path in list_files(root, "*_*.jp*g"):
        m = IMAGE_NAME.fullmatch(path.name)
        if m:
            images.setdefault(str(int(m["case"])), {})[str(int(m["image"]))] = path
    xmls = {str(int(p.stem)): p for p in list_files(root, "*.xml") if p.stem.isdigit()}
    report.note("DDTI publishes no pixel size: spacing empty (HD95 in pixels); patient = the case N (all images "
                "N_M of one XML)")
    salvaged_in: list[str] = []   # XML files with a cut-off <svg>
    open_kept: list[str] = []     # images kept with an open outline (--keep-open-outlines)
    outside_handled: list[str] = []  # outlines partly outside their image, dropped or kept clipped
    from_tirads, with_pathology, readable = 0, 0, 0
    for number in sorted(set(xmls) | set(images), key=int):
        xml = xmls.get(number)
        own = images.get(number, {})
        if xml is None:
            for index in sorted(own, key=int):
                yield Skipped(f"ddti_{int(number):04d}_{index}", f"{own[index].name} has no {number}.xml; expected "
                                                                 f"one XML per case")
            continue
        case = f"ddti_{int(number):04d}"
        root_el, reason = _read_case_xml(xml)
        if root_el is None:
            for index in sorted(own, key=int) or ["?"]:
                yield Skipped(f"{case}_{index}", reason)
            continue
        readable += 1
        clinical = _clinical(root_el, case, report)
        tirads = parse_tirads(root_el.findtext("tirads"))
        pathology = pathology_class(root_el.findtext("reportbacaf"))
        with_pathology += pathology is not None
        cls, class_source = _class_for(target, tirads, pathology, malignancy_from_tirads)
        marks, salvaged, problems = _marks(root_el, xml.name)
        if salvaged:
            salvaged_in.append(xml.name)
        for problem in problems:
            yield Skipped(case, problem)
        for index in sorted(set(own) | set(marks), key=int):
            case_id = f"{case}_{index}"
            image = own.get(index)
            polygons = marks.get(index, [])
            size = _image_size(image) if image is not None and cls is not None and polygons else None
            outside = find_outside_outlines(polygons, *size) if size else []
            described = "; ".join(o.describe() for o in outside)
            if outside and outside_outlines == "drop-outline":
                dropped = {o.number for o in outside}
                polygons = [p for number, p in enumerate(polygons, 1) if number not in dropped]
            gaps = [closing_gap(polygon) for polygon in polygons if len(polygon) >= 3]
            gap = max(gaps, default=0.0)
            if image is None:
                yield Skipped(case_id, f"{number}_{index}.jpg does not exist; {xml.name} has a <mark> for it")
            elif cls is None and target == "malignancy" and tirads:
                yield Skipped(case_id, f"{xml.name} names no pathology in <reportbacaf>; a malignancy label must come "
                                       f"from pathology (--malignancy-from-tirads labels it by TI-RADS)")
            elif cls is None:
                yield Skipped(case_id, f"<tirads> {root_el.findtext('tirads')!r} in {xml.name}: expected one of "
                                       f"{', '.join(TIRADS_CATEGORIES)}"
                                       + ("" if target == "tirads" else " (no pathology in <reportbacaf> either)"))
            elif not marks.get(index):
                yield Skipped(case_id, f"{xml.name} has no polygon for image {index}; expected a <mark> with "
                                       f"<image>{index}</image> and its <svg> points")
            elif outside and outside_outlines == "skip-case":
                yield Skipped(case_id, f"image {index} in {xml.name}: {described}; its part inside would be "
                                       f"filled into the lesion mask (a stray outline, or a lesion past the edge?); "
                                       f"expected outlines inside the image (--outside-outlines drop-outline drops "
                                       f"it, keep keeps it clipped)")
            elif outside and not any(len(polygon) >= 3 for polygon in polygons):
                yield Skipped(case_id, f"image {index} in {xml.name}: {described}, dropped (--outside-outlines "
                                       f"drop-outline): no outline inside the image is left; expected one")
            elif gap > OPEN_OUTLINE_PX and not keep_open_outlines:
                yield Skipped(case_id, f"the outline of image {index} in {xml.name} ends {gap:.0f} px from where it "
                                       f"starts (cut off{' in the published XML' if salvaged else ''}): the mask "
                                       f"would be partial; expected a closed outline (within {OPEN_OUTLINE_PX:g} "
                                       f"px; --keep-open-outlines keeps it)")
            else:
                if gap > OPEN_OUTLINE_PX:
                    open_kept.append(f"{case_id} ({gap:.0f} px)")
                outside_handled.extend(f"{case_id} {o.describe()}" for o in outside)
                from_tirads += class_source == TIRADS_MAPPING
                yield Case(case_id, cls, patient_id=case, image=image, masks=tuple(polygons),
                           clinical={**clinical, "source_image": image.name, "polygons": len(polygons),
                                     "class_source": class_source},
                           source=image.name)
    if target == "malignancy" and not with_pathology and not malignancy_from_tirads:
        raise NnunetMtlError(
            f"{root}: --target malignancy needs a pathology (cytology) result, but <reportbacaf> names none in the "
            f"{readable} readable XML file(s) (the published copy has none); a label that claims malignancy must "
            f"come from pathology: use --target tirads, or add --malignancy-from-tirads to label by TI-RADS (2-3 "
            f"benign, 4a-5 malignant, named in cases.csv's class_source)")
    if salvaged_in:
        report.note(f"{len(salvaged_in)} XML file(s) with an <svg> cut off in the published copy, points read up to "
                    f"the cut: {', '.join(salvaged_in)}")
    if open_kept:
        report.note(f"{len(open_kept)} image(s) kept with an open outline (--keep-open-outlines), filled as if "
                    f"closed by a straight edge: {', '.join(open_kept)}")
    if outside_handled and outside_outlines == "drop-outline":
        report.note(f"{len(outside_handled)} outline(s) partly outside their image dropped (--outside-outlines "
                    f"drop-outline), the image kept with its other outlines: {', '.join(outside_handled)}")
    elif outside_handled:
        report.note(f"{len(outside_handled)} outline(s) partly outside their image kept, clipped at the edge "
                    f"(--outside-outlines keep): {', '.join(outside_handled)}")
    if from_tirads:
        report.note(f"{from_tirads} image(s) without pathology in their report: malignancy derived from TI-RADS "
                    f"(--malignancy-from-tirads: 2-3 benign, 4a-5 malignant; a risk category, not a diagnosis; "
                    f"class_source in cases.csv)")


def ddti_classes(target: str) -> tuple[str, ...]:
    if target not in TARGETS:
        raise NnunetMtlError(f"--target {target!r}: expected tirads or malignancy")
    return MALIGNANCY if target == "malignancy" else tuple(tirads_class(c) for c in TIRADS_CATEGORIES)


def convert_ddti(source, options: ConvertOptions, *, target: str = "tirads", malignancy_from_tirads: bool = False,
                 keep_open_outlines: bool = False, outside_outlines: str = "skip-case",
                 raw_root=None) -> ConversionReport:
    """Convert DDTI (``target`` tirads or malignancy; ``outside_outlines`` one of :data:`OUTSIDE_CHOICES`);
    returns the report (``report.path`` is the folder)."""
    return convert_source("DDTI", source, lambda report: ddti_cases(
                              source, report, target=target, malignancy_from_tirads=malignancy_from_tirads,
                              keep_open_outlines=keep_open_outlines, outside_outlines=outside_outlines), options,
                          classes=ddti_classes(target), raw_root=raw_root, loader=load_ddti,
                          description=f"DDTI (Pedraza et al. 2015) thyroid nodules, target {target}, masks from the "
                                      f"XML polygons, converted by nnunet_mtl")
