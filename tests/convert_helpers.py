"""Helpers shared by the converter tests (not a test module): nnU-Net's dataset check and reading what a
conversion wrote."""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
from PIL import Image

from nnunet_mtl.dataset.contract import load_raw_dataset


def nnunet_verify(folder) -> None:
    """What ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` runs, on a converted folder. Its worker
    pool is forked instead of spawned: a spawned worker imports torch again (~5 s here), the checks are the same."""
    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    fork = multiprocessing.get_context("fork")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vdi.multiprocessing, "get_context", lambda method=None: fork)
        vdi.verify_dataset_integrity(str(folder), num_processes=1)


def converted(report):
    """(the raw dataset a conversion wrote, its cases.csv indexed by case id)."""
    raw = load_raw_dataset(report.path)
    return raw, raw.cases.set_index("case_id")


def case_arrays(raw, case_id) -> tuple[np.ndarray, np.ndarray]:
    """A case's stored (image, label map), from imagesTr/labelsTr or imagesTs/labelsTs by its split."""
    split = raw.cases.set_index("case_id").at[case_id, "split"]
    images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    return (np.array(Image.open(raw.folder / images / f"{case_id}_0000.png")),
            np.array(Image.open(raw.folder / labels / f"{case_id}.png")))


def case_label(raw, case_id) -> np.ndarray:
    """A case's stored label map."""
    return case_arrays(raw, case_id)[1]
