"""Class-aware prediction: nnU-Net's predictor, unchanged for segmentation, plus per-case class probabilities.

The segmentation path is nnU-Net's own code (sliding window, Gaussian tile weighting, mirroring, fold
averaging, export), so masks are identical to ``nnUNetv2_predict``. The only override is where the network is
called: we ask it for its class logits too (same encoder pass), and average the class softmax
  - over the test-time mirrors of a tile (like the segmentation logits),
  - over the tiles of an image (plain mean: the class is a property of the whole image, no Gaussian weighting),
  - over the folds (plain mean, like nnU-Net's fold ensemble).
"""
from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_mtl.atomic import atomic_open
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet


class MultitaskPredictor(nnUNetPredictor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_names: list[str] = []
        self.class_probabilities: dict[str, np.ndarray] = {}  # case id -> probabilities (ordered as class_names)
        self._tile_probs: list[torch.Tensor] = []
        self._fold_probs: list[torch.Tensor] = []
        self._current_case: str | None = None
        self._sequential_cases: list[str] | None = None  # output names in prediction order
        self.last_class_probabilities: np.ndarray | None = None
        # guidance ablation: keep every embedding h the classifier saw (case -> (folds, mirrors, tiles, K)), so
        # modified classifiers can be re-applied without running the network again
        self.record_embeddings = False
        self.embeddings: dict[str, np.ndarray] = {}
        self._tile_embeddings: list[torch.Tensor] = []
        self._fold_embeddings: list[torch.Tensor] = []

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds, checkpoint_name: str = "checkpoint_final.pth"):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self._check_multitask(model_training_output_dir)

    def manual_initialization(self, network, plans_manager, configuration_manager, parameters, dataset_json,
                              trainer_name, inference_allowed_mirroring_axes):
        super().manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                      trainer_name, inference_allowed_mirroring_axes)
        self._check_multitask(f"trainer {trainer_name}")

    def _check_multitask(self, where: str) -> None:
        network = getattr(self.network, "_orig_mod", self.network)
        section = self.plans_manager.plans.get(PLANS_KEY)
        if not isinstance(network, MultitaskUNet) or not section:
            raise NnunetMtlError(
                f"{where} was trained with {self.trainer_name}, which has no classification head; expected an "
                f"nnunet_mtl trainer such as nnUNetTrainerMTL (use nnUNetv2_predict for segmentation-only models)")
        if section.get("head", {}).get("kind") == "none":
            raise NnunetMtlError(
                f"{where} was trained with {self.trainer_name}, a segmentation-only model without a classification "
                f"head; expected nnUNetv2_predict for its masks (nnunet_mtl predict adds class probabilities)")
        labels = section["class_labels"]
        self.class_names = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])]
        self.segments = section.get("segments", True)

    # --- the one place where the network is called: also collect class probabilities -----------------------
    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        # Mirrors exactly as nnUNetPredictor._internal_maybe_mirror_and_predict (same order of additions, so the
        # segmentation logits are bit-identical).
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        out = self.network(x, return_aux=True)
        network = getattr(self.network, "_orig_mod", self.network)
        # a classification-only model runs no decoder: background logits keep nnU-Net's sliding window going
        prediction = out["seg"] if "seg" in out else network.background(x)
        probs = torch.softmax(out["logits"].float(), 1)
        embeddings = [self._embedding(out)] if self.record_embeddings else []
        if mirror_axes is not None:
            assert max(mirror_axes) <= x.ndim - 3, "mirror_axes does not match the dimension of the input!"
            mirror_axes = [m + 2 for m in mirror_axes]
            axes_combinations = [c for i in range(len(mirror_axes)) for c in itertools.combinations(mirror_axes, i + 1)]
            for axes in axes_combinations:
                out = self.network(torch.flip(x, axes), return_aux=True)
                prediction += torch.flip(out["seg"], axes) if "seg" in out else network.background(x)
                probs += torch.softmax(out["logits"].float(), 1)
                if self.record_embeddings:
                    embeddings.append(self._embedding(out))
            prediction /= (len(axes_combinations) + 1)
            probs /= (len(axes_combinations) + 1)
        self._tile_probs.append(probs.to("cpu"))
        if self.record_embeddings:
            self._tile_embeddings.append(torch.stack(embeddings).to("cpu"))  # (mirrors, tiles in batch, K)
        return prediction

    def _embedding(self, out: dict) -> torch.Tensor:
        if "embedding" not in out:
            raise NnunetMtlError(f"the head of {self.trainer_name} returns no embedding; recording embeddings needs a "
                                 f"head with a linear classifier on an embedding (e.g. bottleneck_mlp)")
        return out["embedding"].float()

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        self._tile_probs = []  # reset: nnU-Net retries on CPU after an out-of-memory on the device
        self._tile_embeddings = []
        logits = super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
        self._fold_probs.append(torch.cat(self._tile_probs).mean(0))
        if self.record_embeddings:
            self._fold_embeddings.append(torch.cat(self._tile_embeddings, 1))  # (mirrors, tiles, K)
        return logits

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        self._fold_probs = []
        self._fold_embeddings = []
        prediction = super().predict_logits_from_preprocessed_data(data)
        case = self._current_case
        if case is None and self._sequential_cases:
            case = self._sequential_cases.pop(0)
        self._record_case(case)
        return prediction

    def _record_case(self, case: str | None) -> None:
        """Mean over the folds predicted since the last reset; stored under the case id."""
        self.last_class_probabilities = torch.stack(self._fold_probs).mean(0).numpy()
        if case is not None:
            self.class_probabilities[case] = self.last_class_probabilities
            if self.record_embeddings:
                self.embeddings[case] = torch.stack(self._fold_embeddings).numpy()  # (folds, mirrors, tiles, K)

    def _manage_input_and_output_lists(self, *args, **kwargs):
        # Both of nnU-Net's paths predict cases in the order of this output list. The parallel path also tells us
        # the case with each item (see predict_from_data_iterator); the sequential one only through this order.
        inputs, outputs, prev = super()._manage_input_and_output_lists(*args, **kwargs)
        self._sequential_cases = [os.path.basename(o) for o in outputs] if outputs is not None else None
        return inputs, outputs, prev

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        def recording(iterator):
            for item in iterator:
                ofile = item.get("ofile")
                self._current_case = os.path.basename(ofile) if ofile is not None else None
                yield item
            self._current_case = None

        try:
            return super().predict_from_data_iterator(recording(data_iterator), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            finish = getattr(data_iterator, "_finish", None)
            if callable(finish):  # nnU-Net finishes a MultiThreadedAugmenter itself, but it no longer sees it
                finish()

    def predict_preprocessed_case(self, case_id: str, data: torch.Tensor) -> torch.Tensor:
        """Segmentation logits of one preprocessed case; its class probabilities are recorded under case_id.
        Without a list of fold parameters (a trainer's own network, see manual_initialization), the network
        as it is predicts, as in nnU-Net's own final validation."""
        if self.list_of_parameters:
            self._current_case = case_id
            try:
                return self.predict_logits_from_preprocessed_data(data)
            finally:
                self._current_case = None
        self._fold_probs = []
        self._fold_embeddings = []
        logits = self.predict_sliding_window_return_logits(data)
        self._record_case(case_id)
        return logits

    def fold_classifiers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, b) of the head's final linear classifier (logits = W h + b; Salama et al. 2026, Eq. 1) of every fold, in
        prediction order."""
        network = getattr(self.network, "_orig_mod", self.network)
        keys = network.classifier_keys()
        if keys is None:
            raise NnunetMtlError(f"the head of {self.trainer_name} ({network.head_config.kind}) has no linear "
                                 f"classifier on an embedding; expected e.g. the bottleneck_mlp head")
        weight_key, bias_key = keys
        if not self.list_of_parameters:
            state = network.state_dict()
            return [(state[weight_key].detach().cpu().double().numpy(), state[bias_key].detach().cpu().double().numpy())]
        return [(params[weight_key].detach().cpu().double().numpy(),
                 params[bias_key].detach().cpu().double().numpy()) for params in self.list_of_parameters]

    def predict_classes_from_files(self, input_folder, num_processes_preprocessing: int = 1) -> None:
        """Class probabilities of every image of ``input_folder`` (nnU-Net's naming), no masks: for a
        classification-only model, whose decoder was never trained. nnU-Net's preprocessing and sliding window,
        mirroring and fold averaging, as for every other model; nothing is exported."""
        from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
        ending = self.dataset_json["file_ending"]
        lists = create_lists_from_splitted_dataset_folder(str(input_folder), ending)
        # the "output" names only tell which case each preprocessed item is: nothing is written under them
        names = [os.path.basename(files[0])[:-len(ending) - 5] for files in lists]
        iterator = self._internal_get_data_iterator_from_lists_of_filenames(lists, None, names,
                                                                            max(1, num_processes_preprocessing))
        for item in iterator:
            case = os.path.basename(item["ofile"])
            self._current_case = case
            try:
                self.predict_logits_from_preprocessed_data(item["data"])
            finally:
                self._current_case = None
        finish = getattr(iterator, "_finish", None)
        if callable(finish):
            finish()

    # --- output --------------------------------------------------------------------------------------------
    def write_class_predictions(self, path: Path, merge_existing: bool = True) -> Path:
        """CSV: case_id, predicted_class, prob_<class>... (one row per case, sorted by case id). The rows of a CSV
        already at ``path`` are kept, those of the cases predicted now replaced (a folder predicted in several
        runs keeps one row per mask); ``merge_existing`` False writes only the cases predicted now."""
        rows = read_class_prediction_rows(path, self.class_names) if merge_existing else {}
        for case, probs in self.class_probabilities.items():
            row = {"case_id": case, "predicted_class": self.class_names[int(np.argmax(probs))]}
            row.update({f"prob_{n}": f"{float(p):.6f}" for n, p in zip(self.class_names, probs)})
            rows[case] = row
        fields = class_prediction_fields(self.class_names)
        with atomic_open(path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for case in sorted(rows):
                writer.writerow({k: rows[case].get(k, "") for k in fields})
        return path


def class_prediction_fields(class_names) -> list[str]:
    return ["case_id", "predicted_class"] + [f"prob_{n}" for n in class_names]


def read_class_prediction_rows(path, class_names) -> dict[str, dict]:
    """The rows of an existing class_predictions.csv by case id ({} when there is none), for merging with a new
    prediction. Refused with one line when it cannot be read or has other columns than this model writes: merging
    would mix the classes of two models. Run before predicting (``nnunet_mtl predict`` does) and again when
    writing."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise NnunetMtlError(f"{path} is not a file; expected the class_predictions.csv of this output folder")
    expected = class_prediction_fields(class_names)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = {row["case_id"]: row for row in reader} if fields == expected else None
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as e:
        raise NnunetMtlError(f"{path} is not a readable class_predictions.csv ({type(e).__name__}); expected the "
                             f"file nnunet_mtl predict writes, or another -o")
    if rows is None:
        raise NnunetMtlError(f"{path} has columns {','.join(fields) or 'none'}, this model writes "
                             f"{','.join(expected)}: its rows come from another model; expected another -o (or "
                             f"remove the file)")
    return rows
