"""``nnunet_mtl holdout``: a test set held out inside one source dataset (exact quotas per class, per patient,
deterministic, the source untouched, every file copied unchanged, refusals with nothing written, nnU-Net's
integrity check, drop-masks after holdout)."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.dataset.holdout import (PROVENANCE_KEY, REPORT_FILE, choose_test_patients, holdout, holdout_name,
                                        plan_holdout, write_holdout_dataset)
from nnunet_mtl.dataset.partial import drop_masks
from nnunet_mtl.dataset.writer import RawDatasetWriter
from nnunet_mtl.errors import NnunetMtlError
from tests.file_helpers import assert_refused, deny_writes, phantom_world, snapshot, world_copy

CLASSES = {"benign": 0, "malignant": 1, "normal": 2}


def _rows(folder: Path) -> list[dict]:
    with open(folder / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _train(counts: dict[str, int], images: int = 1) -> pd.DataFrame:
    """Training rows: ``counts[class]`` patients of each class, ``images`` images each."""
    rows = [(f"{c[0]}{i:03d}", c) for c, n in counts.items() for i in range(n) for _ in range(images)]
    return pd.DataFrame(rows, columns=["patient_id", "class"])


# --- the choice of patients (pure functions) --------------------------------------------------------------------
def test_fraction_takes_the_exact_total_shared_by_largest_remainder():
    # BrEaST (benign 154, malignant 98, one patient per image): 15 % is Zhang, Moradi, Saha's 38 test images
    sel = choose_test_patients(_train({"benign": 154, "malignant": 98}), CLASSES, fraction=0.15)
    assert sel.quotas == {"benign": 23, "malignant": 15, "normal": 0}  # 23.1 + 14.7: the 38th to the larger remainder
    assert len(sel.held_out) == 38
    assert sum(sel.class_of_patient[p] == "malignant" for p in sel.held_out) == 15
    # rounded half up in all, at least one
    assert sum(choose_test_patients(_train({"benign": 5, "malignant": 5}), CLASSES, fraction=0.25).quotas.values()) \
        == 3
    assert sum(choose_test_patients(_train({"benign": 5, "malignant": 5}), CLASSES, fraction=0.01).quotas.values()) \
        == 1


def test_per_class_takes_n_of_every_class_normal_included_unless_restricted():
    train = _train({"benign": 50, "malignant": 45, "normal": 20})
    sel = choose_test_patients(train, CLASSES, per_class=10)
    assert sel.quotas == {"benign": 10, "malignant": 10, "normal": 10} and sel.classes == list(CLASSES)
    # Fan et al.: 40 benign + 40 malignant, the normal images stay training
    sel = choose_test_patients(_train({"benign": 430, "malignant": 200, "normal": 130}), CLASSES, per_class=40,
                               classes=["malignant", "benign"])
    assert sel.quotas == {"benign": 40, "malignant": 40, "normal": 0} and sel.classes == ["benign", "malignant"]
    assert not any(sel.class_of_patient[p] == "normal" for p in sel.held_out)
    # a class without training patients gets no quota by default
    assert choose_test_patients(_train({"benign": 5, "malignant": 5}), CLASSES, per_class=2).quotas == \
        {"benign": 2, "malignant": 2, "normal": 0}
    # --fraction restricted to some classes: the fraction of those classes' patients
    sel = choose_test_patients(train, CLASSES, fraction=0.2, classes=["benign", "malignant"])
    assert sel.quotas == {"benign": 10, "malignant": 9, "normal": 0}


def test_choice_is_per_patient_seeded_and_independent_of_row_order():
    train = _train({"benign": 12, "malignant": 8}, images=3)
    a = choose_test_patients(train, CLASSES, fraction=0.25, seed=0)
    assert a.held_out == choose_test_patients(train.iloc[::-1], CLASSES, fraction=0.25, seed=0).held_out
    b = choose_test_patients(train, CLASSES, fraction=0.25, seed=1)
    assert a.held_out != b.held_out and len(a.held_out) == len(b.held_out) == 5
    assert set(a.held_out) < set(choose_test_patients(train, CLASSES, fraction=0.5, seed=0).held_out)
    assert set(a.held_out) <= set(train["patient_id"])


@pytest.mark.parametrize("kwargs, needle", [
    ({"fraction": 0.0}, "--fraction 0.0 is outside (0, 1)"),
    ({"fraction": 1.0}, "--fraction 1.0 is outside (0, 1)"),
    ({"fraction": float("nan")}, "--fraction nan is outside (0, 1)"),
    ({"per_class": 0}, "--per-class 0 is not a positive integer"),
    ({}, "expected exactly one of --fraction F and --per-class N"),
    ({"fraction": 0.5, "per_class": 2}, "expected exactly one of --fraction F and --per-class N"),
    ({"per_class": 5}, "--per-class 5: class 'malignant' has 5 training patient(s) in the source; expected at least 6"),
    ({"per_class": 2, "classes": ["benign", "normal"]}, "class 'normal' has 0 training patient(s)"),
    ({"per_class": 2, "classes": ["cyst"]}, "--classes 'cyst' is not a class of the source; expected some of benign, "
                                            "malignant, normal"),
    ({"fraction": 0.5, "classes": ["normal"]}, "--classes normal: no training patient of the source is of that class"),
    ({"fraction": 0.9, "classes": ["malignant"]}, "--fraction 0.9 would hold out all 5 training patient(s) of class "
                                                  "'malignant'"),
])
def test_choice_refusals(kwargs, needle):
    with pytest.raises(NnunetMtlError) as e:
        choose_test_patients(_train({"benign": 8, "malignant": 5}), CLASSES, **kwargs)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_default_names():
    assert holdout_name("BrEaST", fraction=0.15) == "BrEaST_holdout15"
    assert holdout_name("BUSI", fraction=0.125) == "BUSI_holdout12p5"
    assert holdout_name("BUSI", per_class=40) == "BUSI_holdout40each"


# --- the command --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """nnUNet_raw with a tiny phantom, Dataset651_Src: 16 patients x 2 images of 32 px, 12 patients in training
    (benign 4, malignant 6, normal 2) and 4 in test; and Dataset652_Img, one image per patient (BUSI-like)."""
    root = phantom_world(tmp_path_factory.mktemp("holdout"), 651)
    lesion = np.zeros((8, 8), np.uint8)
    lesion[2:5, 3:6] = 1
    with RawDatasetWriter(652, "Img", CLASSES, raw_root=root / "nnUNet_raw") as w:
        for c, n in (("benign", 7), ("malignant", 5), ("normal", 3)):
            for i in range(n):
                w.add_case(f"{c}_{i:02d}", np.full((8, 8), 40 * i, np.uint8), None if c == "normal" else lesion,
                           split="train", class_name=c, patient_id=f"{c}_{i:02d}")
    return root


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    return world_copy(template, tmp_path, monkeypatch)


def _source(world, name: str = "Dataset651_Src") -> Path:
    return world / "nnUNet_raw" / name


def test_holdout_moves_whole_patients_and_changes_nothing_else(world, capsys):
    source = _source(world)
    before = snapshot(source)
    assert main(["holdout", "-d", "651", "--fraction", "0.25", "--into", "661"]) == 0
    out = capsys.readouterr().out
    folder = world / "nnUNet_raw" / "Dataset661_Src_holdout25"
    assert f"wrote {folder}" in out and "held out 3 of 12 training patients" in out and "patients held out" in out
    assert snapshot(source) == before  # the source is never touched
    report = json.loads((folder / REPORT_FILE).read_text())
    assert report["held_out_patients"] == 3 and report["patients"] == 12 and report["seed"] == 0
    assert {c: v["held_out_patients"] for c, v in report["by_class"].items()} == \
        {"benign": 1, "malignant": 2, "normal": 0}  # 1 + 1.5 + 0.5: the third to the lower index of the two halves
    old, new = _rows(source), _rows(folder)
    assert [r["case_id"] for r in old] == [r["case_id"] for r in new]
    held = set(report["held_out"])
    for o, n in zip(old, new):  # only split changes, and only for the held-out patients' training cases
        moved = o["split"] == "train" and o["patient_id"] in held
        assert n == {**o, "split": "test" if moved else o["split"]}
        assert (n["case_id"] in report["held_out_cases"]) == moved
    assert len(report["held_out_cases"]) == 2 * len(held)  # all images of a patient go together
    for r in new:  # every file byte for byte, in the folders of its new split
        img, lab = ("imagesTr", "labelsTr") if r["split"] == "train" else ("imagesTs", "labelsTs")
        o = next(x for x in old if x["case_id"] == r["case_id"])
        o_img, o_lab = ("imagesTr", "labelsTr") if o["split"] == "train" else ("imagesTs", "labelsTs")
        assert _sha(folder / img / f"{r['case_id']}_0000.png") == _sha(source / o_img / f"{r['case_id']}_0000.png")
        assert _sha(folder / lab / f"{r['case_id']}.png") == _sha(source / o_lab / f"{r['case_id']}.png")
    raw = load_raw_dataset(folder)
    js, src_js = raw.dataset_json, json.loads((source / "dataset.json").read_text())
    assert js["numTraining"] == src_js["numTraining"] - 6 and js["numTest"] == src_js["numTest"] + 6
    assert js.pop(PROVENANCE_KEY) == {"source": "Dataset651_Src", "fraction": 0.25, "per_class": None,
                                      "classes": ["benign", "malignant", "normal"], "seed": 0,
                                      "held_out_patients": 3, "patients": 12}
    for key in ("numTraining", "numTest", "name"):
        js.pop(key), src_js.pop(key)
    assert js == src_js
    assert sorted(p.name for p in (world / "nnUNet_raw").iterdir()) == \
        ["Dataset651_Src", "Dataset652_Img", "Dataset661_Src_holdout25"]


def test_holdout_per_class_per_image_source(world, capsys):
    """Fan et al.'s rule on a BUSI-like source (one patient per image): N images of the classes named."""
    assert main(["holdout", "-d", "652", "--per-class", "3", "--classes", "benign", "malignant", "--into",
                 "662"]) == 0
    out = capsys.readouterr().out
    assert "--per-class 3 of benign, malignant" in out
    folder = world / "nnUNet_raw" / "Dataset662_Img_holdout3each"
    test = [r for r in _rows(folder) if r["split"] == "test"]
    assert sorted(r["class"] for r in test) == ["benign"] * 3 + ["malignant"] * 3
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 15 - 6


