"""Partially annotated datasets: the contract with absent masks and boxes (writer, loader, nnU-Net's integrity
check) and ``nnunet_mtl drop-masks`` (fraction, per patient, stratified, deterministic, nothing else changed,
nothing leaked into nnU-Net's preprocessing, refusals)."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import (FULL_LABELS, IGNORE_LABEL, PARTIAL_LABELS, bounding_box, kind_of_label_map,
                                         load_raw_dataset)
from nnunet_mtl.dataset.partial import (PROVENANCE_KEY, REPORT_FILE, choose_kept_patients, default_name, drop_masks,
                                        keep_quotas, patient_classes)
from nnunet_mtl.dataset.writer import RawDatasetWriter
from nnunet_mtl.errors import ContractError, NnunetMtlError
from tests.file_helpers import assert_refused, deny_writes, phantom_world, world_copy

CLASSES = {"benign": 0, "malignant": 1, "normal": 2}


def _label(folder: Path, case: str, split: str = "train") -> np.ndarray:
    return np.array(Image.open(folder / ("labelsTr" if split == "train" else "labelsTs") / f"{case}.png"))


def _lesion(shape=(24, 32), rows=slice(5, 12), cols=slice(8, 20)):
    m = np.zeros(shape, np.uint8)
    m[rows, cols] = 1
    m[7, 21] = 1  # a pixel outside the rectangle: the box is the bounding box of all lesion pixels
    return m


def _rows(folder: Path) -> list[dict]:
    with open(folder / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# --- the writer ---------------------------------------------------------------------------------------------------
def test_writer_stores_none_box_and_lesion_free_box(tmp_path):
    image = np.full((24, 32), 90, np.uint8)
    with RawDatasetWriter(7, "Part", CLASSES, raw_root=tmp_path) as w:
        w.add_case("full", image, _lesion(), split="train", class_name="benign", patient_id="p1")
        w.add_case("none", image, _lesion(), split="train", class_name="benign", patient_id="p2", mask_kind="none")
        w.add_case("nolabel", image, None, split="train", class_name="malignant", patient_id="p3", mask_kind="none")
        w.add_case("box", image, _lesion(), split="train", class_name="malignant", patient_id="p4", mask_kind="box")
        w.add_case("emptybox", image, None, split="train", class_name="normal", patient_id="p5", mask_kind="box")
        w.add_case("t1", image, _lesion(), split="test", class_name="benign", patient_id="p6")
    folder = w.path
    raw = load_raw_dataset(folder)
    assert raw.dataset_json["labels"] == PARTIAL_LABELS
    # the mask column right after the spacing columns; a box around nothing is a full (empty) mask
    assert list(raw.cases.columns[:7]) == ["case_id", "split", "class", "patient_id", "spacing_row_mm",
                                           "spacing_col_mm", "mask"]
    kinds = dict(zip(raw.cases["case_id"], raw.cases["mask"]))
    assert kinds == {"full": "full", "none": "none", "nolabel": "none", "box": "box", "emptybox": "full", "t1": "full"}
    assert set(np.unique(_label(folder, "full"))) == {0, 1}
    assert (_label(folder, "none") == IGNORE_LABEL).all() and (_label(folder, "nolabel") == IGNORE_LABEL).all()
    box = _label(folder, "box")
    r0, r1, c0, c1 = bounding_box(_lesion())
    assert (r0, r1, c0, c1) == (5, 11, 8, 21)
    assert (box[r0:r1 + 1, c0:c1 + 1] == IGNORE_LABEL).all() and box.sum() == IGNORE_LABEL * 7 * 14
    assert not _label(folder, "emptybox").any()
    for case, kind in kinds.items():  # what cases.csv says is what the label file encodes
        assert kind_of_label_map(_label(folder, case, "test" if case == "t1" else "train"), case) == kind


def test_full_dataset_keeps_todays_files(tmp_path):
    with RawDatasetWriter(7, "Full", CLASSES, raw_root=tmp_path) as w:
        w.add_case("a", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="train", class_name="benign",
                   patient_id="p", mask_kind="full")
        w.add_case("b", np.zeros((8, 8), np.uint8), None, split="train", class_name="normal", patient_id="q",
                   mask_kind="box")  # no lesion: stored full, so the dataset stays fully annotated
    assert (w.path / "cases.csv").read_text().splitlines()[0] == \
        "case_id,split,class,patient_id,spacing_row_mm,spacing_col_mm"
    assert json.loads((w.path / "dataset.json").read_text())["labels"] == FULL_LABELS


def test_writer_declares_ignore_label_when_asked_and_keeps_it_when_adding(tmp_path):
    with RawDatasetWriter(7, "Asked", CLASSES, raw_root=tmp_path, partial_labels=True,
                          extra_json={"provenance": {"by": "test"}}) as w:
        w.add_case("a", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="train", class_name="benign",
                   patient_id="p")
    raw = load_raw_dataset(w.path)
    assert raw.dataset_json["labels"] == PARTIAL_LABELS and raw.cases["mask"].tolist() == ["full"]
    with RawDatasetWriter(7, "Asked", CLASSES, raw_root=tmp_path, add_to_existing=True) as w:
        w.add_case("t", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="test", class_name="benign",
                   patient_id="q")
    raw = load_raw_dataset(w.path)
    assert raw.dataset_json["labels"] == PARTIAL_LABELS and raw.dataset_json["provenance"] == {"by": "test"}
    assert raw.cases["mask"].tolist() == ["full", "full"] and "mask" not in raw.cases.columns[7:]
    with pytest.raises(ContractError, match="extra dataset.json key 'labels' is written by the writer"):
        RawDatasetWriter(8, "X", CLASSES, raw_root=tmp_path, extra_json={"labels": {}})


def test_writer_refuses_partial_test_cases_and_unknown_kinds(tmp_path):
    w = RawDatasetWriter(7, "Bad", CLASSES, raw_root=tmp_path)
    with pytest.raises(ContractError, match=r"^case t1: a test case with mask kind 'none'; expected 'full'"):
        w.add_case("t1", np.zeros((8, 8), np.uint8), None, split="test", class_name="benign", patient_id="p",
                   mask_kind="none")
    with pytest.raises(ContractError, match=r"^case c1: mask kind 'boxes' is not one of full, box, none$"):
        w.add_case("c1", np.zeros((8, 8), np.uint8), None, split="train", class_name="benign", patient_id="p",
                   mask_kind="boxes")
    with pytest.raises(ContractError, match="clinical column 'mask' clashes with a contract column"):
        w.add_case("c1", np.zeros((8, 8), np.uint8), None, split="train", class_name="benign", patient_id="p",
                   mask="none")
    assert not any((w.tmp / "imagesTs").iterdir()) and not any((w.tmp / "imagesTr").iterdir())  # nothing written
    w.abort()


def test_writer_needs_a_fully_annotated_lesion(tmp_path):
    """Box and none cases are no evidence of a lesion for nnU-Net's planning: a training set whose lesions are all
    hidden is refused like an all-normal one, and nothing is published."""
    with pytest.raises(ContractError, match="none of the 3 training case.* is a lesion with a full mask"):
        with RawDatasetWriter(7, "Hidden", CLASSES, raw_root=tmp_path) as w:
            w.add_case("a", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="train",
                       class_name="benign", patient_id="p", mask_kind="none")
            w.add_case("b", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="train",
                       class_name="malignant", patient_id="q", mask_kind="box")
            w.add_case("c", np.zeros((8, 8), np.uint8), None, split="train", class_name="normal", patient_id="r")
    assert list(tmp_path.iterdir()) == []


# --- the contract -------------------------------------------------------------------------------------------------
def _partial_folder(tmp_path) -> Path:
    with RawDatasetWriter(9, "C", CLASSES, raw_root=tmp_path) as w:
        w.add_case("a", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="train", class_name="benign",
                   patient_id="p")
        w.add_case("b", np.zeros((8, 8), np.uint8), np.eye(8, dtype=np.uint8), split="train", class_name="benign",
                   patient_id="q", mask_kind="none")
    return w.path


def _edit_json(folder: Path, **changes) -> None:
    js = json.loads((folder / "dataset.json").read_text())
    js.update(changes)
    (folder / "dataset.json").write_text(json.dumps(js))


@pytest.mark.parametrize("labels, needle", [
    (FULL_LABELS, r"cases.csv line 3 \(case b\): mask 'none' but .*dataset.json declares no ignore label; expected "
                  r"\"labels\": \{\"background\": 0, \"lesion\": 1, \"ignore\": 2\}"),
    ({"background": 0, "lesion": 1, "ignore": 3}, r"dataset.json: 'labels' is .*\"ignore\": 3\}; a dataset with the "
                                                  r"ignore label expected exactly"),
    ({"background": 0, "lesion": 1, "cyst": 2, "ignore": 3}, "a dataset with the ignore label expected exactly"),
])
def test_contract_refuses_partial_rows_without_the_ignore_label(tmp_path, labels, needle):
    folder = _partial_folder(tmp_path)
    _edit_json(folder, labels=labels)
    with pytest.raises(ContractError, match=needle) as e:
        load_raw_dataset(folder, check_files=False)
    assert len(str(e.value).splitlines()) == 1


def test_contract_accepts_the_ignore_label_without_partial_rows(tmp_path):
    folder = _partial_folder(tmp_path)
    cases = (folder / "cases.csv").read_text()
    assert "b,train,benign,q,,,none\n" in cases
    cases = cases.replace("b,train,benign,q,,,none", "b,train,benign,q,,,full")
    (folder / "cases.csv").write_text(cases)
    assert load_raw_dataset(folder).dataset_json["labels"] == PARTIAL_LABELS
    (folder / "cases.csv").write_text(cases.replace("b,train,benign,q,,,full", "b,test,benign,q,,,box"))
    with pytest.raises(ContractError, match=r"line 3 \(case b\): a test case has mask 'box'; expected 'full'"):
        load_raw_dataset(folder, check_files=False)


# --- drop-masks: the choice of patients (pure functions) ----------------------------------------------------------
def test_patient_class_is_the_most_frequent_ties_to_the_lower_index():
    got = patient_classes(["a", "a", "a", "b", "b", "c"], ["malignant", "benign", "malignant", "normal", "benign",
                                                           "normal"], CLASSES)
    assert got == {"a": "malignant", "b": "benign", "c": "normal"}


def test_quotas_round_half_up_share_by_largest_remainder_and_keep_one():
    assert keep_quotas({"benign": 4, "malignant": 6, "normal": 2}, 0.25, CLASSES) == \
        {"benign": 1, "malignant": 2, "normal": 0}   # 3 in all: 1 + 1.5 + 0.5, the tie to the lower index
    assert keep_quotas({"benign": 5, "malignant": 5, "normal": 0}, 0.5, CLASSES) == \
        {"benign": 3, "malignant": 2, "normal": 0}   # 2.5 + 2.5: the fifth to the lower index
    assert sum(keep_quotas({"benign": 100, "malignant": 0, "normal": 0}, 0.57, CLASSES).values()) == 57  # exact
    assert keep_quotas({"benign": 3, "malignant": 3, "normal": 3}, 0.01, CLASSES) == \
        {"benign": 1, "malignant": 0, "normal": 0}   # at least one patient
    assert keep_quotas({"benign": 3, "malignant": 1, "normal": 0}, 1, CLASSES) == {"benign": 3, "malignant": 1,
                                                                                   "normal": 0}
    assert default_name("BUSI", 0.25) == "BUSI_masks25" and default_name("BUSI", 0.125) == "BUSI_masks12p5"


def test_choice_is_per_patient_seeded_and_nested():
    train = pd.DataFrame({"patient_id": [f"p{i:02d}" for i in range(20) for _ in range(2)],
                          "class": ["benign" if i < 12 else "malignant" for i in range(20) for _ in range(2)]})
    picks = {keep: choose_kept_patients(train, CLASSES, keep, seed=0) for keep in (0.25, 0.5, 0.75)}
    assert [len(p.kept) for p in picks.values()] == [5, 10, 15]
    assert [p.quotas for p in picks.values()] == [{"benign": 3, "malignant": 2, "normal": 0},
                                                  {"benign": 6, "malignant": 4, "normal": 0},
                                                  {"benign": 9, "malignant": 6, "normal": 0}]
    assert set(picks[0.25].kept) < set(picks[0.5].kept) < set(picks[0.75].kept)  # one order per class and seed
    again = choose_kept_patients(train.iloc[::-1], CLASSES, 0.5, seed=0)          # row order does not matter
    assert again.kept == picks[0.5].kept
    assert choose_kept_patients(train, CLASSES, 0.5, seed=1).kept != picks[0.5].kept
    assert set(picks[0.5].kept) | set(picks[0.5].not_kept) == set(train["patient_id"])


# --- drop-masks: the command --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """nnUNet_raw with a tiny fully annotated phantom, Dataset603_Src: 16 patients x 2 images of 32 px."""
    return phantom_world(tmp_path_factory.mktemp("partial"), 603)


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    return world_copy(template, tmp_path, monkeypatch)


def _source(world) -> Path:
    return world / "nnUNet_raw" / "Dataset603_Src"


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75])
def test_drop_masks_keeps_the_fraction_per_patient_and_per_class(world, capsys, keep):
    assert main(["drop-masks", "-d", "603", "--keep", str(keep), "--into", "613"]) == 0
    out = capsys.readouterr().out
    folder = world / "nnUNet_raw" / f"Dataset613_Src_masks{int(keep * 100)}"
    assert f"wrote {folder}" in out and "annotated" in out and "none" in out
    rows = [r for r in _rows(folder) if r["split"] == "train"]
    patients: dict[str, set] = {}
    for r in rows:
        patients.setdefault(r["patient_id"], set()).add(r["mask"])
    report = json.loads((folder / REPORT_FILE).read_text())
    kept = set(report["kept"])
    assert len(kept) == math.floor(keep * len(patients) + 0.5) == report["kept_patients"]
    for patient, kinds in patients.items():  # all images of a patient share the kind
        lesion_free = all(r["class"] == "normal" for r in rows if r["patient_id"] == patient)
        assert kinds == ({"full"} if patient in kept or lesion_free else {"none"}), patient
    for name, counts in report["by_class"].items():  # stratified: each class keeps about the fraction
        assert abs(counts["kept_patients"] - keep * counts["patients"]) < 1, name
        assert counts["kept_patients"] == len({r["patient_id"] for r in rows if r["class"] == name
                                                and r["patient_id"] in kept})
    for r in rows:
        label = _label(folder, r["case_id"])
        assert kind_of_label_map(label) == r["mask"]
        if r["mask"] == "none":
            assert (label == IGNORE_LABEL).all()
    js = json.loads((folder / "dataset.json").read_text())
    assert js[PROVENANCE_KEY] == {"source": "Dataset603_Src", "keep": keep, "as": "none", "seed": 0,
                                  "kept_patients": len(kept), "patients": len(patients)}


def test_drop_masks_changes_nothing_else(world):
    source = _source(world)
    folder, report = drop_masks("603", 614, keep=0.5, as_kind="box", seed=0)
    assert folder.name == "Dataset614_Src_masks50"
    for sub in ("imagesTr", "imagesTs", "labelsTs"):  # images and test labels byte for byte
        src = sorted(p.name for p in (source / sub).iterdir())
        assert src == sorted(p.name for p in (folder / sub).iterdir()) and src
        assert all(_sha(source / sub / n) == _sha(folder / sub / n) for n in src), sub
    old = pd.read_csv(source / "cases.csv", dtype=str, keep_default_na=False)
    new = pd.read_csv(folder / "cases.csv", dtype=str, keep_default_na=False)
    assert list(new.columns) == list(old.columns[:6]) + ["mask"] + list(old.columns[6:])
    pd.testing.assert_frame_equal(new.drop(columns="mask"), old)
    assert (new.loc[new["split"] == "test", "mask"] == "full").all()
    src_js, js = (json.loads((f / "dataset.json").read_text()) for f in (source, folder))
    assert js.pop(PROVENANCE_KEY)["as"] == "box" and js.pop("labels") == PARTIAL_LABELS
    assert js.pop("name") == "Src_masks50" and src_js.pop("labels") == FULL_LABELS and src_js.pop("name") == "Src"
    assert js == src_js
    for r in new[new["split"] == "train"].to_dict("records"):
        label, src_label = _label(folder, r["case_id"]), _label(source, r["case_id"])
        if r["mask"] == "full":  # kept, or lesion-free: the same file
            assert (_sha(folder / "labelsTr" / f"{r['case_id']}.png")
                    == _sha(source / "labelsTr" / f"{r['case_id']}.png"))
        else:                    # the lesion's bounding box, ignore inside, background outside
            r0, r1, c0, c1 = bounding_box(src_label)
            assert r["mask"] == "box" and (label[r0:r1 + 1, c0:c1 + 1] == IGNORE_LABEL).all()
            assert label.sum() == IGNORE_LABEL * (r1 - r0 + 1) * (c1 - c0 + 1)
    assert report["by_class"]["malignant"]["train_images"]["box"] > 0
    assert load_raw_dataset(folder).dataset_json["labels"] == PARTIAL_LABELS
    assert sorted(p.name for p in (world / "nnUNet_raw").iterdir()) == ["Dataset603_Src", "Dataset614_Src_masks50"]


def test_drop_masks_is_deterministic(world):
    a, _ = drop_masks("603", 621, keep=0.5, seed=0, name="A")
    b, _ = drop_masks("603", 622, keep=0.5, seed=0, name="B")
    c, _ = drop_masks("603", 623, keep=0.5, seed=1, name="C")
    assert (a / "cases.csv").read_bytes() == (b / "cases.csv").read_bytes()
    assert all(_sha(p) == _sha(b / "labelsTr" / p.name) for p in (a / "labelsTr").iterdir())
    assert (a / "cases.csv").read_bytes() != (c / "cases.csv").read_bytes()
    kept = [set(json.loads((f / REPORT_FILE).read_text())["kept"]) for f in (a, c)]
    assert kept[0] != kept[1] and len(kept[0]) == len(kept[1])


def test_drop_masks_overwrite_replaces_the_target(world):
    drop_masks("603", 613, keep=0.25, name="Old")
    folder, _ = drop_masks("603", 613, keep=0.75, overwrite=True)
    assert sorted(p.name for p in (world / "nnUNet_raw").iterdir()) == ["Dataset603_Src", "Dataset613_Src_masks75"]
    assert folder.name == "Dataset613_Src_masks75"


def _make_partial(world, monkeypatch) -> list[str]:
    drop_masks("603", 640, keep=0.5)
    return ["drop-masks", "-d", "640", "--keep", "0.5", "--into", "641"]


REFUSALS = [
    ("unknown-source", lambda w, m: ["drop-masks", "-d", "999", "--keep", "0.5", "--into", "613"],
     "no dataset with id 999"),
    ("source-already-partial", _make_partial, "is already partially annotated"),
    ("keep-0", lambda w, m: ["drop-masks", "-d", "603", "--keep", "0", "--into", "613"],
     "--keep 0.0 is outside (0, 1]"),
    ("keep-above-1", lambda w, m: ["drop-masks", "-d", "603", "--keep", "1.5", "--into", "613"],
     "--keep 1.5 is outside (0, 1]"),
    ("keep-nan", lambda w, m: ["drop-masks", "-d", "603", "--keep", "nan", "--into", "613"], "--keep nan is outside"),
    ("target-exists", lambda w, m: (shutil.copytree(_source(w), w / "nnUNet_raw" / "Dataset613_Other"),
                                    ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613"])[1],
     "Dataset613_Other already exists (dataset id 613); pass --overwrite"),
    ("target-is-source", lambda w, m: ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "603", "--overwrite"],
     "--into 603 is the source dataset Dataset603_Src"),
    ("target-id-out-of-range", lambda w, m: ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "1000"],
     "dataset id 1000 is out of range"),
    ("bad-name", lambda w, m: ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613", "--name", "a b"],
     "dataset name 'a b' is not usable"),
    ("negative-seed", lambda w, m: ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613", "--seed", "-1"],
     "--seed -1 is not a non-negative integer"),
    ("raw-read-only", lambda w, m: (deny_writes(m, w / "nnUNet_raw"),
                                    ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613"])[1],
     "is not writable"),
    ("raw-unset", lambda w, m: (m.delenv("nnUNet_raw"),
                                ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613"])[1],
     "environment variable nnUNet_raw is not set"),
    ("target-path-is-file", lambda w, m: ((w / "nnUNet_raw" / "Dataset613_Src_masks50").write_text("x"),
                                          ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613"])[1],
     "Dataset613_Src_masks50 is a file"),
    ("test-label-missing", lambda w, m: (next((_source(w) / "labelsTs").iterdir()).unlink(),
                                         ["drop-masks", "-d", "603", "--keep", "0.5", "--into", "613"])[1],
     "does not exist; expected a label for test case"),
]


@pytest.mark.parametrize("case_id, setup, needle", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_drop_masks_refusals(world, monkeypatch, capsys, case_id, setup, needle):
    argv = setup(world, monkeypatch)
    assert argv[0] == "drop-masks"
    err = assert_refused(argv, world, capsys)
    assert needle in err, err


def test_drop_masks_error_during_the_work_leaves_nothing(world, monkeypatch):
    """A source label that is not what cases.csv says is found while copying: the temporary folder goes, nothing is
    published."""
    source = _source(world)
    selection = choose_kept_patients(load_raw_dataset(source).cases_in_split("train"), CLASSES, 0.25)
    victim = next(r["case_id"] for r in _rows(source) if r["split"] == "train" and r["class"] != "normal"
                  and r["patient_id"] in selection.not_kept)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(source / "labelsTr" / f"{victim}.png")
    with pytest.raises(NnunetMtlError, match=f"{victim}.png has values \\[7\\]"):
        drop_masks("603", 613, keep=0.25)
    assert sorted(p.name for p in (world / "nnUNet_raw").iterdir()) == ["Dataset603_Src"]


# --- nnU-Net's own planning and preprocessing on drop-masks' datasets ---------------------------------------------
@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """A 64 px phantom (8 patients x 2 images), two partial copies made by drop-masks (--as none, --as box), and one
    nnUNetv2_plan_and_preprocess --verify_dataset_integrity run over both."""
    from tests.e2e_helpers import BIN, nnunet_env, run
    root = tmp_path_factory.mktemp("partial_e2e")
    env = nnunet_env(root)
    run([BIN / "nnunet_mtl", "convert", "synthetic", "-d", "631", "--num-patients", "8", "--images-per-patient", "2",
         "--size", "64", "--seed", "3", "--no-progress"], env)
    run([BIN / "nnunet_mtl", "drop-masks", "-d", "631", "--keep", "0.5", "--into", "632"], env)
    run([BIN / "nnunet_mtl", "drop-masks", "-d", "631", "--keep", "0.5", "--into", "633", "--as", "box"], env)
    result = run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "632", "633", "-c", "2d", "-np", "1", "-npfp", "1",
                  "--verify_dataset_integrity"], env)
    return {"root": root, "log": result.stdout + result.stderr}


def _preprocessed_cases(root: Path, dataset: str):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    raw = next((root / "nnUNet_raw").glob(f"Dataset{dataset}_*"))
    folder = root / "nnUNet_preprocessed" / raw.name / "nnUNetPlans_2d"
    data = infer_dataset_class(str(folder))(str(folder))
    for r in _rows(raw):
        if r["split"] == "train":
            _, seg, _, properties = data.load_case(r["case_id"])
            yield r, np.asarray(seg[:]), properties["class_locations"]


@pytest.mark.e2e
def test_nnunet_verifies_and_preprocesses_partial_datasets_without_leaking(preprocessed):
    assert "verify_dataset_integrity Done" in preprocessed["log"]
    seen = {"full": 0, "none": 0, "box": 0}
    for dataset, hidden in (("632", "none"), ("633", "box")):
        for row, seg, locations in _preprocessed_cases(preprocessed["root"], dataset):
            seen[row["mask"]] += 1
            lesion_locations = len(locations[1])
            if row["mask"] == "full":
                assert lesion_locations > 0 or row["class"] == "normal", row["case_id"]
                assert IGNORE_LABEL not in seg
                continue
            assert row["mask"] == hidden
            assert lesion_locations == 0, row["case_id"]          # nnU-Net was never shown where the lesion is
            assert not (seg == 1).any(), row["case_id"]
            if hidden == "none":
                assert (seg == IGNORE_LABEL).all(), row["case_id"]
                assert all(len(v) == 0 for v in locations.values()), row["case_id"]  # nothing sampled at all
            else:
                assert (seg == IGNORE_LABEL).any() and (seg == 0).any(), row["case_id"]
    assert seen["none"] > 0 and seen["box"] > 0 and seen["full"] > 0
