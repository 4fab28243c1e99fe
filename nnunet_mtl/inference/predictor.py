"""Class-aware prediction: nnU-Net's predictor, unchanged for segmentation, plus per-case class probabilities.

The segmentation path is nnU-Net's own code (sliding window, Gaussian tile weighting, mirroring, fold
averaging, export), so masks are identical to ``nnUNetv2_predict`` (on a CPU under bfloat16 autocast,
:class:`CPUAutocastPredictor` and nnunet_mtl.precision, equal up to rounding; identical with it off). The only
override is where the network is called: we ask it for its class logits too (same encoder pass), and average the
class softmax
  - over the test-time mirrors of a tile (like the segmentation logits),
  - over the tiles of an image (plain mean: the class is a property of the whole image, no Gaussian weighting),
  - over the folds (plain mean, like nnU-Net's fold ensemble).

With :meth:`MultitaskPredictor.save_attention_into` (``nnunet_mtl predict --save-attention``), a head that returns
an ``attention`` map (the lesion-aware head's P: (B, 1, h, w) probabilities at the bottleneck's resolution) also
gets P written per case as ``CASE.png`` (uint8 round(255 P)) in the original image's geometry:
  - per tile, P is upsampled bilinearly to the tile's size and averaged over the test-time mirrors (each flipped
    back, like the segmentation logits);
  - the tiles are stitched like nnU-Net stitches logits: each weighted by the same Gaussian importance map (or 1
    without ``use_gaussian``), divided by the summed weights, then nnU-Net's padding is cut off again (in float32,
    where nnU-Net accumulates its logits in float16);
  - folds: plain mean of P;
  - back to the image's geometry through nnU-Net's own export
    (``convert_predicted_logits_to_segmentation_with_correct_shape``) with the two-class logits log(1 - P), log(P),
    whose softmax is [1 - P, P] again: nnU-Net's resampling (of these logits, as it resamples its own) and its
    undoing of the crop to the non-zero region (P = 0 outside, where nnU-Net says background).
The segmentation logits and class probabilities are computed exactly as without it (masks and class_predictions.csv
byte-identical); P costs one interpolation per network call and one export per case, in the main process.
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_mtl.atomic import atomic_open
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.class_predictions import (class_predictions_file_name, read_class_prediction_rows,
                                                     write_class_predictions)
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet


class CPUAutocastPredictor(nnUNetPredictor):
    """nnU-Net's predictor, with bfloat16 autocast around the sliding window on a CPU where
    :mod:`nnunet_mtl.precision` enables it (``cpu_amp``: auto | bf16 | off; None: the environment's
    ``nnUNet_mtl_cpu_amp``). On CUDA nnU-Net's own float16 autocast applies, unchanged; with ``off`` everything is
    nnU-Net's (masks bit-identical to ``nnUNetv2_predict``)."""

    def __init__(self, *args, cpu_amp: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        from nnunet_mtl import precision
        self.cpu_amp = precision.requested(cpu_amp)  # a bad value is refused here, before any image is read

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        from nnunet_mtl import precision
        if self.device.type != "cpu":
            return super().predict_sliding_window_return_logits(input_image)
        with precision.autocast_for(self.device, self.cpu_amp)():
            return super().predict_sliding_window_return_logits(input_image)


class MultitaskPredictor(CPUAutocastPredictor):
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
        # --save-attention: the folder of the lesion maps (None: off), the sliding window's accumulators, the folds'
        # stitched maps of the current case, and what the export back to the image's geometry needs
        self.attention_folder: Path | None = None
        self.attention_written: list[str] = []
        self._attention_sum: torch.Tensor | None = None
        self._attention_weight: torch.Tensor | None = None
        self._attention_slicers: list | None = None
        self._attention_tile = 0  # which slicer the next network call of the sliding window predicts
        self._attention_gaussian = None
        self._fold_attention: list[torch.Tensor] = []
        self._current_properties: dict | None = None
        self._input_files: dict[str, list[str]] = {}  # output name -> input files (the sequential path's properties)
        # the output folder's class_predictions CSV of this part, rewritten while a folder is predicted (None: not
        # predicting into a folder), and when it was written last
        self._rows_file: Path | None = None
        self._rows_flushed = 0.0
        # the Python API (nnunet_mtl.api): collect the lesion map P of each case in memory, without writing it; the
        # last case's fold-mean P (preprocessed geometry, padding cut) is then in last_attention
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = "checkpoint_final.pth"):
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
        if prediction.dtype == torch.bfloat16:  # CPU autocast: the mirrors are summed in float32 (bfloat16 keeps 8
            prediction = prediction.float()     # bits); float32 and CUDA's float16 are summed as nnU-Net sums them
        probs = torch.softmax(out["logits"].float(), 1)
        embeddings = [self._embedding(out)] if self.record_embeddings else []
        collecting = self._attention_sum is not None
        attention = self._upsampled_attention(out, x) if collecting else None
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
                if collecting:  # P of the flipped tile, flipped back, like the segmentation logits
                    attention += torch.flip(self._upsampled_attention(out, x), axes)
            prediction /= (len(axes_combinations) + 1)
            probs /= (len(axes_combinations) + 1)
            if collecting:
                attention /= (len(axes_combinations) + 1)
        if collecting:
            self._stitch_attention_tile(attention)
        self._tile_probs.append(probs.to("cpu"))
        if self.record_embeddings:
            self._tile_embeddings.append(torch.stack(embeddings).to("cpu"))  # (mirrors, tiles in batch, K)
        return prediction

    def _upsampled_attention(self, out: dict, x: torch.Tensor) -> torch.Tensor:
        """The head's P of one network call, upsampled bilinearly from the bottleneck's resolution to the tile's
        size, in float32 (autocast may have given half precision)."""
        if "attention" not in out:
            raise NnunetMtlError(f"the head of {self.trainer_name} returned no 'attention' map; --save-attention needs "
                                 f"a head that predicts a lesion map (e.g. nnUNetTrainerLesionAware's lesion_aware)")
        mode = {4: "bilinear", 5: "trilinear"}[x.ndim]
        return F.interpolate(out["attention"].float(), size=tuple(x.shape[2:]), mode=mode, align_corners=False)

    def _stitch_attention_tile(self, attention: torch.Tensor) -> None:
        """Add one tile's mirror-averaged P to the sliding window's sums, weighted like nnU-Net weights its logits.
        nnU-Net predicts the tiles one at a time in the order of its slicers, so the n-th call is the n-th slicer."""
        if attention.shape[0] != 1:
            raise RuntimeError(f"expected one tile per network call in the sliding window, got {attention.shape[0]}")
        index = self._attention_tile
        self._attention_tile += 1
        sl = self._attention_slicers[index]
        weight = self._attention_gaussian
        self._attention_sum[sl] += attention[0].to("cpu") * weight
        self._attention_weight[sl[1:]] += weight

    def _embedding(self, out: dict) -> torch.Tensor:
        if "embedding" not in out:
            raise NnunetMtlError(f"the head of {self.trainer_name} returns no embedding; recording embeddings needs a "
                                 f"head with a linear classifier on an embedding (e.g. bottleneck_mlp)")
        return out["embedding"].float()

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        self._tile_probs = []  # reset: nnU-Net retries on CPU after an out-of-memory on the device
        self._tile_embeddings = []
        if self._collects_attention():
            self._start_attention_window(data, slicers)
        try:
            logits = super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
            if self._collects_attention():  # the stitched P of this fold, still padded like data
                self._fold_attention.append(self._attention_sum / self._attention_weight)
        finally:
            self._attention_sum = self._attention_weight = self._attention_slicers = None
        self._fold_probs.append(torch.cat(self._tile_probs).mean(0))
        if self.record_embeddings:
            self._fold_embeddings.append(torch.cat(self._tile_embeddings, 1))  # (mirrors, tiles, K)
        return logits

    def _collects_attention(self) -> bool:
        """Whether the sliding window stitches P: to write it (--save-attention) or to keep it (the Python API)."""
        return self.attention_folder is not None or self.keep_attention

    def _start_attention_window(self, data: torch.Tensor, slicers) -> None:
        """Empty sums of P (1, *data's spatial shape) and of the tile weights, on the CPU in float32, for one
        sliding window over ``data`` (nnU-Net's padded image) with nnU-Net's ``slicers``."""
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian
        self._attention_sum = torch.zeros((1, *data.shape[1:]), dtype=torch.float32)
        self._attention_weight = torch.zeros(tuple(data.shape[1:]), dtype=torch.float32)
        self._attention_slicers = list(slicers)
        self._attention_tile = 0
        self._attention_gaussian = (compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                                     value_scaling_factor=10, dtype=torch.float32,
                                                     device=torch.device("cpu"))
                                    if self.use_gaussian else 1.0)

    def _start_case(self) -> None:
        """Empty the per-fold collections of a case (class probabilities, embeddings, lesion maps) before it is
        predicted; :meth:`_record_case` turns them into the case's values afterwards."""
        self._fold_probs = []
        self._fold_embeddings = []
        self._fold_attention = []

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        self._start_case()
        prediction = super().predict_logits_from_preprocessed_data(data)
        case = self._current_case
        if case is None and self._sequential_cases:
            case = self._sequential_cases.pop(0)
        self._record_case(case, tuple(data.shape))
        return prediction

    def _record_case(self, case: str | None, input_shape: tuple | None = None) -> None:
        """Mean over the folds predicted since the last reset; stored under the case id. With --save-attention the
        folds' lesion maps (of an input of ``input_shape``) are averaged and written for the case too."""
        self.last_class_probabilities = torch.stack(self._fold_probs).mean(0).numpy()
        if case is not None:
            self.class_probabilities[case] = self.last_class_probabilities
            self._maybe_flush_rows()
            if self.record_embeddings:
                self.embeddings[case] = torch.stack(self._fold_embeddings).numpy()  # (folds, mirrors, tiles, K)
        self.last_attention = None
        writes = self.attention_folder is not None and case is not None
        if self._fold_attention and (writes or self.keep_attention):
            unpadded = self._padding_slicer(input_shape)
            attention = torch.stack([a[(slice(None), *unpadded[1:])] for a in self._fold_attention]).mean(0)
            if self.keep_attention:
                self.last_attention = attention
            if writes:
                self._export_attention(case, attention)
        self._fold_attention = []

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder,
                                       output_folder_or_list_of_truncated_output_files,
                                       folder_with_segs_from_prev_stage=None, overwrite: bool = True,
                                       part_id: int = 0, num_parts: int = 1, save_probabilities: bool = False):
        """nnU-Net's lists of the cases to predict (this part's), where a continued prediction (``overwrite``
        False, ``--continue_prediction``) keeps only the cases that are finished: nnU-Net keeps every case whose
        mask file exists, but after a kill that file may be cut short (nnU-Net's export writes it in place), and its
        class probabilities may be missing (class_predictions.csv is written at the end, and every
        :data:`ROWS_FLUSH_SECONDS`). A case counts as finished when its mask can be read (and its .npz exists with
        ``save_probabilities``) and the folder's CSV of this part has its row; the others are predicted again, so
        that the continued folder is the one an uninterrupted run writes."""
        folder = output_folder_or_list_of_truncated_output_files
        self._rows_file = (Path(folder) / class_predictions_file_name(num_parts, part_id)
                           if isinstance(folder, (str, os.PathLike)) else None)
        self._rows_flushed = time.monotonic()
        inputs, outputs, prev = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, folder, folder_with_segs_from_prev_stage, True, part_id, num_parts,
            save_probabilities)
        if not overwrite and outputs is not None:
            rows = (read_class_prediction_rows(self._rows_file, self.class_names)
                    if self._rows_file is not None and self.class_names else None)
            todo = [i for i, o in enumerate(outputs) if not self._finished_output(o, rows, save_probabilities)]
            kept = len(outputs) - len(todo)
            inputs, outputs, prev = ([x[i] for i in todo] for x in (inputs, outputs, prev))
            print(f"--continue_prediction: {kept} case(s) already finished (mask readable and a row in "
                  f"{self._rows_file.name if self._rows_file is not None else 'no CSV'}), {len(todo)} to predict")
        # Both of nnU-Net's paths predict cases in the order of this output list. The parallel path also tells us
        # the case with each item (see predict_from_data_iterator); the sequential one only through this order.
        self._sequential_cases = [os.path.basename(o) for o in outputs] if outputs is not None else None
        if outputs is not None:
            self._input_files.update({os.path.basename(o): list(files) for o, files in zip(outputs, inputs)})
        return inputs, outputs, prev

    def _finished_output(self, truncated: str, rows: dict | None, save_probabilities: bool) -> bool:
        """Whether the case written under ``truncated`` (nnU-Net's output path without its ending) is complete:
        mask present and readable by the dataset's reader (a file cut short by a kill is not), the .npz too with
        ``save_probabilities`` (nnU-Net writes it before the mask), and a row in ``rows`` (None: not checked)."""
        mask = truncated + self.dataset_json["file_ending"]
        if not os.path.isfile(mask) or (save_probabilities and not os.path.isfile(truncated + ".npz")):
            return False
        if rows is not None and os.path.basename(truncated) not in rows:
            return False
        try:
            self.plans_manager.image_reader_writer_class().read_seg(mask)
        except Exception:  # any reader's error on a cut file (PIL: OSError, SimpleITK: RuntimeError, gzip: EOFError)
            return False
        return True

    def _maybe_flush_rows(self) -> None:
        """Write the class probabilities predicted so far into the output folder's CSV (merged with its rows, as the
        final write does) when the last write is :data:`ROWS_FLUSH_SECONDS` old: a prediction killed midway then
        keeps the rows of its finished cases, and ``--continue_prediction`` does not predict them again."""
        if self._rows_file is None or time.monotonic() - self._rows_flushed < ROWS_FLUSH_SECONDS:
            return
        write_class_predictions(self._rows_file, self.class_names, self.class_probabilities)
        self._rows_flushed = time.monotonic()

    # nnU-Net records its arguments by reading its own locals with this method's signature: keep its parameters
    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        """nnU-Net's prediction of a folder, whose worker processes die with this process even when it is killed
        with SIGKILL (nnU-Net's forked multiprocessing manager would otherwise keep its spawned preprocessing
        workers polling and its export workers waiting for good: measured, see
        :func:`nnunet_mtl.processes.children_die_with_this_process`)."""
        from nnunet_mtl.processes import children_die_with_this_process
        children_die_with_this_process()
        try:
            return super().predict_from_files(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, num_processes_preprocessing, num_processes_segmentation_export,
                folder_with_segs_from_prev_stage, num_parts, part_id)
        finally:
            self._rows_file = None  # the CSV belongs to this folder's prediction only

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str = None):
        """nnU-Net's prediction of a folder in this process (``-npp 0 -nps 0``); afterwards the folder's CSV is no
        longer rewritten by this predictor (see :meth:`_maybe_flush_rows`)."""
        try:
            return super().predict_from_files_sequential(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, folder_with_segs_from_prev_stage)
        finally:
            self._rows_file = None

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        def recording(iterator):
            try:
                for item in iterator:
                    ofile = item.get("ofile")
                    self._current_case = os.path.basename(ofile) if ofile is not None else None
                    self._current_properties = item.get("data_properties")  # where P goes back into the image
                    yield item
            finally:  # also when nnU-Net stops early: no case or crop box outlives its prediction
                self._current_case = self._current_properties = None

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
        self._start_case()
        logits = self.predict_sliding_window_return_logits(data)
        self._record_case(case_id, tuple(data.shape))
        return logits

    def predict_array_with_classes(self, image: np.ndarray, properties: dict
                                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One image (nnU-Net's (c, x, y[, z]) layout, ``properties`` with its 'spacing') predicted as nnU-Net's
        ``predict_single_npy_array`` predicts it (the same preprocessing, sliding window, mirroring, fold average and
        export into the image's geometry), returning together what that method cannot: (mask, class probabilities
        ordered as class_names, P in the image's geometry or None). P is given when ``keep_attention`` is set and
        the head returns a lesion map. Written out rather than calling predict_single_npy_array because P's way back
        into the image needs nnU-Net's preprocessing properties (the crop box), which that method keeps to itself."""
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        adapter = PreprocessAdapterFromNpy([image], None, [dict(properties)], None, self.plans_manager,
                                           self.dataset_json, self.configuration_manager,
                                           num_threads_in_multithreaded=1, verbose=self.verbose)
        item = next(adapter)
        logits = self.predict_logits_from_preprocessed_data(item["data"]).cpu()
        probabilities, attention = self.last_class_probabilities, self.last_attention
        mask = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, item["data_properties"],
            return_probabilities=False)
        if attention is not None:
            attention = self.attention_in_image_geometry(attention, item["data_properties"])
        return mask, probabilities, attention

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
            return [(state[weight_key].detach().cpu().double().numpy(),
                     state[bias_key].detach().cpu().double().numpy())]
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
            self._current_properties = item.get("data_properties")
            try:
                self.predict_logits_from_preprocessed_data(item["data"])
            finally:
                self._current_case = self._current_properties = None
        finish = getattr(iterator, "_finish", None)
        if callable(finish):
            finish()

    # --- lesion maps (--save-attention) ----------------------------------------------------------------------
    @torch.inference_mode()
    def head_returns_attention(self) -> bool:
        """Whether the model's head returns an ``attention`` map: one forward pass of a zero patch (the keys a head
        returns do not depend on its weights), so a model without one is refused before any image is predicted."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        network = getattr(self.network, "_orig_mod", self.network)
        channels = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        patch = tuple(self.configuration_manager.patch_size)
        network = network.to(self.device)
        network.eval()
        out = network(torch.zeros((1, channels, *patch), device=self.device), return_aux=True)
        return "attention" in out

    def save_attention_into(self, folder) -> None:
        """Write each predicted case's lesion map P into ``folder`` (see the module docstring); one line naming the
        trainer when its head returns no attention map."""
        if not self.head_returns_attention():
            network = getattr(self.network, "_orig_mod", self.network)
            raise NnunetMtlError(f"--save-attention: the head of {self.trainer_name} (kind "
                                 f"{network.head_config.kind!r}) returns no attention map; expected a head that "
                                 f"predicts a lesion map, such as nnUNetTrainerLesionAware's lesion_aware head")
        self.attention_folder = Path(folder)

    def _padding_slicer(self, input_shape: tuple) -> tuple:
        """The slicer that undoes the padding nnU-Net's sliding window puts around an input of ``input_shape``
        (pad_nd_image to the patch size, as predict_sliding_window_return_logits calls it)."""
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        _, slicer = pad_nd_image(torch.zeros(input_shape, dtype=torch.uint8), self.configuration_manager.patch_size,
                                 "constant", {"value": 0}, True, None)
        return slicer

    def _properties_of(self, case: str) -> dict:
        """nnU-Net's preprocessing properties of a case (crop box, shapes, spacing): handed over with the case on the
        parallel path; on the sequential one (predict_from_files_sequential keeps them to itself) nnU-Net's
        preprocessor is run again on the case's files."""
        if self._current_properties is not None:
            return self._current_properties
        files = self._input_files.get(case)
        if not files:
            raise NnunetMtlError(f"--save-attention: no input files known for case {case}; expected it to be predicted "
                                 f"from an input folder (nnunet_mtl predict -i)")
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        _, _, properties = preprocessor.run_case(files, None, self.plans_manager, self.configuration_manager,
                                                 self.dataset_json)
        return properties

    def attention_in_image_geometry(self, attention: torch.Tensor, properties: dict) -> np.ndarray:
        """P (1, *preprocessed shape) back in the original image's geometry, through nnU-Net's export: the logits
        log(1 - P), log(P) are resampled, soft-maxed (giving [1 - P, P] again) and put back into the uncropped,
        untransposed image like nnU-Net's probabilities (P = 0 outside the crop). P is clipped to [1e-6, 1 - 1e-6]
        first, so that no logarithm is infinite."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        p = attention.float().clamp(_P_EPS, 1.0 - _P_EPS)
        logits = torch.log(torch.cat([1.0 - p, p]))
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, _lesion_label_manager(), properties,
            return_probabilities=True)
        return np.asarray(probabilities[1], dtype=np.float32)

    def _export_attention(self, case: str, attention: torch.Tensor) -> None:
        """CASE.png: uint8 round(255 P) of the case's P in its image's geometry (a 2D map)."""
        from PIL import Image
        p = self.attention_in_image_geometry(attention, self._properties_of(case))
        if p.ndim == 3 and p.shape[0] == 1:  # nnU-Net's 2D images carry a leading singleton axis
            p = p[0]
        if p.ndim != 2:
            raise NnunetMtlError(f"--save-attention writes 2D lesion maps as PNG; case {case} has a map of shape "
                                 f"{p.shape}: expected a 2D model")
        self.attention_folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.attention_folder / f"{case}.png", "wb") as f:
            Image.fromarray(attention_to_uint8(p)).save(f, format="PNG")
        self.attention_written.append(case)

    # --- output --------------------------------------------------------------------------------------------
    def write_class_predictions(self, path: Path, merge_existing: bool = True) -> Path:
        """CSV: case_id, predicted_class, prob_<class>... (one row per case, sorted by case id). The rows of a CSV
        already at ``path`` are kept, those of the cases predicted now replaced (a folder predicted in several
        runs keeps one row per mask); ``merge_existing`` False writes only the cases predicted now."""
        return write_class_predictions(path, self.class_names, self.class_probabilities, merge_existing)


class ValidationPredictor(MultitaskPredictor):
    """The predictor of a trainer's final validation (nnunet_mtl.trainers.mtl): nnU-Net's loop calls
    ``predict_sliding_window_return_logits`` once per validation case, in the order of ``cases``; the class
    probabilities of each call are recorded under its case. ``validation_complete()``: every case predicted once,
    nothing more."""

    def __init__(self, *args, cases: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.validation_cases = list(cases)
        self._calls = 0

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        case = self.validation_cases[self._calls] if self._calls < len(self.validation_cases) else None
        self._calls += 1
        self._start_case()
        logits = super().predict_sliding_window_return_logits(input_image)
        self._record_case(case, tuple(input_image.shape))
        return logits

    def validation_complete(self) -> bool:
        return self._calls == len(self.validation_cases) and set(self.class_probabilities) == set(self.validation_cases)


# how often a prediction into a folder rewrites its class_predictions CSV (seconds): what a kill can lose
ROWS_FLUSH_SECONDS = 10.0


_P_EPS = 1e-6  # P is clipped to [_P_EPS, 1 - _P_EPS] before its logarithm; round(255 P) does not see the difference


def _lesion_label_manager():
    """nnU-Net's label manager of a background / lesion softmax, whatever the dataset's labels (an ignore label,
    more lesion labels): the export of P only needs its softmax and its background value outside the crop."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    return LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)


def attention_to_uint8(p: np.ndarray) -> np.ndarray:
    """What a lesion map PNG stores: round(255 P) (numpy's rint, half to even) of P clipped to [0, 1], as uint8;
    P >= 0.5 is then exactly pixel >= 128 (127.5 rounds to 128)."""
    return np.rint(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


