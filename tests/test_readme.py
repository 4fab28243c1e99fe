"""The README's user's day runs as pasted.

The blocks of "## The user's day" (the ``nnUNet_extTrainer`` export, steps 1-6, the cross-validation block) are
extracted from README.md and run by bash, one after the other, in a fresh nnU-Net folder tree. Only the changes the
README itself tells a CPU user to make, plus a smaller phantom and schedule, are applied (:func:`as_run_here`):

- ``-device cpu`` on ``nnUNetv2_train``, ``nnUNetv2_predict`` and ``nnunet_mtl predict`` (step 4's note);
- ``-np 2 -npfp 2`` on ``nnUNetv2_plan_and_preprocess`` (step 2's note for machines with few cores);
- ``-npp 1 -nps 1`` on ``nnUNetv2_predict`` and ``nnunet_mtl predict`` (step 5's note for machines with few cores);
- ``nnUNetTrainerMTL`` -> ``nnUNetTrainerMTL_tiny`` (2 epochs of 3 iterations) and a 12-patient phantom of 64 px.

A README edit that breaks a command (a flag renamed, a folder the next step does not find, an empty glob) fails
here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e_helpers import BIN, nnunet_env

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[1] / "README.md"


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of README.md's ``## section``, in order."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def as_run_here(block: str) -> str:
    """The block with the README's CPU notes applied, the tiny schedule and a small phantom (module docstring)."""
    block = block.replace("\\\n", " ")  # one line per command
    # the trainer's name alone or in its results folder's (nnUNetTrainerMTL__nnUNetPlans__2d), not other variants
    block = re.sub(r"\bnnUNetTrainerMTL(?=__|\W|$)", "nnUNetTrainerMTL_tiny", block)
    block = re.sub(r"(nnunet_mtl convert synthetic -d \d+)",
                   r"\1 --num-patients 12 --images-per-patient 2 --size 64", block)
    block = re.sub(r"(nnUNetv2_plan_and_preprocess [^#;\n]*)", r"\1 -np 2 -npfp 2 ", block)
    block = re.sub(r"((?:nnUNetv2_train|nnUNetv2_predict|nnunet_mtl predict) [^#;\n]*)", r"\1 -device cpu ", block)
    block = re.sub(r"((?:nnUNetv2_predict|nnunet_mtl predict) [^#;\n]*)", r"\1 -npp 1 -nps 1 ", block)
    return block


def test_as_run_here_changes_only_what_the_readme_says():
    """The rewriting is what the docstring says, on lines as the README writes them."""
    got = as_run_here("for f in 0 1 2; do nnUNetv2_train 500 2d $f -tr nnUNetTrainerMTL; done\n"
                      "nnunet_mtl predict -i a -o b -d 500 -tr nnUNetTrainerMTL_paper \\\n    --per-fold  # note\n"
                      "M=$R/nnUNetTrainerMTL__nnUNetPlans__2d\n")
    assert [line.split() for line in got.splitlines()] == [
        "for f in 0 1 2; do nnUNetv2_train 500 2d $f -tr nnUNetTrainerMTL_tiny -device cpu ; done".split(),
        "nnunet_mtl predict -i a -o b -d 500 -tr nnUNetTrainerMTL_paper --per-fold -device cpu -npp 1 -nps 1 # note"
        .split(),
        ["M=$R/nnUNetTrainerMTL_tiny__nnUNetPlans__2d"]]


def test_the_users_day_runs_as_pasted(tmp_path):
    blocks = bash_blocks("The user's day")
    steps = next(b for b in blocks if "# 1. " in b)
    cross_validation = next(b for b in blocks if b.startswith("M=$nnUNet_results"))
    export = next(b for b in blocks if "nnUNet_extTrainer" in b)
    env = nnunet_env(tmp_path)
    env.pop("nnUNet_extTrainer")  # the README's export sets it
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    script = "set -euo pipefail\n" + "\n".join(as_run_here(b) for b in (export, steps, cross_validation))
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    # what the steps say they write
    pred_seg = sorted(p.name for p in (work / "pred_seg").glob("*.png"))
    assert pred_seg and sorted(p.name for p in (work / "pred" / "ensemble").glob("*.png")) == pred_seg
    for k in (0, 1, 2):
        assert (work / "pred" / f"fold_{k}" / "class_predictions.csv").is_file()
    per_fold = json.loads((work / "pred" / "evaluation" / "per_fold_summary.json").read_text())
    assert per_fold
    page = (work / "pred" / "ensemble" / "evaluation" / "gallery.html").read_text()
    assert all(f'data-case="{name[:-4]}"' in page for name in pred_seg)
    model = tmp_path / "nnUNet_results" / "Dataset500_SyntheticUS" / "nnUNetTrainerMTL_tiny__nnUNetPlans__2d"
    cv = json.loads((model / "cv_summary.json").read_text())
    assert cv
    validated = 0
    for k in (0, 1, 2):
        summary = json.loads((model / f"fold_{k}" / "validation" / "evaluation" / "summary.json").read_text())
        assert summary["num_cases"] == len(list((model / f"fold_{k}" / "validation").glob("*.png")))
        validated += summary["num_cases"]
    # nnU-Net's merged cross-validation with our classes, evaluated for both tasks
    merged = model / "crossval_results_folds_0_1_2"
    assert (merged / "postprocessing.pkl").is_file()  # find_best_configuration's, kept by crossval
    summary = json.loads((merged / "evaluation" / "summary.json").read_text())
    assert summary["num_cases"] == validated and summary["classification"]["num_cases"] == validated
    ranked = json.loads((tmp_path / "nnUNet_results" / "Dataset500_SyntheticUS"
                         / "crossval_classes_folds_0_1_2.json").read_text())
    assert ranked["chosen"] == model.name and ranked["select"] == "multitask"
    assert sorted(p.name for p in (work / "pred_pp").glob("*.png")) == pred_seg
    assert (work / "pred_pp" / "class_predictions.csv").is_file()
