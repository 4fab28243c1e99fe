"""A case gallery: one static HTML page that shows every evaluated case of a prediction folder.

Why: the summary numbers say how good a run is, not where it fails. A person looking for the failure modes (missed
lesions, leaking outlines, confident misclassifications) needs every case's image with both outlines next to its
numbers, sorted worst first, and filters to narrow the view. The page is one file (no server, no network, no
external script or style sheet; every image a base64 PNG data URI) so that it can be mailed or copied to a laptop
and opened by double-click, and so that the numbers and the pictures can never get separated.

The numbers are ``nnunet_mtl evaluate``'s: its ``per_case.csv`` is read when the prediction folder has been
evaluated (``PRED/evaluation`` by default), otherwise :func:`nnunet_mtl.evaluation.evaluate.evaluate_folder` is run
into a temporary folder with the evaluate command's defaults, so the page shows the very strings evaluate writes.

Every image is drawn at most ``size`` pixels on its longer side: the grey image, the reference outline
(:data:`REFERENCE_COLOUR`), the predicted outline (:data:`PREDICTION_COLOUR`) and their overlap
(:data:`OVERLAP_COLOUR`), each outline one pixel wide at the displayed size (drawn after resizing, so it stays thin
and visible however large the original frame is). The PNGs are palette images (253 grey levels + the 3 outline
colours): a third of an RGB PNG's size, the same picture.

Outputs (written atomically, never into an input folder): ``OUT.html`` and ``OUT_dice_distribution.png`` (a
histogram and a strip of the per-case Dice, also embedded at the top of the page).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_mtl.errors import NnunetMtlError

GALLERY_NAME = "gallery.html"
PLOT_SUFFIX = "_dice_distribution.png"
DEFAULT_SIZE = 320
MIN_SIZE, MAX_SIZE = 64, 2048
# colour-blind-safe pair (blue / orange) plus yellow where the outlines coincide; none of them is a matplotlib
# default colour, so a screenshot's outline pixels cannot come from the Dice plot
REFERENCE_COLOUR = (0, 220, 255)
PREDICTION_COLOUR = (255, 140, 0)
OVERLAP_COLOUR = (255, 255, 0)
_GREY_LEVELS = 253  # palette indices 0..252 are greys, 253..255 the outline colours
_REF_INDEX, _PRED_INDEX, _OVERLAP_INDEX = 253, 254, 255
SORTS = {"dice-asc": "Dice, worst first", "dice-desc": "Dice, best first",
         "prob-asc": "probability, least confident first", "prob-desc": "probability, most confident first",
         "case-asc": "case id, A to Z", "case-desc": "case id, Z to A"}
DEFAULT_SORT = "dice-asc"
IMAGE_SUFFIXES = ("_0000.png", ".png")  # nnU-Net's channel file first, then a plain CASE.png
_MAX_LISTED = 5


def _some(ids: list[str]) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else ""
    return ", ".join(ids[:_MAX_LISTED]) + more


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _e(value: object) -> str:
    """Every text that goes into the page, escaped for element text and quoted attribute values alike."""
    return html.escape(str(value), quote=True)


# ----------------------------------------------------------------------------------------------- outputs
def output_paths(output: str | Path) -> tuple[Path, Path]:
    """(the gallery's HTML file, its Dice plot beside it): ``X.html`` and ``X_dice_distribution.png``, so that two
    galleries in one folder never share a plot."""
    html_path = Path(output)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise NnunetMtlError(f"gallery output {html_path} does not end in .html; expected the path of the HTML file "
                             f"to write, e.g. {html_path / GALLERY_NAME if html_path.suffix == '' else 'gallery.html'}")
    return html_path, html_path.with_name(html_path.stem + PLOT_SUFFIX)


def check_outputs(html_path: Path, plot_path: Path, input_folders: list[Path], overwrite: bool) -> None:
    """Before any work: both files may be written, and neither lands in a folder the gallery reads (a PNG among the
    masks or images would be taken for a case by the next evaluate or predict)."""
    from nnunet_mtl.outputs import check_output_file
    for path in (html_path, plot_path):
        parent = Path(os.path.abspath(path)).parent
        for folder in input_folders:
            if folder is not None and Path(os.path.abspath(folder)) == parent:
                raise NnunetMtlError(f"gallery output {path} is in the input folder {folder}; expected another "
                                     f"folder (default PRED/evaluation/{GALLERY_NAME}), inputs are never written")
        check_output_file(path, "gallery output", overwrite=overwrite)


# ----------------------------------------------------------------------------------------------- per-case numbers
@dataclass
class PerCase:
    """evaluate's per-case results as the gallery uses them, and where they came from."""
    rows: list[dict]                 # per_case.csv rows, every cell the string evaluate wrote
    class_names: list[str]           # from the prob_ columns, in index order
    source: str                      # one sentence for the page: which file, or computed
    summary: dict | None             # evaluate's summary.json (or the computed summary), for the header numbers
    notes: list[str] = field(default_factory=list)


def _read_per_case_csv(path: Path) -> tuple[list[dict], list[str]]:
    from nnunet_mtl.tables import read_csv_rows
    fields, rows = read_csv_rows(path, "the per_case.csv written by nnunet_mtl evaluate")
    if "case_id" not in fields:
        raise NnunetMtlError(f"{path} has columns {', '.join(fields) or 'none'}; expected the per_case.csv written "
                             f"by nnunet_mtl evaluate (case_id, dice, ..., true_class, predicted_class, prob_...)")
    rows = [r for r in rows if r.get("case_id")]
    if not rows:
        raise NnunetMtlError(f"{path} has no case rows; expected the per_case.csv of an evaluated prediction folder")
    return rows, [c[len("prob_"):] for c in fields if c.startswith("prob_")]


def _stale_notes(per_case_csv: Path, pred_dir: Path, ref_dir: Path, summary: dict | None) -> list[str]:
    """Why the stored results may not describe the masks drawn now: a mask or class_predictions.csv changed after
    evaluate ran, or evaluate used another reference folder. A warning, not an error: copying a folder without
    keeping times makes every file look new."""
    notes = []
    written = per_case_csv.stat().st_mtime
    newer = [p.name for p in pred_dir.iterdir() if p.is_file() and (p.suffix == ".png" or
             p.name == "class_predictions.csv") and p.stat().st_mtime > written + 1]
    if newer:
        notes.append(f"{len(newer)} prediction file(s) in {pred_dir} are newer than {per_case_csv} "
                     f"({_some(newer)}): the numbers may be stale; run nnunet_mtl evaluate again")
    used = ((summary or {}).get("inputs") or {}).get("ref_dir")
    if used and os.path.abspath(used) != os.path.abspath(ref_dir) and Path(used).resolve() != ref_dir.resolve():
        notes.append(f"{per_case_csv} was computed against the reference folder {used}, the outlines are drawn from "
                     f"{ref_dir}")
    return notes


def per_case_results(pred_dir, ref_dir, *, evaluation_dir=None, cases_csv=None, class_labels=None,
                     allow_missing: bool = False) -> PerCase:
    """evaluate's per-case rows: ``evaluation_dir/per_case.csv`` (default ``PRED/evaluation``) when it exists, else
    computed by :func:`~nnunet_mtl.evaluation.evaluate.evaluate_folder` as the evaluate command calls it (the
    folder's class_predictions.csv when the reference classes are known; no bootstrap, which changes no per-case
    number) into a temporary folder, so that nothing is written beside the inputs."""
    from nnunet_mtl.dataset.contract import read_json_object
    from nnunet_mtl.evaluation.evaluate import evaluate_folder
    from nnunet_mtl.evaluation.shared import OUTPUT_FILES
    from nnunet_mtl.inference.class_predictions import CLASS_PREDICTIONS
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    evaluation_dir = Path(evaluation_dir) if evaluation_dir is not None else pred_dir / "evaluation"
    stored = evaluation_dir / OUTPUT_FILES[0]
    if stored.is_file():
        rows, class_names = _read_per_case_csv(stored)
        summary_path = evaluation_dir / OUTPUT_FILES[1]
        summary = None
        if summary_path.is_file():
            try:
                summary = read_json_object(summary_path, "the summary.json written by nnunet_mtl evaluate")
            except NnunetMtlError as e:
                _warn(f"{e}; the page's header numbers are computed from {stored}")
        notes = _stale_notes(stored, pred_dir, ref_dir, summary)
        for note in notes:
            _warn(note)
        return PerCase(rows, class_names, f"read from {stored} (nnunet_mtl evaluate)", summary, notes)
    classes, notes = pred_dir / CLASS_PREDICTIONS, []
    if classes.is_file() and cases_csv is None:
        notes.append(f"{classes} not shown: the reference classes need --cases or -d (as for nnunet_mtl evaluate)")
        _warn(notes[-1])
    classes = classes if classes.is_file() and cases_csv is not None else None
    with tempfile.TemporaryDirectory(prefix="nnunet_mtl_gallery_") as tmp:
        summary = evaluate_folder(pred_dir, ref_dir, class_predictions_csv=classes, cases_csv=cases_csv,
                                  class_labels=class_labels, output_dir=tmp, allow_missing=allow_missing, bootstrap=0)
        rows, class_names = _read_per_case_csv(Path(tmp) / OUTPUT_FILES[0])
    return PerCase(rows, class_names, f"computed by nnunet_mtl evaluate's library (no {stored} yet; not saved)",
                   summary, notes + list(summary.get("notes") or []))


# ----------------------------------------------------------------------------------------------- images
def find_images(cases: list[str], image_dirs: list[Path]) -> dict[str, Path]:
    """{case: its image}: ``CASE_0000.png`` (nnU-Net's channel file, what predict reads), else ``CASE.png``, in the
    first folder that has it; one line naming some cases and the folders when any is missing."""
    found, missing = {}, []
    for case in cases:
        for folder in image_dirs:
            path = next((folder / f"{case}{s}" for s in IMAGE_SUFFIXES if (folder / f"{case}{s}").is_file()), None)
            if path is not None:
                found[case] = path
                break
        else:
            missing.append(case)
    if missing:
        raise NnunetMtlError(f"{len(missing)} case(s) have no image in {', '.join(map(str, image_dirs))}: "
                             f"{_some(missing)}; expected CASE_0000.png (the images that were predicted; pass -i)")
    return found


def read_grey_image(path: Path) -> np.ndarray:
    """The image as uint8 grey levels for display: 8-bit grey as it is, 16-bit / float scaled from its minimum to
    its maximum, colour converted to grey (the contract's images are one grey channel)."""
    from nnunet_mtl.image_files import open_image
    with open_image(path, "image") as im:
        if im.mode == "L":
            return np.asarray(im).copy()
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(im, dtype=np.float64)
            low, high = float(arr.min()), float(arr.max())
            if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
                return np.zeros(arr.shape, np.uint8)
            return np.rint((arr - low) * (255.0 / (high - low))).astype(np.uint8)
        return np.asarray(im.convert("L")).copy()


def _display_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    height, width = shape
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask at the display size: a display pixel is in when at least half of it is (area average); a
    lesion smaller than a display pixel is kept (any coverage), so no predicted or reference lesion disappears."""
    if mask.shape == shape:
        return mask
    from PIL import Image
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.BOX))
    out = small >= 128
    if mask.any() and not out.any():
        out = small > 0
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside it (or on the image border): a closed one-pixel line."""
    from scipy.ndimage import binary_erosion
    return mask & ~binary_erosion(mask, border_value=0)


def _palette() -> list[int]:
    greys = [round(i * 255 / (_GREY_LEVELS - 1)) for i in range(_GREY_LEVELS)]
    colours = [REFERENCE_COLOUR, PREDICTION_COLOUR, OVERLAP_COLOUR]
    return [v for g in greys for v in (g, g, g)] + [v for c in colours for v in c]


def render_overlay(image: np.ndarray, reference: np.ndarray | None, prediction: np.ndarray | None,
                   size: int = DEFAULT_SIZE) -> bytes:
    """PNG bytes: the grey ``image`` resized to at most ``size`` pixels on its longer side, with the outlines of the
    boolean ``reference`` and ``prediction`` masks (either may be None) drawn one display pixel wide."""
    from PIL import Image
    shape = _display_shape(image.shape, size)
    grey = image if shape == image.shape else np.asarray(Image.fromarray(image).resize(shape[::-1], Image.LANCZOS))
    index = np.rint(grey.astype(np.float64) * ((_GREY_LEVELS - 1) / 255.0)).astype(np.uint8)
    ref_line = outline(_resize_mask(reference, shape)) if reference is not None else np.zeros(shape, bool)
    pred_line = outline(_resize_mask(prediction, shape)) if prediction is not None else np.zeros(shape, bool)
    index[ref_line] = _REF_INDEX
    index[pred_line] = _PRED_INDEX
    index[ref_line & pred_line] = _OVERLAP_INDEX
    im = Image.fromarray(index)
    im.putpalette(_palette())  # an "L" image with a palette becomes a "P" image
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ----------------------------------------------------------------------------------------------- one card
def _float(text: object) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass
class Card:
    """One case as the page shows it; the numbers are per_case.csv's strings."""
    case_id: str
    dice: str                # "" when not scored (unannotated reference, classification only)
    probability: str         # the predicted class's probability, "" without class predictions
    true_class: str
    predicted_class: str
    reference_mask: str      # full / box / none, "" for a classification-only folder
    hd95_px: str
    probabilities: list[tuple[str, str]]
    png: bytes
    width: int
    height: int

    @property
    def misclassified(self) -> bool:
        return bool(self.true_class and self.predicted_class and self.true_class != self.predicted_class)

    @property
    def dice_value(self) -> float | None:
        return _float(self.dice)

    @property
    def probability_value(self) -> float | None:
        return _float(self.probability)


def default_order(cards: list[Card]) -> list[Card]:
    """Worst Dice first; cases without a Dice last; ties by case id (what the page's script does for dice-asc)."""
    return sorted(cards, key=lambda c: (c.dice_value is None, c.dice_value or 0.0, c.case_id))


def make_card(row: dict, class_names: list[str], image_path: Path, pred_path: Path | None, ref_path: Path,
              size: int) -> Card:
    """Read the case's image and masks, check they have one geometry, and draw them."""
    from nnunet_mtl.dataset.contract import IGNORE_LABEL, LESION_LABEL
    from nnunet_mtl.evaluation.inputs import read_label_png
    case = row["case_id"]
    image = read_grey_image(image_path)
    ref = read_label_png(ref_path)
    pred = read_label_png(pred_path) if pred_path is not None else None
    for what, path, arr in (("reference", ref_path, ref), ("prediction", pred_path, pred)):
        if arr is not None and arr.shape != image.shape:
            raise NnunetMtlError(f"case {case}: {what} {path} has shape {arr.shape} but the image {image_path} has "
                                 f"{image.shape}; expected the images that were predicted (pass -i)")
    kind = row.get("reference_mask", "")
    # a box reference says "the lesion is somewhere in this box": its outline is the box; "none" says nothing
    reference = ref == IGNORE_LABEL if kind == "box" else None if kind == "none" else ref == LESION_LABEL
    png = render_overlay(image, reference, None if pred is None else pred > 0, size)
    height, width = _display_shape(image.shape, size)
    predicted = row.get("predicted_class", "")
    return Card(case_id=case, dice=row.get("dice", ""), probability=row.get(f"prob_{predicted}", "") if predicted
                else "", true_class=row.get("true_class", ""), predicted_class=predicted, reference_mask=kind,
                hd95_px=row.get("hd95_px", ""), probabilities=[(n, row.get(f"prob_{n}", "")) for n in class_names],
                png=png, width=width, height=height)


# ----------------------------------------------------------------------------------------------- Dice plot
def plot_dice_distribution(cards: list[Card]) -> bytes:
    """PNG bytes: a histogram of the per-case Dice (bins of 0.05) above a strip of every case's Dice, jittered,
    coloured by whether its class was predicted right: where the failures are and whether they are also the
    misclassified cases."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    scored = [c for c in cards if c.dice_value is not None]
    if not scored:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no Dice: segmentation not evaluated (no masks, or no annotated reference)",
                ha="center", va="center")
    else:
        dice = np.array([c.dice_value for c in scored])
        grid = fig.add_gridspec(2, 1, height_ratios=(3, 1.2), hspace=0.08)
        hist = fig.add_subplot(grid[0])
        hist.hist(dice, bins=np.linspace(0, 1, 21), color="0.55", edgecolor="black", linewidth=0.5)
        hist.set_xlim(-0.02, 1.02)
        hist.set_ylabel("cases")
        hist.tick_params(labelbottom=False)
        from matplotlib.ticker import MaxNLocator
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        hist.set_title(f"Dice of {len(scored)} cases: mean {dice.mean():.4f}, median {np.median(dice):.4f}",
                       loc="left", fontsize=10)
        strip = fig.add_subplot(grid[1], sharex=hist)
        jitter = np.random.default_rng(0).uniform(-0.35, 0.35, size=len(scored))
        groups = (("class correct", "tab:blue", [not c.misclassified and bool(c.true_class and c.predicted_class)
                                                 for c in scored]),
                  ("misclassified", "tab:red", [c.misclassified for c in scored]),
                  ("class unknown", "0.4", [not (c.true_class and c.predicted_class) for c in scored]))
        for label, colour, chosen in groups:
            chosen = np.array(chosen, bool)
            if chosen.any():
                strip.scatter(dice[chosen], jitter[chosen], s=14, color=colour, alpha=0.8, label=label,
                              edgecolors="none")
        strip.set_ylim(-0.6, 0.6)
        strip.set_yticks([])
        strip.set_xlabel("Dice per case")
        fig.legend(loc="upper right", fontsize=8, ncol=3, frameon=False, handletextpad=0.1)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.16)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- the page
_CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1d1d1f; background: #f4f4f6; }
header { padding: 12px 20px; background: #fff; border-bottom: 1px solid #ddd; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta, .notes { color: #555; font-size: 12px; margin: 2px 0; word-break: break-all; }
.notes li { color: #8a4b00; }
.summary { font-size: 15px; margin: 6px 0; }
.plot { display: block; max-width: 100%; height: auto; margin: 6px 0; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 22px; height: 0; border-top: 3px solid; vertical-align: middle;
            margin-right: 5px; }
.legend .ref i { border-color: var(--ref); } .legend .pred i { border-color: var(--pred); }
.legend .both i { border-color: var(--both); }
#controls { position: sticky; top: 0; z-index: 1; display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center;
            padding: 8px 20px; background: #e9e9ee; border-bottom: 1px solid #ccc; }
#controls label { white-space: nowrap; }
#shown { margin-left: auto; color: #333; }
#grid { display: grid; gap: 12px; padding: 12px 20px;
        grid-template-columns: repeat(auto-fill, minmax(var(--card), 1fr)); }
.card { background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 8px; }
.card.mis { border: 2px solid #d62728; }
.card h2 { font-size: 13px; margin: 0 0 6px; font-family: ui-monospace, monospace; word-break: break-all; }
.card img { display: block; max-width: 100%; height: auto; background: #000; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 8px; margin: 6px 0 0; font-size: 13px; }
.card dt { color: #666; } .card dd { margin: 0; }
.dice { font-weight: 600; } .probs { color: #666; font-size: 12px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11px; color: #fff; }
.badge.mis { background: #d62728; } .badge.ok { background: #2a7d2a; }
#empty { padding: 12px 20px; }
"""

# Reads the view from the URL's hash (#sort=...&filter=misclassified&ref=CLASS&pred=CLASS&q=TEXT), applies it to the
# cards (reorders them, hides the ones filtered out) and writes the controls' changes back to the hash, so a view
# can be bookmarked, shared, and opened by a headless browser without clicking.
_JS = """
(function () {
  "use strict";
  var DEFAULT_SORT = "__DEFAULT_SORT__";
  var grid = document.getElementById("grid");
  var cards = Array.prototype.slice.call(grid.querySelectorAll("article.card"));
  var ui = {sort: document.getElementById("sort"), mis: document.getElementById("misclassified"),
            ref: document.getElementById("ref-class"), pred: document.getElementById("pred-class"),
            q: document.getElementById("search")};
  function options(select) {
    return Array.prototype.map.call(select.options, function (o) { return o.value; });
  }
  function num(card, key) {
    var v = card.getAttribute("data-" + key);
    if (v === null || v === "") { return null; }
    var x = parseFloat(v);
    return isFinite(x) ? x : null;
  }
  function byCase(a, b) {
    var x = a.getAttribute("data-case"), y = b.getAttribute("data-case");
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  function comparator(sort) {
    var parts = sort.split("-"), key = parts[0], dir = parts[1] === "desc" ? -1 : 1;
    if (key === "case") { return function (a, b) { return dir * byCase(a, b); }; }
    return function (a, b) {
      var x = num(a, key), y = num(b, key);
      if (x === null || y === null) { return x === y ? byCase(a, b) : (x === null ? 1 : -1); }
      return x !== y ? dir * (x - y) : byCase(a, b);
    };
  }
  function parseHash() {
    var state = {sort: DEFAULT_SORT, mis: false, ref: "", pred: "", q: ""};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var i = part.indexOf("="), key, value;
      if (i < 1) { return; }
      key = part.slice(0, i);
      try { value = decodeURIComponent(part.slice(i + 1).replace(/\\+/g, " ")); } catch (e) { return; }
      if (key === "sort" && options(ui.sort).indexOf(value) >= 0) { state.sort = value; }
      if (key === "filter") { state.mis = value === "misclassified"; }
      if (key === "ref" && options(ui.ref).indexOf(value) > 0) { state.ref = value; }
      if (key === "pred" && options(ui.pred).indexOf(value) > 0) { state.pred = value; }
      if (key === "q") { state.q = value; }
    });
    return state;
  }
  function readControls() {
    return {sort: ui.sort.value, mis: ui.mis.checked, ref: ui.ref.value, pred: ui.pred.value, q: ui.q.value};
  }
  function setControls(s) {
    ui.sort.value = s.sort; ui.mis.checked = s.mis; ui.ref.value = s.ref; ui.pred.value = s.pred; ui.q.value = s.q;
  }
  function writeHash(s) {
    var parts = [];
    if (s.sort !== DEFAULT_SORT) { parts.push("sort=" + encodeURIComponent(s.sort)); }
    if (s.mis) { parts.push("filter=misclassified"); }
    if (s.ref) { parts.push("ref=" + encodeURIComponent(s.ref)); }
    if (s.pred) { parts.push("pred=" + encodeURIComponent(s.pred)); }
    if (s.q) { parts.push("q=" + encodeURIComponent(s.q)); }
    var hash = parts.length ? "#" + parts.join("&") : "";
    try { history.replaceState(null, "", location.pathname + location.search + hash); }
    catch (e) { location.hash = hash; }
  }
  function apply(s) {
    var shown = 0, q = s.q.toLowerCase();
    cards.slice().sort(comparator(s.sort)).forEach(function (card) {
      var keep = (!s.mis || card.getAttribute("data-misclassified") === "1")
        && (!s.ref || card.getAttribute("data-true") === s.ref)
        && (!s.pred || card.getAttribute("data-pred") === s.pred)
        && (!q || card.getAttribute("data-case").toLowerCase().indexOf(q) >= 0);
      card.hidden = !keep;
      shown += keep ? 1 : 0;
      grid.appendChild(card);
    });
    document.getElementById("shown").textContent = "showing " + shown + " of " + cards.length + " cases";
    document.getElementById("empty").hidden = shown > 0;
    document.body.setAttribute("data-view", [s.sort, s.mis ? "misclassified" : "all", s.ref, s.pred, s.q].join("|"));
  }
  function changed() { var s = readControls(); writeHash(s); apply(s); }
  [ui.sort, ui.mis, ui.ref, ui.pred].forEach(function (el) { el.addEventListener("change", changed); });
  ui.q.addEventListener("input", changed);
  window.addEventListener("hashchange", function () { var s = parseHash(); setControls(s); apply(s); });
  var start = parseHash();
  setControls(start);
  apply(start);
})();
""".replace("__DEFAULT_SORT__", DEFAULT_SORT)


def _fmt(text: str, digits: int) -> str:
    value = _float(text)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _card_html(card: Card) -> str:
    if card.dice_value is not None:
        dice = f'<dd class="dice">{_e(_fmt(card.dice, 4))}</dd>'
    elif card.reference_mask in ("box", "none"):
        dice = f'<dd class="dice">not scored ({_e(card.reference_mask)} reference)</dd>'
    else:
        dice = '<dd class="dice">n/a</dd>'
    hd95 = f"<dt>HD95</dt><dd>{_e(_fmt(card.hd95_px, 2))} px</dd>" if card.hd95_px else ""
    if card.predicted_class:
        predicted = f"{_e(card.predicted_class)} ({_e(_fmt(card.probability, 3))})"
        probs = " · ".join(f"{_e(n)} {_e(_fmt(p, 3))}" for n, p in card.probabilities)
        predicted += f'<br><span class="probs">{probs}</span>'
    else:
        predicted = "n/a"
    badge = ('<span class="badge mis">misclassified</span>' if card.misclassified else
             '<span class="badge ok">correct</span>' if card.true_class and card.predicted_class else "")
    alt = (f"case {card.case_id}: image with the reference outline (blue) and the predicted outline (orange)")
    attrs = {"data-case": card.case_id, "data-dice": card.dice, "data-prob": card.probability,
             "data-true": card.true_class, "data-pred": card.predicted_class,
             "data-misclassified": "1" if card.misclassified else "0"}
    attr_text = " ".join(f'{k}="{_e(v)}"' for k, v in attrs.items())
    return (f'<article class="card{" mis" if card.misclassified else ""}" {attr_text}>'
            f'<h2>{_e(card.case_id)} {badge}</h2>'
            f'<img src="{_data_uri(card.png)}" width="{card.width}" height="{card.height}" alt="{_e(alt)}">'
            f"<dl><dt>Dice</dt>{dice}{hd95}"
            f"<dt>predicted</dt><dd>{predicted}</dd>"
            f"<dt>reference</dt><dd>{_e(card.true_class) if card.true_class else 'n/a'}</dd></dl></article>")


def _select(element_id: str, label: str, values: list[str], everything: str) -> str:
    opts = [f'<option value="">{_e(everything)}</option>'] + [f'<option value="{_e(v)}">{_e(v)}</option>'
                                                             for v in values]
    return f'<label>{_e(label)} <select id="{element_id}">{"".join(opts)}</select></label>'


def _class_order(cards: list[Card], class_names: list[str], attr: str) -> list[str]:
    """The classes a filter offers: those present, in the dataset's index order, then any others by name."""
    present = {getattr(c, attr) for c in cards if getattr(c, attr)}
    return [n for n in class_names if n in present] + sorted(present - set(class_names))


def _header_numbers(cards: list[Card], summary: dict | None) -> str:
    """One line: cases, mean Dice and accuracy as evaluate's summary says them (from the cards without one)."""
    parts = [f"{len(cards)} cases"]
    seg = (summary or {}).get("segmentation") or {}
    dice_mean = (seg.get("dice") or {}).get("mean")
    scored = [c.dice_value for c in cards if c.dice_value is not None]
    if dice_mean is None and scored:
        dice_mean = float(np.mean(scored))
    if dice_mean is not None:
        parts.append(f"mean Dice {dice_mean:.4f} over {len(scored)} scored")
    classified = [c for c in cards if c.true_class and c.predicted_class]
    accuracy = ((summary or {}).get("classification") or {}).get("accuracy")
    if accuracy is None and classified:
        accuracy = sum(not c.misclassified for c in classified) / len(classified)
    if accuracy is not None:
        parts.append(f"accuracy {accuracy:.4f}")
        parts.append(f"{sum(c.misclassified for c in cards)} misclassified")
    return " · ".join(_e(p) for p in parts)


def build_html(cards: list[Card], class_names: list[str], plot_png: bytes, *, title: str, inputs: dict[str, str],
               source: str, summary: dict | None, notes: list[str]) -> str:
    """The whole page: header (inputs, numbers, the Dice plot, the legend, notes), the controls, one card per case in
    the default order (worst Dice first, so the page reads right even with scripts off), and the script."""
    ordered = default_order(cards)
    meta = "".join(f'<p class="meta">{_e(k)}: {_e(v)}</p>' for k, v in inputs.items())
    note_items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    sort_options = "".join(f'<option value="{_e(k)}"{" selected" if k == DEFAULT_SORT else ""}>{_e(v)}</option>'
                           for k, v in SORTS.items())
    # the outline colours and the card width (the widest drawn image, room for the text; + padding and border)
    # are the only variable styles
    card_width = max([240] + [c.width for c in cards]) + 18
    css = (f":root {{ --ref: rgb{REFERENCE_COLOUR}; --pred: rgb{PREDICTION_COLOUR}; --both: rgb{OVERLAP_COLOUR}; "
           f"--card: {card_width}px; }}" + _CSS)
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>", f"<style>{css}</style></head>",
        "<body>", "<header>", f"<h1>{_e(title)}</h1>", meta,
        f'<p class="meta">numbers: {_e(source)}</p>',
        f'<p class="summary">{_header_numbers(cards, summary)}</p>',
        f'<img class="plot" src="{_data_uri(plot_png)}" alt="histogram and strip of the per-case Dice">',
        '<p class="legend"><span class="ref"><i></i>reference</span><span class="pred"><i></i>prediction</span>'
        '<span class="both"><i></i>both</span></p>',
        f'<ul class="notes">{note_items}</ul>' if notes else "",
        "</header>",
        '<form id="controls" onsubmit="return false">',
        f'<label>sort <select id="sort">{sort_options}</select></label>',
        '<label><input type="checkbox" id="misclassified"> misclassified only</label>',
        _select("ref-class", "reference class", _class_order(cards, class_names, "true_class"), "any"),
        _select("pred-class", "predicted class", _class_order(cards, class_names, "predicted_class"), "any"),
        '<label>case <input type="search" id="search" placeholder="id contains"></label>',
        f'<span id="shown">showing {len(cards)} of {len(cards)} cases</span>',
        "</form>",
        '<main id="grid">', *(_card_html(c) for c in ordered), "</main>",
        '<p id="empty" hidden>No case matches the filters.</p>',
        f"<script>{_JS}</script>", "</body></html>", ""])


