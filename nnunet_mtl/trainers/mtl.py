"""nnUNetTrainerMTL: nnU-Net's trainer with a bottleneck classification head (segmentation + lesion class).

Found by nnU-Net's own ``nnUNetv2_train`` / ``nnUNetv2_predict`` through ``nnUNet_extTrainer`` (see README).
Loss (per training step):  w_seg * nnU-Net's Dice+CE (deep supervision)  +  w_cls * class-weighted CE.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from time import time

import numpy as np
import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from torch import autocast, nn

from nnunet_mtl import __version__
from nnunet_mtl.dataset.contract import class_index_by_case, read_cases_csv, read_class_labels
from nnunet_mtl.dataset.splits import (DEFAULT_NUM_FOLDS, check_splits_grouped, describe_splits,
                                       grouped_stratified_splits, write_splits)
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, HeadConfig, MultitaskUNet, head_config_from_plans
from nnunet_mtl.trainers.progress_logger import MultitaskLocalLogger


def fail(message: str):
    """Stop nnUNetv2_train with one readable line instead of a traceback (SystemExit prints it, exit code 1)."""
    raise SystemExit(f"nnunet_mtl: error: {message}")


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """'Balanced' weights n / (C * n_c) (as sklearn's class_weight='balanced'); a class absent from the fold gets
    weight 1 (it never occurs as a target, so its weight does not matter, but it must be finite)."""
    counts = np.asarray(counts, dtype=np.float64)
    total, num_classes = counts.sum(), len(counts)
    weights = np.ones(num_classes)
    present = counts > 0
    weights[present] = total / (num_classes * counts[present])
    return weights


def classification_scores(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> dict:
    """Macro F1, balanced accuracy and AUC (binary: positive class 1; more classes: one-vs-rest macro).
    AUC is NaN when the reference holds a single class (undefined)."""
    y_pred = probs.argmax(1)
    labels = list(range(num_classes))
    scores = {
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    with warnings.catch_warnings():
        # sklearn warns when a predicted class is absent from the (small) validation reference; nothing is wrong
        warnings.simplefilter("ignore", UserWarning)
        scores["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan")
    present = np.unique(y_true)
    auc = float("nan")
    if len(present) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if num_classes == 2:
                auc = float(roc_auc_score(y_true, probs[:, 1]))
            else:
                # only the classes present in the reference can have a one-vs-rest ROC curve
                p = probs[:, present] / np.clip(probs[:, present].sum(1, keepdims=True), 1e-12, None)
                auc = float(roc_auc_score(y_true, p if len(present) > 2 else p[:, 1], multi_class="ovr",
                                          labels=present if len(present) > 2 else None, average="macro"))
    scores["auc"] = auc
    return scores


class nnUNetTrainerMTL(nnUNetTrainer):
    # loss weights (total = w_seg * L_seg + w_cls * L_cls)
    seg_loss_weight: float = 1.0
    cls_loss_weight: float = 1.0
    # classification head (stored in the plans so the predictor rebuilds the same network)
    head_hidden: int = 256
    head_embed_dim: int = 128
    head_dropout: float = 0.2
    head_guided_dim: int = 0
    # ultrasound-aware augmentation: the image has a depth direction (skin on top)
    ultrasound_augmentation: bool = True
    max_rotation_degrees: float = 15.0
    # patient-grouped, class-stratified split written when splits_final.json is missing
    num_split_folds: int = DEFAULT_NUM_FOLDS
    # checkpoint selection: EMA of 0.5 * pseudo Dice + 0.5 * classification score (AUC, or balanced accuracy
    # when AUC is undefined on the validation patches)
    selection_seg_weight: float = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        dataset_name = self.plans_manager.dataset_name
        try:
            self.class_labels = read_class_labels(dataset_json, source=f"dataset.json of {dataset_name}")
        except NnunetMtlError as e:
            fail(str(e))
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            fail(f"{dataset_name} uses region-based labels or an ignore label; nnunet_mtl expects labels "
                 f"{{background: 0, lesion: 1}}")
        self.class_names = [n for n, _ in sorted(self.class_labels.items(), key=lambda kv: kv[1])]
        self.num_cls_classes = len(self.class_names)
        # Everything the network's shape depends on goes into the plans: nnU-Net saves them as plans.json next to
        # the checkpoints, and the predictor rebuilds the network from them.
        head = self.head_config(self.num_cls_classes)
        self.plans_manager.plans[PLANS_KEY] = {
            "head": head.to_dict(),
            "class_labels": self.class_labels,
            "trainer": self.__class__.__name__,
            "version": __version__,
        }
        self.logger.local_logger = MultitaskLocalLogger(extra_keys=self.extra_logging_keys())
        self._class_of_case: dict[str, int] | None = None
        self._patient_of_case: dict[str, str] | None = None
        self.cls_loss = None

    # ------------------------------------------------------------------ network
    @classmethod
    def head_config(cls, num_classes: int) -> HeadConfig:
        """The head this trainer builds for a dataset with ``num_classes`` classes (also used by
        ``nnunet_mtl pretrained`` to shape a head before training)."""
        return HeadConfig(num_classes=num_classes, hidden=cls.head_hidden, embed_dim=cls.head_embed_dim,
                          dropout=cls.head_dropout, guided_dim=cls.head_guided_dim)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        try:
            head = head_config_from_plans(plans_manager.plans)
        except KeyError as e:
            fail(str(e.args[0]))
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
        return MultitaskUNet(unet, head)

    def extra_logging_keys(self) -> tuple[str, ...]:
        """Per-epoch logging keys of subclasses (each must be logged once per epoch)."""
        return ()

    # ------------------------------------------------------------------ data: classes, splits, augmentation
    def _raw_dataset_folder(self) -> Path | None:
        """This dataset's folder in nnUNet_raw, or None when nnUNet_raw is unset or lacks it (training needs only
        the preprocessed data)."""
        import os

        from nnunet_mtl.paths import find_dataset_folder
        raw_root = os.environ.get("nnUNet_raw")
        if not raw_root:
            return None
        try:
            return find_dataset_folder(self.plans_manager.dataset_name, Path(raw_root))
        except NnunetMtlError:
            return None

    def _case_table_path(self) -> Path:
        """cases.csv beside the preprocessed data (copied there from nnUNet_raw, the source of truth)."""
        pre = Path(self.preprocessed_dataset_folder_base) / "cases.csv"
        raw = self._raw_dataset_folder()
        raw_csv = raw / "cases.csv" if raw is not None else None
        if raw_csv is not None and raw_csv.is_file():
            if not pre.is_file() or pre.read_bytes() != raw_csv.read_bytes():
                shutil.copyfile(raw_csv, pre)
        if not pre.is_file():
            fail(f"no cases.csv for {self.plans_manager.dataset_name}: looked in {pre} and in nnUNet_raw; expected "
                 f"the case table written by 'nnunet_mtl convert' (columns case_id, split, class, patient_id)")
        return pre

    def _load_case_table(self) -> None:
        if self._class_of_case is not None:
            return
        path = self._case_table_path()
        try:
            cases = read_cases_csv(path, self.class_labels)
        except NnunetMtlError as e:
            fail(str(e))
        cases = cases[cases["split"] == "train"]
        self._class_of_case = class_index_by_case(cases, self.class_labels)
        self._patient_of_case = dict(zip(cases["case_id"], cases["patient_id"]))
        if self.output_folder_base is not None:
            Path(self.output_folder_base).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(self.output_folder_base) / "cases.csv")

    def do_split(self):
        self._load_case_table()
        if self.dataset_class is None:
            from nnunetv2.training.dataloading.utils import infer_dataset_class
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        identifiers = sorted(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        missing = [i for i in identifiers if i not in self._class_of_case]
        if missing:
            fail(f"{len(missing)} preprocessed case(s) have no 'train' row in cases.csv (e.g. {missing[0]}); "
                 f"expected one row per training case")
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if self.fold != "all":
            if not splits_file.is_file():
                splits = grouped_stratified_splits(
                    identifiers, [self._patient_of_case[i] for i in identifiers],
                    [self._class_of_case[i] for i in identifiers], num_folds=self.num_split_folds)
                write_splits(splits, splits_file)
                self.print_to_log_file(
                    f"Created a {self.num_split_folds}-fold split grouped by patient and stratified by class:\n"
                    + describe_splits(splits, {k: self.class_names[v] for k, v in self._class_of_case.items()}))
            import json
            splits = json.loads(splits_file.read_text())
            if self.fold >= len(splits):
                # nnU-Net would silently train on a random 80:20 split that ignores patients
                fail(f"fold {self.fold} requested but {splits_file} defines {len(splits)} folds (0..{len(splits) - 1})")
            try:
                check_splits_grouped(splits, self._patient_of_case)
            except NnunetMtlError as e:
                self.print_to_log_file(f"WARNING: {e}")
        tr_keys, val_keys = super().do_split()
        self._train_keys = list(tr_keys)
        return tr_keys, val_keys

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.ultrasound_augmentation or len(self.configuration_manager.patch_size) != 2:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
        # No vertical flips (axis 0 = depth): a scanner never shows the skin line at the bottom. Horizontal flips
        # (axis 1) are a valid probe orientation. The same axes are saved for test-time mirroring.
        mirror_axes = (1,)
        angle = np.deg2rad(self.max_rotation_degrees)
        rotation = (-angle, angle)
        initial_patch_size = get_patch_size(self.configuration_manager.patch_size, rotation, rotation, rotation,
                                            (0.85, 1.25))
        self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    # ------------------------------------------------------------------ training
    def on_train_start(self):
        super().on_train_start()
        self._load_case_table()
        counts = np.bincount([self._class_of_case[k] for k in self._train_keys], minlength=self.num_cls_classes)
        weights = class_weights_from_counts(counts)
        self.print_to_log_file("classification: classes " + ", ".join(
            f"{n} (n={c}, weight={w:.3f})" for n, c, w in zip(self.class_names, counts, weights)))
        self.cls_loss = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=self.device))

    def class_targets(self, keys) -> torch.Tensor:
        return torch.tensor([self._class_of_case[k] for k in keys], dtype=torch.long, device=self.device)

    def compute_task_losses(self, output: dict, target, keys) -> dict[str, torch.Tensor]:
        """The per-task losses of one batch; subclasses add theirs (clinical guidance ...)."""
        return {
            "seg": self.loss(output["seg"], target),
            "cls": self.cls_loss(output["logits"].float(), self.class_targets(keys)),
        }

    def combine_losses(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.seg_loss_weight * losses["seg"] + self.cls_loss_weight * losses["cls"]

    def _to_device(self, batch):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        return data, target

    def _autocast(self):
        # nnU-Net's rule: autocast on CUDA only (slow or unsupported elsewhere)
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def train_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data, return_aux=True)
            losses = self.compute_task_losses(output, target, batch["keys"])
            total = self.combine_losses(losses)
        self.backward_and_step(total)
        return {"loss": total.detach().cpu().numpy(),
                **{f"{k}_loss": v.detach().float().cpu().numpy() for k, v in losses.items()}}

    def backward_and_step(self, total: torch.Tensor) -> None:
        (self.grad_scaler.scale(total) if self.grad_scaler is not None else total).backward()
        self.optimizer_step()

    def optimizer_step(self) -> None:
        """nnU-Net's step on gradients already in .grad (scaled when AMP is on): unscale, clip at 12, step."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        self.logger.log("train_seg_losses", float(np.mean(outputs["seg_loss"])), self.current_epoch)
        self.logger.log("train_cls_losses", float(np.mean(outputs["cls_loss"])), self.current_epoch)
        self.log_extra_train_losses(outputs)

    def log_extra_train_losses(self, outputs: dict) -> None:
        """Subclasses log their extra per-epoch training values here."""

    def extra_validation_outputs(self, output: dict, keys) -> dict:
        """Subclasses add per-batch validation values (collated and handed to log_extra_validation)."""
        return {}

    def log_extra_validation(self, outputs: dict) -> None:
        """Subclasses log their extra per-epoch validation values here."""

    # ------------------------------------------------------------------ validation (online, on random patches)
    def validation_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        with self._autocast():
            output = self.network(data, return_aux=True)
            seg_loss = self.loss(output["seg"], target)
            cls_target = self.class_targets(batch["keys"])
            cls_loss = self.cls_loss(output["logits"].float(), cls_target)
        seg = output["seg"][0] if self.enable_deep_supervision else output["seg"]
        seg_target = target[0] if self.enable_deep_supervision else target
        # pseudo Dice as in nnU-Net: hard prediction vs target on the validation patches
        predicted = torch.zeros(seg.shape, device=seg.device, dtype=torch.float16)
        predicted.scatter_(1, seg.argmax(1)[:, None], 1)
        axes = [0] + list(range(2, seg.ndim))
        tp, fp, fn, _ = get_tp_fp_fn_tn(predicted, seg_target, axes=axes, mask=None)
        probs = torch.softmax(output["logits"].float(), 1).detach().cpu().numpy()
        return {**self.extra_validation_outputs(output, batch["keys"]),
                "loss": seg_loss.detach().cpu().numpy(),
                "tp_hard": tp.detach().cpu().numpy()[1:], "fp_hard": fp.detach().cpu().numpy()[1:],
                "fn_hard": fn.detach().cpu().numpy()[1:],
                "cls_loss": cls_loss.detach().cpu().numpy(),
                "cls_probs": list(probs), "cls_target": cls_target.cpu().tolist()}

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)  # segmentation: pseudo Dice, val loss
        outputs = collate_outputs(val_outputs)
        probs = np.stack(outputs["cls_probs"])
        y = np.asarray(outputs["cls_target"])
        scores = classification_scores(y, probs, self.num_cls_classes)
        self.logger.log("val_cls_losses", float(np.mean(outputs["cls_loss"])), self.current_epoch)
        self.logger.log("val_macro_f1", scores["macro_f1"], self.current_epoch)
        self.logger.log("val_auc", scores["auc"], self.current_epoch)
        self.logger.log("val_balanced_accuracy", scores["balanced_accuracy"], self.current_epoch)
        self.log_extra_validation(outputs)
        cls_score = scores["auc"] if np.isfinite(scores["auc"]) else scores["balanced_accuracy"]
        dice = self.logger.get_value("mean_fg_dice", step=-1)
        score = self.selection_seg_weight * dice + (1 - self.selection_seg_weight) * cls_score
        self.logger.log("mtl_score", float(score), self.current_epoch)
        previous = self.logger.get_value("ema_mtl_score", step=None)
        ema = 0.9 * previous[-1] + 0.1 * score if len(previous) else score  # same smoothing as nnU-Net's EMA Dice
        self.logger.log("ema_mtl_score", float(ema), self.current_epoch)

    def on_epoch_end(self):
        # Same bookkeeping as nnU-Net's on_epoch_end, but the best checkpoint is chosen by the multitask score.
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        self.print_to_log_file("train_loss", np.round(get("train_losses"), 4),
                               "(seg", np.round(get("train_seg_losses"), 4), "cls", np.round(get("train_cls_losses"), 4), ")")
        self.print_to_log_file("val_loss (seg)", np.round(get("val_losses"), 4),
                               "val_loss (cls)", np.round(get("val_cls_losses"), 4))
        self.print_to_log_file("Pseudo dice", [np.round(i, 4) for i in get("dice_per_class_or_region")])
        self.print_to_log_file(f"val AUC {get('val_auc'):.4f}  macro F1 {get('val_macro_f1'):.4f}  "
                               f"balanced acc {get('val_balanced_accuracy'):.4f}")
        extras = [f"{k} {get(k):.4f}" for k in self.extra_logging_keys()]
        if extras:
            self.print_to_log_file("  ".join(extras))
        self.print_to_log_file(f"Epoch time: {np.round(get('epoch_end_timestamps') - get('epoch_start_timestamps'), 2)} s")

        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(str(Path(self.output_folder) / "checkpoint_latest.pth"))
        ema = get("ema_mtl_score")
        if self._best_ema is None or ema > self._best_ema:
            self._best_ema = ema
            self.print_to_log_file(f"New best multitask score (EMA of 0.5 Dice + 0.5 AUC): {np.round(ema, 4)}")
            self.save_checkpoint(str(Path(self.output_folder) / "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1


    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's validation (segmentations of the fold's validation cases in ``validation/``), then the class
        probabilities of the same cases in ``validation/class_predictions.csv``, so a cross-validation can be
        evaluated for both tasks with ``nnunet_mtl evaluate``."""
        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0:
            self.write_validation_class_predictions()

    def write_validation_class_predictions(self) -> Path:
        from nnunet_mtl.inference.predictor import MultitaskPredictor
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        # the same predictor as `nnunet_mtl predict` (sliding window, test-time mirroring), on preprocessed data
        predictor = MultitaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                       perform_everything_on_device=True, device=self.device, verbose=False,
                                       verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        _, val_keys = self.do_split()
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        for key in val_keys:
            data, _, _, _ = dataset_val.load_case(key)
            predictor.predict_preprocessed_case(key, torch.from_numpy(np.asarray(data)))
        out = Path(self.output_folder) / "validation" / "class_predictions.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        predictor.write_class_predictions(out)
        self.set_deep_supervision_enabled(True)
        self.print_to_log_file(f"validation class probabilities: {out}")
        return out


class nnUNetTrainerMTL_nnUNetDA(nnUNetTrainerMTL):
    """nnU-Net's default 2D augmentation (rotations up to 180 degrees, flips along both axes, also at test time)."""
    ultrasound_augmentation = False


class Schedule:
    """Mixin for schedule variants: ``schedule`` holds trainer attributes set after nnU-Net's __init__ (nnU-Net
    passes no arguments to trainers, so a schedule is a class). Put it before the trainer class."""
    schedule: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in self.schedule.items():
            setattr(self, name, value)


class DemoSchedule(Schedule):
    """CPU-friendly short schedule used by ``nnunet_mtl demo`` on the synthetic phantom (16 x 25 iterations:
    about 6 minutes on 2 CPU cores for nnUNetTrainerMTL; the phantom's val AUC passes 0.95 within 3 epochs, Dice 0.9
    within 4)."""
    schedule = {"num_epochs": 16, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 5, "save_every": 8}


class TinySchedule(Schedule):
    """Smoke-test schedule (tests, CI): 2 epochs of 3 iterations."""
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 2}


class nnUNetTrainerMTL_demo(DemoSchedule, nnUNetTrainerMTL):
    pass


class nnUNetTrainerMTL_tiny(TinySchedule, nnUNetTrainerMTL):
    pass
