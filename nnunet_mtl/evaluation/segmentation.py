"""Per-case segmentation metrics on binary 2D masks: Dice, IoU, HD95 and NSD (pixels and millimetres).

Definitions (the strings in :data:`DEFINITIONS` go into summary.json):

- Foreground is every non-zero label of the two arrays given here (our datasets have one lesion label). The
  references reach these functions only when fully annotated (0 / 1): ``nnunet_mtl evaluate`` checks every reference
  label map first and leaves one holding nnU-Net's ignore label 2 (a box or no annotation) out of every metric here,
  so a 2 is never counted as lesion (:func:`nnunet_mtl.evaluation.evaluate.reference_kind`). Fan et al.'s JSI is
  the IoU; the attention IoU is the IoU of a thresholded lesion map (:func:`dice_iou`).
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
- NSD (normalized surface distance, also "surface Dice"; Nikolov et al. 2021, "Clinically applicable segmentation
  of head and neck anatomy for radiotherapy", J Med Internet Res 23(7):e26151) at tolerance tau: the fraction of the
  boundary pixels of both masks that lie within tau of the other mask's boundary,
  (|{p in S_P: d(p, S_R) <= tau}| + |{r in S_R: d(r, S_P) <= tau}|) / (|S_P| + |S_R|), with the boundaries S and the
  Euclidean distances d exactly as for HD95 (so NSD is 1 when every boundary pixel is within tau of the other
  boundary). Boundary length is the number of boundary pixels, as MONAI's
  ``compute_surface_dice(use_subvoxels=False)``; Nikolov et al.'s reference code (DeepMind's surface-distance) weights
  each boundary element by its surfel length instead, which differs slightly. A distance within a relative 1e-9 of
  tau counts as <= tau, so a boundary exactly tau away is not lost to the rounding of ``distance * spacing``.
  ``nsd_px`` uses a tolerance in pixels (default :data:`DEFAULT_NSD_TOLERANCE_PX` = 2 px: it forgives the one-pixel
  jitter of rasterizing each of the two outlines, and needs no spacing); ``nsd_mm`` a tolerance in mm on the case's
  spacing (default :data:`DEFAULT_NSD_TOLERANCE_MM` = 1 mm: about the lateral resolution of the 7-15 MHz linear
  probes used for breast and thyroid, 10 px at the usual ~0.1 mm/px; 2 mm would let a 6 mm outline of a 10 mm
  lesion score NSD 1). Empty masks: both empty -> 1 (like Dice), exactly one empty -> 0. MONAI returns NaN when
  both are empty (and 0 for one empty).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

# 3x3 cross: the structure scipy (and therefore MONAI) uses by default for a 2D erosion.
_CROSS = generate_binary_structure(2, 1)

DEFAULT_NSD_TOLERANCE_PX = 2.0
DEFAULT_NSD_TOLERANCE_MM = 1.0
# relative slack of the "distance <= tau" test: 3 px * 0.1 mm is 0.30000000000000004 in floating point
_TIE_SLACK = 1e-9

_DEFINITIONS = {
    "dice": "per case 2|P∩R|/(|P|+|R|) on foreground = label > 0; both masks empty -> 1, one empty -> 0",
    "iou": "per case |P∩R|/|P∪R| (Jaccard); both empty -> 1, one empty -> 0",
    "hd95_px": "symmetric HD95 as MONAI HausdorffDistanceMetric(percentile=95): max of the two directed 95th "
               "percentiles (linear interpolation) of Euclidean distances between boundary pixels (mask minus its "
               "3x3-cross erosion), in pixels; both empty -> 0, one empty -> image diagonal hypot(rows, cols)",
    "hd95_mm": "as hd95_px with distances scaled by the case's (spacing_row_mm, spacing_col_mm) from cases.csv; "
               "one empty -> hypot(rows*s_row, cols*s_col); cases without spacing are left out",
}


def _fmt_tol(value: float) -> str:
    return f"{float(value):g}"


def definitions(nsd_tolerance_px: float = DEFAULT_NSD_TOLERANCE_PX,
                nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict:
    """The segmentation entries of summary.json's "definitions", with the NSD tolerances written out."""
    nsd = ("normalized surface distance (surface Dice, Nikolov et al. 2021, J Med Internet Res 23:e26151) at "
           "tolerance tau = {tol}: (boundary pixels of P within tau of R's boundary + boundary pixels of R within "
           "tau of P's boundary) / (all boundary pixels of P and R), boundaries and Euclidean distances as for "
           "hd95, boundary length = pixel count (as MONAI compute_surface_dice, use_subvoxels=False); both empty "
           "-> 1, one empty -> 0 (MONAI: NaN when both are empty)")
    return {**_DEFINITIONS,
            "nsd_px": nsd.format(tol=f"{_fmt_tol(nsd_tolerance_px)} px") + "; in pixels, needs no spacing",
            "nsd_mm": nsd.format(tol=f"{_fmt_tol(nsd_tolerance_mm)} mm") + "; distances in mm on the case's "
                      "(spacing_row_mm, spacing_col_mm) from cases.csv; cases without spacing are left out"}


