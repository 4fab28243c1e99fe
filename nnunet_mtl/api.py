"""The Python API: load a trained multitask model once, predict images, get the mask and the class probabilities.

    from nnunet_mtl import load_model
    model = load_model("$nnUNet_results/Dataset500_SyntheticUS/nnUNetTrainerMTL__nnUNetPlans__2d", folds=(0,))
    prediction = model.predict("case_0000.png")          # or a numpy array
    prediction.mask, prediction.class_probabilities, prediction.predicted_class

Everything is :class:`nnunet_mtl.inference.predictor.MultitaskPredictor`, the nnU-Net predictor subclass behind
``nnunet_mtl predict``: nnU-Net's preprocessing, sliding window, test-time mirroring, fold average and export back
into the image's geometry (the way nnU-Net's ``predict_single_npy_array`` does it), with the class softmax averaged
over mirrors, tiles and folds. The masks and probabilities are those ``nnunet_mtl predict`` writes for the same
files with the same settings. Importing this module does not import torch or nnU-Net; :func:`load_model` does.
docs/python_api.md has the examples.

Every error a caller can fix (a missing folder or checkpoint, a model without a class head, an array of the wrong
shape, an unreadable file) is one :class:`nnunet_mtl.errors.NnunetMtlError` line naming the value and what was
expected.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from nnunet_mtl.errors import NnunetMtlError

if TYPE_CHECKING:  # only for the annotations: importing torch here would make `import nnunet_mtl.api` slow
    import torch

    from nnunet_mtl.inference.predictor import MultitaskPredictor

__all__ = ["Model", "Prediction", "load_model"]

PathLike = Union[str, os.PathLike]
ImageInput = Union[np.ndarray, PathLike, Sequence[PathLike]]

PLANS_KEY = "nnunet_mtl"  # = nnunet_mtl.networks.multitask_unet.PLANS_KEY (not imported: it imports torch)
_PIL_ENDINGS = (".png", ".bmp", ".tif", ".tiff")  # files whose header PIL checks before nnU-Net's reader decodes them


@dataclass(frozen=True, eq=False)
class Prediction:
    """What :meth:`Model.predict` returns for one image.

    mask: nnU-Net's segmentation in the image's own geometry (uint8 labels, 1 = lesion): (H, W) for a model of 2-D
    images, (X, Y, Z) in nnU-Net's axis order for 3-D; the array ``nnunet_mtl predict`` writes as CASE.png. None for
    a classification-only model (its decoder was never trained).
    class_probabilities: {class name: probability} in the model's class order (dataset.json's ``class_labels``);
    the class softmax averaged over the test-time mirrors, the sliding-window tiles and the folds, as in
    class_predictions.csv (which rounds them to 6 decimals).
    predicted_class: the class of the largest probability (class_predictions.csv's ``predicted_class``).
    attention: the head's lesion map P in the image's geometry (float32 in [0, 1], the mask's shape), for a head
    that returns one (nnUNetTrainerLesionAware); None otherwise. ``nnunet_mtl predict --save-attention`` stores
    round(255 P) of the same map.
    case_id: nnU-Net's case id of an image file (``CASE`` of ``CASE_0000.png``; the file name without its ending
    when it lacks the _0000 suffix); None for an array.
    files: the file(s) read (one per channel); () for an array.

    eq=False: the fields hold arrays, whose ``==`` is element-wise; compare the fields instead.
    """

    mask: np.ndarray | None
    class_probabilities: dict[str, float]
    predicted_class: str
    attention: np.ndarray | None = None
    case_id: str | None = None
    files: tuple[Path, ...] = ()

    @property
    def probabilities(self) -> np.ndarray:
        """The class probabilities as a vector, in class order (for numpy code that does not want the names)."""
        return np.array(list(self.class_probabilities.values()), dtype=np.float64)


class Model:
    """A trained multitask model, loaded once (by :func:`load_model`) and predicting one image per call.

    Not thread-safe: the predictor keeps the current case's probabilities between its steps; use one Model per
    thread.
    """

    def __init__(self, predictor: "MultitaskPredictor", model_folder: Path | None = None,
                 folds: tuple = (), checkpoint: str | None = None):
        """Wrap an initialized :class:`MultitaskPredictor` (:func:`load_model` builds one; tests may hand their own
        in). The head is probed once here: a head that returns a lesion map gets it collected with every
        prediction."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        self.predictor = predictor
        self.model_folder = model_folder
        self.folds = tuple(folds)
        self.checkpoint = checkpoint
        self.class_names: tuple[str, ...] = tuple(predictor.class_names)
        self.channels: int = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                                          predictor.dataset_json)
        self.file_ending: str = predictor.dataset_json.get("file_ending", ".png")
        self.image_dims: int = _image_dims(predictor.plans_manager.plans)
        self.segments: bool = bool(getattr(predictor, "segments", True))
        self.has_attention: bool = predictor.head_returns_attention()
        predictor.keep_attention = self.has_attention

    def __repr__(self) -> str:
        where = self.model_folder if self.model_folder is not None else self.predictor.trainer_name
        return (f"Model({where}, folds={self.folds}, classes={list(self.class_names)}, channels={self.channels}, "
                f"{self.image_dims}-D images, device={self.predictor.device})")

    @property
    def device(self) -> "torch.device":
        return self.predictor.device

    @property
    def trainer_name(self) -> str:
        return self.predictor.trainer_name

    # ------------------------------------------------------------------------------------------------ predict
    def predict(self, image: ImageInput, spacing: Sequence[float] | None = None) -> Prediction:
        """Segment and classify one image.

        ``image`` is either
          - a numpy array, ``channels`` = the model's number of input channels (dataset.json's channel_names):
            for a model of 2-D images, (H, W) (one channel), (channels, H, W), or nnU-Net's (channels, 1, H, W);
            for 3-D images, (X, Y, Z) (one channel) or (channels, X, Y, Z), in the axis order nnU-Net's reader
            of the dataset gives (see nnU-Net's ``predict_single_npy_array``). Any real dtype; it is cast to
            float32 as nnU-Net's readers do. ``spacing``: the pixel spacing in the same axis order, (sy, sx) or
            nnU-Net's (999, sy, sx) for 2-D, (sx, sy, sz) for 3-D; None: the training images' median spacing
            (plans.json), i.e. no resampling beyond what the training images had. PNG datasets have no spacing
            (nnU-Net reads them as (999, 1, 1)), so leave it None there;
          - a path to an image file of the model's file ending, read by the reader nnU-Net uses for the dataset
            (plans.json's image_reader_writer), spacing from the file (``spacing`` must be None);
          - a list of such paths, one per channel (CASE_0000, CASE_0001, ...), for a model of several channels.
        """
        if isinstance(image, np.ndarray):
            data = self._array_as_nnunet_input(image)
            properties = {"spacing": self._spacing(spacing)}
            files: tuple[Path, ...] = ()
            case_id = None
        elif isinstance(image, (str, os.PathLike)) or _is_path_list(image):
            if spacing is not None:
                raise NnunetMtlError(f"spacing {tuple(spacing)} was given with an image file; the spacing of a file "
                                     f"is read from it: expected spacing=None (or pass the array)")
            files = tuple(Path(p) for p in ([image] if isinstance(image, (str, os.PathLike)) else image))
            data, properties = self._read_files(files)
            case_id = _case_id(files[0], self.file_ending)
        else:
            raise NnunetMtlError(f"image of type {type(image).__name__}; expected a numpy array, a path to a "
                                 f"{self.file_ending} image, or a list of paths (one per channel)")
        mask, probabilities, attention = self.predictor.predict_array_with_classes(data, properties)
        return self._prediction(mask, probabilities, attention, case_id, files)

    def predict_many(self, images: Iterable[ImageInput]) -> Iterator[Prediction]:
        """:meth:`predict` of each image in turn, lazily (one prediction in memory at a time if the caller keeps
        none). One image at a time on purpose: ``nnunet_mtl predict`` is the faster path for a large folder
        (preprocessing and export in worker processes)."""
        for image in images:
            yield self.predict(image)

    def predict_folder(self, folder: PathLike) -> Iterator[Prediction]:
        """:meth:`predict` of every case of an nnU-Net-named input folder (``CASE_0000{ending}``, and
        ``CASE_0001{ending}`` ... for more channels), in case-id order, lazily; each Prediction carries its
        ``case_id``. The cases ``nnunet_mtl predict -i folder`` predicts, with the same masks and probabilities.
        The folder and its file names are checked here, before the first image is predicted."""
        folder = Path(folder)
        if not folder.is_dir():
            raise NnunetMtlError(f"input folder {folder} does not exist" if not folder.exists() else
                                 f"{folder} is a file; expected a folder of CASE_0000{self.file_ending} images "
                                 f"(use predict for one file)")
        suffix = f"_0000{self.file_ending}"
        cases = sorted(p.name[:-len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
        if not cases:
            raise NnunetMtlError(f"no images *{suffix} in {folder}; expected nnU-Net's naming CASE{suffix}")
        lists = [[folder / f"{case}_{k:04d}{self.file_ending}" for k in range(self.channels)] for case in cases]
        for files in lists:
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise NnunetMtlError(f"{missing[0]} does not exist; this model takes {self.channels} channels, "
                                     f"expected {files[0].name} .. {files[-1].name} in {folder}")
        return (self.predict(files) for files in lists)

    # ------------------------------------------------------------------------------------------------ inputs
    def _array_as_nnunet_input(self, image: np.ndarray) -> np.ndarray:
        """The array in nnU-Net's (c, x, y, z) layout as float32, or one line saying which shapes are accepted."""
        c = self.channels
        if self.image_dims == 2:
            accepted = f"(H, W){'' if c == 1 else ' (one channel only)'}, ({c}, H, W) or nnU-Net's ({c}, 1, H, W)"
            shapes = {2: lambda a: a[None, None], 3: lambda a: a[:, None], 4: lambda a: a}
        else:
            accepted = f"(X, Y, Z){'' if c == 1 else ' (one channel only)'} or ({c}, X, Y, Z)"
            shapes = {3: lambda a: a[None], 4: lambda a: a}
        what = f"a model of {self.image_dims}-D images with {c} channel(s)"
        if image.dtype.kind not in "biuf":
            raise NnunetMtlError(f"image array of dtype {image.dtype}; expected real numbers (an intensity image)")
        if image.ndim not in shapes:
            raise NnunetMtlError(f"image array of shape {image.shape} ({image.ndim} axes); {what} takes {accepted}")
        data = shapes[image.ndim](image)
        unsqueezed_2d = self.image_dims == 2 and image.ndim == 2
        three_d_single = self.image_dims == 3 and image.ndim == 3
        if (unsqueezed_2d or three_d_single) and c != 1:
            raise NnunetMtlError(f"image array of shape {image.shape} has no channel axis, but this model takes "
                                 f"{c} channels; {what} takes {accepted}")
        if data.shape[0] != c or (self.image_dims == 2 and data.shape[1] != 1):
            raise NnunetMtlError(f"image array of shape {image.shape}; {what} takes {accepted}")
        if min(data.shape) == 0:
            raise NnunetMtlError(f"image array of shape {image.shape} is empty; expected an image")
        if not np.isfinite(data).all():
            raise NnunetMtlError(f"image array of shape {image.shape} holds NaN or infinite values; expected finite "
                                 f"intensities")
        return np.ascontiguousarray(data, dtype=np.float32)

    def _spacing(self, spacing: Sequence[float] | None) -> tuple[float, ...]:
        """nnU-Net's 3-value spacing (original axis order) of an array: the given one, or the training median."""
        if spacing is None:
            return _median_spacing(self.predictor.plans_manager.plans)
        try:
            values = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            raise NnunetMtlError(f"spacing {spacing!r} is not a sequence of numbers; expected e.g. (0.1, 0.1)")
        if self.image_dims == 2 and len(values) == 2:
            values = (999.0, *values)  # nnU-Net's readers give a 2-D image this spacing along the singleton axis
        expected = "(sy, sx) or (999, sy, sx)" if self.image_dims == 2 else "(sx, sy, sz)"
        if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
            raise NnunetMtlError(f"spacing {tuple(spacing)}; expected positive numbers {expected} in the image's "
                                 f"axis order")
        return values

    def _read_files(self, files: tuple[Path, ...]) -> tuple[np.ndarray, dict]:
        """The image (c, x, y, z) and its properties as nnU-Net's reader of this dataset gives them, checked."""
        if len(files) != self.channels:
            raise NnunetMtlError(f"{len(files)} file(s) given ({files[0].name}{' ...' if len(files) > 1 else ''}); "
                                 f"this model takes {self.channels} channel(s): expected one file per channel")
        for f in files:
            if not f.is_file():
                raise NnunetMtlError(f"image {f} does not exist" if not f.exists() else
                                     f"image {f} is a folder; expected an image file (use predict_folder for a folder)")
            if not f.name.endswith(self.file_ending):
                raise NnunetMtlError(f"image {f} does not end in {self.file_ending}; expected the file ending of the "
                                     f"model's dataset.json")
            if self.file_ending.lower() in _PIL_ENDINGS:
                from nnunet_mtl.image_files import open_image
                with open_image(f) as im:
                    im.verify()
        reader = self.predictor.plans_manager.image_reader_writer_class()
        try:
            data, properties = reader.read_images([str(f) for f in files])
        except Exception as e:  # the reader's own failure on a file it cannot decode: one line naming it
            first = (str(e).splitlines() or [""])[0][:120]
            raise NnunetMtlError(f"image {files[0]}{' ...' if len(files) > 1 else ''} cannot be read by nnU-Net's "
                                 f"{type(reader).__name__} ({type(e).__name__}: {first}); expected an image of the "
                                 f"model's dataset")
        if data.shape[0] != self.channels:
            raise NnunetMtlError(f"image {files[0]} has {data.shape[0]} channels as nnU-Net reads it, this model "
                                 f"takes {self.channels}: expected grey images (as nnunet_mtl convert writes them)"
                                 if self.channels == 1 else
                                 f"image {files[0]} ... has {data.shape[0]} channels as nnU-Net reads them, this "
                                 f"model takes {self.channels}: expected one single-channel file per channel")
        return data, properties

    def _prediction(self, mask: np.ndarray, probabilities: np.ndarray, attention: np.ndarray | None,
                    case_id: str | None, files: tuple[Path, ...]) -> Prediction:
        probs = {name: float(p) for name, p in zip(self.class_names, probabilities)}
        if self.image_dims == 2:  # nnU-Net carries a 2-D image as (1, H, W)
            mask = mask[0]
            attention = attention[0] if attention is not None and attention.ndim == 3 else attention
        return Prediction(mask=mask if self.segments else None, class_probabilities=probs,
                          predicted_class=self.class_names[int(np.argmax(probabilities))], attention=attention,
                          case_id=case_id, files=files)


# ---------------------------------------------------------------------------------------------------- loading
def load_model(model_folder: PathLike | None = None, *, dataset: str | int | None = None,
               configuration: str | None = None, trainer: str = "nnUNetTrainerMTL", plans: str = "nnUNetPlans",
               folds: Iterable[int | str] | int | str | None = (0,), checkpoint: str = "checkpoint_final.pth",
               device: "str | torch.device" = "cpu", tile_step_size: float = 0.5, use_mirroring: bool = True,
               cpu_amp: str | None = None, verbose: bool = False) -> Model:
    """Load a trained nnunet_mtl model for :meth:`Model.predict`.

    The model is either ``model_folder`` (nnU-Net's ``TRAINER__PLANS__CONFIGURATION`` folder with plans.json,
    dataset.json and fold_K/CHECKPOINT; it may live anywhere), or ``dataset`` + ``configuration`` (+ ``trainer``,
    ``plans``), found under ``$nnUNet_results`` as ``nnunet_mtl predict -d -c -tr -p`` finds it.

    folds: the folds whose models are averaged (nnUNetv2_predict's ``-f``): fold numbers, ``"all"``, or None for
    every ``fold_K`` that holds ``checkpoint`` (nnU-Net's auto-detection). checkpoint: ``-chk``.
    device: "cpu", "cuda", "cuda:N", "mps" or a torch.device. tile_step_size: ``-step_size``. use_mirroring: False
    is ``--disable_tta``. cpu_amp: on a CPU, "auto" | "bf16" | "off" as ``--cpu-amp`` (None: the environment's
    ``nnUNet_mtl_cpu_amp``, else auto: bfloat16 where the CPU computes it natively; "off" gives masks identical to
    nnU-Net's float32); CUDA always uses nnU-Net's float16 autocast. verbose: nnU-Net's messages and progress bars.
    """
    folder = _model_folder(model_folder, dataset, configuration, trainer, plans)
    from nnunet_mtl.dataset.contract import read_json_object
    plans_json = read_json_object(folder / "plans.json", "the plans.json nnUNetv2_train wrote into the model folder")
    read_json_object(folder / "dataset.json", "the dataset.json nnUNetv2_train copied into the model folder")
    _check_class_head(folder, plans_json)
    fold_list = _folds(folder, folds, checkpoint)
    if not isinstance(tile_step_size, (int, float)) or not 0 < tile_step_size <= 1:
        raise NnunetMtlError(f"tile_step_size {tile_step_size!r}; expected a fraction of the patch size in (0, 1], "
                             f"e.g. 0.5")
    from nnunet_mtl import precision
    precision.requested(cpu_amp)  # a bad value (or environment value) is refused before anything is loaded
    torch_device = _device(device)

    from nnunet_mtl.inference.predictor import MultitaskPredictor
    with _quiet(verbose), _our_trainers_findable():
        predictor = MultitaskPredictor(tile_step_size=float(tile_step_size), use_gaussian=True,
                                       use_mirroring=bool(use_mirroring),
                                       perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                       verbose=verbose, verbose_preprocessing=verbose, allow_tqdm=verbose,
                                       cpu_amp=cpu_amp)
        try:
            predictor.initialize_from_trained_model_folder(str(folder), fold_list, checkpoint_name=checkpoint)
        except NnunetMtlError:
            raise
        except Exception as e:
            error = _loading_error(e, folder, fold_list, checkpoint)
            if error is None:
                raise
            raise error from e
    if predictor.configuration_manager.previous_stage_name is not None:
        raise NnunetMtlError(f"{folder} is a cascade stage (it needs the predictions of "
                             f"{predictor.configuration_manager.previous_stage_name}); expected a model of a "
                             f"configuration without a previous stage, e.g. 2d or 3d_fullres")
    return Model(predictor, folder, tuple(fold_list), checkpoint)


def _model_folder(model_folder, dataset, configuration, trainer: str, plans: str) -> Path:
    """The model folder, given directly or as dataset + configuration (+ trainer, plans) under nnUNet_results."""
    if model_folder is not None and dataset is not None:
        raise NnunetMtlError(f"both model_folder {model_folder} and dataset {dataset} were given; expected one of "
                             f"them")
    if model_folder is None:
        if dataset is None or configuration is None:
            raise NnunetMtlError("no model given; expected model_folder=... or dataset=... with configuration=... "
                                 "(e.g. dataset=500, configuration='2d')")
        from nnunet_mtl.inference.models import model_folder_for
        return model_folder_for(str(dataset), trainer, plans, configuration)
    folder = Path(model_folder).expanduser()
    if not folder.exists():
        raise NnunetMtlError(f"model folder {folder} does not exist; expected nnU-Net's TRAINER__PLANS__CONFIGURATION "
                             f"folder (plans.json, dataset.json, fold_K/) of a training")
    if not folder.is_dir():
        raise NnunetMtlError(f"model folder {folder} is a file; expected nnU-Net's TRAINER__PLANS__CONFIGURATION "
                             f"folder of a training")
    return folder


def _check_class_head(folder: Path, plans_json: dict) -> None:
    """Refuse, before any network is built, a model without a classification head: a plain nnU-Net trainer's (no
    nnunet_mtl section in its plans) or a segmentation-only one (head kind none), as nnunet_mtl predict does."""
    trainer = folder.name.split("__")[0] if folder.name.count("__") == 2 else "its trainer"
    section = plans_json.get(PLANS_KEY)
    if not isinstance(section, dict) or "class_labels" not in section:
        raise NnunetMtlError(f"{folder} was trained with {trainer}, which has no classification head (its plans.json "
                             f"has no '{PLANS_KEY}' section); expected a model of an nnunet_mtl trainer such as "
                             f"nnUNetTrainerMTL (nnU-Net's nnUNetPredictor gives a plain model's masks)")
    if (section.get("head") or {}).get("kind") == "none":
        raise NnunetMtlError(f"{folder} is a segmentation-only model ({trainer}, no classification head); expected a "
                             f"model with class probabilities (nnU-Net's nnUNetPredictor gives its masks)")


def _folds(folder: Path, folds, checkpoint: str) -> list:
    """The folds as nnU-Net takes them (int or 'all'), each with its checkpoint file; None: nnU-Net's
    auto-detection (every fold_K with the checkpoint)."""
    available = sorted(int(p.name[5:]) for p in folder.glob("fold_*") if p.name[5:].isdigit()
                       and (p / checkpoint).is_file())
    if folds is None:
        if not available:
            raise NnunetMtlError(f"no fold_K/{checkpoint} in {folder}; expected at least one trained fold (see "
                                 f"checkpoint=)")
        return available
    values = [folds] if isinstance(folds, (int, str)) else list(folds)
    if not values:
        raise NnunetMtlError("folds is empty; expected fold numbers such as (0,) or (0, 1, 2), 'all', or None for "
                             "every trained fold")
    parsed = []
    for value in values:
        if value == "all":
            parsed.append("all")
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
            parsed.append(int(value))
        elif isinstance(value, str) and value.isdigit():
            parsed.append(int(value))
        else:
            raise NnunetMtlError(f"fold {value!r} is not a fold; expected fold numbers (e.g. folds=(0, 1, 2)) or "
                                 f"'all'")
    for fold in parsed:
        path = folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise NnunetMtlError(f"checkpoint {path} not found; expected fold {fold} to be trained (folds with "
                                 f"{checkpoint} here: {', '.join(map(str, available)) or 'none'})")
    return parsed


def _device(device) -> "torch.device":
    """A torch.device that exists on this machine, or one line saying what is available."""
    import torch
    try:
        torch_device = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NnunetMtlError(f"device {device!r} is not a device; expected 'cpu', 'cuda', 'cuda:N', 'mps' or a "
                             f"torch.device")
    if torch_device.type == "cuda":
        if not torch.cuda.is_available():
            raise NnunetMtlError(f"device {device!r} was requested but no CUDA device is available; use device='cpu'")
        if torch_device.index is not None and torch_device.index >= torch.cuda.device_count():
            raise NnunetMtlError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                                 f"expected cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif torch_device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise NnunetMtlError(f"device {device!r} was requested but MPS is not available; use device='cpu'")
    elif torch_device.type != "cpu":
        raise NnunetMtlError(f"device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return torch_device


@contextmanager
def _quiet(verbose: bool):
    """nnU-Net's progress messages while a model loads (the device note, the trainer lookup) on stdout only when
    ``verbose``: a library call should not print."""
    if verbose:
        yield
        return
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
        yield


@contextmanager
def _our_trainers_findable():
    """nnUNet_extTrainer with our trainer folder while nnU-Net looks up the checkpoint's trainer class (as the
    commands set it for themselves); the caller's environment is restored afterwards."""
    from nnunet_mtl.paths import EXT_TRAINER_VAR, env_with_ext_trainer
    before = os.environ.get(EXT_TRAINER_VAR)
    os.environ[EXT_TRAINER_VAR] = env_with_ext_trainer()[EXT_TRAINER_VAR]
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EXT_TRAINER_VAR, None)
        else:
            os.environ[EXT_TRAINER_VAR] = before


def _loading_error(e: Exception, folder: Path, folds: list, checkpoint: str) -> NnunetMtlError | None:
    """nnU-Net's failures while loading a model folder as one line, where the cause is the folder's content; None
    for any other exception (a bug keeps its traceback)."""
    import pickle
    import zipfile
    message = (str(e).splitlines() or [""])[0]
    if "Could not find requested nnunet trainer" in message:
        return NnunetMtlError(f"the trainer of {folder} is not found by nnU-Net; expected an nnunet_mtl trainer "
                              f"such as nnUNetTrainerMTL, or nnUNet_extTrainer to include the folder that defines it")
    if isinstance(e, RuntimeError) and "state_dict" in message:
        return NnunetMtlError(f"the checkpoints in {folder} do not match the network described by its plans.json "
                              f"({message[:160]}); expected the plans written by the same training")
    if isinstance(e, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile)) or "PytorchStreamReader" in message:
        files = ", ".join(str(folder / f"fold_{k}" / checkpoint) for k in folds)
        return NnunetMtlError(f"a checkpoint of {files} cannot be read ({type(e).__name__}: {message[:100]}); "
                              f"expected nnU-Net checkpoints written by nnUNetv2_train")
    return None


# ---------------------------------------------------------------------------------------------------- plans
def _image_dims(plans: dict) -> int:
    """2 when the model's training images are 2-D (nnU-Net carries them as (c, 1, H, W): the median shape has a
    singleton first axis in the images' own axis order), else 3."""
    shape = plans.get("original_median_shape_after_transp")
    back = plans.get("transpose_backward") or [0, 1, 2]
    if not shape or len(shape) != 3:
        return 3
    return 2 if shape[back[0]] == 1 else 3


def _median_spacing(plans: dict) -> tuple[float, ...]:
    """The training images' median spacing in their own axis order (plans.json stores it transposed)."""
    spacing = plans.get("original_median_spacing_after_transp")
    back = plans.get("transpose_backward") or [0, 1, 2]
    if spacing and len(spacing) == 2:  # plans of 2-D images written without the singleton axis
        return (999.0, *map(float, spacing))
    if not spacing or len(spacing) != 3:
        raise NnunetMtlError("the model's plans.json has no original_median_spacing_after_transp of 3 values; "
                             "expected the plans nnUNetv2_plan_and_preprocess wrote (or pass spacing=)")
    return tuple(float(spacing[i]) for i in back)


def _is_path_list(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, (str, os.PathLike)) for v in value))


def _case_id(path: Path, file_ending: str) -> str:
    """nnU-Net's case id of an image file: the name without ``_0000{ending}`` (or without the ending alone)."""
    name = path.name
    suffix = f"_0000{file_ending}"
    if name.endswith(suffix):
        return name[:-len(suffix)]
    return name[:-len(file_ending)] if name.endswith(file_ending) else path.stem
