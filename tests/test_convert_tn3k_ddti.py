"""TN3K and DDTI converters: fixture trees with each dataset's layout and quirks (TN3K: JPEG masks with compression
noise, headerless label files, the published trainval / test split; DDTI: one XML per case with TI-RADS like '4a',
polygon marks per image, a cut-off <svg>), the CLI and nnU-Net's check."""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.ddti import (OPEN_OUTLINE_PX, TIRADS_MAPPING, convert_ddti, find_outside_outlines,
                                     parse_regions, parse_tirads, pathology_class, rasterize)
from dataset_conversion.tn3k import convert_tn3k
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import NnunetMtlError
from tests.convert_helpers import case_label, convert_options, converted, nnunet_verify

SHAPE = (32, 40)
BOX = (8, 24, 10, 30)  # rows 8..23, cols 10..29: 16 x 20


_opts = partial(convert_options, dataset_id=607, name="TN3K")


def _jpeg(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=75)


def _noise(seed):
    return np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)


# --- TN3K ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tn3k_src(tmp_path):
    src = tmp_path / "TN3K" / "tn3k"
    mask = np.zeros(SHAPE, np.uint8)
    mask[BOX[0]:BOX[1], BOX[2]:BOX[3]] = 255
    for prefix, names in (("trainval", ["0000", "0001", "0002", "0003", "0004"]), ("test", ["0000", "0001"])):
        for i, name in enumerate(names):
            _jpeg(src / f"{prefix}-image" / f"{name}.jpg", _noise(i + 10 * len(prefix)))
            if name != "0003":  # 0003: no mask
                _jpeg(src / f"{prefix}-mask" / f"{name}.jpg", mask)
    # headerless 'name,label' rows (the first row is data, not a header); 0004 has no row, 0009 no image
    (src / "label4trainval.csv").write_text("0000.jpg,0\n0001.jpg,1\n0002.jpg,0\n0003.jpg,1\n0009.jpg,1\n")
    (src / "label4test.csv").write_text("0000.jpg,1\r\n1.jpg,2\r\n")  # zero padding lost; a bad label
    (src / "tn3k-trainval-fold0.json").write_text(json.dumps({"train": [0, 1], "val": [2]}))
    return tmp_path / "TN3K"


