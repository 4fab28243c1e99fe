"""Recipes: a paper's protocol (or your own) from one TOML file, run end to end by ``nnunet_mtl recipe``.

- :mod:`~nnunet_mtl.recipes.schema`: the file format and its checks;
- :mod:`~nnunet_mtl.recipes.plan`: the grid of steps, each one of our or nnU-Net's commands, and when a step is done;
- :mod:`~nnunet_mtl.recipes.launch`: running the steps (one after the other through submitit's local executor, or
  submitted to SLURM with dependencies);
- :mod:`~nnunet_mtl.recipes.report`: our numbers beside the paper's, from the files the commands wrote.

The shipped recipes are the ``*.toml`` files of this folder (``nnunet_mtl recipe list``).
"""
