"""BrEaST and UDIAT converters: fixture trees with each dataset's layout and quirks, the CLI, and the real data in
../shared/data when present (skipped otherwise)."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

from dataset_conversion.breast import convert_breast, convert_udiat
from dataset_conversion.report import REPORT_FILE
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import NnunetMtlError
from tests.convert_helpers import case_arrays, convert_options, nnunet_verify

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BREAST_HEADER = ["CaseID", "Image_filename", "Mask_tumor_filename", "Mask_other_filename", "Pixel_size", "Age",
                 "Shape", "BIRADS", "Diagnosis", "Classification"]


_opts = partial(convert_options, dataset_id=601, name="BrEaST")


def _noise(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _xlsx(path, header, rows, sheet="Sheet1", extra_sheet=None):
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = sheet
    ws.append(header)
    for r in rows:
        ws.append(r)
    if extra_sheet:
        book.create_sheet(extra_sheet).append(["type", "description"])
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def _rgba_mask(shape, box, alpha=255):
    m = np.zeros(shape + (4,), np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = (255, 255, 255, alpha)
    return m


@pytest.fixture
def breast_src(tmp_path):
    """BrEaST-like: RGBA images with a transparent strip over non-zero colour, RGBA tumor masks, an 'other' mask
    that must be ignored, a semi-transparent mask edge, a normal case, BIRADS mixing ints and strings, Age
    'not available', a bad age, two tumor masks joined with '&'."""
    src = tmp_path / "BrEaST"
    folder = src / "BrEaST-Lesions_USG-images_and_masks"
    folder.mkdir(parents=True)
    shapes = {1: (40, 50), 2: (36, 44), 3: (40, 50), 4: (30, 30), 5: (40, 50)}
    for i, shape in shapes.items():
        rgba = np.dstack([_noise(i, shape)] * 3 + [np.full(shape, 255, np.uint8)])
        rgba[:, :6, 3] = 0  # transparent, colour underneath
        Image.fromarray(rgba, "RGBA").save(folder / f"case{i:03d}.png")
    Image.fromarray(_rgba_mask((40, 50), (10, 20, 10, 30)), "RGBA").save(folder / "case001_tumor.png")
    Image.fromarray(_rgba_mask((40, 50), (0, 40, 0, 50)), "RGBA").save(folder / "case001_other1.png")
    edge = _rgba_mask((36, 44), (5, 15, 5, 15))
    edge[4, 5:15] = (255, 255, 255, 60)  # semi-transparent edge pixels: background
    Image.fromarray(edge, "RGBA").save(folder / "case002_tumor.png")
    Image.fromarray(_rgba_mask((40, 50), (2, 6, 2, 6)), "RGBA").save(folder / "case003_tumor.png")
    Image.fromarray(_rgba_mask((40, 50), (30, 35, 30, 35)), "RGBA").save(folder / "case003_tumor2.png")
    Image.fromarray(_rgba_mask((40, 50), (1, 3, 1, 3)), "RGBA").save(folder / "case005_tumor.png")
    rows = [
        [1, "case001.png", "case001_tumor.png", "case001_other1.png", 0.0078125, 57, "oval", 3, "Fibroadenoma",
         "benign"],
        [2, "case002.png", "case002_tumor.png", None, 0.006462036, "not available", "irregular", "4b",
         "Invasive carcinoma of no special type (NST)", "malignant"],
        [3, "case003.png", "case003_tumor.png&case003_tumor2.png", None, 0.0078125, 2005, "oval", "4a",
         "not applicable", "benign"],
        [4, "case004.png", None, None, 0.01, 44, "not applicable", 1, "not applicable", "normal"],
        [5, "case005.png", "case005_tumor.png", None, 0.0078125, 61, "round", 5, "x", "malignant"],
    ]
    _xlsx(src / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx", BREAST_HEADER, rows,
          sheet="BrEaST-Lesions-USG clinical dat", extra_sheet="Data Dictionary")
    return src


@pytest.fixture
def udiat_src(tmp_path):
    """UDIAT-like under BUS/: grey images, 1-bit and 0/255 masks, non-contiguous ids, the sheet's ids partly as
    numbers (zero padding lost), a legend beside the table, a file without a row, a row without a file."""
    src = tmp_path / "UDIAT_DatasetB"
    bus = src / "BUS"
    for sub in ("original", "GT"):
        (bus / sub).mkdir(parents=True)
    for i, n in enumerate(["000001", "000002", "000295", "000296"]):
        shape = (30 + i, 40)
        Image.fromarray(_noise(i + 10, shape)).save(bus / "original" / f"{n}.png")
        m = np.zeros(shape, bool)
        m[5:12, 8:20] = True
        Image.fromarray(m if i % 2 else m.astype(np.uint8) * 255).save(bus / "GT" / f"{n}.png")
    header = ["Image", "Type", "Diagnosis", None, None, "Llegend", None]
    rows = [[1, "Benign", "FA", None, None, "FA", "Fibroadenoma"],                # number: padding lost
            ["000002", "Malignant", "IDC", None, None, "IDC", "Invasive Ductal Carcinoma"],
            [295.0, "Malignant", "IDC", None, None, None, None],
            [147, "Benign", "CYST", None, None, None, None]]                        # no such file
    _xlsx(bus / "DatasetB.xlsx", header, rows, sheet="Hoja1")
    return src


# --- BrEaST fixture ------------------------------------------------------------------------------------------
def test_breast_fixture(breast_src, tmp_path):
    report = convert_breast(breast_src, _opts(), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"benign": 0, "malignant": 1}
    cases = raw.cases.set_index("case_id")
    assert list(cases.index) == ["BrEaST_case001", "BrEaST_case002", "BrEaST_case003", "BrEaST_case005"]
    assert cases["class"].tolist() == ["benign", "malignant", "benign", "malignant"]
    assert (cases.index == cases["patient_id"]).all()  # no patient column: one patient per case
    assert cases.at["BrEaST_case001", "birads"] == "3" and cases.at["BrEaST_case002", "birads"] == "4b"
    assert cases.at["BrEaST_case002", "age"] == "" and cases.at["BrEaST_case003", "age"] == ""  # n/a, 2005
    assert cases.at["BrEaST_case001", "age"] == "57" and cases.at["BrEaST_case001", "source_case_id"] == "1"
    assert cases.at["BrEaST_case001", "diagnosis"] == "Fibroadenoma"
    assert raw.spacing_mm("BrEaST_case001") == (0.078125, 0.078125)  # Pixel_size cm -> mm
    image, label = case_arrays(raw, "BrEaST_case001")
    assert image.ndim == 2 and (image[:, :6] == 0).all() and image[:, 6:].any()  # transparent -> black
    assert label.sum() == 10 * 20 and label[0, 0] == 0  # the 'other' mask (whole image) is ignored
    assert case_arrays(raw, "BrEaST_case002")[1].sum() == 100  # semi-transparent edge row is background
    assert case_arrays(raw, "BrEaST_case003")[1].sum() == 16 + 25  # two tumor masks merged
    assert [s["case"] for s in report.skipped] == ["BrEaST_case004"]  # normal, excluded by default
    assert [(b["case"], b["value"]) for b in report.bad_values] == [("BrEaST_case003", 2005)]
    assert any("no patient column" in n for n in report.notes) and any("1 'other' mask" in n for n in report.notes)
    assert json.loads((report.path / REPORT_FILE).read_text())["conversions"][0]["converter"] == "BrEaST"


def test_breast_normal_include_and_birads_target(breast_src, tmp_path):
    report = convert_breast(breast_src, _opts(normal="include"), raw_root=tmp_path / "a")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"benign": 0, "malignant": 1, "normal": 2}
    assert raw.cases.set_index("case_id").at["BrEaST_case004", "class"] == "normal"
    assert not case_arrays(raw, "BrEaST_case004")[1].any()
    report = convert_breast(breast_src, _opts(), target="birads", raw_root=tmp_path / "b")
    raw = load_raw_dataset(report.path)
    assert list(raw.class_labels) == ["birads_2", "birads_3", "birads_4a", "birads_4b", "birads_4c", "birads_5"]
    assert raw.cases["class"].tolist() == ["birads_3", "birads_4b", "birads_4a", "birads_5"]


def test_breast_as_test_and_unlisted_files(breast_src, tmp_path):
    folder = breast_src / "BrEaST-Lesions_USG-images_and_masks"
    Image.fromarray(_noise(9, (20, 20))).save(folder / "case099.png")  # a file the sheet does not list
    report = convert_breast(breast_src, _opts(split="test"), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert set(raw.cases["split"]) == {"test"} and raw.dataset_json["numTraining"] == 0
    assert {"case": "case099.png", "reason": f"not listed in {next(breast_src.glob('*.xlsx')).name}; expected a row "
                                             f"for every file"} in report.skipped


def test_breast_wrong_folder_and_missing_files(breast_src, tmp_path):
    with pytest.raises(NnunetMtlError) as e:
        convert_breast(breast_src / "BrEaST-Lesions_USG-images_and_masks", _opts(), raw_root=tmp_path / "raw")
    assert "\n" not in str(e.value) and "does not look like BrEaST" in str(e.value)
    assert "expected BrEaST-Lesions_USG-images_and_masks/ (caseNNN.png" in str(e.value)
    (breast_src / "BrEaST-Lesions_USG-images_and_masks" / "case005_tumor.png").unlink()
    report = convert_breast(breast_src, _opts(), raw_root=tmp_path / "raw")
    assert any(s["case"] == "BrEaST_case005" and "case005_tumor.png does not exist" in s["reason"]
               for s in report.skipped)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset601_BrEaST"]  # the wrong folder left nothing


# --- UDIAT fixture -------------------------------------------------------------------------------------------
def test_udiat_fixture(udiat_src, tmp_path):
    report = convert_udiat(udiat_src, _opts(dataset_id=602, name="UDIAT"), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    cases = raw.cases.set_index("case_id")
    assert list(cases.index) == ["UDIAT_000001", "UDIAT_000002", "UDIAT_000295"]  # zero padding kept
    assert cases["class"].tolist() == ["benign", "malignant", "malignant"]
    assert cases.at["UDIAT_000001", "diagnosis_name"] == "Fibroadenoma"
    assert cases.at["UDIAT_000295", "source_image"] == "original/000295.png"
    for case_id in cases.index:
        image, label = case_arrays(raw, case_id)
        assert image.shape == label.shape and set(np.unique(label)) == {0, 1} and label.sum() == 7 * 12
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "000147.png does not exist" in reasons["UDIAT_000147"]
    assert "has no row in DatasetB.xlsx" in reasons["UDIAT_000296"]
    assert raw.spacing_mm("UDIAT_000001") is None


def test_udiat_added_as_test_split_to_breast(breast_src, udiat_src, tmp_path):
    root = tmp_path / "raw"
    convert_breast(breast_src, _opts(), raw_root=root)
    report = convert_udiat(udiat_src, _opts(add_to_existing=True, split="test", name="UDIAT"), raw_root=root)
    assert report.path == root / "Dataset601_BrEaST"
    raw = load_raw_dataset(report.path)
    assert raw.dataset_json["numTraining"] == 4 and raw.dataset_json["numTest"] == 3
    assert raw.cases_in_split("test")["case_id"].str.startswith("UDIAT_").all()
    with pytest.raises(NnunetMtlError, match="already exists"):
        convert_udiat(udiat_src, _opts(name="UDIAT"), raw_root=root)  # no overwrite without --overwrite
    assert [p.name for p in root.iterdir()] == ["Dataset601_BrEaST"]


# --- CLI --------------------------------------------------------------------------------------------------------
def test_cli(breast_src, udiat_src, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "BrEaST", str(breast_src), "-d", "611", "--no-progress", "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "Dataset611_BrEaST" in out and "benign" in out and "skipped: 1" in out
    assert main(["convert", "udiat", str(udiat_src), "-d", "611", "--add-to-existing", "--no-progress"]) == 0
    assert load_raw_dataset(tmp_path / "raw" / "Dataset611_BrEaST").dataset_json["numTest"] == 3
    capsys.readouterr()
    assert main(["convert", "udiat", str(breast_src), "-d", "612", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not look like UDIAT Dataset B" in err and "original/NNNNNN.png" in err


# --- the real data (../shared/data) ---------------------------------------------------------------------------
def _real(name):
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"../shared/data/{name} not present: the real-data checks need a copy of the published dataset")
    return path


def _check_real(raw):
    for split in ("train", "test"):
        images, labels = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
        for case_id in raw.cases_in_split(split)["case_id"]:
            image = Image.open(raw.folder / images / f"{case_id}_0000.png")
            label = np.array(Image.open(raw.folder / labels / f"{case_id}.png"))
            assert image.mode == "L" and image.size[::-1] == label.shape, case_id
            assert set(np.unique(label)) == {0, 1}, case_id  # every kept case has a lesion


@pytest.fixture(scope="module")
def real_breast_udiat(tmp_path_factory):
    """The protocol of the papers: BrEaST as training set, UDIAT added as its external test set."""
    breast, udiat = _real("BrEaST"), _real("UDIAT_DatasetB")
    root = tmp_path_factory.mktemp("raw")
    b = convert_breast(breast, _opts(num_processes=2), raw_root=root)
    u = convert_udiat(udiat, _opts(num_processes=2, add_to_existing=True, split="test", name="UDIAT"), raw_root=root)
    return b, u, load_raw_dataset(b.path)


@pytest.mark.shared_data
def test_real_breast(real_breast_udiat):
    report, _, raw = real_breast_udiat
    counts = raw.cases_in_split("train")["class"].value_counts().to_dict()
    # published: benign 154 / malignant 98 / normal 4 (normal excluded by default); other copies may differ a bit
    assert counts == {"benign": 154, "malignant": 98}
    assert len(report.skipped) == 4 and all("normal image" in s["reason"] for s in report.skipped)
    assert raw.cases_in_split("train")["spacing_row_mm"].between(0.01, 1.0).all()


@pytest.mark.shared_data
def test_real_udiat(real_breast_udiat):
    _, report, raw = real_breast_udiat
    test = raw.cases_in_split("test")
    # this copy: Benign 109 / Malignant 54, minus 4 exact duplicates (2 + 2) filed twice under the same class
    assert test["class"].value_counts().to_dict() == {"benign": 107, "malignant": 52}
    assert sorted(tuple(d["cases"]) for d in report.duplicates) == [
        ("UDIAT_000032", "UDIAT_000040"), ("UDIAT_000033", "UDIAT_000042"), ("UDIAT_000053", "UDIAT_000309"),
        ("UDIAT_000054", "UDIAT_000310")]
    assert not report.skipped and test["case_id"].str.fullmatch(r"UDIAT_\d{6}").all()


@pytest.mark.shared_data
def test_real_files_and_nnunet_verify(real_breast_udiat):
    _, _, raw = real_breast_udiat
    _check_real(raw)
    nnunet_verify(raw.folder)


@pytest.mark.shared_data
def test_real_udiat_as_the_breast_paper_counts_it(tmp_path):
    """Zhang, Moradi, Saha test on UDIAT's 163 images: --duplicates keep keeps the 4 copies our policy drops; with
    --resize 256 every case is 256 x 256, as Zhang, Moradi, Saha's inputs."""
    report = convert_udiat(_real("UDIAT_DatasetB"), _opts(num_processes=2, duplicates="keep", resize=256,
                                                           name="UDIAT"), raw_root=tmp_path)
    raw = load_raw_dataset(report.path)
    assert raw.cases["class"].value_counts().to_dict() == {"benign": 109, "malignant": 54}  # 163 as published
    image = np.array(Image.open(report.path / "imagesTr" / "UDIAT_000001_0000.png"))
    assert image.shape == (256, 256)
