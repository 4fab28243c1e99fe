"""``nnunet_mtl export`` on the session's trained tiny phantom: the ONNX graph that onnxruntime runs gives PyTorch's
mask and class logits, the JSON beside it names the dataset's classes and the preprocessing that reproduces nnU-Net's,
and bad input is one line with nothing written."""
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_fill_holes

from tests.e2e_helpers import BIN, run

pytestmark = pytest.mark.e2e
TOLERANCE = 1e-3  # the command's default; measured differences are about 1e-5


@pytest.fixture(scope="module")
def exported(trained_phantom, tmp_path_factory):
    """The phantom's fold 0 exported once by the real command (-d -c -tr -f -chk -o), with --overwrite over an
    earlier pair of files (which it replaces)."""
    out = tmp_path_factory.mktemp("export") / "phantom.onnx"
    out.write_bytes(b"an earlier graph")
    out.with_name(out.name + ".json").write_text("{}")
    result = run([BIN / "nnunet_mtl", "export", "-d", trained_phantom["dataset"], "-c", "2d", "-tr",
                  trained_phantom["trainer"], "-f", "0", "-chk", "checkpoint_final.pth", "-o", out, "--overwrite"],
                 trained_phantom["env"])
    info = json.loads(out.with_name(out.name + ".json").read_text())
    return {**trained_phantom, "onnx": out, "info": info, "stdout": result.stdout}


@pytest.fixture(scope="module")
def pytorch_model(trained_phantom):
    """The same fold as ``nnunet_mtl predict`` loads it (nnU-Net's predictor, our MultitaskPredictor), independent of
    the export's own loading code: (network in eval mode, predictor)."""
    from nnunet_mtl.inference.predictor import MultitaskPredictor
    from nnunet_mtl.paths import env_with_ext_trainer
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_extTrainer", env_with_ext_trainer()["nnUNet_extTrainer"])
        predictor = MultitaskPredictor(device=torch.device("cpu"), perform_everything_on_device=False, cpu_amp="off")
        predictor.initialize_from_trained_model_folder(str(trained_phantom["model"]), [0], "checkpoint_final.pth")
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    return network.eval(), predictor


