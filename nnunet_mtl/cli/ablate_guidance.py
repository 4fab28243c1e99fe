"""``nnunet_mtl ablate-guidance``: leave-one-guided-feature-out analysis of a clinically guided model (Table 5).

``--per-fold`` (with ``-f K1 K2 ...``): the ablation of each fold's model alone into ``OUT/fold_K/`` and of the fold
ensemble into ``OUT/ensemble/`` (each exactly what ``ablate-guidance -f ...`` of those folds writes), plus the mean
± std over folds of every delta in ``OUT/guidance_ablation_per_fold.{csv,json,png}``.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.class_predictions import CLASS_PREDICTIONS


def register(subparsers):
    from nnunet_mtl.cli.model_arguments import add_model_arguments, add_per_fold_argument
    p = subparsers.add_parser(
        "ablate-guidance", help="zero the classifier weights of one guided radiomics feature at a time and report "
                                "the change of precision, recall and F1 on a test set",
        description="Predicts the test images once with a trained nnUNetTrainerClinGuided / nnUNetTrainerRLAR model "
                    "(recording the embeddings), then for every guided feature k sets the classifier column w_k to 0 "
                    "in every fold and classifies again (thyroid paper, Table 5). Writes OUTPUT/guidance_ablation.csv, "
                    "guidance_ablation.json, guidance_ablation.png, the unmodified predictions (masks and "
                    "class_predictions.csv) and prints the table. With --per-fold: the same per fold's model alone "
                    "(OUTPUT/fold_K/) and for the fold ensemble (OUTPUT/ensemble/), and the mean ± std over folds of "
                    "every delta in OUTPUT/guidance_ablation_per_fold.csv/.json/.png.")
    add_model_arguments(p, default_trainer="nnUNetTrainerRLAR")
    p.add_argument("--cases", help="cases.csv with the reference classes (default: the cases.csv of the raw dataset "
                                   "that holds the -i folder, else of the model's dataset)")
    add_per_fold_argument(p, "the ablation (masks, class_predictions.csv, guidance_ablation.*)")
    p.set_defaults(func=run)


def reference_cases_csv(args) -> Path:
    if args.cases:
        return Path(args.cases)
    beside_inputs = Path(args.i).resolve().parent / "cases.csv"
    if beside_inputs.is_file():
        return beside_inputs
    from nnunet_mtl.inference.models import resolve_model_arguments
    from nnunet_mtl.paths import find_dataset_folder, raw_root
    resolve_model_arguments(args)  # -m sets args.d
    return find_dataset_folder(args.d, raw_root()) / "cases.csv"


def guided_features(section: dict, trainer: str) -> list[str]:
    """The guided radiomics features of a model's plans (its nnunet_mtl section); an error for unguided models."""
    features = section.get("guidance_features")
    if not features:
        raise NnunetMtlError(f"{trainer} has no clinically guided features in its plans; expected a model trained "
                             f"with nnUNetTrainerClinGuided or nnUNetTrainerRLAR")
    return list(features)


def reference_classes(cases_csv: Path, class_labels: dict, class_names: list[str]) -> dict[str, int]:
    """{case_id: class index} of the reference classes in cases_csv."""
    from nnunet_mtl.dataset.contract import read_cases_csv
    reference = read_cases_csv(cases_csv, dict(class_labels))
    return {c: class_names.index(k) for c, k in zip(reference["case_id"], reference["class"])}


def check_reference_covers_inputs(args, y_by_case: dict, cases_csv: Path, file_ending: str = ".png") -> None:
    """Every input image has a reference class; checked before predicting."""
    suffix = f"_0000{file_ending}"
    inputs = [p.name[:-len(suffix)] for p in Path(args.i).iterdir() if p.name.endswith(suffix)]
    missing = sorted(set(inputs) - set(y_by_case))
    if missing:
        raise NnunetMtlError(f"{len(missing)} input case(s) have no row in {cases_csv} (e.g. {missing[0]}); "
                             f"expected the reference classes of the test images (see --cases)")


def _reference(args, checked: dict, cases_csv: Path) -> tuple[list[str], dict[str, int]]:
    """From the model's plans (see predict.preflight): the guided features, and the reference class index of every
    case, checked to cover every input image before anything is predicted."""
    from nnunet_mtl.networks.multitask_unet import PLANS_KEY
    section = checked["plans"].get(PLANS_KEY) or {}
    features = guided_features(section, args.tr)
    # ordered by index, as the predictor's class_names
    class_names = [n for n, _ in sorted(section["class_labels"].items(), key=lambda kv: kv[1])]
    y_by_case = reference_classes(cases_csv, section["class_labels"], class_names)
    check_reference_covers_inputs(args, y_by_case, cases_csv, checked["dataset_json"].get("file_ending", ".png"))
    return features, y_by_case


