"""RawDatasetWriter: atomic publication, overwrite / add_to_existing, and the image / mask conversions."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.dataset.writer import (MaskEncodingError, RawDatasetWriter, binarize_mask, format_summary, read_mask,
                                       to_grey_uint8)
from nnunet_mtl.errors import ContractError

CLASSES = {"benign": 0, "malignant": 1}


def _image(value=90, shape=(16, 20)):
    return np.full(shape, value, np.uint8)


def _mask(shape=(16, 20)):
    m = np.zeros(shape, np.uint8)
    m[4:10, 5:12] = 255
    return m


def _write_small(root, dataset_id=7, name="Small", **kw):
    with RawDatasetWriter(dataset_id, name, CLASSES, raw_root=root, description="d", **kw) as w:
        w.add_case("000001", _image(), _mask(), split="train", class_name="benign", patient_id="0001", age=50)
        w.add_case("000002", _image(120), None, split="train", class_name="malignant", patient_id="0002",
                   spacing_mm=(0.1, 0.2), site="left")
    return w


def test_writes_a_valid_dataset(tmp_path):
    w = _write_small(tmp_path)
    folder = tmp_path / "Dataset007_Small"
    assert w.path == folder
    raw = load_raw_dataset(folder)
    js = json.loads((folder / "dataset.json").read_text())
    assert js["numTraining"] == 2 and js["numTest"] == 0 and js["class_labels"] == CLASSES
    assert js["channel_names"] == {"0": "ultrasound"} and js["labels"] == {"background": 0, "lesion": 1}
    assert list(raw.cases.columns) == ["case_id", "split", "class", "patient_id", "spacing_row_mm",
                                       "spacing_col_mm", "age", "site"]
    assert raw.cases["case_id"].tolist() == ["000001", "000002"]
    assert raw.cases["age"].tolist() == ["50", ""] and raw.cases["site"].tolist() == ["", "left"]
    assert raw.spacing_mm("000002") == (0.1, 0.2) and raw.spacing_mm("000001") is None
    label = np.array(Image.open(folder / "labelsTr" / "000001.png"))
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1} and label.sum() == 6 * 7
    assert not np.array(Image.open(folder / "labelsTr" / "000002.png")).any()
    image = Image.open(folder / "imagesTr" / "000002_0000.png")
    assert image.mode == "L" and np.array(image).max() == 120
    assert w.summary() == {"classes": ["benign", "malignant"], "train": {"benign": 1, "malignant": 1},
                           "test": {"benign": 0, "malignant": 0}}
    assert "total" in format_summary(w.summary())
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset007_Small"]  # no temp folder left


def test_exception_inside_with_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="converter crashed"):
        with RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path) as w:
            w.add_case("a", _image(), _mask(), split="train", class_name="benign", patient_id="p")
            raise RuntimeError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_id_and_keeps_it(tmp_path):
    _write_small(tmp_path)
    before = (tmp_path / "Dataset007_Small" / "cases.csv").read_bytes()
    with pytest.raises(ContractError, match="Dataset007_Small already exists .*--overwrite"):
        RawDatasetWriter(7, "OtherName", CLASSES, raw_root=tmp_path)  # same id, another name: still refused
    assert (tmp_path / "Dataset007_Small" / "cases.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset007_Small"]


def test_overwrite_replaces_only_when_complete(tmp_path):
    _write_small(tmp_path)
    # a failing overwrite keeps the old dataset
    with pytest.raises(ValueError):
        with RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path, overwrite=True) as w:
            w.add_case("x", _image(), None, split="train", class_name="benign", patient_id="p")
            raise ValueError("boom")
    assert load_raw_dataset(tmp_path / "Dataset007_Small").cases["case_id"].tolist() == ["000001", "000002"]
    # a successful one (with another name) replaces it
    with RawDatasetWriter(7, "Renamed", CLASSES, raw_root=tmp_path, overwrite=True) as w:
        w.add_case("x", _image(), None, split="train", class_name="benign", patient_id="p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset007_Renamed"]
    assert load_raw_dataset(tmp_path / "Dataset007_Renamed").cases["case_id"].tolist() == ["x"]


def test_add_to_existing_adds_test_split(tmp_path):
    _write_small(tmp_path)
    with RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path, add_to_existing=True) as w:
        w.add_case("t01", _image(), _mask(), split="test", class_name="malignant", patient_id="0009", extra=1)
        with pytest.raises(ContractError, match="case id '000001' is added twice"):
            w.add_case("000001", _image(), None, split="test", class_name="benign", patient_id="0009")
    raw = load_raw_dataset(tmp_path / "Dataset007_Small")
    assert raw.cases["case_id"].tolist() == ["000001", "000002", "t01"]
    assert raw.cases["age"].tolist() == ["50", "", ""] and raw.cases["extra"].tolist() == ["", "", "1"]
    assert raw.spacing_mm("000002") == (0.1, 0.2)
    assert raw.dataset_json["numTraining"] == 2 and raw.dataset_json["numTest"] == 1
    assert (tmp_path / "Dataset007_Small" / "labelsTs" / "t01.png").is_file()
    assert raw.dataset_json["description"] == "d"


def test_add_to_existing_needs_same_classes_and_a_dataset(tmp_path):
    with pytest.raises(ContractError, match="add_to_existing needs exactly one folder Dataset007_"):
        RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path, add_to_existing=True)
    _write_small(tmp_path)
    with pytest.raises(ContractError, match="has class_labels .*expected the same classes"):
        RawDatasetWriter(7, "Small", {"benign": 0, "malignant": 1, "normal": 2}, raw_root=tmp_path,
                         add_to_existing=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset007_Small"]


def test_add_case_errors(tmp_path):
    w = RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path)
    with pytest.raises(ContractError, match=r"case c1: image shape \(16, 20\) and label shape \(20, 16\) differ"):
        w.add_case("c1", _image(), _mask((20, 16)), split="train", class_name="benign", patient_id="p")
    with pytest.raises(ContractError, match="case c1: class 'cyst' is not in class_labels"):
        w.add_case("c1", _image(), None, split="train", class_name="cyst", patient_id="p")
    with pytest.raises(ContractError, match="case c1: split 'val' is not one of"):
        w.add_case("c1", _image(), None, split="val", class_name="benign", patient_id="p")
    with pytest.raises(ContractError, match="not usable as a file name"):
        w.add_case("a/b", _image(), None, split="train", class_name="benign", patient_id="p")
    with pytest.raises(ContractError, match="empty patient_id"):
        w.add_case("c1", _image(), None, split="train", class_name="benign", patient_id=" ")
    with pytest.raises(ContractError, match="clashes with a contract column"):
        w.add_case("c1", _image(), None, split="train", class_name="benign", patient_id="p", split_name=1,
                   **{"class": "x"})
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ContractError, match="no cases were added"):
        with RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


def test_bad_class_labels_rejected(tmp_path):
    with pytest.raises(ContractError, match="class_labels indices"):
        RawDatasetWriter(7, "Small", {"a": 1, "b": 2}, raw_root=tmp_path)


# --- conversions ----------------------------------------------------------------------------------------------
def test_read_mask_names_the_encoding_and_refuses_mixed_ones():
    """The encoding is decided per file; a 0/1 lesion with a stray 255 is refused, never shrunk to one pixel."""
    lesion = np.zeros((20, 30), np.uint8)
    lesion[5:15, 5:20] = 1                                                           # 150 px
    assert read_mask(lesion)[1] == "binary" and read_mask(lesion * 255)[1] == "binary"
    assert read_mask(lesion * 3 + (lesion * 0))[1] == "binary"
    labels = lesion.copy()
    labels[5:10, 5:20] = 2
    assert read_mask(labels)[1] == "labels" and read_mask(labels)[0].sum() == 150
    assert read_mask(np.zeros((3, 3), np.uint8))[1] == "empty"
    for stray in (np.uint8(255), np.uint16(65535)):
        mixed = lesion.astype(stray.dtype)
        mixed[0, 0] = stray
        with pytest.raises(MaskEncodingError, match=r"m.png mixes mask encodings: 150 px of value 1 .* 1 px of"):
            read_mask(mixed, "m.png")
    # a 0/255 mask with a few stray 1s (the other way round) keeps its lesion
    bright = lesion * 255
    bright[0, :3] = 1
    out, encoding = read_mask(bright)
    assert encoding == "intensity" and out.sum() == 150
    # JPEG ringing below half the maximum never outnumbers the lesion it rings around
    buf = io.BytesIO()
    Image.fromarray(np.kron(lesion * 255, np.ones((4, 4), np.uint8))).save(buf, format="JPEG", quality=60)
    out, encoding = read_mask(np.array(Image.open(buf)))
    assert encoding == "intensity" and out.sum() == 150 * 16


def test_binarize_mask_encodings():
    ref = _mask() > 0
    assert np.array_equal(binarize_mask(ref), ref)                                   # bool / 1-bit
    assert np.array_equal(binarize_mask(ref.astype(np.uint8)), ref)                  # 0/1
    assert np.array_equal(binarize_mask(_mask()), ref)                               # 0/255
    assert np.array_equal(binarize_mask(ref.astype(np.uint8) * 2), ref)              # label map, label 2
    rgb = np.zeros(ref.shape + (3,), np.uint8)
    rgb[ref] = (255, 0, 0)                                                           # red annotation
    assert np.array_equal(binarize_mask(rgb), ref)
    rgba = np.full(ref.shape + (4,), 255, np.uint8)                                  # white everywhere ...
    rgba[..., 3] = np.where(ref, 255, 0)                                             # ... opaque only on the lesion
    assert np.array_equal(binarize_mask(rgba), ref)
    rgba_black = np.zeros(ref.shape + (4,), np.uint8)
    rgba_black[..., 3] = 255                                                         # opaque black background
    rgba_black[ref, :3] = 255
    assert np.array_equal(binarize_mask(rgba_black), ref)
    # a JPEG round trip: ringing near edges and non-zero background must not become lesion
    buf = io.BytesIO()
    Image.fromarray(np.kron(_mask(), np.ones((4, 4), np.uint8))).save(buf, format="JPEG", quality=60)
    noisy = np.array(Image.open(buf))
    assert len(np.unique(noisy)) > 2                                                 # really noisy
    assert np.array_equal(binarize_mask(noisy), np.kron(ref, np.ones((4, 4), bool)))
    assert binarize_mask(np.zeros((3, 3))).sum() == 0
    assert binarize_mask(_mask()).dtype == np.uint8


def test_to_grey_uint8():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[0, :, 3] = 255                                                              # top row opaque
    grey = to_grey_uint8(rgba)
    assert grey.dtype == np.uint8 and grey.shape == (2, 3)
    assert grey[0].tolist() == [200, 200, 200] and grey[1].tolist() == [0, 0, 0]     # transparent -> 0
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    assert to_grey_uint8(rgb)[0].tolist() == [76, 150, 29]                          # ITU-R 601 luma
    assert to_grey_uint8(np.array([[0.0, 1.0]])).tolist() == [[0, 255]]             # float in [0, 1]
    assert to_grey_uint8(np.array([[0, 65535]], np.uint16)).tolist() == [[0, 255]]
    assert to_grey_uint8(_image()[..., None]).shape == (16, 20)
    with pytest.raises(ContractError, match="not 2D grey"):
        to_grey_uint8(np.zeros((2, 2, 5)))


def test_rgb_image_is_stored_grey(tmp_path):
    rgb = np.stack([_image(100)] * 3, axis=-1)
    with RawDatasetWriter(7, "Small", CLASSES, raw_root=tmp_path) as w:
        w.add_case("c", rgb, _mask(), split="train", class_name="benign", patient_id="p")
    stored = Image.open(tmp_path / "Dataset007_Small" / "imagesTr" / "c_0000.png")
    assert stored.mode == "L" and np.array(stored).max() == 100
    assert pd.read_csv(tmp_path / "Dataset007_Small" / "cases.csv", dtype=str)["split"].tolist() == ["train"]


def test_remove_case_keeps_order_and_files(tmp_path):
    w = RawDatasetWriter(7, "Rm", CLASSES, raw_root=tmp_path)
    for i in range(5):
        w.add_case(f"c{i}", np.full((8, 8), i * 40, np.uint8), np.eye(8, dtype=np.uint8), split="train",
                   class_name="benign", patient_id=f"p{i}")
    w.remove_case("c1", "train")
    w.remove_case("c9", "train")  # unknown: nothing happens
    assert [r["case_id"] for r in w.rows] == ["c0", "c2", "c3", "c4"] and w.case_ids == {"c0", "c2", "c3", "c4"}
    assert not (w.tmp / "imagesTr" / "c1_0000.png").exists() and not (w.tmp / "labelsTr" / "c1.png").exists()
    w.add_case("c1", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="test", class_name="benign",
               patient_id="p1")  # the id is free again; it comes last
    path = w.finish()
    assert pd.read_csv(path / "cases.csv")["case_id"].tolist() == ["c0", "c2", "c3", "c4", "c1"]


def test_worker_path_stores_mask_kinds(tmp_path):
    """The parallel converters' path (check_case in the main process, write_case_files in a worker, register_case)
    stores partial kinds too: the label map of the kind, the kind the row must say (a box around nothing is full),
    and a test case that is not full is refused before a file is written."""
    from nnunet_mtl.dataset.contract import PARTIAL_LABELS, kind_of_label_map
    from nnunet_mtl.dataset.writer import write_case_files

    lesion = (_mask() > 0).astype(np.uint8)
    w = RawDatasetWriter(7, "Workers", CLASSES, raw_root=tmp_path)
    for case, kind, mask in (("a", "full", lesion), ("b", "none", lesion), ("c", "box", lesion),
                             ("d", "box", np.zeros_like(lesion))):
        row = w.check_case(case, split="train", class_name="benign", patient_id=case, mask_kind=kind)
        stored = write_case_files(w.tmp, case, "train", _image(), mask, row.get("mask", "full"))
        assert stored == ("full" if case == "d" else kind)
        row["mask"] = stored
        w.register_case(row)
    with pytest.raises(ContractError, match="case t: a test case with mask kind 'box'; expected 'full'"):
        write_case_files(w.tmp, "t", "test", _image(), lesion, "box")
    assert not (w.tmp / "imagesTs" / "t_0000.png").exists()
    path = w.finish()
    raw = load_raw_dataset(path)
    assert raw.dataset_json["labels"] == PARTIAL_LABELS
    assert raw.cases["mask"].tolist() == ["full", "none", "box", "full"]
    for case, kind in zip(raw.cases["case_id"], raw.cases["mask"]):
        assert kind_of_label_map(np.array(Image.open(path / "labelsTr" / f"{case}.png"))) == kind


def test_the_writer_is_core_and_imports_no_converter():
    """The raw-dataset writer belongs to the core (nnunet_mtl.dataset): importing it loads nothing of the
    dataset_conversion package, which depends on it and not the other way round."""
    code = ("import sys, nnunet_mtl.dataset.writer; "
            "print([m for m in sys.modules if m.startswith('dataset_conversion')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
