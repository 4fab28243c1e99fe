"""``nnunet_mtl convert SOURCE ...``: write a raw dataset (nnU-Net layout + class labels + cases.csv).

The synthetic phantom is registered here; every other module named in
:data:`dataset_conversion.registry.CONVERTERS` adds its own sources with ``register_converters(sources)`` (so a new
converter is one new module and one registry line, no edit here). Converter modules import their heavy
dependencies (openpyxl, h5py, ...) inside their functions, so listing the commands stays fast.
"""
from __future__ import annotations

import argparse
import importlib

from dataset_conversion.registry import converter_modules
from nnunet_mtl.errors import NnunetMtlError


def register(subparsers):
    p = subparsers.add_parser(
        "convert", help="write a raw dataset (nnUNet_raw/DatasetNNN_Name) from a source dataset",
        description="Writes $nnUNet_raw/DatasetNNN_Name in nnU-Net's 2D PNG layout with dataset.json "
                    "(incl. class_labels) and cases.csv (case, split, class, patient, clinical columns).")
    sources = p.add_subparsers(dest="source", metavar="SOURCE")
    for name in converter_modules():  # this module (synthetic), then the dataset converters
        importlib.import_module(name).register_converters(sources)

    def _no_source(args):
        p.print_help()
        return 2

    p.set_defaults(func=_no_source)


def register_converters(sources) -> None:
    """The converters that live in this module (synthetic); other modules add their own."""
    s = sources.add_parser(
        "synthetic", help="synthetic breast-ultrasound phantom (benign / malignant / normal)",
        description="Generates a synthetic ultrasound phantom with the same writer as the real converters: "
                    "speckle, depth attenuation, oval wider-than-tall benign lesions, spiculated taller-than-wide "
                    "malignant lesions with shadowing, normal images; several images per patient; test split by "
                    "patient.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("-d", "--dataset-id", type=int, default=500, help="dataset id")
    s.add_argument("--name", default="SyntheticUS", help="dataset name (folder DatasetNNN_NAME)")
    s.add_argument("--num-patients", type=int, default=60, help="number of patients")
    s.add_argument("--images-per-patient", type=int, default=3, help="images per patient")
    s.add_argument("--size", type=int, nargs="+", default=[128], metavar="PX",
                   help="image size: one number (square) or HEIGHT WIDTH")
    s.add_argument("--normal-fraction", type=float, default=0.1, help="fraction of patients without a lesion")
    s.add_argument("--malignant-fraction", type=float, default=0.4, help="fraction of malignant patients")
    s.add_argument("--test-fraction", type=float, default=0.25, help="fraction of patients in imagesTs")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_synthetic)


def print_result(folder) -> None:
    """The summary table (classes x splits) and the folder: what every converter prints at the end."""
    from nnunet_mtl.dataset.contract import load_raw_dataset
    from nnunet_mtl.dataset.writer import format_summary, summarize_cases

    raw = load_raw_dataset(folder, check_files=False)
    print(format_summary(summarize_cases(zip(raw.cases["split"], raw.cases["class"]), raw.class_labels)))
    print(f"wrote {folder}")


def run_synthetic(args) -> int:
    from dataset_conversion.synthetic import convert_synthetic
    from nnunet_mtl.paths import raw_root

    if len(args.size) not in (1, 2):
        raise NnunetMtlError(f"--size {' '.join(map(str, args.size))}: expected one number or HEIGHT WIDTH")
    root = raw_root()  # the one-line error when nnUNet_raw is not set, before any work
    folder = convert_synthetic(
        args.dataset_id, args.name, num_patients=args.num_patients, images_per_patient=args.images_per_patient,
        size=args.size[0] if len(args.size) == 1 else tuple(args.size), normal_fraction=args.normal_fraction,
        malignant_fraction=args.malignant_fraction, test_fraction=args.test_fraction, seed=args.seed,
        raw_root=root, overwrite=args.overwrite, progress=not args.no_progress)
    print_result(folder)
    return 0
