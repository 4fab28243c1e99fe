"""One module per method, each with its equations cited by number and paper; none of them imports nnU-Net.

- :mod:`~nnunet_mtl.methods.multitask`: vanilla multitask learning (the bottleneck MLP head, nnU-Net's segmentation
  loss, class-balanced cross-entropy);
- :mod:`~nnunet_mtl.methods.clinical_guidance`: clinical guidance (Salama et al. 2026, Eq. 1-3);
- :mod:`~nnunet_mtl.methods.rlar`: RLAR (Salama et al. 2026, Eq. 4-7);
- :mod:`~nnunet_mtl.methods.birads_consistency`: BI-RADS consistency (Zhang, Moradi, Saha, Eq. 1-2);
- :mod:`~nnunet_mtl.methods.lesion_aware`: lesion-aware attention and pseudo-labels (Fan et al., Eq. 1-6; its
  Algorithm 1 is the trainer's two stages);
- the baselines: :mod:`~nnunet_mtl.methods.gradient_aggregation` (TorchJD's PCGrad, UPGrad, MGDA, CAGrad),
  :mod:`~nnunet_mtl.methods.uncertainty_weighting` (Kendall et al. 2018), :mod:`~nnunet_mtl.methods.single_task`
  (the head kind ``none``).

Importing this package imports every module in it, so that the heads and loss modules they register are known
wherever a network is rebuilt from its plans. The trainers that compose them: :mod:`nnunet_mtl.trainers`.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