def ablate_into(args, output: Path, cases_csv: Path, features: list[str], y_by_case: dict, checked: dict):
    """The plain ablation of args' folds into ``output``: predict once recording the embeddings, write masks and
    class_predictions.csv, ablate every guided feature, write guidance_ablation.*. ``checked``: what preflight
    returned. Returns (baseline, rows)."""
    from nnunet_mtl.inference.runner import free_memory, load_predictor, predict_folder
    from nnunet_mtl.evaluation.guidance_ablation import ablate_guidance, write_ablation
    predictor = load_predictor(args, checked)
    class_names = predictor.class_names
    output.mkdir(parents=True, exist_ok=True)
    predictor.record_embeddings = True
    predict_folder(predictor, args, output)
    predictor.write_class_predictions(output / CLASS_PREDICTIONS)
    missing = sorted(set(predictor.embeddings) - set(y_by_case))
    if missing:
        raise NnunetMtlError(f"{len(missing)} predicted case(s) have no row in {cases_csv} (e.g. {missing[0]}); "
                             f"expected the reference classes of the test images (see --cases)")
    baseline, rows = ablate_guidance(predictor.embeddings, predictor.fold_classifiers(), y_by_case, class_names,
                                     features)
    write_ablation(output, baseline, rows, cases_csv)
    device = getattr(predictor, "device", None)
    del predictor
    free_memory(device)
    return baseline, rows


def run(args) -> int:
    if args.per_fold:
        return run_per_fold(args)
    from nnunet_mtl.inference.per_fold import refuse_per_fold_folder
    from nnunet_mtl.inference.runner import check_prediction_output, preflight
    from nnunet_mtl.inference.models import parse_folds
    from nnunet_mtl.evaluation.guidance_ablation import format_ablation_table

    output = Path(args.o)
    refuse_per_fold_folder(output, "writing")
    cases_csv = reference_cases_csv(args)
    checked = preflight(args, parse_folds(args.f))
    features, y_by_case = _reference(args, checked, cases_csv)
    check_prediction_output(output, CLASS_PREDICTIONS, checked)
    baseline, rows = ablate_into(args, output, cases_csv, features, y_by_case, checked)
    print(format_ablation_table(baseline, rows))
    print(f"wrote {output / 'guidance_ablation.csv'}, guidance_ablation.json, guidance_ablation.png")
    return 0


def run_per_fold(args) -> int:
    """The ablation of each fold's model alone (OUT/fold_K), of the fold ensemble (OUT/ensemble), and the mean ±
    std over folds of every delta (OUT/guidance_ablation_per_fold.*)."""
    from nnunet_mtl.inference.per_fold import (ENSEMBLE_SUBFOLDER, fold_subfolder, per_fold_info,
                                               start_per_fold_output, sub_run_args)
    from nnunet_mtl.inference.runner import check_prediction_output, preflight
    from nnunet_mtl.inference.models import check_per_fold_folds
    from nnunet_mtl.outputs import check_output_folder
    from nnunet_mtl.evaluation.guidance_ablation import (aggregate_fold_ablations, format_ablation_table,
                                                         format_per_fold_ablation_table, write_per_fold_ablation)

    folds = check_per_fold_folds(args.f)
    checked = preflight(args, folds)
    cases_csv = reference_cases_csv(args)
    features, y_by_case = _reference(args, checked, cases_csv)
    file_ending = checked["dataset_json"].get("file_ending", ".png")
    output = Path(args.o)
    check_output_folder(output)
    for name in [fold_subfolder(k) for k in folds] + [ENSEMBLE_SUBFOLDER]:
        check_prediction_output(output / name, CLASS_PREDICTIONS, checked)
    info = per_fold_info(args, "ablate-guidance", folds, checked["model_folder"], output)
    start_per_fold_output(args, info, file_ending)

    per_fold = {}
    for i, k in enumerate(folds):
        sub = output / fold_subfolder(k)
        print(f"fold {i + 1}/{len(folds)}: fold {k}'s model alone -> {sub}", flush=True)
        per_fold[k] = ablate_into(sub_run_args(args, [k], sub), sub, cases_csv, features, y_by_case,
                                  checked)
        print(format_ablation_table(*per_fold[k]), flush=True)
    sub = output / ENSEMBLE_SUBFOLDER
    print(f"ensemble: folds {', '.join(map(str, folds))} together -> {sub}", flush=True)
    ensemble = ablate_into(sub_run_args(args, folds, sub), sub, cases_csv, features, y_by_case, checked)
    print(format_ablation_table(*ensemble), flush=True)
    agg = aggregate_fold_ablations(per_fold, ensemble)
    agg["reference"] = str(cases_csv)
    agg["subfolders"] = {fold_subfolder(k): [k] for k in folds} | {ENSEMBLE_SUBFOLDER: list(folds)}
    written = write_per_fold_ablation(output, agg)
    print()
    print(format_per_fold_ablation_table(agg))
    print(f"wrote {', '.join(str(p) for p in written)}; per fold and ensemble: guidance_ablation.* in "
          f"{output}/fold_K/ and {output}/{ENSEMBLE_SUBFOLDER}/")
    return 0
