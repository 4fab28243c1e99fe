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

Choices where Salama et al. 2026 are silent (docs/clinical_guidance_rlar.md): squared L2 per sample summed over the
features, averaged over the samples that have targets; images without a lesion have no targets and are left out; a batch
without any target gives an exact zero that stays connected to the graph. Total (Eq. 7 without RLAR):
w_seg L_seg + w_cls L_cls + w_clin L_clin, w_clin = 0.1 (about 13 summed squared z-scores against a CE of about 1
at the start).

Partially annotated cases (cases.csv ``mask`` ``none`` or ``box``): Eq. 3's target r(x, Omega) needs the lesion's
outline Omega, which they do not have, so they have no target either: never computed
(:mod:`nnunet_mtl.radiomics.cache`), left out of L_clin and of the standardization statistics, counted in the
training log. Their class still trains L_cls and their annotated pixels L_seg.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.radiomics.features import DEFAULT_FEATURES, check_feature_names
from nnunet_mtl.seams.terms import EMBEDDING, Batch, LossTerm, Setup


def clinical_guidance_loss(h_tirads: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 3, averaged over the samples that have targets. h_tirads, targets: (B, F); valid: (B,) bool (the sample
    has finite targets: a fully annotated lesion). No valid sample: an exact 0 that stays connected to the graph, so
    RLAR's gradient at z exists (and is 0)."""
    h = h_tirads.float()
    if not bool(valid.any()):
        return (h * 0).sum()
    per_sample = ((h[valid] - targets[valid].float()) ** 2).sum(1)  # squared L2 norm per sample
    return per_sample.mean()


class ClinicalGuidance(LossTerm):
    """L_clin (Eq. 3) on the leading ``len(features)`` entries of the embedding (Eq. 2)."""

    name = "clin"
    acts_on = (EMBEDDING,)  # h_tirads, the leading entries of the embedding (Eq. 2)
    partial_masks = True  # a case without a full mask has no target and is left out of L_clin (setup)

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
        """The targets of every training case, standardized with the training fold's fully annotated lesion cases
        (Sec. 2.2).

        The cache beside the preprocessed data is brought up to date first when the raw dataset is reachable (only
        new or changed cases are computed); without nnUNet_raw the cache must exist. A case whose mask is a box or
        missing gets NaN targets here whatever the cache holds (a cache written before partial masks were known may
        hold the radiomics of its ignore label map), so every path leaves it out."""
        from nnunet_mtl.dataset.contract import MASK_KINDS
        from nnunet_mtl.radiomics.cache import (CACHE_NAME, compute_dataset_radiomics, describe_targets, load_targets,
                                                standardization)
        cache = Path(setup.preprocessed_folder) / CACHE_NAME
        if setup.raw_folder is not None:
            table, computed = compute_dataset_radiomics(setup.raw_folder, cache, self.features,
                                                        num_processes=setup.num_processes,
                                                        progress=setup.main_process)
            setup.log(f"radiomics targets: {describe_targets(table)}, {computed} computed now; cache {cache}")
        targets = load_targets(cache, self.features)
        kinds = setup.cases.column("mask")
        full = MASK_KINDS.index("full")
        partial = {k for k in setup.cases.keys() if kinds[k] != full}
        missing = [k for k in setup.cases.keys() if k not in targets and k not in partial]
        if missing:
            raise NnunetMtlError(f"{cache} has no targets for {len(missing)} training case(s) (e.g. {missing[0]}); "
                                 f"recompute with: nnunet_mtl radiomics -d {setup.dataset_name}")
        nan = np.full(len(self.features), np.nan)
        targets = {k: nan if k in partial else targets[k] for k in setup.cases.keys()}
        mean, std = standardization(targets, setup.train_keys)
        setup.cases.add("radiomics", {k: ((targets[k] - mean) / std).astype(np.float32) for k in setup.cases.keys()})
        with_targets = sum(bool(np.isfinite(targets[k]).all()) for k in setup.train_keys)
        partial_here = sum(k in partial for k in setup.train_keys)
        setup.log(f"clinical guidance: {with_targets} of {len(setup.train_keys)} training cases of this fold have "
                  f"radiomics targets"
                  + (f"; {partial_here} partially annotated (mask box or none) have none and are left out of L_clin "
                     f"and of the standardization" if partial_here else ""))
        setup.log("radiomics standardization (training fold, fully annotated lesion cases): " + ", ".join(
            f"{n} {m:.4g}+-{s:.4g}" for n, m, s in zip(self.features, mean, std)))

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        values = batch.case("radiomics")             # (B, F), NaN where the case has no target
        valid = torch.isfinite(values).all(1)
        values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
        h_tirads = outputs["embedding"][:, :len(self.features)]  # Eq. 2: h = [h_tirads, h_deep]
        return clinical_guidance_loss(h_tirads, values, valid)   # Eq. 3
