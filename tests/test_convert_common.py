"""The shared layer of dataset_conversion (common, options, driver, duplicates, report, registry): options, layout
errors, parallel conversion, duplicates, report, atomicity, the converter names."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
from PIL import Image

import dataset_conversion
from dataset_conversion import common, duplicates, registry
from dataset_conversion.common import (Case, CaseStream, Skipped, SkipCase, column_name, find_layout, list_files,
                                       load_files, merge_masks, read_image, spacing_mm)
from dataset_conversion.driver import add_converter, convert, convert_source
from dataset_conversion.duplicates import difference_hash, near_duplicate_pairs
from dataset_conversion.options import add_common_arguments, class_labels_for, options_from_args
from dataset_conversion.report import REPORT_FILE, ConversionReport
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import ContractError, NnunetMtlError
from tests.convert_helpers import convert_options

LABELS = {"benign": 0, "malignant": 1}


def _noise(seed, shape=(40, 48)):
    """Random texture: distinct images get distant difference hashes (flat images would all hash alike)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _mask(shape=(40, 48), box=(10, 20, 12, 30)):
    m = np.zeros(shape, np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = 255
    return m


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _case(src, name, image, cls="benign", patient=None, masks=None, lesion=True, **kw):
    """Write the files of one source case and return its Case."""
    img = _png(src / f"{name}.png", image)
    if masks is None:
        masks = [_mask(image.shape[:2])] if lesion else []
    paths = tuple(_png(src / f"{name}_mask{i}.png", m) for i, m in enumerate(masks))
    return Case(name, cls, patient or name, image=img, masks=paths, lesion=lesion, source=f"{name}.png", **kw)


_opts = partial(convert_options, dataset_id=9, name="Fx")


def _convert(cases, root, labels=LABELS, **kw):
    report = ConversionReport("fixture", "src")
    path = convert(cases, _opts(**kw), report, class_labels=labels, raw_root=root)
    return path, report


def _left(root):
    return sorted(p.name for p in root.iterdir())


# --- options, layout ----------------------------------------------------------------------------------------
def test_common_arguments_defaults_and_resolution():
    p = argparse.ArgumentParser()
    add_common_arguments(p, 601, "BrEaST")
    o = options_from_args(p.parse_args([]))
    assert (o.dataset_id, o.name, o.split, o.normal, o.add_to_existing, o.overwrite) == (601, "BrEaST", "train",
                                                                                          "exclude", False, False)
    assert 1 <= o.num_processes <= 2 and o.progress
    o = options_from_args(p.parse_args(["--add-to-existing", "-d", "5", "-j", "3", "--no-progress"]))
    assert (o.split, o.dataset_id, o.num_processes, o.progress) == ("test", 5, 3, False)
    assert options_from_args(p.parse_args(["--as", "test", "--normal", "include"])).normal == "include"
    with pytest.raises(SystemExit):
        p.parse_args(["--as", "official"])  # only datasets with a published split offer it
    q = argparse.ArgumentParser()
    add_common_arguments(q, 1, "X", default_split="official")
    assert options_from_args(q.parse_args([])).split == "official"
    assert options_from_args(q.parse_args(["--add-to-existing"])).split == "test"
    t = argparse.ArgumentParser()
    add_common_arguments(t, 1, "X", default_split="test")  # an external test set by default (AIMI)
    assert options_from_args(t.parse_args([])).split == "test"
    assert options_from_args(t.parse_args(["--as", "train"])).split == "train"
    with pytest.raises(SystemExit):
        t.parse_args(["--as", "official"])
    with pytest.raises(ValueError, match="default_split 'val'"):
        add_common_arguments(argparse.ArgumentParser(), 1, "X", default_split="val")
    with pytest.raises(NnunetMtlError, match="--add-to-existing and --overwrite"):
        options_from_args(p.parse_args(["--add-to-existing", "--overwrite"]))
    with pytest.raises(NnunetMtlError, match="-j 0"):
        options_from_args(p.parse_args(["-j", "0"]))


def test_class_labels_for_normal():
    assert class_labels_for(["benign", "malignant"], "exclude") == LABELS
    assert class_labels_for(["benign", "malignant"], "include") == {"benign": 0, "malignant": 1, "normal": 2}


def test_find_layout(tmp_path):
    (tmp_path / "ds" / "inner" / "original").mkdir(parents=True)
    (tmp_path / "ds" / "inner" / "sheet.xlsx").write_bytes(b"")
    found = find_layout(tmp_path / "ds", ["original/", "*.xlsx"], dataset="X", expected="original/ and a sheet")
    assert found == tmp_path / "ds" / "inner"  # one level down, as archives often unpack
    with pytest.raises(NnunetMtlError) as e:
        find_layout(tmp_path / "ds" / "inner" / "original", ["original/", "*.xlsx"], dataset="X",
                    expected="original/NNN.png and a sheet")
    msg = str(e.value)
    assert "\n" not in msg and "original" in msg and "expected original/NNN.png and a sheet" in msg
    with pytest.raises(NnunetMtlError, match="is not a folder; expected the X folder"):
        find_layout(tmp_path / "missing", ["a/"], dataset="X", expected="a/")
    # file patterns match case-insensitively (INFO.csv, *.JPG); dot files never
    (tmp_path / "ds" / "inner" / "sheet.xlsx").rename(tmp_path / "ds" / "inner" / "SHEET.XLSX")
    (tmp_path / "ds" / "inner" / "._x.xlsx").write_bytes(b"")
    assert find_layout(tmp_path / "ds", ["original/", "sheet.xlsx"], dataset="X", expected="") == found
    assert list_files(found, "*.xlsx") == [found / "SHEET.XLSX"] and list_files(found, "*/") == [found / "original"]


def test_helpers(tmp_path):
    assert column_name("Pixel_size") == "pixel_size" and column_name("CaseID") == "case_id"
    assert column_name("Tissue composition ") == "tissue_composition"
    assert spacing_mm(0.0078125, "cm") == (0.078125, 0.078125) and spacing_mm(None) is None
    a, b = _mask(), _mask(box=(0, 5, 0, 5))
    merged = merge_masks([a, b > 0], ["a.png", "b.png"])
    assert merged.dtype == np.uint8 and merged.sum() == (a > 0).sum() + 25  # logical OR
    with pytest.raises(SkipCase, match=r"c.png is 10x9 px but a.png is 48x40 "
                                        r"\(the mask looks cropped relative to its image\); "
                                        r"expected a mask of the image's size"):
        merge_masks([a, np.zeros((9, 10), np.uint8)], ["a.png", "c.png"])
    one_bit = tmp_path / "m.png"
    Image.fromarray(_mask() > 0).save(one_bit)
    assert read_image(one_bit).dtype == bool
    with pytest.raises(SkipCase, match="nope.png does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(SkipCase, match="bad.png is not a readable image"):
        read_image(tmp_path / "bad.png")
    report = ConversionReport("x", "y")
    assert report.number("c", "Age", "57", integer=True, low=0, high=120) == 57
    assert report.number("c", "Age", "not available") is None and report.number("c", "Age", None) is None
    assert report.number("c", "Age", 2005, low=0, high=120) is None
    assert report.number("c", "Pixel", "0,5") == 0.5
    assert report.number("c", "Age", "old") is None
    assert [b["value"] for b in report.bad_values] == [2005, "old"]


def test_near_duplicate_pairs_and_hash():
    a = _noise(1, (64, 64))
    brighter = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    ha, hb, hc = difference_hash(a), difference_hash(brighter), difference_hash(_noise(2, (64, 64)))
    assert bin(ha ^ hb).count("1") <= 8 < bin(ha ^ hc).count("1")
    assert near_duplicate_pairs([ha, hb, hc], ["p1", "p2", "p3"]) == (1, [(0, 1, bin(ha ^ hb).count("1"))])
    assert near_duplicate_pairs([ha, hb, hc], ["p1", "p1", "p3"]) == (0, [])  # one patient: expected, not listed
    assert near_duplicate_pairs([], []) == (0, [])


# --- the driver ----------------------------------------------------------------------------------------------
def test_driver_add_converter_and_convert_source(tmp_path, monkeypatch, capsys):
    """A converter is add_converter + convert_source: the subcommand passes its own options on, the driver
    resolves nnUNet_raw before any work, streams a CaseStream, closes the loader and the command prints the report."""
    src = tmp_path / "src"
    cases = [_case(src, "c1", _noise(1)), _case(src, "c2", _noise(2), "malignant"), Skipped("c3", "no class")]
    listed, closed = [], []

    class Loader:
        def __call__(self, case):
            return load_files(case)

        def close(self):
            closed.append(True)

    def convert_fx(source, options, *, flavour="plain", raw_root=None):
        def fx_cases(report):
            listed.append(source)
            report.note(f"flavour {flavour}")
            return CaseStream(iter(cases), len(cases))

        return convert_source("FX", source, fx_cases, options, classes=("benign", "malignant"),
                              description="fixture", raw_root=raw_root, loader=Loader())

    parser = argparse.ArgumentParser()
    p = add_converter(parser.add_subparsers(), "fx", convert_fx, aliases=["FX"], help="h", description="d",
                      source_help="s", default_id=9, default_name="Fx", default_split="test", passed=("flavour",))
    p.add_argument("--flavour", default="plain")
    monkeypatch.delenv("nnUNet_raw", raising=False)
    args = parser.parse_args(["FX", str(src), "--flavour", "x", "-j", "1", "--no-progress"])
    with pytest.raises(NnunetMtlError, match="nnUNet_raw"):
        args.func(args)
    assert listed == []  # nothing read before the environment is checked
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert args.func(args) == 0 and closed == [True]
    out = capsys.readouterr().out
    assert out.startswith(f"FX: {src} -> Dataset009_Fx") and "note: flavour x" in out and "skipped: 1" in out
    raw = load_raw_dataset(tmp_path / "raw" / "Dataset009_Fx")
    assert raw.cases["case_id"].tolist() == ["c1", "c2"] and set(raw.cases["split"]) == {"test"}


# --- conversion ------------------------------------------------------------------------------------------
def test_convert_writes_dataset_and_report(tmp_path):
    src, root = tmp_path / "src", tmp_path / "raw"
    rgba = np.dstack([_noise(3)] * 3 + [np.full((40, 48), 255, np.uint8)])
    rgba[:, :8, 3] = 0  # transparent strip with non-zero colour underneath
    cases = [_case(src, "c1", _noise(1), "benign", spacing_mm=(0.1, 0.1), clinical={"age": 50}),
             _case(src, "c2", rgba, "malignant", masks=[_mask(), _mask(box=(0, 4, 0, 4))]),
             Skipped("c9", "no class in the sheet")]
    path, report = _convert(cases, root)
    raw = load_raw_dataset(path)
    assert raw.cases["case_id"].tolist() == ["c1", "c2"] and raw.cases["age"].tolist() == ["50", ""]
    image = np.array(Image.open(path / "imagesTr" / "c2_0000.png"))
    assert image.ndim == 2 and (image[:, :8] == 0).all() and image[:, 8:].any()
    label = np.array(Image.open(path / "labelsTr" / "c2.png"))
    assert set(np.unique(label)) == {0, 1} and label.sum() == 10 * 18 + 16  # both masks merged
    doc = json.loads((path / REPORT_FILE).read_text())
    run = doc["conversions"][0]
    assert run["skipped"] == [{"case": "c9", "reason": "no class in the sheet"}]
    assert run["counts"]["train"] == {"benign": 1, "malignant": 1} and run["options"]["normal"] == "exclude"
    text = report.format()
    assert "c9: no class in the sheet" in text and "total" in text and str(path) in text
    assert _left(root) == ["Dataset009_Fx"]


def test_case_problems_are_skipped_with_reasons(tmp_path):
    src = tmp_path / "src"
    ok = _case(src, "ok", _noise(1))
    missing = Case("gone", "benign", "p", image=src / "gone.png", masks=(src / "gone_m.png",), source="gone.png")
    wrong = _case(src, "wrong", _noise(2), masks=[_mask((30, 30))])
    empty = _case(src, "empty", _noise(3), masks=[np.zeros((40, 48), np.uint8)])
    path, report = _convert([ok, missing, wrong, empty], tmp_path / "raw")
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"gone", "wrong", "empty"}
    assert "gone.png does not exist" in reasons["gone"]
    assert "wrong_mask0.png is 30x30 px but" in reasons["wrong"] and "wrong.png is 48x40" in reasons["wrong"]
    assert "lesion mask is empty" in reasons["empty"]
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["ok"]
    assert sorted(p.name for p in (path / "imagesTr").iterdir()) == ["ok_0000.png"]  # no stray files


@pytest.mark.parametrize("normal", ["exclude", "include"])
def test_normal_include_exclude(tmp_path, normal):
    src = tmp_path / "src"
    cases = [_case(src, "l", _noise(1)), _case(src, "n", _noise(2), "normal", lesion=False)]
    path, report = _convert(cases, tmp_path / "raw", class_labels_for(["benign", "malignant"], normal),
                            normal=normal)
    raw = load_raw_dataset(path)
    if normal == "exclude":
        assert raw.cases["case_id"].tolist() == ["l"] and "normal" not in raw.class_labels
        assert "--normal include" in report.skipped[0]["reason"]
    else:
        assert raw.cases["class"].tolist() == ["benign", "normal"] and raw.class_labels["normal"] == 2
        assert not np.array(Image.open(path / "labelsTr" / "n.png")).any()


def test_exact_duplicates_policy(tmp_path):
    src = tmp_path / "src"
    img, other = _noise(1), _noise(2)
    cases = [_case(src, "a1", img, "benign"), _case(src, "a2", img.copy(), "benign"),      # same class: keep a1
             _case(src, "b1", other, "benign"), _case(src, "b2", other, "malignant"),      # different: drop all
             _case(src, "b3", other, "benign"), _case(src, "c", _noise(3), "malignant")]
    path, report = _convert(cases, tmp_path / "raw")
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["a1", "c"]
    assert sorted(p.name for p in (path / "labelsTr").iterdir()) == ["a1.png", "c.png"]
    groups = {tuple(d["cases"]): d["action"] for d in report.duplicates}
    assert "a1 kept" in groups[("a1", "a2")]
    assert "all dropped as ambiguous" in groups[("b1", "b2", "b3")]


def test_near_duplicates_listed_not_removed(tmp_path):
    src = tmp_path / "src"
    img = _noise(1)
    near = img.copy()
    near[0, 0] ^= 1  # one pixel differs: not an exact duplicate
    cases = [_case(src, "x", img, patient="p1"), _case(src, "y", near, patient="p2"),
             _case(src, "z", near.T.copy(), patient="p3", masks=[_mask((48, 40), (1, 9, 1, 9))])]
    path, report = _convert(cases, tmp_path / "raw")
    assert len(load_raw_dataset(path).cases) == 3
    assert report.near_duplicates_total == 1 and report.near_duplicates[0]["a"] == "x"
    assert report.near_duplicates[0]["b"] == "y" and not report.duplicates


def test_existing_dataset_not_overwritten_and_overwrite(tmp_path):
    src, root = tmp_path / "src", tmp_path / "raw"
    path, _ = _convert([_case(src, "a", _noise(1))], root)
    before = (path / "cases.csv").read_bytes()
    with pytest.raises(ContractError, match="already exists .*--overwrite"):
        _convert([_case(src, "b", _noise(2))], root)
    assert (path / "cases.csv").read_bytes() == before and _left(root) == ["Dataset009_Fx"]
    _convert([_case(src, "b", _noise(2))], root, overwrite=True)
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["b"]


def test_as_test_and_add_to_existing(tmp_path):
    src, root = tmp_path / "src", tmp_path / "raw"
    test_only, _ = _convert([_case(src, "t", _noise(1))], tmp_path / "raw_t", split="test")
    assert load_raw_dataset(test_only).cases["split"].tolist() == ["test"]
    assert (test_only / "imagesTs" / "t_0000.png").is_file()

    path, _ = _convert([_case(src, "a", _noise(1)), _case(src, "b", _noise(2))], root)
    extra = [_case(src, "x", _noise(3), "malignant"), _case(src, "copy_of_a", _noise(1))]
    added, report = _convert(extra, root, add_to_existing=True, split="test", name="Other")
    assert added == path  # the existing folder keeps its name
    raw = load_raw_dataset(path)
    assert raw.cases[["case_id", "split"]].values.tolist() == [["a", "train"], ["b", "train"], ["x", "test"]]
    assert "already in the dataset as a" in report.duplicates[0]["action"]  # leakage check against the train set
    runs = json.loads((path / REPORT_FILE).read_text())["conversions"]
    assert len(runs) == 2 and runs[1]["added"]["test"] == {"benign": 0, "malignant": 1}
    with pytest.raises(ContractError, match="expected the same classes"):
        _convert(extra, root, class_labels_for(["benign", "malignant"], "include"), add_to_existing=True)
    assert _left(root) == ["Dataset009_Fx"]


def test_no_case_converted_is_an_error(tmp_path):
    with pytest.raises(NnunetMtlError, match="no case could be converted .*first: unusable"):
        _convert([Skipped("a", "unusable")], tmp_path)
    assert _left(tmp_path) == []


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    src, root = tmp_path / "src", tmp_path / "raw"
    cases = [_case(src, f"c{i}", _noise(i)) for i in range(6)]
    real = common.read_image

    def failing(path):
        if "c3" in str(path):
            raise RuntimeError("disk on fire")
        return real(path)

    monkeypatch.setattr(common, "read_image", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _convert(cases, root)
    assert _left(root) == []  # no dataset, no temporary folder

    monkeypatch.setattr(common, "read_image", lambda p: (_ for _ in ()).throw(KeyboardInterrupt)
                        if "c2" in str(p) else real(p))
    with pytest.raises(KeyboardInterrupt):
        _convert(cases, root)
    assert _left(root) == []


def failing_loader(case):
    """A loader for the worker processes (module level: it is pickled)."""
    if case.case_id == "c5":
        raise RuntimeError("worker failed")
    return load_files(case)


def test_parallel_order_and_failures(tmp_path, monkeypatch):
    src, root = tmp_path / "src", tmp_path / "raw"
    cases = [_case(src, f"c{i}", _noise(i), "benign" if i % 2 else "malignant") for i in range(12)]
    serial, _ = _convert(cases, tmp_path / "serial")
    parallel, _ = _convert(cases, root, num_processes=2)
    assert (serial / "cases.csv").read_bytes() == (parallel / "cases.csv").read_bytes()  # deterministic order
    files = sorted(p.relative_to(parallel) for p in parallel.rglob("*.png"))
    assert files == sorted(p.relative_to(serial) for p in serial.rglob("*.png"))
    assert all((parallel / f).read_bytes() == (serial / f).read_bytes() for f in files)

    report = ConversionReport("fixture", "src")
    with pytest.raises(RuntimeError, match="worker failed"):
        convert(cases, _opts(num_processes=2, overwrite=True), report, class_labels=LABELS, raw_root=root,
                loader=failing_loader, chunksize=2)
    assert _left(root) == ["Dataset009_Fx"]  # the old dataset is kept, no temporary folder
    calls = []

    def interrupt(self, case, split, done):  # Ctrl-C in the main process while workers run
        calls.append(case.case_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return True

    monkeypatch.setattr(duplicates.Duplicates, "admit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(cases, _opts(num_processes=2, overwrite=True), ConversionReport("f", "s"), class_labels=LABELS,
                raw_root=root, chunksize=1)
    assert _left(root) == ["Dataset009_Fx"]
    assert load_raw_dataset(root / "Dataset009_Fx").cases["case_id"].tolist()[:2] == ["c0", "c1"]


def test_duplicates_keep_keeps_every_copy_of_the_source_as_published(tmp_path):
    src = tmp_path / "src"
    img, other = _noise(1), _noise(2)
    cases = [_case(src, "a1", img, "benign"), _case(src, "a2", img.copy(), "benign"),
             _case(src, "b1", other, "benign"), _case(src, "b2", other, "malignant"), _case(src, "c", _noise(3))]
    path, report = _convert(cases, tmp_path / "raw", duplicates="keep")
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["a1", "a2", "b1", "b2", "c"]
    groups = {tuple(d["cases"]): d["action"] for d in report.duplicates}
    assert groups[("a1", "a2")] == "identical images, all kept (--duplicates keep)"
    assert "their classes differ (benign, malignant)" in groups[("b1", "b2")]
    # a copy of a case already in the dataset is leakage: still skipped
    more = [_case(src, "a3", img.copy(), "benign"), _case(src, "d", _noise(4))]
    report2 = ConversionReport("fixture", "src")
    convert(more, _opts(duplicates="keep", add_to_existing=True, split="test"), report2, class_labels=LABELS,
            raw_root=tmp_path / "raw")
    assert "already in the dataset as a1" in report2.duplicates[0]["action"]
    with pytest.raises(NnunetMtlError, match="--duplicates 'all'"):
        _opts(duplicates="all")


def test_resize_makes_square_images_keeps_masks_binary_and_scales_the_spacing(tmp_path):
    src = tmp_path / "src"
    image = _noise(1, (40, 80))
    cases = [_case(src, "wide", image, spacing_mm=(0.1, 0.2), masks=[_mask((40, 80), (10, 30, 20, 60))]),
             _case(src, "speck", _noise(2, (40, 80)), masks=[_mask((40, 80), (5, 6, 5, 6))])]  # 1 px: vanishes
    path, report = _convert(cases, tmp_path / "raw", resize=32)
    raw = load_raw_dataset(path)
    image_out = np.array(Image.open(path / "imagesTr" / "wide_0000.png"))
    label_out = np.array(Image.open(path / "labelsTr" / "wide.png"))
    assert image_out.shape == label_out.shape == (32, 32) and set(np.unique(label_out)) == {0, 1}
    assert label_out.sum() == pytest.approx(32 * 32 * (20 * 40) / (40 * 80), rel=0.1)
    assert raw.spacing_mm("wide") == pytest.approx((0.1 * 40 / 32, 0.2 * 80 / 32))
    assert "vanishes when 80x40 is resized to 32x32" in {s["case"]: s["reason"] for s in report.skipped}["speck"]
    assert any("resized to 32x32" in n for n in report.notes) and report.options["resize"] == 32
    for bad in (8, 100000):
        with pytest.raises(NnunetMtlError, match=f"--resize {bad}: expected a size from 32 to 4096"):
            _opts(resize=bad)


# --- label conflicts (issue 25, item 7b) ----------------------------------------------------------------------
def _near(image):
    """A near-identical copy (one pixel off by one: not an exact duplicate, the same difference hash)."""
    near = image.copy()
    near[0, 0] ^= 1
    return near


def _conflict_cases(src):
    """x / y: one scan filed as benign and as malignant (near-identical); w / z: a near-duplicate pair of one
    class; c: unrelated."""
    scan, pair = _noise(1), _noise(2)
    return [_case(src, "x", scan, "benign"), _case(src, "w", pair, "benign"),
            _case(src, "y", _near(scan), "malignant"), _case(src, "z", _near(pair), "benign"),
            _case(src, "c", _noise(3), "malignant")]


def test_label_conflicts_are_named_in_the_report_and_kept_by_default(tmp_path):
    """BUSI files one scan under both classes with a different crop: the report listed it only among the
    near-duplicates. Near-duplicates whose classes differ are now a section of their own, kept by default."""
    src = tmp_path / "src"
    d = bin(difference_hash(_noise(1)) ^ difference_hash(_near(_noise(1)))).count("1")
    path, report = _convert(_conflict_cases(src), tmp_path / "raw")
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["x", "w", "y", "z", "c"]  # nothing removed
    assert report.label_conflicts_total == 1 and report.label_conflicts_by_distance == {d: 1}
    assert report.label_conflicts == [{"a": "x", "b": "y", "distance": d, "classes": ["benign", "malignant"]}]
    assert report.near_duplicates_total == 2 and report.label_conflicts_dropped == []
    run = json.loads((path / REPORT_FILE).read_text())["conversions"][0]
    assert run["label_conflicts"] == {
        "max_distance_bits": duplicates.NEAR_DUPLICATE_MAX_BITS,
        "scope": "near-duplicates of different patients whose classes differ", "policy": "keep", "total": 1,
        "by_distance": {str(d): 1}, "pairs": report.label_conflicts, "dropped": []}
    assert run["options"]["label_conflicts"] == "keep"
    text = report.format()
    assert (f"label conflicts (near-duplicates whose classes differ; all kept, --label-conflicts drop drops them; "
            f"pairs at {d} bits: 1): 1\n  x (benign) ~ y (malignant) ({d} bits)") in text


def test_label_conflicts_drop(tmp_path):
    """--label-conflicts drop: both cases of the conflict are gone (files and rows), the same-class near-duplicate
    pair stays, and the near-duplicates listed are those of the dataset written."""
    src = tmp_path / "src"
    path, report = _convert(_conflict_cases(src), tmp_path / "raw", label_conflicts="drop")
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["w", "z", "c"]
    assert sorted(p.name for p in (path / "imagesTr").iterdir()) == ["c_0000.png", "w_0000.png", "z_0000.png"]
    assert report.label_conflicts_dropped == ["x", "y"] and report.label_conflicts_total == 1
    assert [(p["a"], p["b"]) for p in report.near_duplicates] == [("w", "z")]
    assert report.added["train"] == {"benign": 2, "malignant": 1}
    run = json.loads((path / REPORT_FILE).read_text())["conversions"][0]
    assert run["label_conflicts"]["policy"] == "drop" and run["label_conflicts"]["dropped"] == ["x", "y"]
    assert "label conflicts (near-duplicates whose classes differ; 2 case(s) dropped, --label-conflicts drop" \
        in report.format()
    # every case in a conflict: nothing left is one line that says why
    with pytest.raises(NnunetMtlError, match=r"no case could be converted \(0 skipped, 2 dropped as label conflicts"):
        _convert([_case(src, "x", _noise(1)), _case(src, "y", _near(_noise(1)), "malignant")],
                 tmp_path / "raw2", label_conflicts="drop")


def test_label_conflicts_drop_never_changes_the_existing_dataset(tmp_path):
    """Adding a test set with --label-conflicts drop: of a conflict with a case already there, only the new case
    is dropped, and the report says why the other stays."""
    src, root = tmp_path / "src", tmp_path / "raw"
    path, _ = _convert([_case(src, "x", _noise(1)), _case(src, "c", _noise(3), "malignant")], root)
    _, report = _convert([_case(src, "y", _near(_noise(1)), "malignant"), _case(src, "t", _noise(4))], root,
                         add_to_existing=True, split="test", label_conflicts="drop")
    assert load_raw_dataset(path).cases["case_id"].tolist() == ["x", "c", "t"]
    assert report.label_conflicts_dropped == ["y"] and report.label_conflicts[0]["classes"] == ["benign", "malignant"]
    assert any("1 case(s) already in the dataset are in a label conflict: kept" in n for n in report.notes)


def test_label_conflicts_option():
    p = argparse.ArgumentParser()
    add_common_arguments(p, 1, "X")
    assert options_from_args(p.parse_args([])).label_conflicts == "keep"
    assert options_from_args(p.parse_args(["--label-conflicts", "drop"])).label_conflicts == "drop"
    with pytest.raises(SystemExit):
        p.parse_args(["--label-conflicts", "merge"])
    with pytest.raises(NnunetMtlError, match="--label-conflicts 'merge': expected one of keep, drop"):
        _opts(label_conflicts="merge")


def test_scan_near_duplicates_counts_every_conflict_in_blocks(monkeypatch):
    """Conflicts are counted, histogrammed and marked over all pairs (not only the pairs listed), block by block,
    as a comparison of all pairs at once finds them."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2 ** 63, 12, dtype=np.uint64)
    hashes = [int(base[i % 12]) ^ (1 << int(rng.integers(0, 64))) for i in range(600)]
    groups = [str(i % 29) for i in range(600)]
    labels = [str(i % 5) if i % 12 else "0" for i in range(600)]  # hashes of base 0 share one class: no conflict
    h, g, lab = np.array(hashes, dtype=np.uint64), np.array(groups), np.array(labels)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    near = np.triu(dist <= duplicates.NEAR_DUPLICATE_MAX_BITS, 1) & (g[:, None] != g[None, :])
    conflict = near & (lab[:, None] != lab[None, :])
    monkeypatch.setattr(duplicates, "PAIR_BLOCK_BYTES", 32 * 600 * 5)  # 5 rows a block
    scan = duplicates.scan_near_duplicates(hashes, groups, labels, limit=10)
    assert scan.total == int(near.sum()) and scan.conflicts_total == int(conflict.sum()) > 10
    ii, jj = np.nonzero(conflict)
    assert scan.conflicts == [(i, j, int(dist[i, j])) for i, j in zip(ii.tolist(), jj.tolist())][:10]
    assert np.array_equal(scan.in_conflict, conflict.any(axis=0) | conflict.any(axis=1))
    assert 0 < scan.in_conflict.sum() < 600
    assert sum(scan.conflicts_by_distance.values()) == scan.conflicts_total
    assert near_duplicate_pairs(hashes, groups, limit=10) == (scan.total, scan.pairs)


# --- the converter names: dataset_conversion.registry, the CLI and the recipe schema -----------------------------
def _sub_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The sub-command names of ``parser`` (aliases aside: a name and its aliases map to one parser), in order."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names, seen = [], set()
    for name, sub in action.choices.items():
        if id(sub) not in seen:
            seen.add(id(sub))
            names.append(name)
    return names


def _registered_by(register) -> list[str]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return _sub_commands(parser)


def _convert_parser(cli_convert) -> argparse.ArgumentParser:
    """The parser of ``nnunet_mtl convert`` as the CLI builds it."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    cli_convert.register(commands)
    return commands.choices["convert"]


def test_recipe_schema_names_the_cli_converters():
    """A recipe's converter = "..." accepts exactly the sources of ``nnunet_mtl convert``, in its order."""
    from nnunet_mtl.cli import convert as cli_convert
    from nnunet_mtl.recipes import schema

    cli = _sub_commands(_convert_parser(cli_convert))
    assert cli == list(registry.converter_names()) == list(schema.CONVERTERS)
    assert cli[0] == "synthetic" and {"aimi", "breast", "udiat", "bus-uclm", "busi", "ddti", "thyroidxl",
                                      "tn3k"} <= set(cli)


def test_registry_lists_each_converter_module_and_its_names():
    """Every dataset_conversion module with register_converters is in the registry, and each registry module
    registers exactly the names listed for it (a new converter needs its registry line)."""
    with_register = {f"dataset_conversion.{info.name}" for info in pkgutil.iter_modules(dataset_conversion.__path__)
                     if hasattr(importlib.import_module(f"dataset_conversion.{info.name}"), "register_converters")}
    modules = registry.converter_modules()
    assert with_register == set(modules) - {"nnunet_mtl.cli.convert"}
    assert modules[0] == "nnunet_mtl.cli.convert" and len(modules) == len(set(modules))
    for module in modules:
        names = _registered_by(importlib.import_module(module).register_converters)
        assert names == [name for name, owner in registry.CONVERTERS.items() if owner == module], module


def test_registry_imports_nothing_heavy():
    """The recipe schema reads the names without loading a converter (or numpy)."""
    code = ("import sys, dataset_conversion.registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'dataset_conversion')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['dataset_conversion', 'dataset_conversion.registry']"
