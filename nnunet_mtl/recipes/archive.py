"""``nnunet_mtl recipe archive``: a recipe run's results without its models and images, in the work folder's own
layout, small enough to keep under version control or copy off a cluster: every evaluation (per-case values and
summaries), seed average, comparison, cross-validation and ablation, the predicted classes, the step timings and
provenance records, and the report's Markdown and JSON. Copied back into a work folder, ``recipe report`` remakes
the report from them, and ``recipe run`` trains only what they do not cover (its steps whose every later use is
done are not needed: docs/recipes.md)."""
from __future__ import annotations

import shutil
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

# the work folder's folders of results (not nnU-Net's three folders, the seeds' nnUNet_results, submitit's or
# SLURM's job folders) and the kinds of file kept from them: tables and summaries, no masks, maps or checkpoints
FOLDERS = ("predictions", "crossval", "comparisons", "ablations", "logs", "report")
SUFFIXES = {".json", ".jsonl", ".csv", ".md"}


def results_files(workdir: Path) -> list[Path]:
    """The files of a run's results, relative to its work folder, sorted."""
    return sorted(p.relative_to(workdir) for top in FOLDERS if (workdir / top).is_dir()
                  for p in (workdir / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def archive_results(workdir, output, overwrite: bool = False) -> list[Path]:
    """Copy :func:`results_files` of ``workdir`` to ``output`` (same relative paths); returns the copies. Every
    check comes before the first copy: a work folder with no results, an output inside it, or files there already
    (unless ``overwrite``) stop it with one line."""
    workdir, output = Path(workdir).resolve(), Path(output).resolve()
    if not workdir.is_dir():
        raise NnunetMtlError(f"--workdir {workdir} does not exist; expected the folder of a recipe run")
    if output == workdir or workdir in output.parents:
        raise NnunetMtlError(f"-o {output} is inside the work folder {workdir}; expected a folder outside it")
    from nnunet_mtl.outputs import check_output_folder
    check_output_folder(output, "-o")
    files = results_files(workdir)
    if not files:
        raise NnunetMtlError(f"{workdir} holds no results ({', '.join(FOLDERS)}); expected the folder of a recipe "
                             f"run with at least one evaluation")
    there = [rel for rel in files if (output / rel).exists()]
    if there and not overwrite:
        raise NnunetMtlError(f"{output / there[0]} exists ({len(there)} of the {len(files)} files are there "
                             f"already); expected --overwrite to replace them, or another -o")
    copies = []
    for rel in files:
        (output / rel).parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy2(workdir / rel, output / rel)))
    return copies
