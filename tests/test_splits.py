"""Patient-grouped, class-stratified k-fold splits."""
import json

import numpy as np
import pytest

from nnunet_mtl.dataset.splits import check_splits_grouped, grouped_stratified_splits, write_splits
from nnunet_mtl.errors import NnunetMtlError


def cohort(n_patients=30, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    cases, patients, classes = [], [], []
    for p in range(n_patients):
        cls = ["benign", "malignant", "normal"][rng.choice(3, p=[0.5, 0.35, 0.15])]
        for k in range(rng.integers(1, per_patient + 1)):
            cases.append(f"case_{p:03d}_{k}")
            patients.append(f"P{p:03d}")
            classes.append(cls)
    return cases, patients, classes


@pytest.mark.parametrize("k", [3, 5])
def test_no_patient_on_both_sides_and_every_case_validated_once(k):
    cases, patients, classes = cohort()
    splits = grouped_stratified_splits(cases, patients, classes, num_folds=k)
    assert len(splits) == k
    patient_of = dict(zip(cases, patients))
    val_all = [c for s in splits for c in s["val"]]
    assert sorted(val_all) == sorted(cases)  # each case validated exactly once
    for s in splits:
        assert not {patient_of[c] for c in s["train"]} & {patient_of[c] for c in s["val"]}
        assert set(s["train"]) | set(s["val"]) == set(cases)


def test_stratified_by_class():
    cases, patients, classes = cohort(n_patients=60)
    splits = grouped_stratified_splits(cases, patients, classes, num_folds=3)
    class_of = dict(zip(cases, classes))
    overall = np.mean([c == "malignant" for c in classes])
    for s in splits:
        frac = np.mean([class_of[c] == "malignant" for c in s["val"]])
        assert abs(frac - overall) < 0.15


def test_deterministic_and_order_independent():
    cases, patients, classes = cohort()
    a = grouped_stratified_splits(cases, patients, classes, num_folds=5, seed=1)
    perm = np.random.default_rng(0).permutation(len(cases))
    b = grouped_stratified_splits([cases[i] for i in perm], [patients[i] for i in perm], [classes[i] for i in perm],
                                  num_folds=5, seed=1)
    assert a == b


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(NnunetMtlError, match="at least 5 patients"):
        grouped_stratified_splits(["a", "b", "c"], ["p1", "p1", "p2"], ["x", "y", "x"], num_folds=5)


def test_leak_detected():
    with pytest.raises(NnunetMtlError, match="P1"):
        check_splits_grouped([{"train": ["a"], "val": ["b"]}], {"a": "P1", "b": "P1"})


def test_written_in_nnunet_format(tmp_path):
    cases, patients, classes = cohort()
    splits = grouped_stratified_splits(cases, patients, classes)
    write_splits(splits, tmp_path / "splits_final.json")
    loaded = json.loads((tmp_path / "splits_final.json").read_text())
    assert loaded == splits and set(loaded[0]) == {"train", "val"}


def test_holdout_85_15_like_the_breast_paper():
    """BrEaST: 252 patients of one image (154 benign, 98 malignant): 38 for validation, stratified."""
    from nnunet_mtl.dataset.splits import grouped_stratified_holdout
    cases = [f"c{i:03d}" for i in range(252)]
    classes = ["benign"] * 154 + ["malignant"] * 98
    (split,) = grouped_stratified_holdout(cases, cases, classes, fraction=0.15)
    assert len(split["val"]) == 38 and len(split["train"]) == 214
    val_malignant = sum(classes[cases.index(c)] == "malignant" for c in split["val"])
    assert val_malignant in (14, 15)  # 38 * 98 / 252 = 14.8
    assert grouped_stratified_holdout(cases, cases, classes, fraction=0.15) == [split]  # seeded


def test_holdout_keeps_patients_whole_and_checks_its_fraction():
    from nnunet_mtl.dataset.splits import grouped_stratified_holdout
    cases, patients, classes = cohort()
    (split,) = grouped_stratified_holdout(cases, patients, classes, fraction=0.2)
    patient_of = dict(zip(cases, patients))
    assert not {patient_of[c] for c in split["train"]} & {patient_of[c] for c in split["val"]}
    assert len({patient_of[c] for c in split["val"]}) == 6  # 20 % of 30 patients
    for bad in (0, 1, 1.5):
        with pytest.raises(NnunetMtlError, match="must lie between 0 and 1"):
            grouped_stratified_holdout(cases, patients, classes, fraction=bad)


def test_split_command_writes_a_holdout_fold(tmp_path, monkeypatch, capsys):
    from dataset_conversion.synthetic import convert_synthetic
    from nnunet_mtl.cli.main import main
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    convert_synthetic(520, num_patients=20, images_per_patient=1, size=32, raw_root=tmp_path / "raw", progress=False)
    assert main(["split", "-d", "520", "--holdout", "0.15"]) == 0
    splits = json.loads(next((tmp_path / "pre").glob("Dataset520_*/splits_final.json")).read_text())
    assert len(splits) == 1 and len(splits[0]["val"]) == 2  # 15 % of the 15 training patients
    with pytest.raises(SystemExit):  # argparse: -k and --holdout exclude each other
        main(["split", "-d", "520", "--holdout", "0.15", "-k", "3", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err
    # --repeats R: R hold-out splits, seeds SEED..SEED+R-1, as folds 0..R-1 (repeated runs on other patients)
    assert main(["split", "-d", "520", "--holdout", "0.15", "--repeats", "3", "--seed", "4", "--overwrite"]) == 0
    repeated = json.loads(next((tmp_path / "pre").glob("Dataset520_*/splits_final.json")).read_text())
    from nnunet_mtl.dataset.contract import load_raw_dataset
    train = load_raw_dataset(next((tmp_path / "raw").glob("Dataset520_*"))).cases_in_split("train")
    from nnunet_mtl.dataset.splits import grouped_stratified_holdout
    assert repeated == [grouped_stratified_holdout(train["case_id"].tolist(), train["patient_id"].tolist(),
                                                   train["class"].tolist(), fraction=0.15, seed=4 + r)[0]
                        for r in range(3)]
    assert len({tuple(f["val"]) for f in repeated}) > 1  # the repeats validate on different patients
    for bad, needle in ((["--repeats", "0", "--holdout", "0.15"], "expected at least 1"),
                        (["--repeats", "2"], "needs --holdout")):
        assert main(["split", "-d", "520", *bad, "--overwrite"]) != 0
        assert needle in capsys.readouterr().err


@pytest.mark.parametrize("text, needle", [
    ('[{"train": ["a"], "val": ', "is not readable JSON"),                      # truncated
    ("", "is not readable JSON"),                                              # empty file
    ('{"train": ["a"], "val": ["b"]}', "is not a non-empty JSON list"),        # not a list
    ('[{"train": ["a"]}]', "fold 0 is not an object with 'train' and 'val' lists"),
    ('[{"train": ["a"], "val": []}]', "fold 0 has no validation cases"),
    ('[{"train": ["a", 3], "val": ["b"]}]', "holds 3; expected case ids"),
    ('[{"train": ["a"], "val": ["b"]}, {"train": ["a", "zz"], "val": ["b"]}]', "fold 1 'train' names 1 case(s) "
                                                                               "that are not in the preprocessed"),
])
def test_read_splits_refuses_malformed_files_with_one_line(tmp_path, text, needle):
    """What nnUNetv2_train with our trainers reads before training (it raised JSONDecodeError, KeyError, or trained
    on cases that do not exist until a data loader worker died)."""
    from nnunet_mtl.dataset.splits import read_splits
    path = tmp_path / "splits_final.json"
    path.write_text(text)
    with pytest.raises(NnunetMtlError) as e:
        read_splits(path, ["a", "b"])
    assert needle in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)
    path.write_text('[{"train": ["a"], "val": ["b"]}]')
    assert read_splits(path, ["a", "b"]) == [{"train": ["a"], "val": ["b"]}]


@pytest.fixture
def phantom_split_env(tmp_path, monkeypatch):
    """A synthetic raw dataset (20 patients, 2 images each) and its training cases."""
    from dataset_conversion.synthetic import convert_synthetic
    from nnunet_mtl.dataset.contract import load_raw_dataset
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    convert_synthetic(521, num_patients=20, images_per_patient=2, size=32, raw_root=tmp_path / "raw", progress=False)
    raw = load_raw_dataset(next((tmp_path / "raw").glob("Dataset521_*")))
    return tmp_path, raw.cases_in_split("train"), raw.cases_in_split("test")


def test_split_from_a_patient_csv_and_from_nnunets_json(phantom_split_env, capsys):
    """--from: a given split, a CSV by patient (listed patients validate in their fold, the rest train in all) or
    nnU-Net's own JSON; both become the same splits_final.json, and a patient stays on one side."""
    from nnunet_mtl.cli.main import main
    tmp_path, train, _ = phantom_split_env
    patients = sorted(train["patient_id"].unique())
    csv = tmp_path / "paper_split.csv"
    csv.write_text("patient,fold\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(patients[:6])))
    # the patients not listed would train in every fold and never be validated: refused unless asked
    assert main(["split", "-d", "521", "--from", str(csv)]) == 2
    err = capsys.readouterr().err
    left = len(patients) - 6
    assert f"does not list {left} patient(s) of the training cases ({', '.join(patients[6:11])} and {left - 5} more)" \
        in err
    assert "--unlisted train" in err and not list((tmp_path / "pre").glob("Dataset521_*/splits_final.json"))
    assert main(["split", "-d", "521", "--from", str(csv), "--unlisted", "train"]) == 0
    target = next((tmp_path / "pre").glob("Dataset521_*/splits_final.json"))
    splits = json.loads(target.read_text())
    assert len(splits) == 2
    by_patient = dict(zip(train["case_id"], train["patient_id"]))
    assert {by_patient[c] for c in splits[0]["val"]} == set(patients[:6:2])
    assert len(splits[0]["val"]) == 6 and len(splits[0]["train"]) == len(train) - 6  # 2 images per patient
    assert "fold 1: train" in capsys.readouterr().out
    given = tmp_path / "given.json"
    given.write_text(json.dumps(splits))
    assert main(["split", "-d", "521", "--from", str(given), "--overwrite"]) == 0
    assert json.loads(target.read_text()) == splits


@pytest.mark.parametrize("name, text, needle", [
    ("s.csv", "patient,fold\nNOPE,0\n", "names 1 patient(s) that are not training cases of the dataset (e.g. NOPE)"),
    ("s.csv", "who,fold\nx,0\n", "has columns who, fold; expected fold and one of patient, case"),
    ("s.csv", "patient,fold\n{p0},0\n{p1},2\n", "fold 1 has no patient; expected folds 0..2"),
    ("s.csv", "patient,fold\n{p0},0\n{p0},1\n", "is in folds 0 and 1; expected one validation fold per patient"),
    ("s.csv", "patient,fold\n{p0},x\n", "line 2: patient '{p0}', fold 'x'; expected an id and a fold"),
    ("s.csv", "case,fold\n{c0},0\n", "does not list {left} case(s) of the training cases"),
    ("s.json", '[{{"train": ["{c0}"], "val": ["{t0}"]}}]', "fold 0 names {t0}, a test case"),
    ("s.txt", "x", "expected a .json or .csv file"),
])
def test_a_bad_split_file_is_one_line_and_writes_nothing(phantom_split_env, capsys, name, text, needle):
    from nnunet_mtl.cli.main import main
    tmp_path, train, test = phantom_split_env
    ids = {"p0": sorted(train["patient_id"])[0], "p1": sorted(train["patient_id"])[2],
           "c0": sorted(train["case_id"])[0], "t0": sorted(test["case_id"])[0], "left": len(train) - 1}
    path = tmp_path / name
    path.write_text(text.format(**ids))
    assert main(["split", "-d", "521", "--from", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle.format(**ids) in err, err
    assert not list((tmp_path / "pre").glob("Dataset521_*/splits_final.json"))


def test_a_patient_split_across_sides_is_refused_even_when_unlisted_cases_train(phantom_split_env, capsys):
    """A case CSV that validates one image of a patient while the other trains (with --unlisted train): the patient
    is on both sides of the fold, refused by name."""
    from nnunet_mtl.cli.main import main
    tmp_path, train, _ = phantom_split_env
    p0 = sorted(train["patient_id"])[0]
    c0 = sorted(train.loc[train["patient_id"] == p0, "case_id"])[0]
    path = tmp_path / "s.csv"
    path.write_text(f"case,fold\n{c0},0\n")
    assert main(["split", "-d", "521", "--from", str(path), "--unlisted", "train"]) == 2
    assert f"has patient(s) {p0} in both train and val" in capsys.readouterr().err
