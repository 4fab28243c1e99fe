"""The flags of ``nnunet_mtl predict`` that choose a model, its inputs and how to run it (nnUNetv2_predict's), shared
by the commands that predict (``predict``, ``ablate-guidance``)."""
from __future__ import annotations

import os


def _default(env: str, default: int) -> int:
    value = os.environ.get(env)
    return int(value) if value else default


def add_per_fold_argument(p, what: str) -> None:
    p.add_argument("--per-fold", dest="per_fold", action="store_true",
                   help=f"with -f K1 K2 ... (two folds or more): {what} of each fold's model alone in OUTPUT/fold_K/ "
                        f"and of the fold ensemble in OUTPUT/ensemble/ (what -f K1 K2 ... writes without the flag), "
                        f"plus OUTPUT/per_fold.json; for mean ± std over folds (see docs/evaluation.md)")


def add_model_arguments(p, default_trainer: str = "nnUNetTrainerMTL") -> None:
    """nnUNetv2_predict's flags that choose the model, the inputs and how to run it (shared with
    ablate-guidance)."""
    p.add_argument("-i", required=True, help="input folder of images named CASE_0000.png (as nnUNetv2_predict)")
    p.add_argument("-o", required=True, help="output folder (created if missing)")
    p.add_argument("-d", help="dataset id or name, e.g. 500 or Dataset500_SyntheticUS (or -m)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", default=default_trainer, help=f"trainer class used for training (default {default_trainer})")
    p.add_argument("-c", help="configuration, e.g. 2d (or -m)")
    p.set_defaults(default_trainer=default_trainer)
    p.add_argument("-m", default=None,
                   help="the trained model folder itself, TRAINER__PLANS__CONFIGURATION with fold_K/ inside (as "
                        "nnUNetv2_predict_from_modelfolder; it may lie outside nnUNet_results, e.g. unpacked from "
                        "nnUNetv2_export_model_to_zip); instead of -d, -tr, -p and -c")
    p.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds to ensemble (default 0 1 2 3 4)")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    p.add_argument("-npp", type=int, default=_default("nnUNet_npp", 3),
                   help="preprocessing processes (default 3 as nnUNetv2_predict, or $nnUNet_npp; 0: in this process)")
    p.add_argument("-nps", type=int, default=_default("nnUNet_nps", 3),
                   help="segmentation export processes (default 3 as nnUNetv2_predict, or $nnUNet_nps; 0: in this "
                        "process)")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    p.add_argument("--disable_progress_bar", action="store_true")
    p.add_argument("--not_on_device", action="store_true")
    p.add_argument("--cpu-amp", dest="cpu_amp", choices=["auto", "bf16", "off"], default=None,
                   help="with -device cpu: bfloat16 autocast (auto: where the CPU computes bfloat16 natively; off: "
                        "float32, masks bit-identical to nnUNetv2_predict). Default: the environment's "
                        "nnUNet_mtl_cpu_amp, else auto (docs/benchmarks.md)")
