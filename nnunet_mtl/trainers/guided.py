"""Clinically guided multitask training and RLAR (thyroid paper, Sec. 2.1-2.4, Eq. 1-7).

``nnUNetTrainerClinGuided`` (Eq. 1-3): the head's embedding h (K = 128) is split into h_tirads (the first 13
entries) and h_deep (the other K - 13); logits = W h + b reads both. h_tirads regresses the case's standardized
radiomics targets r:  total = w_seg L_seg + w_cls L_cls + w_clin ||h_tirads - r||^2.

``nnUNetTrainerRLAR`` (Eq. 4-7) adds lambda_adv * P, P = mean over samples of the mean over task pairs of
|cos(dL_t/dz, dL_t'/dz)| for t in {seg, cls, clin} at the shared representation z (the bottleneck by default).

nnU-Net passes no arguments to trainers, so every setting is a class attribute and every variant a subclass named
after what it changes (``nnUNetTrainerRLAR_mid``, ``nnUNetTrainerRLAR_adv1`` ...); the README lists them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_mtl.autodiff import use_fast_instance_norm
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.losses.guidance import clinical_guidance_loss
from nnunet_mtl.networks.multitask_unet import PLANS_KEY
from nnunet_mtl.radiomics.features import DEFAULT_FEATURES, check_feature_names
from nnunet_mtl.trainers.mtl import DemoSchedule, Schedule, TinySchedule, fail, nnUNetTrainerMTL
from nnunet_mtl.trainers.rlar_step import rlar_backward, written_out_seg_gradient

# where to regularize (Tables 3-4): names -> encoder stage indices, for an encoder of n stages (n-1 = bottleneck)
RLAR_LAYERS = {
    "bottleneck": lambda n: [n - 1],          # z~ of Sec. 2.3, the default
    "last": lambda n: [n - 2],                # the last encoder stage before the bottleneck
    "mid": lambda n: [(n - 1) // 2],          # the middle stage of the encoder
    "last3": lambda n: [n - 3, n - 2, n - 1],  # mean of the penalties at the last three stages
}


class nnUNetTrainerClinGuided(nnUNetTrainerMTL):
    # the guided features (Sec. 2.2); h_tirads has one entry per feature. A subclass may choose others
    # (names in nnunet_mtl.radiomics.features.ALL_FEATURES); the cache is recomputed for a new list.
    guidance_features: tuple[str, ...] = DEFAULT_FEATURES
    head_embed_dim = 128  # K (Eq. 2)
    clin_loss_weight: float = 0.1  # w_clin (Eq. 7): ~13 summed squared z-scores vs a CE of ~1 at the start

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        try:
            self.guidance_features = check_feature_names(self.guidance_features)
        except NnunetMtlError as e:
            fail(f"{self.__class__.__name__}.guidance_features: {e}")
        super().__init__(plans, configuration, fold, dataset_json, device)
        # which entry of h_tirads is which feature (for ablate-guidance and the reader of plans.json)
        self.plans_manager.plans[PLANS_KEY]["guidance_features"] = list(self.guidance_features)
        self._targets: dict[str, np.ndarray] | None = None

    def extra_logging_keys(self) -> tuple[str, ...]:
        return ("train_clin_losses", "val_clin_losses")

    @classmethod
    def head_config(cls, num_classes: int):
        # h_tirads has one entry per guided feature (Eq. 2); stored in the plans, the predictor needs the shape
        return replace(super().head_config(num_classes), guided_dim=len(cls.guidance_features))

    # ------------------------------------------------------------------ radiomics targets
    def load_radiomics_targets(self) -> None:
        """Targets of every training case, standardized with the training fold's lesion cases (Sec. 2.2).

        The cache beside the preprocessed data is brought up to date first when the raw dataset is reachable
        (only new or changed cases are computed); without nnUNet_raw the cache must exist."""
        from nnunet_mtl.radiomics.cache import CACHE_NAME, compute_dataset_radiomics, load_targets, standardization
        cache = Path(self.preprocessed_dataset_folder_base) / CACHE_NAME
        raw = self._raw_dataset_folder()
        try:
            if raw is not None:
                from nnunetv2.configuration import default_num_processes
                table, computed = compute_dataset_radiomics(raw, cache, self.guidance_features,
                                                            num_processes=min(default_num_processes, 8),
                                                            progress=self.local_rank == 0)
                self.print_to_log_file(f"radiomics targets: {len(table)} cases ({int(table['has_lesion'].sum())} "
                                       f"with a lesion), {computed} computed now; cache {cache}")
            targets = load_targets(cache, self.guidance_features)
            missing = [k for k in self._class_of_case if k not in targets]
            if missing:
                raise NnunetMtlError(f"{cache} has no targets for {len(missing)} training case(s) (e.g. "
                                     f"{missing[0]}); recompute with: nnunet_mtl radiomics -d "
                                     f"{self.plans_manager.dataset_name}")
            mean, std = standardization(targets, self._train_keys)
        except NnunetMtlError as e:
            fail(str(e))
        self._targets = {k: (v - mean) / std for k, v in targets.items()}
        self.print_to_log_file("radiomics standardization (training fold, lesion cases): " + ", ".join(
            f"{n} {m:.4g}+-{s:.4g}" for n, m, s in zip(self.guidance_features, mean, std)))

    def radiomics_batch(self, keys) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F) standardized targets (0 where undefined) and (B,) validity: the case has a lesion."""
        values = np.stack([self._targets[k] for k in keys])
        valid = np.isfinite(values).all(1)
        values = np.where(np.isfinite(values), values, 0.0)
        return (torch.as_tensor(values, dtype=torch.float32, device=self.device),
                torch.as_tensor(valid, device=self.device))

    def on_train_start(self):
        super().on_train_start()
        self.load_radiomics_targets()

    # ------------------------------------------------------------------ losses
    def clin_loss(self, output: dict, keys) -> torch.Tensor:
        targets, valid = self.radiomics_batch(keys)
        h_tirads = output["embedding"][:, :len(self.guidance_features)]  # Eq. 2: h = [h_tirads, h_deep]
        return clinical_guidance_loss(h_tirads, targets, valid)  # Eq. 3

    def compute_task_losses(self, output: dict, target, keys) -> dict[str, torch.Tensor]:
        losses = super().compute_task_losses(output, target, keys)
        losses["clin"] = self.clin_loss(output, keys)
        return losses

    def task_weights(self) -> dict[str, float]:
        return {"seg": self.seg_loss_weight, "cls": self.cls_loss_weight, "clin": self.clin_loss_weight}

    def combine_losses(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        # Eq. 7 without the RLAR term
        return sum(w * losses[t] for t, w in self.task_weights().items())

    def log_extra_train_losses(self, outputs: dict) -> None:
        self.logger.log("train_clin_losses", float(np.mean(outputs["clin_loss"])), self.current_epoch)

    def extra_validation_outputs(self, output: dict, keys) -> dict:
        return {"clin_loss": self.clin_loss(output, keys).detach().float().cpu().numpy()}

    def log_extra_validation(self, outputs: dict) -> None:
        self.logger.log("val_clin_losses", float(np.mean(outputs["clin_loss"])), self.current_epoch)


class nnUNetTrainerRLAR(nnUNetTrainerClinGuided):
    adv_weight: float = 0.1        # lambda_adv (Eq. 6): P lies in [0, 1]
    rlar_layer: str = "bottleneck"  # one of RLAR_LAYERS
    # write out the segmentation gradient at z and instance norm's double backward (nnunet_mtl.autodiff) where the
    # network allows; False: plain autograd (same values, slower; nnUNetTrainerRLAR_autograd, for checking)
    rlar_fast_gradient: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.rlar_layer not in RLAR_LAYERS:
            fail(f"{self.__class__.__name__}.rlar_layer is {self.rlar_layer!r}; expected one of {list(RLAR_LAYERS)}")
        super().__init__(plans, configuration, fold, dataset_json, device)

    def extra_logging_keys(self) -> tuple[str, ...]:
        return (*super().extra_logging_keys(), "train_rlar_penalty")

    def _do_i_compile(self):
        # torch.compile cannot differentiate twice; the penalty needs create_graph=True
        return False

    def initialize(self):
        super().initialize()
        self._slow_reason = "multi-GPU (DDP)" if self.is_ddp else "rlar_fast_gradient is False"
        if self.rlar_fast_gradient and not self.is_ddp:  # DDP training is refused in on_train_start
            self._slow_reason = written_out_seg_gradient(self.network)  # None: written out
            # instance norm's closed-form double backward (same parameters, state_dict and values) where autograd
            # differentiates twice: the encoder stages above the lowest z, and the decoder when it is not written
            # out. Nowhere else, so that the step's other parts stay exactly nnUNetTrainerMTL's.
            for stage in self.network.encoder.stages[min(self.rlar_stages()) + 1:]:
                use_fast_instance_norm(stage)
            if not self._fast_seg_gradient:
                use_fast_instance_norm(self.network.decoder)

    @property
    def _fast_seg_gradient(self) -> bool:
        return self._slow_reason is None

    def rlar_stages(self) -> list[int]:
        n = self.network.num_stages
        stages = RLAR_LAYERS[self.rlar_layer](n)
        if min(stages) < 0:
            fail(f"{self.rlar_layer!r} needs at least 3 encoder stages; this plan's network has {n}")
        return stages

    def on_train_start(self):
        if self.is_ddp:
            fail(f"{self.__class__.__name__} does not support multi-GPU (DDP) training: its double backward runs on "
                 f"the unwrapped network; train on one GPU")
        tasks = [t for t, w in self.task_weights().items() if w > 0]
        if len(tasks) < 2:
            fail(f"{self.__class__.__name__}: RLAR compares the gradients of at least two tasks, but only "
                 f"{tasks or 'none'} has a positive loss weight; expected two of seg_loss_weight, cls_loss_weight, "
                 f"clin_loss_weight > 0")
        super().on_train_start()
        stages = self.rlar_stages()
        self.print_to_log_file(f"RLAR: lambda_adv {self.adv_weight}, layer {self.rlar_layer} = encoder stage(s) "
                               f"{stages} of 0..{self.network.num_stages - 1}; tasks "
                               f"{[t for t, w in self.task_weights().items() if w > 0]}; segmentation gradient at z: "
                               + ("written out (nnunet_mtl.autodiff)" if self._fast_seg_gradient else
                                  f"autograd ({self._slow_reason})"))

    def train_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        keys = batch["keys"]
        self.optimizer.zero_grad(set_to_none=True)
        losses, penalty = rlar_backward(  # DDP is refused in on_train_start: self.network is the bare network
            self.network, data, lambda output: self.compute_task_losses(output, target, keys), self.task_weights(),
            self.rlar_stages(), self.adv_weight,
            scale=self.grad_scaler.scale if self.grad_scaler is not None else (lambda x: x),
            autocast=self._autocast, fast=self._fast_seg_gradient)
        self.optimizer_step()
        total = self.combine_losses(losses) + self.adv_weight * penalty  # Eq. 7
        return {"loss": total.cpu().numpy(), "rlar_penalty": penalty.float().cpu().numpy(),
                **{f"{k}_loss": v.float().cpu().numpy() for k, v in losses.items()}}

    def log_extra_train_losses(self, outputs: dict) -> None:
        super().log_extra_train_losses(outputs)
        self.logger.log("train_rlar_penalty", float(np.mean(outputs["rlar_penalty"])), self.current_epoch)


# ---------------------------------------------------------------------------------------------- variants
class nnUNetTrainerRLAR_last(nnUNetTrainerRLAR):
    """RLAR at the last encoder stage before the bottleneck (Tables 3-4)."""
    rlar_layer = "last"


class nnUNetTrainerRLAR_mid(nnUNetTrainerRLAR):
    """RLAR at the middle encoder stage (Tables 3-4; best on the external AIMI set in the paper)."""
    rlar_layer = "mid"


class nnUNetTrainerRLAR_last3(nnUNetTrainerRLAR):
    """RLAR averaged over the last three encoder stages (Tables 3-4)."""
    rlar_layer = "last3"


class nnUNetTrainerRLAR_autograd(nnUNetTrainerRLAR):
    """RLAR with every gradient from plain autograd (the straightforward implementation): the same values as
    nnUNetTrainerRLAR, slower; for checking and for benchmarks/bench_rlar_step.py."""
    rlar_fast_gradient = False


class nnUNetTrainerRLAR_adv0p01(nnUNetTrainerRLAR):
    adv_weight = 0.01


class nnUNetTrainerRLAR_adv1(nnUNetTrainerRLAR):
    adv_weight = 1.0


class nnUNetTrainerClinGuided_clin1(nnUNetTrainerClinGuided):
    clin_loss_weight = 1.0


class _PaperSchedule(Schedule):
    """Sec. 3 'Implementation Details': AdamW (lr 1e-4, default betas), batch size 8, 500 epochs of 250 training
    and 50 validation iterations, best checkpoint by validation (our multitask score). Weight decay and the poly
    learning-rate decay stay nnU-Net's (the paper does not say)."""
    schedule = {"initial_lr": 1e-4, "num_epochs": 500, "num_iterations_per_epoch": 250,
                "num_val_iterations_per_epoch": 50}

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if not self.is_ddp:
            self.batch_size = 8

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerRLAR_paper(_PaperSchedule, nnUNetTrainerRLAR):
    pass


class nnUNetTrainerClinGuided_paper(_PaperSchedule, nnUNetTrainerClinGuided):
    pass


class nnUNetTrainerMTL_paper(_PaperSchedule, nnUNetTrainerMTL):
    """The paper's 'Vanilla Multitask' baseline with the same schedule."""


class nnUNetTrainerRLAR_tiny(TinySchedule, nnUNetTrainerRLAR):
    pass


class nnUNetTrainerRLAR_demo(DemoSchedule, nnUNetTrainerRLAR):
    """The demo's schedule, for comparing with nnUNetTrainerMTL_demo on the phantom."""
