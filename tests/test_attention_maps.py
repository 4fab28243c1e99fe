"""Lesion maps: ``nnunet_mtl predict --save-attention`` (P upsampled per tile, averaged over the test-time mirrors,
stitched like nnU-Net's logits, averaged over folds and put back into the image's geometry by nnU-Net's export) and
``nnunet_mtl evaluate --attention`` (attention_iou: Fan et al.'s JSI of the localization map).

The predictor runs on a real nnU-Net U-Net (tests/network_helpers.py's) with a head registered in
tests/attention_helpers.py whose attention map is known: a constant (which only the geometry can change) or
sigmoid(1x1 conv of the bottleneck), which the test recomputes tile by tile from nnU-Net's own slicers,
preprocessing and Gaussian."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.evaluate import evaluate_folder
from nnunet_mtl.evaluation.formatting import format_summary_table
from nnunet_mtl.evaluation.shared import ATTENTION_FOLDER
from nnunet_mtl.networks.multitask_unet import PLANS_KEY
from tests.attention_helpers import (CLASS_LABELS, KnownAttentionConfig, NoAttentionConfig, make_predictor,
                                     predict_sequential, write_images)
from tests.file_helpers import read_png

PATCH = 32  # tests/network_helpers.py's plans: 32 x 32 patches, bottleneck 4 x 4 (three stride-2 stages)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The networks here are tiny: one thread each is many times faster than torch's default on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_attention(predictor, image_file: Path, mirroring=True) -> np.ndarray:
    """P of one image as the specification says, recomputed here: nnU-Net's preprocessing and padding, its slicers
    and Gaussian; per tile P upsampled bilinearly, averaged over the flipped-back mirrors; tiles weighted by the
    Gaussian; padding cut; mean over folds; put back into the uncropped image (0 outside the crop box)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    cm = predictor.configuration_manager
    data, _, properties = cm.preprocessor_class(verbose=False).run_case(
        [str(image_file)], None, predictor.plans_manager, cm, predictor.dataset_json)
    data = torch.from_numpy(np.asarray(data, dtype=np.float32))
    padded, revert = pad_nd_image(data, cm.patch_size, "constant", {"value": 0}, True, None)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    gaussian = compute_gaussian(tuple(cm.patch_size), 1. / 8, 10, dtype=torch.float64, device=torch.device("cpu"))
    mirrors = [(), (2,), (3,), (2, 3)] if mirroring else [()]
    network = predictor.network
    maps = []
    with torch.no_grad():
        for params in predictor.list_of_parameters:
            network.load_state_dict(params)
            total = torch.zeros(padded.shape[1:], dtype=torch.float64)
            weight = torch.zeros(padded.shape[1:], dtype=torch.float64)
            for sl in slicers:
                tile = padded[sl][None]
                tiles = []
                for axes in mirrors:
                    p = network(torch.flip(tile, axes) if axes else tile, return_aux=True)["attention"]
                    up = F.interpolate(p, size=tuple(cm.patch_size), mode="bilinear", align_corners=False)
                    tiles.append(torch.flip(up, axes) if axes else up)
                total[sl[1:]] += torch.stack(tiles).mean(0)[0, 0].double() * gaussian
                weight[sl[1:]] += gaussian
            maps.append((total / weight)[tuple(revert[1:])])
    inside = torch.stack(maps).mean(0).numpy()  # (1, h, w): the cropped image's geometry
    full = np.zeros(properties["shape_before_cropping"])
    (r0, r1), (c0, c1) = properties["bbox_used_for_cropping"][1:]
    full[:, r0:r1, c0:c1] = inside
    return full[0]


# ------------------------------------------------------------------------------------------------ predictor
def test_a_constant_attention_comes_back_in_the_images_geometry(tmp_path):
    """P = 0.29 everywhere: round(255 * 0.29) = round(73.95) = 74 inside nnU-Net's crop box, 0 outside (where
    nnU-Net says background), in the shape of each input image, however tiles, mirrors and padding fell."""
    images = write_images(tmp_path / "in")
    predictor = make_predictor(KnownAttentionConfig(num_classes=2, constant=0.29))
    predict_sequential(predictor, tmp_path / "in", tmp_path / "out")
    crop = read_png(tmp_path / "out" / ATTENTION_FOLDER / "crop.png")
    assert crop.dtype == np.uint8 and crop.shape == images["crop"].shape
    expected = np.zeros_like(crop)
    expected[4:40, 6:46] = 74  # round(255 * 0.29) = round(73.95)
    assert np.array_equal(crop, expected)
    small = read_png(tmp_path / "out" / ATTENTION_FOLDER / "small.png")
    assert small.shape == (24, 20) and (small == 74).all()
    assert sorted(predictor.attention_written) == ["crop", "small"]


