"""``nnunet_mtl average-seeds RUN_SEED0 RUN_SEED1 ... -o OUT``: one method trained with several seeds, evaluated
on the same test set: the mean ± std over the seeds and the seed-averaged per-case values that ``nnunet_mtl
compare`` tests (nnunet_mtl.evaluation.seeds, docs/comparison.md)."""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError


def register(subparsers):
    p = subparsers.add_parser(
        "average-seeds", help="one method's runs of several training seeds: mean ± std over seeds, seed average",
        description="Reads the evaluated prediction folders of one method trained with different seeds (each "
                    "RUN/evaluation/per_case.csv and summary.json, as nnunet_mtl compare reads them) and writes "
                    "into OUT: per_seed_summary.json (every metric's mean, sample std and t-based 95%% CI over the "
                    "seeds), and per_case.csv + summary.json of the seed average (per case: the mean of the seeds' "
                    "segmentation metrics and of their class probabilities, the class their argmax), which "
                    "nnunet_mtl compare takes as a run (pass OUT or its parent). See docs/comparison.md.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated prediction folders, one per seed")
    p.add_argument("-o", required=True, help="output folder (e.g. the runs' common parent's evaluation/)")
    p.add_argument("-d", help="dataset id or name: patient_id from nnUNet_raw/DatasetNNN_X/cases.csv (bootstrap "
                              "CIs by patient)")
    p.add_argument("--cases", help="a case table (cases.csv with case_id and patient_id) instead of -d")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier average in -o")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mtl.evaluation.inputs import case_table
    from nnunet_mtl.evaluation.seeds import OUTPUT_FILES, SEEDS_SUMMARY, average_seeds, format_seeds_table
    cases = case_table(args.d, args.cases)
    out = Path(args.o)
    existing = [n for n in OUTPUT_FILES if (out / n).exists()]
    if existing and not args.overwrite:
        raise NnunetMtlError(f"{out / existing[0]} exists; pass --overwrite to replace an earlier average (the "
                             f"seeds' own folders are never written)")
    average_seeds(args.runs, out, cases_csv=cases)
    print(format_seeds_table(out / SEEDS_SUMMARY))
    print()
    for name in OUTPUT_FILES:
        print(f"wrote {out / name}")
    return 0
