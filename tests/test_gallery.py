"""The case gallery (``nnunet_mtl gallery``): every case on the page with evaluate's numbers, worst Dice first, the
filters and sorts of the URL hash, escaped text, thin outlines, one-line errors; and in a real headless Chromium
(skipped without one): the page's script re-orders and filters the cards, and the images with their outlines show."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import gallery
from nnunet_mtl.evaluation.gallery import (OVERLAP_COLOUR, PREDICTION_COLOUR, REFERENCE_COLOUR, outline,
                                           render_overlay, write_gallery)

SHAPE = (60, 80)
DATASET = "731"


def _square(top: int, left: int, size: int, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def _image(seed: int, shape=SHAPE) -> np.ndarray:
    """Speckle-like texture with a darker lesion-ish region, so the picture is not flat."""
    rng = np.random.default_rng(seed)
    img = rng.normal(110, 30, shape)
    img[15:40, 20:50] -= 50
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def make_dataset(root: Path, malignant: str = "malignant", odd_case: str | None = None) -> dict:
    """A raw dataset DatasetNNN_Gallery (imagesTs, labelsTs, cases.csv, dataset.json) and a prediction folder
    (masks + class_predictions.csv) of five cases with known Dice and two misclassified ones."""
    raw = root / "raw"
    ds = raw / f"Dataset{DATASET}_Gallery"
    images, labels, pred = ds / "imagesTs", ds / "labelsTs", root / "pred"
    for d in (images, labels, pred):
        d.mkdir(parents=True)
    cases = {  # case: (prediction, reference, reference class, (p_benign, p_malignant))
        "case_a": (_square(10, 10, 20), _square(10, 10, 20), "benign", (0.9, 0.1)),          # Dice 1
        "case_b": (_square(10, 10, 20), _square(10, 20, 20), malignant, (0.6, 0.4)),         # 0.5, misclassified
        "case_c": (np.zeros(SHAPE), _square(20, 30, 16), malignant, (0.2, 0.8)),             # 0 (empty)
        "case_d": (_square(10, 10, 20), _square(15, 10, 20), "benign", (0.45, 0.55)),        # 0.75, misclassified
        "case_e": (_square(30, 40, 12), _square(30, 42, 12), malignant, (0.3, 0.7)),         # 0.8333
    }
    if odd_case:
        cases[odd_case] = (_square(5, 5, 10), _square(5, 6, 10), malignant, (0.35, 0.65))
    for i, (case, (p, r, _cls, _probs)) in enumerate(cases.items()):
        _png(images / f"{case}_0000.png", _image(i))
        _png(labels / f"{case}.png", r)
        _png(pred / f"{case}.png", p)
    with open(ds / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id"])
        for case, (_p, _r, cls, _probs) in cases.items():
            w.writerow([case, "test", cls, f"P_{case}"])
    with open(pred / "class_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", "prob_benign", f"prob_{malignant}"])
        for case, (*_x, probs) in cases.items():
            w.writerow([case, "benign" if probs[0] > probs[1] else malignant, *probs])
    (ds / "dataset.json").write_text(json.dumps({"name": "Gallery", "class_labels": {"benign": 0, malignant: 1},
                                                 "labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}))
    truth = {case: (cls, "benign" if probs[0] > probs[1] else malignant) for case, (*_x, cls, probs) in cases.items()}
    return {"raw": raw, "ds": ds, "pred": pred, "images": images, "labels": labels, "cases": list(cases),
            "truth": truth}


@pytest.fixture
def data(tmp_path, monkeypatch):
    d = make_dataset(tmp_path)
    monkeypatch.setenv("nnUNet_raw", str(d["raw"]))
    return d


class _Cards(HTMLParser):
    """The page's cards (attributes unescaped by the parser, the Dice text, hidden or not) and its options."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cards, self.options, self.body, self._in_dice, self._select = [], {}, {}, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "article" and "card" in (a.get("class") or "").split():
            self.cards.append({**a, "hidden": "hidden" in a, "dice_text": "", "img": None})
        if tag == "img" and self.cards and self.cards[-1]["img"] is None:
            self.cards[-1]["img"] = a
        if tag == "dd" and a.get("class") == "dice":
            self._in_dice = True
        if tag == "select":
            self._select = a.get("id")
            self.options[self._select] = []
        if tag == "option" and self._select:
            self.options[self._select].append(a.get("value"))

    def handle_endtag(self, tag):
        if tag == "dd":
            self._in_dice = False
        if tag == "select":
            self._select = None

    def handle_data(self, text):
        if self._in_dice and self.cards:
            self.cards[-1]["dice_text"] += text


