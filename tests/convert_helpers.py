"""Helpers shared by the converter tests (not a test module): their ConvertOptions, nnU-Net's dataset check, reading
what a conversion wrote, and a ThyroidXL source tree (tests/conftest.py's ``thyroid_src`` fixture)."""
from __future__ import annotations

import json
import multiprocessing
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.options import ConvertOptions
from nnunet_mtl.dataset.contract import load_raw_dataset


def convert_options(dataset_id, name, **kw) -> ConvertOptions:
    """The ConvertOptions of a converter test: dataset ``dataset_id`` named ``name``, one process, no progress bar;
    ``kw`` sets any other option or overrides these."""
    return ConvertOptions(**{"dataset_id": dataset_id, "name": name, "num_processes": 1, "progress": False, **kw})


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


# ------------------------------------------------------------------------------------------------ ThyroidXL
thyroid_opts = partial(convert_options, dataset_id=605, name="ThyroidXL", split="official")


def _nodule(tirads, fnac, histo=None, conclusion=None):
    return {"Position": "Left lobe", "Width": 12.0, "Height": 9.0, "Depth": None, "TIRADS": tirads, "FNAC": fnac,
            "Conclusion": conclusion, "Histopathology": histo}


# patient -> (split, image suffixes, record or None)
THYROID_PATIENTS = {
    "00000058": ("train", ["2201CE11_0", "A73CED93_1"],
                 {"age": 60, "gender": 2, "conclusion": 3, "nodule_1": _nodule(4, "2", None, "Benign (FNAC) - 3"),
                  "nodule_2": None}),
    "00000101": ("train", ["0BADF00D_0"],
                 {"age": 2005, "gender": 1, "conclusion": 1,
                  "nodule_1": _nodule("5", "6", "Papillary thyroid carcinoma"), "nodule_2": _nodule(3, "2")}),
    "00000400": ("train", ["DEADBEEF_0"], None),  # an image without a record
    "00000200": ("test", ["11111111_0"], {"age": 45, "gender": 2, "conclusion": 3, "nodule_1": _nodule(3, "3")}),
    "00000300": ("test", ["22222222_0"], {"age": 51, "gender": 2, "conclusion": 3, "nodule_1": _nodule(7, "V")}),
    "00000500": ("test", ["33333333_0", "44444444_1"],
                 {"age": 38, "gender": 2, "conclusion": 4, "nodule_1": _nodule(2, "II", "Nodular goiter")}),
}
THYROID_NO_MASK = "00000500_44444444_1"  # the image of THYROID_PATIENTS without a mask


def write_thyroid_xl(src: Path) -> Path:
    """A ThyroidXL source tree at ``src`` with the published layout and its quirks: train/ and test/ with images/
    (32 px, some RGB) and masks/ (none for THYROID_NO_MASK), published extras, stats/id2info_eng.json with the
    records of THYROID_PATIENTS. Returns ``src``."""
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (src / split / sub).mkdir(parents=True)
    (src / "train" / "labels_orig").mkdir()  # published extras: ignored
    (src / "stats").mkdir()
    seed = 0
    for pid, (split, suffixes, _) in THYROID_PATIENTS.items():
        for suffix in suffixes:
            seed += 1
            name = f"{pid}_{suffix}.png"
            grey = np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)
            # some images RGB, as exported
            Image.fromarray(np.dstack([grey] * 3) if seed % 2 else grey).save(src / split / "images" / name)
            if name[:-4] != THYROID_NO_MASK:
                mask = np.zeros((32, 32), np.uint8)
                mask[8:8 + seed, 10:20] = 255
                Image.fromarray(mask).save(src / split / "masks" / name)
    info = {pid: rec for pid, (_, _, rec) in THYROID_PATIENTS.items() if rec is not None}
    (src / "stats" / "id2info_eng.json").write_text(json.dumps(info, indent=1))
    return src
