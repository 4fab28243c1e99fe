"""``nnunet_mtl pretrained``: make a plain nnU-Net checkpoint usable as ``nnUNetv2_train -pretrained_weights``.

The thyroid paper starts multitask training from a pretrained nnU-Net. Our networks keep nnU-Net's encoder and
decoder keys, but nnU-Net's ``load_pretrained_weights`` asserts that *every* key of the new network is in the
checkpoint, so the classification head's keys are missing from a plain nnU-Net checkpoint. This command copies the
checkpoint and adds a freshly initialized head of exactly the kind and shape the chosen trainer will build (classes
from the dataset, the rest from the trainer's head and terms, loss modules included); nnU-Net then loads encoder and
decoder from the pretrained network and the head starts from scratch, as it would without pretraining.
"""
from __future__ import annotations

import re
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError



def register(subparsers):
    p = subparsers.add_parser(
        "pretrained", help="add our classification head to a plain nnU-Net checkpoint (for -pretrained_weights)",
        description="Writes a copy of an nnU-Net checkpoint with a freshly initialized classification head shaped "
                    "for TRAINER on DATASET, so that 'nnUNetv2_train DATASET 2d FOLD -tr TRAINER -pretrained_weights "
                    "OUT' starts from the pretrained encoder and decoder.")
    p.add_argument("-i", required=True, help="nnU-Net checkpoint (e.g. .../nnUNetTrainer__nnUNetPlans__2d/fold_0/"
                                             "checkpoint_final.pth)")
    p.add_argument("-o", required=True, help="output checkpoint")
    p.add_argument("-d", required=True, help="dataset id or name the multitask model will be trained on")
    p.add_argument("-tr", default="nnUNetTrainerRLAR",
                   help="our trainer that will be trained (default nnUNetTrainerRLAR)")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's initialization (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def head_config_for(trainer_name: str, class_labels: dict):
    """The head config the trainer will write into the plans. Ours by name; any other through nnU-Net's own lookup
    (the folders of nnUNet_extTrainer), so that a user's trainer is found as nnUNetv2_train finds it."""
    from nnunet_mtl.trainers import TRAINERS, nnUNetTrainerMTL
    cls = TRAINERS.get(trainer_name)
    if cls is None:
        import os

        from nnunet_mtl.paths import env_with_ext_trainer
        os.environ.update(env_with_ext_trainer())
        import contextlib
        import io
        chatter = io.StringIO()  # nnU-Net prints where it looked; the one line below says it for the user
        try:
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
            with contextlib.redirect_stdout(chatter):
                cls = recursive_find_trainer_class_by_name(trainer_name)
        except RuntimeError:
            cls = None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, nnUNetTrainerMTL)):
        raise NnunetMtlError(f"trainer {trainer_name!r} is not an nnunet_mtl trainer; expected one of "
                             f"{', '.join(sorted(TRAINERS))} or a subclass of nnUNetTrainerMTL in a folder of "
                             f"nnUNet_extTrainer")
    return cls.head_config(len(class_labels))


def encoder_channels(weights: dict, source) -> list[int]:
    """Output channels of every encoder stage: the first dimension of each stage's last convolution weight."""
    stage_of = {}
    for key in weights:
        m = re.match(r"encoder\.stages\.(\d+)\.", key)
        if m and key.endswith(".weight") and weights[key].ndim >= 3:
            stage_of[key] = int(m.group(1))
    if not stage_of:
        raise NnunetMtlError(f"{source} has no encoder.stages.* weights; expected a checkpoint of nnU-Net's U-Net "
                             f"(nnUNetv2_train)")
    stages = sorted(set(stage_of.values()))
    if stages != list(range(len(stages))):
        raise NnunetMtlError(f"{source} has encoder stages {stages}; expected 0..{len(stages) - 1}")
    last_conv = {s: [k for k, t in stage_of.items() if t == s][-1] for s in stages}
    return [int(weights[last_conv[s]].shape[0]) for s in stages]


def add_head_to_checkpoint(checkpoint_path: Path, out_path: Path, head_config, seed: int = 0) -> int:
    """Copy the checkpoint with a fresh classification head added; returns the number of tensors added."""
    import torch

    from nnunet_mtl.atomic import atomic_open
    from nnunet_mtl.networks.multitask_unet import HEAD_PREFIX
    from nnunet_mtl.seams.heads import build_head
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise NnunetMtlError(f"{checkpoint_path} cannot be read as a checkpoint ({type(e).__name__}); expected an "
                             f"nnU-Net checkpoint_*.pth")
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise NnunetMtlError(f"{checkpoint_path} has no 'network_weights'; expected a checkpoint written by "
                             f"nnUNetv2_train")
    if any(k.startswith(HEAD_PREFIX) for k in weights):
        raise NnunetMtlError(f"{checkpoint_path} already has a classification head (an nnunet_mtl checkpoint); pass "
                             f"it to -pretrained_weights directly")
    torch.manual_seed(seed)
    head = build_head(head_config, encoder_channels(weights, checkpoint_path))
    added = {HEAD_PREFIX + k: v for k, v in head.state_dict().items()}
    checkpoint["network_weights"] = {**weights, **added}
    with atomic_open(out_path, "wb") as f:
        torch.save(checkpoint, f)
    return len(added)


def run(args) -> int:
    from nnunet_mtl.dataset.contract import read_class_labels, read_json_object
    from nnunet_mtl.paths import find_dataset_folder, preprocessed_root, raw_root
    from nnunet_mtl.seams.heads import IMPORT_PATH
    source, out = Path(args.i), Path(args.o)
    if not source.is_file():
        raise NnunetMtlError(f"checkpoint {source} does not exist")
    from nnunet_mtl.outputs import check_not_an_input, check_output_file
    check_not_an_input(out, [source], "-o")
    if out.exists() and not out.is_dir() and not args.overwrite:
        raise NnunetMtlError(f"{out} exists; pass --overwrite to replace it")
    check_output_file(out, "-o")
    try:
        dataset_json_path = find_dataset_folder(args.d, preprocessed_root()) / "dataset.json"
    except NnunetMtlError:
        dataset_json_path = find_dataset_folder(args.d, raw_root()) / "dataset.json"
    class_labels = read_class_labels(read_json_object(dataset_json_path), source=str(dataset_json_path))
    config = head_config_for(args.tr, class_labels)
    added = add_head_to_checkpoint(source, out, config, args.seed)
    shape = ", ".join(f"{k} {v}" for k, v in config.to_dict().items()
                      if k not in ("kind", IMPORT_PATH, "loss_modules"))
    print(f"added a fresh {config.kind} head ({added} tensors: {shape}) for {args.tr} to a copy of {source}")
    print(f"wrote {out}\nnow: nnUNetv2_train {args.d} 2d FOLD -tr {args.tr} -pretrained_weights {out}")
    return 0
