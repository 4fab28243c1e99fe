"""``nnunet_mtl compare RUN_A RUN_B [RUN_C ...]``: paired comparison of evaluated prediction runs on the same cases.

Per pair of runs and metric: the means, the mean per-case difference with a paired bootstrap 95% CI, a paired test
(Wilcoxon signed-rank for Dice / IoU / HD95, McNemar for accuracy, DeLong or the paired bootstrap for AUC) and Holm's
adjustment over the whole table; by patient when a case table says patients have several images
(docs/comparison.md)."""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.evaluation.inputs import case_table


def register(subparsers):
    from nnunet_mtl.evaluation.paired_statistics import DEFAULT_N_RESAMPLES, DEFAULT_SEED, ZERO_METHOD
    p = subparsers.add_parser(
        "compare", help="paired comparison of evaluated prediction runs (CI, Wilcoxon, McNemar, DeLong, Holm)",
        description="Compares prediction runs case by case. Each RUN is a folder written by nnunet_mtl predict and "
                    "evaluated by nnunet_mtl evaluate (RUN/evaluation/per_case.csv; a folder holding per_case.csv "
                    "itself works too); a per-fold folder (predict --per-fold) is compared by its ensemble/ "
                    "(pass RUN/fold_K for one fold). Every run must have the same cases. Differences are first "
                    "run minus second: Dice, IoU, HD95 with a paired bootstrap 95% CI and the Wilcoxon signed-rank "
                    f"test (zero_method={ZERO_METHOD}); accuracy with McNemar's exact test; AUC with DeLong's test "
                    "(binary) or the paired bootstrap (more classes); Holm over all p-values of the table. With -d "
                    "or --cases, patients with several images make the patient the unit (bootstrap by patient, "
                    "tests on per-patient means). See docs/comparison.md.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated prediction folders; the first is A")
    p.add_argument("-d", help="dataset id or name: patient_id from nnUNet_raw/DatasetNNN_X/cases.csv")
    p.add_argument("--cases", help="a case table (cases.csv: case_id, split, class, patient_id) for the patients")
    p.add_argument("-o", default="comparison",
                   help="output folder for comparison.csv, comparison.json, comparison.png (default ./comparison)")
    p.add_argument("--all-pairs", dest="all_pairs", action="store_true",
                   help="compare every pair of runs (default: the first run against each other run)")
    p.add_argument("--n-resamples", dest="n_resamples", type=int, default=DEFAULT_N_RESAMPLES,
                   help=f"bootstrap resamples (default {DEFAULT_N_RESAMPLES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mtl.evaluation.compare import OUTPUT_FILES, compare, format_table
    cases = case_table(args.d, args.cases)
    out = Path(args.o)
    result = compare(args.runs, out, cases_csv=cases, all_pairs=args.all_pairs, n_resamples=args.n_resamples,
                     seed=args.seed)
    print(format_table(result))
    print()
    for name in OUTPUT_FILES:
        print(f"wrote {out / name}")
    return 0