@pytest.mark.parametrize("mirroring", [True, False])
def test_stitched_mirrored_fold_averaged_attention_matches_the_specification(tmp_path, mirroring):
    write_images(tmp_path / "in")
    predictor = make_predictor(KnownAttentionConfig(num_classes=2), folds=2, mirroring=mirroring)
    predict_sequential(predictor, tmp_path / "in", tmp_path / "out")
    for case, shape in (("crop", (44, 52)), ("small", (24, 20))):
        expected = expected_attention(predictor, tmp_path / "in" / f"{case}_0000.png", mirroring)
        assert expected.shape == shape
        assert 0.05 < expected.std()  # a map with structure, not a constant
        got = read_png(tmp_path / "out" / ATTENTION_FOLDER / f"{case}.png").astype(int)
        assert got.shape == shape
        assert np.abs(got - 255 * expected).max() <= 0.5 + 1e-3, case  # round(255 P), float32 vs float64


def test_one_fold_differs_from_the_fold_mean(tmp_path):
    """The fold average is really taken: fold 0 alone gives another map than folds 0 and 1 together."""
    write_images(tmp_path / "in")
    both = make_predictor(KnownAttentionConfig(num_classes=2), folds=2)
    predict_sequential(both, tmp_path / "in", tmp_path / "both")
    one = make_predictor(KnownAttentionConfig(num_classes=2), folds=1)
    predict_sequential(one, tmp_path / "in", tmp_path / "one")
    a = read_png(tmp_path / "both" / ATTENTION_FOLDER / "crop.png").astype(int)
    b = read_png(tmp_path / "one" / ATTENTION_FOLDER / "crop.png").astype(int)
    assert np.abs(a - b).max() > 5


def test_masks_and_classes_are_the_same_bytes_with_and_without_attention(tmp_path):
    write_images(tmp_path / "in")
    outputs = {}
    for name, attention in (("with", True), ("without", False)):
        predictor = make_predictor(KnownAttentionConfig(num_classes=2), folds=2)
        predict_sequential(predictor, tmp_path / "in", tmp_path / name, attention=attention)
        predictor.write_class_predictions(tmp_path / name / "class_predictions.csv")
        outputs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir() if p.is_file()
                         and (p.suffix == ".png" or p.name == "class_predictions.csv")}
    assert sorted(outputs["with"]) == ["class_predictions.csv", "crop.png", "small.png"]
    assert outputs["with"] == outputs["without"]
    assert (tmp_path / "with" / ATTENTION_FOLDER).is_dir() and not (tmp_path / "without" / ATTENTION_FOLDER).exists()


def test_the_parallel_path_writes_the_same_maps(tmp_path):
    """predict_from_files (preprocessing and export workers: the crop box comes with each case) and the sequential
    path (which preprocesses again for it) give the same lesion maps."""
    write_images(tmp_path / "in")
    sequential = make_predictor(KnownAttentionConfig(num_classes=2), folds=2)
    predict_sequential(sequential, tmp_path / "in", tmp_path / "seq")
    parallel = make_predictor(KnownAttentionConfig(num_classes=2), folds=2)
    parallel.save_attention_into(tmp_path / "par" / ATTENTION_FOLDER)
    (tmp_path / "par").mkdir()
    parallel.predict_from_files(str(tmp_path / "in"), str(tmp_path / "par"), save_probabilities=False, overwrite=True,
                                num_processes_preprocessing=1, num_processes_segmentation_export=1)
    for case in ("crop", "small"):
        assert (tmp_path / "par" / ATTENTION_FOLDER / f"{case}.png").read_bytes() == \
            (tmp_path / "seq" / ATTENTION_FOLDER / f"{case}.png").read_bytes()
        assert (tmp_path / "par" / f"{case}.png").read_bytes() == (tmp_path / "seq" / f"{case}.png").read_bytes()


def test_a_head_without_attention_is_refused_in_one_line(tmp_path):
    predictor = make_predictor(NoAttentionConfig(num_classes=2))
    with pytest.raises(NnunetMtlError, match="returns no attention map") as info:
        predictor.save_attention_into(tmp_path / "out" / ATTENTION_FOLDER)
    assert "test_no_attention" in str(info.value) and "\n" not in str(info.value)
    assert predictor.attention_folder is None and not (tmp_path / "out").exists()
    assert make_predictor(KnownAttentionConfig(num_classes=2)).head_returns_attention()


