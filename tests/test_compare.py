"""``nnunet_mtl compare``: reading and checking the runs (the case matching and class checks, settings that must
agree), the patient unit, per-fold folders, the table against scipy and Holm, and the command end to end. The
statistics themselves are tested in test_paired_statistics.py."""
import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import compare as cmp
from nnunet_mtl.evaluation.paired_statistics import holm, wilcoxon_paired

CLASSES = ("benign", "malignant")


# ------------------------------------------------------------------------------------------------ runs
def _write_run(folder, rows, classes=CLASSES, settings=None):
    """A prediction folder with evaluation/per_case.csv (evaluate's columns) and a summary.json."""
    ev = folder / "evaluation"
    ev.mkdir(parents=True)
    fields = ["case_id", "dice", "iou", "hd95_px", "hd95_mm", "true_class", "predicted_class"]
    fields += [f"prob_{c}" for c in classes or ()]
    with open(ev / "per_case.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (ev / "summary.json").write_text(json.dumps({"segmentation": {}, "settings": settings or {},
                                                 "inputs": {"ref_dir": "/data/ref"}}))
    return folder


def _rows(rng, n, quality, classes=CLASSES):
    out = []
    for i in range(n):
        dice = float(np.clip(quality + rng.normal(0, 0.08), 0, 1)) if i % 3 else 1.0  # every third case: perfect
        true = classes[i % len(classes)]
        p = rng.dirichlet(np.ones(len(classes)))
        p = 0.4 * p + 0.6 * np.eye(len(classes))[i % len(classes)] * (quality > 0.8 or i % 4 != 0)
        p /= p.sum()
        out.append({"case_id": f"{i:04d}", "dice": f"{dice:.6f}", "iou": f"{dice / (2 - dice):.6f}",
                    "hd95_px": f"{(1 - dice) * 20:.6f}", "hd95_mm": "" if i == 0 else f"{(1 - dice) * 2:.6f}",
                    "true_class": true, "predicted_class": classes[int(np.argmax(p))],
                    **{f"prob_{c}": f"{v:.6f}" for c, v in zip(classes, p)}})
    return out


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    _write_run(tmp_path / "unet", _rows(rng, 24, 0.75))
    _write_run(tmp_path / "mtl", _rows(rng, 24, 0.85))
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id"])
        for i in range(24):
            w.writerow([f"{i:04d}", "test", CLASSES[i % 2], f"P{i // 2:02d}"])  # two images per patient
    return tmp_path


def test_image_unit_table(runs):
    result = cmp.compare([runs / "unet", runs / "mtl"], n_resamples=200)
    rows = {r["metric"]: r for r in result["rows"]}
    assert list(rows) == ["dice", "iou", "hd95_px", "hd95_mm", "accuracy", "auc"]
    assert result["settings"]["unit"] == "image" and "no case table" in result["settings"]["unit_text"]
    dice_a = [float(r["dice"]) for r in _read(runs / "unet")]
    dice_b = [float(r["dice"]) for r in _read(runs / "mtl")]
    assert rows["dice"]["mean_a"] == pytest.approx(np.mean(dice_a))
    assert rows["dice"]["difference"] == pytest.approx(np.mean(dice_a) - np.mean(dice_b))
    assert rows["dice"]["p"] == pytest.approx(
        stats.wilcoxon(np.subtract(dice_a, dice_b), zero_method="zsplit", method="asymptotic").pvalue)
    assert rows["hd95_mm"]["n_images"] == 23 and "23 of 24" in rows["hd95_mm"]["note"]  # case 0000 has no spacing
    assert rows["auc"]["test_short"] == "DeLong" and rows["accuracy"]["test_short"] == "McNemar exact"
    assert [r["p_holm"] for r in result["rows"]] == pytest.approx(list(holm([r["p"] for r in result["rows"]])))
    table = cmp.format_table(result)
    assert "unit: image (24 images; no case table" in table and "p Holm" in table and "zsplit" in table


