"""``nnunet_mtl predict``: nnUNetv2_predict's flags; same masks, plus ``class_predictions.csv``.

``--per-fold`` (with ``-f K1 K2 ...``, at least two folds) runs the same prediction once per fold's model alone,
into ``OUT/fold_K/``, and once with all folds, into ``OUT/ensemble/`` (exactly what ``-f K1 K2 ...`` without the
flag writes into OUT), and records in ``OUT/per_fold.json`` which subfolder is which. Everything that can be
checked (folds, checkpoints, inputs, the output folder) is checked before the first prediction.

``--save-attention`` also writes ``OUT/attention/CASE.png`` (each subfolder's own with ``--per-fold``): the lesion
map P of a head that returns one (Fan et al.'s lesion-aware head), as uint8 round(255 P) in the image's geometry
(:mod:`nnunet_mtl.inference.predictor`); a model whose head has none is refused before anything is predicted. The
masks and class_predictions.csv are the same bytes as without the flag.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import re
import shlex
from pathlib import Path

from nnunet_mtl.dataset.contract import read_json_object
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.models import (PLANS_KEY, check_checkpoints, check_per_fold_folds, model_class_names,
                                         parse_folds, resolve_model_arguments)
from nnunet_mtl.paths import env_with_ext_trainer


def _default(env: str, default: int) -> int:
    value = os.environ.get(env)
    return int(value) if value else default


def register(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment and classify images with a trained multitask model (nnUNetv2_predict's flags)",
        description="Runs nnU-Net's predictor (identical segmentations to nnUNetv2_predict; on a CPU with native "
                    "bfloat16 equal up to rounding unless --cpu-amp off) and also writes "
                    "OUTPUT/class_predictions.csv with per-case class probabilities, averaged over test-time "
                    "mirroring, tiles and folds.")
    add_model_arguments(p)
    p.add_argument("--save_probabilities", action="store_true", help="also export segmentation probabilities")
    p.add_argument("--continue_prediction", action="store_true", help="keep existing outputs, predict the rest")
    p.add_argument("-prev_stage_predictions", default=None, help="previous stage predictions (cascade)")
    p.add_argument("-num_parts", type=int, default=1)
    p.add_argument("-part_id", type=int, default=0)
    p.add_argument("--save-attention", dest="save_attention", action="store_true",
                   help="also write OUTPUT/attention/CASE.png: the head's lesion map P (e.g. nnUNetTrainerLesionAware: "
                        "Fan et al.'s attention at the bottleneck's resolution), upsampled and averaged over mirrors, "
                        "tiles and folds, in the image's geometry as uint8 round(255 P); for nnunet_mtl evaluate "
                        "--attention. Refused for a head without an attention map")
    add_per_fold_argument(p, "masks and class_predictions.csv")
    p.set_defaults(func=run)


def add_per_fold_argument(p, what: str) -> None:
    p.add_argument("--per-fold", dest="per_fold", action="store_true",
                   help=f"with -f K1 K2 ... (two folds or more): {what} of each fold's model alone in OUTPUT/fold_K/ "
                        f"and of the fold ensemble in OUTPUT/ensemble/ (what -f K1 K2 ... writes without the flag), "
                        f"plus OUTPUT/per_fold.json; for mean ± std over folds (see docs/evaluation.md)")


def add_model_arguments(p, default_trainer: str = "nnUNetTrainerMTL") -> None:
    """nnUNetv2_predict's flags that choose the model, the inputs and how to run it (shared with
    ablate-guidance)."""
    p.add_argument("-i", required=True, help="input folder of images named CASE_0000.png (as nnUNetv2_predict)")
    p.add_argument("-o", required=True, help="output folder (created if missing)")
    p.add_argument("-d", help="dataset id or name, e.g. 500 or Dataset500_SyntheticUS (or -m)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default=default_trainer, help=f"trainer class used for training (default {default_trainer})")
    p.add_argument("-c", help="configuration, e.g. 2d (or -m)")
    p.set_defaults(default_trainer=default_trainer)
    p.add_argument("-m", default=None,
                   help="the trained model folder itself, TRAINER__PLANS__CONFIGURATION with fold_K/ inside (as "
                        "nnUNetv2_predict_from_modelfolder; it may lie outside nnUNet_results, e.g. unpacked from "
                        "nnUNetv2_export_model_to_zip); instead of -d, -tr, -p and -c")
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
    p.add_argument("--cpu-amp", dest="cpu_amp", choices=["auto", "bf16", "off"], default=None,
                   help="with -device cpu: bfloat16 autocast (auto: where the CPU computes bfloat16 natively; off: "
                        "float32, masks bit-identical to nnUNetv2_predict). Default: the environment's "
                        "nnUNet_mtl_cpu_amp, else auto (docs/benchmarks.md)")


def check_inputs(input_folder: Path, file_ending: str, channels: int | None = None) -> None:
    """The input folder holds nnU-Net-named images, each readable, of a sane size (a header claiming more is a
    decompression bomb), with the model's number of ``channels`` in one file (a PNG model takes grey images: an
    RGB file would be read as three channels and fail inside the network)."""
    if not input_folder.is_dir():
        raise NnunetMtlError(f"input folder {input_folder} does not exist" if not input_folder.exists() else
                             f"input {input_folder} is a file; expected a folder of CASE_0000{file_ending} images")
    images = sorted(input_folder.glob(f"*_0000{file_ending}"))
    if not images:
        raise NnunetMtlError(f"no images *_0000{file_ending} in {input_folder}; expected nnU-Net's naming CASE_0000{file_ending}")
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


# ----------------------------------------------------------------------------------------------- folds
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
    from nnunet_mtl.inference.predictor import read_class_prediction_rows
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


def check_parts(args) -> None:
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise NnunetMtlError(f"-part_id {args.part_id} must be smaller than -num_parts {args.num_parts} (and both "
                             f"at least 0 and 1)")


def command_line(args, subcommand: str, folds: list, output, per_fold: bool = False) -> str:
    """The nnunet_mtl command that does what ``args`` asks with ``folds`` into ``output`` (for per_fold.json)."""
    model = (["-m", str(args.m)] if getattr(args, "m", None) else
             ["-d", str(args.d), "-c", args.c, "-tr", args.tr, "-p", args.p])
    cmd = ["nnunet_mtl", subcommand, "-i", str(args.i), "-o", str(output), *model, "-f", *map(str, folds),
           "-chk", args.chk, "-device", args.device]
    if args.step_size != 0.5:
        cmd += ["-step_size", str(args.step_size)]
    for flag in ("disable_tta", "save_probabilities", "continue_prediction"):
        if getattr(args, flag, False):
            cmd.append(f"--{flag}")
    if getattr(args, "save_attention", False):
        cmd.append("--save-attention")
    if getattr(args, "prev_stage_predictions", None):
        cmd += ["-prev_stage_predictions", str(args.prev_stage_predictions)]
    if getattr(args, "num_parts", 1) > 1:
        cmd += ["-num_parts", str(args.num_parts), "-part_id", str(args.part_id)]
    if getattr(args, "cases", None):
        cmd += ["--cases", str(args.cases)]
    if getattr(args, "cpu_amp", None):
        cmd += ["--cpu-amp", args.cpu_amp]
    if per_fold:
        cmd.append("--per-fold")
    return shlex.join(cmd)



# what must agree for --continue_prediction to continue a per-fold folder instead of mixing two models
_SAME_MODEL_KEYS = ("dataset", "trainer", "plans", "configuration", "checkpoint", "folds", "step_size",
                    "disable_tta")


def per_fold_info(args, subcommand: str, folds: list[int], model_folder: Path, output: Path) -> dict:
    """The content of per_fold.json: which subfolder holds which folds, and with what they were predicted."""
    from nnunet_mtl.evaluation.evaluate import ENSEMBLE_SUBFOLDER, fold_subfolder
    subfolders = {fold_subfolder(k): {"folds": [k], "what": f"fold {k}'s model alone",
                                      "command": command_line(args, subcommand, [k], output / fold_subfolder(k))}
                  for k in folds}
    subfolders[ENSEMBLE_SUBFOLDER] = {
        "folds": list(folds),
        "what": f"the ensemble of folds {', '.join(map(str, folds))} (what -f {' '.join(map(str, folds))} writes "
                f"without --per-fold)",
        "command": command_line(args, subcommand, folds, output / ENSEMBLE_SUBFOLDER)}
    return {"written_by": f"nnunet_mtl {subcommand} --per-fold", "folds": list(folds), "subfolders": subfolders,
            "dataset": model_folder.parent.name, "trainer": args.tr, "plans": args.p, "configuration": args.c,
            "checkpoint": args.chk, "step_size": args.step_size, "disable_tta": bool(args.disable_tta),
            "model_folder": str(model_folder), "input": str(Path(args.i).resolve()),
            "command": command_line(args, subcommand, folds, output, per_fold=True),
            "evaluate": f"nnunet_mtl evaluate -pred {shlex.quote(str(output))} -d {shlex.quote(str(args.d))}"}


def start_per_fold_output(args, info: dict, file_ending: str = ".png") -> Path:
    """Check the output folder for a per-fold run (no plain prediction in it; with --continue_prediction the same
    model as the per_fold.json already there), then create it and write per_fold.json (atomically)."""
    from nnunet_mtl.evaluation.evaluate import PER_FOLD_FILE, read_json_object, write_json
    output = Path(args.o)
    if output.is_dir():
        masks = [p for p in output.iterdir() if p.is_file() and p.name.endswith(file_ending)]
        if masks:
            raise NnunetMtlError(f"{output} already holds a plain prediction ({len(masks)} masks such as "
                                 f"{masks[0].name} at its top level); --per-fold writes {output}/fold_K/ and "
                                 f"{output}/ensemble/: expected an empty, new or per-fold output folder")
        info_path = output / PER_FOLD_FILE
        if info_path.is_file():
            old = read_json_object(info_path, "the per_fold.json written by nnunet_mtl --per-fold")
            if getattr(args, "continue_prediction", False):
                differ = [k for k in _SAME_MODEL_KEYS if old.get(k) != info.get(k)]
                if differ:
                    k = differ[0]
                    raise NnunetMtlError(
                        f"--continue_prediction: {info_path} was written with {k} {old.get(k)!r}, this run has "
                        f"{info.get(k)!r}; continuing would mix the predictions of two models (expected the same "
                        f"{', '.join(_SAME_MODEL_KEYS)}, or another -o)")
            stale = sorted(set(old.get("subfolders") or {}) - set(info["subfolders"]))
            stale = [n for n in stale if (output / n).is_dir()]
            if stale:
                print(f"note: {', '.join(stale)} in {output} are left from an earlier run and not part of this one "
                      f"({PER_FOLD_FILE} lists the subfolders of this run)")
    elif output.exists():
        raise NnunetMtlError(f"output {output} is a file; expected a folder")
    output.mkdir(parents=True, exist_ok=True)
    write_json(info, output / PER_FOLD_FILE)
    return output


def refuse_per_fold_folder(output: Path, doing: str) -> None:
    """A run without --per-fold must not write into a folder a --per-fold run made (the layouts would mix)."""
    from nnunet_mtl.evaluation.evaluate import PER_FOLD_FILE
    if (output / PER_FOLD_FILE).is_file():
        raise NnunetMtlError(f"{output} holds a per-fold run ({output / PER_FOLD_FILE}); {doing} into it without "
                             f"--per-fold would mix the two layouts: expected --per-fold or another -o")


def sub_run_args(args, folds: list, output: Path) -> argparse.Namespace:
    """A copy of ``args`` for one prediction of a per-fold run: these folds, into that folder, without --per-fold."""
    return argparse.Namespace(**{**vars(args), "f": [str(k) for k in folds], "o": str(output), "per_fold": False})


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
    from nnunet_mtl.inference.predictor import class_predictions_file_name  # one naming rule, the predictor's
    return class_predictions_file_name(args.num_parts, args.part_id)


ATTENTION_FOLDER = "attention"  # = nnunet_mtl.evaluation.evaluate.ATTENTION_FOLDER (OUT/attention/CASE.png)


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


def run(args) -> int:
    check_parts(args)
    if args.per_fold:
        return run_per_fold(args)
    output = Path(args.o)
    refuse_per_fold_folder(output, "predicting")
    checked = preflight(args, parse_folds(args.f))
    check_prediction_output(output, class_predictions_name(args), checked)
    print_precision(args)
    csv_path, count = predict_into(args, output, checked)
    print(f"segmentations: {output}\nclass probabilities ({count} cases predicted now): {csv_path}")
    if args.save_attention:
        print(f"lesion maps: {output / ATTENTION_FOLDER}")
    if args.num_parts == 1 and (checked["plans"].get(PLANS_KEY) or {}).get("segments", True):
        note_unmatched(output, csv_path, checked["dataset_json"].get("file_ending", ".png"))
        if args.save_attention:
            note_missing_attention(output, checked["dataset_json"].get("file_ending", ".png"))
    return 0


def run_per_fold(args) -> int:
    """One prediction per fold's model alone (OUT/fold_K) and one of the fold ensemble (OUT/ensemble)."""
    from nnunet_mtl.evaluation.evaluate import ENSEMBLE_SUBFOLDER, fold_subfolder
    folds = check_per_fold_folds(args.f)
    checked = preflight(args, folds)
    output = Path(args.o)
    from nnunet_mtl.outputs import check_output_folder
    check_output_folder(output)
    for sub in [fold_subfolder(k) for k in folds] + [ENSEMBLE_SUBFOLDER]:
        check_prediction_output(output / sub, class_predictions_name(args), checked)
    if getattr(args, "save_attention", False):
        check_attention_model(args, checked, folds[0])
    info = per_fold_info(args, "predict", folds, checked["model_folder"], output)
    print_precision(args)
    start_per_fold_output(args, info, checked["dataset_json"].get("file_ending", ".png"))
    runs = [(f"fold {i + 1}/{len(folds)}: fold {k}'s model alone", [k], output / fold_subfolder(k))
            for i, k in enumerate(folds)]
    runs.append((f"ensemble: folds {', '.join(map(str, folds))} together", folds, output / ENSEMBLE_SUBFOLDER))
    written = []
    for label, run_folds, sub in runs:
        print(f"{label} -> {sub}", flush=True)
        csv_path, count = predict_into(sub_run_args(args, run_folds, sub), sub, checked)
        written.append((sub, csv_path, count))
        print(f"{label}: {count} cases predicted now, {csv_path}", flush=True)
    print(f"\nper-fold prediction in {output} ({output / 'per_fold.json'} says which subfolder is which):")
    for sub, csv_path, count in written:
        extra = f", {ATTENTION_FOLDER}/" if getattr(args, "save_attention", False) else ""
        print(f"  {sub.name + '/':<12} masks{extra} and {csv_path.name} ({count} cases predicted now)")
    print(f"evaluate all subfolders (mean ± std over folds, and the ensemble): {info['evaluate']}")
    return 0
