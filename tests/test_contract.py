"""The raw dataset contract reader: a valid folder loads, every kind of breakage is a one-line ContractError."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from nnunet_mtl.dataset.contract import (REQUIRED_COLUMNS, SPACING_COLUMNS, class_index_by_case, load_raw_dataset,
                                         read_cases_csv, read_class_labels, read_json_object)
from nnunet_mtl.errors import ContractError

CLASSES = {"benign": 0, "malignant": 1}
HEADER = "case_id,split,class,patient_id,spacing_row_mm,spacing_col_mm,birads\n"
ROWS = ["000123,train,benign,007,0.1,0.1,3", "000124,train,malignant,008,,,5", "t1,test,benign,009,0.2,0.25,NA"]


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def make_dataset(folder, rows=ROWS, classes=CLASSES, num_training=None):
    """A tiny hand-written dataset (no writer involved), files matching the csv rows."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        case, split = row.split(",")[:2]
        images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
        _png(folder / images / f"{case}_0000.png", 100)
        _png(folder / labels / f"{case}.png", 0)
    n_train = sum(r.split(",")[1] == "train" for r in rows)
    js = {"channel_names": {"0": "ultrasound"}, "labels": {"background": 0, "lesion": 1},
          "numTraining": n_train if num_training is None else num_training, "numTest": len(rows) - n_train,
          "file_ending": ".png", "name": "T", "description": "", "class_labels": classes}
    (folder / "dataset.json").write_text(json.dumps(js))
    (folder / "cases.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return folder


def test_valid_dataset_loads_and_keeps_strings(tmp_path):
    raw = load_raw_dataset(make_dataset(tmp_path / "D"))
    assert raw.class_names == ["benign", "malignant"]
    assert list(raw.cases.columns[:6]) == list(REQUIRED_COLUMNS + SPACING_COLUMNS)
    # zero-padded ids stay strings, "NA" stays text
    assert raw.cases["case_id"].tolist() == ["000123", "000124", "t1"]
    assert raw.cases["patient_id"].tolist() == ["007", "008", "009"]
    assert raw.cases["birads"].tolist() == ["3", "5", "NA"]
    assert raw.cases_in_split("test")["case_id"].tolist() == ["t1"]
    assert raw.spacing_mm("000123") == (0.1, 0.1)
    assert raw.spacing_mm("000124") is None
    assert raw.spacing_mm("t1") == (0.2, 0.25)
    assert class_index_by_case(raw.cases, raw.class_labels) == {"000123": 0, "000124": 1, "t1": 0}


def test_spacing_columns_are_optional(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("case_id,split,class,patient_id\n01,train,benign,p1\n")
    cases = read_cases_csv(path, CLASSES)
    assert cases["case_id"].tolist() == ["01"]


@pytest.mark.parametrize("js, needle", [
    ({}, "no 'class_labels'"),
    ({"class_labels": ["a", "b"]}, "expected a non-empty object"),
    ({"class_labels": {"a": 0, "b": 2}}, "not 0..1"),
    ({"class_labels": {"a": 0, "b": 0}}, "not 0..1"),
    ({"class_labels": {"a": 0, "b": "1"}}, "integer index"),
    ({"class_labels": {"a": True}}, "integer index"),
])
def test_read_class_labels_errors(js, needle):
    with pytest.raises(ContractError, match=needle) as e:
        read_class_labels(js, source="X/dataset.json")
    assert "X/dataset.json" in str(e.value) and "\n" not in str(e.value)


def test_missing_class_labels_names_file(tmp_path):
    folder = make_dataset(tmp_path / "D")
    js = json.loads((folder / "dataset.json").read_text())
    del js["class_labels"]
    (folder / "dataset.json").write_text(json.dumps(js))
    with pytest.raises(ContractError, match=r"dataset\.json has no 'class_labels'"):
        load_raw_dataset(folder)


def test_missing_and_broken_dataset_json(tmp_path):
    with pytest.raises(ContractError, match="dataset.json does not exist"):
        load_raw_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ContractError, match="not valid JSON"):
        load_raw_dataset(tmp_path)


@pytest.mark.parametrize("rows, needle", [
    (ROWS[:2] + ["t1,test,cyst,009,,,"], r"line 4 \(case t1\): class 'cyst' is not in class_labels"),
    (ROWS[:2] + ["t1,validation,benign,009,,,"], r"line 4 \(case t1\): split 'validation' is not one of"),
    (ROWS + ["000123,test,benign,010,,,"], r"line 5: duplicate case_id '000123'"),
    (ROWS[:2] + ["t1,test,benign,,,,"], r"line 4 \(case t1\): empty patient_id"),
    (ROWS[:2] + [",test,benign,010,,,"], r"line 4 \(case \?\): empty case_id"),
    (ROWS[:2] + ["t1,test,benign,009,-1,0.1,"], r"case t1\): spacing_row_mm '-1' is not a positive number"),
    (ROWS[:2] + ["t1,test,benign,009,0.1,abc,"], r"spacing_col_mm 'abc'"),
])
def test_cases_csv_errors(tmp_path, rows, needle):
    path = tmp_path / "cases.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    with pytest.raises(ContractError, match=needle) as e:
        read_cases_csv(path, CLASSES)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_cases_csv_missing_file_and_columns(tmp_path):
    with pytest.raises(ContractError, match="cases.csv does not exist"):
        read_cases_csv(tmp_path / "cases.csv", CLASSES)
    (tmp_path / "cases.csv").write_text("case_id,class\n1,benign\n")
    with pytest.raises(ContractError, match="lacks column.*split, patient_id"):
        read_cases_csv(tmp_path / "cases.csv", CLASSES)


def test_cases_csv_without_class_labels_skips_only_the_class_check(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text(HEADER + "\n".join(ROWS[:2] + ["t1,test,cyst,009,0.2,0.25,"]) + "\n")
    cases = read_cases_csv(path)
    assert cases["class"].tolist() == ["benign", "malignant", "cyst"]
    assert cases["case_id"].tolist() == ["000123", "000124", "t1"] and math.isnan(cases["spacing_col_mm"][1])
    path.write_text(HEADER + "\n".join(ROWS[:2] + ["t1,test,cyst,009,0,0.25,"]) + "\n")
    with pytest.raises(ContractError, match=r"line 4 \(case t1\): spacing_row_mm '0'"):
        read_cases_csv(path)


def test_read_json_object(tmp_path):
    path = tmp_path / "dataset.json"
    with pytest.raises(ContractError, match="dataset.json does not exist; expected nnU-Net's dataset.json"):
        read_json_object(path)
    path.write_text("[1, 2]")
    with pytest.raises(ContractError, match="is not a JSON object; expected a summary") as e:
        read_json_object(path, "a summary")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    path.write_text(json.dumps({"class_labels": CLASSES}))
    assert read_json_object(path) == {"class_labels": CLASSES}


def test_spacing_parsed_as_float(tmp_path):
    cases = read_cases_csv(make_dataset(tmp_path / "D") / "cases.csv", CLASSES)
    assert cases["spacing_row_mm"].dtype == float and math.isnan(cases["spacing_row_mm"][1])


def test_case_without_a_row(tmp_path):
    folder = make_dataset(tmp_path / "D")
    _png(folder / "imagesTr" / "extra_0000.png")
    _png(folder / "labelsTr" / "extra.png")
    with pytest.raises(ContractError, match=r"case without a row: imagesTr/extra_0000\.png"):
        load_raw_dataset(folder)
    assert load_raw_dataset(folder, check_files=False).cases.shape[0] == 3  # files are not looked at


def test_row_without_a_case(tmp_path):
    folder = make_dataset(tmp_path / "D")
    (folder / "imagesTs" / "t1_0000.png").unlink()
    with pytest.raises(ContractError, match=r"row without a case: .*cases\.csv lists t1 \(test\)"):
        load_raw_dataset(folder)


def test_image_in_wrong_split_folder(tmp_path):
    folder = make_dataset(tmp_path / "D")
    (folder / "imagesTs" / "t1_0000.png").rename(folder / "imagesTr" / "t1_0000.png")
    with pytest.raises(ContractError, match=r"case t1 is in imagesTr but .* says split 'test'"):
        load_raw_dataset(folder)


def test_training_label_missing_and_stray_label(tmp_path):
    folder = make_dataset(tmp_path / "D")
    (folder / "labelsTr" / "000124.png").unlink()
    with pytest.raises(ContractError, match=r"labelsTr/000124\.png does not exist"):
        load_raw_dataset(folder)
    _png(folder / "labelsTr" / "000124.png")
    _png(folder / "labelsTs" / "ghost.png")
    with pytest.raises(ContractError, match=r"labelsTs/ghost\.png has no image"):
        load_raw_dataset(folder)


def test_num_training_mismatch(tmp_path):
    folder = make_dataset(tmp_path / "D", num_training=5)
    with pytest.raises(ContractError, match="numTraining is 5 but .* has 2 cases"):
        load_raw_dataset(folder)


def test_multichannel_file_rejected(tmp_path):
    folder = make_dataset(tmp_path / "D")
    _png(folder / "imagesTr" / "000123_0001.png")
    with pytest.raises(ContractError, match=r"000123_0001\.png is not named <case>_0000\.png"):
        load_raw_dataset(folder)
