"""``nnunet_mtl radiomics``: compute and cache the clinical-guidance radiomics targets of a dataset."""
from __future__ import annotations

from nnunet_mtl.paths import find_dataset_folder, preprocessed_root, raw_root
from nnunet_mtl.radiomics.features import DEFAULT_FEATURES


def register(subparsers):
    p = subparsers.add_parser(
        "radiomics", help="compute the 13 TI-RADS-aligned radiomics targets of every training case (cached)",
        description="Computes the radiomics targets used by nnUNetTrainerClinGuided / nnUNetTrainerRLAR from the "
                    "raw images and ground-truth masks, in parallel, and caches them in "
                    "nnUNet_preprocessed/DatasetNNN_X/radiomics_targets.csv. Reruns compute only new or changed "
                    "cases. Cases whose mask is a box or missing (cases.csv column mask) have no outline and get no "
                    "targets (they are left out of the guidance loss). Definitions: docs/clinical_guidance_rlar.md.")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("--features", nargs="+", default=list(DEFAULT_FEATURES),
                   help="feature names (default: Salama et al. 2026's 13)")
    p.add_argument("-np", type=int, default=2, help="worker processes (default 2)")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnunet_mtl.radiomics.cache import CACHE_NAME, compute_dataset_radiomics, describe_targets
    raw = find_dataset_folder(args.d, raw_root())
    cache = preprocessed_root() / raw.name / CACHE_NAME
    from nnunet_mtl.errors import NnunetMtlError
    from nnunet_mtl.resources import cap_processes
    processes = cap_processes(args.np, "-np")
    preprocessed_before = cache.parent.is_dir()
    table, computed = compute_dataset_radiomics(raw, cache, args.features, num_processes=processes)
    if not preprocessed_before:
        print(f"note: {cache.parent} did not exist ({raw.name} is not preprocessed yet): made for the cache; "
              f"nnUNetv2_plan_and_preprocess -d {args.d} adds its own files beside it")
    partial = int((table["mask"] != "full").sum())  # no outline, so no targets: never computed
    print(f"{describe_targets(table)}, {computed} computed now, {len(table) - computed - partial} from the cache")
    print(f"wrote {cache}")
    if not int(table["has_lesion"].sum()):
        raise NnunetMtlError(f"none of the {len(table)} training cases of {raw.name} has a lesion outline to compute "
                             f"targets from ({partial} without a full mask, {len(table) - partial} whose mask is "
                             f"empty or rejected): clinical guidance would learn from nothing; expected label maps "
                             f"with lesions (1) in labelsTr")
    return 0
