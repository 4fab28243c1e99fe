"""``nnunet_mtl predict``: nnUNetv2_predict's flags; same masks, plus ``class_predictions.csv``."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.paths import env_with_ext_trainer, find_dataset_folder, results_root


def _default(env: str, default: int) -> int:
    value = os.environ.get(env)
    return int(value) if value else default


def register(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment and classify images with a trained multitask model (nnUNetv2_predict's flags)",
        description="Runs nnU-Net's predictor (identical segmentations to nnUNetv2_predict) and also writes "
                    "OUTPUT/class_predictions.csv with per-case class probabilities, averaged over test-time "
                    "mirroring, tiles and folds.")
    add_model_arguments(p)
    p.add_argument("--save_probabilities", action="store_true", help="also export segmentation probabilities")
    p.add_argument("--continue_prediction", action="store_true", help="keep existing outputs, predict the rest")
    p.add_argument("-prev_stage_predictions", default=None, help="previous stage predictions (cascade)")
    p.add_argument("-num_parts", type=int, default=1)
    p.add_argument("-part_id", type=int, default=0)
    p.set_defaults(func=run)


def add_model_arguments(p, default_trainer: str = "nnUNetTrainerMTL") -> None:
    """nnUNetv2_predict's flags that choose the model, the inputs and how to run it (shared with
    ablate-guidance)."""
    p.add_argument("-i", required=True, help="input folder of images named CASE_0000.png (as nnUNetv2_predict)")
    p.add_argument("-o", required=True, help="output folder (created if missing)")
    p.add_argument("-d", required=True, help="dataset id or name, e.g. 500 or Dataset500_SyntheticUS")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default=default_trainer, help=f"trainer class used for training (default {default_trainer})")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds to ensemble (default 0 1 2 3 4)")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    p.add_argument("-npp", type=int, default=_default("nnUNet_npp", 3), help="preprocessing processes")
    p.add_argument("-nps", type=int, default=_default("nnUNet_nps", 3), help="segmentation export processes")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    p.add_argument("--disable_progress_bar", action="store_true")
    p.add_argument("--not_on_device", action="store_true")


def model_folder_for(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    dataset_dir = find_dataset_folder(dataset, results_root())
    folder = dataset_dir / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        found = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir())
        raise NnunetMtlError(
            f"no trained model {folder}; expected nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer} to have "
            f"run (trained models here: {', '.join(found) or 'none'})")
    return folder


def check_checkpoints(model_folder: Path, folds: list, checkpoint: str) -> None:
    """Each requested fold has the checkpoint, and it was trained on this dataset with these plans."""
    import json

    import torch
    plans = json.loads((model_folder / "plans.json").read_text())
    for fold in folds:
        path = model_folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise NnunetMtlError(f"checkpoint {path} not found; expected fold {fold} to be trained (see -f and -chk)")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # a truncated or foreign file
            raise NnunetMtlError(f"checkpoint {path} cannot be read ({type(e).__name__}); expected an nnU-Net checkpoint")
        trained_on = ckpt.get("init_args", {}).get("plans", {}).get("dataset_name")
        if trained_on and trained_on != plans.get("dataset_name"):
            raise NnunetMtlError(
                f"checkpoint {path} was trained on {trained_on}, but this model folder is for "
                f"{plans.get('dataset_name')}; expected a checkpoint of the same dataset")


def check_inputs(input_folder: Path, file_ending: str) -> None:
    if not input_folder.is_dir():
        raise NnunetMtlError(f"input folder {input_folder} does not exist")
    images = sorted(input_folder.glob(f"*_0000{file_ending}"))
    if not images:
        raise NnunetMtlError(f"no images *_0000{file_ending} in {input_folder}; expected nnU-Net's naming CASE_0000{file_ending}")
    if file_ending.lower() == ".png":
        from PIL import Image
        for image in images:
            try:
                with Image.open(image) as im:
                    im.verify()
            except Exception:
                raise NnunetMtlError(f"image {image} is not a readable PNG")


def load_predictor(args):
    """The MultitaskPredictor for the model chosen by add_model_arguments' flags, inputs checked first."""
    # our trainers must be findable by nnU-Net's lookup in this process, whether or not the user exported it
    os.environ.update(env_with_ext_trainer())
    import json

    import torch

    from nnunet_mtl.inference.predictor import MultitaskPredictor

    model_folder = model_folder_for(args.d, args.tr, args.p, args.c)
    folds = [f if f == "all" else int(f) for f in args.f]
    check_checkpoints(model_folder, folds, args.chk)
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    check_inputs(Path(args.i), dataset_json.get("file_ending", ".png"))

    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
        device = torch.device("cpu")
    elif args.device == "cuda":
        if not torch.cuda.is_available():
            raise NnunetMtlError("-device cuda was requested but no CUDA device is available; use -device cpu")
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        device = torch.device("cuda")
    else:
        device = torch.device("mps")

    predictor = MultitaskPredictor(tile_step_size=args.step_size, use_gaussian=True,
                                   use_mirroring=not args.disable_tta,
                                   perform_everything_on_device=not args.not_on_device, device=device,
                                   verbose=args.verbose, verbose_preprocessing=args.verbose,
                                   allow_tqdm=not args.disable_progress_bar)
    try:
        predictor.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint_name=args.chk)
    except RuntimeError as e:
        message = str(e).splitlines()[0]
        if "Could not find requested nnunet trainer" in message:
            raise NnunetMtlError(f"trainer {args.tr} not found by nnU-Net; expected an nnunet_mtl trainer such as "
                                 f"nnUNetTrainerMTL, or nnUNet_extTrainer to include the folder that defines it")
        if "state_dict" in message:
            raise NnunetMtlError(f"the checkpoints in {model_folder} do not match the network described by its "
                                 f"plans.json ({message[:160]}); expected the plans written by the same training")
        raise
    return predictor


def predict_folder(predictor, args, output: Path) -> None:
    """nnU-Net's prediction of the folder -i into output, with nnUNetv2_predict's process options."""
    save = getattr(args, "save_probabilities", False)
    overwrite = not getattr(args, "continue_prediction", False)
    previous = getattr(args, "prev_stage_predictions", None)
    if args.nps == 0 and args.npp == 0:
        predictor.predict_from_files_sequential(args.i, str(output), save_probabilities=save, overwrite=overwrite,
                                                folder_with_segs_from_prev_stage=previous)
    else:
        predictor.predict_from_files(args.i, str(output), save_probabilities=save, overwrite=overwrite,
                                     num_processes_preprocessing=args.npp, num_processes_segmentation_export=args.nps,
                                     folder_with_segs_from_prev_stage=previous,
                                     num_parts=getattr(args, "num_parts", 1), part_id=getattr(args, "part_id", 0))


def run(args) -> int:
    if args.part_id >= args.num_parts:
        raise NnunetMtlError(f"-part_id {args.part_id} must be smaller than -num_parts {args.num_parts}")
    predictor = load_predictor(args)
    output = Path(args.o)
    output.mkdir(parents=True, exist_ok=True)
    predict_folder(predictor, args, output)
    name = "class_predictions.csv" if args.num_parts == 1 else f"class_predictions_part{args.part_id}.csv"
    csv_path = predictor.write_class_predictions(output / name, merge_existing=args.continue_prediction)
    print(f"segmentations: {output}\nclass probabilities ({len(predictor.class_probabilities)} cases predicted now): {csv_path}")
    return 0
