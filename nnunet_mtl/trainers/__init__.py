"""Our nnU-Net trainers. nnU-Net finds them by class name through nnUNet_extTrainer (see nnunet_mtl/ext_trainers)."""
from nnunet_mtl.trainers.mtl import (nnUNetTrainerMTL, nnUNetTrainerMTL_demo, nnUNetTrainerMTL_nnUNetDA,
                                     nnUNetTrainerMTL_tiny)

__all__ = ["nnUNetTrainerMTL", "nnUNetTrainerMTL_nnUNetDA", "nnUNetTrainerMTL_demo", "nnUNetTrainerMTL_tiny"]
