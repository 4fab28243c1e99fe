"""How well does a trained guided model's h_tirads reproduce the radiomics targets (thyroid paper Eq. 3)?

For one fold of a model trained with a guided trainer (nnUNetTrainerClinGuided / nnUNetTrainerRLAR and variants),
on the fold's training and validation lesion cases of the preprocessed dataset:
  - L_clin of h_tirads (evaluation mode) against the targets standardized with the training fold's statistics, as in
    training, next to the baseline of predicting the training mean (0 after standardization);
  - what a linear read-out of the same pooled bottleneck features can do: scikit-learn's RidgeCV fitted on the
    training cases, scored on the validation cases;
  - per feature, the validation R^2 of h_tirads and of that probe.
The network sees each preprocessed image whole (padded to a multiple of the encoder's total stride): meant for
data whose images are about the patch size, such as the demo's phantom. The README's "Observed on the phantom"
quotes its output for the RLAR demo (nnunet_mtl demo -tr nnUNetTrainerRLAR_demo):

    python studies/guidance_fit.py --workdir /tmp/demo_rlar -tr nnUNetTrainerRLAR_demo [-f 0] [-d 500]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="folder holding nnUNet_preprocessed and nnUNet_results")
    parser.add_argument("-tr", "--trainer", required=True)
    parser.add_argument("-d", "--dataset", default="500")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = parser.parse_args()
    work = Path(args.workdir)
    os.environ.setdefault("nnUNet_preprocessed", str(work / "nnUNet_preprocessed"))
    os.environ.setdefault("nnUNet_results", str(work / "nnUNet_results"))
    os.environ.setdefault("nnUNet_raw", str(work / "nnUNet_raw"))
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from sklearn.linear_model import RidgeCV

    import nnunet_mtl.trainers as trainers
    from nnunet_mtl.radiomics.cache import CACHE_NAME, load_targets, standardization

    pre = next((work / "nnUNet_preprocessed").glob(f"Dataset{int(args.dataset):03d}_*"))
    model = next((work / "nnUNet_results").glob(f"Dataset{int(args.dataset):03d}_*")) / \
        f"{args.trainer}__{args.plans}__{args.configuration}"
    plans = json.loads((model / "plans.json").read_text())
    features = plans["nnunet_mtl"]["guidance_features"]
    manager = PlansManager(plans)
    config = manager.get_configuration(args.configuration)
    network = getattr(trainers, args.trainer).build_network_architecture(
        manager, config, 1, manager.get_label_manager(json.loads((model / "dataset.json").read_text()))
        .num_segmentation_heads, enable_deep_supervision=False)
    checkpoint = torch.load(model / f"fold_{args.fold}" / args.checkpoint, map_location="cpu", weights_only=False)
    network.load_state_dict(checkpoint["network_weights"])
    network.eval()
    split = json.loads((pre / "splits_final.json").read_text())[args.fold]
    targets = load_targets(pre / CACHE_NAME, features)
    mean, std = standardization(targets, split["train"])  # as the trainer does: the training fold's lesion cases
    dataset = infer_dataset_class(str(pre / config.data_identifier))(str(pre / config.data_identifier))
    stride = np.prod(np.array(config.pool_op_kernel_sizes), axis=0)

    def read_out(keys):
        pooled, guided, wanted = [], [], []
        for key in keys:
            t = targets.get(key)
            if t is None or not np.isfinite(t).all():
                continue  # no lesion: not in L_clin
            data = torch.as_tensor(np.asarray(dataset.load_case(key)[0]), dtype=torch.float32)
            x = data[:, 0] if data.dim() == 4 and data.shape[1] == 1 else data  # 2d: (c, 1, y, x) -> (c, y, x)
            pad = [int((-s) % k) for s, k in zip(x.shape[1:], stride)]
            x = F.pad(x, [p for q in reversed(pad) for p in (0, q)])[None]
            with torch.no_grad():
                skips = network.encoder(x)
                flat = skips[-1].flatten(2)
                pooled.append(torch.cat([flat.mean(-1), flat.amax(-1)], 1)[0].numpy())
                guided.append(network.head(skips)["embedding"][0, :len(features)].numpy())
            wanted.append((t - mean) / std)
        return np.array(pooled), np.array(guided), np.array(wanted)

    (p_tr, h_tr, t_tr), (p_va, h_va, t_va) = read_out(split["train"]), read_out(split["val"])

    def l_clin(h, t):  # Eq. 3: squared L2 norm per case, mean over cases
        return float(((h - t) ** 2).sum(1).mean())

    def r2(h, t):
        return 1 - ((h - t) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)

    probe = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(p_tr, t_tr)
    print(f"{args.trainer} fold {args.fold}: {len(t_tr)} training and {len(t_va)} validation lesion cases")
    print(f"  L_clin        h_tirads   predict the mean   ridge probe on the pooled bottleneck")
    print(f"  training     {l_clin(h_tr, t_tr):9.2f}   {l_clin(0 * t_tr, t_tr):16.2f}   {l_clin(probe.predict(p_tr), t_tr):9.2f}")
    print(f"  validation   {l_clin(h_va, t_va):9.2f}   {l_clin(0 * t_va, t_va):16.2f}   {l_clin(probe.predict(p_va), t_va):9.2f}")
    print(f"  {'feature':18s} {'R2 h_tirads':>12s} {'R2 probe':>9s}   (validation)")
    for name, a, b in zip(features, r2(h_va, t_va), r2(probe.predict(p_va), t_va)):
        print(f"  {name:18s} {a:12.2f} {b:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
