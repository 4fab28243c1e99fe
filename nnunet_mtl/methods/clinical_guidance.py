"""Clinical guidance (Salama et al. 2026, Sec. 2.1-2.2, Eq. 1-3): a TI-RADS-aligned radiomics target distilled into
part of the classification head's embedding.

- Eq. 1: the head at the bottleneck gives an embedding h and logits = W h + b (the bottleneck MLP head of
  :mod:`nnunet_mtl.methods.multitask`).
- Eq. 2: h = [h_tirads, h_deep]; h_tirads is the leading slice with one entry per guided feature (13 by default,
  :data:`nnunet_mtl.radiomics.features.DEFAULT_FEATURES`), h_deep the other K - 13 (K = 128). The classifier reads
  both.
- Eq. 3: L_clin = || h_tirads - r ||_2^2, with r the case's radiomics targets (computed from the image and its
  mask by :mod:`nnunet_mtl.radiomics`, cached beside the preprocessed data) standardized with the mean and std of
  the training fold's lesion cases.

Choices where the paper is silent (docs/clinical_guidance_rlar.md): squared L2 per sample summed over the features,
averaged over the samples that have a lesion; images without a lesion have no targets and are left out; a batch
without any lesion gives an exact zero that stays connected to the graph. Total (Eq. 7 without RLAR):
w_seg L_seg + w_cls L_cls + w_clin L_clin, w_clin = 0.1 (about 13 summed squared z-scores against a CE of about 1
at the start).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.radiomics.features import DEFAULT_FEATURES, check_feature_names
from nnunet_mtl.seams.terms import Batch, LossTerm, Setup


def clinical_guidance_loss(h_tirads: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 3. h_tirads, targets: (B, F); valid: (B,) bool (the sample has a lesion and finite targets)."""
    h = h_tirads.float()
    if not bool(valid.any()):
        return (h * 0).sum()
    per_sample = ((h[valid] - targets[valid].float()) ** 2).sum(1)  # squared L2 norm per sample
    return per_sample.mean()


class ClinicalGuidance(LossTerm):
    """L_clin (Eq. 3) on the leading ``len(features)`` entries of the embedding (Eq. 2)."""

    name = "clin"

    def __init__(self, features=DEFAULT_FEATURES):
        self.features = tuple(features)

    def validate(self) -> None:
        self.features = check_feature_names(self.features)

    def head_params(self) -> dict:
        return {"guided_dim": len(self.features)}  # h_tirads has one entry per guided feature (Eq. 2)

    def plans_entries(self) -> dict:
        # which entry of h_tirads is which feature (for ablate-guidance and the reader of plans.json)
        return {"guidance_features": list(self.features)}

    def setup(self, setup: Setup) -> None:
        """The targets of every training case, standardized with the training fold's lesion cases (Sec. 2.2).

        The cache beside the preprocessed data is brought up to date first when the raw dataset is reachable (only
        new or changed cases are computed); without nnUNet_raw the cache must exist."""
        from nnunet_mtl.radiomics.cache import CACHE_NAME, compute_dataset_radiomics, load_targets, standardization
        cache = Path(setup.preprocessed_folder) / CACHE_NAME
        if setup.raw_folder is not None:
            table, computed = compute_dataset_radiomics(setup.raw_folder, cache, self.features,
                                                        num_processes=setup.num_processes,
                                                        progress=setup.main_process)
            setup.log(f"radiomics targets: {len(table)} cases ({int(table['has_lesion'].sum())} with a lesion), "
                      f"{computed} computed now; cache {cache}")
        targets = load_targets(cache, self.features)
        missing = [k for k in setup.cases.keys() if k not in targets]
        if missing:
            raise NnunetMtlError(f"{cache} has no targets for {len(missing)} training case(s) (e.g. {missing[0]}); "
                                 f"recompute with: nnunet_mtl radiomics -d {setup.dataset_name}")
        mean, std = standardization(targets, setup.train_keys)
        setup.cases.add("radiomics", {k: ((targets[k] - mean) / std).astype(np.float32) for k in setup.cases.keys()})
        setup.log("radiomics standardization (training fold, lesion cases): " + ", ".join(
            f"{n} {m:.4g}+-{s:.4g}" for n, m, s in zip(self.features, mean, std)))

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        values = batch.case("radiomics")             # (B, F), NaN where the case has no lesion
        valid = torch.isfinite(values).all(1)
        values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
        h_tirads = outputs["embedding"][:, :len(self.features)]  # Eq. 2: h = [h_tirads, h_deep]
        return clinical_guidance_loss(h_tirads, values, valid)   # Eq. 3