def test_holdout_is_deterministic(world):
    a, ra = holdout("651", 671, fraction=0.5, seed=0, name="A")
    b, rb = holdout("651", 672, fraction=0.5, seed=0, name="B")
    c, rc = holdout("651", 673, fraction=0.5, seed=1, name="C")
    assert (a / "cases.csv").read_bytes() == (b / "cases.csv").read_bytes()
    assert sorted(p.name for p in (a / "imagesTs").iterdir()) == sorted(p.name for p in (b / "imagesTs").iterdir())
    assert {k: v for k, v in ra.items() if k != "dataset"} == {k: v for k, v in rb.items() if k != "dataset"}
    assert ra["held_out"] != rc["held_out"] and len(ra["held_out"]) == len(rc["held_out"]) == 6


def test_holdout_overwrite_replaces_the_target(world):
    holdout("651", 661, fraction=0.25, name="Old")
    folder, _ = holdout("651", 661, per_class=1, overwrite=True)
    assert folder.name == "Dataset661_Src_holdout1each"
    assert sorted(p.name for p in (world / "nnUNet_raw").iterdir()) == \
        ["Dataset651_Src", "Dataset652_Img", "Dataset661_Src_holdout1each"]


def test_drop_masks_after_holdout_leaves_the_test_set_full(world):
    folder, report = holdout("651", 661, fraction=0.25)
    partial, _ = drop_masks("661", 663, keep=0.5)
    rows = _rows(partial)
    test = [r for r in rows if r["split"] == "test"]
    assert {r["case_id"] for r in test} >= set(report["held_out_cases"])
    assert all(r["mask"] == "full" for r in test)
    for r in test:  # the held-out masks are the source's, byte for byte
        assert _sha(partial / "labelsTs" / f"{r['case_id']}.png") == _sha(folder / "labelsTs" / f"{r['case_id']}.png")
    assert any(r["mask"] == "none" for r in rows if r["split"] == "train")
    assert json.loads((partial / "dataset.json").read_text())[PROVENANCE_KEY]["source"] == "Dataset651_Src"


