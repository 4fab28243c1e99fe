"""The classes of a cross-validation, next to nnU-Net's masks.

nnU-Net's ``accumulate_cv_results`` (run by ``nnUNetv2_find_best_configuration`` and
``nnUNetv2_accumulate_crossval_results``) copies the masks of every fold's ``validation/`` into
``TRAINER__PLANS__CONF/crossval_results_folds_0_1_2/`` and ranks models by their Dice. It does not know the class
probabilities our trainers write beside those masks (``fold_K/validation/class_predictions.csv``). Here they are
merged the same way (:func:`merge_fold_class_predictions`: each case from the one fold that validated it), so that
``nnunet_mtl evaluate`` scores both tasks of the merged folder, and models are ranked by Dice (nnU-Net's choice) or
by the multitask score our trainers select checkpoints with (:func:`multitask_score`).
"""
from __future__ import annotations

import math
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.class_predictions import CLASS_PREDICTIONS
from nnunet_mtl.inference.models import model_class_names

SELECTIONS = ("dice", "multitask")


def crossval_folder_name(folds) -> str:
    """nnU-Net's name of the merged folder (``folds_tuple_to_string``): crossval_results_folds_0_1_2."""
    return "crossval_results_folds_" + "_".join(str(k) for k in folds)


def merge_fold_class_predictions(model_folder, folds, merged_folder) -> Path:
    """``merged_folder/class_predictions.csv``: the rows of every fold's ``validation/class_predictions.csv``, each
    case once. Everything is read and checked before the file is written (atomically): a fold without the CSV (a
    model of plain nnU-Net, or a validation not run), a case validated by two folds (the splits were edited between
    trainings), a CSV of other classes than the model's plans."""
    from nnunet_mtl.dataset.contract import read_json_object
    from nnunet_mtl.inference.class_predictions import read_class_prediction_rows, write_class_predictions
    model_folder, merged_folder = Path(model_folder), Path(merged_folder)
    plans = read_json_object(model_folder / "plans.json", "the plans.json nnUNetv2_train wrote")
    names = model_class_names(plans)
    if not names:
        raise NnunetMtlError(f"{model_folder / 'plans.json'} has no class labels; expected a model of an nnunet_mtl "
                             f"trainer (a plain nnU-Net model has no classes to merge)")
    rows: dict[str, dict] = {}
    origin: dict[str, int] = {}
    for k in folds:
        path = model_folder / f"fold_{k}" / "validation" / CLASS_PREDICTIONS
        if not path.is_file():
            raise NnunetMtlError(f"{path} not found; expected fold {k}'s final validation to have run (nnUNetv2_train "
                                 f"... {k} --val, with an nnunet_mtl trainer)")
        for case, row in read_class_prediction_rows(path, names).items():
            if case in rows:
                raise NnunetMtlError(f"case {case} is in the validation of fold {origin[case]} and of fold {k} "
                                     f"({path}); expected each case validated by one fold (were the splits changed "
                                     f"between trainings?)")
            rows[case], origin[case] = row, k
    probabilities = {case: [float(row[f"prob_{n}"]) for n in names] for case, row in rows.items()}
    merged_folder.mkdir(parents=True, exist_ok=True)
    return write_class_predictions(merged_folder / CLASS_PREDICTIONS, names, probabilities, merge_existing=False)


def multitask_score(dice: float | None, auc: float | None) -> float | None:
    """0.5 · Dice + 0.5 · AUC: the score our trainers select their best checkpoint with (there on the validation
    patches' pseudo Dice), here on the merged cross-validation; None when either is undefined."""
    if dice is None or auc is None or not (math.isfinite(dice) and math.isfinite(auc)):
        return None
    return 0.5 * dice + 0.5 * auc


def rank_models(rows: list[dict], select: str) -> list[dict]:
    """``rows`` ({"model", "dice", "auc", "multitask", ...}) best first by ``select`` ("dice", as
    nnUNetv2_find_best_configuration, or "multitask"); rows without the value last, ties by model name."""
    if select not in SELECTIONS:
        raise NnunetMtlError(f"--select {select!r}; expected one of {', '.join(SELECTIONS)}")
    return sorted(rows, key=lambda r: (r.get(select) is None, -(r.get(select) or 0.0), r["model"]))


def format_crossval_table(rows: list[dict], select: str) -> str:
    """The ranked models as a table, the chosen one marked."""
    def number(v):
        return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"
    width = max([len("model")] + [len(r["model"]) for r in rows])
    lines = [f"  {'model':<{width}}  {'Dice':>7}  {'AUC':>7}  {'macro F1':>8}  {'bal. acc.':>9}  {'multitask':>9}  "
             f"cases",
             "  " + "-" * (width + 58)]
    for i, r in enumerate(rows):
        mark = "*" if i == 0 else " "
        lines.append(f"{mark} {r['model']:<{width}}  {number(r.get('dice')):>7}  {number(r.get('auc')):>7}  "
                     f"{number(r.get('macro_f1')):>8}  {number(r.get('balanced_accuracy')):>9}  "
                     f"{number(r.get('multitask')):>9}  {r.get('num_cases', 'n/a')}")
    lines.append(f"* chosen by {'Dice' if select == 'dice' else 'the multitask score 0.5 Dice + 0.5 AUC'}")
    return "\n".join(lines)
