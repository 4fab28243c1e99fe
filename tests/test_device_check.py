"""The GPU check (benchmarks/device_check.sh) in its CPU smoke mode, so that it still runs when a GPU is lent, and
the wall-clock training budget it cuts its trainings with (nnUNet_mtl_max_train_minutes)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_mtl.trainers import TRAINERS
from tests.e2e_helpers import nnunet_env as environment, planned_phantom, use_in_process

pytestmark = pytest.mark.slow  # trains or starts processes (the fast subset leaves it out)

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_end_to_end_in_its_cpu_smoke_mode(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--cpu-smoke"],
                            capture_output=True, text=True, env={**__import__("os").environ,
                                                                 "PYTHON": sys.executable})
    log = (out / "device_check.log").read_text() if (out / "device_check.log").exists() else ""
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + log[-3000:]
    summary = (out / "summary.md").read_text()
    for title in ("MTL / nnU-Net", "RLAR / MTL at bottleneck", "RLAR / MTL at last3", "BI-RADS / MTL",
                  "LesionAware / MTL", "PCGrad and UPGrad / MTL"):
        assert f"## {title}\n" in summary, title
    assert "## RLAR / MTL at mid\n" not in summary  # the smoke's two layers of four
    rlar = summary.split("## RLAR / MTL at last3\n")[1].split("\n## ")[0]
    assert "RLAR at last3 (stage" in rlar and "RLAR at bottleneck" not in rlar  # its block of the one process' output
    assert summary.count("ms/step") >= 2 + 2 * 4 + 2 + 2 + 3
    report = json.loads((out / "breast_report.json").read_text())
    assert report and "birads vs mtl" in (out / "breast_report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["breast_report.json", "breast_report.md", "device_check.log",
                                                      "summary.md"]  # the work folder is gone


def test_the_device_check_refuses_a_missing_out_and_a_gpu_run_without_data(tmp_path):
    script = str(ROOT / "benchmarks" / "device_check.sh")
    result = subprocess.run(["bash", script], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: device_check.sh OUT" in result.stderr
    result = subprocess.run(["bash", script, "--prepare-raw", str(tmp_path / "nothing"), str(tmp_path / "raw")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "expected BrEaST/ and UDIAT_DatasetB/ in it" in result.stderr
    assert not (tmp_path / "raw").exists()


def test_a_time_budget_stops_training_after_the_epoch_that_spends_it(tmp_path, monkeypatch):
    env = environment(tmp_path)
    raw = planned_phantom(env, "523", seed=2)
    use_in_process(monkeypatch, tmp_path)
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())

    def trainer():
        return TRAINERS["nnUNetTrainerMTL_tiny"]({**plans, "continue_training": False}, "2d", 0, dataset_json,
                                                 torch.device("cpu"))

    monkeypatch.setenv("nnUNet_mtl_max_train_minutes", "0.5 hours")
    with pytest.raises(SystemExit, match="nnUNet_mtl_max_train_minutes is '0.5 hours'; expected a number of minutes"):
        trainer()
    monkeypatch.setenv("nnUNet_mtl_max_train_minutes", "0.0001")  # spent by the first epoch
    t = trainer()
    t.run_training()
    log = Path(t.log_file).read_text()
    assert "time budget: training stops after the first epoch that ends past" in log
    assert "time budget: nnUNet_mtl_max_train_minutes=0.0001 minutes of training spent after 1 epochs" in log
    assert t.current_epoch == 1 and (Path(t.output_folder) / "checkpoint_final.pth").is_file()
