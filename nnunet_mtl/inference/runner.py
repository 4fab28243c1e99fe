"""A prediction of a folder from ``nnunet_mtl predict``'s arguments (``nnunet_mtl.cli.model_arguments``), the
library behind ``predict`` and ``ablate-guidance``: :func:`preflight` checks everything that can be checked before a
network is loaded (model folder, checkpoints of every fold, input images, run options), :func:`load_predictor` builds
the :class:`~nnunet_mtl.inference.predictor.MultitaskPredictor`, :func:`predict_into` writes the masks,
class_predictions.csv (:mod:`nnunet_mtl.inference.class_predictions`) and, with --save-attention, the lesion maps."""
from __future__ import annotations

import gc
import multiprocessing
import os
import re
from pathlib import Path

from nnunet_mtl.dataset.contract import read_json_object
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.class_predictions import class_predictions_file_name, read_class_prediction_rows
from nnunet_mtl.inference.models import (
    PLANS_KEY,
    check_checkpoints,
    model_class_names,
    parse_folds,
    resolve_model_arguments,
)
from nnunet_mtl.inference.per_fold import sub_run_args
from nnunet_mtl.paths import env_with_ext_trainer


def check_inputs(input_folder: Path, file_ending: str, channels: int | None = None) -> None:
    """The input folder holds nnU-Net-named images, each readable, of a sane size (a header claiming more is a
    decompression bomb), with the model's number of ``channels`` in one file (a PNG model takes grey images: an
    RGB file would be read as three channels and fail inside the network)."""
    if not input_folder.is_dir():
        raise NnunetMtlError(f"input folder {input_folder} does not exist" if not input_folder.exists() else
                             f"input {input_folder} is a file; expected a folder of CASE_0000{file_ending} images")
    images = sorted(input_folder.glob(f"*_0000{file_ending}"))
    if not images:
        raise NnunetMtlError(f"no images *_0000{file_ending} in {input_folder}; expected nnU-Net's naming "
                             f"CASE_0000{file_ending}")
    if channels:  # nnU-Net reads CASE_0000 .. CASE_{channels-1}: another channel file would be read as an input
        pattern = re.compile(r"(?P<case>.+)_(?P<k>\d{4})" + re.escape(file_ending))
        for path in sorted(input_folder.iterdir()):
            m = pattern.fullmatch(path.name)
            if m and int(m["k"]) >= channels:
                raise NnunetMtlError(f"{path} is channel {int(m['k'])} of case {m['case']}, but this model takes "
                                     f"{channels} channel(s) (CASE_0000{file_ending}"
                                     f"{'' if channels == 1 else f' .. CASE_{channels - 1:04d}' + file_ending}); "
                                     f"expected only those files in {input_folder}")
    if file_ending.lower() == ".png":
        from nnunet_mtl.image_files import CHANNELS, open_image
        for image in images:
            with open_image(image, "PNG image") as im:
                mode = im.mode
                try:
                    im.verify()
                except Exception:
                    raise NnunetMtlError(f"image {image} is not a readable PNG")
            if channels == 1 and CHANNELS.get(mode, 1) > 1:
                raise NnunetMtlError(f"image {image} has {CHANNELS[mode]} channels ({mode}); this model takes one "
                                     f"grey channel: expected grey images (as nnunet_mtl convert writes them; e.g. "
                                     f"PIL's convert('L'))")


def check_run_options(args) -> None:
    """nnUNetv2_predict's numeric options, before nnU-Net asserts on them mid-run."""
    from nnunet_mtl import precision
    from nnunet_mtl.resources import cap_processes
    precision.requested(getattr(args, "cpu_amp", None))  # the environment's value too, before any work
    step = getattr(args, "step_size", 0.5)
    if not 0 < step <= 1:
        raise NnunetMtlError(f"-step_size {step}: expected a fraction of the patch size in (0, 1], e.g. 0.5")
    for flag in ("npp", "nps"):
        if hasattr(args, flag):
            setattr(args, flag, cap_processes(getattr(args, flag), f"-{flag}", allow_zero=True))


def model_channels(dataset_json: dict) -> int | None:
    """The number of input channels a model takes (dataset.json's channel_names), None when not stated."""
    names = dataset_json.get("channel_names") or dataset_json.get("modality")
    return len(names) if isinstance(names, dict) and names else None


def preflight(args, folds: list) -> dict:
    """Everything checked before a predictor is loaded, for all ``folds`` at once and without loading a network:
    the model folder, every fold's checkpoint, the input images, the run options. Returns {"model_folder", "plans",
    "dataset_json", "inputs"}, which :func:`load_predictor` takes."""
    model_folder = resolve_model_arguments(args)
    plans = read_json_object(model_folder / "plans.json", "the plans.json nnUNetv2_train wrote")
    check_checkpoints(model_folder, plans, folds, args.chk)
    dataset_json = read_json_object(model_folder / "dataset.json", "the dataset.json nnUNetv2_train copied there")
    check_inputs(Path(args.i), dataset_json.get("file_ending", ".png"), model_channels(dataset_json))
    check_run_options(args)
    if ((plans.get(PLANS_KEY) or {}).get("head") or {}).get("kind") == "none":
        raise NnunetMtlError(f"{model_folder} is a segmentation-only model (no classification head); expected "
                             f"nnUNetv2_predict for its masks (nnunet_mtl predict adds class probabilities)")
    return {"model_folder": model_folder, "dataset_json": dataset_json, "plans": plans,
            "inputs": sorted(Path(args.i).glob(f"*_0000{dataset_json.get('file_ending', '.png')}"))}


