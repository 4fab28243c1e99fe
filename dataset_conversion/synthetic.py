"""A synthetic breast-ultrasound phantom written through the same writer as every real converter.

Each image is a B-mode-like frame: layered tissue (bright skin line, hypoechoic subcutaneous fat, brighter
fibroglandular tissue, striated muscle at depth) -> lesion -> posterior acoustic features -> multiplicative speckle
-> depth attenuation -> display gamma. Lesion morphology follows the BI-RADS descriptors a radiologist uses:

- benign: oval, circumscribed (smooth boundary), parallel to the skin (wider than tall), homogeneous
  hypoechoic interior, posterior enhancement;
- malignant: irregular / spiculated boundary, not parallel (taller than wide), heterogeneous darker interior
  with microcalcification-like bright dots, echogenic halo, posterior shadowing;
- normal: tissue only (all-zero label).

The contrasts are deliberately stronger than in real scans, so that a short CPU training of the multitask
nnU-Net learns both tasks (the demo's purpose); all parameters are drawn per patient, with small per-image
variations, so the images of one patient are near-duplicates like real repeat views.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from nnunet_mtl.dataset.writer import RawDatasetWriter
from nnunet_mtl.errors import NnunetMtlError

CLASS_LABELS = {"benign": 0, "malignant": 1, "normal": 2}
DYNAMIC_RANGE_DB = 40.0  # displayed dynamic range; scanners show ~40-60 dB, the low end gives more contrast
REFERENCE_LEVEL = 4.0  # intensity displayed as white (bright skin speckle peaks saturate, like on a scanner)
FIELD_OF_VIEW_MM = 40.0  # lateral width of a typical linear breast probe; gives the spacing columns real values
BIRADS = {  # plausible category distributions per class, so the clinical column looks like a real one
    "normal": (["1"], [1.0]),
    "benign": (["2", "3", "4A"], [0.3, 0.5, 0.2]),
    "malignant": (["4B", "4C", "5"], [0.2, 0.4, 0.4]),
}


# --- patient-level lesion parameters ------------------------------------------------------------------------
def _patient_params(rng: np.random.Generator, class_name: str, h: int, w: int) -> dict:
    """The lesion of one patient: every image of the patient varies these slightly."""
    age_mean = 58 if class_name == "malignant" else 45  # malignancy is more frequent at older ages
    params = {"class": class_name, "age": int(np.clip(rng.normal(age_mean, 11), 20, 90)),
              "birads": str(rng.choice(BIRADS[class_name][0], p=BIRADS[class_name][1]))}
    if class_name == "normal":
        return params
    if class_name == "benign":
        width = rng.uniform(0.22, 0.36) * w           # diameter 15-35 % of the image width (brief)
        height = width / rng.uniform(1.5, 2.0)        # wider than tall: "parallel" orientation
        harmonics = [(k, rng.uniform(0.0, 0.03), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]  # gentle lobulation
        spikes = []
    else:
        width = rng.uniform(0.15, 0.22) * w
        height = width * rng.uniform(1.35, 1.7)       # taller than wide: "not parallel" orientation
        # several random harmonics = irregular, angular outline; spikes = spiculation
        harmonics = [(k, rng.uniform(0.04, 0.10), rng.uniform(0, 2 * np.pi)) for k in (3, 4, 5, 7)]
        n_spikes = int(rng.integers(6, 11))
        spikes = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.25), rng.uniform(0.3, 0.6))
                  for _ in range(n_spikes)]
    half_h = height / 2 * 1.3  # room for spikes
    cy_lo, cy_hi = 0.22 * h + half_h, 0.72 * h - half_h  # below skin + fat, above the muscle, room for shadows
    params.update(
        cx=rng.uniform(0.3, 0.7) * w,
        cy=rng.uniform(cy_lo, max(cy_lo, cy_hi)),
        a=width / 2, b=height / 2,
        angle=rng.normal(0, np.deg2rad(8)),  # long axis close to the skin line (or to the beam for malignant)
        harmonics=harmonics, spikes=spikes,
        echo=rng.uniform(0.12, 0.18) if class_name == "benign" else rng.uniform(0.06, 0.10),
        n_calc=int(rng.integers(3, 8)) if class_name == "malignant" else 0,
    )
    return params


def _image_params(rng: np.random.Generator, p: dict, h: int, w: int) -> dict:
    """Another view of the same lesion: small shifts of position, size, angle and outline."""
    if p["class"] == "normal":
        return p
    q = dict(p)
    scale = rng.uniform(0.9, 1.1)
    q["cx"] = float(np.clip(p["cx"] + rng.normal(0, 0.04 * w), 0.25 * w, 0.75 * w))
    q["cy"] = p["cy"] + rng.normal(0, 0.02 * h)
    q["a"], q["b"] = p["a"] * scale, p["b"] * scale
    q["angle"] = p["angle"] + rng.normal(0, np.deg2rad(4))
    q["harmonics"] = [(k, amp * rng.uniform(0.85, 1.15), ph + rng.normal(0, 0.15)) for k, amp, ph in p["harmonics"]]
    q["spikes"] = [(ang + rng.normal(0, 0.05), width, length * rng.uniform(0.85, 1.15))
                   for ang, width, length in p["spikes"]]
    return q


# --- rendering ----------------------------------------------------------------------------------------------
def _lesion_mask(q: dict, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Polar-radius shape: ellipse radius x (1 + harmonics + spikes) as a function of the polar angle."""
    dx, dy = xx - q["cx"], yy - q["cy"]
    c, s = math.cos(q["angle"]), math.sin(q["angle"])
    u, v = dx * c + dy * s, -dx * s + dy * c   # u: along the lesion's "width" axis (near horizontal)
    phi = np.arctan2(v, u)
    a, b = q["a"], q["b"]
    radius = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)  # ellipse in polar form
    mod = np.ones_like(phi)
    for k, amp, ph in q["harmonics"]:
        mod += amp * np.cos(k * phi + ph)
    for ang, width, length in q["spikes"]:
        d = np.abs(np.angle(np.exp(1j * (phi - ang))))  # wrapped angular distance
        mod += length * np.clip(1 - d / width, 0, None) ** 2  # squared triangle: thin, pointed spicule
    return np.hypot(u, v) <= radius * mod