def parse(text: str) -> _Cards:
    parser = _Cards()
    parser.feed(text)
    return parser


def per_case_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _dice_key(row: dict) -> tuple:
    return (row["dice"] == "", float(row["dice"] or 0), row["case_id"])


# ------------------------------------------------------------------------------------------------ the page
def test_every_case_with_evaluates_numbers_worst_dice_first(data, capsys):
    assert main(["evaluate", "-pred", str(data["pred"]), "-d", DATASET]) == 0
    assert main(["gallery", "-pred", str(data["pred"]), "-d", DATASET]) == 0
    out = capsys.readouterr().out
    page_path = data["pred"] / "evaluation" / "gallery.html"
    plot = data["pred"] / "evaluation" / "gallery_dice_distribution.png"
    assert f"wrote {page_path}" in out and f"wrote {plot}" in out
    rows = per_case_csv(data["pred"] / "evaluation" / "per_case.csv")
    text = page_path.read_text()
    page = parse(text)
    cards = {c["data-case"]: c for c in page.cards}
    assert sorted(cards) == sorted(data["cases"]) == sorted(rows)  # every case, once
    for case, row in rows.items():
        card = cards[case]
        assert card["data-dice"] == row["dice"]  # evaluate's string, bit for bit
        assert card["dice_text"] == f"{float(row['dice']):.4f}"
        assert card["data-true"] == row["true_class"] and card["data-pred"] == row["predicted_class"]
        assert card["data-prob"] == row[f"prob_{row['predicted_class']}"]
        assert card["data-misclassified"] == ("1" if row["true_class"] != row["predicted_class"] else "0")
        assert card["img"]["src"].startswith("data:image/png;base64,")
    assert {c for c, card in cards.items() if card["data-misclassified"] == "1"} == {"case_b", "case_d"}
    # the default order, without any script: worst Dice first
    assert [c["data-case"] for c in page.cards] == [r["case_id"] for r in sorted(rows.values(), key=_dice_key)]
    assert [c["data-case"] for c in page.cards][:2] == ["case_c", "case_b"]
    assert not any(c["hidden"] for c in page.cards)
    assert "read from" in text and "per_case.csv" in text
    # one self-contained file: nothing fetched from anywhere, the plot embedded and written beside it
    assert "http://" not in text and "https://" not in text and "<link" not in text and " src=\"data:" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.options["ref-class"] == ["", "benign", "malignant"]
    assert "mean Dice 0.6167" in text  # evaluate's summary: (1 + 0.5 + 0 + 0.75 + 0.8333) / 5


def test_without_an_evaluation_the_numbers_are_computed_as_evaluate_does(data, tmp_path):
    before = sorted(p.name for p in data["pred"].rglob("*"))
    out = tmp_path / "pages" / "run1.html"
    assert main(["gallery", "-pred", str(data["pred"]), "-d", DATASET, "-o", str(out)]) == 0
    assert sorted(p.name for p in data["pred"].rglob("*")) == before  # nothing written beside the inputs
    assert (tmp_path / "pages" / "run1_dice_distribution.png").is_file()
    assert "computed by nnunet_mtl evaluate" in out.read_text()
    computed = {c["data-case"]: c for c in parse(out.read_text()).cards}
    assert main(["evaluate", "-pred", str(data["pred"]), "-d", DATASET]) == 0
    rows = per_case_csv(data["pred"] / "evaluation" / "per_case.csv")
    assert {c: card["data-dice"] for c, card in computed.items()} == {c: r["dice"] for c, r in rows.items()}
    assert {c: card["data-prob"] for c, card in computed.items()} == {
        c: r[f"prob_{r['predicted_class']}"] for c, r in rows.items()}