DEFINITIONS = definitions()


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


def _check_pair(pred, ref, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise ValueError(f"{what} expects two 2D masks of the same shape, got {pred.shape} and {ref.shape}")
    return pred, ref


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """(P's boundary -> R's boundary, R's boundary -> P's boundary) distances of two non-empty bool masks."""
    spacing = (float(spacing[0]), float(spacing[1]))
    return directed_boundary_distances(pred, ref, spacing), directed_boundary_distances(ref, pred, spacing)


def hd95_from_distances(d_pr: np.ndarray, d_rp: np.ndarray) -> float:
    """The larger of the two directed 95th percentiles (numpy's linear interpolation)."""
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def nsd_from_distances(d_pr: np.ndarray, d_rp: np.ndarray, tolerance: float) -> float:
    """Fraction of the boundary pixels of both masks within ``tolerance`` of the other's boundary (Nikolov et al.
    2021), from the two directed distance arrays of :func:`surface_distances`."""
    limit = float(tolerance) * (1.0 + _TIE_SLACK)
    within = int(np.count_nonzero(d_pr <= limit)) + int(np.count_nonzero(d_rp <= limit))
    return within / (d_pr.size + d_rp.size)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric HD95 (MONAI's definition, see the module docstring) of two bool masks, in units of ``spacing``."""
    pred, ref = _check_pair(pred, ref, "hd95")
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return image_diagonal(pred.shape, spacing)
    return hd95_from_distances(*surface_distances(pred, ref, spacing))


def nsd(pred: np.ndarray, ref: np.ndarray, tolerance: float, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Normalized surface distance (surface Dice; Nikolov et al. 2021) of two bool masks at ``tolerance``.

    ``tolerance`` is in the units of ``spacing`` (pixels for the default unit spacing). Both masks empty -> 1.0,
    exactly one empty -> 0.0 (MONAI's ``compute_surface_dice`` gives NaN and 0.0); see the module docstring.
    """
    pred, ref = _check_pair(pred, ref, "nsd")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"the NSD tolerance must be a finite number >= 0, got {tolerance!r}")
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return 1.0
    if has_p != has_r:
        return 0.0
    return nsd_from_distances(*surface_distances(pred, ref, spacing), tolerance)


def case_metrics(pred_label: np.ndarray, ref_label: np.ndarray,
                 spacing_mm: tuple[float, float] | None = None,
                 nsd_tolerance_px: float = DEFAULT_NSD_TOLERANCE_PX,
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict:
    """Dice, IoU, HD95 and NSD in pixels and (when ``spacing_mm`` is known) in mm for one case.

    The boundary distances are computed once per unit (pixels, mm) and give both HD95 and NSD. Also returns
    ``ref_empty`` / ``pred_empty`` flags so a summary can count the cases that hit a convention.
    """
    pred, ref = as_binary_mask(pred_label), as_binary_mask(ref_label)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    dice, iou = dice_iou(pred, ref)
    has_p, has_r = bool(pred.any()), bool(ref.any())
    known = spacing_mm is not None and all(math.isfinite(s) and s > 0 for s in spacing_mm)
    hd_mm = nsd_mm = math.nan
    if has_p and has_r:
        d_px = surface_distances(pred, ref)
        hd_px, nsd_px = hd95_from_distances(*d_px), nsd_from_distances(*d_px, nsd_tolerance_px)
        if known:
            if spacing_mm[0] == spacing_mm[1]:  # isotropic: the same distances, scaled; no second transform
                d_mm = tuple(d * float(spacing_mm[0]) for d in d_px)
            else:
                d_mm = surface_distances(pred, ref, spacing_mm)
            hd_mm, nsd_mm = hd95_from_distances(*d_mm), nsd_from_distances(*d_mm, nsd_tolerance_mm)
    else:  # the empty conventions of the module docstring
        both_empty = not has_p and not has_r
        hd_px, nsd_px = (0.0, 1.0) if both_empty else (image_diagonal(pred.shape), 0.0)
        if known:
            hd_mm, nsd_mm = (0.0, 1.0) if both_empty else (image_diagonal(pred.shape, spacing_mm), 0.0)
    return {"dice": dice, "iou": iou, "hd95_px": hd_px, "hd95_mm": hd_mm, "nsd_px": nsd_px, "nsd_mm": nsd_mm,
            "ref_empty": not has_r, "pred_empty": not has_p}