def _read(run):
    with open(run / "evaluation" / "per_case.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_patient_unit(runs):
    result = cmp.compare([runs / "unet", runs / "mtl"], cases_csv=runs / "cases.csv", n_resamples=200)
    assert result["settings"]["unit"] == "patient"
    assert result["settings"]["unit_text"].startswith("unit: patient (12 patients, 24 images")
    rows = {r["metric"]: r for r in result["rows"]}
    d = np.array([float(x["dice"]) for x in _read(runs / "unet")]) - [float(x["dice"]) for x in _read(runs / "mtl")]
    per_patient = d.reshape(12, 2).mean(axis=1)  # cases 2k, 2k+1 are patient k
    assert rows["dice"]["p"] == pytest.approx(wilcoxon_paired(per_patient)["p"])
    assert rows["dice"]["n_units"] == 12 and rows["dice"]["difference"] == pytest.approx(d.mean())
    assert rows["accuracy"]["test_short"] == "McNemar (clustered)" and rows["auc"]["test_short"] == "bootstrap"
    assert "over patients" in rows["dice"]["ci_method"]
    # one image per patient: the unit stays the image, and says why
    lines = (runs / "cases.csv").read_text().splitlines()
    (runs / "single.csv").write_text("\n".join([lines[0]] + [ln.replace(",P", ",Q" + ln[:4]) for ln in lines[1:]]))
    single = cmp.compare([runs / "unet", runs / "mtl"], cases_csv=runs / "single.csv", n_resamples=200)
    assert single["settings"]["unit_text"].startswith("unit: image (24 images, one per patient")


def test_case_table_without_a_compared_case(runs):
    lines = (runs / "cases.csv").read_text().splitlines()
    (runs / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(NnunetMtlError, match="case 0023 of the runs is not in .*short.csv"):
        cmp.compare([runs / "unet", runs / "mtl"], cases_csv=runs / "short.csv", n_resamples=200)


def test_mismatched_cases_name_the_case_and_the_run(runs):
    rows = _read(runs / "mtl")
    (runs / "mtl" / "evaluation" / "per_case.csv").write_text(
        ",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows if r["case_id"] != "0007"))
    with pytest.raises(NnunetMtlError) as info:
        cmp.compare([runs / "unet", runs / "mtl"], runs / "out", n_resamples=200)
    message = str(info.value)
    assert "case 0007" in message and str(runs / "mtl") in message and "\n" not in message
    assert not (runs / "out").exists()
    with pytest.raises(NnunetMtlError, match=f"case 0007 of run {runs / 'unet'} is missing in run"):
        cmp.compare([runs / "mtl", runs / "unet"], n_resamples=200)


def test_class_columns_and_reference_classes_must_agree(runs, tmp_path):
    rng = np.random.default_rng(1)
    _write_run(tmp_path / "other", _rows(rng, 24, 0.8, classes=("TR1", "TR2")), classes=("TR1", "TR2"))
    with pytest.raises(NnunetMtlError, match="has class columns prob_TR1, prob_TR2 but run .* has prob_benign"):
        cmp.compare([runs / "unet", tmp_path / "other"], n_resamples=200)
    rows = _read(runs / "mtl")
    rows[3]["true_class"] = "malignant" if rows[3]["true_class"] == "benign" else "benign"
    (runs / "mtl" / "evaluation" / "per_case.csv").write_text(
        ",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    with pytest.raises(NnunetMtlError, match="case 0003 has reference class"):
        cmp.compare([runs / "unet", runs / "mtl"], n_resamples=200)


def test_segmentation_only_run_is_compared_without_classification(runs, tmp_path):
    rows = _rows(np.random.default_rng(4), 24, 0.8)
    _write_run(tmp_path / "seg", rows, classes=None)
    result = cmp.compare([runs / "unet", tmp_path / "seg"], n_resamples=200)
    assert [r["metric"] for r in result["rows"]] == ["dice", "iou", "hd95_px", "hd95_mm"]
    assert any("classification not compared" in n for n in result["notes"])


def test_nsd_tolerances_must_agree(tmp_path):
    rng = np.random.default_rng(0)
    for name, tol in (("a", 2.0), ("b", 3.0)):
        rows = _rows(rng, 10, 0.8)
        for r in rows:
            r["nsd_px"] = r["dice"]
        folder = _write_run(tmp_path / name, rows, settings={"nsd_tolerance_px": tol})
        text = (folder / "evaluation" / "per_case.csv").read_text().splitlines()
        (folder / "evaluation" / "per_case.csv").write_text(
            "\n".join([text[0] + ",nsd_px"] + [ln + "," + r["dice"] for ln, r in zip(text[1:], rows)]) + "\n")
    with pytest.raises(NnunetMtlError, match="nsd_tolerance_px 3.0 but run .* with 2.0"):
        cmp.compare([tmp_path / "a", tmp_path / "b"], n_resamples=200)


def test_three_classes_and_all_pairs(tmp_path):
    rng = np.random.default_rng(2)
    three = ("TR2", "TR3", "TR4")
    for name, q in (("a", 0.7), ("b", 0.8), ("c", 0.9)):
        _write_run(tmp_path / name, _rows(rng, 18, q, classes=three), classes=three)
    runs = [tmp_path / n for n in "abc"]
    first = cmp.compare(runs, n_resamples=200)
    assert list(dict.fromkeys(r["pair"] for r in first["rows"])) == ["A vs B", "A vs C"]
    result = cmp.compare(runs, all_pairs=True, n_resamples=200)
    assert list(dict.fromkeys(r["pair"] for r in result["rows"])) == ["A vs B", "A vs C", "B vs C"]
    auc = [r for r in result["rows"] if r["metric"] == "auc"][0]
    assert auc["test_short"] == "bootstrap" and auc["label"] == "AUC (OvR macro)" and 0 <= auc["p"] <= 1
    assert result["settings"]["n_pvalues"] == len(result["rows"])


def test_per_fold_folder_compares_its_ensemble(runs, tmp_path):
    rng = np.random.default_rng(3)
    pf = tmp_path / "perfold"
    for sub, q in (("fold_0", 0.7), ("fold_1", 0.75), ("ensemble", 0.9)):
        _write_run(pf / sub, _rows(rng, 24, q))
    (pf / "per_fold.json").write_text(json.dumps({"subfolders": {"fold_0": {"folds": [0]}, "fold_1": {"folds": [1]},
                                                                 "ensemble": {"folds": [0, 1]}}}))
    result = cmp.compare([runs / "unet", pf, pf / "fold_1"], n_resamples=200)
    assert result["runs"][1]["folder"] == str(pf / "ensemble") and result["runs"][2]["folder"] == str(pf / "fold_1")
    assert "comparing its ensemble/" in result["runs"][1]["note"]
    assert "comparing its ensemble/" in cmp.format_table(result)


# ------------------------------------------------------------------------------------------------ command
def _png(path, top, size=10):
    m = np.zeros((32, 32), np.uint8)
    m[top:top + size, 8:8 + size] = 1
    Image.fromarray(m).save(path)


@pytest.fixture(scope="module")
def evaluated_template(tmp_path_factory):
    """Two runs written like predict and evaluated by evaluate_folder itself: the real per_case.csv columns."""
    from nnunet_mtl.evaluation.evaluate import evaluate_folder
    tmp_path = tmp_path_factory.mktemp("evaluated")
    ref = tmp_path / "ref"
    ref.mkdir()
    cases = [f"{i:03d}" for i in range(8)]
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id", "spacing_row_mm", "spacing_col_mm"])
        w.writerows([c, "test", CLASSES[i % 2], f"P{i // 2}", "0.5", "0.5"] for i, c in enumerate(cases))
    for c in cases:
        _png(ref / f"{c}.png", 8)
    for name, shifts, p1 in (("a", [0, 2, 0, 3, 1, 0, 2, 0], [.2, .6, .3, .9, .4, .7, .1, .8]),
                             ("b", [0, 0, 0, 1, 0, 0, 0, 0], [.1, .8, .2, .9, .3, .7, .2, .9])):
        run = tmp_path / name
        run.mkdir()
        for c, s in zip(cases, shifts):
            _png(run / f"{c}.png", 8 + s)
        with open(run / "class_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant"])
            w.writerows([c, CLASSES[p > 0.5], 1 - p, p] for c, p in zip(cases, p1))
        evaluate_folder(run, ref, class_predictions_csv=run / "class_predictions.csv", cases_csv=tmp_path / "cases.csv",
                        class_labels={"benign": 0, "malignant": 1}, output_dir=run / "evaluation")
    return tmp_path


@pytest.fixture
def evaluated(evaluated_template, tmp_path):
    shutil.copytree(evaluated_template, tmp_path / "w")
    return tmp_path / "w"


def test_cli_end_to_end(evaluated, capsys):
    out = evaluated / "cmp"
    code = main(["compare", str(evaluated / "a"), str(evaluated / "b"), "--cases", str(evaluated / "cases.csv"),
                 "-o", str(out), "--n-resamples", "300", "--seed", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "unit: patient (4 patients, 8 images" in printed
    assert "Dice" in printed and "Wilcoxon" in printed and "McNemar (clustered)" in printed and "p Holm" in printed
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["metric"] == "dice" and rows[0]["run_a"] == str(evaluated / "a")
    assert [float(r["p_holm"]) for r in rows] == pytest.approx(list(holm([float(r["p"]) for r in rows])))
    saved = json.loads((out / "comparison.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    settings = saved["settings"]
    assert (settings["zero_method"], settings["n_resamples"], settings["seed"], settings["unit"]) == \
        ("zsplit", 300, 3, "patient")
    assert "Wilcoxon" in settings["tests"]["dice"] and "Durkalski" in settings["tests"]["accuracy"]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    # the same command again gives the same numbers (seeded)
    first = (out / "comparison.csv").read_text()
    assert main(["compare", str(evaluated / "a"), str(evaluated / "b"), "--cases", str(evaluated / "cases.csv"),
                 "-o", str(out), "--n-resamples", "300", "--seed", "3"]) == 0
    assert (out / "comparison.csv").read_text() == first


def test_the_csv_holds_plain_numbers_also_for_numpy_values(tmp_path, monkeypatch):
    """comparison.csv's numeric cells parse as numbers when a statistic comes as a numpy float (a DeLong CI did:
    its cells read 'np.float64(-0.0379...)'); NaN is an empty cell."""
    import numpy as np

    import nnunet_mtl.evaluation.compare as compare
    row = {k: "" for k in compare.CSV_FIELDS}
    row.update(pair="A vs B", metric="auc", mean_a=np.float64(0.686), mean_b=0.633, difference=np.float64(0.053),
               ci_low=np.float64(-0.038), ci_high=np.float64(0.144), statistic=np.float32(1.14), p=0.254,
               p_holm=float("nan"))
    result = {"rows": [row], "runs": {}, "settings": {}, "pairs": []}
    monkeypatch.setattr(compare, "plot_comparison", lambda result, path: path)  # the plot is not what this checks
    compare.write_outputs(result, tmp_path)
    with open(tmp_path / "comparison.csv", newline="") as f:
        (written,) = list(csv.DictReader(f))
    assert [float(written[k]) for k in ("mean_a", "difference", "ci_low", "ci_high")] == \
        pytest.approx([0.686, 0.053, -0.038, 0.144])
    assert float(written["statistic"]) == pytest.approx(1.14, rel=1e-6) and written["p_holm"] == ""


def _snapshot(root):
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("setup, needle", [
    (lambda w: [str(w / "a"), str(w / "ref")], "has no evaluation/per_case.csv; run `nnunet_mtl evaluate -pred"),
    (lambda w: [str(w / "a"), str(w / "nope")], "nope does not exist"),
    (lambda w: [str(w / "a"), str(w / "a")], "are the same"),
    (lambda w: [str(w / "a"), str(w / "b"), "-o", str(w / "cases.csv")], "cases.csv is a file"),
    (lambda w: [str(w / "a"), str(w / "b"), "-o", str(w / "b")], "is one of the inputs"),
    (lambda w: [str(w / "a"), str(w / "b"), "--n-resamples", "10"], "--n-resamples 10 is too few"),
    (lambda w: [str(w / "a"), str(w / "b"), "--cases", str(w / "none.csv")], "none.csv does not exist"),
    (lambda w: ((w / "b" / "evaluation" / "per_case.csv").write_text("case_id,dice\n000,1\n"),
                [str(w / "a"), str(w / "b")])[1], "lacks column(s) iou, hd95_px"),
    (lambda w: ((w / "b" / "evaluation" / "per_case.csv").write_text(
        (w / "b" / "evaluation" / "per_case.csv").read_text().replace("\n003,", "\n003x,")),
                [str(w / "a"), str(w / "b")])[1], "case 003 of run"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(evaluated, capsys, monkeypatch, setup, needle):
    monkeypatch.chdir(evaluated)
    argv = ["compare", *setup(evaluated)]
    before = _snapshot(evaluated)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnunet_mtl compare: error: ") and needle in err, err
    assert _snapshot(evaluated) == before  # not even ./comparison


def test_run_names_are_the_shortest_distinct_folder_suffixes():
    """comparison.png names each pair by its runs' folders (issue: 'A vs B' told a reader nothing)."""
    from nnunet_mtl.evaluation.compare import run_names
    assert run_names(["/w/predictions/mtl/ddti_test/evaluation", "/w/predictions/rlar/ddti_test/evaluation"]) == [
        "mtl/ddti_test", "rlar/ddti_test"]
    assert run_names(["/a/x/fold_0", "/a/y/fold_1"]) == ["fold_0", "fold_1"]
    assert run_names(["/a/run", "/b/run"]) == ["a/run", "b/run"]