def test_error_during_the_work_leaves_nothing(world):
    plan = plan_holdout("651", 661, fraction=0.25)
    case = sorted(r["case_id"] for r in _rows(_source(world)) if r["patient_id"] in plan.selection.held_out)[-1]
    (_source(world) / "imagesTr" / f"{case}_0000.png").unlink()
    with pytest.raises(FileNotFoundError):
        write_holdout_dataset(plan)
    assert sorted(p.name for p in (world / "nnUNet_raw").iterdir()) == ["Dataset651_Src", "Dataset652_Img"]


def _make_partial(world, monkeypatch) -> list[str]:
    drop_masks("651", 640, keep=0.5)
    return ["holdout", "-d", "640", "--fraction", "0.25", "--into", "641"]


def _cmd(*extra):
    return ["holdout", "-d", "651", "--into", "661", *extra]


REFUSALS = [
    ("unknown-source", lambda w, m: ["holdout", "-d", "999", "--fraction", "0.2", "--into", "661"],
     "no dataset with id 999"),
    ("source-partial", _make_partial, "hold out first, then drop-masks the result"),
    ("fraction-0", lambda w, m: _cmd("--fraction", "0"), "--fraction 0.0 is outside (0, 1)"),
    ("fraction-1", lambda w, m: _cmd("--fraction", "1"), "--fraction 1.0 is outside (0, 1)"),
    ("fraction-nan", lambda w, m: _cmd("--fraction", "nan"), "--fraction nan is outside"),
    ("fraction-takes-a-whole-class", lambda w, m: _cmd("--fraction", "0.9"),
     "--fraction 0.9 would hold out all 4 training patient(s) of class 'benign'"),
    ("per-class-0", lambda w, m: _cmd("--per-class", "0"), "--per-class 0 is not a positive integer"),
    ("per-class-too-large", lambda w, m: _cmd("--per-class", "2"),
     "--per-class 2: class 'normal' has 2 training patient(s) in Dataset651_Src; expected at least 3"),
    ("unknown-class", lambda w, m: _cmd("--per-class", "1", "--classes", "benign", "cyst"),
     "--classes 'cyst' is not a class of Dataset651_Src; expected some of benign, malignant, normal"),
    ("target-exists", lambda w, m: (shutil.copytree(_source(w), w / "nnUNet_raw" / "Dataset661_Other"),
                                    _cmd("--fraction", "0.2"))[1],
     "Dataset661_Other already exists (dataset id 661); pass --overwrite"),
    ("target-is-source", lambda w, m: ["holdout", "-d", "651", "--fraction", "0.2", "--into", "651", "--overwrite"],
     "--into 651 is the source dataset Dataset651_Src"),
    ("target-id-out-of-range", lambda w, m: ["holdout", "-d", "651", "--fraction", "0.2", "--into", "1000"],
     "dataset id 1000 is out of range"),
    ("bad-name", lambda w, m: _cmd("--fraction", "0.2", "--name", "a b"), "dataset name 'a b' is not usable"),
    ("negative-seed", lambda w, m: _cmd("--fraction", "0.2", "--seed", "-1"), "--seed -1 is not a non-negative"),
    ("raw-read-only", lambda w, m: (deny_writes(m, w / "nnUNet_raw"), _cmd("--fraction", "0.2"))[1],
     "is not writable"),
    ("raw-unset", lambda w, m: (m.delenv("nnUNet_raw"), _cmd("--fraction", "0.2"))[1],
     "environment variable nnUNet_raw is not set"),
    ("target-path-is-file", lambda w, m: ((w / "nnUNet_raw" / "Dataset661_Src_holdout20").write_text("x"),
                                          _cmd("--fraction", "0.2"))[1], "Dataset661_Src_holdout20 is a file"),
    ("test-label-missing", lambda w, m: (next((_source(w) / "labelsTs").iterdir()).unlink(),
                                         _cmd("--fraction", "0.2"))[1], "does not exist; expected a label for test"),
]


