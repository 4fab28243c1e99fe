"""The Python API (nnunet_mtl.api, docs/python_api.md) on the session's trained tiny phantom (tests/conftest.py).

What ``load_model(...).predict`` returns must be what ``nnunet_mtl predict`` writes for the same images and
settings: the masks equal, bit for bit (float32 on the CPU, ``--cpu-amp off``), and the class probabilities equal to
class_predictions.csv's to its 6 decimals, in the dataset's class order. An array gives the same prediction as the
file it was read from, in every accepted shape. Every refusal is one NnunetMtlError line naming the value or file.
The lesion map is checked against ``--save-attention``'s PNGs on tests/attention_helpers.py's predictor (the one
tests/test_attention_maps.py checks), whose head's map is known.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_mtl import load_model
from nnunet_mtl.api import Model, Prediction
from nnunet_mtl.errors import NnunetMtlError
from tests.e2e_helpers import BIN, run, use_in_process
from tests.file_helpers import read_png

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def phantom(trained_phantom):
    """The session's trained phantom, with its test images."""
    return {**trained_phantom, "images": trained_phantom["raw"] / "imagesTs"}


@pytest.fixture(scope="module")
def model(phantom) -> Model:
    """Fold 0, float32, no test-time mirroring: the fast settings of the tests that do not test mirroring."""
    return load_model(phantom["model"], folds=(0,), cpu_amp="off", use_mirroring=False)


