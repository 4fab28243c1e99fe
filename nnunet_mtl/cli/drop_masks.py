"""``nnunet_mtl drop-masks``: a partially annotated copy of a raw dataset (the masks of a fraction of the training
patients kept, the others hidden) for experiments such as Fan et al.'s 25 / 50 / 75 % of masks.

The masks are hidden in a new raw dataset, before ``nnUNetv2_plan_and_preprocess``: nnU-Net's preprocessing
records where each case's lesion pixels are, so hiding them later (in a trainer) would still leak them. The logic
is in :mod:`nnunet_mtl.dataset.partial`.
"""
from __future__ import annotations

from nnunet_mtl.dataset.partial import DEFAULT_SEED, DROP_KINDS


def register(subparsers):
    p = subparsers.add_parser(
        "drop-masks", help="a partially annotated copy of a raw dataset: keep the masks of a fraction of the patients",
        description="Writes a new raw dataset DatasetIII_NAME from a fully annotated one: the masks of a fraction "
                    "--keep of the training patients (per patient, stratified by class, seeded) are kept, every "
                    "other training image with a lesion gets no mask (all nnU-Net ignore label) or, with --as box, "
                    "its lesion's bounding box (ignore inside, background outside). Images, test cases and labelsTs "
                    "are copied unchanged; dataset.json declares the ignore label and says how the dataset was made; "
                    "cases.csv gets the mask column; partial_report.json lists the kept patients. Run it before "
                    "nnUNetv2_plan_and_preprocess: preprocessing records where the lesions are.")
    p.add_argument("-d", required=True, help="the fully annotated source dataset: id or name")
    p.add_argument("--keep", type=float, required=True, metavar="FRACTION",
                   help="fraction of the training patients whose masks are kept, in (0, 1], e.g. 0.25")
    p.add_argument("--into", type=int, required=True, metavar="ID", help="the new dataset's id")
    p.add_argument("--name", default=None,
                   help="the new dataset's name (default: the source's plus _masks25 for --keep 0.25)")
    p.add_argument("--as", dest="as_kind", choices=DROP_KINDS, default="none",
                   help="what the other patients' lesion images get: no mask (default) or their bounding box")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the choice of patients (default {DEFAULT_SEED}; same seed, same choice)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the --into id")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mtl.dataset.partial import format_partial_table, plan_drop_masks, write_partial_dataset

    plan = plan_drop_masks(args.d, args.into, keep=args.keep, as_kind=args.as_kind, seed=args.seed, name=args.name,
                           overwrite=args.overwrite)
    folder, report = write_partial_dataset(plan)
    print(f"kept the masks of {report['kept_patients']} of {report['patients']} training patients of "
          f"{report['source']} (--keep {args.keep}, stratified by class, seed {args.seed}); the others: "
          f"{args.as_kind}")
    print(format_partial_table(report))
    if report["lesion_free_images_left_full"]:
        print(f"{report['lesion_free_images_left_full']} lesion-free image(s) of the other patients keep their "
              f"(empty) masks: their class already says there is no lesion")
    print(f"wrote {folder}")
    return 0
