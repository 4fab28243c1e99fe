"""``nnunet_mtl gallery -pred PRED -d D``: one static HTML page with every case of a prediction folder (the image with
the reference and predicted outlines, Dice, predicted class and probability, reference class), sortable and
filterable, plus a Dice distribution plot; the numbers are ``nnunet_mtl evaluate``'s (nnunet_mtl.evaluation.gallery,
docs/gallery.md)."""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

DEFAULT_SIZE = 320  # repeated here so that the help needs no numpy import; the test checks it matches the library


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gallery", help="one HTML page with every case: image, reference and predicted outlines, Dice, classes",
        description="Writes one self-contained HTML file (images embedded, no server, no network) with a card per "
                    "case: the image with the reference outline (blue) and the predicted outline (orange), the "
                    "Dice, the predicted class with its probability and the reference class; sortable (worst Dice "
                    "first by default, by probability, by case) and filterable (misclassified only, by reference or "
                    "predicted class, by case id), also through the URL (#sort=dice-desc&filter=misclassified). "
                    "The numbers are nnunet_mtl evaluate's: PRED/evaluation/per_case.csv when it exists, else "
                    "computed the way evaluate computes them. Also writes OUT_dice_distribution.png. "
                    "See docs/gallery.md.")
    p.add_argument("-pred", required=True, help="prediction folder (CASE.png masks and / or class_predictions.csv "
                                                "of nnunet_mtl predict; for --per-fold output one of its subfolders)")
    p.add_argument("-d", help="dataset id or name: reference labelsTs (labelsTr for a training fold's validation), "
                              "cases.csv, dataset.json and the images (imagesTs, imagesTr) of nnUNet_raw/DatasetNNN_X")
    p.add_argument("-ref", help="folder of reference CASE.png masks (instead of or over -d's)")
    p.add_argument("--cases", help="the raw dataset's cases.csv (reference classes), when there is no per_case.csv "
                                   "yet and no -d")
    p.add_argument("--class-labels", dest="class_labels", help="dataset.json with 'class_labels', as for evaluate")
    p.add_argument("-i", nargs="+", metavar="IMAGES", help="folder(s) of the predicted images (CASE_0000.png); "
                                                           "default: -d's imagesTs and imagesTr, or the images folder "
                                                           "beside -ref (labelsTs -> imagesTs)")
    p.add_argument("-o", help="the HTML file to write (default EVALUATION/gallery.html, i.e. PRED/evaluation/); the "
                              "plot goes beside it as NAME_dice_distribution.png")
    p.add_argument("--evaluation", metavar="DIR", help="where evaluate wrote per_case.csv and summary.json (its -o; "
                                                       "default PRED/evaluation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gallery and its plot")
    p.add_argument("--allow-missing", dest="allow_missing", action="store_true",
                   help="as for evaluate, when the numbers are computed: leave out references without prediction")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, metavar="PX",
                   help=f"longer side of each drawn image in pixels (default {DEFAULT_SIZE}; the page's size grows "
                        f"with its square)")
    p.set_defaults(func=run)


def image_folders(args, raw: Path | None, ref: Path) -> list[Path]:
    """Where the images are, as predict reads them: -i; else the raw dataset's imagesTs / imagesTr (the one beside
    the reference first); else the images folder beside a labelsTs / labelsTr reference."""
    if args.i:
        return [Path(i) for i in args.i]
    if raw is not None:
        order = ("imagesTr", "imagesTs") if ref.name == "labelsTr" else ("imagesTs", "imagesTr")
        found = [raw / name for name in order if (raw / name).is_dir()]
        if found:
            return found
    if ref.name.startswith("labels") and (ref.parent / ("images" + ref.name[len("labels"):])).is_dir():
        return [ref.parent / ("images" + ref.name[len("labels"):])]
    raise NnunetMtlError(f"no images for the reference {ref}: pass -i IMAGES (the folder that was predicted, "
                         f"CASE_0000.png) or -d DATASET")


def run(args) -> int:
    from nnunet_mtl.evaluation.inputs import load_class_labels, prediction_folder, reference_inputs
    from nnunet_mtl.evaluation.gallery import write_gallery
    pred = prediction_folder(args.pred)
    # as evaluate finds them
    raw, ref, cases, labels_json = reference_inputs(pred, dataset=args.d, ref=args.ref, cases=args.cases,
                                                    class_labels=args.class_labels)
    if ref is None:
        raise NnunetMtlError("no reference: pass -ref LABELS_FOLDER or -d DATASET (uses nnUNet_raw/DatasetNNN_X/"
                             "labelsTs and its images)")
    for path, what in ((cases, "case table"), (labels_json, "class labels")):
        if path is not None and not path.is_file():
            raise NnunetMtlError(f"{what} {path} is a folder; expected a file" if path.is_dir() else
                                 f"{what} {path} does not exist")
    images = image_folders(args, raw, ref)
    class_labels = load_class_labels(labels_json) if labels_json is not None else None
    result = write_gallery(pred, ref, images, args.o, evaluation_dir=args.evaluation, cases_csv=cases,
                           class_labels=class_labels, allow_missing=args.allow_missing, overwrite=args.overwrite,
                           size=args.size)
    print(f"wrote {result['html']}")
    print(f"wrote {result['plot']}")
    return 0