def test_tn3k_official_split(tn3k_src, tmp_path):
    report = convert_tn3k(tn3k_src, _opts(split="official"), raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    assert cases["split"].to_dict() == {"tn3k_trainval_0000": "train", "tn3k_trainval_0001": "train",
                                        "tn3k_trainval_0002": "train", "tn3k_test_0000": "test"}
    assert cases["class"].to_dict() == {"tn3k_trainval_0000": "benign", "tn3k_trainval_0001": "malignant",
                                        "tn3k_trainval_0002": "benign", "tn3k_test_0000": "malignant"}
    assert (cases.index == cases["patient_id"]).all()
    assert cases.at["tn3k_test_0000", "source_image"] == "test-image/0000.jpg"
    assert raw.dataset_json["numTraining"] == 3 and raw.dataset_json["numTest"] == 1
    noisy = np.array(Image.open(tn3k_src / "tn3k" / "trainval-mask" / "0000.jpg"))
    assert len(np.unique(noisy)) > 2  # the JPEG mask is not 0/255 ...
    for case_id in cases.index:
        label = case_label(raw, case_id)  # ... the stored one is 0/1, the box up to JPEG ringing
        assert set(np.unique(label)) == {0, 1} and abs(int(label.sum()) - 16 * 20) <= 16
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "trainval-mask/0003.jpg does not exist" in reasons["tn3k_trainval_0003"]
    assert "no row in label4trainval.csv" in reasons["tn3k_trainval_0004"]
    assert "label '2' in label4test.csv" in reasons["tn3k_test_0001"]
    assert "no such image" in reasons["label4trainval.csv 9"]
    assert any("no patient ids" in n for n in report.notes)


def test_tn3k_as_train_renamed_labels_and_nnunet_verify(tn3k_src, tmp_path):
    folder = tn3k_src / "tn3k"
    (folder / "label4trainval.csv").rename(folder / "TN3K_trainval_labels.csv")  # a renamed copy is found
    report = convert_tn3k(tn3k_src, _opts(split="train"), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert set(raw.cases["split"]) == {"train"} and len(raw.cases) == 4
    nnunet_verify(report.path)
    (folder / "label4test.csv").unlink()
    with pytest.raises(NnunetMtlError) as e:
        convert_tn3k(tn3k_src, _opts(overwrite=True), raw_root=tmp_path / "raw")
    assert "\n" not in str(e.value) and "expected label4test.csv" in str(e.value)


def test_tn3k_wrong_folder_and_cli(tn3k_src, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "tn3k", str(tn3k_src / "tn3k" / "trainval-image"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not look like TN3K" in err and "label4trainval.csv" in err
    assert main(["convert", "TN3K", str(tn3k_src), "--no-progress", "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "Dataset607_TN3K" in out and "malignant" in out
    assert load_raw_dataset(tmp_path / "raw" / "Dataset607_TN3K").dataset_json["numTest"] == 1  # official default


# --- DDTI ----------------------------------------------------------------------------------------------------
def _svg(*polygons):
    return json.dumps([{"points": [{"x": x, "y": y} for x, y in p], "annotation": {}, "regionType": "freehand"}
                       for p in polygons])


SQUARE = [(10, 10), (20, 10), (20, 20), (10, 20)]
TRIANGLE = [(30, 2), (38, 2), (30, 8)]


def _xml(number, tirads, marks, age="49", report=""):
    fields = (f"<number>{number}</number><age>{age}</age><sex>F</sex><composition>solid</composition>"
              f"<echogenicity>hypoechogenicity</echogenicity><margins>well defined</margins>"
              f"<calcifications>non</calcifications><tirads>{tirads}</tirads><reportbacaf>{report}</reportbacaf>"
              f"<reporteco></reporteco>")
    body = "".join(f"<mark><image>{image}</image><svg>{svg}</svg></mark>" for image, svg in marks)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<case>{fields}{body}</case>\n'


@pytest.fixture
def ddti_src(tmp_path):
    src = tmp_path / "DDTI"
    src.mkdir()
    files = {
        1: (_xml(1, "4a", [(1, _svg(SQUARE, TRIANGLE)), (2, _svg(SQUARE))]), [1, 2]),  # two images, two polygons
        2: (_xml(2, "3", [(1, _svg(SQUARE)), (1, _svg(TRIANGLE))], age="2005"), [1]),  # two marks for image 1
        3: (_xml(3, "", [(1, _svg(SQUARE))]), [1]),  # no TI-RADS
        4: (_xml(4, "5", [(1, _svg(SQUARE)[:-len('"regionType": "freehand"}]')])]), [1]),  # cut-off <svg>
        6: (_xml(6, "4b", [(2, _svg(SQUARE))]), [1]),  # mark for 6_2 (no file), none for 6_1
        8: (_xml(8, "4b", [(1, _svg(SQUARE))], report="Bethesda II: benign follicular nodule"), [1]),
    }
    for n, (xml, images) in files.items():
        (src / f"{n}.xml").write_text(xml)
        for m in images:
            _jpeg(src / f"{n}_{m}.jpg", _noise(10 * n + m))
    _jpeg(src / "5_1.jpg", _noise(51))  # no 5.xml
    (src / "7.xml").write_text("<case><tirads>3</tirads><mark>")  # broken XML
    _jpeg(src / "7_1.jpg", _noise(71))
    return src


def test_ddti_tirads_parsing_and_rasterization():
    assert [parse_tirads(v) for v in ("4a", "4A", " 4 b", "TR4c", "TI-RADS 5", "3", "2")] == \
        ["4a", "4a", "4b", "4c", "5", "3", "2"]
    assert [parse_tirads(v) for v in ("", None, "4", "1", "6", "x")] == [None] * 6
    assert pathology_class("Bethesda VI, papillary carcinoma") == "malignant"
    assert pathology_class("Bethesda II: benign") == "benign" and pathology_class("") is None
    assert pathology_class("Bethesda III") is None
    mask = rasterize([SQUARE], SHAPE)  # corners (x, y) = (10..20, 10..20), outline included
    expected = np.zeros(SHAPE, np.uint8)
    expected[10:21, 10:21] = 1
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    both = rasterize([SQUARE, [(-5, -5), (5, -5), (5, 5), (-5, 5)], [(1, 1), (2, 2)]], SHAPE)  # clipped; a line
    assert both.sum() == 121 + 36 and both[0, 0] == 1
    regions, salvaged = parse_regions(_svg(SQUARE, TRIANGLE)[:-5])  # cut inside the last region
    assert salvaged and regions == [tuple(map(lambda p: (float(p[0]), float(p[1])), SQUARE)),
                                    tuple(map(lambda p: (float(p[0]), float(p[1])), TRIANGLE))]
    assert parse_regions("") == ([], False)


def test_ddti_tirads_target(ddti_src, tmp_path):
    report = convert_ddti(ddti_src, _opts(dataset_id=608, name="DDTI"), raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    assert list(raw.class_labels) == ["TR2", "TR3", "TR4a", "TR4b", "TR4c", "TR5"]
    assert cases["class"].to_dict() == {"ddti_0001_1": "TR4a", "ddti_0001_2": "TR4a", "ddti_0002_1": "TR3",
                                        "ddti_0004_1": "TR5", "ddti_0008_1": "TR4b"}
    assert cases.at["ddti_0001_1", "patient_id"] == cases.at["ddti_0001_2", "patient_id"] == "ddti_0001"
    row = cases.loc["ddti_0001_1"]
    assert (row["age"], row["sex"], row["composition"], row["margins"], row["tirads"], row["polygons"]) == \
        ("49", "F", "solid", "well defined", "4a", "2")
    assert cases.at["ddti_0002_1", "age"] == "" and [b["case"] for b in report.bad_values] == ["ddti_0002"]
    triangle = int(rasterize([TRIANGLE], SHAPE).sum())
    areas = {case_id: int(case_label(raw, case_id).sum()) for case_id in cases.index}
    assert areas["ddti_0001_1"] == areas["ddti_0002_1"] == 121 + triangle  # polygons / marks merged
    assert areas["ddti_0001_2"] == areas["ddti_0004_1"] == 121  # the cut-off <svg> salvaged
    for case_id in cases.index:
        assert set(np.unique(case_label(raw, case_id))) == {0, 1}
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "<tirads> '' in 3.xml" in reasons["ddti_0003_1"]
    assert "5_1.jpg has no 5.xml" in reasons["ddti_0005_1"]
    assert "no polygon for image 1" in reasons["ddti_0006_1"]
    assert "6_2.jpg does not exist" in reasons["ddti_0006_2"]
    assert "7.xml is not readable XML" in reasons["ddti_0007_1"]
    assert any("1 XML file(s) with an <svg> cut off in the published copy, points read up to the cut: 4.xml" in n
               for n in report.notes)
    nnunet_verify(report.path)


def test_ddti_malignancy_target_as_test_and_cli(ddti_src, tmp_path, monkeypatch, capsys):
    report = convert_ddti(ddti_src, _opts(dataset_id=608, name="DDTI", split="test"), target="malignancy",
                          malignancy_from_tirads=True, raw_root=tmp_path / "raw")
    raw, cases = converted(report)
    assert set(cases["split"]) == {"test"} and (raw.folder / "labelsTs" / "ddti_0001_1.png").is_file()
    assert cases["class"].to_dict() == {"ddti_0001_1": "malignant", "ddti_0001_2": "malignant",
                                        "ddti_0002_1": "benign", "ddti_0004_1": "malignant", "ddti_0008_1": "benign"}
    # the TI-RADS mapping is named in cases.csv, next to the one case whose class comes from pathology
    assert cases.at["ddti_0008_1", "class_source"] == "pathology"
    assert cases.at["ddti_0001_1", "class_source"] == TIRADS_MAPPING and "4a-5 malignant" in TIRADS_MAPPING
    assert any("4 image(s) without pathology" in n for n in report.notes)
    # without the option, only pathology labels: the other images are skipped with the reason
    report = convert_ddti(ddti_src, _opts(dataset_id=608, name="DDTI"), target="malignancy", raw_root=tmp_path / "r2")
    _, cases = converted(report)
    assert cases["class"].to_dict() == {"ddti_0008_1": "benign"}
    reason = {s["case"]: s["reason"] for s in report.skipped}["ddti_0001_1"]
    assert "1.xml names no pathology in <reportbacaf>" in reason and "--malignancy-from-tirads" in reason
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "cli"))
    assert main(["convert", "DDTI", str(ddti_src), "--no-progress", "--target", "malignancy",
                 "--malignancy-from-tirads"]) == 0
    assert "Dataset608_DDTI" in capsys.readouterr().out
    assert main(["convert", "ddti", str(tmp_path / "cli"), "-d", "609", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not look like DDTI" in err and "N.xml" in err


def test_ddti_malignancy_without_any_pathology_is_refused(ddti_src, tmp_path, monkeypatch, capsys):
    """Issue 13, item 8: the published DDTI has no pathology at all; --target malignancy labelled every case from
    TI-RADS with only a note. Now one line before anything is written, naming what to use instead."""
    (ddti_src / "8.xml").write_text(_xml(8, "4b", [(1, _svg(SQUARE))]))  # the only report gone
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "ddti", str(ddti_src), "--no-progress", "--target", "malignancy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a pathology (cytology) result" in err
    assert "--target tirads" in err and "--malignancy-from-tirads" in err
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    assert main(["convert", "ddti", str(ddti_src), "--no-progress", "--malignancy-from-tirads"]) == 2
    assert "only applies to --target malignancy" in capsys.readouterr().err


def _circle(cx, cy, r, n=60, upto=1.0):
    """A freehand-like outline: n points around a circle (closing within one step), or cut after ``upto``."""
    angles = np.linspace(0, 2 * np.pi * upto, int(n * upto), endpoint=False)
    return [(round(cx + r * np.cos(a), 1), round(cy + r * np.sin(a), 1)) for a in angles]


def test_ddti_open_outline_is_skipped_and_listed(ddti_src, tmp_path):
    """Issue 13, item 7: an outline cut part-way (54_1, 176_1, 203_1 of the published copy) was filled as if closed
    by a straight edge of 106-148 px and included with only a count."""
    closed, cut = _circle(24, 20, 12), _circle(24, 20, 12, upto=0.6)
    svg = _svg(cut)
    (ddti_src / "9.xml").write_text(_xml(9, "4a", [(1, svg[:len(svg) - 10])]))  # cut inside, like the originals
    (ddti_src / "10.xml").write_text(_xml(10, "3", [(1, _svg(closed))]))
    for n in (9, 10):
        _jpeg(ddti_src / f"{n}_1.jpg", _noise(90 + n))
    gap = np.hypot(cut[-1][0] - cut[0][0], cut[-1][1] - cut[0][1])
    assert gap > OPEN_OUTLINE_PX > np.hypot(closed[-1][0] - closed[0][0], closed[-1][1] - closed[0][1])
    report = convert_ddti(ddti_src, _opts(dataset_id=608, name="DDTI"), raw_root=tmp_path / "raw")
    _, cases = converted(report)
    assert "ddti_0010_1" in cases.index and "ddti_0009_1" not in cases.index
    reason = {s["case"]: s["reason"] for s in report.skipped}["ddti_0009_1"]
    assert f"the outline of image 1 in 9.xml ends {gap:.0f} px from where it starts (cut off in the published XML)" \
        in reason and "--keep-open-outlines" in reason
    report = convert_ddti(ddti_src, _opts(dataset_id=608, name="DDTI"), keep_open_outlines=True,
                          raw_root=tmp_path / "raw2")
    _, cases = converted(report)
    assert "ddti_0009_1" in cases.index
    assert any(f"1 image(s) kept with an open outline (--keep-open-outlines), filled as if closed by a straight "
               f"edge: ddti_0009_1 ({gap:.0f} px)" in n for n in report.notes)


# SHAPE is 32 rows x 40 columns (the image spans y 0..32): a strip below the scan, y 26..38, half of it outside
STRIP = [(5, 26), (25, 26), (25, 38), (5, 38)]


def test_ddti_outline_outside_the_image_finds_points_and_area():
    """Which outline, how many of its points and how much of its area lie outside the image's pixel grid."""
    edge = [(0, 0), (40, 0), (40, 32), (0, 32)]  # the image's own edges: inside (a lesion outlined to the edge)
    found = find_outside_outlines([SQUARE, [(1, 40), (2, 41)], STRIP, edge], 40, 32)  # a 2-point line: not drawn
    assert [(o.number, o.of, o.points_outside, o.points) for o in found] == [(3, 4, 2, 4)]
    assert found[0].area_outside == pytest.approx(0.5)  # y 26..32 of 26..38
    assert found[0].describe() == "outline 3 of 4 (2 of 4 points, 50% of its area outside the 40x32 image)"
    assert find_outside_outlines([[(-0.5, 3), (10, 3), (10, 9)]], 40, 32)[0].area_outside == pytest.approx(
        0.5 * 0.5 * 6 * (0.5 / 10.5) / (0.5 * 10.5 * 6))  # the sliver left of x = 0
    away = find_outside_outlines([[(50, 50), (60, 50), (60, 60)]], 40, 32)
    assert away[0].area_outside == 1.0 and away[0].points_outside == 3


@pytest.fixture
def ddti_outside_src(ddti_src):
    """11_1: the nodule's outline and a second outline over the text strip below the scan, partly outside the image
    (338_2 of the published copy); 12_1: its only outline partly outside."""
    (ddti_src / "11.xml").write_text(_xml(11, "4b", [(1, _svg(SQUARE, STRIP))]))
    (ddti_src / "12.xml").write_text(_xml(12, "3", [(1, _svg(STRIP))]))
    for n in (11, 12):
        _jpeg(ddti_src / f"{n}_1.jpg", _noise(110 + n))
    return ddti_src


def test_ddti_outline_outside_the_image_skips_the_case_by_default(ddti_outside_src, tmp_path):
    """Issue 25, item 7a: an outline partly outside its image was merged into the lesion and clipped without a
    word. By default the image is skipped, the reason naming the outline, its points and area outside."""
    report = convert_ddti(ddti_outside_src, _opts(dataset_id=608, name="DDTI"), raw_root=tmp_path / "raw")
    _, cases = converted(report)
    assert "ddti_0011_1" not in cases.index and "ddti_0012_1" not in cases.index
    assert {"ddti_0001_1", "ddti_0002_1", "ddti_0004_1"} <= set(cases.index)  # outlines inside: unchanged
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert reasons["ddti_0011_1"].startswith(
        "image 1 in 11.xml: outline 2 of 2 (2 of 4 points, 50% of its area outside the 40x32 image)")
    assert "--outside-outlines drop-outline drops it, keep keeps it clipped" in reasons["ddti_0011_1"]
    assert "outline 1 of 1 (2 of 4 points" in reasons["ddti_0012_1"]
    assert not any("outside" in n for n in report.notes)


def test_ddti_outline_outside_the_image_dropped_or_kept_on_request(ddti_outside_src, tmp_path, monkeypatch, capsys):
    """drop-outline keeps the image with its other outlines (an image left without one is skipped); keep fills it
    clipped, as before; either is listed in the report."""
    report = convert_ddti(ddti_outside_src, _opts(dataset_id=608, name="DDTI"), outside_outlines="drop-outline",
                          raw_root=tmp_path / "drop")
    raw, cases = converted(report)
    assert int(case_label(raw, "ddti_0011_1").sum()) == 121 and cases.at["ddti_0011_1", "polygons"] == "1"
    assert "no outline inside the image is left" in {s["case"]: s["reason"] for s in report.skipped}["ddti_0012_1"]
    assert ("1 outline(s) partly outside their image dropped (--outside-outlines drop-outline), the image kept with "
            "its other outlines: ddti_0011_1 outline 2 of 2 (2 of 4 points, 50% of its area outside the 40x32 "
            "image)") in report.notes
    report = convert_ddti(ddti_outside_src, _opts(dataset_id=608, name="DDTI"), outside_outlines="keep",
                          raw_root=tmp_path / "keep")
    raw, cases = converted(report)
    clipped = int(rasterize([STRIP], SHAPE).sum())
    assert clipped == 21 * 6  # rows 26..31 of the strip (columns 5..25), its outline included
    assert int(case_label(raw, "ddti_0011_1").sum()) == 121 + clipped and cases.at["ddti_0011_1", "polygons"] == "2"
    assert int(case_label(raw, "ddti_0012_1").sum()) == clipped
    assert any(n.startswith("2 outline(s) partly outside their image kept, clipped at the edge (--outside-outlines "
                            "keep): ddti_0011_1 outline 2 of 2") for n in report.notes)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "cli"))
    assert main(["convert", "ddti", str(ddti_outside_src), "--no-progress", "--outside-outlines", "drop-outline"]) == 0
    assert "1 outline(s) partly outside their image dropped" in capsys.readouterr().out
    with pytest.raises(NnunetMtlError, match="--outside-outlines 'clip': expected one of skip-case, drop-outline, "
                                             "keep"):
        convert_ddti(ddti_outside_src, _opts(dataset_id=608, name="DDTI"), outside_outlines="clip",
                     raw_root=tmp_path / "bad")
