"""One trained fold as an ONNX graph, for deployment outside Python (``nnunet_mtl export``, docs/export.md).

What the graph is: the network ``nnunet_mtl predict`` runs, rebuilt the same way (nnU-Net's predictor builds it from
``plans.json`` and the checkpoint's trainer class, deep supervision off) and loaded with one fold's weights, called
once on a batch of patches of the plans' patch size in nnU-Net's normalised space. Input ``image`` (B, C, *patch),
float32, batch dimension dynamic; outputs ``mask_logits`` (B, segmentation channels, *patch) at full resolution and
``class_logits`` (B, classes). One network call, nothing around it: nnU-Net's preprocessing, sliding window,
test-time mirroring, fold averaging and the export back into the image's geometry stay with the caller, and the
JSON written beside the graph (:func:`deployment_info`) says what they are for this model.

Why the legacy TorchScript exporter (``dynamo=False``) by default: with the installed torch it exports every head
of ours in about 2 s and needs nothing beyond ``onnx``; the torch.export-based exporter gives the same graph (the
same differences to PyTorch, measured on the demo model) in about 20 s and needs ``onnxscript``. ``exporter=
"dynamo"`` is there for a torch that drops the legacy one.

Every export is checked before anything is written: onnxruntime runs the graph on preprocessed patches of real
images (the dataset's, when nnUNet_raw has it) and on seeded random patches, as one batch and one patch alone, and
the largest absolute difference of each output to PyTorch's float32 output must stay within a tolerance; the
differences are printed and stored in the JSON. The graph and the JSON are then moved into place together, so an
error leaves no half-written file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunet_mtl.atomic import temporary_name
from nnunet_mtl.dataset.contract import read_json_object
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet

INPUT_NAME = "image"
MASK_OUTPUT = "mask_logits"
CLASS_OUTPUT = "class_logits"
BATCH_AXIS = "batch"
DEFAULT_TOLERANCE = 1e-3  # absolute, on logits; measured differences are about 1e-5 (docs/export.md)
DEFAULT_OPSET = 17        # InstanceNormalization, ConvTranspose, Resize: all there; onnxruntime >= 1.14 runs it
EXPORTERS = ("torchscript", "dynamo")
CHECK_IMAGES = 3          # real images preprocessed for the check, when a folder of them is found
CHECK_RANDOM = 2          # seeded N(0, 1) patches (nnU-Net's z-scored space) checked besides
# nnU-Net's sliding window (nnunetv2.inference.predict_from_raw_data, sliding_window_prediction): what the graph
# leaves to the caller, stated in the JSON
TILE_STEP_SIZE = 0.5
GAUSSIAN_SIGMA_SCALE = 1.0 / 8
GAUSSIAN_VALUE_SCALING = 10


@dataclass
class LoadedModel:
    """One fold of a trained model, rebuilt as ``nnunet_mtl predict`` rebuilds it, in eval mode on the CPU."""

    network: MultitaskUNet
    model_folder: Path
    fold: int | str
    checkpoint: str
    plans: dict
    dataset_json: dict
    plans_manager: object
    configuration_manager: object
    trainer_name: str
    mirror_axes: tuple | None
    class_names: list[str]
    num_input_channels: int
    segments: bool = True


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    onnx_path: Path
    json_path: Path
    info: dict
    max_abs_difference: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the model
def check_model_folder(model_folder: Path, fold: int | str, checkpoint: str) -> tuple[dict, dict, Path]:
    """(plans, dataset_json, checkpoint path) of a trained multitask model, each checked with a one-line error:
    the folder, its plans.json and dataset.json, a classification head in the plans, the fold's checkpoint."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise NnunetMtlError(f"model folder {model_folder} does not exist; expected a trained model folder "
                             f"(nnUNet_results/DatasetNNN_X/TRAINER__PLANS__CONFIGURATION)")
    plans = read_json_object(model_folder / "plans.json", "the plans.json nnUNetv2_train wrote")
    dataset_json = read_json_object(model_folder / "dataset.json", "the dataset.json nnUNetv2_train copied there")
    section = plans.get(PLANS_KEY)
    if not isinstance(section, dict) or "head" not in section:
        raise NnunetMtlError(f"{model_folder}/plans.json has no '{PLANS_KEY}.head' section: not trained by an "
                             f"nnunet_mtl trainer; expected a multitask model (e.g. -tr nnUNetTrainerMTL)")
    if (section.get("head") or {}).get("kind") == "none":
        raise NnunetMtlError(f"{model_folder} is a segmentation-only model (no classification head); nnunet_mtl "
                             f"export writes a graph with mask and class logits: expected a multitask model")
    path = model_folder / f"fold_{fold}" / checkpoint
    if not path.is_file():
        trained = sorted(p.name for p in model_folder.glob("fold_*") if p.is_dir())
        raise NnunetMtlError(f"checkpoint {path} not found; expected fold {fold} to be trained with that checkpoint "
                             f"(see -f and -chk; folds here: {', '.join(trained) or 'none'})")
    return plans, dataset_json, path


