"""ThyroidXL converter: a fixture tree with the published layout and its quirks (patient id before the first '_',
several images per patient, nodule records in a JSON keyed by patient, an age of 2005, a TIRADS of 7, FNAC as
Bethesda numbers, a patient without a record, a missing mask), both targets, the official split, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.thyroid_xl import (bethesda_category, convert_thyroid_xl, histopathology_class,
                                           tirads_class)
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import NnunetMtlError
from tests.convert_helpers import THYROID_NO_MASK, nnunet_verify, thyroid_opts


def test_value_parsers():
    assert [tirads_class(v) for v in (4, "5", "TR3", "TI-RADS 2", 1.0, 7, "4a", None)] == \
        ["TR4", "TR5", "TR3", "TR2", "TR1", None, None, None]
    assert [bethesda_category(v) for v in ("2", 6, "II", "Bethesda V", "vi", "Benign", "7", "x")] == \
        [2, 6, 2, 5, 6, 2, None, None]
    assert histopathology_class("Papillary thyroid carcinoma") == "malignant"
    assert histopathology_class("Follicular adenoma") == "benign"
    assert histopathology_class("papillary carcinoma in a nodular goitre") is None  # both: not a label
    assert histopathology_class("n/a") is None


def test_thyroid_xl_tirads_official(thyroid_src, tmp_path):
    report = convert_thyroid_xl(thyroid_src, thyroid_opts(), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"TR1": 0, "TR2": 1, "TR3": 2, "TR4": 3, "TR5": 4}
    assert report.added["train"] == {"TR1": 0, "TR2": 0, "TR3": 0, "TR4": 2, "TR5": 1}
    assert report.added["test"] == {"TR1": 0, "TR2": 1, "TR3": 1, "TR4": 0, "TR5": 0}
    cases = raw.cases.set_index("case_id")
    assert cases.at["ThyroidXL_00000058_A73CED93_1", "patient_id"] == "00000058"
    assert cases.at["ThyroidXL_00000058_A73CED93_1", "image_index"] == "1"
    assert cases.at["ThyroidXL_00000101_0BADF00D_0", "age"] == ""  # 2005: reported, left empty
    assert cases.at["ThyroidXL_00000058_2201CE11_0", "sex"] == "F"
    assert cases.at["ThyroidXL_00000101_0BADF00D_0", "histopathology"] == "Papillary thyroid carcinoma"
    assert cases.at["ThyroidXL_00000101_0BADF00D_0", "nodule_records"] == "2"
    assert raw.spacing_mm("ThyroidXL_00000058_2201CE11_0") is None
    assert [(b["case"], b["column"], b["value"]) for b in report.bad_values] == [
        ("patient 00000101", "age", 2005), ("patient 00000300", "TIRADS", 7)]
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "no record in stats/id2info_eng.json" in reasons["ThyroidXL_00000400_DEADBEEF_0"]
    assert "TIRADS 7" in reasons["ThyroidXL_00000300_22222222_0"]
    assert "44444444_1.png does not exist" in reasons[f"ThyroidXL_{THYROID_NO_MASK}"]
    assert any("more than one nodule record" in n for n in report.notes)
    image = np.array(Image.open(report.path / "imagesTs" / "ThyroidXL_00000200_11111111_0_0000.png"))
    label = np.array(Image.open(report.path / "labelsTs" / "ThyroidXL_00000200_11111111_0.png"))
    assert image.ndim == 2 and set(np.unique(label)) == {0, 1}


def test_thyroid_xl_malignancy_from_the_conclusion_code_by_default(thyroid_src, tmp_path):
    """The record's conclusion code (1-2 malignant, 3-4 benign): what public code reading the real files uses and
    what reproduces the thyroid paper's counts (../shared/DESIGN.md)."""
    report = convert_thyroid_xl(thyroid_src, thyroid_opts(), target="malignancy", raw_root=tmp_path / "raw")
    assert report.added["train"] == {"benign": 2, "malignant": 1}  # 00000058 code 3 (x2 images), 00000101 code 1
    # 00000200, 00000300 (code 3, though Bethesda V), 00000500
    assert report.added["test"] == {"benign": 3, "malignant": 0}
    cases = load_raw_dataset(report.path).cases.set_index("case_id")
    assert cases.at["ThyroidXL_00000300_22222222_0", "class"] == "benign"
    assert cases.at["ThyroidXL_00000300_22222222_0", "label_source"] == "conclusion"
    assert cases.at["ThyroidXL_00000300_22222222_0", "bethesda"] == "5"  # the other reading is kept
    assert any("differs from the record's 'conclusion' code (e.g. 00000300); the conclusion code is used" in n
               for n in report.notes)
    assert any("malignant patients (--malignancy-from conclusion): 1 with train images, 0 with test images" in n
               for n in report.notes)


