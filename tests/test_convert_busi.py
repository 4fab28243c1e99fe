"""BUSI converter: a fixture tree with BUSI's layout and quirks (several masks per image, 1-bit / RGBA / 0-255 /
all-zero RGB masks, coloured marks on RGB images, the byte-identical benign (433) / malignant (145) pair, a missing
mask, an orphan mask, a stray file), the CLI and nnU-Net's dataset check."""
from __future__ import annotations

import shutil
from functools import partial

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.busi import convert_busi
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import NnunetMtlError
from tests.convert_helpers import case_label, convert_options, converted, nnunet_verify

SHAPE = (32, 40)


_opts = partial(convert_options, dataset_id=603, name="BUSI")


def _rgb(seed, mark=False):
    """RGB B-mode-like noise (grey in all three channels), optionally with a coloured calliper mark."""
    grey = np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)
    rgb = np.dstack([grey] * 3)
    if mark:
        rgb[2:4, 2:8] = (255, 255, 0)
    return rgb


def _box(box):
    m = np.zeros(SHAPE, bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode is None else Image.fromarray(array).convert(mode).save(path)


@pytest.fixture
def busi_src(tmp_path):
    src = tmp_path / "download" / "Dataset_BUSI_with_GT"
    b, m, n = src / "benign", src / "malignant", src / "normal"
    _save(b / "benign (1).png", _rgb(1, mark=True))
    _save(b / "benign (1)_mask.png", _box((4, 12, 4, 12)), "1")  # 1-bit
    _save(b / "benign (2).png", _rgb(2))
    _save(b / "benign (2)_mask.png", _box((2, 6, 2, 6)), "1")
    _save(b / "benign (2)_mask_1.png", _box((10, 14, 10, 14)), "1")
    _save(b / "benign (2)_mask_2.png", _box((20, 25, 20, 25)).astype(np.uint8) * 255)
    _save(b / "benign (3).png", _rgb(3))
    rgba = np.zeros(SHAPE + (4,), np.uint8)
    rgba[5:10, 5:15] = (255, 255, 255, 255)
    rgba[20:30, 20:30] = (255, 255, 255, 0)  # transparent white: background
    _save(b / "benign (3)_mask.png", rgba)
    _save(b / "benign (4).png", _rgb(4))  # no mask
    _save(b / "benign (433).png", _rgb(433))
    _save(b / "benign (433)_mask.png", _box((1, 5, 1, 5)), "1")
    _save(m / "malignant (1).png", _rgb(11))
    _save(m / "malignant (1)_mask.png", _box((8, 20, 8, 20)).astype(np.uint8) * 255)
    shutil.copyfile(b / "benign (433).png", m / "malignant (145).png")  # byte-identical, as published
    _save(m / "malignant (145)_mask.png", _box((1, 5, 1, 5)), "1")
    _save(m / "malignant (9)_mask.png", _box((1, 5, 1, 5)), "1")  # orphan mask
    _save(n / "normal (1).png", _rgb(21))
    _save(n / "normal (1)_mask.png", np.zeros(SHAPE + (3,), np.uint8))  # all-zero RGB
    (n / "Thumbs.db").write_bytes(b"x")  # not a png: ignored
    _save(n / "normal copy.png", _rgb(22))  # a png that does not fit the naming: reported
    return tmp_path / "download"


def test_busi_fixture(busi_src, tmp_path):
    report = convert_busi(busi_src, _opts(), raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    assert raw.class_labels == {"benign": 0, "malignant": 1}
    assert list(cases.index) == ["busi_benign_0001", "busi_benign_0002", "busi_benign_0003", "busi_malignant_0001"]
    assert cases["class"].value_counts().to_dict() == {"benign": 3, "malignant": 1}
    assert (cases.index == cases["patient_id"]).all()  # no patient ids: one patient per image
    assert cases.at["busi_benign_0002", "masks"] == "3" and cases.at["busi_benign_0002", "source_image"] == \
        "benign/benign (2).png"
    for case_id in cases.index:
        label = case_label(raw, case_id)
        assert label.shape == SHAPE and set(np.unique(label)) == {0, 1}
    assert case_label(raw, "busi_benign_0001").sum() == 64  # 1-bit mask
    assert case_label(raw, "busi_benign_0002").sum() == 16 + 16 + 25  # three masks merged
    assert case_label(raw, "busi_benign_0003").sum() == 50  # RGBA: the transparent block is background
    assert case_label(raw, "busi_malignant_0001").sum() == 144  # 0/255
    image = np.array(Image.open(raw.folder / "imagesTr" / "busi_benign_0001_0000.png"))
    assert image.ndim == 2 and image.shape == SHAPE  # RGB with a coloured mark -> grey
    # the byte-identical pair carries two classes: both dropped and reported
    assert [d["cases"] for d in report.duplicates] == [["busi_benign_0433", "busi_malignant_0145"]]
    assert "all dropped as ambiguous" in report.duplicates[0]["action"]
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "has no mask" in reasons["busi_benign_0004"]
    assert "without its image" in reasons["malignant/malignant (9)_mask.png"]
    assert "unexpected file name" in reasons["normal/normal copy.png"]
    assert "normal image" in reasons["busi_normal_0001"]  # excluded by default
    assert any("no patient ids" in n for n in report.notes)
    assert any("1 image(s) with several masks" in n for n in report.notes)
    text = report.format()
    assert "exact duplicates: 1" in text and "busi_benign_0433, busi_malignant_0145" in text


def test_busi_normal_include_as_test_and_nnunet_verify(busi_src, tmp_path):
    report = convert_busi(busi_src, _opts(normal="include", split="test"), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"benign": 0, "malignant": 1, "normal": 2}
    assert set(raw.cases["split"]) == {"test"} and raw.dataset_json["numTraining"] == 0
    assert (raw.folder / "imagesTs" / "busi_normal_0001_0000.png").is_file()
    assert not case_label(raw, "busi_normal_0001").any()
    assert not any((raw.folder / "imagesTr").iterdir())
    report = convert_busi(busi_src, _opts(), raw_root=tmp_path / "raw2")
    nnunet_verify(report.path)


def test_busi_wrong_folder_and_cli(busi_src, tmp_path, monkeypatch, capsys):
    with pytest.raises(NnunetMtlError) as e:
        convert_busi(busi_src / "Dataset_BUSI_with_GT" / "benign", _opts(), raw_root=tmp_path / "raw")
    assert "\n" not in str(e.value) and "does not look like BUSI" in str(e.value)
    assert "Dataset_BUSI_with_GT/{benign,malignant,normal}/" in str(e.value)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "BUSI", str(busi_src), "--no-progress", "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "Dataset603_BUSI" in out and "benign" in out and "exact duplicates: 1" in out
    assert main(["convert", "busi", str(busi_src), "--no-progress"]) == 2  # exists: no overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "busi", str(busi_src), "--no-progress", "--overwrite", "--normal", "include"]) == 0
    assert load_raw_dataset(tmp_path / "raw" / "Dataset603_BUSI").class_labels["normal"] == 2


def _lesion_01():
    """A 0/1 uint8 mask of a 150-pixel lesion (10 x 15)."""
    m = np.zeros(SHAPE, np.uint8)
    m[5:15, 5:20] = 1
    return m


def test_busi_mask_with_stray_255_is_skipped_not_collapsed(busi_src, tmp_path):
    """Issue 13, item 1: one stray 255 in a 0/1 mask must not turn a 150-px lesion into one pixel."""
    b = busi_src / "Dataset_BUSI_with_GT" / "benign"
    mixed = _lesion_01()
    mixed[0, 0] = 255
    _save(b / "benign (1)_mask.png", mixed)
    _save(b / "benign (5).png", _rgb(5))
    _save(b / "benign (5)_mask.png", _lesion_01())  # plain 0/1: the whole lesion
    report = convert_busi(busi_src, _opts(), raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "busi_benign_0001" not in cases.index
    assert "benign (1)_mask.png mixes mask encodings: 150 px of value 1" in reasons["busi_benign_0001"]
    assert "1 px of 255" in reasons["busi_benign_0001"]
    assert case_label(raw, "busi_benign_0005").sum() == 150
    # what was done with every mask file is in the report: counts per encoding
    # what was done with every mask file of the cases added is in the report: counts per encoding (1-bit, 0/1,
    # 0/255 and the RGBA mask have one lesion value each; the ambiguous pair dropped later is not counted)
    assert report.mask_encodings == {"binary": 6}
    assert "mask files read as: 6 binary" in report.format()


@pytest.mark.parametrize("first, second", [("benign (1).png", "benign (01).png"),
                                           ("benign (1).png", "Benign (1).PNG"),
                                           ("benign (1)_mask.png", "benign (001)_mask.png")])
def test_busi_names_that_collide_are_an_error_naming_both(busi_src, tmp_path, first, second):
    """Issue 13, items 2-3: two files read as one image (leading zeros, letter case) were merged silently."""
    b = busi_src / "Dataset_BUSI_with_GT" / "benign"
    if (b / second).exists():  # the fixture has it already under the other spelling
        pytest.skip("collision already present")
    _save(b / second, _rgb(7) if "mask" not in second else _box((1, 4, 1, 4)), None if "mask" not in second else "1")
    before = sorted(p.name for p in b.iterdir())
    with pytest.raises(NnunetMtlError) as e:
        convert_busi(busi_src, _opts(), raw_root=tmp_path / "raw")
    message = str(e.value)
    assert "\n" not in message and repr(first) in message and repr(second) in message
    assert "rename or remove one" in message
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())  # nothing written
    assert sorted(p.name for p in b.iterdir()) == before  # inputs untouched


def test_busi_without_normal_folder(busi_src, tmp_path):
    """A copy without normal/: converts with --normal exclude (its images would be left out anyway; the report says
    the folder is not there); with --normal include the error names the BUSI folder and normal/ alone, not the
    three class folders of the parent the user pointed at."""
    root = next(p for p in [busi_src, *busi_src.iterdir()] if (p / "benign").is_dir())
    shutil.rmtree(root / "normal")
    report = convert_busi(busi_src, _opts(), raw_root=tmp_path / "raw")
    assert any("no normal/ folder" in n for n in report.notes)
    raw = load_raw_dataset(report.path)
    assert set(raw.cases["class"]) == {"benign", "malignant"}
    with pytest.raises(NnunetMtlError) as e:
        convert_busi(busi_src, _opts(normal="include"), raw_root=tmp_path / "raw2")
    message = str(e.value)
    assert f"{root} looks like BUSI but has no normal/" in message and "benign/" not in message.split(";")[0]


def _smooth(seed, crop):
    """A B-mode-like image of coarse structure (a 5 x 4 grid of grey levels, smoothly interpolated): cropping a
    few pixels off it keeps its difference hash, as BUSI's re-cropped copies of one scan do."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 5)).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((SHAPE[1] + 6, SHAPE[0] + 6), Image.BILINEAR))
    top, left, height, width = crop
    return np.ascontiguousarray(big[top:top + height, left:left + width])


@pytest.fixture
def busi_conflict_src(busi_src):
    """benign (5) and malignant (7): one scan filed under both classes, cropped differently and outlined
    differently (near-identical, not byte-identical), as in the published BUSI."""
    root = busi_src / "Dataset_BUSI_with_GT"
    benign, malignant = _smooth(4, (3, 3, 32, 40)), _smooth(4, (2, 4, 33, 39))
    _save(root / "benign" / "benign (5).png", np.dstack([benign] * 3))
    _save(root / "benign" / "benign (5)_mask.png", _box((10, 20, 10, 25)), "1")
    _save(root / "malignant" / "malignant (7).png", np.dstack([malignant] * 3))
    mask = np.zeros(malignant.shape, bool)
    mask[12:22, 8:22] = True
    _save(root / "malignant" / "malignant (7)_mask.png", mask, "1")
    return busi_src


def test_busi_cross_class_near_duplicates_are_label_conflicts(busi_conflict_src, tmp_path, monkeypatch, capsys):
    """Issue 25, item 7b: the same scan under both classes with different crops and outlines was listed only among
    the near-duplicates. It is now a label conflict, in its own section: kept by default (the report says so and
    how to drop it), dropped with --label-conflicts drop; the byte-identical 433 / 145 pair is dropped as before."""
    report = convert_busi(busi_conflict_src, _opts(), raw_root=tmp_path / "raw")
    _, cases = converted(report)
    assert {"busi_benign_0005", "busi_malignant_0007"} <= set(cases.index)
    assert [(p["a"], p["b"], p["classes"]) for p in report.label_conflicts] == \
        [("busi_benign_0005", "busi_malignant_0007", ["benign", "malignant"])]
    assert report.label_conflicts_total == 1 and report.label_conflicts_policy == "keep"
    assert [d["cases"] for d in report.duplicates] == [["busi_benign_0433", "busi_malignant_0145"]]
    text = report.format()
    assert "label conflicts (near-duplicates whose classes differ; all kept, --label-conflicts drop drops them" in text
    assert "busi_benign_0005 (benign) ~ busi_malignant_0007 (malignant)" in text
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "cli"))
    assert main(["convert", "busi", str(busi_conflict_src), "--no-progress", "--label-conflicts", "drop"]) == 0
    out = capsys.readouterr().out
    assert "label conflicts (near-duplicates whose classes differ; 2 case(s) dropped, --label-conflicts drop" in out
    raw = load_raw_dataset(tmp_path / "cli" / "Dataset603_BUSI")
    assert raw.cases["case_id"].tolist() == ["busi_benign_0001", "busi_benign_0002", "busi_benign_0003",
                                             "busi_malignant_0001"]
    nnunet_verify(raw.folder)