def one_line_error(call, *needles: str) -> str:
    """The message of the NnunetMtlError ``call()`` raises: one line, naming each of ``needles``."""
    with pytest.raises(NnunetMtlError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ------------------------------------------------------------------------------------ the same as the command
def test_predictions_equal_what_nnunet_mtl_predict_writes(phantom):
    """Default settings (test-time mirroring on) in float32: masks identical to the command's PNGs, probabilities
    and predicted class as in its class_predictions.csv, for every test image. The command runs nnU-Net's sequential
    path (-npp 0 -nps 0: no worker processes, 20-40 s less on a loaded 2-core machine); tests/test_e2e.py checks
    that its parallel path writes the masks of nnUNetv2_predict."""
    out = phantom["root"] / "api_cli_prediction"
    run([BIN / "nnunet_mtl", "predict", "-i", phantom["images"], "-o", out, "-d", phantom["dataset"], "-c", "2d",
         "-tr", phantom["trainer"], "-f", "0", "-device", "cpu", "--cpu-amp", "off", "-npp", "0", "-nps", "0"],
        phantom["env"])
    with open(out / "class_predictions.csv", newline="") as f:
        rows = {row["case_id"]: row for row in csv.DictReader(f)}
    with_tta = load_model(phantom["model"], folds=(0,), cpu_amp="off")
    predictions = list(with_tta.predict_folder(phantom["images"]))
    assert [p.case_id for p in predictions] == sorted(rows) and len(rows) >= 4
    for p in predictions:
        expected = read_png(out / f"{p.case_id}.png")
        assert p.mask.shape == expected.shape and p.mask.dtype == np.uint8
        assert np.array_equal(p.mask, expected), p.case_id
        row = rows[p.case_id]
        assert list(p.class_probabilities) == [c[len("prob_"):] for c in row if c.startswith("prob_")]
        for name, value in p.class_probabilities.items():
            assert abs(value - float(row[f"prob_{name}"])) <= 1e-5, (p.case_id, name)
        assert p.predicted_class == row["predicted_class"]
        assert p.files == (phantom["images"] / f"{p.case_id}_0000.png",) and p.attention is None
    assert any(p.mask.any() for p in predictions)  # the comparison is not between empty masks only


def test_class_names_are_the_datasets_in_class_index_order(phantom, model):
    labels = json.loads((phantom["raw"] / "dataset.json").read_text())["class_labels"]
    expected = tuple(sorted(labels, key=labels.get))
    assert model.class_names == expected
    p = model.predict(sorted(phantom["images"].glob("*_0000.png"))[0])
    assert isinstance(p, Prediction) and tuple(p.class_probabilities) == expected
    assert abs(sum(p.class_probabilities.values()) - 1) < 1e-5
    assert p.predicted_class == expected[int(np.argmax(p.probabilities))]
    with pytest.raises(AttributeError):  # frozen: a prediction is a value
        p.predicted_class = "other"


def test_an_array_predicts_as_its_file_in_every_accepted_shape(phantom, model):
    """(H, W), (1, H, W), nnU-Net's (1, 1, H, W), integer or float, with the spacing nnU-Net's PNG reader gives
    (default, 2 values or 3): the file's mask and probabilities exactly."""
    files = sorted(phantom["images"].glob("*_0000.png"))[:2]
    for file in files:
        from_file = model.predict(file)
        image = read_png(file)
        assert image.ndim == 2
        variants = [(image, None), (image[None], None), (image[None, None], None), (image.astype(np.float64), None),
                    (image, (1.0, 1.0)), (image, (999, 1, 1))]
        for array, spacing in variants:
            p = model.predict(array, spacing=spacing)
            assert np.array_equal(p.mask, from_file.mask), (array.shape, spacing)
            assert p.class_probabilities == from_file.class_probabilities, (array.shape, spacing)
            assert p.case_id is None and p.files == ()
    many = list(model.predict_many([files[0], read_png(files[1])]))
    assert [p.case_id for p in many] == [files[0].name[:-len("_0000.png")], None]
    assert np.array_equal(many[1].mask, model.predict(files[1]).mask)


def test_another_spacing_resamples(phantom, model):
    """The spacing of an array is used: at twice the training spacing nnU-Net resamples the image to twice its size
    (another prediction), and the mask comes back in the array's shape."""
    image = read_png(sorted(phantom["images"].glob("*_0000.png"))[0])
    p = model.predict(image, spacing=(2.0, 2.0))
    assert p.mask.shape == image.shape
    assert p.class_probabilities != model.predict(image).class_probabilities


def test_load_by_dataset_and_configuration(phantom, model, monkeypatch):
    use_in_process(monkeypatch, phantom["root"])
    by_name = load_model(dataset=phantom["dataset"], configuration="2d", trainer=phantom["trainer"], folds=[0],
                         cpu_amp="off", use_mirroring=False)
    assert by_name.model_folder == phantom["model"] and by_name.folds == (0,)
    file = sorted(phantom["images"].glob("*_0000.png"))[-1]
    a, b = by_name.predict(file), model.predict(file)
    assert np.array_equal(a.mask, b.mask) and a.class_probabilities == b.class_probabilities
    one_line_error(lambda: load_model(dataset=phantom["dataset"], configuration="3d_fullres",
                                      trainer=phantom["trainer"]), "3d_fullres")


def test_import_stays_light():
    """``import nnunet_mtl`` (and nnunet_mtl.api) import neither torch nor nnU-Net; load_model is reachable."""
    code = ("import sys, nnunet_mtl, nnunet_mtl.api; from nnunet_mtl import load_model, Model, Prediction; "
            "heavy = [m for m in ('torch', 'nnunetv2') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------------------------------------------------------------ refusals
def copy_model(phantom, dest: Path, plans_edit=None, checkpoint_bytes: bytes | None = None) -> Path:
    """The model folder's JSON files under ``dest`` (plans.json edited by ``plans_edit``), fold_0's checkpoint linked
    (or ``checkpoint_bytes`` written in its place)."""
    dest.mkdir(parents=True)
    shutil.copy(phantom["model"] / "dataset.json", dest / "dataset.json")
    plans = json.loads((phantom["model"] / "plans.json").read_text())
    if plans_edit is not None:
        plans_edit(plans)
    (dest / "plans.json").write_text(json.dumps(plans))
    (dest / "fold_0").mkdir()
    if checkpoint_bytes is None:
        (dest / "fold_0" / "checkpoint_final.pth").symlink_to(phantom["model"] / "fold_0" / "checkpoint_final.pth")
    else:
        (dest / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint_bytes)
    return dest


def test_bad_models_are_one_line(phantom, tmp_path):
    folder = phantom["model"]
    one_line_error(lambda: load_model(tmp_path / "missing"), str(tmp_path / "missing"), "does not exist")
    (tmp_path / "a_file").write_text("")
    one_line_error(lambda: load_model(tmp_path / "a_file"), "a_file", "is a file")
    one_line_error(lambda: load_model(), "no model given")
    one_line_error(lambda: load_model(folder, dataset="501"), "expected one of them")
    one_line_error(lambda: load_model(folder, folds=(0, 3)), str(folder / "fold_3" / "checkpoint_final.pth"),
                   "folds with checkpoint_final.pth here: 0")
    one_line_error(lambda: load_model(folder, checkpoint="checkpoint_other.pth"), "checkpoint_other.pth")
    one_line_error(lambda: load_model(folder, folds=("first",)), "'first'")
    one_line_error(lambda: load_model(folder, folds=()), "folds is empty")
    one_line_error(lambda: load_model(folder, device="gpu0"), "'gpu0'")
    one_line_error(lambda: load_model(folder, tile_step_size=0), "tile_step_size 0")
    one_line_error(lambda: load_model(folder, cpu_amp="fast"), "'fast'")
    if not torch.cuda.is_available():
        one_line_error(lambda: load_model(folder, device="cuda"), "no CUDA device")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: load_model(empty), str(empty / "plans.json"))

    def plain(plans):
        del plans["nnunet_mtl"]
    # a plain nnU-Net trainer's folder: its plans have no nnunet_mtl section
    plain_folder = copy_model(phantom, tmp_path / "Dataset501_X" / "nnUNetTrainer__nnUNetPlans__2d", plain)
    one_line_error(lambda: load_model(plain_folder), "nnUNetTrainer", "no classification head")

    def segmentation_only(plans):
        plans["nnunet_mtl"]["head"]["kind"] = "none"
    seg_only = copy_model(phantom, tmp_path / "seg" / "nnUNetTrainerSegOnly__nnUNetPlans__2d", segmentation_only)
    one_line_error(lambda: load_model(seg_only), "nnUNetTrainerSegOnly", "segmentation-only")

    broken = copy_model(phantom, tmp_path / "broken" / "nnUNetTrainerMTL__nnUNetPlans__2d",
                        checkpoint_bytes=b"not a checkpoint")
    one_line_error(lambda: load_model(broken), "fold_0/checkpoint_final.pth", "cannot be read")
    assert load_model(folder, folds=None, use_mirroring=False).folds == (0,)  # auto-detected: the trained fold


def test_bad_images_are_one_line(phantom, model, tmp_path):
    image = read_png(sorted(phantom["images"].glob("*_0000.png"))[0])
    accepted = "(H, W), (1, H, W) or nnU-Net's (1, 1, H, W)"
    one_line_error(lambda: model.predict(np.stack([image] * 3)), "(3, 64, 64)", accepted)
    one_line_error(lambda: model.predict(image[None, None, None]), "(1, 1, 1, 64, 64)", accepted)
    one_line_error(lambda: model.predict(np.zeros(64)), "(64,)", accepted)
    one_line_error(lambda: model.predict(image[None].repeat(2, 0)[None]), "(1, 2, 64, 64)", accepted)
    one_line_error(lambda: model.predict(image.astype(complex)), "complex")
    one_line_error(lambda: model.predict(np.zeros((0, 64))), "(0, 64)", "empty")
    nan = image.astype(np.float32)
    nan[3, 3] = np.nan
    one_line_error(lambda: model.predict(nan), "NaN")
    one_line_error(lambda: model.predict(image, spacing=(1.0, -1.0)), "(1.0, -1.0)")
    one_line_error(lambda: model.predict(image.tolist()), "list")

    one_line_error(lambda: model.predict(tmp_path / "missing_0000.png"), "missing_0000.png", "does not exist")
    one_line_error(lambda: model.predict(tmp_path), str(tmp_path), "predict_folder")
    Image.fromarray(image).save(tmp_path / "case_0000.bmp")
    one_line_error(lambda: model.predict(tmp_path / "case_0000.bmp"), "case_0000.bmp", ".png")
    Image.fromarray(np.stack([image] * 3, -1)).save(tmp_path / "rgb_0000.png")
    one_line_error(lambda: model.predict(tmp_path / "rgb_0000.png"), "rgb_0000.png", "3 channels")
    (tmp_path / "broken_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    one_line_error(lambda: model.predict(tmp_path / "broken_0000.png"), "broken_0000.png")
    Image.fromarray(image).save(tmp_path / "grey_0000.png")
    one_line_error(lambda: model.predict(tmp_path / "grey_0000.png", spacing=(1, 1)), "spacing")
    one_line_error(lambda: model.predict([tmp_path / "grey_0000.png"] * 2), "2 file(s)", "1 channel(s)")

    one_line_error(lambda: model.predict_folder(tmp_path / "nowhere"), "nowhere", "does not exist")
    (tmp_path / "no_images").mkdir()
    one_line_error(lambda: model.predict_folder(tmp_path / "no_images"), "no_images", "*_0000.png")


# ------------------------------------------------------------------------------------------------ lesion maps
def test_attention_equals_what_save_attention_writes(tmp_path):
    """A head with a lesion map (tests/attention_helpers.py's, two folds, mirroring): the API's P, stored as
    round(255 P), is the PNG ``--save-attention`` writes, with the same mask and class probabilities; a head without
    one gives None."""
    from nnunet_mtl.inference.predictor import attention_to_uint8
    from nnunet_mtl.evaluation.shared import ATTENTION_FOLDER
    from tests.attention_helpers import (KnownAttentionConfig, NoAttentionConfig, make_predictor, predict_sequential,
                                         write_images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster on a shared machine
    try:
        images = write_images(tmp_path / "in")
        reference = make_predictor(KnownAttentionConfig(num_classes=2), folds=2)
        predict_sequential(reference, tmp_path / "in", tmp_path / "out")
        model = Model(make_predictor(KnownAttentionConfig(num_classes=2), folds=2))
        assert model.has_attention and model.class_names == ("benign", "malignant")
        for case, image in images.items():
            p = model.predict(tmp_path / "in" / f"{case}_0000.png")
            assert p.attention.shape == image.shape and p.attention.dtype == np.float32
            assert np.array_equal(attention_to_uint8(p.attention),
                                  read_png(tmp_path / "out" / ATTENTION_FOLDER / f"{case}.png")), case
            assert np.array_equal(p.mask, read_png(tmp_path / "out" / f"{case}.png")), case
            assert np.allclose(p.probabilities, reference.class_probabilities[case], rtol=0, atol=1e-6), case
            assert 0.05 < p.attention.std()  # a map with structure
            from_array = model.predict(image)
            assert np.array_equal(from_array.attention, p.attention)
        without = Model(make_predictor(NoAttentionConfig(num_classes=2)))
        assert not without.has_attention and without.predict(images["small"]).attention is None
    finally:
        torch.set_num_threads(threads)
