"""What did the BI-RADS prior learn (Zhang, Moradi, Saha, Eq. 1)? Its weights, and how well phi alone separates the
test split's malignant from benign lesions.

For a model trained with nnUNetTrainerBIRADS (or a variant) this predicts the test images with ``nnunet_mtl predict
--save_probabilities`` (nnU-Net's soft masks at the images' own size), computes the soft-mask features of every
test image as training does (nnunet_mtl.methods.birads_consistency: the lesion probability, the image z-scored as
nnU-Net normalizes it) and phi with the trained prior (its u and running statistics from the checkpoint), then
reports softmax(u), the correlation of phi with the malignancy label, the ROC AUC of phi alone and of the
classifier's P(malignant) on the same cases (benign and malignant test cases; normal images left out).

    python studies/birads_prior.py --workdir /tmp/demo_birads -tr nnUNetTrainerBIRADS_demo [-d 500] [--fold 0]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the demo folder (nnUNet_raw / _preprocessed / _results in it)")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerBIRADS_demo")
    parser.add_argument("-d", "--dataset", default="500")
    parser.add_argument("--fold", default="0")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = str(work / var)
    from sklearn.metrics import roc_auc_score

    from nnunet_mtl.cli.main import main as nnunet_mtl
    from nnunet_mtl.dataset.contract import load_raw_dataset
    from nnunet_mtl.methods.birads_consistency import BIRADSPrior, birads_features
    from nnunet_mtl.paths import find_dataset_folder

    raw = load_raw_dataset(find_dataset_folder(args.dataset, work / "nnUNet_raw"))
    model = find_dataset_folder(args.dataset, work / "nnUNet_results") / f"{args.trainer}__nnUNetPlans__2d"
    out = work / "prior_study" / args.trainer
    if nnunet_mtl(["predict", "-i", str(raw.folder / "imagesTs"), "-o", str(out), "-d", args.dataset, "-c", "2d",
                   "-tr", args.trainer, "-f", args.fold, "-chk", args.checkpoint, "-device", "cpu",
                   "--save_probabilities", "--disable_progress_bar", "-npp", "1", "-nps", "1"]) != 0:
        return 1
    weights = torch.load(model / f"fold_{args.fold}" / args.checkpoint, map_location="cpu",
                         weights_only=False)["network_weights"]
    prefix = "cls_head.loss_modules.birads_prior."
    prior = BIRADSPrior()
    prior.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    prior.eval()
    with open(out / "class_predictions.csv") as f:
        p_malignant = {r["case_id"]: float(r["prob_malignant"]) for r in csv.DictReader(f)}
    test = raw.cases_in_split("test")
    rows = []
    for case, cls in zip(test["case_id"], test["class"]):
        if cls not in ("benign", "malignant"):
            continue
        soft = np.load(out / f"{case}.npz")["probabilities"][1]  # (1, H, W): nnU-Net's 2D images have a z of 1
        soft = soft.reshape(soft.shape[-2:])
        grey = np.asarray(Image.open(raw.folder / "imagesTs" / f"{case}_0000.png"), dtype=np.float32)
        grey = (grey - grey.mean()) / max(grey.std(), 1e-8)  # nnU-Net's ZScoreNormalization of the input
        with torch.no_grad():
            features = birads_features(torch.as_tensor(soft)[None].float(), torch.as_tensor(grey)[None])
            phi = prior(features).item()
        rows.append({"case_id": case, "malignant": int(cls == "malignant"), "phi": phi, "p": p_malignant[case],
                     **{k: float(v) for k, v in features.items()}})
    y = np.array([r["malignant"] for r in rows])
    phi = np.array([r["phi"] for r in rows])
    p = np.array([r["p"] for r in rows])
    result = {
        "trainer": args.trainer, "checkpoint": args.checkpoint, "cases": len(rows), "malignant": int(y.sum()),
        "softmax_u": dict(zip(["A", "R", "1-C", "T"], [round(w, 4) for w in prior.weights.tolist()])),
        "running_min_R_T": prior.running_min.tolist(), "running_max_R_T": prior.running_max.tolist(),
        "corr_phi_label": float(np.corrcoef(phi, y)[0, 1]), "auc_phi": float(roc_auc_score(y, phi)),
        "auc_classifier": float(roc_auc_score(y, p)), "corr_phi_classifier": float(np.corrcoef(phi, p)[0, 1]),
        "mean_phi": {"benign": float(phi[y == 0].mean()), "malignant": float(phi[y == 1].mean())},
    }
    (out / "prior_study.json").write_text(json.dumps({**result, "cases_detail": rows}, indent=2))
    print(f"{args.trainer} ({args.checkpoint}), {len(rows)} benign / malignant test cases ({int(y.sum())} malignant)")
    print(f"  softmax(u) for (A, R, 1 - C, T): {result['softmax_u']}   (started at 0.15, 0.35, 0.25, 0.25)")
    print(f"  phi: mean benign {result['mean_phi']['benign']:.3f}, malignant {result['mean_phi']['malignant']:.3f}; "
          f"correlation with the label {result['corr_phi_label']:.3f}")
    print(f"  ROC AUC of phi alone {result['auc_phi']:.3f}; of the classifier's P(malignant) "
          f"{result['auc_classifier']:.3f}; correlation phi ~ P(malignant) {result['corr_phi_classifier']:.3f}")
    print(f"wrote {out / 'prior_study.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
