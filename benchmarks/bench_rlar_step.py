"""Time one training step of nnUNetTrainerRLAR against nnUNetTrainerMTL on the same batch.

Four trainers' own ``train_step`` on the same real nnU-Net plan (a phantom planned with
nnUNetv2_plan_and_preprocess), same weights, same batch:
  - nnUNetTrainerMTL: forward, seg + cls loss, backward, step (the multitask baseline)
  - nnUNetTrainerClinGuided: + the clinical guidance loss (no penalty)
  - nnUNetTrainerRLAR_autograd: + every task's gradient at z from autograd (create_graph) and the penalty's double
    backward: the straightforward implementation ("before")
  - nnUNetTrainerRLAR: the same values, with the segmentation gradient at z and instance norm's double backward
    written out (nnunet_mtl.autodiff) ("after")
Steps are interleaved so drift of the machine hits all alike; ratios of the medians are printed. Before timing,
both RLAR variants take one step on the same weights and batch (without the optimizer step), and the largest
difference of their parameter gradients is printed; the convolution work is counted to print the step's floor.
Target: nnUNetTrainerRLAR / nnUNetTrainerMTL <= 1.5.

    python benchmarks/bench_rlar_step.py [--device cpu|cuda] [--steps 10] [--size 128] [--layer bottleneck[,mid,...]]
                                         [--mtl-fast-norm]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import interleaved_medians, make_batch, plan_phantom, prepare, step_arguments  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=10, warmup=2)
    parser.add_argument("--layer", default="bottleneck",
                        help="bottleneck | last | mid | last3, or several separated by commas (one process: each "
                             "layer's block follows a '--- layer NAME' line)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--mtl-fast-norm", action="store_true",
                        help="also time nnUNetTrainerMTL with RLAR's instance norm (what that alone changes)")
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    from dataclasses import replace

    from nnunet_mtl.autodiff import use_fast_instance_norm
    from nnunet_mtl.trainers import (nnUNetTrainerClinGuided, nnUNetTrainerMTL, nnUNetTrainerRLAR,
                                     nnUNetTrainerRLAR_autograd)

    layers = [layer.strip() for layer in args.layer.split(",")]

    def at_layer(cls, layer):
        return type(cls.__name__, (cls,), {"backward": replace(cls.backward, layer=layer)})

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)

        def build(cls, fast_norm=False):
            t = cls({**json.loads(json.dumps(plans)), "continue_training": False}, "2d", 0, dataset_json, device)
            t.initialize()
            if fast_norm:
                use_fast_instance_norm(t.network)
            return t

        # the layer-independent trainers once; per layer the two RLAR trainers (one process for every layer)
        shared = {"nnUNetTrainerMTL": build(nnUNetTrainerMTL),
                  "nnUNetTrainerClinGuided": build(nnUNetTrainerClinGuided)}
        if args.mtl_fast_norm:
            shared["MTL + fast instance norm"] = build(nnUNetTrainerMTL, fast_norm=True)
        first = shared["nnUNetTrainerMTL"]
        batch_size = first.configuration_manager.batch_size
        batch = make_batch(first, batch_size, torch.Generator().manual_seed(0))
        for layer in layers:
            if len(layers) > 1:
                print(f"--- layer {layer}")
            trainers = {**shared, "nnUNetTrainerRLAR_autograd": build(at_layer(nnUNetTrainerRLAR_autograd, layer)),
                        "nnUNetTrainerRLAR": build(at_layer(nnUNetTrainerRLAR, layer))}
            report(trainers, batch, layer, args, device)
            for name in ("nnUNetTrainerRLAR_autograd", "nnUNetTrainerRLAR"):
                del trainers[name]
    return 0


def report(trainers: dict, batch: dict, layer: str, args, device) -> None:
    """The same weights and batch for every trainer, the RLAR paths' gradient difference, the interleaved medians,
    and the lines this benchmark prints for one RLAR layer."""
    from nnunet_mtl.trainers import nnUNetTrainerRLAR
    first = trainers["nnUNetTrainerMTL"]
    batch_size = first.configuration_manager.batch_size
    rng = np.random.default_rng(0)
    reference_state = trainers["nnUNetTrainerRLAR"].network.state_dict()
    guided = nnUNetTrainerRLAR.head_config(2).guided_dim
    targets = {k: rng.standard_normal(guided).astype(np.float32) for k in batch["keys"]}
    for name, t in trainers.items():
        t.network.load_state_dict(reference_state)  # same shapes: guided_dim only names part of h
        prepare(t, batch, targets)
        t.network.train()
    difference = gradient_difference(trainers["nnUNetTrainerRLAR_autograd"], trainers["nnUNetTrainerRLAR"], batch)

    med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)
    rlar = trainers["nnUNetTrainerRLAR"]
    rule = rlar.backward_rule
    stages, fast = rule.encoder_stages, rule.written_out
    work = convolution_work(rlar.network, batch["data"][:1].to(device), min(stages))

    patch = "x".join(map(str, first.configuration_manager.patch_size))
    from nnunet_mtl.precision import describe
    amp = describe(device).removeprefix("precision: ")
    print(f"device {device} ({amp}, {torch.get_num_threads()} threads), batch {batch_size} x {patch}, RLAR at "
          f"{layer} (stage {stages}), lambda_adv {rule.adv_weight}, {args.steps} interleaved steps each "
          f"(median); segmentation gradient "
          f"{'written out' if fast else 'from autograd: ' + str(rule.autograd_reason)}:")
    for name, value in med.items():
        print(f"  {name:27s} {value * 1000:8.1f} ms/step   {value / med['nnUNetTrainerMTL']:.3f}x MTL")
    before = med["nnUNetTrainerRLAR_autograd"] / med["nnUNetTrainerMTL"]
    ratio = med["nnUNetTrainerRLAR"] / med["nnUNetTrainerMTL"]
    print(f"same gradients: largest |difference| / largest |gradient| over all parameters = {difference:.2e}")
    e, d, u = work["encoder"], work["decoder"], work["path"]
    print(f"convolution work per image (GMAC): encoder {e:.3f}, decoder {d:.3f}; on the path from z to the outputs "
          f"{u:.3f}. An MTL step does 3 x (encoder + decoder) (forward, data and weight gradients); an exact RLAR step "
          f"adds 3 x path (the data gradient to z, and its derivative: tangent and weight gradients), so in "
          f"convolution work alone its floor is 1 + path / (encoder + decoder) = {1 + u / (e + d):.3f}x")
    print(f"ratio nnUNetTrainerRLAR / nnUNetTrainerMTL = {ratio:.3f} (before: nnUNetTrainerRLAR_autograd {before:.3f}; "
          f"target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")


def convolution_work(network, image, lowest_z: int) -> dict[str, float]:
    """Multiply-accumulates (GMAC) of the convolutions of one forward pass, counted with forward hooks: encoder,
    decoder, and those on the path from the outputs back to the lowest z (the decoder without the skip halves of
    the stages below z's level, plus the encoder stages above z)."""
    from torch import nn
    encoder, decoder = network.encoder, network.decoder
    n_levels = len(encoder.output_channels)
    work = {"encoder": 0.0, "decoder": 0.0, "path": 0.0}
    first_convs = {stage.convs[0].conv: n_levels - 2 - s for s, stage in enumerate(decoder.stages)}  # -> level
    stage_of = {m: k for k, stage in enumerate(encoder.stages) for m in stage.modules()}

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            macs = x.numel() * module.out_channels * np.prod(module.kernel_size)
        else:
            macs = output.numel() * module.in_channels // module.groups * np.prod(module.kernel_size)
        macs /= 1e9
        if module in stage_of:
            work["encoder"] += macs
            work["path"] += macs if stage_of[module] > lowest_z else 0.0
        else:
            work["decoder"] += macs
            level = first_convs.get(module)
            # a first block reads cat(up, skip): the skip half is on the path only at or above z's level
            work["path"] += macs if level is None or level >= lowest_z else macs / 2
    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            network(image)
    finally:
        for h in handles:
            h.remove()
    return work


def gradient_difference(a, b, batch) -> float:
    """Both trainers' train_step on the same weights and batch, without the optimizer step: the largest absolute
    difference of their parameter gradients, relative to the largest gradient entry."""
    grads = []
    for t in (a, b):
        t.optimizer_step = lambda: None  # keep the gradients, leave the weights
        torch.manual_seed(0)  # the same dropout masks in the head
        try:
            t.train_step(batch)
        finally:
            del t.optimizer_step
        # None: a parameter the loss does not reach (the deep-supervision output nnU-Net weights 0)
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                      for p in t.network.parameters()])
    diff = max((x - y).abs().max().item() for x, y in zip(*grads))
    return diff / max(x.abs().max().item() for x in grads[0])


if __name__ == "__main__":
    sys.exit(main())
