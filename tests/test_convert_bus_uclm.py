"""BUS-UCLM converter: a fixture tree with its layout and quirks (class from the RGB mask colour, INFO.csv ';'-separated
with a stray 'Y', a Label that disagrees with the mask, patients from the file names), the CLI and nnU-Net's check."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.bus_uclm import convert_bus_uclm
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import NnunetMtlError
from tests.convert_helpers import case_label, convert_options, converted, nnunet_verify

SHAPE = (32, 36)
GREEN, RED, BLACK = (0, 255, 0), (255, 0, 0), (0, 0, 0)


_opts = partial(convert_options, dataset_id=604, name="BUSUCLM")


def _write(src, name, seed, regions):
    """images/NAME.png (grey noise) and masks/NAME.png (RGB, the given (colour, box) regions on black)."""
    for sub in ("images", "masks"):
        (src / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)).save(src / "images" / name)
    mask = np.zeros(SHAPE + (3,), np.uint8)
    for colour, (r0, r1, c0, c1) in regions or ():
        mask[r0:r1, c0:c1] = colour
    if regions is not None:
        Image.fromarray(mask).save(src / "masks" / name)


@pytest.fixture
def uclm_src(tmp_path):
    src = tmp_path / "BUS-UCLM"
    _write(src, "ALWI_000.png", 1, [(GREEN, (4, 10, 4, 12))])
    _write(src, "ALWI_001.png", 2, [])  # black: normal
    _write(src, "ALWI_002.png", 3, [(RED, (10, 20, 10, 20))])
    _write(src, "BEPE_000.png", 4, [(RED, (2, 8, 2, 8))])  # INFO.csv says Benign: reported, mask wins
    _write(src, "BEPE_001.png", 5, [(GREEN, (2, 8, 2, 8)), (RED, (20, 25, 20, 25))])  # two classes: skipped
    _write(src, "CAGO_000.png", 6, None)  # no mask file
    _write(src, "DOLA_000.png", 7, [(GREEN, (0, 3, 0, 3))])  # no INFO.csv row
    rows = ["Image;Resolution;Label;Doppler;Marks;Combined",
            "ALWI_000.png;0.0725;Benign;No;Y;No",  # the stray 'Y'
            "ALWI_001.png;0.0725;Normal;No;No;No",
            "ALWI_002.png;0.0725;Malignant;Yes;No;maybe",  # a bad yes/no value
            "BEPE_000.png;0.0810;Benign;No;No;No",
            "BEPE_001.png;0.0810;Malignant;No;No;No",
            "CAGO_000.png;0.0810;Benign;No;No;No",
            "ZZZZ_000.png;0.0810;Benign;No;No;No"]  # no such image
    (src / "INFO.csv").write_text("\ufeff" + "\r\n".join(rows) + "\r\n", encoding="utf-8")  # BOM, CRLF
    return src


def test_bus_uclm_fixture(uclm_src, tmp_path):
    report = convert_bus_uclm(uclm_src, _opts(), raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    assert raw.class_labels == {"benign": 0, "malignant": 1}
    assert cases["class"].to_dict() == {"bus_uclm_ALWI_000": "benign", "bus_uclm_ALWI_002": "malignant",
                                        "bus_uclm_BEPE_000": "malignant", "bus_uclm_DOLA_000": "benign"}
    # patient = the first four letters: ALWI's two images share one patient
    assert cases["patient_id"].to_dict() == {"bus_uclm_ALWI_000": "ALWI", "bus_uclm_ALWI_002": "ALWI",
                                             "bus_uclm_BEPE_000": "BEPE", "bus_uclm_DOLA_000": "DOLA"}
    assert cases.at["bus_uclm_ALWI_000", "marks"] == "yes" and cases.at["bus_uclm_ALWI_000", "doppler"] == "no"
    assert cases.at["bus_uclm_ALWI_002", "doppler"] == "yes" and cases.at["bus_uclm_ALWI_002", "combined"] == ""
    assert cases.at["bus_uclm_ALWI_000", "resolution"] == "0.0725" and cases.at["bus_uclm_BEPE_000", "label"] == \
        "Benign"
    assert cases.at["bus_uclm_DOLA_000", "label"] == ""  # no row: clinical columns empty
    assert [(b["case"], b["column"], b["value"]) for b in report.bad_values] == [
        ("bus_uclm_ALWI_002", "Combined", "maybe")]
    for case_id, area in [("bus_uclm_ALWI_000", 48), ("bus_uclm_ALWI_002", 100), ("bus_uclm_BEPE_000", 36)]:
        label = case_label(raw, case_id)
        assert set(np.unique(label)) == {0, 1} and label.sum() == area  # RGB masks binarized
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "normal image" in reasons["bus_uclm_ALWI_001"]
    assert "green (benign, 36 px) and red (malignant, 25 px)" in reasons["bus_uclm_BEPE_001"]
    assert "does not exist" in reasons["bus_uclm_CAGO_000"]
    assert "listed in INFO.csv" in reasons["ZZZZ_000"]
    notes = " ".join(report.notes)
    assert "Label disagrees with the mask colour for 1 image(s)" in notes and "BEPE_000 (Label Benign, mask " \
                                                                               "malignant)" in notes
    assert "1 image(s) without a row in INFO.csv" in notes


def test_bus_uclm_normal_include_as_test_and_nnunet_verify(uclm_src, tmp_path):
    report = convert_bus_uclm(uclm_src, _opts(normal="include", split="test"), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"benign": 0, "malignant": 1, "normal": 2}
    assert set(raw.cases["split"]) == {"test"} and len(raw.cases) == 5
    assert raw.cases.set_index("case_id").at["bus_uclm_ALWI_001", "class"] == "normal"
    assert not case_label(raw, "bus_uclm_ALWI_001").any()
    assert (raw.folder / "imagesTs" / "bus_uclm_ALWI_000_0000.png").is_file()
    report = convert_bus_uclm(uclm_src, _opts(), raw_root=tmp_path / "raw2")
    nnunet_verify(report.path)


def test_bus_uclm_wrong_folder_bad_info_and_cli(uclm_src, tmp_path, monkeypatch, capsys):
    with pytest.raises(NnunetMtlError) as e:
        convert_bus_uclm(uclm_src / "images", _opts(), raw_root=tmp_path / "raw")
    assert "\n" not in str(e.value) and "does not look like BUS-UCLM" in str(e.value) and "INFO.csv" in str(e.value)
    (uclm_src / "INFO.csv").write_text("Image,Label\nALWI_000.png,Benign\n")  # comma-separated: not the file
    with pytest.raises(NnunetMtlError, match="separated by ';'"):
        convert_bus_uclm(uclm_src, _opts(), raw_root=tmp_path / "raw")
    (uclm_src / "INFO.csv").unlink()
    (uclm_src / "info.csv").write_text("Image;Resolution;Label;Doppler;Marks;Combined\n")  # found case-insensitively
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "BUS-UCLM", str(uclm_src.parent), "--no-progress", "--as", "test"]) == 0
    out = capsys.readouterr().out
    assert "Dataset604_BUS-UCLM" in out and "malignant" in out and "without a row in info.csv" in out
    assert load_raw_dataset(tmp_path / "raw" / "Dataset604_BUS-UCLM").dataset_json["numTest"] == 4


def test_bmode_only_leaves_out_doppler_marked_and_combined_images(uclm_src, tmp_path):
    """The breast consistency paper's BUS-UCLM test set: images 'with additional features' excluded."""
    report = convert_bus_uclm(uclm_src, _opts(), bmode_only=True, raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    kept = set(cases.index)
    assert "bus_uclm_ALWI_000" not in kept and "bus_uclm_ALWI_002" not in kept  # Marks Y; Doppler Yes
    assert "bus_uclm_BEPE_000" in kept
    assert "bus_uclm_DOLA_000" not in kept  # no INFO.csv row: cannot tell
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "Marks: left out by --bmode-only" in reasons["bus_uclm_ALWI_000"]
    assert "Doppler: left out by --bmode-only" in reasons["bus_uclm_ALWI_002"]
    assert "cannot tell" in reasons["bus_uclm_DOLA_000"]
    from nnunet_mtl.cli.main import build_parser
    args = build_parser().parse_args(["convert", "bus-uclm", str(uclm_src), "--bmode-only"])
    assert args.bmode_only is True


def test_one_patient_under_two_ids_is_merged(tmp_path):
    """Issue 13, item 6: BUS-UCLM's CHCO_000-003 are pixel-identical to CHVI images, one patient filed under two
    codes; the duplicate was dropped but the other CHVI images kept their own patient id (two folds, one woman)."""
    import shutil
    src = tmp_path / "BUS-UCLM"
    _write(src, "CHCO_000.png", 1, [(GREEN, (4, 10, 4, 12))])
    _write(src, "CHCO_001.png", 2, [(GREEN, (5, 12, 5, 12))])
    _write(src, "CHVI_004.png", 3, [(GREEN, (2, 9, 2, 9))])
    for sub in ("images", "masks"):  # CHVI_005 is CHCO_000 again, as published
        shutil.copyfile(src / sub / "CHCO_000.png", src / sub / "CHVI_005.png")
    _write(src, "DOLA_000.png", 4, [(RED, (3, 9, 3, 9))])
    (src / "INFO.csv").write_text("Image;Label\n" + "".join(
        f"{n};{c}\n" for n, c in [("CHCO_000.png", "Benign"), ("CHCO_001.png", "Benign"), ("CHVI_004.png", "Benign"),
                                   ("CHVI_005.png", "Benign"), ("DOLA_000.png", "Malignant")]))
    report = convert_bus_uclm(src, _opts(), raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    assert "bus_uclm_CHVI_005" not in cases.index  # the later copy, dropped by the duplicate policy
    assert cases["patient_id"].to_dict() == {"bus_uclm_CHCO_000": "CHCO", "bus_uclm_CHCO_001": "CHCO",
                                             "bus_uclm_CHVI_004": "CHCO", "bus_uclm_DOLA_000": "DOLA"}
    assert report.patients_merged == [{"patients": ["CHCO", "CHVI"], "into": "CHCO",
                                       "identical_images": ["bus_uclm_CHCO_000 = bus_uclm_CHVI_005"],
                                       "cases_moved": ["bus_uclm_CHVI_004"]}]
    text = report.format()
    assert "patients merged (identical images under two patient ids: one person): 1" in text
    assert "CHCO, CHVI -> patient_id CHCO" in text
    # --duplicates keep: both copies stay, and in one patient (never one in training, its twin in validation)
    report = convert_bus_uclm(src, _opts(duplicates="keep"), raw_root=tmp_path / "raw2")
    _, cases = converted(report)
    assert set(cases["patient_id"]) == {"CHCO", "DOLA"} and cases.at["bus_uclm_CHVI_005", "patient_id"] == "CHCO"


def test_cropped_image_is_named_as_cropped(uclm_src, tmp_path):
    """BUS-UCLM's HESN_* images are cropped RGBA pictures smaller than their masks: the skip says so."""
    rgba = np.zeros((SHAPE[0] - 6, SHAPE[1] - 8, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(uclm_src / "images" / "HESN_000.png")
    mask = np.zeros(SHAPE + (3,), np.uint8)
    mask[3:9, 3:9] = GREEN
    Image.fromarray(mask).save(uclm_src / "masks" / "HESN_000.png")
    report = convert_bus_uclm(uclm_src, _opts(), raw_root=tmp_path / "raw")
    reason = {s["case"]: s["reason"] for s in report.skipped}["bus_uclm_HESN_000"]
    assert f"HESN_000.png is {SHAPE[1]}x{SHAPE[0]} px but " in reason
    assert f"images/HESN_000.png is {SHAPE[1] - 8}x{SHAPE[0] - 6}" in reason
    assert "the image looks cropped relative to its mask" in reason
