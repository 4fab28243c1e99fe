"""Radiomics targets of a whole dataset, computed in parallel and cached beside the preprocessed data.

The cache is ``nnUNet_preprocessed/DatasetNNN_X/radiomics_targets.csv`` (next to splits_final.json, not inside
nnUNetPlans_2d, whose dataset class expects one file type). Each row keeps a hash of the case's image and mask
files and of the feature settings: a rerun computes only cases that are new or changed.

Partially annotated cases (cases.csv ``mask`` ``none`` or ``box``, :mod:`nnunet_mtl.dataset.contract`) have no
targets: r(x, Omega) of Salama et al. 2026 (Eq. 3) describes the lesion outline Omega, which such a case does not
have. Its label map holds nnU-Net's ignore label (all of a ``none`` image, the inside of a box), and reading that as
a mask would give the radiomics of the whole image or of a rectangle. So they are never computed: their rows hold
NaN targets and ``mask`` says why, :func:`load_targets` returns NaN for them, and :func:`standardization` therefore
uses fully annotated lesion cases only. A cached row is reused only for a case that is ``full`` now and was
``full`` when it was computed.
"""
from __future__ import annotations

import hashlib
import sys
import json
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from nnunet_mtl.atomic import atomic_open
from nnunet_mtl.dataset.contract import IGNORE_LABEL, MASK_KINDS, mask_kind_by_case
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.radiomics.features import (DEFAULT_FEATURES, PYRADIOMICS_SETTINGS, check_feature_names,
                                           radiomics_targets)

CACHE_NAME = "radiomics_targets.csv"
SETTINGS_VERSION = 1  # bump when a feature definition changes: every cached row is then recomputed


def _settings_tag(features) -> str:
    return json.dumps({"features": list(features), "pyradiomics": PYRADIOMICS_SETTINGS, "v": SETTINGS_VERSION},
                      sort_keys=True)


def _case_hash(image_path: Path, label_path: Path, settings: str) -> str:
    h = hashlib.sha1(settings.encode())
    for p in (image_path, label_path):
        h.update(p.read_bytes())
    return h.hexdigest()


def _read_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I") else im)
    except Exception:
        raise NnunetMtlError(f"image {path} is not readable")