def test_text_is_escaped(tmp_path, monkeypatch):
    # class names are free text in dataset.json, case ids are file names: both may hold HTML's special characters
    name, odd = "<b>ma&lig</b>", 'x<i>&"y'
    d = make_dataset(tmp_path, malignant=name, odd_case=odd)
    monkeypatch.setenv("nnUNet_raw", str(d["raw"]))
    assert main(["gallery", "-pred", str(d["pred"]), "-d", DATASET, "-o", str(tmp_path / "g.html")]) == 0
    text = (tmp_path / "g.html").read_text()
    assert name not in text and odd not in text
    assert html.escape(name) in text and html.escape(odd) in text
    page = parse(text)
    assert odd in {c["data-case"] for c in page.cards}  # the parser gets the exact text back
    assert {c["data-true"] for c in page.cards} == {"benign", name}
    assert page.options["pred-class"] == ["", "benign", name]


def test_classification_only_and_segmentation_only_folders(data, tmp_path):
    seg_only = tmp_path / "seg_only"
    shutil.copytree(data["pred"], seg_only)
    (seg_only / "class_predictions.csv").unlink()
    result = write_gallery(seg_only, data["labels"], [data["images"]], tmp_path / "seg.html",
                           cases_csv=data["ds"] / "cases.csv", log=lambda _m: None)
    page = parse((tmp_path / "seg.html").read_text())
    assert result["num_cases"] == 5 and {c["data-pred"] for c in page.cards} == {""}
    assert not any(c["data-misclassified"] == "1" for c in page.cards)
    cls_only = tmp_path / "cls_only"
    cls_only.mkdir()
    shutil.copy(data["pred"] / "class_predictions.csv", cls_only)
    write_gallery(cls_only, data["labels"], [data["images"]], tmp_path / "cls.html",
                  cases_csv=data["ds"] / "cases.csv", log=lambda _m: None)
    text = (tmp_path / "cls.html").read_text()
    page = parse(text)
    assert {c["data-dice"] for c in page.cards} == {""} and "classification only" in text
    assert sorted(c["data-case"] for c in page.cards if c["data-misclassified"] == "1") == ["case_b", "case_d"]


def test_an_unannotated_box_reference_is_drawn_as_its_box_and_sorted_last(data, tmp_path):
    box = np.zeros(SHAPE, np.uint8)
    box[28:44, 38:56] = 2  # nnU-Net's ignore label inside the lesion's box: no Dice, the box is the outline
    _png(data["labels"] / "case_a.png", box)
    write_gallery(data["pred"], data["labels"], [data["images"]], tmp_path / "g.html",
                  cases_csv=data["ds"] / "cases.csv", log=lambda _m: None)
    page = parse((tmp_path / "g.html").read_text())
    assert page.cards[-1]["data-case"] == "case_a" and page.cards[-1]["data-dice"] == ""
    assert page.cards[-1]["dice_text"] == "not scored (box reference)"
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        page.cards[-1]["img"]["src"].split(",", 1)[1]))).convert("RGB"))
    reference = np.all(drawn == REFERENCE_COLOUR, axis=-1) | np.all(drawn == OVERLAP_COLOUR, axis=-1)
    assert (reference == outline(box == 2)).all()


# ------------------------------------------------------------------------------------------------ drawing
def test_outlines_are_thin_and_in_their_own_colours():
    image = np.full((40, 40), 100, np.uint8)
    ref, pred = _square(5, 5, 20, (40, 40)) > 0, _square(5, 5, 24, (40, 40)) > 0
    drawn = np.asarray(Image.open(io.BytesIO(render_overlay(image, ref, pred))).convert("RGB"))
    colour = {name: np.all(drawn == rgb, axis=-1) for name, rgb in
              (("ref", REFERENCE_COLOUR), ("pred", PREDICTION_COLOUR), ("both", OVERLAP_COLOUR))}
    # the two outlines share their top and left sides (overlap colour), the rest is one pixel wide, never filled
    assert colour["ref"].sum() + colour["both"].sum() == outline(ref).sum() == 4 * 20 - 4
    assert colour["pred"].sum() + colour["both"].sum() == outline(pred).sum() == 4 * 24 - 4
    assert colour["both"][5, 5:25].all() and not colour["ref"][10:20, 10:20].any()
    assert np.all(drawn[12, 12] == drawn[0, 0])  # inside the lesion: the image, not paint


