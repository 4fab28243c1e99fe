"""``nnunet_mtl demo``: the user's whole day on the synthetic ultrasound phantom, CPU-friendly.

generate -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (multitask, short schedule) -> nnunet_mtl predict on
the held-out test split -> nnunet_mtl evaluate. nnU-Net's own commands run as child processes, exactly as a
user would type them, with nnUNet_raw / nnUNet_preprocessed / nnUNet_results inside the demo folder.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunet_mtl.dataset.partial import DROP_KINDS
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.paths import ENV_VARS, command_env, venv_command

DEFAULT_TRAINER = "nnUNetTrainerMTL_demo"


# everything a demo writes into its folder: --overwrite removes a folder holding nothing else
DEMO_ENTRIES = frozenset({"nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions_test",
                          "demo_timings.json"})


def register(subparsers):
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on a synthetic ultrasound phantom (about 8 minutes on 2 CPU cores)",
        description="Generates a synthetic ultrasound dataset, plans and preprocesses it with nnU-Net, trains the "
                    "multitask trainer on a short schedule, predicts the held-out test split and evaluates it.")
    p.add_argument("--workdir", default="nnunet_mtl_demo", help="folder for all demo data (default ./nnunet_mtl_demo)")
    p.add_argument("-d", "--dataset-id", type=int, default=500, help="dataset id (default 500)")
    p.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER, help=f"trainer (default {DEFAULT_TRAINER})")
    p.add_argument("--num-patients", type=int, default=80, help="patients in the phantom (default 80)")
    p.add_argument("--images-per-patient", type=int, default=3, help="images per patient (default 3)")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--keep-masks", type=float, default=None, metavar="FRACTION",
                   help="train on a partially annotated copy of the phantom: keep the masks of this fraction of the "
                        "training patients (nnunet_mtl drop-masks, stratified by class, seed 0) into dataset id + 1 "
                        "(default: every mask)")
    p.add_argument("--masks-as", choices=DROP_KINDS, default="none",
                   help="with --keep-masks: what the other training images get (default none: no mask)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing demo folder first")
    p.set_defaults(func=run)


class Steps:
    def __init__(self, total: int):
        self.total, self.index, self.started, self.times = total, 0, time.time(), {}

    def start(self, title: str):
        self.index += 1
        self.title, self.t0 = title, time.time()
        print(f"\n=== [{self.index}/{self.total}] {title} ===", flush=True)

    def done(self):
        self.times[self.title] = time.time() - self.t0
        print(f"=== [{self.index}/{self.total}] done in {self.times[self.title]:.0f} s "
              f"(total {time.time() - self.started:.0f} s) ===", flush=True)


def run_command(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise NnunetMtlError(f"'{' '.join(cmd[:2])} ...' failed with exit code {result.returncode} (output above)")


def run(args) -> int:
    import torch

    from dataset_conversion.synthetic import convert_synthetic
    from nnunet_mtl.evaluation.evaluate import evaluate_folder
    from nnunet_mtl.evaluation.formatting import format_summary_table

    from nnunet_mtl.outputs import check_output_folder
    from nnunet_mtl.trainers import TRAINERS
    if args.trainer not in TRAINERS:
        raise NnunetMtlError(f"trainer {args.trainer!r} is not an nnunet_mtl trainer; expected one of "
                             f"{', '.join(n for n in sorted(TRAINERS) if n.endswith('_demo'))} (or any of "
                             f"{len(TRAINERS)} in the README's trainer table)")
    from dataset_conversion.synthetic import check_synthetic_arguments
    check_synthetic_arguments(args.dataset_id, "SyntheticUS", num_patients=args.num_patients,
                              images_per_patient=args.images_per_patient, size=args.size, normal_fraction=0.1,
                              malignant_fraction=0.4, test_fraction=0.25)
    trained_id = args.dataset_id
    if args.keep_masks is not None:
        from nnunet_mtl.dataset.partial import check_keep
        from nnunet_mtl.paths import dataset_folder_name
        try:
            check_keep(args.keep_masks)
        except NnunetMtlError as e:  # the same check as drop-masks', said with the demo's option name
            raise NnunetMtlError(str(e).replace("--keep ", "--keep-masks ", 1)) from None
        trained_id = args.dataset_id + 1
        dataset_folder_name(trained_id, "SyntheticUS")  # the partial copy's id is a valid one
    workdir = check_output_folder(Path(args.workdir).resolve(), "demo folder")
    if workdir.exists() and any(workdir.iterdir()):
        if not args.overwrite:
            raise NnunetMtlError(f"demo folder {workdir} exists and is not empty; pass --overwrite or --workdir DIR")
        foreign = sorted(p.name for p in workdir.iterdir() if p.name not in DEMO_ENTRIES)
        if foreign:
            raise NnunetMtlError(f"demo folder {workdir} holds {foreign[0]!r}, which no demo wrote; --overwrite only "
                                 f"replaces a folder of an earlier demo: expected another --workdir")
        shutil.rmtree(workdir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # two worker processes suit a 2-core machine; more would only compete with the training for the cores
    env = command_env(workdir, device, processes=2)
    for var in ENV_VARS:
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    os.environ.update({k: env[k] for k in (*ENV_VARS, "nnUNet_extTrainer")})

    steps = Steps(5 if args.keep_masks is None else 6)
    steps.start("generate the synthetic ultrasound phantom")
    raw = convert_synthetic(args.dataset_id, num_patients=args.num_patients,
                            images_per_patient=args.images_per_patient, size=args.size, seed=args.seed,
                            raw_root=workdir / "nnUNet_raw")
    print(f"raw dataset: {raw}")
    steps.done()

    if args.keep_masks is not None:
        from nnunet_mtl.dataset.partial import drop_masks, format_partial_table
        steps.start(f"nnunet_mtl drop-masks -d {args.dataset_id} --keep {args.keep_masks:g} --into {trained_id} "
                    f"--as {args.masks_as} (before preprocessing)")
        raw, report = drop_masks(args.dataset_id, trained_id, keep=args.keep_masks, as_kind=args.masks_as,
                                 raw_root=workdir / "nnUNet_raw")
        print(format_partial_table(report))
        print(f"partially annotated dataset: {raw}")
        steps.done()

    steps.start("nnUNetv2_plan_and_preprocess")
    run_command([venv_command("nnUNetv2_plan_and_preprocess"), "-d", str(trained_id), "-c", "2d", "-np", "2",
                 "--verify_dataset_integrity"], env)
    steps.done()

    steps.start(f"nnUNetv2_train {trained_id} 2d 0 -tr {args.trainer} (multitask, short schedule)")
    run_command([venv_command("nnUNetv2_train"), str(trained_id), "2d", "0", "-tr", args.trainer, "-device", device],
                env)
    steps.done()

    steps.start("nnunet_mtl predict on the held-out test split")
    predictions = workdir / "predictions_test"
    run_command([sys.executable, "-m", "nnunet_mtl.cli.main", "predict", "-i", str(raw / "imagesTs"),
                 "-o", str(predictions), "-d", str(trained_id), "-c", "2d", "-tr", args.trainer, "-f", "0",
                 "-device", device, "-npp", "2", "-nps", "2", "--disable_progress_bar"], env)
    steps.done()

    steps.start("nnunet_mtl evaluate")
    import json
    class_labels = json.loads((raw / "dataset.json").read_text())["class_labels"]
    eval_dir = predictions / "evaluation"
    summary = evaluate_folder(predictions, raw / "labelsTs",
                              class_predictions_csv=predictions / "class_predictions.csv",
                              cases_csv=raw / "cases.csv", class_labels=class_labels, output_dir=eval_dir)
    print(format_summary_table(summary))
    steps.done()

    total = time.time() - steps.started
    model = workdir / "nnUNet_results"
    print(f"\nDemo finished in {total / 60:.1f} min on {device}.")
    print(f"  raw dataset      {raw}")
    print(f"  trained model    {next(model.glob('Dataset*/' + args.trainer + '__*'), model)}  (progress.png per fold)")
    print(f"  predictions      {predictions}  (masks + class_predictions.csv)")
    print(f"  evaluation       {eval_dir}  (per_case.csv, summary.json, plots)")
    (workdir / "demo_timings.json").write_text(json.dumps({**steps.times, "total": total, "device": device}, indent=2))
    return 0
