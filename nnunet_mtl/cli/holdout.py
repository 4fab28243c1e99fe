"""``nnunet_mtl holdout``: a copy of a raw dataset in which some training patients are test cases, for papers that
test on images held out from the training source (15 % of BrEaST; 40 benign + 40 malignant BUSI images).

The logic is in :mod:`nnunet_mtl.dataset.holdout`.
"""
from __future__ import annotations

from nnunet_mtl.dataset.holdout import DEFAULT_SEED


def register(subparsers):
    p = subparsers.add_parser(
        "holdout", help="a copy of a raw dataset with a test set held out from its training patients",
        description="Writes a new raw dataset DatasetIII_NAME from a fully annotated one: the training cases of the "
                    "patients chosen (per patient, stratified by class, seeded; --fraction of all patients, or "
                    "--per-class N of every class that has training patients, normal included) become test cases "
                    "(imagesTs / labelsTs, split 'test' in cases.csv); the source's own test cases stay test cases. "
                    "Every file is copied unchanged; dataset.json says how the dataset was made; "
                    "holdout_report.json lists the held-out patients and cases. The source is never changed. Hold "
                    "out before drop-masks: drop-masks hides training masks only.")
    p.add_argument("-d", required=True, help="the fully annotated source dataset: id or name")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fraction", type=float, metavar="F",
                      help="fraction of the training patients held out, in (0, 1), e.g. 0.15 (rounded half up in "
                           "all, shared among the classes by largest remainder)")
    mode.add_argument("--per-class", type=int, metavar="N",
                      help="N patients of every class held out, e.g. 40 (each class needs at least N + 1)")
    p.add_argument("--into", type=int, required=True, metavar="ID", help="the new dataset's id")
    p.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="only these classes get a quota, the others stay training (default: every class)")
    p.add_argument("--name", default=None,
                   help="the new dataset's name (default: the source's plus _holdout15 for --fraction 0.15, "
                        "_holdout40each for --per-class 40)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the choice of patients (default {DEFAULT_SEED}; same seed, same choice)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the --into id")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mtl.dataset.holdout import format_holdout_table, plan_holdout, write_holdout_dataset

    plan = plan_holdout(args.d, args.into, fraction=args.fraction, per_class=args.per_class, classes=args.classes,
                        seed=args.seed, name=args.name, overwrite=args.overwrite)
    folder, report = write_holdout_dataset(plan)
    rule = f"--fraction {args.fraction}" if args.fraction is not None else f"--per-class {args.per_class}"
    if args.classes:
        rule += f" of {', '.join(report['classes'])}"
    print(f"held out {report['held_out_patients']} of {report['patients']} training patients of {report['source']} "
          f"({report['held_out_images']} images; {rule}, stratified by class, seed {args.seed}) as test cases")
    print(format_holdout_table(report))
    print(f"wrote {folder}")
    return 0