# ----------------------------------------------------------------------------------------------- the command
def write_gallery(pred_dir, ref_dir, image_dirs: list, output=None, *, evaluation_dir=None, cases_csv=None,
                  class_labels=None, allow_missing: bool = False, overwrite: bool = False,
                  size: int = DEFAULT_SIZE, log: Callable[[str], None] = print) -> dict:
    """Write the gallery of ``pred_dir`` (masks and / or class_predictions.csv of ``nnunet_mtl predict``) against
    ``ref_dir`` with the images of ``image_dirs``; return {"html", "plot", "num_cases", "misclassified", "source",
    "notes"}. Everything the inputs can tell is checked before the first file is written, and each file is written
    atomically, so an error leaves no half-written page."""
    from nnunet_mtl.atomic import atomic_open, write_text_atomic
    from nnunet_mtl.evaluation.inputs import list_png_cases, prediction_folder
    from nnunet_mtl.inference.per_fold import per_fold_layout
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    image_dirs = [Path(d) for d in image_dirs]
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise NnunetMtlError(f"--size {size!r}: expected an integer from {MIN_SIZE} to {MAX_SIZE} (pixels on the "
                             f"longer side of each drawn image)")
    prediction_folder(pred_dir)
    layout = per_fold_layout(pred_dir)
    if layout is not None:
        subs = [name for name, _ in layout["folds"]] + ([layout["ensemble"][0]] if layout["ensemble"] else [])
        raise NnunetMtlError(f"{pred_dir} is a per-fold folder ({', '.join(subs)}); expected one prediction folder: "
                             f"make one gallery per subfolder, e.g. -pred {pred_dir / subs[-1]}")
    for folder in image_dirs:
        if not folder.is_dir():
            raise NnunetMtlError(f"image folder {folder} does not exist; expected the images that were predicted "
                                 f"(CASE_0000.png)")
    refs = list_png_cases(ref_dir, "reference")
    if not refs:
        raise NnunetMtlError(f"reference folder {ref_dir} has no .png files; expected CASE_ID.png label maps")
    evaluation_dir = Path(evaluation_dir) if evaluation_dir is not None else pred_dir / "evaluation"
    html_path, plot_path = output_paths(output if output is not None else evaluation_dir / GALLERY_NAME)
    check_outputs(html_path, plot_path, [pred_dir, ref_dir, *image_dirs], overwrite)

    results = per_case_results(pred_dir, ref_dir, evaluation_dir=evaluation_dir, cases_csv=cases_csv,
                               class_labels=class_labels, allow_missing=allow_missing)
    cases = [r["case_id"] for r in results.rows]
    no_ref = [c for c in cases if c not in refs]
    if no_ref:
        raise NnunetMtlError(f"{len(no_ref)} evaluated case(s) have no reference in {ref_dir}: {_some(no_ref)}; "
                             f"expected the reference folder evaluate used (-ref or -d)")
    masks = list_png_cases(pred_dir, "prediction")
    segmentation = "dice" in results.rows[0]
    no_mask = [c for c in cases if c not in masks] if segmentation else []
    if no_mask:
        raise NnunetMtlError(f"{len(no_mask)} evaluated case(s) have no mask in {pred_dir}: {_some(no_mask)}; "
                             f"expected CASE.png for every case of the evaluation (run nnunet_mtl evaluate again)")
    images = find_images(cases, image_dirs)

    from tqdm import tqdm
    cards = []
    for row in tqdm(results.rows, desc="drawing", unit="case", disable=None, file=sys.stderr):
        case = row["case_id"]
        cards.append(make_card(row, results.class_names, images[case], masks[case] if segmentation else None,
                               refs[case], size))
    plot_png = plot_dice_distribution(cards)
    notes = list(results.notes)
    if not segmentation:
        notes.append(f"classification only: no masks in {pred_dir}; only the reference outline is drawn")
    page = build_html(cards, results.class_names, plot_png, title=f"Case gallery: {pred_dir}",
                      inputs={"predictions": str(pred_dir), "reference": str(ref_dir),
                              "images": ", ".join(map(str, image_dirs))},
                      source=results.source, summary=results.summary, notes=notes)
    with atomic_open(plot_path, "wb") as f:
        f.write(plot_png)
    write_text_atomic(page, html_path)
    misclassified = sum(c.misclassified for c in cards)
    log(f"gallery of {len(cards)} cases ({misclassified} misclassified); numbers {results.source}")
    return {"html": html_path, "plot": plot_path, "num_cases": len(cards), "misclassified": misclassified,
            "source": results.source, "notes": notes}
