"""``nnunet_mtl crossval -d D -c 2d -tr T1 T2 ... -f 0 1 2``: the cross-validation of each model with its classes.

For each model: nnU-Net's merged folder ``TRAINER__PLANS__CONF/crossval_results_folds_0_1_2`` (made with nnU-Net's
own ``accumulate_cv_results`` when missing; the one ``nnUNetv2_find_best_configuration`` made, with its
``postprocessing.pkl``, is used as it is after checking that it holds the folds' current masks), the folds'
``class_predictions.csv`` merged into it, and ``nnunet_mtl evaluate`` of both tasks into its ``evaluation/``. Then
the models ranked by nnU-Net's Dice (``--select dice``, what find_best_configuration chooses by) or by the
multitask score 0.5 · Dice + 0.5 · AUC (``--select multitask``), printed and written to
``nnUNet_results/DatasetNNN_X/crossval_classes_folds_0_1_2.json``. See docs/evaluation.md.
"""
from __future__ import annotations

import filecmp
import itertools
import json
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError


def register(subparsers):
    p = subparsers.add_parser(
        "crossval", help="merge each model's cross-validation (masks and classes), evaluate it, rank the models",
        description="The classes of nnUNetv2_find_best_configuration's cross-validation: each model's folds' "
                    "validation masks (nnU-Net's crossval_results_folds_* folder) and class_predictions.csv merged, "
                    "evaluated for both tasks, and the models ranked by Dice or by 0.5 Dice + 0.5 AUC.")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", nargs="+", default=["2d"], help="configurations (default 2d)")
    p.add_argument("-tr", nargs="+", default=["nnUNetTrainerMTL"], help="trainers (default nnUNetTrainerMTL)")
    p.add_argument("-p", nargs="+", default=["nnUNetPlans"], help="plans identifiers (default nnUNetPlans)")
    p.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0 1 2 3 4)")
    p.add_argument("--select", choices=("dice", "multitask"), default="dice",
                   help="rank by nnU-Net's Dice of the merged folder (default, as nnUNetv2_find_best_configuration) "
                        "or by 0.5 Dice + 0.5 AUC (the score our trainers select checkpoints with)")
    p.add_argument("-np", type=int, default=1, help="processes for nnU-Net's merge and our evaluation (default 1)")
    p.set_defaults(func=run)


def _validation_masks(folder: Path, ending: str) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file() and p.name.endswith(ending)} if folder.is_dir() else {}


def check_merged_masks(model: Path, folds: list[int], merged: Path, ending: str) -> None:
    """A merged folder made before (by nnUNetv2_find_best_configuration, or an earlier run) holds exactly the folds'
    current validation masks; else it is stale (a fold retrained since) and is not silently reused."""
    current = {}
    for k in folds:
        current.update(_validation_masks(model / f"fold_{k}" / "validation", ending))
    there = _validation_masks(merged, ending)
    missing, extra = sorted(set(current) - set(there)), sorted(set(there) - set(current))
    changed = [n for n in sorted(set(current) & set(there)) if not filecmp.cmp(current[n], there[n], shallow=False)]
    for cases, what in ((missing, "lacks the mask of"), (extra, "has masks of no fold's validation, e.g."),
                        (changed, "differs from the fold's validation mask of")):
        if cases:
            raise NnunetMtlError(f"{merged} {what} {cases[0]} ({len(cases)} case(s)): made before a fold was "
                                 f"trained again? expected nnUNetv2_find_best_configuration to be rerun, or the "
                                 f"folder removed (nnunet_mtl crossval then makes it)")


