"""The 13 TI-RADS-aligned radiomics targets r(x, Omega) of one image and its ground-truth mask (Sec. 2.2).

pyradiomics computes every feature it defines (2D, force2D; intensities binned into 32 bins over the lesion's
range; distances in pixels, so targets are comparable across scanners with different pixel sizes):

| group | name | definition |
| --- | --- | --- |
| shape | circularity | pyradiomics shape2D Sphericity = 2 sqrt(pi A) / P (1 for a disk) |
| shape | ellipticity | A / (pi/4 * MajorAxisLength * MinorAxisLength): lesion area over the area of the ellipse with the same second moments (1 for an ellipse, lower for lobulated or spiculated outlines) -- ours |
| shape | elongation | pyradiomics shape2D Elongation = sqrt(lambda_minor / lambda_major) |
| shape | aspect_ratio | vertical over horizontal extent of the mask (rows spanned / columns spanned); > 1 = taller than wide -- ours |
| margin | edge_sharpness | mean Gaussian gradient magnitude (sigma 1 px) of the image over the 2-px band across the contour -- ours |
| margin | edge_contrast | (mean of a 3-px ring outside - mean of a 3-px ring inside) / (std of both rings together) -- ours |
| first order | mean, entropy, kurtosis | pyradiomics firstorder Mean, Entropy, Kurtosis |
| GLCM | glcm_contrast, glcm_energy, glcm_correlation, glcm_imc1 | pyradiomics glcm Contrast, JointEnergy, Correlation, Imc1 |

An image without a lesion (empty mask) has no targets: every feature is NaN and the case is left out of the
guidance loss.
"""  # noqa: E501 (the feature table's rows stay one line each)
from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

# name -> (pyradiomics class, pyradiomics feature) for the ones pyradiomics defines
PYRADIOMICS_FEATURES = {
    "circularity": ("shape2D", "Sphericity"),
    "elongation": ("shape2D", "Elongation"),
    "mean": ("firstorder", "Mean"),
    "entropy": ("firstorder", "Entropy"),
    "kurtosis": ("firstorder", "Kurtosis"),
    "glcm_contrast": ("glcm", "Contrast"),
    "glcm_energy": ("glcm", "JointEnergy"),
    "glcm_correlation": ("glcm", "Correlation"),
    "glcm_imc1": ("glcm", "Imc1"),
}
OWN_FEATURES = ("ellipticity", "aspect_ratio", "edge_sharpness", "edge_contrast")
# Salama et al. 2026's 13, grouped as in Sec. 2.2: shape, margin, first order, texture
DEFAULT_FEATURES = ("circularity", "ellipticity", "elongation", "aspect_ratio", "edge_sharpness", "edge_contrast",
                    "mean", "entropy", "kurtosis", "glcm_contrast", "glcm_energy", "glcm_correlation", "glcm_imc1")
ALL_FEATURES = tuple(PYRADIOMICS_FEATURES) + OWN_FEATURES
PYRADIOMICS_SETTINGS = {"force2D": True, "force2Ddimension": 0, "binCount": 32, "label": 1}
RING_WIDTH_PX = 3
EDGE_SIGMA_PX = 1.0


def check_feature_names(names) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in ALL_FEATURES]
    if unknown or not names:
        from nnunet_mtl.errors import NnunetMtlError
        raise NnunetMtlError(f"unknown radiomics feature(s) {', '.join(unknown) or '(none given)'}; "
                             f"expected names from {', '.join(ALL_FEATURES)}")
    return names


def _extractor(features):
    import radiomics
    from radiomics import featureextractor
    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(**PYRADIOMICS_SETTINGS)
    extractor.disableAllFeatures()
    wanted: dict[str, set] = {}
    for name in features:
        if name in PYRADIOMICS_FEATURES:
            cls, feat = PYRADIOMICS_FEATURES[name]
            wanted.setdefault(cls, set()).add(feat)
    if "ellipticity" in features:  # needs the moment axes and the area
        wanted.setdefault("shape2D", set()).update({"MajorAxisLength", "MinorAxisLength", "PixelSurface"})
    if wanted:
        extractor.enableFeaturesByName(**{k: sorted(v) for k, v in wanted.items()})
    return extractor


def pyradiomics_values(image: np.ndarray, mask: np.ndarray, features) -> dict[str, float]:
    """pyradiomics' raw output ('original_<class>_<Feature>' -> value) for a 2D image and binary mask."""
    import SimpleITK as sitk
    extractor = _extractor(features)
    # a single-slice 3D volume + force2D: pyradiomics' 2D shape features work on it
    sitk_image = sitk.GetImageFromArray(np.asarray(image, dtype=np.float32)[None])
    sitk_mask = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8)[None])
    result = extractor.execute(sitk_image, sitk_mask)
    return {k: float(v) for k, v in result.items() if k.startswith("original_")}


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the contour on either side (a 2-px band across the boundary)."""
    return ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)


def aspect_ratio(mask: np.ndarray) -> float:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return float(rows[-1] - rows[0] + 1) / float(cols[-1] - cols[0] + 1)


def edge_sharpness(image: np.ndarray, mask: np.ndarray) -> float:
    gradient = ndimage.gaussian_gradient_magnitude(np.asarray(image, dtype=np.float64), sigma=EDGE_SIGMA_PX)
    return float(gradient[boundary_band(mask)].mean())


def edge_contrast(image: np.ndarray, mask: np.ndarray, width: int = RING_WIDTH_PX) -> float:
    image = np.asarray(image, dtype=np.float64)
    inner = mask & ~ndimage.binary_erosion(mask, iterations=width)
    outer = ndimage.binary_dilation(mask, iterations=width) & ~mask
    if not inner.any() or not outer.any():
        return float("nan")
    spread = np.concatenate([image[inner], image[outer]]).std()
    return float((image[outer].mean() - image[inner].mean()) / (spread + 1e-6))


def radiomics_targets(image: np.ndarray, mask: np.ndarray, features=DEFAULT_FEATURES) -> dict[str, float]:
    """The requested features of one 2D grey image and its mask (any nonzero = lesion); NaN without a lesion."""
    features = check_feature_names(features)
    image = np.asarray(image)
    mask = np.asarray(mask) > 0
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be 2D arrays of one shape")
    if mask.sum() < 2:  # no lesion (or one pixel: no shape, no texture)
        return {name: float("nan") for name in features}
    values: dict[str, float] = {}
    needs_pyradiomics = any(f in PYRADIOMICS_FEATURES or f == "ellipticity" for f in features)
    raw = pyradiomics_values(image, mask, features) if needs_pyradiomics else {}
    for name in features:
        if name in PYRADIOMICS_FEATURES:
            cls, feat = PYRADIOMICS_FEATURES[name]
            values[name] = raw[f"original_{cls}_{feat}"]
        elif name == "ellipticity":
            # area of the equal-moment ellipse: pi * a * b with a, b the semi-axes = MajorAxisLength/2, Minor/2
            ellipse_area = np.pi / 4 * raw["original_shape2D_MajorAxisLength"] * raw["original_shape2D_MinorAxisLength"]
            values[name] = raw["original_shape2D_PixelSurface"] / ellipse_area if ellipse_area > 0 else float("nan")
        elif name == "aspect_ratio":
            values[name] = aspect_ratio(mask)
        elif name == "edge_sharpness":
            values[name] = edge_sharpness(image, mask)
        elif name == "edge_contrast":
            values[name] = edge_contrast(image, mask)
    return values
