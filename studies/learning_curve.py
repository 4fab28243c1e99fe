"""A training's learning curve from its checkpoint: per epoch the validation pseudo Dice, AUC, macro F1 and the
selection EMA our trainers log (on the validation patches), the training and validation loss, and the iterations
and minutes reached; as a table every ``--every`` epochs, as JSON (docs/results.md quotes it) and as a plot.

    python studies/learning_curve.py FOLD_FOLDER [--every 5] [-o curve.json] [--plot curve.png]
    python studies/learning_curve.py docs/results/curve_breast128_mtl_fold0.json --plot curve.png

FOLD_FOLDER is nnU-Net's ``.../TRAINER__nnUNetPlans__2d/fold_K``; the newest of checkpoint_final.pth and
checkpoint_latest.pth is read (an unfinished training's curve so far). A curve JSON written by ``-o`` (the ones in
docs/results/) is read as it is, so its table and plot need no checkpoint. The smoothed columns are the moving
average over ``--window`` epochs (default 5): a single epoch's 10 validation batches are noisy. ``-o`` and
``--plot`` never replace an existing file unless ``--overwrite``.
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


def read_source(source: Path) -> dict:
    """A fold folder's curve (from its checkpoint) or a curve JSON written by -o."""
    if source.is_dir():
        return read_curve(source)
    try:
        curve = json.loads(source.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"learning_curve: {source}: {e}; expected a fold folder or a curve JSON written by -o")
    if not isinstance(curve, dict) or not isinstance(curve.get("epochs"), list) or not curve["epochs"]:
        raise SystemExit(f"learning_curve: {source} has no 'epochs' list; expected a curve JSON written by -o")
    return curve


def plot_curve(curve: dict, path: Path, window: int) -> None:
    """Validation pseudo Dice, AUC and macro F1 (each epoch thin, the moving average bold) and the training and
    validation loss, against the iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = curve["epochs"]
    x = [r["iterations"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, (key, label) in enumerate((("dice", "pseudo Dice"), ("auc", "AUC"), ("macro_f1", "macro F1"))):
        raw = [r.get(key, np.nan) for r in rows]
        if not np.isfinite(np.array(raw, dtype=float)).any():
            continue
        top.plot(x, raw, color=f"C{i}", alpha=0.3, linewidth=1)
        top.plot(x, smoothed(rows, key, window), color=f"C{i}", linewidth=2, label=f"{label} ({window}-epoch mean)")
    top.set_ylabel("validation patches")
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(loc="lower right")
    for i, (key, label) in enumerate((("train_loss", "training loss"), ("val_loss", "validation loss"))):
        bottom.plot(x, [r.get(key, np.nan) for r in rows], color=f"C{i + 3}", label=label)
    bottom.set_xlabel("iterations")
    bottom.set_ylabel("loss")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper right")
    fig.suptitle(f"{curve.get('trainer', '')} fold {curve.get('fold')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a fold folder (fold_K) or a curve JSON written by -o")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("-o", type=Path, default=None, help="write the curve as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="draw the curve into this PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing -o / --plot file")
    args = parser.parse_args(argv)
    for out in (args.o, args.plot):  # checked before anything is read or written
        if out is not None and out.exists() and not args.overwrite:
            raise SystemExit(f"learning_curve: {out} exists; expected a new file (or --overwrite)")
    if args.o is not None and args.o.resolve() == args.source.resolve():
        raise SystemExit(f"learning_curve: -o {args.o} is the curve read; expected another file")
    curve = read_source(args.source)
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
    if args.plot:
        plot_curve(curve, args.plot, args.window)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