def crossval_model(model: Path, folds: list[int], raw: Path, num_processes: int) -> dict:
    """Merge, evaluate and summarise one model's cross-validation (module docstring); its table row."""
    from nnunet_mtl.dataset.contract import read_json_object
    from nnunet_mtl.evaluation.crossval import crossval_folder_name, merge_fold_class_predictions, multitask_score
    from nnunet_mtl.inference.models import model_class_names
    from nnunet_mtl.evaluation.evaluate import evaluate_folder
    from nnunet_mtl.evaluation.inputs import load_class_labels
    plans = read_json_object(model / "plans.json", "the plans.json nnUNetv2_train wrote")
    dataset_json = read_json_object(model / "dataset.json", "the dataset.json nnUNetv2_train copied there")
    ending = dataset_json.get("file_ending", ".png")
    merged = model / crossval_folder_name(folds)
    for k in folds:
        if not (model / f"fold_{k}" / "validation").is_dir():
            raise NnunetMtlError(f"{model / f'fold_{k}' / 'validation'} not found; expected fold {k} trained and "
                                 f"validated (nnUNetv2_train ... {k}, or --val)")
    segments = (plans.get("nnunet_mtl") or {}).get("segments", True) and any(
        _validation_masks(model / f"fold_{k}" / "validation", ending) for k in folds)
    classifies = ((plans.get("nnunet_mtl") or {}).get("head") or {}).get("kind") != "none" and bool(
        model_class_names(plans))
    if segments:
        if (merged / "summary.json").is_file():
            check_merged_masks(model, folds, merged, ending)
        else:
            from nnunetv2.evaluation.accumulate_cv_results import accumulate_cv_results
            accumulate_cv_results(str(model), str(merged), folds, num_processes, overwrite=True)
    classes = merge_fold_class_predictions(model, folds, merged) if classifies else None
    summary = evaluate_folder(merged, raw / "labelsTr", class_predictions_csv=classes,
                              cases_csv=raw / "cases.csv" if classes else None,
                              class_labels=load_class_labels(raw / "dataset.json") if classes else None,
                              output_dir=merged / "evaluation", num_processes=num_processes)
    nnunet_dice = None
    if segments:
        nnunet_summary = json.loads((merged / "summary.json").read_text())
        nnunet_dice = (nnunet_summary.get("foreground_mean") or {}).get("Dice")
    cls = summary.get("classification") or {}
    return {"model": model.name, "folder": str(merged), "dice": nnunet_dice,
            "dice_ours": ((summary.get("segmentation") or {}).get("dice") or {}).get("mean"),
            "auc": cls.get("auc"), "macro_f1": cls.get("macro_f1"), "balanced_accuracy": cls.get("balanced_accuracy"),
            "multitask": multitask_score(nnunet_dice, cls.get("auc")), "num_cases": summary.get("num_cases")}


def run(args) -> int:
    from nnunet_mtl.atomic import write_text_atomic
    from nnunet_mtl.inference.models import model_folder_for
    from nnunet_mtl.evaluation.crossval import crossval_folder_name, format_crossval_table, rank_models
    from nnunet_mtl.paths import env_with_ext_trainer, find_dataset_folder, raw_root, results_root
    import os
    os.environ.update(env_with_ext_trainer())
    folds = list(dict.fromkeys(args.f))
    if any(k < 0 for k in folds):
        raise NnunetMtlError(f"-f {' '.join(map(str, args.f))}: fold numbers are 0 or more")
    raw = find_dataset_folder(args.d, raw_root())
    # every model folder is found before anything is merged
    models = [model_folder_for(args.d, tr, p, c) for tr, p, c in itertools.product(args.tr, args.p, args.c)]
    rows = []
    for i, model in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {model.name}: merging folds {', '.join(map(str, folds))} and evaluating",
              flush=True)
        rows.append(crossval_model(model, folds, raw, args.np))
    ranked = rank_models(rows, args.select)
    best = ranked[0]
    trainer, plans, configuration = best["model"].split("__")
    command = (f"nnunet_mtl predict -d {args.d} -c {configuration} -tr {trainer} -p {plans} "
               f"-f {' '.join(map(str, folds))} -i INPUT_FOLDER -o OUTPUT_FOLDER")
    out = results_root() / models[0].parent.name / f"{crossval_folder_name(folds).replace('results', 'classes')}.json"
    write_text_atomic(json.dumps({"dataset": models[0].parent.name, "folds": folds, "select": args.select,
                                  "models": ranked, "chosen": best["model"], "predict": command}, indent=2), out)
    print()
    print(format_crossval_table(ranked, args.select))
    print(f"\npredict with the chosen model: {command}")
    print(f"wrote {out}; each model's merged folder has class_predictions.csv and evaluation/")
    return 0
