"""What the evaluation modules share: the metric names, the files one evaluation writes, message helpers."""
from __future__ import annotations

import math
import sys

import numpy as np

SEG_METRICS = ("dice", "iou", "hd95_px", "hd95_mm", "nsd_px", "nsd_mm")
ATTENTION_METRIC = "attention_iou"  # with --attention: IoU of the lesion map P >= 0.5 (Fan et al.'s JSI)
ATTENTION_FOLDER = "attention"      # PRED/attention/CASE.png, written by nnunet_mtl predict --save-attention
ATTENTION_THRESHOLD = 128           # P >= 0.5 on the stored round(255 P)
UNANNOTATED_KINDS = ("box", "none")
OUTPUT_FILES = ("per_case.csv", "summary.json", "confusion_matrix.png", "roc_curve.png", "reliability_diagram.png")


_MAX_LISTED = 5  # case ids named in a message before it says "and N more"


def warn(message: str) -> None:
    """``warning: MESSAGE`` on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def some_ids(ids: list[str]) -> str:
    """The first few of ``ids`` (sorted), and how many more, for a message."""
    ids = sorted(ids)
    more = f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else ""
    return ", ".join(ids[:_MAX_LISTED]) + more


def as_float(x) -> float:
    """``x`` as a float, None as NaN."""
    return math.nan if x is None else float(x)


def summary_stats(values) -> dict | None:
    """mean, population std (ddof=0) and median over cases; None when there are no values."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return None
    return {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(np.median(arr))}