def check_prediction_output(output: Path, csv_name: str, checked: dict) -> None:
    """Before predicting into ``output``: a folder we may write, and a class_predictions.csv already there (rows
    of other images, kept and merged by case id) written for this model's classes."""
    from nnunet_mtl.outputs import check_output_folder
    check_output_folder(output)
    if output.is_dir():
        ending = checked["dataset_json"].get("file_ending", ".png")
        suffix = f"_0000{ending}"
        for image in checked.get("inputs") or ():
            target = output / (image.name[:-len(suffix)] + ending)
            if target.is_dir():
                raise NnunetMtlError(f"{target} is a folder, where the mask of {image.name} goes; expected a file "
                                     f"path (move the folder away)")
    names = model_class_names(checked["plans"])
    if names and output.is_dir():
        read_class_prediction_rows(output / csv_name, names)


def note_unmatched(output: Path, csv_path: Path, file_ending: str) -> None:
    """Say when the folder's masks and its class_predictions.csv cover different cases (masks written by another
    command, such as nnUNetv2_predict, into the same folder; or masks deleted by hand)."""
    import csv
    with open(csv_path, newline="") as f:
        rows = {row["case_id"] for row in csv.DictReader(f)}
    masks = {p.name[:-len(file_ending)] for p in output.iterdir() if p.is_file() and p.name.endswith(file_ending)}
    for ids, what in ((sorted(masks - rows), f"mask(s) in {output} have no row in {csv_path.name}"),
                      (sorted(rows - masks), f"row(s) of {csv_path.name} have no mask in {output}")):
        if ids:
            print(f"note: {len(ids)} {what} (e.g. {ids[0]}): written by another command or removed by hand?")


def free_memory(device) -> None:
    """After the last reference to a predictor is gone: collect it, and give its GPU memory back to the driver's
    cache, before the next predictor of a per-fold run is loaded."""
    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch
        torch.cuda.empty_cache()


def load_predictor(args, checked: dict | None = None):
    """The MultitaskPredictor for the model chosen by add_model_arguments' flags. ``checked``: what
    :func:`preflight` returned for these args (its folds or more); without it, preflight runs first."""
    # our trainers must be findable by nnU-Net's lookup in this process, whether or not the user exported it
    os.environ.update(env_with_ext_trainer())
    import torch

    from nnunet_mtl.inference.predictor import MultitaskPredictor

    folds = parse_folds(args.f)
    if checked is None:
        checked = preflight(args, folds)
    model_folder = checked["model_folder"]

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
                                   allow_tqdm=not args.disable_progress_bar, cpu_amp=getattr(args, "cpu_amp", None))
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


def class_predictions_name(args) -> str:
    return class_predictions_file_name(args.num_parts, args.part_id)


ATTENTION_FOLDER = "attention"  # OUT/attention/CASE.png (= nnunet_mtl.evaluation.evaluate.ATTENTION_FOLDER)


def check_attention_model(args, checked: dict, fold) -> None:
    """Before a per-fold run writes anything: the model's head returns an attention map (probed on fold ``fold``'s
    predictor, which is then let go; every fold has the same head)."""
    predictor = load_predictor(sub_run_args(args, [fold], Path(args.o)), checked)
    try:
        predictor.save_attention_into(Path(args.o) / ATTENTION_FOLDER)
    finally:
        device = getattr(predictor, "device", None)
        del predictor
        free_memory(device)


def note_missing_attention(output: Path, file_ending: str) -> None:
    """Say when masks of the folder have no lesion map (predicted earlier without --save-attention, kept by
    --continue_prediction): evaluate --attention would refuse the folder."""
    folder = output / ATTENTION_FOLDER
    masks = sorted(p.name[:-len(file_ending)] for p in output.iterdir() if p.is_file() and p.name.endswith(file_ending))
    missing = [m for m in masks if not (folder / f"{m}.png").is_file()]
    if missing:
        print(f"note: {len(missing)} mask(s) in {output} have no lesion map in {folder} (e.g. {missing[0]}): predicted "
              f"before without --save-attention? evaluate --attention needs one per mask (predict them again)")


def predict_into(args, output: Path, checked: dict | None = None) -> tuple[Path, int]:
    """The plain prediction: the predictor of ``args``' folds, masks and class_predictions.csv into ``output``
    (``checked``: see :func:`load_predictor`), and with --save-attention the lesion maps into output/attention.
    Returns the CSV's path and the number of cases predicted now."""
    predictor = load_predictor(args, checked)
    if getattr(args, "save_attention", False):
        predictor.save_attention_into(output / ATTENTION_FOLDER)  # refused here, before anything is written
    output.mkdir(parents=True, exist_ok=True)
    if predictor.segments:
        predict_folder(predictor, args, output)
    else:  # a classification-only model: its decoder was never trained, so no masks
        print(f"{args.tr} is classification only: class probabilities, no masks")
        predictor.predict_classes_from_files(args.i, args.npp)
    # rows of images predicted earlier into this folder are kept (their masks stay too); rows predicted now replace
    csv_path = predictor.write_class_predictions(output / class_predictions_name(args))
    count = len(predictor.class_probabilities)
    device = getattr(predictor, "device", None)
    del predictor
    free_memory(device)
    return csv_path, count


def print_precision(args) -> None:
    import torch

    from nnunet_mtl import precision
    print(precision.describe(torch.device(args.device), getattr(args, "cpu_amp", None)), flush=True)
