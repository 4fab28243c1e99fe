"""A training's learning curve from its checkpoint: per epoch the validation pseudo Dice, AUC, macro F1 and the
selection EMA our trainers log (on the validation patches), the training and validation loss, and the iterations
and minutes reached; as a table every ``--every`` epochs and as JSON (docs/results.md quotes it).

    python studies/learning_curve.py FOLD_FOLDER [--every 5] [-o curve.json]

FOLD_FOLDER is nnU-Net's ``.../TRAINER__nnUNetPlans__2d/fold_K``; the newest of checkpoint_final.pth and
checkpoint_latest.pth is read (an unfinished training's curve so far). The smoothed columns are the moving
average over ``--window`` epochs (default 5): a single epoch's 10 validation batches are noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

COLUMNS = {"dice": "mean_fg_dice", "auc": "val_auc", "macro_f1": "val_macro_f1", "ema_score": "ema_mtl_score",
           "train_loss": "train_losses", "val_loss": "val_losses"}


def read_curve(fold: Path) -> dict:
    import torch
    candidates = [fold / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth") if (fold / n).is_file()]
    if not candidates:
        raise SystemExit(f"learning_curve: no checkpoint_final.pth or checkpoint_latest.pth in {fold}")
    path = max(candidates, key=lambda p: p.stat().st_mtime)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    log = checkpoint["logging"]
    init = checkpoint.get("init_args", {})
    epochs = min(len(log[k]) for k in COLUMNS.values() if k in log)
    plans_trainer = checkpoint.get("trainer_name", "")
    from nnunet_mtl.trainers import TRAINERS
    cls = TRAINERS.get(plans_trainer)
    schedule = {}
    if cls is not None:
        from nnunet_mtl.trainers.mtl import merged_along_mro
        schedule = merged_along_mro(cls, "schedule")
    per_epoch = schedule.get("num_iterations_per_epoch", 250)
    start = log["epoch_start_timestamps"][0] if log.get("epoch_start_timestamps") else None
    rows = []
    for e in range(epochs):
        row = {"epoch": e, "iterations": (e + 1) * per_epoch}
        if start is not None and e < len(log.get("epoch_end_timestamps", [])):
            row["minutes"] = round((log["epoch_end_timestamps"][e] - start) / 60, 2)
        for name, key in COLUMNS.items():
            if key in log and e < len(log[key]):
                value = log[key][e]
                row[name] = float(np.mean(value)) if np.ndim(value) else float(value)
        rows.append(row)
    return {"fold_folder": str(fold), "checkpoint": path.name, "trainer": plans_trainer, "fold": init.get("fold"),
            "iterations_per_epoch": per_epoch, "epochs": rows}


def smoothed(rows: list[dict], key: str, window: int) -> list[float]:
    values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(float(np.nanmean(part)) if np.isfinite(part).any() else float("nan"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fold", type=Path)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("-o", type=Path, default=None)
    args = parser.parse_args()
    curve = read_curve(args.fold)
    rows = curve["epochs"]
    for key in ("dice", "auc", "macro_f1"):
        for r, v in zip(rows, smoothed(rows, key, args.window)):
            r[f"{key}_smoothed"] = v
    print(f"{curve['trainer']} fold {curve['fold']} ({curve['checkpoint']}): {len(rows)} epochs of "
          f"{curve['iterations_per_epoch']} iterations; validation patches, moving average over {args.window} epochs")
    print("| iterations | minutes | pseudo Dice | AUC | macro F1 | train loss | val loss |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if (r["epoch"] + 1) % args.every == 0 or r["epoch"] == len(rows) - 1:
            print(f"| {r['iterations']} | {r.get('minutes', float('nan')):.1f} | {r['dice_smoothed']:.3f} | "
                  f"{r['auc_smoothed']:.3f} | {r['macro_f1_smoothed']:.3f} | {r.get('train_loss', float('nan')):.3f} | "
                  f"{r.get('val_loss', float('nan')):.3f} |")
    if args.o:
        args.o.write_text(json.dumps(curve, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
