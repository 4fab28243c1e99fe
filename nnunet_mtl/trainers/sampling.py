"""Which training cases a batch is drawn from, by annotation (a stage's ``sampling``, :mod:`nnunet_mtl.seams.stages`).

Why: with 25 % of the masks kept, nnU-Net's uniform draw of 8 cases has no annotated case in 0.75^8 = 10 % of its
batches, and a method that learns the lesion from annotated cases and pseudo-labels the rest needs both in every
step (Fan et al., Algorithm 1: "sample minibatch of m labeled images ... similarly, sample minibatch of m'
unlabeled images"). The modes:

- ``random``: nnU-Net's own draw (uniform over the fold's training cases, with replacement);
- ``annotated``: uniform over the cases with a mask (``full`` or ``box`` in cases.csv), e.g. stage 1 of
  Algorithm 1, which pre-trains on the annotated sub-dataset only;
- ``mixed``: ``m = ceil(share * B)`` annotated cases (at least 1) and ``B - m`` unannotated ones (``mask`` ``none``),
  each drawn uniformly with replacement; ``share`` = 1/2 (Fan et al. name m and m' but not their ratio: an even
  split is our choice). Without unannotated cases in the fold the whole batch is annotated.

The unannotated cases come first in the batch: nnU-Net forces its last third of a batch onto lesion pixels
(``oversample_foreground_percent``), which only an annotated case can give.

Everything else is nnU-Net's loader (cropping, foreground oversampling, augmentation in worker processes): the
only override is :meth:`CompositionDataLoader.get_indices`. nnU-Net builds its loaders and starts their worker
processes in ``get_dataloaders``; :func:`set_batch_composition` turns the training loader into a
:class:`CompositionDataLoader` and, when its workers run, stops them so that the next batch is drawn by workers
that know the new mode (a stage change restarts them once; ``--c`` sets the mode of the stage it resumes in).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

ANNOTATED_SHARE = 0.5  # m / (m + m') in mode "mixed"


def batch_counts(batch_size: int, num_annotated: int, num_unannotated: int, mode: str,
                 share: float = ANNOTATED_SHARE) -> tuple[int, int]:
    """(annotated, unannotated) cases per batch in ``mode`` ("annotated" or "mixed")."""
    if num_annotated < 1:
        raise ValueError("no training case has a mask (full or box); expected at least one annotated case")
    if mode == "annotated" or num_unannotated == 0:
        return batch_size, 0
    if mode != "mixed":
        raise ValueError(f"batch composition {mode!r}; expected 'annotated' or 'mixed'")
    m = min(batch_size, max(1, math.ceil(share * batch_size)))  # an odd batch has one more annotated case
    return m, batch_size - m


def compose_batch(annotated: Sequence[str], unannotated: Sequence[str], batch_size: int, mode: str,
                  rng=np.random) -> list[str]:
    """The case keys of one batch: unannotated first, then annotated (see the module's docstring)."""
    m, m_prime = batch_counts(batch_size, len(annotated), len(unannotated), mode)
    keys = list(rng.choice(list(unannotated), m_prime, replace=True)) if m_prime else []
    return keys + list(rng.choice(list(annotated), m, replace=True))


class CompositionDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader drawing each batch's cases by :func:`compose_batch` (mode ``random``: nnU-Net's own)."""

    composition = "random"
    annotated: tuple[str, ...] = ()
    unannotated: tuple[str, ...] = ()

    def get_indices(self):
        if self.composition == "random":
            return super().get_indices()
        # np.random: nnU-Net's workers seed it per process, as for their own draw
        return compose_batch(self.annotated, self.unannotated, self.batch_size, self.composition)


def training_loader(augmenter) -> nnUNetDataLoader:
    """The data loader inside nnU-Net's training augmenter (multi-process or single-threaded)."""
    loader = getattr(augmenter, "generator", None) or getattr(augmenter, "data_loader", None)
    if not isinstance(loader, nnUNetDataLoader):
        raise TypeError(f"expected nnU-Net's data loader inside {type(augmenter).__name__}, found "
                        f"{type(loader).__name__}; batch composition by annotation needs nnUNetDataLoader")
    return loader


def set_batch_composition(augmenter, mode: str, annotated: Sequence[str], unannotated: Sequence[str]) -> bool:
    """Make the training augmenter's loader draw by ``mode``; True when its worker processes had to be stopped
    (they restart, with the new mode, at the next batch)."""
    if mode != "random":
        batch_counts(1, len(annotated), len(unannotated), mode)  # refuses a fold without annotated cases
    loader = training_loader(augmenter)
    if not isinstance(loader, CompositionDataLoader):
        loader.__class__ = CompositionDataLoader  # a subclass adding one method: nnU-Net's state is kept as is
    loader.composition = mode
    loader.annotated, loader.unannotated = tuple(annotated), tuple(unannotated)
    if getattr(augmenter, "initialized", False) and hasattr(augmenter, "_finish"):
        augmenter._finish()  # workers hold a copy of the loader made when they started
        return True
    return False
