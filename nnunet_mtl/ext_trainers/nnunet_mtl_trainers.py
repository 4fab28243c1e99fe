# Thin re-export for nnU-Net's trainer lookup (nnUNet_extTrainer points at this folder).
# nnU-Net imports the modules of this folder as top-level names and drops them from sys.modules afterwards, so
# the real classes live in the installed package (importable, picklable) and are only re-exported here.
from nnunet_mtl.trainers import *  # noqa: F401,F403
from nnunet_mtl.trainers import __all__  # noqa: F401