def test_large_images_are_drawn_small_and_tiny_lesions_stay_visible():
    image = np.random.default_rng(0).integers(0, 255, (900, 1200), dtype=np.uint8)
    ref = np.zeros(image.shape, bool)
    ref[100:103, 100:103] = True  # 3 px: about 0.8 display pixel at size 320
    drawn = Image.open(io.BytesIO(render_overlay(image, ref, None, 320)))
    assert drawn.size == (320, 240) and drawn.mode == "P"
    assert np.all(np.asarray(drawn.convert("RGB")) == REFERENCE_COLOUR, axis=-1).any()


def test_cli_default_size_matches_the_library():
    from nnunet_mtl.cli import gallery as cli
    assert cli.DEFAULT_SIZE == gallery.DEFAULT_SIZE


# ------------------------------------------------------------------------------------------------ bad input
def _one_line_error(argv, capsys, needle: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    pred = str(data["pred"])
    _one_line_error(["gallery", "-pred", str(tmp_path / "nowhere"), "-d", DATASET], capsys, "does not exist")
    _one_line_error(["gallery", "-pred", pred], capsys, "no reference")
    _one_line_error(["gallery", "-pred", pred, "-ref", str(tmp_path / "noref"), "-i", str(data["images"])], capsys,
                    "reference folder")
    shutil.move(data["images"], tmp_path / "moved")  # -ref labelsTs looks for imagesTs beside it
    _one_line_error(["gallery", "-pred", pred, "-ref", str(data["labels"]), "-o", str(tmp_path / "x.html")], capsys,
                    "no images")
    (tmp_path / "partial").mkdir()
    shutil.copy(tmp_path / "moved" / "case_a_0000.png", tmp_path / "partial")
    _one_line_error(["gallery", "-pred", pred, "-d", DATASET, "-i", str(tmp_path / "partial"), "-o",
                     str(tmp_path / "x.html")], capsys, "4 case(s) have no image")
    shutil.move(tmp_path / "moved", data["images"])
    _one_line_error(["gallery", "-pred", pred, "-d", DATASET, "-o", str(data["pred"] / "g.html")], capsys,
                    "is in the input folder")
    _one_line_error(["gallery", "-pred", pred, "-d", DATASET, "-o", str(tmp_path / "g.txt")], capsys,
                    "does not end in .html")
    _one_line_error(["gallery", "-pred", pred, "-d", DATASET, "--size", "5"], capsys, "--size 5")
    assert not (tmp_path / "x.html").exists() and not (data["pred"] / "evaluation").exists()
    out = tmp_path / "g.html"
    out.write_text("an earlier gallery")
    _one_line_error(["gallery", "-pred", pred, "-d", DATASET, "-o", str(out)], capsys, "already exists")
    assert out.read_text() == "an earlier gallery"
    assert main(["gallery", "-pred", pred, "-d", DATASET, "-o", str(out), "--overwrite"]) == 0
    assert len(parse(out.read_text()).cards) == 5
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_a_per_fold_folder_asks_for_a_subfolder(data, tmp_path):
    per_fold = tmp_path / "per_fold"
    for sub in ("fold_0", "ensemble"):
        shutil.copytree(data["pred"], per_fold / sub)
    (per_fold / "per_fold.json").write_text(json.dumps({"subfolders": {"fold_0": {"folds": [0]},
                                                                       "ensemble": {"folds": [0]}}}))
    with pytest.raises(NnunetMtlError, match=r"per-fold folder .*-pred .*ensemble"):
        write_gallery(per_fold, data["labels"], [data["images"]], tmp_path / "g.html")


def test_a_stale_evaluation_is_pointed_out(data, tmp_path, capsys):
    assert main(["evaluate", "-pred", str(data["pred"]), "-d", DATASET]) == 0
    stamp = (data["pred"] / "evaluation" / "per_case.csv").stat().st_mtime
    os.utime(data["pred"] / "case_a.png", (stamp + 60, stamp + 60))
    capsys.readouterr()
    assert main(["gallery", "-pred", str(data["pred"]), "-d", DATASET, "-o", str(tmp_path / "g.html")]) == 0
    assert "newer than" in capsys.readouterr().err and "may be stale" in (tmp_path / "g.html").read_text()


# ------------------------------------------------------------------------------------------------ in a browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install "
                                                             "chromium); the page's script is checked in a real "
                                                             "browser only")


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
                           f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture
