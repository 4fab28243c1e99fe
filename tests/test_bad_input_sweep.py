"""Every command against every class of bad input (issue 13): output paths, corrupt or foreign inputs, checks that
must come before the work, resources. One parametrized test: each case builds its bad input in a small world (a
raw dataset, a model folder, inputs, predictions, a summary), runs the command in-process, and asserts the exit
code, one line on stderr naming the file or value, and that no file under the world was written, changed,
removed or left half-written."""
from __future__ import annotations

import csv
import json
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from nnunet_mtl.cli.main import main
from tests.file_helpers import assert_refused, deny_writes, world_copy

CLASSES = {"benign": 0, "malignant": 1, "normal": 2}


def _png_bomb(path: Path, side: int = 100_000) -> None:
    """A tiny PNG whose header claims side x side grey pixels (a decompression bomb)."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The world, built once: the environment folders, Dataset777_A (synthetic), a model folder for it, an input
    folder, a prediction folder with class_predictions.csv, and an evaluation summary."""
    from dataset_conversion.synthetic import convert_synthetic
    from nnunet_mtl.evaluation.evaluate import evaluate_folder
    from tests.network_helpers import make_plans

    root = tmp_path_factory.mktemp("world")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / var).mkdir()
    raw = convert_synthetic(777, "A", num_patients=6, images_per_patient=1, size=(32, 32), test_fraction=0.5,
                            normal_fraction=0.0, raw_root=root / "nnUNet_raw", progress=False)
    model = root / "nnUNet_results" / "Dataset777_A" / "nnUNetTrainerMTL__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    plans = dict(make_plans(), dataset_name="Dataset777_A")
    plans["nnunet_mtl"] = {"class_labels": CLASSES, "guidance_features": ["f0"]}
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".png", "channel_names": {"0": "ultrasound"},
                                                    "class_labels": CLASSES}))
    torch.save({"init_args": {"plans": plans}, "network_weights": {}}, model / "fold_0" / "checkpoint_final.pth")
    shutil.copytree(raw / "imagesTs", root / "in")
    pred = root / "pred"
    shutil.copytree(raw / "labelsTs", pred)
    with open(raw / "cases.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    with open(pred / "class_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant", "prob_normal"])
        w.writerows([r["case_id"], r["class"], *((0.8, 0.2, 0.0) if r["class"] == "benign" else (0.3, 0.7, 0.0))]
                    for r in test)
    evaluate_folder(pred, raw / "labelsTs", class_predictions_csv=pred / "class_predictions.csv",
                    cases_csv=raw / "cases.csv", class_labels=CLASSES, output_dir=root / "evaluation")
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, root / "plain.pth")
    return root


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    return world_copy(template, tmp_path, monkeypatch)


def predict(w, *extra, out="out", inputs="in"):
    return ["predict", "-i", str(w / inputs), "-o", str(w / out), "-d", "777", "-c", "2d", "-f", "0",
            "-device", "cpu", *extra]


def ablate(w, *extra, out="out"):
    return ["ablate-guidance", "-i", str(w / "in"), "-o", str(w / out), "-d", "777", "-c", "2d", "-f", "0",
            "-device", "cpu", "-tr", "nnUNetTrainerMTL",
            "--cases", str(w / "nnUNet_raw" / "Dataset777_A" / "cases.csv"), *extra]


def evaluate(w, *extra):
    return ["evaluate", "-pred", str(w / "pred"), "-d", "777", *extra]


def drop_masks(w, *extra):
    """``drop-masks -d 777 --keep 0.5 --into 778``; a later -d / --keep / --into in ``extra`` wins (argparse)."""
    return ["drop-masks", "-d", "777", "--keep", "0.5", "--into", "778", *extra]


def holdout(w, *extra):
    """``holdout -d 777 --into 778`` plus ``extra`` (which gives --fraction or --per-class)."""
    return ["holdout", "-d", "777", "--into", "778", *extra]


def gallery(w, *extra):
    return ["gallery", "-pred", str(w / "pred"), "-d", "777", *extra]


def export(w, *extra, out="m.onnx"):
    return ["export", "-d", "777", "-c", "2d", "-f", "0", "-o", str(w / out), *extra]


