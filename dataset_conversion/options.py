"""The options every converter has: ``nnunet_mtl convert NAME SOURCE -d ... --as ... --normal ... -j ...``
(:func:`add_common_arguments`) and what they become (:class:`ConvertOptions`, :func:`options_from_args`); what
each option does to the dataset is documented with the policies in :mod:`dataset_conversion.driver`.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

from nnunet_mtl.dataset.contract import NORMAL_CLASS  # the class of --normal include (one definition)
from nnunet_mtl.errors import NnunetMtlError

NORMAL_CHOICES = ("exclude", "include")
DUPLICATE_CHOICES = ("drop", "keep")
LABEL_CONFLICT_CHOICES = ("keep", "drop")
MIN_RESIZE, MAX_RESIZE = 32, 4096
SPLIT_CHOICES = ("train", "test", "official")


def default_num_processes() -> int:
    """2 worker processes, fewer on a 1-core machine: PNG encoding dominates and scales with cores, and 2 is what
    the benchmarks target; use -j for more."""
    return max(1, min(2, os.cpu_count() or 1))


def add_common_arguments(parser: argparse.ArgumentParser, default_id: int, default_name: str, *,
                         default_split: str = "train") -> None:
    """Add the options every converter has. ``default_split`` is what ``--as`` defaults to (``--add-to-existing``
    defaults to test): "train" or "test" (every case there), or "official" for a dataset with a published
    train/test split, which then also offers ``--as official``."""
    if default_split not in SPLIT_CHOICES:
        raise ValueError(f"default_split {default_split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help="dataset id (DatasetNNN_...; default %(default)s)")
    parser.add_argument("--name", default=default_name,
                        help="dataset name (folder DatasetNNN_NAME; default %(default)s)")
    official = default_split == "official"
    parser.add_argument(
        "--as", dest="split", choices=SPLIT_CHOICES if official else SPLIT_CHOICES[:2], default=None,
        help="write every case as training set (imagesTr/labelsTr) or as external test set (imagesTs/labelsTs)"
             + ("; 'official' keeps the publisher's train/test split" if official else "")
             + f". Default: {default_split}" + ("" if default_split == "test" else ", or test with --add-to-existing"))
    parser.add_argument("--add-to-existing", action="store_true",
                        help="add the cases to the existing dataset with this id (e.g. as its external test set); "
                             "its classes must match")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")
    parser.add_argument("--normal", choices=NORMAL_CHOICES, default="exclude",
                        help="images without a lesion: exclude them (default; a normal image has no lesion to "
                             "classify) or include them as an extra class 'normal' with an empty mask")
    parser.add_argument("--resize", type=int, default=None, metavar="SIZE",
                        help="resize every image (bilinear) and mask (nearest) to SIZE x SIZE pixels, e.g. 256 as "
                             "in the breast consistency paper (nnU-Net never resizes 2D images); the pixel spacing "
                             "in cases.csv is scaled with it; use the same SIZE for a test set added later")
    parser.add_argument("--duplicates", choices=DUPLICATE_CHOICES, default="drop",
                        help="exact duplicates within the source: drop later copies and ambiguous ones (default; "
                             "see the report) or keep every copy as published (e.g. to test on a paper's count); "
                             "copies of cases already in the dataset are always skipped")
    parser.add_argument("--label-conflicts", choices=LABEL_CONFLICT_CHOICES, default="keep",
                        help="near-duplicates of different patients whose classes differ (one scan filed under "
                             "two classes, as in BUSI): keep them (default; listed in the report as label "
                             "conflicts: the near-duplicate rule also pairs unrelated look-alike images) or drop "
                             "every case of this conversion that is in one")
    parser.add_argument("-j", "--num-processes", type=int, default=default_num_processes(),
                        help="worker processes for decoding / converting / PNG encoding (default %(default)s; "
                             "1: no workers)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(default_split=default_split)


@dataclass
class ConvertOptions:
    """Where and how a converter writes; :func:`options_from_args` builds it from :func:`add_common_arguments`."""
    dataset_id: int
    name: str
    split: str = "train"  # "train" | "test": every case there; "official": each Case.split as published
    add_to_existing: bool = False
    overwrite: bool = False
    normal: str = "exclude"
    num_processes: int = field(default_factory=default_num_processes)
    progress: bool = True
    resize: int | None = None     # square size every image and mask is resized to; None: as published
    duplicates: str = "drop"      # "drop": the policy of the module docstring; "keep": every copy as published
    label_conflicts: str = "keep"  # near-duplicates with different classes: "keep" (listed) or "drop"

    def __post_init__(self):
        if self.resize is not None and not MIN_RESIZE <= self.resize <= MAX_RESIZE:
            raise NnunetMtlError(f"--resize {self.resize}: expected a size from {MIN_RESIZE} to {MAX_RESIZE} pixels")
        if self.duplicates not in DUPLICATE_CHOICES:
            raise NnunetMtlError(f"--duplicates {self.duplicates!r}: expected one of {', '.join(DUPLICATE_CHOICES)}")
        if self.label_conflicts not in LABEL_CONFLICT_CHOICES:
            raise NnunetMtlError(f"--label-conflicts {self.label_conflicts!r}: expected one of "
                                 f"{', '.join(LABEL_CONFLICT_CHOICES)}")
        if self.split not in SPLIT_CHOICES:
            raise NnunetMtlError(f"--as {self.split!r}: expected train, test or official")
        if self.normal not in NORMAL_CHOICES:
            raise NnunetMtlError(f"--normal {self.normal!r}: expected one of {', '.join(NORMAL_CHOICES)}")
        if self.add_to_existing and self.overwrite:
            raise NnunetMtlError("--add-to-existing and --overwrite exclude each other; expected one of them")
        if self.num_processes < 1:
            raise NnunetMtlError(f"-j {self.num_processes}: expected at least 1 process")


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    """:class:`ConvertOptions` from args parsed with :func:`add_common_arguments`."""
    split = args.split or ("test" if args.add_to_existing else getattr(args, "default_split", "train"))
    return ConvertOptions(dataset_id=args.dataset_id, name=args.name, split=split,
                          add_to_existing=args.add_to_existing, overwrite=args.overwrite, normal=args.normal,
                          num_processes=args.num_processes, progress=not args.no_progress,
                          resize=getattr(args, "resize", None), duplicates=getattr(args, "duplicates", "drop"),
                          label_conflicts=getattr(args, "label_conflicts", "keep"))


def class_labels_for(classes: Sequence[str], normal: str) -> dict[str, int]:
    """class_labels {name: index} for the target classes, plus ``normal`` last when ``--normal include``."""
    names = list(classes)
    if normal == "include" and NORMAL_CLASS not in names:
        names.append(NORMAL_CLASS)
    return {c: i for i, c in enumerate(names)}