def load_model(model_folder: Path, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth") -> LoadedModel:
    """The network of one fold, through the predictor ``nnunet_mtl predict`` uses (the checkpoint's trainer class
    builds it from the plans, deep supervision off), with that fold's weights loaded strictly, on the CPU in eval
    mode. nnU-Net's chatter (the trainer lookup's search) is kept off the screen."""
    from nnunet_mtl.paths import env_with_ext_trainer
    model_folder = Path(model_folder)
    plans, dataset_json, path = check_model_folder(model_folder, fold, checkpoint)
    os.environ.update(env_with_ext_trainer())  # our trainers must be findable by nnU-Net's lookup in this process
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunet_mtl.inference.predictor import MultitaskPredictor
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            # nnU-Net says that a CPU predicts off the device and which folders its trainer lookup searched; an
            # import of its trainer modules warns that torch.jit.interface is deprecated: none of it is ours to fix
            warnings.filterwarnings("ignore", message=".*torch.jit.interface.*")
            predictor = MultitaskPredictor(tile_step_size=TILE_STEP_SIZE, use_gaussian=True, use_mirroring=True,
                                           perform_everything_on_device=False, device=torch.device("cpu"),
                                           verbose=False, allow_tqdm=False, cpu_amp="off")
            predictor.initialize_from_trained_model_folder(str(model_folder), [fold], checkpoint_name=checkpoint)
    except NnunetMtlError:
        raise
    except Exception as e:  # a truncated checkpoint, a trainer not found, weights that do not fit the plans
        first = (str(e).splitlines() or [""])[0][:200]
        raise NnunetMtlError(f"the model of {path} cannot be loaded ({type(e).__name__}: {first}); expected a "
                             f"checkpoint written by nnUNetv2_train with an nnunet_mtl trainer and the plans.json "
                             f"of the same training") from None
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    try:
        network.load_state_dict(predictor.list_of_parameters[0])
    except RuntimeError as e:
        raise NnunetMtlError(f"the weights of {path} do not fit the network its plans.json describes "
                             f"({str(e).splitlines()[0][:160]}); expected the plans written by the same training")
    network.decoder.deep_supervision = False  # full-resolution logits only (nnU-Net builds it so already)
    network.to("cpu").float().eval()
    channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager, dataset_json)
    mirror = predictor.allowed_mirroring_axes
    return LoadedModel(network=network, model_folder=model_folder, fold=fold, checkpoint=checkpoint, plans=plans,
                       dataset_json=dataset_json, plans_manager=predictor.plans_manager,
                       configuration_manager=predictor.configuration_manager, trainer_name=predictor.trainer_name,
                       mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else None,
                       class_names=list(predictor.class_names), num_input_channels=int(channels),
                       segments=bool(predictor.segments))


class ExportGraph(nn.Module):
    """What the ONNX graph computes: one call of the multitask network on a batch of patches, returning
    (full-resolution mask logits, class logits). A classification-only model returns nnU-Net's background logits
    as its mask (its decoder was never trained), as ``nnunet_mtl predict``'s predictor does."""

    def __init__(self, network: MultitaskUNet):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(image, return_aux=True)
        seg = out["seg"] if "seg" in out else self.network.background(image)
        if isinstance(seg, (list, tuple)):  # deep supervision: the first entry is the full resolution
            seg = seg[0]
        return seg, out["logits"]


def input_shape(model: LoadedModel) -> tuple[int, ...]:
    """(C, *patch size): one input patch without its batch dimension."""
    return (model.num_input_channels, *(int(s) for s in model.configuration_manager.patch_size))


# ------------------------------------------------------------------------------------------------ the export
def effective_opset(exporter: str, opset: int) -> int:
    """The opset a graph is written with: the torch.export-based exporter starts at 18 (it converts the graph to an
    older opset only through the ONNX version converter, which we do not ask for)."""
    return max(opset, 18) if exporter == "dynamo" else opset


