"""The segmentation loss's gradient at the encoder's outputs, written as differentiable operations of nnU-Net's decoder.

Why (RLAR, thyroid paper Eq. 4-6): the penalty needs g = dL_seg/dz and is then differentiated itself, so g must be
computed with a graph. ``autograd.grad(L_seg, z, create_graph=True)`` does that, but
- the first convolution of every decoder stage reads cat(up, skip): autograd computes the data gradient for all its
  input channels and differentiates all of them again, although only the up half leads to z (the other half is
  31 % of the decoder's convolution work, counted by benchmarks/bench_rlar_step.py);
- instance norm's double backward is PyTorch's slow composite (see instance_norm.py);
- cat's gradient is recorded as slices, whose derivative fills a zero tensor of the full concatenation.
Here the decoder's forward pass is written out with the same operations (the first convolution as
conv(up, W_up) + conv(skip, W_skip), which is conv(cat(up, skip), W)) and records what the data gradient needs;
the data gradient is then built from each operation's adjoint (a convolution's is the transposed convolution,
instance norm's the closed form in instance_norm.py, (Leaky)ReLU's its mask), which PyTorch differentiates with
its ordinary kernels. The values are the decoder's own (tested against ``decoder(skips)`` and ``autograd.grad``).

Supported: nnU-Net's ``UNetDecoder`` with blocks conv -> instance norm -> LeakyReLU/ReLU and no dropout, which is
what nnU-Net plans for plain and residual-encoder U-Nets. :func:`unsupported` says why another decoder is not,
and the RLAR step then asks autograd (same result, slower).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mtl.autodiff.instance_norm import InstanceNormBackward, instance_norm_with_stats, \
    supports_fast_instance_norm

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class DecoderRecord:
    """What one conv block's data gradient needs from the forward pass."""
    block: nn.Module
    pre_norm: torch.Tensor        # the convolution's output, the instance norm's input
    mean: torch.Tensor            # (B, C) statistics of the instance norm
    invstd: torch.Tensor
    output: torch.Tensor          # after the non-linearity
    input_size: tuple             # spatial size of the convolution's input
    # the first block of a stage reads cat(up, skip): its weight split into the halves for up and for skip
    weight_halves: tuple[torch.Tensor, torch.Tensor] | None


def _plain_conv(conv: nn.Module) -> str | None:
    if not isinstance(conv, _CONV_TYPES):
        return f"{type(conv).__name__} is not a convolution"
    if conv.groups != 1 or any(d != 1 for d in conv.dilation) or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str):
        return "a grouped, dilated, string-padded or non-zero-padded convolution"
    return None


def unsupported(decoder: nn.Module) -> str | None:
    """None if :func:`decoder_forward` / :func:`decoder_input_gradients` handle this decoder, else why not."""
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, \
        StackedConvBlocks
    from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
    if type(decoder) is not UNetDecoder:
        return f"the decoder is {type(decoder).__name__}, not nnU-Net's UNetDecoder"
    for s, (stage, up) in enumerate(zip(decoder.stages, decoder.transpconvs)):
        if not isinstance(stage, StackedConvBlocks):
            return f"decoder stage {s} is {type(stage).__name__}, not StackedConvBlocks"
        if not isinstance(up, _CONV_T_TYPES) or tuple(up.kernel_size) != tuple(up.stride) or any(up.padding) \
                or any(up.output_padding) or up.groups != 1 or any(d != 1 for d in up.dilation):
            return f"decoder stage {s} does not upsample with a transposed convolution of kernel = stride"
        for block in stage.convs:
            if type(block) is not ConvDropoutNormReLU:
                return f"decoder stage {s} has a {type(block).__name__} block"
            ops = list(block.all_modules)
            norm, nonlin = getattr(block, "norm", None), getattr(block, "nonlin", None)
            if len(ops) != 3 or ops[0] is not block.conv or ops[1] is not norm or ops[2] is not nonlin:
                return f"decoder stage {s}: a block is not conv -> norm -> non-linearity (dropout or nonlin_first)"
            why = _plain_conv(block.conv)
            if why:
                return f"decoder stage {s}: {why}"
            if not supports_fast_instance_norm(norm):
                return f"decoder stage {s} normalizes with {type(norm).__name__}, not an affine instance norm"
            if not isinstance(nonlin, (nn.LeakyReLU, nn.ReLU)) or _slope(nonlin) < 0:
                return f"decoder stage {s} uses {type(nonlin).__name__}, not LeakyReLU (slope >= 0) or ReLU"
    for seg in decoder.seg_layers:
        if _plain_conv(seg) or any(k != 1 for k in seg.kernel_size) or any(st != 1 for st in seg.stride):
            return "a segmentation layer is not a 1x1 convolution"
    return None


def _slope(nonlin: nn.Module) -> float:
    return float(nonlin.negative_slope) if isinstance(nonlin, nn.LeakyReLU) else 0.0