def _tissue(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Echogenicity (mean backscatter) of the layers of a breast, before speckle and attenuation."""
    x = np.arange(w)

    def wavy(base: float, amp: float) -> np.ndarray:  # a layer boundary (row per column), gently undulating
        return (base + amp * np.sin(2 * np.pi * x / (w * rng.uniform(0.6, 1.4)) + rng.uniform(0, 2 * np.pi))) * h

    skin_end = wavy(rng.uniform(0.04, 0.06), 0.005)
    fat_end = wavy(rng.uniform(0.14, 0.2), 0.03)
    muscle_start = wavy(rng.uniform(0.8, 0.86), 0.02)
    tissue = np.where(yy < skin_end, 2.0,                      # skin: bright band at the top
                      np.where(yy < fat_end, 0.35,            # subcutaneous fat: hypoechoic
                               np.where(yy < muscle_start, 0.85,  # fibroglandular tissue: echogenic
                                        0.55)))                # pectoralis muscle
    # muscle fibres: bright, nearly horizontal striations
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + 0.05 * xx) / (h * rng.uniform(0.035, 0.05)))
    tissue = tissue * np.where(yy >= muscle_start, 0.7 + 0.6 * stripes ** 4, 1.0)
    # coarse echotexture of glandular tissue: low-frequency multiplicative variation (+-15 %)
    coarse = gaussian_filter(rng.standard_normal((h, w)), sigma=max(w, h) / 20)
    coarse /= coarse.std() + 1e-12
    tissue = tissue * (1 + 0.15 * np.clip(coarse, -2, 2))
    return gaussian_filter(tissue, sigma=0.8)  # the beam's point-spread blurs layer edges


def _speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fully developed speckle: |smoothed complex Gaussian| is Rayleigh-distributed; mean 1.

    Smoothing the complex field before taking the magnitude gives the grain its size; the lateral sigma is larger
    than the axial one because a transducer's lateral resolution is worse than its axial one.
    """
    grain = max(h, w) / 128.0  # the same look at any image size
    sig = (0.8 * grain, 1.5 * grain)
    re = gaussian_filter(rng.standard_normal((h, w)), sig)
    im = gaussian_filter(rng.standard_normal((h, w)), sig)
    amp = np.hypot(re, im)
    return amp / amp.mean()


def _posterior(mask: np.ndarray, strength: float, decay: float, h: int) -> np.ndarray:
    """Multiplicative factor below the lesion: >1 enhancement (fluid-like), <1 shadowing (attenuating)."""
    rows = np.arange(h)[:, None]
    has = mask.any(axis=0)
    bottom = np.where(has, h - 1 - np.argmax(mask[::-1], axis=0), h)  # last lesion row per column
    depth = rows - bottom[None, :]
    lateral = gaussian_filter1d(has.astype(float), sigma=1.5)[None, :]  # soft sides of the acoustic column
    effect = np.where(depth > 0, np.exp(-np.clip(depth, 0, None) / decay), 0.0) * lateral
    return 1 + strength * effect


def render_image(rng: np.random.Generator, q: dict, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 image, uint8 0/1 mask) pair for image parameters ``q``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    echo = _tissue(rng, h, w, yy, xx)
    mask = np.zeros((h, w), dtype=bool)
    calc = np.zeros((h, w))
    if q["class"] != "normal":
        mask = _lesion_mask(q, yy, xx)
        if not mask.any():  # tiny image sizes: keep at least the centre pixel so the case has a lesion
            mask[int(np.clip(q["cy"], 0, h - 1)), int(np.clip(q["cx"], 0, w - 1))] = True
        soft = gaussian_filter(mask.astype(float), 0.7)  # partial-volume edge
        if q["class"] == "benign":
            interior = np.full((h, w), q["echo"])          # homogeneous
            echo = echo * (1 - soft) + interior * soft
            echo = echo * _posterior(mask, 0.6, 0.25 * h, h)   # posterior enhancement, fading with depth
        else:
            het = gaussian_filter(rng.standard_normal((h, w)), sigma=max(h, w) / 64)
            het /= het.std() + 1e-12
            interior = q["echo"] * np.clip(1 + 0.6 * het, 0.3, 2.2)  # heterogeneous, darker
            ring = gaussian_filter(mask.astype(float), max(h, w) / 45) * (1 - soft)
            echo = echo * (1 + 0.9 * ring)                  # echogenic halo around the mass
            echo = echo * (1 - soft) + interior * soft
            echo = echo * _posterior(mask, -0.65, 0.6 * h, h)  # posterior shadowing, persisting with depth
            inner = np.argwhere(mask & (gaussian_filter(mask.astype(float), 1.0) > 0.9))
            if len(inner):
                picks = inner[rng.integers(0, len(inner), q["n_calc"])]
                calc[picks[:, 0], picks[:, 1]] = 1.0
                calc = gaussian_filter(calc, 0.5) * 2.5     # microcalcifications: bright specular dots
    intensity = echo * _speckle(rng, h, w)
    attenuation = np.exp(-rng.uniform(0.8, 1.1) * yy / h)  # exponential loss with depth (~60 % at the bottom)
    intensity = intensity * attenuation + calc * attenuation
    intensity += 0.03 * np.abs(rng.standard_normal((h, w)))  # electronic noise floor in dark regions
    # log compression as on a scanner: DYNAMIC_RANGE_DB decibels below the reference level map onto 0..255; it
    # also tames the speckle (constant ~5.6 dB spread in the log domain) so lesions stand out from the grain
    db = 20 * np.log10(intensity / REFERENCE_LEVEL + 1e-6)
    # scan conversion interpolates the log image: softens the dark pits of near-zero speckle amplitudes
    db = gaussian_filter(db, 0.5 * max(h, w) / 128.0)
    display = np.clip(1 + db / DYNAMIC_RANGE_DB, 0, 1)
    return np.round(display * 255).astype(np.uint8), mask.astype(np.uint8)


# --- dataset ------------------------------------------------------------------------------------------------
def _assign_classes_and_splits(rng, num_patients, normal_fraction, malignant_fraction, test_fraction):
    n_normal = int(round(num_patients * normal_fraction))
    n_malignant = min(int(round(num_patients * malignant_fraction)), num_patients - n_normal)
    classes = np.array(["normal"] * n_normal + ["malignant"] * n_malignant
                       + ["benign"] * (num_patients - n_normal - n_malignant))
    rng.shuffle(classes)
    splits = np.array(["train"] * num_patients, dtype=object)
    for c in CLASS_LABELS:  # stratified by class: the test split has about the same class mix
        members = np.flatnonzero(classes == c)
        n_test = min(int(round(len(members) * test_fraction)), max(len(members) - 1, 0))
        splits[rng.permutation(members)[:n_test]] = "test"
    return classes.tolist(), splits.tolist()


def check_synthetic_arguments(dataset_id: int, name: str, *, num_patients: int, images_per_patient: int, size,
                              normal_fraction: float, malignant_fraction: float, test_fraction: float):
    """The phantom's arguments, checked before anything is written (``nnunet_mtl demo`` calls it before it makes
    its folders); returns (height, width)."""
    from nnunet_mtl.paths import dataset_folder_name
    dataset_folder_name(dataset_id, name)
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(h, w) < 32:
        raise NnunetMtlError(f"synthetic image size {(h, w)} is too small; expected at least 32 pixels per side")
    if num_patients < 1 or images_per_patient < 1:
        raise NnunetMtlError(f"num_patients={num_patients}, images_per_patient={images_per_patient}; "
                             f"expected both >= 1")
    for label, value in (("normal_fraction", normal_fraction), ("malignant_fraction", malignant_fraction)):
        if not 0 <= value <= 1:
            raise NnunetMtlError(f"{label}={value} is not a fraction between 0 and 1")
    if normal_fraction + malignant_fraction > 1:
        raise NnunetMtlError(f"normal_fraction + malignant_fraction = {normal_fraction + malignant_fraction} "
                             f"exceeds 1; benign gets the rest")
    if not 0 <= test_fraction < 1:
        raise NnunetMtlError(f"test_fraction={test_fraction} is not in [0, 1)")
    return h, w


def convert_synthetic(dataset_id: int = 500, name: str = "SyntheticUS", *, num_patients: int = 60,
                      images_per_patient: int = 3, size: int | tuple[int, int] = (128, 128),
                      normal_fraction: float = 0.1, malignant_fraction: float = 0.4, test_fraction: float = 0.25,
                      seed: int = 0, raw_root: Path | None = None, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Write ``DatasetNNN_Name`` with the phantom; returns its folder. Same seed -> byte-identical files."""
    h, w = check_synthetic_arguments(dataset_id, name, num_patients=num_patients,
                                     images_per_patient=images_per_patient, size=size,
                                     normal_fraction=normal_fraction, malignant_fraction=malignant_fraction,
                                     test_fraction=test_fraction)

    from tqdm import tqdm

    # independent streams keyed by (seed, purpose, patient, image): reproducible and order-independent
    classes, splits = _assign_classes_and_splits(np.random.default_rng([seed, 0]), num_patients,
                                                 normal_fraction, malignant_fraction, test_fraction)
    spacing = FIELD_OF_VIEW_MM / w  # square pixels
    description = (f"Synthetic breast-ultrasound phantom (nnunet_mtl): {num_patients} patients x "
                   f"{images_per_patient} images, {h}x{w} px, seed {seed}")
    with RawDatasetWriter(dataset_id, name, CLASS_LABELS, raw_root=raw_root, description=description,
                          overwrite=overwrite) as writer, \
            tqdm(total=num_patients * images_per_patient, desc="synthetic phantom", unit="img",
                 disable=not progress) as bar:
        for p in range(num_patients):
            params = _patient_params(np.random.default_rng([seed, 1, p]), classes[p], h, w)
            patient_id = f"{p + 1:04d}"  # zero-padded like many hospital ids: exercises dtype=str downstream
            for i in range(images_per_patient):
                rng = np.random.default_rng([seed, 2, p, i])
                image, mask = render_image(rng, _image_params(rng, params, h, w), h, w)
                rows, cols = np.nonzero(mask)
                lesion = classes[p] != "normal"
                writer.add_case(
                    f"syn_{patient_id}_{i:02d}", image, mask, split=splits[p], class_name=classes[p],
                    patient_id=patient_id, spacing_mm=(spacing, spacing),
                    age=params["age"], birads=params["birads"],
                    lesion_width_px=int(cols.max() - cols.min() + 1) if lesion else None,
                    lesion_height_px=int(rows.max() - rows.min() + 1) if lesion else None)
                bar.update(1)
    return writer.path