def crossval(w, *extra):
    return ["crossval", "-d", "777", "-c", "2d", "-f", "0", *extra]


def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _first_input(w) -> Path:
    return sorted((w / "in").glob("*_0000.png"))[0]


def _edit_probs(w, row):
    path = w / "pred" / "class_predictions.csv"
    lines = path.read_text().splitlines()
    case = lines[1].split(",")[0]
    lines[1] = f"{case},benign,{row}"
    path.write_text("\n".join(lines) + "\n")


def _foreign_cases(w):
    path = w / "foreign_cases.csv"
    path.write_text("case_id,split,class,patient_id\nbusi_0001,test,benign,p1\n")
    return path


# (id, input class, setup(world, monkeypatch) -> argv, what the one line must name)
CASES = [
    # --- output paths --------------------------------------------------------------------------------------
    ("predict-o-is-file", "output", lambda w, m: (_file(w / "out"), predict(w))[1], "out is a file"),
    ("predict-o-parent-is-file", "output", lambda w, m: (_file(w / "f"), predict(w, out="f/out"))[1], "f is a file"),
    ("predict-o-read-only", "output", lambda w, m: ((w / "ro").mkdir(), deny_writes(m, w / "ro"),
                                                    predict(w, out="ro/out"))[2], "is not writable"),
    ("predict-mask-path-is-folder", "output",
     lambda w, m: ((w / "out" / (_first_input(w).name[:-9] + ".png")).mkdir(parents=True), predict(w))[1],
     "is a folder, where the mask of"),
    ("predict-csv-is-folder", "output",
     lambda w, m: ((w / "out" / "class_predictions.csv").mkdir(parents=True), predict(w))[1],
     "class_predictions.csv is not a file"),
    ("predict-results-is-file", "output",
     lambda w, m: (m.setenv("nnUNet_results", str(_file(w / "results_file"))), predict(w))[1],
     "nnUNet_results="),
    ("ablate-o-is-file", "output", lambda w, m: (_file(w / "out"), ablate(w))[1], "out is a file"),
    ("evaluate-pred-is-file", "input",
     lambda w, m: ["evaluate", "-pred", str(_file(w / "pred.png")), "-d", "777"],
     "pred.png is a file; expected a folder"),
    ("gallery-pred-is-file", "input",
     lambda w, m: ["gallery", "-pred", str(_file(w / "pred.png")), "-d", "777", "-o", str(w / "g.html")],
     "pred.png is a file; expected a folder of CASE_ID.png masks"),
    ("evaluate-o-is-file", "output", lambda w, m: (_file(w / "o"), evaluate(w, "-o", str(w / "o")))[1],
     "o is a file"),
    ("evaluate-default-o-is-file", "output", lambda w, m: (_file(w / "pred" / "evaluation"), evaluate(w))[1],
     "evaluation is a file"),
    ("evaluate-summary-is-folder", "output",
     lambda w, m: ((w / "o" / "summary.json").mkdir(parents=True), evaluate(w, "-o", str(w / "o")))[1],
     "summary.json is a folder"),
    ("evaluate-o-read-only", "output", lambda w, m: ((w / "ro").mkdir(), deny_writes(m, w / "ro"),
                                                     evaluate(w, "-o", str(w / "ro")))[2], "is not writable"),
    ("aggregate-o-is-input", "output",
     lambda w, m: ["evaluate", "--aggregate", str(w / "evaluation" / "summary.json"), "-o",
                   str(w / "evaluation" / "summary.json")], "one of the summaries"),
    ("aggregate-o-is-folder", "output",
     lambda w, m: ["evaluate", "--aggregate", str(w / "evaluation" / "summary.json"), "-o", str(w / "evaluation")],
     "is a folder"),
    ("aggregate-o-exists", "output",
     lambda w, m: (_file(w / "cv.json", "{}"), ["evaluate", "--aggregate", str(w / "evaluation" / "summary.json"),
                                                "-o", str(w / "cv.json")])[1], "cv.json already exists"),
    ("evaluate-classes-is-folder", "input", lambda w, m: evaluate(w, "--classes", str(w / "pred")),
     "pred is a folder; expected a file"),
    ("demo-bad-phantom", "value",
     lambda w, m: ["demo", "--workdir", str(w / "demo"), "--num-patients", "0"], "num_patients=0"),
    ("demo-keep-masks-out-of-range", "value",
     lambda w, m: ["demo", "--workdir", str(w / "demo"), "--keep-masks", "1.5"], "--keep-masks 1.5"),
    ("split-target-is-folder", "output",
     lambda w, m: ((w / "nnUNet_preprocessed" / "Dataset777_A" / "splits_final.json").mkdir(parents=True),
                   ["split", "-d", "777", "-k", "2", "--overwrite"])[1], "splits_final.json is a folder"),
    ("split-preprocessed-is-file", "output",
     lambda w, m: (m.setenv("nnUNet_preprocessed", str(_file(w / "pre_file"))), ["split", "-d", "777"])[1],
     "nnUNet_preprocessed="),
    ("radiomics-cache-is-folder", "output",
     lambda w, m: ((w / "nnUNet_preprocessed" / "Dataset777_A" / "radiomics_targets.csv").mkdir(parents=True),
                   ["radiomics", "-d", "777"])[1], "radiomics_targets.csv is a folder"),
    ("pretrained-o-is-input", "output",
     lambda w, m: ["pretrained", "-i", str(w / "plain.pth"), "-o", str(w / "plain.pth"), "-d", "777", "--overwrite"],
     "plain.pth is one of the inputs"),
    ("pretrained-o-is-folder", "output",
     lambda w, m: ((w / "o.pth").mkdir(), ["pretrained", "-i", str(w / "plain.pth"), "-o", str(w / "o.pth"), "-d",
                                           "777", "--overwrite"])[1], "o.pth is a folder"),
    ("demo-workdir-is-file", "output",
     lambda w, m: (_file(w / "demo"), ["demo", "--workdir", str(w / "demo")])[1], "demo is a file"),
    ("demo-overwrite-foreign-folder", "output",
     lambda w, m: (_file(w / "demo" / "thesis.tex"), ["demo", "--workdir", str(w / "demo"), "--overwrite"])[1],
     "thesis.tex"),
    ("convert-raw-is-file", "output",
     lambda w, m: (m.setenv("nnUNet_raw", str(_file(w / "raw_file"))),
                   ["convert", "synthetic", "-d", "501", "--no-progress"])[1], "nnUNet_raw="),
    ("convert-dataset-path-is-file", "output",
     lambda w, m: (_file(w / "nnUNet_raw" / "Dataset501_SyntheticUS"),
                   ["convert", "synthetic", "-d", "501", "--no-progress"])[1], "Dataset501_SyntheticUS is a file"),
    ("convert-raw-read-only", "output",
     lambda w, m: (deny_writes(m, w / "nnUNet_raw"), ["convert", "synthetic", "-d", "501", "--no-progress"])[1],
     "is not writable"),
    ("ensemble-o-is-input", "output",
     lambda w, m: (shutil.copytree(w / "pred", w / "pred2"),
                   ["ensemble", "-i", str(w / "pred"), str(w / "pred2"), "-o", str(w / "pred2")])[1],
     "pred2 is one of the inputs"),
    ("ensemble-o-is-file", "output",
     lambda w, m: (shutil.copytree(w / "pred", w / "pred2"), _file(w / "ens"),
                   ["ensemble", "-i", str(w / "pred"), str(w / "pred2"), "-o", str(w / "ens")])[2], "ens is a file"),
    ("drop-masks-target-exists", "output",
     lambda w, m: (shutil.copytree(w / "nnUNet_raw" / "Dataset777_A", w / "nnUNet_raw" / "Dataset778_B"),
                   drop_masks(w, "--into", "778"))[1], "Dataset778_B already exists (dataset id 778)"),
    ("drop-masks-target-is-source", "output", lambda w, m: drop_masks(w, "--into", "777", "--overwrite"),
     "--into 777 is the source dataset Dataset777_A"),
    ("drop-masks-raw-read-only", "output",
     lambda w, m: (deny_writes(m, w / "nnUNet_raw"), drop_masks(w))[1], "is not writable"),
    ("holdout-target-exists", "output",
     lambda w, m: (shutil.copytree(w / "nnUNet_raw" / "Dataset777_A", w / "nnUNet_raw" / "Dataset778_B"),
                   holdout(w, "--fraction", "0.5"))[1], "Dataset778_B already exists (dataset id 778)"),
    ("holdout-target-is-source", "output", lambda w, m: holdout(w, "--fraction", "0.5", "--into", "777", "--overwrite"),
     "--into 777 is the source dataset Dataset777_A"),
    ("holdout-raw-read-only", "output",
     lambda w, m: (deny_writes(m, w / "nnUNet_raw"), holdout(w, "--fraction", "0.5"))[1], "is not writable"),
    ("compare-o-is-file", "output",
     lambda w, m: ((w / "ev2").mkdir(), shutil.copy(w / "evaluation" / "per_case.csv", w / "ev2"),
                   (w / "cmp").write_text("x"),
                   ["compare", str(w / "evaluation"), str(w / "ev2"), "-o", str(w / "cmp")])[3], "cmp is a file"),
    ("average-seeds-output-exists", "output",
     lambda w, m: ((w / "ev2").mkdir(), [shutil.copy(w / "evaluation" / n, w / "ev2") for n in
                                         ("per_case.csv", "summary.json")], (w / "avg").mkdir(),
                   (w / "avg" / "per_case.csv").write_text("x"),
                   ["average-seeds", str(w / "evaluation"), str(w / "ev2"), "-o", str(w / "avg")])[4],
     "per_case.csv exists; pass --overwrite"),
    ("gallery-o-exists", "output", lambda w, m: (_file(w / "g.html"), gallery(w, "-o", str(w / "g.html")))[1],
     "already exists"),
    ("gallery-o-in-pred", "output", lambda w, m: gallery(w, "-o", str(w / "pred" / "g.html")),
     "is in the input folder"),
    ("export-o-exists", "output", lambda w, m: (_file(w / "m.onnx"), export(w))[1], "already exists"),
    ("export-o-folder", "output", lambda w, m: export(w, out="in"), "is a folder"),
    # --- corrupt or foreign inputs ---------------------------------------------------------------------------
    ("export-no-head", "input", lambda w, m: export(w), "has no 'nnunet_mtl.head' section"),
    ("export-unknown-trainer", "input", lambda w, m: export(w, "-tr", "nnUNetTrainerNope"), "no trained model"),
    ("gallery-no-reference", "input", lambda w, m: ["gallery", "-pred", str(w / "pred")], "no reference"),
    ("gallery-no-images", "input", lambda w, m: gallery(w, "-i", str(w / "nnUNet_raw")), "have no image"),
    ("crossval-validation-without-classes", "input",
     lambda w, m: ((w / "nnUNet_results" / "Dataset777_A" / "nnUNetTrainerMTL__nnUNetPlans__2d" / "fold_0"
                    / "validation").mkdir(),
                   crossval(w))[1], "fold 0's final validation to have run"),
    ("crossval-not-validated", "input", lambda w, m: crossval(w), "fold_0/validation not found; expected fold 0"),
    ("crossval-unknown-trainer", "input", lambda w, m: crossval(w, "-tr", "nnUNetTrainerNope"), "no trained model"),
    ("average-seeds-missing-case", "input",
     lambda w, m: ((w / "ev2").mkdir(), shutil.copy(w / "evaluation" / "summary.json", w / "ev2"),
                   (w / "ev2" / "per_case.csv").write_text(
                       "".join((w / "evaluation" / "per_case.csv").read_text().splitlines(True)[:-1])),
                   ["average-seeds", str(w / "evaluation"), str(w / "ev2"), "-o", str(w / "avg")])[3],
     "is missing in run"),
    ("gallery-size-5", "value", lambda w, m: gallery(w, "--size", "5"), "--size 5"),
    ("export-zero-tolerance", "value", lambda w, m: export(w, "--tolerance", "0"), "--tolerance 0"),
    ("export-m-and-d", "value", lambda w, m: ["export", "-m", str(w), "-d", "777", "-o", str(w / "x.onnx")],
     "expected no -d / -c beside it"),
    ("crossval-negative-fold", "value", lambda w, m: crossval(w, "-f", "-1"), "fold numbers are 0 or more"),
    ("average-seeds-one-run", "value", lambda w, m: ["average-seeds", str(w / "evaluation"), "-o", str(w / "avg")],
     "1 run given; expected the evaluated prediction folders of at least two seeds"),
    ("compare-not-evaluated", "input",
     lambda w, m: ["compare", str(w / "pred"), str(w / "evaluation"), "-o", str(w / "cmp")],
     "run `nnunet_mtl evaluate -pred"),
    ("compare-missing-case", "input",
     lambda w, m: ((w / "ev2").mkdir(), (w / "ev2" / "per_case.csv").write_text(
         "".join((w / "evaluation" / "per_case.csv").read_text().splitlines(True)[:-1])),
                   ["compare", str(w / "evaluation"), str(w / "ev2"), "-o", str(w / "cmp")])[2],
     "is missing in run"),
    ("ensemble-folder-without-npz", "input",
     lambda w, m: (shutil.copytree(w / "pred", w / "pred2"),
                   ["ensemble", "-i", str(w / "pred"), str(w / "pred2"), "-o", str(w / "ens")])[1],
     "has no CASE.npz segmentation probabilities; expected a folder predicted with --save_probabilities"),
    ("predict-decompression-bomb", "input", lambda w, m: (_png_bomb(_first_input(w)), predict(w))[1],
     "far beyond any ultrasound frame"),
    ("predict-rgb-into-grey-model", "input",
     lambda w, m: (Image.new("RGB", (32, 32)).save(_first_input(w)), predict(w))[1], "has 3 channels (RGB)"),
    ("predict-extra-channel-file", "input",
     lambda w, m: (Image.new("L", (32, 32)).save(w / "in" / "x_0001.png"), predict(w))[1], "x_0001.png is channel 1"),
    ("predict-truncated-png", "input",
     lambda w, m: (_first_input(w).write_bytes(_first_input(w).read_bytes()[:60]), predict(w))[1],
     "_0000.png"),
    ("predict-model-copied-under-another-id", "input",
     lambda w, m: (shutil.copytree(w / "nnUNet_results" / "Dataset777_A", w / "nnUNet_results" / "Dataset778_B"),
                   predict(w)[:6] + ["778"] + predict(w)[7:])[1], "plans.json is for Dataset777_A"),
    ("predict-garbage-plans", "input",
     lambda w, m: (_file(w / "nnUNet_results" / "Dataset777_A" / "nnUNetTrainerMTL__nnUNetPlans__2d" / "plans.json",
                         "{not json"), predict(w))[1], "plans.json is not valid JSON"),
    ("predict-other-models-csv", "input",
     lambda w, m: (_file(w / "out" / "class_predictions.csv", "case_id,predicted_class,prob_TR1\n"),
                   predict(w))[1], "come from another model"),
    ("predict-step-size-0", "value", lambda w, m: predict(w, "-step_size", "0"), "-step_size 0"),
    ("predict-npp-negative", "value", lambda w, m: predict(w, "-npp", "-1"), "-npp -1"),
    ("ablate-cases-of-another-dataset", "input",
     lambda w, m: ablate(w)[:-1] + [str(_foreign_cases(w))], "have no row in"),
    ("evaluate-probability-above-1", "input",
     lambda w, m: (_edit_probs(w, "1.7,-0.7,0"), evaluate(w))[1], "expected class probabilities in [0, 1]"),
    ("evaluate-probabilities-not-summing-to-1", "input",
     lambda w, m: (_edit_probs(w, "0.6,0.6,0"), evaluate(w))[1], "sum to 1.2"),
    ("evaluate-cases-of-another-dataset", "input",
     lambda w, m: evaluate(w, "--cases", str(_foreign_cases(w))), "have no reference class in"),
    ("evaluate-bomb-mask", "input",
     lambda w, m: (_png_bomb(sorted((w / "pred").glob("*.png"))[0]), evaluate(w))[1], "DecompressionBombError"),
    ("aggregate-truncated-summary", "input",
     lambda w, m: (_file(w / "s.json", '{"segmentation": {'), ["evaluate", "--aggregate", str(w / "s.json"),
                                                               str(w / "evaluation" / "summary.json")])[1],
     "s.json is not valid JSON"),
    ("pretrained-truncated-checkpoint", "input",
     lambda w, m: (_file(w / "cut.pth", "PK\x03\x04"), ["pretrained", "-i", str(w / "cut.pth"), "-o",
                                                         str(w / "new.pth"), "-d", "777"])[1],
     "cut.pth cannot be read as a checkpoint"),
    ("drop-masks-unknown-source", "input", lambda w, m: drop_masks(w, "-d", "999"), "no dataset with id 999"),
    ("drop-masks-source-already-partial", "input",
     lambda w, m: (main(drop_masks(w, "--into", "778")), drop_masks(w, "-d", "778", "--into", "779"))[1],
     "Dataset778_A_masks50 is already partially annotated"),
    ("drop-masks-keep-above-1", "value", lambda w, m: drop_masks(w, "--keep", "1.5"), "--keep 1.5 is outside (0, 1]"),
    ("drop-masks-bad-name", "value", lambda w, m: drop_masks(w, "--name", "a b"), "dataset name 'a b' is not usable"),
    ("holdout-unknown-source", "input", lambda w, m: holdout(w, "--fraction", "0.5", "-d", "999"),
     "no dataset with id 999"),
    ("holdout-source-partial", "input",
     lambda w, m: (main(drop_masks(w, "--into", "778")),
                   holdout(w, "--fraction", "0.5", "-d", "778", "--into", "779"))[1],
     "Dataset778_A_masks50 is already partially annotated"),
    ("holdout-fraction-above-1", "value", lambda w, m: holdout(w, "--fraction", "1.5"),
     "--fraction 1.5 is outside (0, 1)"),
    ("holdout-per-class-too-large", "value", lambda w, m: holdout(w, "--per-class", "1"),
     "--per-class 1: class 'malignant' has 1 training patient(s) in Dataset777_A; expected at least 2"),
    ("holdout-unknown-class", "value", lambda w, m: holdout(w, "--per-class", "1", "--classes", "cyst"),
     "--classes 'cyst' is not a class of Dataset777_A"),
    ("demo-unknown-trainer", "value",
     lambda w, m: ["demo", "--workdir", str(w / "demo"), "-tr", "nnUNetTrainerNope"], "nnUNetTrainerNope"),
    ("recipe-unknown-name", "input", lambda w, m: ["recipe", "show", "synthetc"], "(did you mean 'synthetic'?)"),
    ("recipe-malformed-field", "input",
     lambda w, m: (_file(w / "mine.toml", 'schema = 1\nname = "mine"\ntitle = "t"\n[datasets.a]\nid = 5\n'
                   'name = "A"\nconverter = "synthetic"\n[split]\nkind = "kfold"\nfolds = 1\n[[rows]]\n'
                   'key = "r"\ntrainer = "nnUNetTrainerMTL_tiny"\ndataset = "a"\n'),
                   ["recipe", "show", str(w / "mine.toml")])[1], "mine.toml: split.folds: 1; expected at least 2"),
    ("recipe-data-unknown-key", "value",
     lambda w, m: ["recipe", "run", "synthetic", "--workdir", str(w / "rw"), "--data", f"BUSI={w}"],
     "synthetic reads no data 'BUSI'"),
    ("recipe-workdir-is-file", "output",
     lambda w, m: (_file(w / "rw"), ["recipe", "run", "synthetic", "--workdir", str(w / "rw")])[1],
     "rw is a file; expected a folder"),
    ("recipe-workdir-is-file-dry-run", "output",
     lambda w, m: (_file(w / "rw"), ["recipe", "run", "synthetic", "--workdir", str(w / "rw"), "--dry-run"])[1],
     "is a file; expected a folder"),
    ("recipe-workdir-read-only", "output",
     lambda w, m: (deny_writes(m, w / "ro"), (w / "ro").mkdir(),
                   ["recipe", "run", "synthetic", "--workdir", str(w / "ro" / "run")])[2], "ro is not writable"),
    ("recipe-only-matches-nothing", "value",
     lambda w, m: ["recipe", "run", "synthetic", "--workdir", str(w / "rw"), "--only", "train:nope:*"],
     "--only 'train:nope:*' matches no step"),
    ("recipe-report-no-run", "input",
     lambda w, m: ["recipe", "report", "synthetic", "--workdir", str(w / "no_run")], "no_run does not exist"),
    ("recipe-archive-no-results", "input",
     lambda w, m: ((w / "bare").mkdir(), ["recipe", "archive", "--workdir", str(w / "bare"), "-o", str(w / "k")])[1],
     "bare holds no results"),
    ("recipe-archive-into-the-workdir", "output",
     lambda w, m: (_file(w / "run" / "logs" / "steps.jsonl", "{}\n"),
                   ["recipe", "archive", "--workdir", str(w / "run"), "-o", str(w / "run" / "kept")])[1],
     "is inside the work folder"),
    ("recipe-archive-exists", "output",
     lambda w, m: (_file(w / "run" / "logs" / "steps.jsonl", "{}\n"), _file(w / "k" / "logs" / "steps.jsonl", "{}\n"),
                   ["recipe", "archive", "--workdir", str(w / "run"), "-o", str(w / "k")])[2],
     "steps.jsonl exists (1 of the 1 files"),
    ("recipe-archive-read-only", "output",
     lambda w, m: (_file(w / "run" / "logs" / "steps.jsonl", "{}\n"), deny_writes(m, w / "ro"), (w / "ro").mkdir(),
                   ["recipe", "archive", "--workdir", str(w / "run"), "-o", str(w / "ro" / "k")])[3],
     "ro is not writable"),
    # --- resources -----------------------------------------------------------------------------------------
    ("convert-j-0", "resources", lambda w, m: ["convert", "busi", str(w / "in"), "-j", "0"], "-j 0"),
    ("evaluate-np-0", "resources", lambda w, m: evaluate(w, "-np", "0"), "-np 0"),
    ("radiomics-np-0", "resources", lambda w, m: ["radiomics", "-d", "777", "-np", "0"], "-np 0"),
    ("recipe-np-0", "resources",
     lambda w, m: ["recipe", "run", "synthetic", "--workdir", str(w / "rw"), "-np", "0"], "-np 0"),
]