def test_thyroid_xl_a_missing_conclusion_code_skips_the_patient_with_the_reason(thyroid_src, tmp_path):
    info_path = thyroid_src / "stats" / "id2info_eng.json"
    info = json.loads(info_path.read_text())
    info["00000101"]["conclusion"] = 9
    info_path.write_text(json.dumps(info))
    report = convert_thyroid_xl(thyroid_src, thyroid_opts(), target="malignancy", raw_root=tmp_path / "raw")
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "conclusion 9 is not a code 1-4" in reasons["ThyroidXL_00000101_0BADF00D_0"]
    assert report.added["train"] == {"benign": 2, "malignant": 0}


def test_thyroid_xl_malignancy_from_pathology_and_nnunet_verify(thyroid_src, tmp_path):
    report = convert_thyroid_xl(thyroid_src, thyroid_opts(), target="malignancy", malignancy_from="pathology",
                                raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"benign": 0, "malignant": 1}
    assert report.added["train"] == {"benign": 2, "malignant": 1}  # FNAC II x2; histopathology carcinoma
    assert report.added["test"] == {"benign": 1, "malignant": 1}  # histopathology goitre; Bethesda V
    cases = raw.cases.set_index("case_id")
    assert cases.at["ThyroidXL_00000101_0BADF00D_0", "label_source"] == "histopathology"
    assert cases.at["ThyroidXL_00000300_22222222_0", "bethesda"] == "5"
    assert cases.at["ThyroidXL_00000300_22222222_0", "tirads"] == ""  # 7: left empty
    assert "neither Histopathology" in {s["case"]: s["reason"] for s in report.skipped}["ThyroidXL_00000200_11111111_0"]
    assert any("differs from the record's 'conclusion'" in n for n in report.notes)  # 00000300: code 3 vs Bethesda V
    nnunet_verify(report.path)


def test_thyroid_xl_as_train_wrong_folder_and_cli(thyroid_src, tmp_path, monkeypatch, capsys):
    report = convert_thyroid_xl(thyroid_src, thyroid_opts(split="train"), raw_root=tmp_path / "a")
    assert set(load_raw_dataset(report.path).cases["split"]) == {"train"}
    with pytest.raises(NnunetMtlError) as e:
        convert_thyroid_xl(thyroid_src / "train", thyroid_opts(), raw_root=tmp_path / "b")
    assert "\n" not in str(e.value) and "does not look like ThyroidXL" in str(e.value)
    assert "stats/id2info_eng.json" in str(e.value) and not (tmp_path / "b").exists()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "ThyroidXL", str(thyroid_src), "-d", "615", "--no-progress", "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "Dataset615_ThyroidXL" in out and "TR4" in out and "bad clinical values (left empty): 2" in out
    assert load_raw_dataset(tmp_path / "raw" / "Dataset615_ThyroidXL").dataset_json["numTest"] == 2
    (thyroid_src / "stats" / "id2info_eng.json").unlink()
    assert main(["convert", "thyroidxl", str(thyroid_src), "-d", "616", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no stats/id2info_eng.json" in err
