"""Our nnU-Net trainers. nnU-Net finds them by class name through nnUNet_extTrainer (see nnunet_mtl/ext_trainers)."""
from nnunet_mtl.trainers.guided import (nnUNetTrainerClinGuided, nnUNetTrainerClinGuided_clin1,
                                        nnUNetTrainerClinGuided_paper, nnUNetTrainerMTL_paper, nnUNetTrainerRLAR,
                                        nnUNetTrainerRLAR_adv0p01, nnUNetTrainerRLAR_adv1, nnUNetTrainerRLAR_autograd,
                                        nnUNetTrainerRLAR_demo,
                                        nnUNetTrainerRLAR_last, nnUNetTrainerRLAR_last3, nnUNetTrainerRLAR_mid,
                                        nnUNetTrainerRLAR_paper, nnUNetTrainerRLAR_tiny)
from nnunet_mtl.trainers.mtl import (nnUNetTrainerMTL, nnUNetTrainerMTL_demo, nnUNetTrainerMTL_nnUNetDA,
                                     nnUNetTrainerMTL_tiny)

__all__ = ["nnUNetTrainerMTL", "nnUNetTrainerMTL_nnUNetDA", "nnUNetTrainerMTL_demo", "nnUNetTrainerMTL_tiny",
           "nnUNetTrainerMTL_paper",
           "nnUNetTrainerClinGuided", "nnUNetTrainerClinGuided_clin1", "nnUNetTrainerClinGuided_paper",
           "nnUNetTrainerRLAR", "nnUNetTrainerRLAR_last", "nnUNetTrainerRLAR_mid", "nnUNetTrainerRLAR_last3",
           "nnUNetTrainerRLAR_adv0p01", "nnUNetTrainerRLAR_adv1", "nnUNetTrainerRLAR_paper", "nnUNetTrainerRLAR_demo",
           "nnUNetTrainerRLAR_tiny", "nnUNetTrainerRLAR_autograd"]