def page(data, tmp_path):
    out = tmp_path / "site" / "gallery.html"
    assert main(["evaluate", "-pred", str(data["pred"]), "-d", DATASET]) == 0
    assert main(["gallery", "-pred", str(data["pred"]), "-d", DATASET, "-o", str(out)]) == 0
    return out


def _shown(dom: str) -> list[str]:
    return [c["data-case"] for c in parse(dom).cards if not c["hidden"]]


@needs_chromium
def test_the_url_hash_sorts_and_filters_in_a_real_browser(page, data, tmp_path):
    rows = per_case_csv(data["pred"] / "evaluation" / "per_case.csv")
    worst_first = [r["case_id"] for r in sorted(rows.values(), key=_dice_key)]
    views = {
        "": worst_first,
        "#sort=dice-desc&filter=misclassified": ["case_d", "case_b"],  # 0.75, 0.5
        "#sort=prob-desc": [r["case_id"] for r in sorted(
            rows.values(), key=lambda r: (-float(r[f"prob_{r['predicted_class']}"]), r["case_id"]))],
        "#sort=case-desc&ref=malignant": ["case_e", "case_c", "case_b"],
        "#pred=benign&filter=misclassified": ["case_b"],
        "#q=CASE_A": ["case_a"],
        "#sort=nonsense&ref=nope": worst_first,  # unknown values: the default view
    }
    for hash_part, expected in views.items():
        dom = _chromium(tmp_path, page.as_uri() + hash_part, "--dump-dom").stdout
        assert _shown(dom) == expected, hash_part
        parsed = parse(dom)
        assert len(parsed.cards) == 5 and parsed.body.get("data-view")  # the script ran; hidden cards stay
        assert f"showing {len(expected)} of 5 cases" in dom


@needs_chromium
def test_the_images_and_their_outlines_show_in_a_screenshot(page, data, tmp_path):
    def coloured(hash_part: str) -> tuple[dict, np.ndarray]:
        shot = tmp_path / f"shot{len(hash_part)}.png"
        _chromium(tmp_path, page.as_uri() + hash_part, f"--screenshot={shot}", "--window-size=1400,1600")
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        counts = {name: int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= 8).sum())
                  for name, rgb in (("ref", REFERENCE_COLOUR), ("pred", PREDICTION_COLOUR))}
        return counts, pixels
    shown, pixels = coloured("")
    hidden, _ = coloured("#q=no-such-case")  # every card hidden: only the legend keeps these colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank: grey speckle, the plot, text
    # the images are shown at their size (80 x 60 < --size): every outline pixel of every case is on screen
    expected = {"ref": 0, "pred": 0}
    for case in data["cases"]:
        ref = np.asarray(Image.open(data["labels"] / f"{case}.png")) == 1
        pred = np.asarray(Image.open(data["pred"] / f"{case}.png")) > 0
        expected["ref"] += int((outline(ref) & ~outline(pred)).sum())
        expected["pred"] += int((outline(pred) & ~outline(ref)).sum())
    assert expected["ref"] > 100 and expected["pred"] > 50
    assert {k: shown[k] - hidden[k] for k in shown} == expected, (shown, hidden)
