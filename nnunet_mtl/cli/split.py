"""``nnunet_mtl split``: write nnU-Net's splits_final.json grouped by patient and stratified by class."""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.dataset.splits import (DEFAULT_NUM_FOLDS, DEFAULT_SEED, SPLIT_FILE_HELP, UNLISTED, describe_splits,
                                       grouped_stratified_holdout, grouped_stratified_splits, splits_from_file,
                                       write_splits)
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.paths import find_dataset_folder, preprocessed_root, raw_root


def register(subparsers):
    p = subparsers.add_parser(
        "split", help="write a patient-grouped, class-stratified k-fold splits_final.json",
        description="Writes nnUNet_preprocessed/DatasetNNN_X/splits_final.json (nnU-Net's own split file) from the "
                    "raw dataset's cases.csv: k folds, no patient in both train and validation of a fold, classes "
                    "balanced across folds (or, with --holdout, one grouped and stratified train/validation split "
                    "as fold 0; with --repeats R, R of them as folds 0..R-1; with --from FILE, a given split, "
                    "checked). Our trainers write the k=5 split when the file is missing.")
    p.add_argument("-d", required=True, help="dataset id or name")
    how = p.add_mutually_exclusive_group()
    how.add_argument("-k", "--folds", type=int, default=DEFAULT_NUM_FOLDS,
                     help=f"number of folds (default {DEFAULT_NUM_FOLDS})")
    how.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                     help="instead of k folds: one split with this fraction of the patients as validation (fold 0), "
                          "e.g. 0.15 for the breast consistency paper's 85/15 internal split")
    how.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                     help="instead: a given split (a paper's, or your own), checked against the dataset: nnU-Net's "
                          "splits_final.json with this dataset's case ids, or a CSV with columns patient (or case) "
                          "and fold, the fold whose validation set holds it (every training patient, or see "
                          "--unlisted)")
    p.add_argument("--unlisted", choices=UNLISTED, default="refuse",
                   help="with --from CSV: training patients the CSV does not list are refused (default: they would "
                        "train in every fold and be validated in none) or, with 'train', kept in training on purpose")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="with --holdout: R hold-out splits drawn with seeds SEED, SEED+1, ... as folds 0..R-1 "
                        "(repeated runs, each on its own validation patients; default 1)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"shuffling seed (default {DEFAULT_SEED})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mtl.dataset.contract import load_raw_dataset
    if args.repeats < 1:
        raise NnunetMtlError(f"--repeats {args.repeats}: expected at least 1")
    if args.repeats > 1 and args.holdout is None:
        raise NnunetMtlError(f"--repeats {args.repeats} needs --holdout FRACTION (k folds already give k runs)")
    if args.from_file is not None and args.repeats > 1:
        raise NnunetMtlError(f"--repeats {args.repeats}: not with --from (the file gives the folds)")
    if args.from_file is not None and not Path(args.from_file).is_file():
        raise NnunetMtlError(f"--from {args.from_file}: no such file; expected {SPLIT_FILE_HELP}")
    raw = load_raw_dataset(find_dataset_folder(args.d, raw_root()), check_files=True)
    train = raw.cases_in_split("train")
    if train.empty:
        raise NnunetMtlError(f"{raw.folder / 'cases.csv'} has no 'train' cases to split")
    pre_dir = preprocessed_root() / raw.folder.name
    target = pre_dir / "splits_final.json"
    if target.exists() and not args.overwrite:
        raise NnunetMtlError(f"{target} exists; pass --overwrite to replace it (trained folds would no longer match)")
    from nnunet_mtl.outputs import check_output_file
    check_output_file(target, "split file")
    if args.from_file is not None:
        splits = splits_from_file(args.from_file, train["case_id"].tolist(), train["patient_id"].tolist(),
                                  test_ids=raw.cases_in_split("test")["case_id"].tolist(), unlisted=args.unlisted)
    elif args.holdout is not None:
        splits = [fold for r in range(args.repeats) for fold in grouped_stratified_holdout(
            train["case_id"].tolist(), train["patient_id"].tolist(), train["class"].tolist(), fraction=args.holdout,
            seed=args.seed + r)]
    else:
        splits = grouped_stratified_splits(train["case_id"].tolist(), train["patient_id"].tolist(),
                                           train["class"].tolist(), num_folds=args.folds, seed=args.seed)
    write_splits(splits, target)
    print(describe_splits(splits, dict(zip(train["case_id"], train["class"]))))
    print(f"wrote {target}")
    return 0
