"""Which trained model a command means, checked before anything loads it: the model folder that ``-m``, or
``-d / -tr / -p / -c``, name (as nnUNetv2_predict and nnUNetv2_predict_from_modelfolder name it), the folds, every
fold's checkpoint, and the class names of its plans. Shared by ``nnunet_mtl predict``, ``ablate-guidance``,
``export``, ``crossval`` and the Python API; nothing here imports torch at import time.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.paths import find_dataset_folder, results_root

PLANS_KEY = "nnunet_mtl"  # = nnunet_mtl.networks.multitask_unet.PLANS_KEY (not imported here: it imports torch)


def resolve_model_arguments(args) -> Path:
    """The model folder that -m, or -d / -tr / -p / -c, name; with -m, args.d / tr / p / c are set from the folder's
    name (TRAINER__PLANS__CONFIGURATION, under its dataset's folder) so that everything after sees one model."""
    if getattr(args, "resolved_model_folder", None) is not None:
        return args.resolved_model_folder
    given = getattr(args, "m", None)
    if given is None:
        missing = [flag for flag, value in (("-d", args.d), ("-c", args.c)) if value is None]
        if missing:
            raise NnunetMtlError(f"{' and '.join(missing)} missing; expected -d DATASET -c CONFIGURATION (with -tr, "
                                 f"-p), or -m MODEL_FOLDER")
        return model_folder_for(args.d, args.tr, args.p, args.c)
    if args.d is not None or args.c is not None:
        raise NnunetMtlError(f"-m {given} names the model; expected no -d / -c beside it (they come from the folder)")
    folder = Path(given)
    parts = folder.resolve().name.split("__")
    if len(parts) != 3 or not all(parts):
        raise NnunetMtlError(f"-m {given}: the folder's name is not TRAINER__PLANS__CONFIGURATION; expected the model "
                             f"folder nnUNetv2_train wrote, e.g. .../Dataset500_X/nnUNetTrainerMTL__nnUNetPlans__2d")
    if not folder.is_dir():
        raise NnunetMtlError(f"-m {given}: no such folder; expected a trained model folder (with plans.json and "
                             f"fold_K/)")
    if not (folder / "plans.json").is_file():
        raise NnunetMtlError(f"-m {given}: no plans.json in it; expected the model folder nnUNetv2_train wrote")
    # -tr / -p beside -m: only their defaults, or the folder's own values
    for flag, value, default, own in (("-tr", args.tr, getattr(args, "default_trainer", None), parts[0]),
                                      ("-p", args.p, "nnUNetPlans", parts[1])):
        if value not in (default, own):
            raise NnunetMtlError(f"-m {given} is a model of {flag} {own}, but {flag} {value} was given; expected "
                                 f"one of the two")
    args.tr, args.p, args.c = parts
    args.d = folder.resolve().parent.name
    args.resolved_model_folder = folder
    return folder


def model_folder_for(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    dataset_dir = find_dataset_folder(dataset, results_root())
    folder = dataset_dir / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        found = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir())
        raise NnunetMtlError(
            f"no trained model {folder}; expected nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer} to have "
            f"run (trained models here: {', '.join(found) or 'none'})")
    return folder


def check_checkpoints(model_folder: Path, plans: dict, folds: list, checkpoint: str) -> None:
    """The model folder is where its ``plans`` say, each requested fold has the checkpoint, and it was trained on
    this dataset with these plans."""
    import torch
    if plans.get("dataset_name") and plans["dataset_name"] != model_folder.parent.name:
        raise NnunetMtlError(
            f"{model_folder} is under {model_folder.parent.name}, but its plans.json is for {plans['dataset_name']} "
            f"(a model folder copied under another dataset id?); expected -d {plans['dataset_name']}, or a model "
            f"trained on {model_folder.parent.name}")
    for fold in folds:
        path = model_folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise NnunetMtlError(f"checkpoint {path} not found; expected fold {fold} to be trained (see -f and -chk)")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # a truncated or foreign file
            raise NnunetMtlError(f"checkpoint {path} cannot be read ({type(e).__name__}); "
                                 f"expected an nnU-Net checkpoint")
        trained_on = ckpt.get("init_args", {}).get("plans", {}).get("dataset_name")
        if trained_on and trained_on != plans.get("dataset_name"):
            raise NnunetMtlError(
                f"checkpoint {path} was trained on {trained_on}, but this model folder is for "
                f"{plans.get('dataset_name')}; expected a checkpoint of the same dataset")


def parse_folds(values) -> list:
    """-f's values as nnU-Net takes them: fold numbers (int) or 'all'; anything else is a one-line error."""
    folds = []
    for value in values:
        if value == "all":
            folds.append("all")
        elif str(value).isdigit():
            folds.append(int(value))
        else:
            raise NnunetMtlError(f"-f {value!r} is not a fold; expected fold numbers (e.g. -f 0 1 2) or -f all")
    return folds


def check_per_fold_folds(values) -> list[int]:
    """The folds of a --per-fold run: two or more distinct fold numbers, never 'all'."""
    folds = parse_folds(values)
    if "all" in folds:
        raise NnunetMtlError("-f all cannot be combined with --per-fold: 'all' is one model trained on every case, "
                             "not a cross-validation fold; expected the folds, e.g. -f 0 1 2 --per-fold")
    if len(folds) < 2:
        given = " ".join(map(str, folds))
        raise NnunetMtlError(f"--per-fold needs at least two folds, got -f {given}; expected e.g. -f 0 1 2 (one fold "
                             f"alone is simply -f {given} without --per-fold)")
    repeated = sorted({f for f in folds if folds.count(f) > 1})
    if repeated:
        raise NnunetMtlError(f"-f names fold {repeated[0]} more than once; expected each fold once with --per-fold")
    return folds


def model_class_names(plans: dict) -> list[str]:
    """The class names a model's class_predictions.csv has columns for, from its plans (index order)."""
    labels = (plans.get(PLANS_KEY) or {}).get("class_labels") or {}
    return [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