def preprocessed_tiles(predictor, images) -> np.ndarray:
    """Each image through nnU-Net's preprocessor, padded with zeros to the patch size as the sliding window pads
    it and cut to one patch (the phantom's 64 px images are one tile): (N, C, *patch)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    patch = tuple(predictor.configuration_manager.patch_size)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    tiles = []
    for image in images:
        data, _, _ = preprocessor.run_case([str(image)], None, predictor.plans_manager,
                                           predictor.configuration_manager, predictor.dataset_json)
        data = pad_nd_image(np.asarray(data[:, 0], dtype=np.float32), patch, "constant", {"value": 0})
        tiles.append(data[(slice(None), *(slice(0, p) for p in patch))])
    return np.stack(tiles).astype(np.float32)


def onnx_outputs(path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask, logits = session.run(["mask_logits", "class_logits"], {"image": batch})
    return mask, logits


def test_onnxruntime_matches_pytorch_on_preprocessed_images(exported, pytorch_model):
    network, predictor = pytorch_model
    images = sorted((exported["raw"] / "imagesTs").glob("*_0000.png"))[:3]
    batch = preprocessed_tiles(predictor, images)
    assert list(batch.shape[1:]) == exported["info"]["input"]["shape"][1:]
    with torch.no_grad():
        out = network(torch.from_numpy(batch), return_aux=True)
    for inputs, ref_mask, ref_logits in ((batch, out["seg"], out["logits"]),  # a batch of 3, and one alone
                                         (batch[:1], out["seg"][:1], out["logits"][:1])):
        mask, logits = onnx_outputs(exported["onnx"], inputs)
        assert mask.shape == tuple(ref_mask.shape) and logits.shape == tuple(ref_logits.shape)
        assert np.abs(mask - ref_mask.numpy()).max() <= TOLERANCE
        assert np.abs(logits - ref_logits.numpy()).max() <= TOLERANCE
    # what the command measured itself, printed and stored (pytest -s shows it)
    print(exported["stdout"])
    check = exported["info"]["check"]
    assert set(check["max_abs_difference"]) == {"mask_logits", "class_logits"}
    assert all(0 <= v <= TOLERANCE for v in check["max_abs_difference"].values())
    assert "max |onnxruntime - PyTorch| of class_logits" in exported["stdout"]
    assert any("preprocessing" in name for name in check["inputs"])  # the dataset's images were used, not only noise
    assert exported["info"]["onnx_sha256"] == hashlib.sha256(exported["onnx"].read_bytes()).hexdigest()


def test_argmax_class_of_a_patch_matches_the_pytorch_head(exported, pytorch_model):
    network, predictor = pytorch_model
    image = sorted((exported["raw"] / "imagesTs").glob("*_0000.png"))[-1]
    tile = preprocessed_tiles(predictor, [image])
    with torch.no_grad():
        head = network(torch.from_numpy(tile), return_aux=True)["logits"]
    _, logits = onnx_outputs(exported["onnx"], tile)
    assert int(np.argmax(logits[0])) == int(torch.argmax(head[0]))
    probs = np.exp(logits[0] - logits[0].max())
    assert np.allclose(probs / probs.sum(), torch.softmax(head[0], 0).numpy(), atol=1e-5)


def test_json_names_the_dataset_classes_and_its_preprocessing(exported, pytorch_model):
    _, predictor = pytorch_model
    info = exported["info"]
    dataset = json.loads((exported["raw"] / "dataset.json").read_text())
    assert info["class_names"] == [n for n, _ in sorted(dataset["class_labels"].items(), key=lambda kv: kv[1])]
    assert info["input"]["name"] == "image" and info["input"]["shape"][0] == "batch"
    assert [o["name"] for o in info["outputs"]] == ["mask_logits", "class_logits"]
    assert info["outputs"][1]["shape"] == ["batch", len(info["class_names"])]
    assert info["not_in_graph"]["mirroring_tta"]["allowed_axes"] == [1]  # our trainers: no vertical flips
    pre = info["preprocessing"]
    assert pre["patch_size"] == list(predictor.configuration_manager.patch_size)
    assert pre["normalization"][0]["scheme"] == "ZScoreNormalization"
    # the steps the JSON (and docs/export.md's example) describe, in numpy, give nnU-Net's preprocessed image
    image_path = sorted((exported["raw"] / "imagesTs").glob("*_0000.png"))[0]
    image = np.asarray(Image.open(image_path), dtype=np.float32)[None]
    nonzero = binary_fill_holes((image != 0).any(0))
    rows, cols = np.where(nonzero.any(1))[0], np.where(nonzero.any(0))[0]
    x = image[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    x = (x - x.mean()) / max(x.std(), 1e-8)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case([str(image_path)], None, predictor.plans_manager,
                                       predictor.configuration_manager, predictor.dataset_json)
    assert data[:, 0].shape == x.shape and np.abs(data[:, 0] - x).max() < 1e-4


def test_existing_output_is_refused_without_overwrite(exported, tmp_path):
    env, onnx = exported["env"], exported["onnx"]
    before = hashlib.sha256(onnx.read_bytes()).hexdigest()
    common = ["-m", exported["model"], "-f", "0"]
    result = run([BIN / "nnunet_mtl", "export", *common, "-o", onnx], env, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == before
    # the JSON beside a new graph counts too
    lone = tmp_path / "new.onnx"
    (tmp_path / "new.onnx.json").write_text("{}")
    result = run([BIN / "nnunet_mtl", "export", *common, "-o", lone], env, check=False)
    assert result.returncode == 2 and "new.onnx.json already exists" in result.stderr and not lone.exists()
    # the fixture's export with --overwrite replaced both earlier files, through temporary files it did not leave
    assert exported["info"]["model"]["fold"] == 0 and onnx.stat().st_size > 1000
    assert not list(onnx.parent.glob(".*.tmp"))


def test_missing_checkpoint_is_one_line(exported, tmp_path):
    out = tmp_path / "m.onnx"
    result = run([BIN / "nnunet_mtl", "export", "-d", exported["dataset"], "-c", "2d", "-tr", exported["trainer"],
                  "-f", "0", "-chk", "checkpoint_nope.pth", "-o", out], exported["env"], check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet_mtl export: error: checkpoint ")
    assert "checkpoint_nope.pth not found" in lines[0]
    assert not list(tmp_path.iterdir())


def test_cli_defaults_match_the_library():
    from nnunet_mtl.cli import export as cli
    from nnunet_mtl.inference import onnx_export
    assert (cli.DEFAULT_TOLERANCE, cli.DEFAULT_OPSET, cli.EXPORTERS) == \
        (onnx_export.DEFAULT_TOLERANCE, onnx_export.DEFAULT_OPSET, onnx_export.EXPORTERS)
