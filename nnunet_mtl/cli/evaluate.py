"""``nnunet_mtl evaluate``: Dice / IoU / HD95 / NSD and classification metrics (with calibration and bootstrap 95%
confidence intervals) of a prediction folder, or mean ± std and the t-based 95% CI of the mean over several runs'
summary.json files (``--aggregate``). References holding nnU-Net's ignore label (box / none annotations) are left out
of the segmentation metrics; ``--attention`` also scores the lesion maps of ``predict --save-attention``.
A folder written by ``nnunet_mtl predict --per-fold`` is evaluated subfolder by subfolder, with the folds' mean ± std
next to the fold ensemble; a folder of class predictions without masks (a classification-only model) is scored on
classification only (docs/evaluation.md)."""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

# the defaults, repeated here so that the help needs no numpy / scipy import; tests check they match the package's
DEFAULT_NSD_TOLERANCE_MM = 1.0
DEFAULT_NSD_TOLERANCE_PX = 2.0
DEFAULT_ECE_BINS = 15
DEFAULT_BOOTSTRAP = 1000
DEFAULT_BOOTSTRAP_SEED = 0
_METRIC_OPTIONS = {"nsd_tolerance": ("--nsd-tolerance", "nsd_tolerance_mm", DEFAULT_NSD_TOLERANCE_MM),
                   "nsd_tolerance_px": ("--nsd-tolerance-px", "nsd_tolerance_px", DEFAULT_NSD_TOLERANCE_PX),
                   "ece_bins": ("--ece-bins", "ece_bins", DEFAULT_ECE_BINS),
                   "bootstrap": ("--bootstrap", "bootstrap", DEFAULT_BOOTSTRAP),
                   "bootstrap_seed": ("--bootstrap-seed", "bootstrap_seed", DEFAULT_BOOTSTRAP_SEED)}


def register(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="Dice/IoU/HD95/NSD + precision/recall/F1/AUC/MCC/Brier/ECE of predictions, with bootstrap "
                         "95%% CIs; or aggregate several summaries",
        description="Mode 1: evaluate the masks in -pred against -ref (and class_predictions.csv against the classes "
                    "in cases.csv); writes per_case.csv, summary.json and plots to -o (default PRED/evaluation). "
                    "A -pred folder written by nnunet_mtl predict --per-fold (per_fold.json, fold_K/, ensemble/) is "
                    "evaluated per subfolder (each into SUB/evaluation), and PRED/evaluation/per_fold_summary.json "
                    "holds the mean ± std over the folds next to the fold ensemble's numbers. "
                    "A -pred folder with no masks but a class_predictions.csv (a classification-only model) is scored "
                    "on classification only, over the reference cases (segmentation null in summary.json). "
                    "References with nnU-Net's ignore label (or box / none in cases.csv) are left out of the "
                    "segmentation metrics and kept in classification. "
                    "Mode 2: --aggregate S1.json S2.json ...: mean ± std and t-based 95%% CI of every metric over "
                    "folds or runs. "
                    "HD95 follows MONAI (max of the two directed 95th percentiles); NSD is Nikolov et al. 2021's "
                    "surface Dice; see summary.json 'definitions' and docs/evaluation.md.")
    p.add_argument("-pred", help="folder of predicted CASE_ID.png masks (e.g. the output of nnunet_mtl predict), or a "
                                 "folder written by nnunet_mtl predict --per-fold, or a folder holding only "
                                 "class_predictions.csv (a classification-only model)")
    p.add_argument("-ref", help="folder of reference CASE_ID.png masks (default with -d: "
                                "nnUNet_raw/DatasetNNN_X/labelsTs)")
    p.add_argument("-d", help="dataset id or name: takes -ref, --cases and --class-labels from nnUNet_raw/DatasetNNN_X")
    p.add_argument("--classes", help="class_predictions.csv (default: PRED/class_predictions.csv when it exists)")
    p.add_argument("--cases", help="the raw dataset's cases.csv (reference classes, pixel spacing for HD95 in mm)")
    p.add_argument("--class-labels", dest="class_labels",
                   help="dataset.json with 'class_labels' (names and indices of the classes)")
    p.add_argument("-o", help="output folder (default PRED/evaluation; for a per-fold folder: O/fold_K, O/ensemble and "
                              "O/per_fold_summary.json instead of PRED/SUB/evaluation and PRED/evaluation); with "
                              "--aggregate: the aggregate JSON file (a new file, never one of the inputs)")
    p.add_argument("-np", type=int, default=1, help="worker processes for the per-case metrics (default 1; at most "
                                                     "the cores and the cases)")
    p.add_argument("--allow-missing", dest="allow_missing", action="store_true",
                   help="report reference cases without prediction instead of failing")
    p.add_argument("--overwrite", action="store_true",
                   help="with --aggregate: replace an existing -o file (never one of the inputs)")
    p.add_argument("--nsd-tolerance", dest="nsd_tolerance", type=float, default=None, metavar="MM",
                   help=f"tolerance of nsd_mm, in mm, for cases with a spacing in cases.csv (default "
                        f"{DEFAULT_NSD_TOLERANCE_MM:g} mm: about the lateral resolution of a breast / thyroid probe)")
    p.add_argument("--nsd-tolerance-px", dest="nsd_tolerance_px", type=float, default=None, metavar="PX",
                   help=f"tolerance of nsd_px, in pixels (default {DEFAULT_NSD_TOLERANCE_PX:g} px: the rasterization "
                        f"jitter of two outlines; needs no spacing)")
    p.add_argument("--ece-bins", dest="ece_bins", type=int, default=None, metavar="M",
                   help=f"equal-width bins of the expected calibration error (default {DEFAULT_ECE_BINS})")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help=f"bootstrap resamples for the 95%% confidence intervals (default {DEFAULT_BOOTSTRAP}; "
                        f"0: none); patients are resampled when cases.csv shows several images of a patient")
    p.add_argument("--bootstrap-seed", dest="bootstrap_seed", type=int, default=None, metavar="S",
                   help=f"seed of the bootstrap (default {DEFAULT_BOOTSTRAP_SEED}); the same seed gives the same "
                        f"intervals")
    p.add_argument("--attention", action="store_true",
                   help="also score the lesion maps PRED/attention/CASE.png written by nnunet_mtl predict "
                        "--save-attention: attention_iou, the IoU of P >= 0.5 with the reference lesion (Fan et al.'s "
                        "JSI of the localization); every predicted case needs one")
    p.add_argument("--aggregate", nargs="+", metavar="SUMMARY_JSON",
                   help="aggregate these summary.json files (folds / repeated runs) into mean ± std and the t-based "
                        "95%% CI of the mean")
    p.set_defaults(func=run)


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise NnunetMtlError(f"{what} {path} is a folder; expected a file")
    if not path.is_file():
        raise NnunetMtlError(f"{what} {path} does not exist")
    return path


