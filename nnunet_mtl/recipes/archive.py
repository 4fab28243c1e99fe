"""``nnunet_mtl recipe archive``: a recipe run's results without its models and images, in the work folder's own
layout, small enough to keep under version control or copy off a cluster: every evaluation (per-case values and
summaries), seed average, comparison, cross-validation and ablation, the predicted classes, the step timings and
provenance records, and the report's Markdown and JSON. Copied back into a work folder, ``recipe report`` remakes
the report from them, and ``recipe run`` trains only what they do not cover (its steps whose every later use is
done are not needed: docs/recipes.md)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

# the work folder's folders of results (not nnU-Net's three folders, the seeds' nnUNet_results, submitit's or
# SLURM's job folders) and the kinds of file kept from them: tables and summaries, no masks, maps or checkpoints
# (under predictions/ only the evaluations: results_files)
FOLDERS = ("predictions", "crossval", "comparisons", "ablations", "logs", "report")
SUFFIXES = {".json", ".jsonl", ".csv", ".md"}


def results_files(workdir: Path) -> list[Path]:
    """The files of a run's results, relative to its work folder, sorted. Under predictions/ only the evaluations
    (``.../evaluation/``): a prediction folder's own files (class_predictions.csv, per_fold.json) are what shows a
    prediction done, and without its masks a restored one must not count as done. Hidden files (a write in
    progress) are left out."""
    kept = []
    for top in FOLDERS:
        for p in sorted((workdir / top).rglob("*")) if (workdir / top).is_dir() else ():
            rel = p.relative_to(workdir)
            if not p.is_file() or p.suffix not in SUFFIXES or any(part.startswith(".") for part in rel.parts):
                continue
            if top == "predictions" and "evaluation" not in rel.parts[:-1]:
                continue
            kept.append(rel)
    return sorted(kept)


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
    for rel in files:  # each file whole or not at all: copied beside its place, then renamed over it
        target = output / rel
        part = target.with_name(f".{target.name}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(workdir / rel, part)
            os.replace(part, target)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise NnunetMtlError(f"{target}: {e.strerror or e}; expected to copy {workdir / rel} there ({len(copies)} "
                                 f"of {len(files)} files copied; run it again with --overwrite)") from None
        copies.append(target)
    return copies
