"""``nnunet_mtl predict``: nnUNetv2_predict's flags; same masks, plus ``class_predictions.csv``.

``--per-fold`` (with ``-f K1 K2 ...``, at least two folds) runs the same prediction once per fold's model alone,
into ``OUT/fold_K/``, and once with all folds, into ``OUT/ensemble/`` (exactly what ``-f K1 K2 ...`` without the
flag writes into OUT), and records in ``OUT/per_fold.json`` which subfolder is which. Everything that can be
checked (folds, checkpoints, inputs, the output folder) is checked before the first prediction.

``--save-attention`` also writes ``OUT/attention/CASE.png`` (each subfolder's own with ``--per-fold``): the lesion
map P of a head that returns one (Fan et al.'s lesion-aware head), as uint8 round(255 P) in the image's geometry
(:mod:`nnunet_mtl.inference.predictor`); a model whose head has none is refused before anything is predicted. The
masks and class_predictions.csv are the same bytes as without the flag.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.cli.model_arguments import add_model_arguments, add_per_fold_argument
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.models import PLANS_KEY, check_per_fold_folds, parse_folds
from nnunet_mtl.inference.per_fold import (
    ENSEMBLE_SUBFOLDER,
    fold_subfolder,
    per_fold_info,
    refuse_per_fold_folder,
    start_per_fold_output,
    sub_run_args,
)
from nnunet_mtl.inference.runner import (
    ATTENTION_FOLDER,
    check_attention_model,
    check_prediction_output,
    class_predictions_name,
    note_missing_attention,
    note_unmatched,
    predict_into,
    preflight,
    print_precision,
)


def register(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment and classify images with a trained multitask model (nnUNetv2_predict's flags)",
        description="Runs nnU-Net's predictor (identical segmentations to nnUNetv2_predict; on a CPU with native "
                    "bfloat16 equal up to rounding unless --cpu-amp off) and also writes "
                    "OUTPUT/class_predictions.csv with per-case class probabilities, averaged over test-time "
                    "mirroring, tiles and folds.")
    add_model_arguments(p)
    p.add_argument("--save_probabilities", action="store_true", help="also export segmentation probabilities")
    p.add_argument("--continue_prediction", action="store_true", help="keep existing outputs, predict the rest")
    p.add_argument("-prev_stage_predictions", default=None, help="previous stage predictions (cascade)")
    p.add_argument("-num_parts", type=int, default=1)
    p.add_argument("-part_id", type=int, default=0)
    p.add_argument("--save-attention", dest="save_attention", action="store_true",
                   help="also write OUTPUT/attention/CASE.png: the head's lesion map P (e.g. nnUNetTrainerLesionAware: "
                        "Fan et al.'s attention at the bottleneck's resolution), upsampled and averaged over mirrors, "
                        "tiles and folds, in the image's geometry as uint8 round(255 P); for nnunet_mtl evaluate "
                        "--attention. Refused for a head without an attention map")
    add_per_fold_argument(p, "masks and class_predictions.csv")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------- folds


def check_parts(args) -> None:
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise NnunetMtlError(f"-part_id {args.part_id} must be smaller than -num_parts {args.num_parts} (and both "
                             f"at least 0 and 1)")


def run(args) -> int:
    check_parts(args)
    if args.per_fold:
        return run_per_fold(args)
    output = Path(args.o)
    refuse_per_fold_folder(output, "predicting")
    checked = preflight(args, parse_folds(args.f))
    check_prediction_output(output, class_predictions_name(args), checked)
    print_precision(args)
    csv_path, count = predict_into(args, output, checked)
    print(f"segmentations: {output}\nclass probabilities ({count} cases predicted now): {csv_path}")
    if args.save_attention:
        print(f"lesion maps: {output / ATTENTION_FOLDER}")
    if args.num_parts == 1 and (checked["plans"].get(PLANS_KEY) or {}).get("segments", True):
        note_unmatched(output, csv_path, checked["dataset_json"].get("file_ending", ".png"))
        if args.save_attention:
            note_missing_attention(output, checked["dataset_json"].get("file_ending", ".png"))
    return 0


def run_per_fold(args) -> int:
    """One prediction per fold's model alone (OUT/fold_K) and one of the fold ensemble (OUT/ensemble)."""
    folds = check_per_fold_folds(args.f)
    checked = preflight(args, folds)
    output = Path(args.o)
    from nnunet_mtl.outputs import check_output_folder
    check_output_folder(output)
    for sub in [fold_subfolder(k) for k in folds] + [ENSEMBLE_SUBFOLDER]:
        check_prediction_output(output / sub, class_predictions_name(args), checked)
    if getattr(args, "save_attention", False):
        check_attention_model(args, checked, folds[0])
    info = per_fold_info(args, "predict", folds, checked["model_folder"], output)
    print_precision(args)
    start_per_fold_output(args, info, checked["dataset_json"].get("file_ending", ".png"))
    runs = [(f"fold {i + 1}/{len(folds)}: fold {k}'s model alone", [k], output / fold_subfolder(k))
            for i, k in enumerate(folds)]
    runs.append((f"ensemble: folds {', '.join(map(str, folds))} together", folds, output / ENSEMBLE_SUBFOLDER))
    written = []
    for label, run_folds, sub in runs:
        print(f"{label} -> {sub}", flush=True)
        csv_path, count = predict_into(sub_run_args(args, run_folds, sub), sub, checked)
        written.append((sub, csv_path, count))
        print(f"{label}: {count} cases predicted now, {csv_path}", flush=True)
    print(f"\nper-fold prediction in {output} ({output / 'per_fold.json'} says which subfolder is which):")
    for sub, csv_path, count in written:
        extra = f", {ATTENTION_FOLDER}/" if getattr(args, "save_attention", False) else ""
        print(f"  {sub.name + '/':<12} masks{extra} and {csv_path.name} ({count} cases predicted now)")
    print(f"evaluate all subfolders (mean ± std over folds, and the ensemble): {info['evaluate']}")
    return 0