@pytest.mark.parametrize("case_id, kind, setup, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, monkeypatch, capsys, case_id, kind, setup, needle):
    err = assert_refused(setup(world, monkeypatch), world, capsys)
    assert needle in err, err


def test_sweep_covers_every_subcommand_and_class():
    """Every subcommand that reads or writes files is in the sweep (trainer-dir only prints a path), and each of
    the input classes of issue 13 has cases."""
    from nnunet_mtl.cli.main import SUBCOMMAND_MODULES
    prefixes = {"ablate_guidance": "ablate", "evaluate": "evaluate", "trainer_dir": None, "drop_masks": "drop-masks",
                "average_seeds": "average-seeds"}
    for module in SUBCOMMAND_MODULES:
        prefix = prefixes.get(module, module)
        if prefix is not None:
            assert any(c[0].startswith(prefix + "-") for c in CASES), module
    assert {c[1] for c in CASES} == {"output", "input", "value", "resources"}


def test_too_many_processes_are_capped_and_said(world, capsys, monkeypatch):
    import nnunet_mtl.resources as resources
    monkeypatch.setattr(resources, "available_cores", lambda: 2)
    assert resources.capped(64, "-j", 3, what="images") == (2, "-j 64 capped to 2 (the cores of this machine)")
    assert resources.capped(64, "-j", 1, what="images") == (1, "-j 64 capped to 1 (the images to process)")
    assert resources.capped(2, "-j", 10) == (2, None) and resources.capped(0, "-npp", allow_zero=True) == (0, None)
    assert main(["evaluate", "-pred", str(world / "pred"), "-d", "777", "-np", "999", "-o", str(world / "e")]) == 0
    assert "note: -np 999 capped to 2 (the cores of this machine)" in capsys.readouterr().out
