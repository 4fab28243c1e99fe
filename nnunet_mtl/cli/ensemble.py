"""``nnunet_mtl ensemble``: nnUNetv2_ensemble's masks, plus the mean of the folders' class probabilities.

The masks are computed by nnU-Net's own ensemble code (identical to ``nnUNetv2_ensemble -i ... -o ...`` on the same
folders); class_predictions.csv is the case-by-case mean of the folders' class_predictions.csv, predicted_class its
arg max. A folder written by ``predict --per-fold`` stands for its ensemble/ subfolder. See docs/ensemble.md.
"""
from __future__ import annotations

import os
import shlex

from nnunet_mtl.errors import NnunetMtlError


def _default_processes() -> int:
    value = os.environ.get("nnUNet_def_n_proc")  # nnUNetv2_ensemble's default (nnunetv2.configuration)
    return int(value) if value and value.strip().isdigit() else 8


def register(subparsers):
    p = subparsers.add_parser(
        "ensemble", help="ensemble prediction folders: nnUNetv2_ensemble's masks + mean class probabilities",
        description="Averages the CASE.npz segmentation probabilities of several prediction folders with nnU-Net's "
                    "own ensemble code (the masks are identical to nnUNetv2_ensemble's on the same folders) and "
                    "their class_predictions.csv case by case (mean probabilities, predicted_class = arg max). The "
                    "folders must be predicted with --save_probabilities and hold the same cases. A folder written "
                    "by nnunet_mtl predict --per-fold stands for its ensemble/ subfolder. Writes the masks, "
                    "class_predictions.csv, dataset.json, plans.json and ensemble.json (what was ensembled) to -o. "
                    "Every input counts the same (no weights, as nnUNetv2_ensemble). See docs/ensemble.md.")
    p.add_argument("-i", nargs="+", required=True, metavar="FOLDER",
                   help="prediction folders (two or more), each predicted with --save_probabilities")
    p.add_argument("-o", required=True, help="output folder (created if missing; never one of the inputs)")
    p.add_argument("-np", type=int, default=_default_processes(),
                   help="processes for the masks (default 8 or $nnUNet_def_n_proc, as nnUNetv2_ensemble; capped to "
                        "the cores and the cases)")
    p.add_argument("--save_npz", action="store_true",
                   help="also write the averaged probabilities (CASE.npz + CASE.pkl), as nnUNetv2_ensemble --save_npz")
    p.set_defaults(func=run)


def command_line(args) -> str:
    cmd = ["nnunet_mtl", "ensemble", "-i", *map(str, args.i), "-o", str(args.o), "-np", str(args.np)]
    if args.save_npz:
        cmd.append("--save_npz")
    return shlex.join(cmd)


def run(args) -> int:
    from nnunet_mtl.inference.ensemble import plan_ensemble, run_ensemble
    from nnunet_mtl.resources import cap_processes
    if args.np < 1:
        raise NnunetMtlError(f"-np {args.np}: expected at least 1 process")
    print(f"ensemble: checking {len(args.i)} folders", flush=True)
    plan = plan_ensemble(args.i, args.o, save_npz=args.save_npz)
    processes = cap_processes(args.np, "-np", len(plan.cases), what="cases")
    for k, item in enumerate(plan.items, 1):
        print(f"  [{k}] {item.describe()}", flush=True)
    classes = (f"classes {', '.join(plan.class_names)} (mean of {len(plan.items)} class_predictions.csv)"
               if plan.class_rows is not None else "no class_predictions.csv in the inputs: masks only")
    print(f"ensemble: {len(plan.cases)} cases, {classes}", flush=True)
    print(f"ensemble: masks with nnU-Net's merge_files (mean of the .npz probabilities), {processes} "
          f"process{'es' if processes > 1 else ''} -> {plan.output}", flush=True)
    written = run_ensemble(plan, processes, command=command_line(args))
    print(f"segmentations ({written['masks']} masks{', with CASE.npz/.pkl' if plan.save_npz else ''}): "
          f"{plan.output}")
    if "class_predictions" in written:
        print(f"class probabilities: {written['class_predictions']}")
    print(f"what was ensembled: {written['info']}")
    return 0