def _block_forward(block: nn.Module, x: torch.Tensor, skip: torch.Tensor | None):
    conv = block.conv
    if skip is None:
        c = conv(x)
        halves = None
    else:
        # conv(cat(x, skip), W) = conv(x, W_up) + conv(skip, W_skip): the gradient to z only needs the first term.
        # torch.split, not slicing: its backward is one cat of the halves' gradients, where each slice's backward
        # would fill a zero tensor of the whole weight.
        halves = torch.split(conv.weight, [x.shape[1], skip.shape[1]], dim=1)
        conv_fn = _CONV[x.dim() - 2]
        c = conv_fn(x, halves[0], conv.bias, conv.stride, conv.padding)
        c = c.add_(conv_fn(skip, halves[1], None, conv.stride, conv.padding))
    y, mean, invstd = instance_norm_with_stats(c, block.norm)
    y = block.nonlin(y)
    return y, DecoderRecord(block, c, mean, invstd, y, tuple(x.shape[2:]), halves)


def decoder_forward(decoder: nn.Module, skips: Sequence[torch.Tensor]):
    """``decoder(skips)`` (same values and output format) plus, per stage, the records of its conv blocks."""
    lres = skips[-1]
    outputs, records = [], []
    for s, stage in enumerate(decoder.stages):
        x = decoder.transpconvs[s](lres)
        stage_records = []
        for i, block in enumerate(stage.convs):
            x, record = _block_forward(block, x, skips[-(s + 2)] if i == 0 else None)
            stage_records.append(record)
        records.append(stage_records)
        if decoder.deep_supervision or s == len(decoder.stages) - 1:
            outputs.append(decoder.seg_layers[s](x))
        lres = x
    outputs = outputs[::-1]  # highest resolution first, as nnU-Net's decoder returns them
    return (outputs if decoder.deep_supervision else outputs[0]), records


def _data_gradient(g: torch.Tensor, weight: torch.Tensor, conv: nn.Module, input_size: tuple) -> torch.Tensor:
    """The adjoint of conv(., weight) applied to g: the gradient at the convolution's input."""
    k, stride, pad = conv.kernel_size, conv.stride, conv.padding
    # output_padding recovers input sizes that a strided convolution maps to the same output size
    extra = [n - ((o - 1) * st - 2 * p + kk) for n, o, st, p, kk in zip(input_size, g.shape[2:], stride, pad, k)]
    return _CONV_T[g.dim() - 2](g, weight, None, stride, pad, extra)


def decoder_input_gradients(decoder: nn.Module, records, seeds: Sequence[torch.Tensor | None],
                            skip_levels: Sequence[int] = ()) -> dict[int, torch.Tensor | None]:
    """The gradient of sum_i <seeds[i], outputs[i]> at the decoder's inputs, differentiable (create_graph-like).

    seeds: the loss's gradients at the decoder's outputs, in their order (None where the loss does not reach one).
    Returns {level: gradient at skips[level]}: always the bottleneck (the last level), and the direct (skip
    connection) part at each level in ``skip_levels``; the part through the encoder stages above a level is the
    caller's. A level that no seed reaches gets None.
    """
    n_stages = len(decoder.stages)
    if decoder.deep_supervision:
        seed_of_stage = {n_stages - 1 - i: e for i, e in enumerate(seeds)}
    else:
        seed_of_stage = {n_stages - 1: seeds[0]}
    grads: dict[int, torch.Tensor | None] = {}
    g = None
    for s in reversed(range(n_stages)):
        e = seed_of_stage.get(s)
        if e is not None:
            seg = decoder.seg_layers[s]
            from_output = _CONV_T[e.dim() - 2](e, seg.weight)  # adjoint of the 1x1 segmentation layer
            g = from_output if g is None else g + from_output
        level = n_stages - 1 - s  # skips[level] enters this stage's first block
        if g is None:
            grads[level] = None
            continue
        for record in reversed(records[s]):
            block = record.block
            mask_source = record.output.detach()
            g = torch.ops.aten.leaky_relu_backward(g.to(mask_source.dtype), mask_source, _slope(block.nonlin), True)
            g = InstanceNormBackward.apply(g, record.pre_norm, block.norm.weight, record.mean, record.invstd,
                                           block.norm.eps)[0]
            if record.weight_halves is None:
                g = _data_gradient(g, block.conv.weight, block.conv, record.input_size)
            else:
                w_up, w_skip = record.weight_halves
                if level in skip_levels:
                    grads[level] = _data_gradient(g, w_skip, block.conv, record.input_size)
                g = _data_gradient(g, w_up, block.conv, record.input_size)
        up = decoder.transpconvs[s]
        g = _CONV[g.dim() - 2](g, up.weight, None, up.stride)  # adjoint of the transposed convolution
    grads[n_stages] = g
    return grads
