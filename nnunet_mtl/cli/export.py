"""``nnunet_mtl export``: one fold of a trained multitask model as an ONNX graph (mask logits + class logits of one
patch) and a JSON beside it with what a deployer needs (:mod:`nnunet_mtl.inference.onnx_export`, docs/export.md).

The model is chosen like ``nnunet_mtl predict`` chooses it (``-d -c -tr -p``, ``-f``, ``-chk``) or by its folder
(``-m``). Everything that can be checked without loading the network (the model folder, the checkpoint, where the
files go) is checked first; the graph is checked against PyTorch before either file is written.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

# = nnunet_mtl.inference.onnx_export's defaults, repeated so that the help imports no torch; a test checks they match
DEFAULT_TOLERANCE = 1e-3
DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")


def register(subparsers):
    p = subparsers.add_parser(
        "export", help="one fold of a trained model as an ONNX graph (mask + class logits of a patch), checked "
                       "against PyTorch, with a JSON of its preprocessing",
        description="Writes OUTPUT (an ONNX graph: input 'image' (batch, channels, *patch size) in nnU-Net's "
                    "normalised space, outputs 'mask_logits' at full resolution and 'class_logits'; batch dimension "
                    "dynamic) and OUTPUT.json (input and outputs, class names in order, the preprocessing nnU-Net "
                    "applies for this configuration with its parameters, what the predictor does that the graph "
                    "does not: sliding window, mirroring, fold averaging). Before writing, onnxruntime runs the "
                    "graph on preprocessed images of the dataset (or --check-images) and random patches, and every "
                    "output must match PyTorch's within --tolerance. See docs/export.md.")
    p.add_argument("-d", help="dataset id or name, e.g. 500 (with -c, -tr, -p: the model folder in nnUNet_results)")
    p.add_argument("-c", help="configuration, e.g. 2d")
    p.add_argument("-tr", default="nnUNetTrainerMTL", help="trainer class used for training (default "
                                                           "nnUNetTrainerMTL)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-m", help="the model folder itself (TRAINER__PLANS__CONFIGURATION, with plans.json and fold_K/), "
                              "instead of -d and -c")
    p.add_argument("-f", default="0", help="the fold whose weights are exported: a number or 'all' (default 0); one "
                                           "graph holds one fold")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    p.add_argument("-o", required=True, help="the ONNX file to write, e.g. model.onnx (OUTPUT.json is written "
                                             "beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT and OUTPUT.json when they exist")
    p.add_argument("--check-images", dest="check_images",
                   help="a folder of images in nnU-Net's naming (CASE_0000.png) to check the graph on (the first 3); "
                        "default: the dataset's imagesTs, else imagesTr, in nnUNet_raw when it is there")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest absolute difference of any output logit between onnxruntime and PyTorch (default "
                        f"{DEFAULT_TOLERANCE:g}); above it nothing is written")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torch.onnx's legacy TorchScript exporter (default; fast, needs only onnx) or the "
                        "torch.export-based one (needs onnxscript; opset 18 at least)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.set_defaults(func=run, default_trainer="nnUNetTrainerMTL")


def model_folder_of(args) -> Path:
    """The model folder: -m, or nnUNet_results/DatasetNNN_X/TRAINER__PLANS__CONFIGURATION of -d -tr -p -c, resolved
    and checked as nnunet_mtl predict does (one rule for both commands)."""
    from nnunet_mtl.inference.models import resolve_model_arguments
    return resolve_model_arguments(args)


def parse_fold(value: str) -> int | str:
    """-f's value as nnU-Net names fold folders: a fold number, or 'all'."""
    from nnunet_mtl.inference.models import parse_folds
    values = str(value).split()
    if len(values) != 1:
        raise NnunetMtlError(f"-f {value!r}: expected one fold (one graph holds one fold's weights)")
    return parse_folds(values)[0]


def check_outputs(output: Path, overwrite: bool, inputs: list) -> Path:
    """The graph's path and its JSON's may be written (an existing file only with --overwrite), and neither is
    one of the inputs. Returns the JSON's path."""
    from nnunet_mtl.outputs import check_not_an_input, check_output_file
    json_path = output.with_name(output.name + ".json")  # = onnx_export.json_path_for (no torch import here)
    for path, what in ((output, "ONNX file"), (json_path, "its JSON")):
        check_output_file(path, what, overwrite=overwrite)
        check_not_an_input(path, inputs, what)
    return json_path


def run(args) -> int:
    model_folder = model_folder_of(args)
    fold = parse_fold(args.f)
    output = Path(args.o)
    if not args.tolerance > 0:
        raise NnunetMtlError(f"--tolerance {args.tolerance}: expected a positive number, e.g. {DEFAULT_TOLERANCE:g}")
    if args.opset < 13:
        raise NnunetMtlError(f"--opset {args.opset}: expected 13 or higher (the network needs Resize and "
                             f"InstanceNormalization as they are there), e.g. {DEFAULT_OPSET}")
    # where the files go first: no torch import for a refusal there (the model's checks import it)
    json_path = check_outputs(output, args.overwrite,
                              [model_folder / f"fold_{fold}" / args.chk, model_folder, args.check_images])
    if args.check_images is not None and not Path(args.check_images).is_dir():
        raise NnunetMtlError(f"--check-images {args.check_images} is not a folder; expected a folder of images in "
                             f"nnU-Net's naming (CASE_0000.png)")
    from nnunet_mtl.inference.onnx_export import check_model_folder, export_onnx
    check_model_folder(model_folder, fold, args.chk)
    result = export_onnx(model_folder, output, fold, args.chk, check_images=args.check_images,
                         tolerance=args.tolerance, exporter=args.exporter, opset=args.opset)
    check = result.info["check"]
    print(f"checked with onnxruntime {check['onnxruntime']} on {check['patches']} patches "
          f"(as one batch and the first alone):")
    for name in check["inputs"]:
        print(f"  {name}")
    for name, value in result.max_abs_difference.items():
        print(f"  max |onnxruntime - PyTorch| of {name}: {value:.3g} (tolerance {check['tolerance']:g})")
    print(f"  class argmax agrees on {check['class_argmax_agrees']} of {check['patches']} patches")
    if check.get("note"):
        print(f"note: {check['note']}")
    size = output.stat().st_size / 2 ** 20
    print(f"wrote {output} ({size:.1f} MiB) and {json_path} (classes: {', '.join(result.info['class_names'])})")
    return 0
