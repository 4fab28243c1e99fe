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

Importing this package imports none of its modules: each registers its heads and loss modules when it is imported,
and the plans name the module of every head and loss module they use (:mod:`nnunet_mtl.seams.heads`), so rebuilding
a network imports just that module, and a module that fails to import breaks only what uses it. The trainers that
compose them: :mod:`nnunet_mtl.trainers`.
"""
