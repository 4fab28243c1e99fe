"""studies/learning_curve.py, which docs/results.md's learning curves come from: a fold's checkpoint log as a table,
a curve JSON and a plot; a committed curve JSON read back without its checkpoint; nothing replaced unless asked."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "learning_curve.py"


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("learning_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fold(tmp_path):
    """A fold folder whose checkpoint logged 6 epochs of nnUNetTrainerMTL_cpu1k (50 iterations each)."""
    folder = tmp_path / "nnUNetTrainerMTL_cpu1k__nnUNetPlans__2d" / "fold_0"
    folder.mkdir(parents=True)
    logging = {"mean_fg_dice": [0.1, 0.3, 0.5, 0.6, 0.6, 0.7], "val_auc": [0.5, 0.6, 0.6, 0.7, 0.8, 0.8],
               "val_macro_f1": [0.4, 0.4, 0.5, 0.5, 0.6, 0.6], "ema_mtl_score": [0.1] * 6,
               "train_losses": [1.0, 0.8, 0.6, 0.5, 0.4, 0.3], "val_losses": [1.1, 0.9, 0.8, 0.8, 0.7, 0.7],
               "epoch_start_timestamps": [100.0 + 60 * e for e in range(6)],
               "epoch_end_timestamps": [160.0 + 60 * e for e in range(6)]}
    torch.save({"logging": logging, "init_args": {"fold": 0}, "trainer_name": "nnUNetTrainerMTL_cpu1k"},
               folder / "checkpoint_final.pth")
    return folder


def test_a_folds_curve_as_table_json_and_plot_and_read_back_from_its_json(lc, fold, tmp_path, capsys):
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    assert lc.main([str(fold), "--every", "3", "--window", "2", "-o", str(out), "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    # epochs 3 and 6 (every 3rd): 150 and 300 iterations of the trainer's 50, minutes from the epoch timestamps,
    # the 2-epoch moving averages
    assert "| 150 | 3.0 | 0.400 | 0.600 | 0.450 | 0.600 | 0.800 |" in table
    assert "| 300 | 6.0 | 0.650 | 0.800 | 0.600 | 0.300 | 0.700 |" in table
    curve = json.loads(out.read_text())
    assert curve["iterations_per_epoch"] == 50 and curve["trainer"] == "nnUNetTrainerMTL_cpu1k"
    assert [r["iterations"] for r in curve["epochs"]] == [50, 100, 150, 200, 250, 300]
    assert curve["epochs"][1]["dice_smoothed"] == pytest.approx(0.2)
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the committed JSON alone gives the same table and a plot
    again = tmp_path / "again.png"
    assert lc.main([str(out), "--every", "3", "--window", "2", "--plot", str(again)]) == 0
    assert capsys.readouterr().out.splitlines()[1:5] == table.splitlines()[1:5]
    assert again.stat().st_size > 10_000


def test_nothing_is_replaced_unless_asked_and_a_wrong_source_is_one_line(lc, fold, tmp_path):
    png = tmp_path / "curve.png"
    png.write_bytes(b"mine")
    with pytest.raises(SystemExit, match=r"curve.png exists; expected a new file \(or --overwrite\)"):
        lc.main([str(fold), "--plot", str(png)])
    assert png.read_bytes() == b"mine"
    assert lc.main([str(fold), "--plot", str(png), "--overwrite"]) == 0 and png.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": []}')
    with pytest.raises(SystemExit, match="bad.json has no 'epochs' list; expected a curve JSON written by -o"):
        lc.main([str(bad)])
    with pytest.raises(SystemExit, match="no checkpoint_final.pth or checkpoint_latest.pth in"):
        lc.main([str(tmp_path)])
