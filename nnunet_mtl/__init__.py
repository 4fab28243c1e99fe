"""nnunet_mtl: multitask nnU-Net v2 (lesion segmentation + lesion classification) for ultrasound."""

__version__ = "0.1.0"
