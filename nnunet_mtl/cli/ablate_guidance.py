"""``nnunet_mtl ablate-guidance``: leave-one-guided-feature-out analysis of a clinically guided model (Table 5)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError


def register(subparsers):
    from nnunet_mtl.cli.predict import add_model_arguments
    p = subparsers.add_parser(
        "ablate-guidance", help="zero the classifier weights of one guided radiomics feature at a time and report "
                                "the change of precision, recall and F1 on a test set",
        description="Predicts the test images once with a trained nnUNetTrainerClinGuided / nnUNetTrainerRLAR model "
                    "(recording the embeddings), then for every guided feature k sets the classifier column w_k to 0 "
                    "in every fold and classifies again (thyroid paper, Table 5). Writes OUTPUT/guidance_ablation.csv, "
                    "guidance_ablation.json, guidance_ablation.png, the unmodified predictions (masks and "
                    "class_predictions.csv) and prints the table.")
    add_model_arguments(p, default_trainer="nnUNetTrainerRLAR")
    p.add_argument("--cases", help="cases.csv with the reference classes (default: the cases.csv of the raw dataset "
                                   "that holds the -i folder, else of the model's dataset)")
    p.set_defaults(func=run)


def reference_cases_csv(args) -> Path:
    if args.cases:
        return Path(args.cases)
    beside_inputs = Path(args.i).resolve().parent / "cases.csv"
    if beside_inputs.is_file():
        return beside_inputs
    from nnunet_mtl.paths import find_dataset_folder, raw_root
    return find_dataset_folder(args.d, raw_root()) / "cases.csv"


def run(args) -> int:
    from nnunet_mtl.cli.predict import load_predictor, predict_folder
    from nnunet_mtl.dataset.contract import read_cases_csv
    from nnunet_mtl.evaluation.guidance_ablation import ablate_guidance, format_ablation_table, plot_ablation
    from nnunet_mtl.networks.multitask_unet import PLANS_KEY

    cases_csv = reference_cases_csv(args)
    predictor = load_predictor(args)
    section = predictor.plans_manager.plans.get(PLANS_KEY, {})
    features = section.get("guidance_features")
    if not features:
        raise NnunetMtlError(f"{args.tr} has no clinically guided features in its plans; expected a model trained "
                             f"with nnUNetTrainerClinGuided or nnUNetTrainerRLAR")
    class_names = predictor.class_names
    reference = read_cases_csv(cases_csv, dict(section["class_labels"]))
    y_by_case = {c: class_names.index(k) for c, k in zip(reference["case_id"], reference["class"])}

    output = Path(args.o)
    output.mkdir(parents=True, exist_ok=True)
    predictor.record_embeddings = True
    predict_folder(predictor, args, output)
    predictor.write_class_predictions(output / "class_predictions.csv")
    missing = sorted(set(predictor.embeddings) - set(y_by_case))
    if missing:
        raise NnunetMtlError(f"{len(missing)} predicted case(s) have no row in {cases_csv} (e.g. {missing[0]}); "
                             f"expected the reference classes of the test images (see --cases)")
    baseline, rows = ablate_guidance(predictor.embeddings, predictor.fold_classifiers(), y_by_case, class_names,
                                     list(features))
    with open(output / "guidance_ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (output / "guidance_ablation.json").write_text(json.dumps(
        {"baseline": {k: baseline[k] for k in ("num_cases", "macro_precision", "macro_recall", "macro_f1", "auc")},
         "features": rows, "reference": str(cases_csv), "metric_definition":
             "macro over the classes present in reference or prediction (sklearn, zero_division=0)"}, indent=2))
    plot_ablation(rows, output / "guidance_ablation.png")
    print(format_ablation_table(baseline, rows))
    print(f"wrote {output / 'guidance_ablation.csv'}, guidance_ablation.json, guidance_ablation.png")
    return 0
