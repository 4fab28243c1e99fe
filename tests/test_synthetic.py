"""The synthetic phantom: deterministic, patient-level split, class morphology, nnU-Net-valid; and its CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.synthetic import CLASS_LABELS, convert_synthetic
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset

SMALL = dict(num_patients=20, images_per_patient=2, size=64, progress=False)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return load_raw_dataset(convert_synthetic(500, raw_root=root, seed=1, **SMALL))


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _arrays(raw, case_id, split):
    images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    return (np.array(Image.open(raw.folder / images / f"{case_id}_0000.png")),
            np.array(Image.open(raw.folder / labels / f"{case_id}.png")))


def test_output_follows_contract(phantom):
    raw = phantom
    assert raw.folder.name == "Dataset500_SyntheticUS"
    assert raw.class_labels == CLASS_LABELS == {"benign": 0, "malignant": 1, "normal": 2}
    assert len(raw.cases) == 40
    assert raw.dataset_json["numTraining"] == len(raw.cases_in_split("train"))
    assert raw.dataset_json["numTest"] == len(raw.cases_in_split("test")) > 0
    assert {"birads", "lesion_width_px", "lesion_height_px", "age"} <= set(raw.cases.columns)
    assert raw.cases["patient_id"].str.fullmatch(r"\d{4}").all()  # zero-padded ids survive as strings
    sp = raw.spacing_mm(raw.cases["case_id"][0])
    assert sp is not None and sp[0] == sp[1] > 0
    image, label = _arrays(raw, raw.cases["case_id"][0], raw.cases["split"][0])
    assert image.shape == label.shape == (64, 64) and image.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}


def test_deterministic(tmp_path):
    kw = dict(num_patients=6, images_per_patient=2, size=48, progress=False)
    a = _files(convert_synthetic(500, raw_root=tmp_path / "a", seed=3, **kw))
    b = _files(convert_synthetic(500, raw_root=tmp_path / "b", seed=3, **kw))
    c = _files(convert_synthetic(500, raw_root=tmp_path / "c", seed=4, **kw))
    assert a == b
    images = [k for k in a if k.startswith("images")]
    assert images and all(a[k] != c.get(k) for k in images)


def test_split_is_by_patient_and_stratified(phantom):
    cases = phantom.cases
    per_patient = cases.groupby("patient_id")[["split", "class"]].nunique()
    assert (per_patient == 1).all().all()  # one split and one class per patient
    test_classes = set(cases.loc[cases["split"] == "test", "class"])
    assert {"benign", "malignant"} <= test_classes


def test_class_morphology(phantom):
    ratios = {"benign": [], "malignant": []}
    for row in phantom.cases.to_dict("records"):
        image, label = _arrays(phantom, row["case_id"], row["split"])
        if row["class"] == "normal":
            assert not label.any()
            assert row["lesion_width_px"] == "" and row["birads"] == "1"
            continue
        rows, cols = np.nonzero(label)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert (int(row["lesion_width_px"]), int(row["lesion_height_px"])) == (width, height)
        assert 0.1 <= max(width, height) / 64 <= 0.6  # clearly visible, not the whole image
        # hypoechoic: the lesion is darker than the tissue beside it
        ring = np.zeros_like(label, bool)
        ring[max(rows.min() - 3, 0):rows.max() + 4, max(cols.min() - 6, 0):cols.max() + 7] = True
        ring &= label == 0
        assert image[label > 0].mean() < image[ring].mean() - 20
        ratios[row["class"]].append(height / width)
    assert np.mean(ratios["malignant"]) > 1 > np.mean(ratios["benign"])  # taller- vs wider-than-tall


def test_bad_arguments(tmp_path):
    from nnunet_mtl.errors import NnunetMtlError
    with pytest.raises(NnunetMtlError, match="exceeds 1"):
        convert_synthetic(500, raw_root=tmp_path, normal_fraction=0.6, malignant_fraction=0.6, progress=False)
    with pytest.raises(NnunetMtlError, match="too small"):
        convert_synthetic(500, raw_root=tmp_path, size=16, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_nnunet_integrity_check_passes(phantom):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(phantom.folder), num_processes=1)  # raises on any problem


def test_cli_convert_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    argv = ["convert", "synthetic", "-d", "501", "--name", "Phantom", "--num-patients", "4",
            "--images-per-patient", "2", "--size", "40", "48", "--seed", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "Dataset501_Phantom"
    assert str(folder) in out and "malignant" in out and "total" in out
    raw = load_raw_dataset(folder)
    assert len(raw.cases) == 8
    assert np.array(Image.open(next((folder / "imagesTr").iterdir()))).shape == (40, 48)
    before = (folder / "cases.csv").read_bytes()
    assert main(argv) == 2  # exists: refused, data intact
    assert "--overwrite" in capsys.readouterr().err
    assert (folder / "cases.csv").read_bytes() == before
    assert main(argv[:-3] + ["--seed", "5", "--overwrite", "--no-progress"]) == 0
    assert (folder / "cases.csv").read_bytes() != before
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == len(raw.cases_in_split("train"))


def test_cli_without_nnunet_raw(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["convert", "synthetic", "-d", "502", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nnUNet_raw is not set" in err and err.count("\n") == 1