@pytest.mark.parametrize("case_id, setup, needle", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_holdout_refusals(world, monkeypatch, capsys, case_id, setup, needle):
    argv = setup(world, monkeypatch)
    assert argv[0] == "holdout"
    err = assert_refused(argv, world, capsys)
    assert needle in err, err


# --- nnU-Net's own integrity check ----------------------------------------------------------------------------------
@pytest.mark.e2e
def test_nnunet_verifies_holdout_and_drop_masks_after_it(tmp_path):
    """A 32 px phantom (12 patients x 2 images), holdout --fraction 0.25, drop-masks of the result, and one
    nnUNetv2_plan_and_preprocess --verify_dataset_integrity over both."""
    from tests.e2e_helpers import BIN, nnunet_env, run
    env = nnunet_env(tmp_path)
    run([BIN / "nnunet_mtl", "convert", "synthetic", "-d", "531", "--num-patients", "12", "--images-per-patient", "2",
         "--size", "32", "--no-progress"], env)
    run([BIN / "nnunet_mtl", "holdout", "-d", "531", "--fraction", "0.25", "--into", "532"], env)
    run([BIN / "nnunet_mtl", "drop-masks", "-d", "532", "--keep", "0.5", "--into", "533"], env)
    result = run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "532", "533", "-c", "2d", "-np", "1", "-npfp", "1",
                  "--verify_dataset_integrity"], env)
    assert (result.stdout + result.stderr).count("verify_dataset_integrity Done") == 2
    for dataset in ("532", "533"):
        raw = next((tmp_path / "nnUNet_raw").glob(f"Dataset{dataset}_*"))
        pre = tmp_path / "nnUNet_preprocessed" / raw.name / "nnUNetPlans_2d"
        train = {r["case_id"] for r in _rows(raw) if r["split"] == "train"}
        stored = {p.name.split(".")[0] for p in pre.iterdir()}
        assert train <= stored and not stored & {r["case_id"] for r in _rows(raw) if r["split"] == "test"}