def test_attention_to_uint8_puts_one_half_at_128():
    from nnunet_mtl.inference.predictor import attention_to_uint8
    p = np.array([0.0, 0.4999, 0.5, 0.29, 1.0, 1.2, -0.1])
    assert attention_to_uint8(p).tolist() == [0, 127, 128, 74, 255, 255, 0]


# ------------------------------------------------------------------------------------------------ the commands
@pytest.fixture
def model(tmp_path, monkeypatch):
    """tests/test_per_fold.py's fake model folder (enough for predict's checks before loading), with load_predictor
    replaced by make_predictor of a head chosen by the test (a real MultitaskPredictor)."""
    from nnunet_mtl.inference import runner
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    folder = tmp_path / "nnUNet_results" / "Dataset777_A" / "nnUNetTrainerMTL__nnUNetPlans__2d"
    for k in range(2):
        (folder / f"fold_{k}").mkdir(parents=True)
        torch.save({"init_args": {"plans": {"dataset_name": "Dataset777_A"}}}, folder / f"fold_{k}" /
                   "checkpoint_final.pth")
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset777_A",
                                                   PLANS_KEY: {"class_labels": CLASS_LABELS}}))
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".png", "class_labels": CLASS_LABELS,
                                                     "channel_names": {"0": "US"}}))
    write_images(tmp_path / "in")
    state = {"head": KnownAttentionConfig(num_classes=2), "loaded": []}

    def load_predictor(args, checked=None):
        folds = [int(f) for f in args.f]
        state["loaded"].append(folds)
        return make_predictor(state["head"], folds=len(folds))

    monkeypatch.setattr(runner, "load_predictor", load_predictor)  # where predict's runner looks it up
    return {"root": tmp_path, "state": state}


def predict_argv(model, out, *extra, folds=("0",)):
    return ["predict", "-i", str(model["root"] / "in"), "-o", str(out), "-d", "777", "-c", "2d", "-f", *folds,
            "-device", "cpu", "-npp", "0", "-nps", "0", *extra]


def test_predict_save_attention_and_per_fold(model, capsys):
    root = model["root"]
    assert main(predict_argv(model, root / "plain", "--save-attention")) == 0
    assert "lesion maps:" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "plain" / ATTENTION_FOLDER).iterdir()) == ["crop.png", "small.png"]
    assert main(predict_argv(model, root / "pf", "--save-attention", "--per-fold", folds=("0", "1"))) == 0
    for sub in ("fold_0", "fold_1", "ensemble"):
        assert sorted(p.name for p in (root / "pf" / sub / ATTENTION_FOLDER).iterdir()) == ["crop.png", "small.png"]
    info = json.loads((root / "pf" / "per_fold.json").read_text())
    assert all("--save-attention" in entry["command"] for entry in info["subfolders"].values())
    # fold_0 alone is the plain -f 0 prediction, byte for byte
    assert (root / "pf" / "fold_0" / ATTENTION_FOLDER / "crop.png").read_bytes() == \
        (root / "plain" / ATTENTION_FOLDER / "crop.png").read_bytes()


def test_predict_save_attention_without_attention_head_writes_nothing(model, capsys):
    model["state"]["head"] = NoAttentionConfig(num_classes=2)
    root = model["root"]
    for extra, folds in (((), ("0",)), (("--per-fold",), ("0", "1"))):
        out = root / "out"
        code = main(predict_argv(model, out, "--save-attention", *extra, folds=folds))
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "returns no attention map" in err and "test_no_attention" in err
        assert not out.exists()


def test_cli_constants_agree():
    from nnunet_mtl.cli import predict as predict_cli
    assert predict_cli.ATTENTION_FOLDER == ATTENTION_FOLDER


# ------------------------------------------------------------------------------------------------ evaluate --attention
def _square(top, left, size, shape=(16, 16), value=1):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = value
    return m