def _check_output_folder(out: Path, inputs: list[Path]) -> None:
    """The evaluation's output folder must not be one of the folders it reads: its CSV, JSON and PNG files would
    land among the masks (and a case named like one of them would be overwritten)."""
    for folder in inputs:
        if folder.exists() and out.resolve() == folder.resolve():
            raise NnunetMtlError(f"-o {out} is the input folder {folder}; expected a separate output folder "
                                 f"(default {folder / 'evaluation'} for -pred)")


def metric_options(args) -> dict:
    """The evaluate_folder keywords of the metric options (defaults where not given), checked."""
    from nnunet_mtl.evaluation.evaluate import check_metric_options
    options = {key: default if getattr(args, attr, None) is None else getattr(args, attr)
               for attr, (_flag, key, default) in _METRIC_OPTIONS.items()}
    check_metric_options(**options)
    return options


def run(args) -> int:
    from nnunet_mtl.evaluation.aggregate import aggregate_summaries
    from nnunet_mtl.evaluation.evaluate import evaluate_folder, written_files
    from nnunet_mtl.evaluation.formatting import format_aggregate_table, format_per_fold_table, format_summary_table
    from nnunet_mtl.evaluation.inputs import load_class_labels, prediction_folder, reference_inputs
    from nnunet_mtl.evaluation.per_fold import PER_FOLD_SUMMARY, PER_FOLD_SUMMARY_CSV, evaluate_per_fold
    from nnunet_mtl.inference.per_fold import per_fold_layout
    if args.aggregate:
        if args.pred or args.ref or args.d:
            raise NnunetMtlError("--aggregate takes summary.json files only; do not combine it with -pred/-ref/-d")
        given = [flag for attr, (flag, _key, _default) in _METRIC_OPTIONS.items()
                 if getattr(args, attr, None) is not None] + (["--attention"] if args.attention else [])
        if given:
            one = len(given) == 1
            raise NnunetMtlError(f"{', '.join(given)} {'applies' if one else 'apply'} to evaluating predictions, not "
                                 f"to --aggregate (which averages finished summaries); leave {'it' if one else 'them'} "
                                 f"out")
        agg = aggregate_summaries(args.aggregate, output_path=args.o, overwrite=args.overwrite)
        print(format_aggregate_table(agg))
        if args.o:
            print(f"wrote {args.o}")
        return 0

    if not args.pred:
        raise NnunetMtlError("expected -pred PRED_DIR (with -ref REF_DIR or -d DATASET), or --aggregate S1.json ...")
    options = metric_options(args)
    pred = prediction_folder(args.pred)
    _, ref, cases, labels_json = reference_inputs(pred, dataset=args.d, ref=args.ref, cases=args.cases,
                                                  class_labels=args.class_labels)
    if ref is None:
        raise NnunetMtlError("no reference: pass -ref REF_DIR or -d DATASET (uses nnUNet_raw/DatasetNNN_X/labelsTs)")

    from nnunet_mtl.resources import cap_processes, capped
    masks = len(list(pred.glob("*.png")))
    layout = per_fold_layout(pred)
    if layout is None and not masks:  # classification only: no per-case work, -np is not used (below 1 still wrong)
        capped(args.np, "-np")
        if args.np > 1 and (args.classes or (pred / "class_predictions.csv").is_file()):
            print(f"note: -np {args.np} not used: {pred} has no masks to score (classification only)")
        args.np = 1
    else:  # at most one process per mask; a per-fold folder (masks in its subfolders): the cores
        args.np = cap_processes(args.np, "-np", masks or None, what="cases")
    if args.o:
        inputs = [pred, ref]
        if layout is not None:
            inputs += [pred / name for name, _ in layout["folds"]]
            if layout["ensemble"]:
                inputs.append(pred / layout["ensemble"][0])
        _check_output_folder(Path(args.o), inputs)
    if layout is not None:
        if args.classes:
            raise NnunetMtlError(f"--classes names one class_predictions.csv, but {pred} is a per-fold folder with one "
                                 f"per subfolder (used automatically); leave --classes out")
        if cases is not None:
            _existing_file(cases, "case table")
        class_labels = load_class_labels(labels_json) if labels_json is not None else None
        result = evaluate_per_fold(pred, ref, layout, cases_csv=cases, class_labels=class_labels, output_dir=args.o,
                                   num_processes=args.np, allow_missing=args.allow_missing, attention=args.attention,
                                   **options)
        print()
        print(format_per_fold_table(result))
        print()
        out = Path(args.o) if args.o else pred / "evaluation"
        print(f"wrote {out / PER_FOLD_SUMMARY}, {out / PER_FOLD_SUMMARY_CSV}")
        return 0

    classes = Path(args.classes) if args.classes else None
    if classes is not None:
        _existing_file(classes, "class predictions")
    elif (pred / "class_predictions.csv").is_file():
        if cases is not None:
            classes = pred / "class_predictions.csv"
        elif masks:  # without masks evaluate_folder says that a classification-only folder needs the classes
            print(f"note: {pred / 'class_predictions.csv'} not evaluated: the reference classes need --cases or -d")
    elif masks and any(pred.glob("class_predictions_part*.csv")):
        print(f"note: {pred} has class_predictions_part*.csv (from -num_parts) but no class_predictions.csv: "
              f"classification not evaluated (merge the parts, or pass one with --classes)")
    elif masks:
        print(f"note: {pred} has masks but no class_predictions.csv: classification not evaluated (nnUNetv2_predict "
              f"and nnUNetv2_apply_postprocessing write masks only; nnunet_mtl predict writes the CSV; after "
              f"postprocessing, pass the unprocessed folder's with --classes, or copy it beside the masks)")
    if cases is not None:
        _existing_file(cases, "case table")
    class_labels = load_class_labels(labels_json) if labels_json is not None else None

    out = Path(args.o) if args.o else pred / "evaluation"
    summary = evaluate_folder(pred, ref, class_predictions_csv=classes, cases_csv=cases, class_labels=class_labels,
                              output_dir=out, num_processes=args.np, allow_missing=args.allow_missing,
                              attention=args.attention, **options)
    print(format_summary_table(summary))
    print()
    for path in written_files(out):
        print(f"wrote {path}")
    return 0