def _compute_one(job):
    case_id, image_path, label_path, features = job
    image, mask = _read_grey(Path(image_path)), _read_grey(Path(label_path))
    if image.shape != mask.shape:
        raise NnunetMtlError(f"{image_path} is {image.shape} but its mask {label_path} is {mask.shape}")
    if (mask == IGNORE_LABEL).any():  # only full cases get here: an ignore pixel would be read as lesion
        raise NnunetMtlError(f"{label_path} holds the ignore label ({IGNORE_LABEL}: not annotated) but cases.csv says "
                             f"case {case_id} has mask 'full'; expected 0 / 1, or mask 'none' / 'box' in cases.csv")
    try:
        return case_id, radiomics_targets(image, mask, features), None
    except Exception as e:  # pyradiomics rejects some degenerate masks: that case gets no guidance, not a crash
        return case_id, {f: float("nan") for f in features}, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def compute_dataset_radiomics(raw_folder: Path, cache_csv: Path, features=DEFAULT_FEATURES, num_processes: int = 2,
                              progress: bool = True) -> tuple[pd.DataFrame, int]:
    """Targets for every training case of the raw dataset, and how many were computed now (the rest came from
    cached rows whose inputs did not change)."""
    from nnunet_mtl.dataset.contract import load_raw_dataset
    features = check_feature_names(features)
    raw = load_raw_dataset(raw_folder, check_files=True)
    settings = _settings_tag(features)
    train = raw.cases_in_split("train")
    from nnunet_mtl.outputs import check_output_file
    check_output_file(cache_csv, "radiomics cache")
    cached = {}
    if cache_csv.is_file():
        try:
            old = pd.read_csv(cache_csv, dtype={"case_id": str, "input_hash": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
            old = pd.DataFrame()  # a cache we cannot read is recomputed (it holds nothing else)
            print(f"note: {cache_csv} is not a readable cache; every case is computed again", file=sys.stderr)
        if "case_id" in old.columns and "input_hash" in old.columns and all(f in old.columns for f in features):
            cached = {r["case_id"]: r for _, r in old.iterrows()}
    kinds = mask_kind_by_case(train)
    rows, jobs = [], []
    for case in train["case_id"]:
        image = raw.folder / "imagesTr" / f"{case}_0000.png"
        label = raw.folder / "labelsTr" / f"{case}.png"
        digest = _case_hash(image, label, settings)
        kind = kinds[case]
        if kind != "full":  # no outline: no targets (module docstring), nothing to compute
            rows.append({"case_id": case, "input_hash": digest, "mask": kind})
        elif case in cached and cached[case]["input_hash"] == digest and _cached_kind(cached[case]) == "full":
            rows.append({"case_id": case, "input_hash": digest, "mask": kind,
                         **{f: cached[case][f] for f in features}})
        else:
            jobs.append((case, str(image), str(label), features))
            rows.append({"case_id": case, "input_hash": digest, "mask": kind})
    if jobs:
        from nnunet_mtl.image_files import image_header
        for _, image, label, _ in jobs:  # a file no worker could read is named before the pool starts
            image_header(image)
            image_header(label, "label map")
        results = {}
        with get_context("spawn").Pool(max(1, num_processes)) as pool, \
                tqdm(total=len(jobs), desc="radiomics", unit="case", disable=not progress) as bar:
            for case, values, error in pool.imap_unordered(_compute_one, jobs, chunksize=4):
                results[case] = values
                if error:
                    tqdm.write(f"radiomics: {case} left out of the guidance loss ({error})", file=sys.stderr)
                bar.update()
        for row in rows:
            if row["case_id"] in results:
                row.update(results[row["case_id"]])
    table = pd.DataFrame(rows, columns=["case_id", "input_hash", "mask", *features])
    # has_lesion: the case has targets (a full mask with a lesion pyradiomics accepts)
    table.insert(2, "has_lesion", table[list(features)].notna().all(axis=1).astype(int))
    with atomic_open(cache_csv, newline="") as f:  # two folds started at once may both bring it up to date
        table.to_csv(f, index=False)
    return table, len(jobs)


def _cached_kind(row) -> str:
    """The mask kind a cached row was computed for (a cache from before the ``mask`` column: ``full``)."""
    kind = row.get("mask") if hasattr(row, "get") else None
    return kind if isinstance(kind, str) and kind in MASK_KINDS else "full"


def describe_targets(table: pd.DataFrame) -> str:
    """'N training cases (L with a lesion[, P partially annotated: no targets])' of a table from
    :func:`compute_dataset_radiomics`."""
    partial = int((table["mask"] != "full").sum()) if "mask" in table.columns else 0
    return (f"{len(table)} training cases ({int(table['has_lesion'].sum())} with a lesion"
            + (f", {partial} partially annotated: no targets" if partial else "") + ")")


def load_targets(cache_csv: Path, features) -> dict[str, np.ndarray]:
    """case id -> feature vector (NaN entries for cases without a lesion and for partially annotated cases)."""
    if not cache_csv.is_file():
        raise NnunetMtlError(f"{cache_csv} does not exist; compute it with: nnunet_mtl radiomics -d DATASET")
    table = pd.read_csv(cache_csv, dtype={"case_id": str, "mask": str})
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise NnunetMtlError(f"{cache_csv} lacks feature(s) {', '.join(missing)}; recompute with nnunet_mtl radiomics")
    values = table[list(features)].to_numpy(dtype=np.float64)
    if "mask" in table.columns:  # whatever a row holds, a case without a full mask has no targets
        values[(table["mask"].fillna("full") != "full").to_numpy()] = np.nan
    return dict(zip(table["case_id"], values))


def standardization(targets: dict[str, np.ndarray], train_keys) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each feature over the training fold's cases that have targets (fully annotated lesion cases:
    partially annotated ones are NaN, see :func:`load_targets`) only (no validation leakage); a constant feature
    gets std 1 so it standardizes to 0 instead of NaN."""
    lesions = [targets[k] for k in train_keys if k in targets and np.isfinite(targets[k]).all()]
    if not lesions:
        raise NnunetMtlError("no training case of this fold has a fully annotated lesion; clinical guidance needs "
                             "radiomics targets")
    rows = np.stack(lesions)
    mean, std = rows.mean(0), rows.std(0)
    std[~(std > 1e-12)] = 1.0
    return mean, std