@pytest.fixture
def scored(tmp_path):
    """Three cases with references, masks and stored lesion maps whose IoU at 0.5 is known by hand; case 'n' has an
    unannotated reference (all 2)."""
    pred, ref, att = tmp_path / "pred", tmp_path / "ref", tmp_path / "pred" / ATTENTION_FOLDER
    for folder in (pred, ref, att):
        folder.mkdir(parents=True, exist_ok=True)
    refs = {"a": _square(2, 2, 8), "b": _square(4, 4, 4), "n": np.full((16, 16), 2, np.uint8)}
    # a: P 0.8 on the reference's 8 x 8 plus P 0.5 (= 128) on 4 more columns -> IoU 64 / 96;
    #    P 0.49 (= 125) elsewhere stays outside
    att_a = np.full((16, 16), 125, np.uint8)
    att_a[2:10, 2:10] = 204
    att_a[2:10, 10:14] = 128
    # b: P >= 0.5 on an 8 x 8 square that holds the 4 x 4 reference -> IoU 16 / 64
    att_b = _square(2, 2, 8, value=200)
    atts = {"a": att_a, "b": att_b, "n": np.full((16, 16), 255, np.uint8)}
    for case in refs:
        Image.fromarray(refs[case]).save(ref / f"{case}.png")
        Image.fromarray(refs[case] if case != "n" else _square(0, 0, 4)).save(pred / f"{case}.png")
        Image.fromarray(atts[case]).save(att / f"{case}.png")
    return tmp_path


def test_attention_iou_by_hand(scored):
    summary = evaluate_folder(scored / "pred", scored / "ref", attention=True, output_dir=scored / "ev",
                              bootstrap=200)
    seg = summary["segmentation"]
    assert seg["attention_iou"]["mean"] == pytest.approx((64 / 96 + 16 / 64) / 2)
    assert seg["annotated_cases"] == 2 and seg["unannotated_cases"] == 1
    assert summary["unannotated_references"] == [{"case_id": "n", "kind": "none", "source": "label map"}]
    low, high = summary["confidence_intervals"]["intervals"]["segmentation.attention_iou.mean"]
    assert low <= seg["attention_iou"]["mean"] <= high
    assert "JSI" in summary["definitions"]["attention_iou"] and "0.5" in summary["definitions"]["attention_iou"]
    with open(scored / "ev" / "per_case.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert float(rows["a"]["attention_iou"]) == pytest.approx(64 / 96) and rows["n"]["attention_iou"] == ""
    assert "attention IoU" in format_summary_table(summary)
    # without --attention: no column, no key
    plain = evaluate_folder(scored / "pred", scored / "ref", bootstrap=0)
    assert "attention_iou" not in plain["segmentation"]


def test_missing_lesion_maps_are_one_error(scored, capsys):
    (scored / "pred" / ATTENTION_FOLDER / "b.png").unlink()
    with pytest.raises(NnunetMtlError, match=r"1 predicted case\(s\) have no lesion map") as info:
        evaluate_folder(scored / "pred", scored / "ref", attention=True)
    assert "b" in str(info.value) and "\n" not in str(info.value)
    code = main(["evaluate", "-pred", str(scored / "pred"), "-ref", str(scored / "ref"), "--attention"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--save-attention" in err
    assert not (scored / "pred" / "evaluation").exists()
    import shutil
    shutil.rmtree(scored / "pred" / ATTENTION_FOLDER)
    with pytest.raises(NnunetMtlError, match="does not exist"):
        evaluate_folder(scored / "pred", scored / "ref", attention=True)
    (scored / "pred" / ATTENTION_FOLDER).mkdir()
    for case in ("a", "b", "n"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(scored / "pred" / ATTENTION_FOLDER / f"{case}.png")
    with pytest.raises(NnunetMtlError, match=r"has shape \(8, 8\) but its reference has \(16, 16\)"):
        evaluate_folder(scored / "pred", scored / "ref", attention=True)


def test_cli_attention_flag_per_fold_and_aggregate(scored, capsys):
    root = scored
    pf = root / "pf"
    for sub in ("fold_0", "fold_1"):
        import shutil
        shutil.copytree(root / "pred", pf / sub)
    assert main(["evaluate", "-pred", str(pf), "-ref", str(root / "ref"), "--attention", "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert "attention IoU" in printed
    result = json.loads((pf / "evaluation" / "per_fold_summary.json").read_text())
    m = result["mean_std_over_folds"]["metrics"]["segmentation.attention_iou.mean"]
    assert m["mean"] == pytest.approx((64 / 96 + 16 / 64) / 2) and m["ci95"] == pytest.approx([m["mean"]] * 2)
    assert main(["evaluate", "--aggregate", str(pf / "fold_0" / "evaluation" / "summary.json"), "--attention"]) == 2
    assert "--attention" in capsys.readouterr().err
    (pf / "fold_1" / ATTENTION_FOLDER / "a.png").unlink()
    assert main(["evaluate", "-pred", str(pf), "-ref", str(root / "ref"), "--attention"]) == 2
    assert "fold_1" in capsys.readouterr().err
    assert math.isfinite(m["mean"])