def export_graph(graph: ExportGraph, example: torch.Tensor, exporter: str = "torchscript",
                 opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model of ``graph`` traced on ``example`` (B, C, *patch), batch dimension dynamic."""
    if exporter not in EXPORTERS:
        raise NnunetMtlError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    names = {"input_names": [INPUT_NAME], "output_names": [MASK_OUTPUT, CLASS_OUTPUT]}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # known and harmless here: the legacy exporter's deprecation notice, InstanceNorm's input-size checks
            # seen by the tracer (the spatial size is fixed), and InstanceNorm exported with instance statistics
            # (what nnU-Net's InstanceNorm computes in eval mode too: it keeps no running statistics)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            if exporter == "torchscript":
                buffer = io.BytesIO()
                axes = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, MASK_OUTPUT, CLASS_OUTPUT)}
                torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                                  dynamic_axes=axes, do_constant_folding=True, **names)
                return buffer.getvalue()
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
            except ImportError:
                raise NnunetMtlError("--exporter dynamo needs the onnxscript package (pip install onnxscript); "
                                     "expected it installed, or the default --exporter torchscript") from None
            batch = torch.export.Dim(BATCH_AXIS, min=1)
            program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=effective_opset(exporter, opset),
                                        dynamic_shapes={"image": {0: batch}}, external_data=False, verbose=False,
                                        **names)
            return program.model_proto.SerializeToString()
    except NnunetMtlError:
        raise
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        other = EXPORTERS[1 - EXPORTERS.index(exporter)]
        raise NnunetMtlError(f"torch.onnx.export ({exporter}) failed for this network ({type(e).__name__}: "
                             f"{first}); expected a network it can export: try --exporter {other}") from None


# ------------------------------------------------------------------------------------------------ the check
def find_check_images(plans: dict, dataset_json: dict, folder: Path | None = None,
                      count: int = CHECK_IMAGES) -> list[list[str]]:
    """Up to ``count`` cases (each its channel files, nnU-Net's naming) to check the graph on: from ``folder``,
    else from the dataset's imagesTs, else its imagesTr in nnUNet_raw, when there is one; [] when none is found
    (the check then uses random patches only). A given ``folder`` without images is an error."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    ending = dataset_json.get("file_ending", ".png")
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise NnunetMtlError(f"--check-images {folder} is not a folder; expected a folder of CASE_0000{ending} "
                                 f"images")
        cases = create_lists_from_splitted_dataset_folder(str(folder), ending)
        if not cases:
            raise NnunetMtlError(f"--check-images {folder} holds no images CASE_0000{ending}; expected nnU-Net's "
                                 f"naming")
        return cases[:count]
    raw = os.environ.get("nnUNet_raw")
    name = plans.get("dataset_name")
    if not raw or not name:
        return []
    for sub in ("imagesTs", "imagesTr"):
        candidate = Path(raw) / name / sub
        if candidate.is_dir():
            cases = create_lists_from_splitted_dataset_folder(str(candidate), ending)
            if cases:
                return cases[:count]
    return []


def preprocessed_patch(model: LoadedModel, files: list[str]) -> np.ndarray:
    """One case through nnU-Net's own preprocessor (transpose, crop to the non-zero region, normalisation,
    resampling), then one patch of it as the sliding window sees patches: padded with zeros to at least the patch
    size (pad_nd_image, as the predictor pads), the centre patch cut out; a 2D configuration of a volume takes its
    middle slice. (C, *patch) float32."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(files, None, model.plans_manager, model.configuration_manager,
                                       model.dataset_json)
    patch = tuple(int(s) for s in model.configuration_manager.patch_size)
    if data.ndim - 1 > len(patch):  # 2D configuration: (C, slices, H, W), one slice at a time
        data = data[:, data.shape[1] // 2]
    data = pad_nd_image(np.asarray(data, dtype=np.float32), patch, "constant", {"value": 0})
    start = [(s - p) // 2 for s, p in zip(data.shape[1:], patch)]
    window = (slice(None), *(slice(a, a + p) for a, p in zip(start, patch)))
    return np.ascontiguousarray(data[window], dtype=np.float32)


def check_inputs(model: LoadedModel, images: list[list[str]], random_count: int = CHECK_RANDOM,
                 seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(a description of each, the batch (N, C, *patch)) of the patches the graph is checked on: the ``images``
    preprocessed (:func:`preprocessed_patch`), then ``random_count`` seeded standard normal patches (nnU-Net's
    z-scored intensities are of that order)."""
    names, patches = [], []
    for files in images:
        patches.append(preprocessed_patch(model, files))
        names.append(f"{Path(files[0]).name}: nnU-Net's preprocessing, centre patch")
    rng = np.random.default_rng(seed)
    for i in range(random_count):
        patches.append(rng.standard_normal(input_shape(model)).astype(np.float32))
        names.append(f"random N(0, 1) patch {i + 1} (seed {seed})")
    return names, np.stack(patches)


def compare_with_pytorch(onnx_bytes: bytes, graph: ExportGraph, batch: np.ndarray,
                         tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Run the serialized graph in onnxruntime (CPU) on ``batch`` as one batch and on its first patch alone (the
    dynamic batch dimension both ways), and PyTorch's float32 network on the same; the largest absolute difference
    of each output, whether the class argmax agrees on every patch, and the tolerance. Above the tolerance: one
    line naming the output and the difference."""
    import onnx
    import onnxruntime as ort
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise NnunetMtlError(f"the exported graph is not a valid ONNX model for onnxruntime ({type(e).__name__}: "
                             f"{first}); expected another --opset or --exporter") from None
    differences = {MASK_OUTPUT: 0.0, CLASS_OUTPUT: 0.0}
    agree = 0
    for inputs in (batch, batch[:1]):
        with torch.no_grad():
            reference = [t.float().numpy() for t in graph(torch.from_numpy(inputs))]
        outputs = session.run([MASK_OUTPUT, CLASS_OUTPUT], {INPUT_NAME: inputs})
        for name, ours, theirs in zip((MASK_OUTPUT, CLASS_OUTPUT), outputs, reference):
            if ours.shape != theirs.shape:
                raise NnunetMtlError(f"onnxruntime's {name} has shape {ours.shape}, PyTorch's {theirs.shape} (batch "
                                     f"of {len(inputs)}); expected the same shape")
            differences[name] = max(differences[name], float(np.abs(ours - theirs).max()))
        if len(inputs) == len(batch):
            agree = int((outputs[1].argmax(1) == reference[1].argmax(1)).sum())
    for name, value in differences.items():
        if not value <= tolerance:  # NaN fails too
            raise NnunetMtlError(f"the exported graph's {name} differ from PyTorch's by up to {value:.3g} on the "
                                 f"check patches, above the tolerance {tolerance:g}; expected an export that "
                                 f"reproduces the network (try --exporter, --opset; or raise --tolerance)")
    return {"tolerance": tolerance, "max_abs_difference": differences, "class_argmax_agrees": agree,
            "patches": len(batch), "onnxruntime": ort.__version__}


# ------------------------------------------------------------------------------------------------ the JSON
_NORMALIZATION_FORMULAS = {
    "ZScoreNormalization": "per image and channel, from the image itself: x = (x - mean(x)) / max(std(x), 1e-8) "
                           "(numpy's std, ddof 0); with use_mask_for_norm the mean and std of the non-zero mask "
                           "(after crop_to_nonzero) only, pixels outside it left at 0. foreground_intensity_properties "
                           "are not used",
    "CTNormalization": "with the dataset's foreground intensity properties: x = (clip(x, percentile_00_5, "
                       "percentile_99_5) - mean) / max(std, 1e-8)",
    "NoNormalization": "none: x as read, as float32",
    "RescaleTo01Normalization": "per image and channel: x = (x - min(x)) / max(max(x - min(x)), 1e-8)",
    "RGBTo01Normalization": "x = x / 255 (values must lie in 0..255)",
}


def normalization_info(model: LoadedModel) -> list[dict]:
    """Per input channel: nnU-Net's normalisation scheme, what it computes, and the plans' intensity properties."""
    cm = model.configuration_manager
    names = model.dataset_json.get("channel_names") or model.dataset_json.get("modality") or {}
    properties = model.plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for c, scheme in enumerate(cm.normalization_schemes):
        out.append({"channel": c, "name": names.get(str(c)), "scheme": scheme,
                    "use_mask_for_norm": bool(cm.use_mask_for_norm[c]),
                    "computes": _NORMALIZATION_FORMULAS.get(scheme, f"nnU-Net's {scheme}.run (see nnunetv2."
                                                                    f"preprocessing.normalization)"),
                    "foreground_intensity_properties": properties.get(str(c))})
    return out


def segmentation_info(model: LoadedModel) -> dict:
    """What the channels of ``mask_logits`` are and how a mask is read from them."""
    label_manager = model.plans_manager.get_label_manager(model.dataset_json)
    labels = model.dataset_json.get("labels") or {}
    if label_manager.has_regions:
        regions = [{"name": n, "labels": v} for n, v in labels.items() if n != "background" and n != "ignore"]
        return {"channels": label_manager.num_segmentation_heads, "regions": regions,
                "mask": "regions: sigmoid of each channel > 0.5, then nnU-Net's regions_class_order "
                        f"{label_manager.regions_class_order} gives the label map"}
    by_value = {int(v): n for n, v in labels.items() if not isinstance(v, (list, tuple))}
    channel_labels = [by_value.get(i, str(i)) for i in range(label_manager.num_segmentation_heads)]
    return {"channels": label_manager.num_segmentation_heads, "channel_labels": channel_labels,
            "ignore_label": label_manager.ignore_label,
            "mask": "argmax over the channels: channel i is label value i (softmax for probabilities)"}


def deployment_info(model: LoadedModel, opset: int, exporter: str, check: dict | None = None,
                    onnx_sha256: str | None = None) -> dict:
    """Everything a deployer needs beside the graph: its input and outputs, the classes in order, nnU-Net's
    preprocessing for this configuration with its parameters, and what the predictor does that the graph does
    not."""
    from nnunet_mtl import __version__
    cm, pm = model.configuration_manager, model.plans_manager
    patch = [int(s) for s in cm.patch_size]
    shape = [BATCH_AXIS, *input_shape(model)]
    mask_note = ("the full-resolution segmentation logits of the patch (deep supervision off)" if model.segments else
                 "a classification-only model: nnU-Net's background logits (1 for background, 0 elsewhere), its "
                 "decoder was never trained")
    return {
        "written_by": f"nnunet_mtl export {__version__}",
        "onnx_sha256": onnx_sha256,
        "model": {"model_folder": str(model.model_folder.resolve()), "dataset": model.plans.get("dataset_name"),
                  "trainer": model.trainer_name, "plans": model.plans.get("plans_name"),
                  "configuration": _configuration_name(model), "fold": model.fold, "checkpoint": model.checkpoint,
                  "head": (model.plans.get(PLANS_KEY) or {}).get("head", {}).get("kind"),
                  "segments": model.segments},
        "export": {"exporter": exporter, "opset": opset, "torch": torch.__version__},
        "input": {"name": INPUT_NAME, "shape": shape, "dtype": "float32", "dynamic_axes": {"0": BATCH_AXIS},
                  "layout": "batch, channel, then the spatial axes of the patch (after transpose_forward)",
                  "meaning": "patches of the plans' patch size in nnU-Net's normalised space (see preprocessing)"},
        "outputs": [
            {"name": MASK_OUTPUT, "shape": [BATCH_AXIS, segmentation_info(model)["channels"], *patch],
             "dtype": "float32", "meaning": mask_note, **{k: v for k, v in segmentation_info(model).items()
                                                          if k != "channels"}},
            {"name": CLASS_OUTPUT, "shape": [BATCH_AXIS, len(model.class_names)], "dtype": "float32",
             "meaning": "the classification head's logits of the patch; softmax gives the class probabilities, "
                        "ordered as class_names"}],
        "class_names": model.class_names,
        "preprocessing": {
            "order": ["read the image with the reader below (2D PNG: grey values as float32, shape (C, 1, H, W))",
                      "transpose the spatial axes by transpose_forward",
                      "crop_to_nonzero: cut to the bounding box of the pixels that are non-zero in any channel (holes "
                      "filled); the crop is undone on the predicted mask",
                      "normalise each channel (normalization)",
                      "resample to target_spacing (new size = round(size * spacing / target_spacing); a 2D "
                      "configuration keeps the slice axis), with resampling_data",
                      "pad with zeros to at least patch_size (centred, as nnU-Net's pad_nd_image), then tile"],
            "image_reader_writer": model.plans.get("image_reader_writer"),
            "file_ending": model.dataset_json.get("file_ending"),
            "channel_names": model.dataset_json.get("channel_names"),
            "transpose_forward": list(pm.transpose_forward), "transpose_backward": list(pm.transpose_backward),
            "crop_to_nonzero": True,
            "normalization": normalization_info(model),
            "target_spacing": [float(s) for s in cm.spacing],
            "resampling_data": {"function": cm.configuration.get("resampling_fn_data"),
                                "kwargs": cm.configuration.get("resampling_fn_data_kwargs")},
            "patch_size": patch},
        "not_in_graph": {
            "sliding_window": f"nnU-Net tiles the preprocessed image with patches of patch_size, step "
                              f"{TILE_STEP_SIZE} of the patch, and weights each tile's mask logits by a Gaussian "
                              f"(sigma {GAUSSIAN_SIGMA_SCALE:g} of the patch size, scaled to a maximum of "
                              f"{GAUSSIAN_VALUE_SCALING}), dividing by the summed weights",
            "mirroring_tta": {"allowed_axes": list(model.mirror_axes) if model.mirror_axes is not None else None,
                              "how": "every non-empty combination of the allowed spatial axes (0 = first axis "
                                     "after the channel) is flipped, predicted, flipped back; mask logits and "
                                     "class softmax are each averaged with the unflipped prediction"},
            "fold_averaging": "nnunet_mtl predict -f K1 K2 ... averages the folds' mask logits (nnU-Net) and "
                              "class probabilities; this graph is one fold",
            "class_probabilities": "the predictor's: softmax of class_logits, averaged over the mirrors of a tile, "
                                   "then a plain mean over the tiles (no Gaussian weights), then over the folds",
            "export": {"resampling_logits": {"function": cm.configuration.get("resampling_fn_probabilities"),
                                             "kwargs": cm.configuration.get("resampling_fn_probabilities_kwargs")},
                       "how": "the stitched (and averaged) mask logits are resampled back to the cropped image's "
                              "shape (resampling_logits), argmax-ed (or thresholded, for regions), put back into the "
                              "uncropped image (background outside the crop) and transposed back "
                              "(transpose_backward)"}},
        "check": check,
    }


def _configuration_name(model: LoadedModel) -> str | None:
    """The configuration the model folder was trained with (TRAINER__PLANS__CONFIGURATION)."""
    parts = model.model_folder.name.split("__")
    return parts[2] if len(parts) == 3 else None


# ------------------------------------------------------------------------------------------------ all of it
def json_path_for(onnx_path: Path) -> Path:
    """Where the deployment JSON goes: beside the graph, its name plus .json (model.onnx -> model.onnx.json)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def export_onnx(model_folder: Path, output: Path, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth",
                *, check_images: Path | None = None, tolerance: float = DEFAULT_TOLERANCE,
                exporter: str = "torchscript", opset: int = DEFAULT_OPSET, log=print) -> ExportResult:
    """Export one fold of ``model_folder`` to ``output`` (and ``output``.json), checked against PyTorch first.
    The caller checks that the outputs may be written; both are written through temporary files and moved into
    place only once the check has passed."""
    if not tolerance > 0:
        raise NnunetMtlError(f"--tolerance {tolerance}: expected a positive number, e.g. {DEFAULT_TOLERANCE:g}")
    output = Path(output)
    model = load_model(model_folder, fold, checkpoint)
    images = find_check_images(model.plans, model.dataset_json, check_images)
    names, batch = check_inputs(model, images)
    graph = ExportGraph(model.network).eval()
    log(f"exporting {model.trainer_name} fold {fold} ({checkpoint}) with the {exporter} exporter, opset "
        f"{effective_opset(exporter, opset)}: "
        f"input {INPUT_NAME} {[BATCH_AXIS, *input_shape(model)]}")
    onnx_bytes = export_graph(graph, torch.from_numpy(batch[:1]), exporter, opset)
    check = compare_with_pytorch(onnx_bytes, graph, batch, tolerance)
    check["inputs"] = names
    if not images:
        check["note"] = ("no images were found to preprocess (nnUNet_raw has no images of this dataset; see "
                         "--check-images): checked on random patches only")
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    info = deployment_info(model, effective_opset(exporter, opset), exporter, check, digest)
    json_path = json_path_for(output)
    write_pair(onnx_bytes, output, json.dumps(info, indent=2) + "\n", json_path)
    return ExportResult(output, json_path, info, dict(check["max_abs_difference"]))


def write_pair(onnx_bytes: bytes, onnx_path: Path, text: str, json_path: Path) -> None:
    """Both files into temporary names beside their targets, then renamed into place (the graph first, then the
    JSON that describes it); on an error the temporary files are removed and the targets left as they were."""
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = [(temporary_name(onnx_path), onnx_path), (temporary_name(json_path), json_path)]
    try:
        temporary[0][0].write_bytes(onnx_bytes)
        temporary[1][0].write_text(text)
        for tmp, target in temporary:
            os.replace(tmp, target)
    finally:
        for tmp, _ in temporary:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
