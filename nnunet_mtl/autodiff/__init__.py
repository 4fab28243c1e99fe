"""Hand-written derivatives that make RLAR's double backward cheap: instance norm's double backward in closed form,
and the segmentation loss's gradient at the encoder, written as differentiable operations of nnU-Net's decoder."""
from nnunet_mtl.autodiff.decoder_gradient import DecoderRecord, decoder_forward, decoder_input_gradients, unsupported
from nnunet_mtl.autodiff.instance_norm import instance_norm_with_stats, use_fast_instance_norm

__all__ = ["DecoderRecord", "decoder_forward", "decoder_input_gradients", "instance_norm_with_stats", "unsupported",
           "use_fast_instance_norm"]
