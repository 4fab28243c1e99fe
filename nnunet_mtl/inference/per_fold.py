"""The layout of a per-fold prediction folder, written by ``nnunet_mtl predict --per-fold`` (and ``ablate-guidance
--per-fold``): ``OUT/fold_K/`` holds fold K's model alone, ``OUT/ensemble/`` all folds together (what ``-f K1 K2 ...``
writes without the flag), and ``OUT/per_fold.json`` says which subfolder is which and with what command each was
predicted. Written here (:func:`per_fold_info`, :func:`start_per_fold_output`), read here (:func:`per_fold_layout`,
by evaluate, the ensemble, compare and the gallery)."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from nnunet_mtl.atomic import write_json
from nnunet_mtl.dataset.contract import read_json_object
from nnunet_mtl.errors import NnunetMtlError

PER_FOLD_FILE = "per_fold.json"


ENSEMBLE_SUBFOLDER = "ensemble"


FOLD_SUBFOLDER = re.compile(r"fold_(\d+)")


CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


def has_masks(folder) -> bool:
    """Whether ``folder`` holds CASE.png files directly (a prediction folder without any is classification only)."""
    return any(p.name.endswith(".png") and p.is_file() for p in Path(folder).iterdir())


def fold_subfolder(fold) -> str:
    """The subfolder of one fold's own predictions in a per-fold folder."""
    return f"fold_{fold}"


def per_fold_layout(pred_dir) -> dict | None:
    """The subfolders of a per-fold prediction folder, or None for a plain one (masks at the top level).

    Recognized by ``per_fold.json`` (which names the subfolders and their folds), or, without it, by ``fold_K``
    subfolders and no masks at the top level. Returns ``{"folds": [(name, [k])...] in fold order, "ensemble":
    (name, [k...] or None) or None, "info": per_fold.json's content or None, "notes": [str]}``.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        return None
    info_path = pred_dir / PER_FOLD_FILE
    if info_path.is_file():
        expected = "the per_fold.json written by nnunet_mtl predict --per-fold"
        info = read_json_object(info_path, expected)
        subfolders = info.get("subfolders")
        if not isinstance(subfolders, dict) or not subfolders:
            raise NnunetMtlError(f"{info_path} has no 'subfolders' object; expected {expected}")
        folds, ensemble = [], None
        for name, entry in subfolders.items():
            listed = entry.get("folds") if isinstance(entry, dict) else None
            if (not isinstance(listed, list) or not listed or not all(type(k) is int for k in listed)
                    or not (FOLD_SUBFOLDER.fullmatch(name) or name == ENSEMBLE_SUBFOLDER)):
                raise NnunetMtlError(f"{info_path}: subfolder entry {name!r} is not understood; expected fold_K or "
                                     f"ensemble with a list of integer 'folds' ({expected})")
            if name == ENSEMBLE_SUBFOLDER:
                ensemble = (name, listed)
            else:
                folds.append((name, listed))
        if not folds:
            raise NnunetMtlError(f"{info_path} lists no fold_K subfolder; expected {expected}")
        if has_masks(pred_dir):
            raise NnunetMtlError(f"{pred_dir} holds both {PER_FOLD_FILE} and masks at the top level; expected a "
                                 f"per-fold folder (fold_K/, ensemble/) or a plain prediction folder, not both")
        folds.sort(key=lambda nf: nf[1])
        return {"folds": folds, "ensemble": ensemble, "info": info, "notes": []}
    if has_masks(pred_dir):
        return None
    found = sorted((int(m.group(1)), d.name) for d in pred_dir.iterdir()
                   if d.is_dir() and (m := FOLD_SUBFOLDER.fullmatch(d.name)))
    if not found:
        return None
    for _, name in found:
        ckpt = next((pred_dir / name / c for c in CHECKPOINT_NAMES if (pred_dir / name / c).is_file()), None)
        if ckpt is not None:
            raise NnunetMtlError(f"{pred_dir} is a trained model folder ({ckpt} is a checkpoint), not predictions; "
                                 f"expected a folder written by nnunet_mtl predict (for a cross-validation evaluate "
                                 f"{pred_dir / name / 'validation'}, see docs/evaluation.md)")
    ensemble = (ENSEMBLE_SUBFOLDER, None) if (pred_dir / ENSEMBLE_SUBFOLDER).is_dir() else None
    notes = [f"no {PER_FOLD_FILE} in {pred_dir}: subfolders {', '.join(n for _, n in found)}"
             f"{' and ensemble' if ensemble else ''} taken from their names"]
    return {"folds": [(name, [k]) for k, name in found], "ensemble": ensemble, "info": None, "notes": notes}


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
    if (output / PER_FOLD_FILE).is_file():
        raise NnunetMtlError(f"{output} holds a per-fold run ({output / PER_FOLD_FILE}); {doing} into it without "
                             f"--per-fold would mix the two layouts: expected --per-fold or another -o")


def sub_run_args(args, folds: list, output: Path) -> argparse.Namespace:
    """A copy of ``args`` for one prediction of a per-fold run: these folds, into that folder, without --per-fold."""
    return argparse.Namespace(**{**vars(args), "f": [str(k) for k in folds], "o": str(output), "per_fold": False})
