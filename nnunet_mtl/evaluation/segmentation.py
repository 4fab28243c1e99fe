"""Per-case segmentation metrics on binary 2D masks: Dice, IoU and HD95 (pixels and millimetres).

Definitions (the strings in :data:`DEFINITIONS` go into summary.json):

- Foreground is every non-zero label (our datasets have one lesion label; any other non-zero value would also
  count as lesion).
- Dice = 2|P∩R| / (|P| + |R|); IoU = |P∩R| / |P∪R|.
- HD95 follows MONAI's ``HausdorffDistanceMetric(percentile=95)``: the boundary of a mask is the mask minus its
  binary erosion with the 3x3 cross (4-connectivity, scipy's default structure, pixels outside the image count as
  background, so an object touching the image border has a boundary there). For every boundary pixel of P the
  Euclidean distance to the nearest boundary pixel of R is taken, and vice versa; HD95 is the larger of the two
  95th percentiles (numpy's linear interpolation). It is *not* medpy's ``hd95``, which takes one percentile of the
  two directions pooled and gives a different number. Distances are between pixel centres; in millimetres they use
  the (row, column) spacing, which may be anisotropic.
- Empty masks: both empty -> Dice 1, IoU 1, HD95 0 (a correct "no lesion"). Exactly one empty -> Dice 0, IoU 0 and
  HD95 = the image diagonal, hypot(rows * s_row, columns * s_col) with s = 1 for pixels: larger than any distance
  two pixels of the image can have, so it is a finite worst case and means over cases stay defined (some packages
  return 0 or inf here instead; 0 would reward a missed lesion).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

# 3x3 cross: the structure scipy (and therefore MONAI) uses by default for a 2D erosion.
_CROSS = generate_binary_structure(2, 1)

DEFINITIONS = {
    "dice": "per case 2|P∩R|/(|P|+|R|) on foreground = label > 0; both masks empty -> 1, one empty -> 0",
    "iou": "per case |P∩R|/|P∪R| (Jaccard); both empty -> 1, one empty -> 0",
    "hd95_px": "symmetric HD95 as MONAI HausdorffDistanceMetric(percentile=95): max of the two directed 95th "
               "percentiles (linear interpolation) of Euclidean distances between boundary pixels (mask minus its "
               "3x3-cross erosion), in pixels; both empty -> 0, one empty -> image diagonal hypot(rows, cols)",
    "hd95_mm": "as hd95_px with distances scaled by the case's (spacing_row_mm, spacing_col_mm) from cases.csv; "
               "one empty -> hypot(rows*s_row, cols*s_col); cases without spacing are left out",
}


def as_binary_mask(label_map: np.ndarray) -> np.ndarray:
    """Foreground (label > 0) as a bool array."""
    return np.asarray(label_map) > 0


def dice_iou(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks of the same shape; both empty -> (1, 1)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    inter = int(np.count_nonzero(pred & ref))
    size_p, size_r = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if size_p + size_r == 0:
        return 1.0, 1.0
    union = size_p + size_r - inter
    return 2.0 * inter / (size_p + size_r), inter / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion with the 3x3 cross; pixels beyond the image count as background."""
    mask = np.asarray(mask, bool)
    return mask & ~binary_erosion(mask, structure=_CROSS, border_value=0)


def image_diagonal(shape: tuple[int, ...], spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """hypot(rows * s_row, cols * s_col): the worst-case HD95 given when exactly one mask is empty."""
    return float(math.hypot(shape[0] * spacing[0], shape[1] * spacing[1]))


def directed_boundary_distances(from_mask: np.ndarray, to_mask: np.ndarray,
                                spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Distance from every boundary pixel of ``from_mask`` to the nearest boundary pixel of ``to_mask``.

    Both masks must be non-empty. One Euclidean distance transform of the complement of the target boundary gives
    every pixel's distance to that boundary at once (``sampling`` scales rows and columns separately).
    """
    to_edges = boundary(to_mask)
    dist = distance_transform_edt(~to_edges, sampling=spacing)
    return dist[boundary(from_mask)]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric HD95 (MONAI's definition, see the module docstring) of two bool masks, in units of ``spacing``."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise ValueError(f"hd95 expects two 2D masks of the same shape, got {pred.shape} and {ref.shape}")
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return image_diagonal(pred.shape, spacing)
    spacing = (float(spacing[0]), float(spacing[1]))
    d_pr = directed_boundary_distances(pred, ref, spacing)
    d_rp = directed_boundary_distances(ref, pred, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def case_metrics(pred_label: np.ndarray, ref_label: np.ndarray,
                 spacing_mm: tuple[float, float] | None = None) -> dict:
    """Dice, IoU, HD95 in pixels and (when ``spacing_mm`` is known) in mm for one case.

    Also returns ``ref_empty`` / ``pred_empty`` flags so a summary can count the cases that hit a convention.
    """
    pred, ref = as_binary_mask(pred_label), as_binary_mask(ref_label)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    dice, iou = dice_iou(pred, ref)
    hd_px = hd95(pred, ref)
    hd_mm = math.nan
    if spacing_mm is not None and all(math.isfinite(s) and s > 0 for s in spacing_mm):
        if spacing_mm[0] == spacing_mm[1]:
            hd_mm = hd_px * float(spacing_mm[0])  # isotropic: the same distances, scaled; no second transform
        else:
            hd_mm = hd95(pred, ref, spacing_mm)
    return {"dice": dice, "iou": iou, "hd95_px": hd_px, "hd95_mm": hd_mm,
            "ref_empty": not ref.any(), "pred_empty": not pred.any()}
